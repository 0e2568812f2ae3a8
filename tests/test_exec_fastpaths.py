"""exec's fast paths (docs/performance.md, exec): a keystroke's read straight to
the command, output straight to its frames; each checked against what the
general path does, in memory."""

from __future__ import annotations

from pathlib import Path

from tests.execkit import Conn


def test_stdin_frames_reach_the_command_in_order_however_the_reads_cut_them(
    tmp_path: Path,
) -> None:
    """A read that is one whole 0 frame goes to the command at once (the
    keystroke path); reads holding several frames, part of one, or a frame
    after a partial one go through the decoder: the command gets every byte,
    in order, either way; a 0 frame over the limit is refused whole or not."""
    c = Conn(tmp_path)
    c.send(b"R", {"argv": ["cat"], "stdin": True})
    _, process, _ = c.factory.started[0]

    def frame(payload: bytes) -> bytes:
        return (len(payload) + 1).to_bytes(4, "big") + b"0" + payload

    one, two, three = frame(b"a"), frame(b"bc"), frame(b"def")
    for read in (one, two + three[:2], three[2:], frame(b"g") + frame(b""), frame(b"h")):
        c.proto.dataReceived(read)
    assert b"".join(d for what, d in process.calls if what == "stdin") == b"abcdefgh"
    assert not c.closed
    limit = c.proto._decoder.maxFrame
    c.proto.dataReceived((limit + 1).to_bytes(4, "big") + b"0" + b"x" * limit)
    assert c.frames()[-1][1]["code"] == "frame-too-large"
    assert b"".join(d for what, d in process.calls if what == "stdin") == b"abcdefgh"
