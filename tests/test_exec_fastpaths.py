"""exec's fast paths (docs/performance.md, exec): a keystroke's read straight to
the command, output straight to its frames; each checked against what the
general path does, in memory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from netproto.exec.spawn import DEFAULT_PIPE_SIZE
from netproto.exec.transport import PipeReader
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


def test_output_reads_ask_for_a_frame_once_the_pipe_has_filled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pipe is read at most its default size at a time until a read finds it
    full (a keystroke's echo is not a 256 KiB allocation); then it is enlarged
    and read ``readSize`` bytes at a time."""
    asked: list[int] = []
    read = os.read

    def recordingRead(fd: int, size: int) -> bytes:
        asked.append(size)
        return read(fd, size)

    monkeypatch.setattr(os, "read", recordingRead)
    received: list[int] = []
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    reader = PipeReader(None, r, 256 * 1024, lambda data: received.append(len(data)), lambda: None)
    try:
        os.write(w, b"x" * 100)
        reader.doRead()
        assert received == [100] and not reader.grown
        written = os.write(w, b"x" * (1 << 20))  # the kernel's default pipe: 64 KiB
        reader.doRead()
        assert received[-1] == written == DEFAULT_PIPE_SIZE and reader.grown
        written = os.write(w, b"x" * (200 * 1024))
        reader.doRead()
        assert received[-1] == written == 200 * 1024
        assert asked == [DEFAULT_PIPE_SIZE, DEFAULT_PIPE_SIZE, 256 * 1024]
    finally:
        reader.close()
        os.close(w)


def test_a_failing_write_on_the_fast_path_is_an_internal_error_not_a_crash(
    tmp_path: Path, loggedErrors: list[dict[str, Any]]
) -> None:
    """A bug under the keystroke path ends as the general path's would: logged,
    the client told ``internal``, the connection closed; not an exception
    escaping into Twisted."""
    c = Conn(tmp_path)
    c.send(b"R", {"argv": ["cat"], "stdin": True})
    _, process, _ = c.factory.started[0]

    def broken(data: bytes) -> None:
        raise RuntimeError("a bug")

    process.write = broken  # type: ignore[method-assign]
    c.proto.dataReceived((2).to_bytes(4, "big") + b"0a")
    assert c.frames()[-1][1]["code"] == "internal"
    assert c.closed
    assert [e["log_failure"].type for e in loggedErrors] == [RuntimeError]
    loggedErrors.clear()
