"""The web service's frame cache, in memory: chat deliveries (CRLF lines) as WebSocket
text frames, one per line, encoded once per delivery and bounded in what it keeps."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from netproto.chat.config import ChatConfig
from netproto.chat.server import ChatFactory
from netproto.web import protocol
from netproto.web.protocol import FrameCache, WebChatFactory


def cache() -> FrameCache:
    clock = Clock()
    return WebChatFactory(ChatFactory(ChatConfig(), clock), (), clock).cache


def unframe(frames: bytes) -> list[bytes]:
    """The payloads of unmasked, unfragmented text frames, checked as such."""
    payloads = []
    while frames:
        assert frames[0] == 0x81, "FIN + text"
        length, at = frames[1], 2
        assert not length & 0x80, "server frames are not masked"
        if length == 126:
            length, at = int.from_bytes(frames[2:4], "big"), 4
        elif length == 127:
            length, at = int.from_bytes(frames[2:10], "big"), 10
        payloads.append(frames[at : at + length])
        frames = frames[at + length :]
    return payloads


def test_each_line_is_one_text_frame_without_its_crlf() -> None:
    """Lines of every length class (7-bit, 16-bit and 64-bit lengths) and UTF-8."""
    lines = [b"<a> hi", b"x" * 125, b"y" * 126, b"z" * 70000, "* \u00e9t\u00e9 \u2603".encode()]
    frames = cache().frames(b"".join(line + b"\r\n" for line in lines))
    assert unframe(frames) == lines


def test_a_delivery_given_to_many_members_is_encoded_once() -> None:
    """The same bytes object again: the very same frames object, nothing re-encoded."""
    frames = cache()
    delivery = b"<a> one\r\n<b> two\r\n"
    first = frames.frames(delivery)
    assert frames.frames(delivery) is first
    # A sender's own join of the same lines (a new object) is framed from the table.
    own = b"".join([b"<b> two", b"\r\n"])
    assert unframe(frames.frames(own)) == [b"<b> two"]


def test_the_table_of_frames_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past FRAME_TABLE_BYTES the table starts again: it never holds much more."""
    monkeypatch.setattr(protocol, "FRAME_TABLE_BYTES", 4096)
    frames = cache()
    for i in range(1000):
        line = b"%04d " % i + b"x" * 59
        assert unframe(frames.frames(line + b"\r\n")) == [line]
        assert frames.held <= 4096 + 2 * 66
