"""``FrameDecoder`` on any byte stream, split anywhere (Hypothesis).

The promises: the frames that come out do not depend on where the reads were
split; the only exceptions are the documented ones (``FrameTooLarge``,
``EmptyFrame``), raised at the same frame however the bytes arrived; frames
streamed with :meth:`FrameDecoder.take` come out as the same payloads in
pieces; and :attr:`FrameDecoder.inFrame` and :attr:`FrameDecoder.completed`,
which the frame deadline relies on, tell the truth.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from hypothesis import given
from hypothesis import strategies as st

from netproto.codec import EmptyFrame, FrameDecoder, FrameTooLarge, encodeFrame

MAX_FRAME = 64
STREAMED = frozenset({b"D"})

# Well-formed frames (some over the limit) mixed with arbitrary bytes, so that
# both the valid paths and every error path are reached often.
streams = st.lists(
    st.one_of(
        st.builds(
            encodeFrame,
            st.sampled_from([b"A", b"D", b"K", b"\x00", b"\xff"]),
            st.binary(max_size=MAX_FRAME + 8),
        ),
        st.binary(max_size=8),
    ),
    max_size=12,
).map(b"".join)
cuts = st.lists(st.integers(min_value=0, max_value=2000), max_size=40)

Outcome = tuple[list[tuple[bytes, bytes]], tuple[type, tuple[object, ...]] | None]


def reads(stream: bytes, points: list[int]) -> list[bytes]:
    """``stream`` cut at ``points`` (taken modulo its length), in order."""
    edges = sorted({p % (len(stream) + 1) for p in points} | {0, len(stream)})
    return [stream[a:b] for a, b in itertools.pairwise(edges)]


def decode(
    chunks: list[bytes], pull: Callable[[FrameDecoder], tuple[bytes, bytes] | None]
) -> Outcome:
    """Feed ``chunks`` one by one, pulling frames after each; stop at the first error."""
    decoder = FrameDecoder(MAX_FRAME)
    frames: list[tuple[bytes, bytes]] = []
    for chunk in chunks:
        decoder.feed(chunk)
        try:
            while (frame := pull(decoder)) is not None:
                frames.append(frame)
        except (FrameTooLarge, EmptyFrame) as e:
            return frames, (type(e), e.args)
    return frames, None


def nextFrame(decoder: FrameDecoder) -> tuple[bytes, bytes] | None:
    return decoder.next()


class Streamer:
    """Pulls with :meth:`FrameDecoder.take`, joining a streamed frame's pieces
    back into one payload at the piece after which ``completed`` went up."""

    def __init__(self) -> None:
        self.pieces: list[bytes] = []

    def __call__(self, decoder: FrameDecoder) -> tuple[bytes, bytes] | None:
        while True:
            before = decoder.completed
            taken = decoder.take(STREAMED)
            if taken is None:
                return None
            kind, piece = taken
            if kind not in STREAMED:
                assert decoder.completed == before + 1
                return kind, bytes(piece)
            self.pieces.append(bytes(piece))
            if decoder.completed == before + 1:
                payload, self.pieces = b"".join(self.pieces), []
                return kind, payload


@given(streams, cuts)
def test_frames_do_not_depend_on_how_the_stream_is_split(stream: bytes, points: list[int]) -> None:
    """One read or many, at any split points: the same frames, then the same error (if any)."""
    assert decode(reads(stream, points), nextFrame) == decode([stream], nextFrame)


@given(streams)
def test_one_byte_at_a_time_is_the_same_as_one_read(stream: bytes) -> None:
    """The degenerate split, for every stream."""
    assert decode([stream[i : i + 1] for i in range(len(stream))], nextFrame) == decode(
        [stream], nextFrame
    )


@given(streams, cuts)
def test_streamed_frames_come_out_whole_in_pieces(stream: bytes, points: list[int]) -> None:
    """``take`` gives the same frames as ``next``, streamed ones in pieces, and
    counts each frame as completed exactly once, with its last piece."""
    assert decode(reads(stream, points), Streamer()) == decode([stream], nextFrame)


@given(streams, cuts)
def test_inFrame_is_true_exactly_while_a_frame_is_incomplete(
    stream: bytes, points: list[int]
) -> None:
    """Between reads: ``inFrame`` is whether bytes of an unfinished frame are held
    (all the bytes fed but not yet returned in frames), and ``completed`` counts
    the frames that came out."""
    decoder = FrameDecoder(MAX_FRAME)
    count = fed = consumed = 0
    for chunk in reads(stream, points):
        decoder.feed(chunk)
        fed += len(chunk)
        try:
            while (frame := decoder.next()) is not None:
                count += 1
                consumed += 5 + len(frame[1])
        except (FrameTooLarge, EmptyFrame):
            return
        assert decoder.completed == count
        assert len(decoder) == fed - consumed
        assert decoder.inFrame == (fed > consumed)
