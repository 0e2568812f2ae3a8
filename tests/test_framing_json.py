"""Control payloads from peers: ``decodeJSON`` hands services only sane values,
and refuses everything else as ``bad-frame`` (issue 9, finding 4).

Each refusal here used to be accepted (huge and non-finite numbers, lone
surrogates, UTF-16) or to escape as another exception (``RecursionError``),
which the framed base turned into ``E internal`` and a traceback.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netproto.codec import MAX_JSON_DEPTH, MAX_JSON_NUMBER, decodeJSON, nestedDeeperThan
from netproto.errors import ProtocolError


def refused(payload: bytes) -> str:
    """The message of the ``bad-frame`` that ``payload`` gets (fails on anything else)."""
    with pytest.raises(ProtocolError) as info:
        decodeJSON(payload)
    assert info.value.code == "bad-frame"
    assert info.value.fatal
    assert len(info.value.message) < 200, "the message must not echo the payload"
    return info.value.message


def nested(depth: int, inner: str = "1") -> bytes:
    """``{"a": [{"a": [ ... inner ... ]}]}`` with ``depth`` arrays and objects in all."""
    text = inner
    for level in range(depth - 1):
        text = f"[{text}]" if level % 2 == 0 else f'{{"a": {text}}}'
    return f'{{"a": {text}}}'.encode()


@pytest.mark.parametrize(
    "payload",
    [b"[" * 4000, b'{"a":' * 3000, b"[" * 100_000 + b"]" * 100_000, nested(5000)],
    ids=["open-brackets", "open-objects", "balanced", "mixed"],
)
def test_deep_nesting_is_a_bad_frame(payload: bytes) -> None:
    """JSON nested thousands deep was a RecursionError: now a bad-frame naming the limit."""
    assert str(MAX_JSON_DEPTH) in refused(payload)


def test_nesting_up_to_the_limit_is_accepted() -> None:
    """Exactly MAX_JSON_DEPTH levels parse; one more is refused."""
    assert decodeJSON(nested(MAX_JSON_DEPTH))["a"]
    refused(nested(MAX_JSON_DEPTH + 1))


@pytest.mark.parametrize(
    "value",
    ["[" * 1000, "]" * 1000 + "{" * 1000, '\\"[[[[' * 500, "\\\\" + "[" * 1000],
    ids=["brackets", "closing-first", "escaped-quotes", "escaped-backslash"],
)
def test_brackets_inside_strings_do_not_count(value: str) -> None:
    """Only structure counts towards the depth, whatever the strings hold."""
    payload = b'{"shell": "' + value.encode() + b'", "argv": [[[1]]]}'
    assert decodeJSON(payload)["shell"] == json.loads(payload)["shell"]


def test_depth_check_is_linear_on_crafted_strings() -> None:
    """A payload built to make a string regex backtrack (many brackets, then an
    unterminated string of escaped quotes) is refused; if the check were
    quadratic this would not finish."""
    refused(b"[" * 40 + b'"' + b'\\"' * 120_000)
    refused(b"[" * 40 + b'"' + b'\\"' * 120_000 + b"\\")


@pytest.mark.parametrize(
    "number",
    ["9" * 400, "-" + "9" * 400, str(MAX_JSON_NUMBER + 1), str(-MAX_JSON_NUMBER - 1), "9" * 5000],
)
def test_huge_integers_are_a_bad_frame(number: str) -> None:
    """A 400-digit timeout was accepted and overflowed in exec: integers are bounded."""
    assert "out of range" in refused(b'{"timeout": ' + number.encode() + b"}")


@pytest.mark.parametrize(
    "number", ["1e400", "-1e400", "NaN", "Infinity", "-Infinity", "1e19", "9.3e18"]
)
def test_non_finite_and_huge_floats_are_a_bad_frame(number: str) -> None:
    """NaN, the infinities and floats beyond the bound were accepted."""
    refused(b'{"timeout": ' + number.encode() + b"}")


@pytest.mark.parametrize(
    "number",
    [0, -1, 2**53, MAX_JSON_NUMBER, -MAX_JSON_NUMBER, 0.5, 1e-300, -0.0, 9.2e18, 3600],
)
def test_numbers_within_the_bound_are_kept(number: float) -> None:
    """Every sane number still comes through, exactly."""
    assert decodeJSON(json.dumps({"n": number}).encode()) == {"n": number}


def test_lone_surrogates_are_a_bad_frame() -> None:
    """A lone surrogate decoded to a str that cannot be encoded: ``user.encode()``
    in the A handler raised UnicodeEncodeError (E internal)."""
    refused(b'{"user": "\\ud800", "password": "x"}')
    refused(b'{"argv": ["echo", "\\uDFFF"]}')
    refused(b'{"\\udc80": 1}')


def test_surrogate_pairs_and_escaped_backslashes_are_fine() -> None:
    """A proper pair is one character; ``\\\\ud800`` is a backslash and text."""
    assert decodeJSON(b'{"s": "\\ud83d\\ude00"}') == {"s": "\U0001f600"}
    assert decodeJSON(b'{"s": "\\\\ud800"}') == {"s": "\\ud800"}


@pytest.mark.parametrize(
    "payload",
    [
        '{"a": 1}'.encode("utf-16"),
        '{"a": 1}'.encode("utf-32-le"),
        b'\xef\xbb\xbf{"a": 1}',
        b'{"a": "\xff"}',
        b'{"a": 1} x',
        b"",
        b"[1]",
        b"null",
    ],
    ids=["utf-16", "utf-32", "utf-8-bom", "bad-utf-8", "trailing", "empty", "array", "null"],
)
def test_only_one_utf8_json_object_is_accepted(payload: bytes) -> None:
    """A control payload is one UTF-8 JSON object (PROTOCOL.md section 2)."""
    refused(payload)


@given(st.binary(max_size=300))
def test_decodeJSON_on_any_bytes_returns_a_dict_or_refuses(payload: bytes) -> None:
    """Whatever the bytes: a dict, or ProtocolError(bad-frame); never another exception."""
    outcome: dict[str, Any] | ProtocolError
    try:
        outcome = decodeJSON(payload)
    except ProtocolError as e:
        outcome = e
    assert isinstance(outcome, dict) or outcome.code == "bad-frame"


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-MAX_JSON_NUMBER, MAX_JSON_NUMBER)
    | st.floats(allow_nan=False, allow_infinity=False, min_value=-1e18, max_value=1e18)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


def depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    return 0


@given(st.dictionaries(st.text(), json_values, max_size=5), st.booleans())
def test_sane_objects_round_trip(obj: dict[str, Any], ascii: bool) -> None:
    """Any object within the limits (as any client's JSON library writes it) comes back equal."""
    result = decodeJSON(json.dumps(obj, ensure_ascii=ascii).encode())
    assert result == obj
    assert depth(result) <= MAX_JSON_DEPTH


@given(st.text(alphabet='[]{}",:\\1a ', max_size=200).map(str.encode), st.integers(0, 40))
def test_nesting_check_never_underestimates(payload: bytes, limit: int) -> None:
    """When the check lets a payload through, a parser that succeeds finds it within
    the limit (payloads made of JSON's structural characters, strings and escapes)."""
    if nestedDeeperThan(payload, limit):
        return
    try:
        value = json.loads(payload)
    except (ValueError, RecursionError):
        return
    assert depth(value) <= limit
