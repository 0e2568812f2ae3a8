"""Streamed frames (FrameDecoder.take, FramedProtocol.streamedFrames): the
upload's data path from the socket to the lanes without copies."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netproto.codec import EmptyFrame, FrameDecoder, FrameTooLarge, encodeFrame
from tests.uploadkit import Harness


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


STREAMED = frozenset({b"D"})


def takeAll(d: FrameDecoder) -> list[tuple[bytes, bytes | memoryview]]:
    out = []
    while (frame := d.take(STREAMED)) is not None:
        out.append(frame)
    return out


def test_streamed_frame_comes_out_as_views_of_the_reads() -> None:
    """A data frame spanning two reads comes out as two pieces, each a view
    of the bytes object it arrived in (no copy), its header not included."""
    frame = encodeFrame(b"D", b"a" * 1000)
    first, second = frame[:600], frame[600:]
    d = FrameDecoder(2000)
    d.feed(first)
    [(kind, piece)] = takeAll(d)
    assert kind == b"D"
    assert isinstance(piece, memoryview)
    assert piece.obj is first
    assert bytes(piece) == b"a" * 595
    d.feed(second)
    [(kind, piece)] = takeAll(d)
    assert isinstance(piece, memoryview)
    assert piece.obj is second
    assert bytes(piece) == b"a" * 405
    assert len(d) == 0


def test_other_frames_stay_whole_between_streamed_ones() -> None:
    """Control frames around streamed ones still come out whole, in order; an
    empty data frame gives one empty piece."""
    d = FrameDecoder(100)
    d.feed(encodeFrame(b"P", b"{}") + encodeFrame(b"D", b"xy") + encodeFrame(b"D"))
    d.feed(encodeFrame(b"F", b"{}"))
    got = [(k, bytes(p)) for k, p in takeAll(d)]
    assert got == [(b"P", b"{}"), (b"D", b"xy"), (b"D", b""), (b"F", b"{}")]


def test_streamed_frame_length_is_checked_before_any_piece() -> None:
    """The frame limit holds for streamed frames too: refused from the header alone."""
    d = FrameDecoder(10)
    d.feed(encodeFrame(b"D", b"x" * 20)[:6])
    with pytest.raises(FrameTooLarge):
        d.take(STREAMED)
    d = FrameDecoder(10)
    d.feed(b"\x00\x00\x00\x00D")
    with pytest.raises(EmptyFrame):
        d.take(STREAMED)


def test_next_refuses_to_run_inside_a_streamed_frame() -> None:
    """Mixing next() into the middle of a streamed frame is a caller bug, reported."""
    d = FrameDecoder(100)
    d.feed(encodeFrame(b"D", b"x" * 50)[:20])
    assert d.take(STREAMED) is not None
    with pytest.raises(RuntimeError):
        d.next()


@given(
    payloads=st.lists(st.binary(max_size=300), min_size=1, max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=12),
)
def test_any_split_gives_the_same_bytes_and_frames(payloads: list[bytes], cuts: list[int]) -> None:
    """However the stream is cut into reads, the pieces of each data frame join
    to its payload and the control frames between them are unchanged."""
    stream = b"".join(
        encodeFrame(b"D", p) + encodeFrame(b"K", b"%d" % i) for i, p in enumerate(payloads)
    )
    points = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    d = FrameDecoder(1000)
    data: list[bytes] = [b""]
    controls: list[bytes] = []
    for a, b in itertools.pairwise(points):
        d.feed(stream[a:b])
        for kind, piece in takeAll(d):
            if kind == b"D":
                data[-1] += bytes(piece)
            else:
                controls.append(bytes(piece))
                data.append(b"")
    assert data[:-1] == payloads
    assert controls == [b"%d" % i for i in range(len(payloads))]
    assert len(d) == 0


def test_upload_holds_views_not_copies(h: Harness) -> None:
    """The upload protocol keeps a data frame's payload as a view of the read
    it came in; tiny pieces are gathered into one buffer instead of each held."""
    c = h.connect()
    proto = c.proto
    c.put("f", 10 * 1024 * 1024)
    c.frames()
    read = encodeFrame(b"D", b"z" * 100_000)
    # Fed to the protocol directly: what is checked is that the read object a
    # transport hands over is the one held, so the test must own that object.
    proto.dataReceived(read)
    upload = proto.upload
    assert upload is not None
    [held] = upload.pending
    assert isinstance(held, memoryview)
    assert held.obj is read
    for _ in range(5000):
        proto.dataReceived(encodeFrame(b"D", b"t"))
    # 5000 one-byte frames are held as one gathered buffer after the view.
    assert len(upload.pending) == 2
    assert upload.pendingBytes == 100_000 + 5000


def test_data_before_authentication_is_not_streamed(h: Harness) -> None:
    """Before authentication a D frame is an ordinary (refused) frame: E
    auth-required and close, whatever its length within the limit."""
    conn = h.open()
    conn.send(b"D", b"x" * 100)
    assert conn.frames()[-1] == (
        b"E",
        {"code": "auth-required", "message": "authenticate with an A frame first"},
    )
    assert conn.closed
