"""Upload names: the rules of PROTOCOL.md section 4, as pure functions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netproto.errors import ProtocolError
from netproto.upload.names import (
    MAX_NAME_BYTES,
    RESERVED_PREFIX,
    isPartialName,
    partialName,
    splitName,
)

ATTACKS = [
    "",
    "/etc/passwd",
    "//x",
    "..",
    "../x",
    "a/../../x",
    "a/./b",
    ".",
    "a//b",
    "a/",
    "a\\..\\b",
    "..\\x",
    "a\x00b",
    "a\nb",
    "a\rb",
    "tab\there",
    "esc\x1b[2J",
    "del\x7f",
    "c1\x85",
    ".netproto",
    ".netproto-part-0123-5",
    "dir/.netproto-anything",
    "x" * 256,
    "é" * 128,  # 256 bytes of UTF-8
    "\ud800",  # a lone surrogate JSON can carry
]


@pytest.mark.parametrize("name", ATTACKS)
def test_attack_names_are_invalid(name: str) -> None:
    """Every name PROTOCOL.md rules out (.., absolute, backslash, NUL, control
    characters, reserved prefix, over-long segments) is refused with invalid-name."""
    with pytest.raises(ProtocolError) as info:
        splitName(name)
    assert info.value.code == "invalid-name"
    assert not info.value.fatal


@pytest.mark.parametrize("name", [None, 3, ["a"], {"a": 1}])
def test_non_string_names_are_invalid(name: object) -> None:
    """A name that is not a string is refused, not crashed on."""
    with pytest.raises(ProtocolError) as info:
        splitName(name)
    assert info.value.code == "invalid-name"


@pytest.mark.parametrize(
    ("name", "segments"),
    [
        ("report.pdf", (b"report.pdf",)),
        ("dir/report.pdf", (b"dir", b"report.pdf")),
        ("报告/季度 总结.txt", ("报告".encode(), "季度 总结.txt".encode())),
        ("...", (b"...",)),
        ("..x", (b"..x",)),
        (".hidden", (b".hidden",)),
        (".netprot", (b".netprot",)),
        ("x" * 255, (b"x" * 255,)),
        ("é" * 127, ("é" * 127).encode()),
    ],
)
def test_good_names_split_into_utf8_segments(name: str, segments: object) -> None:
    """Valid names, Unicode ones included, split into their exact UTF-8 segments."""
    if isinstance(segments, bytes):
        segments = (segments,)
    assert splitName(name) == segments


def test_whole_name_length_is_bounded() -> None:
    """A name longer than PATH_MAX is refused even when each segment is fine."""
    name = "/".join(["d" * 200] * (MAX_NAME_BYTES // 201 + 1))
    with pytest.raises(ProtocolError):
        splitName(name)


@given(st.text(min_size=1, max_size=40))
def test_any_accepted_name_is_safe(name: str) -> None:
    """Whatever text a client sends, an accepted name has only plain, relative,
    non-reserved segments."""
    try:
        segments = splitName(name)
    except ProtocolError:
        return
    for segment in segments:
        assert segment not in (b"", b".", b"..")
        assert b"/" not in segment
        assert b"\\" not in segment
        assert b"\0" not in segment
        assert not segment.startswith(RESERVED_PREFIX.encode())
        assert 1 <= len(segment) <= 255


def test_partial_names_are_reserved_and_distinct() -> None:
    """The server's partial file names use the reserved prefix, so no client name
    can be one, and differ by name and by size."""
    a = partialName(b"report.pdf", 10)
    assert isPartialName(a.decode())
    with pytest.raises(ProtocolError):
        splitName(a.decode())
    assert a != partialName(b"report.pdf", 11)
    assert a != partialName(b"report.pdg", 10)
    assert len(partialName(b"x" * 255, 2**63)) < 255
