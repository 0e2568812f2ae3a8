"""Upload hardening (issue 9, findings 6-8), in memory: objects planted at a
partial file's name, every OS error at every step, quotas and the per-user
cap on parallel uploads, and a transfer that stalls between frames."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from netproto.upload.names import partialName
from tests.test_upload_protocol import Harness, error, stored


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


# -- finding 6: objects planted at the partial file's name -----------------------


def _hardLink(part: Path, outside: Path) -> None:
    os.link(outside, part)


def _symlink(part: Path, outside: Path) -> None:
    part.symlink_to(outside)


def _fifo(part: Path, outside: Path) -> None:
    os.mkfifo(part)


def _directory(part: Path, outside: Path) -> None:
    part.mkdir()


def _socket(part: Path, outside: Path) -> None:
    os.mknod(part, stat.S_IFSOCK | 0o600)  # what bind() leaves; the path is too long to bind


def _foreignFile(part: Path, outside: Path) -> None:
    part.write_bytes(b"left by someone else")
    os.chown(part, 4321, 4321)


PLANTS: dict[str, Callable[[Path, Path], None]] = {
    "hard link to an outside file": _hardLink,
    "symbolic link to an outside file": _symlink,
    "FIFO": _fifo,
    "directory": _directory,
    "UNIX socket": _socket,
    "regular file of another owner": _foreignFile,
}


@pytest.mark.parametrize("resume", [False, True], ids=["plain", "resume"])
@pytest.mark.parametrize("plant", PLANTS.values(), ids=PLANTS.keys())
def test_object_planted_at_the_partial_name_is_refused_and_nothing_outside_changes(
    h: Harness, tmp_path: Path, plant: Callable[[Path, Path], None], resume: bool
) -> None:
    """Whatever a local user plants at the exact (predictable) partial-file name
    of an upload, the upload is refused with not-allowed before any data,
    nothing is written through it (the outside file is byte-identical, its
    mtime unchanged), nothing appears under the final name, the planted object
    is left as it was, and the connection serves the next file."""
    outside = tmp_path / "outside"
    outside.write_bytes(b"precious")
    before = outside.stat()
    h.root.mkdir(parents=True, exist_ok=True)
    data = b"attacker-chosen!"
    part = h.root / partialName(b"f", len(data)).decode()
    plant(part, outside)
    planted = os.lstat(part)
    c = h.connect()
    frames = c.upload("f", data, resume=resume)
    assert error("not-allowed")(frames), frames
    assert "partial" in frames[0][1]["message"]
    assert outside.read_bytes() == b"precious"
    assert outside.stat().st_mtime_ns == before.st_mtime_ns
    assert not (h.root / "f").exists()
    after = os.lstat(part)
    assert (after.st_ino, after.st_mode) == (planted.st_ino, planted.st_mode)
    assert not c.closed
    assert c.upload("g", data) == stored("g", data)


def test_stale_partial_of_our_own_is_replaced_by_a_new_file(h: Harness) -> None:
    """Without resume, the server's own stale partial file is not reused: it is
    removed and the data goes to a newly created (O_EXCL) file, so a file
    that someone else holds open (another link made meanwhile) is never
    written."""
    c = h.connect()
    c.put("f", 10, resume=True)
    c.frames()
    c.data(b"12345")
    c.drop()
    part = h.root / partialName(b"f", 10).decode()
    old = part.stat().st_ino
    held = os.open(part, os.O_RDONLY)  # a reader of the old data keeps its inode alive
    try:
        c = h.connect()
        assert c.upload("f", b"abcdefghij") == stored("f", b"abcdefghij")
        assert os.pread(held, 100, 0) == b"12345"
    finally:
        os.close(held)
    assert (h.root / "f").stat().st_ino != old


def test_partial_swapped_before_the_rename_is_not_put_in_place(h: Harness, tmp_path: Path) -> None:
    """A local user who replaces the partial file, after K ready, by a hard link
    to a file outside does not get that file renamed under the final name as if
    it were the checked data: the upload is refused with not-allowed, nothing
    appears under the final name, and the outside file is untouched."""
    outside = tmp_path / "outside"
    outside.write_bytes(b"precious")
    data = b"0123456789"
    c = h.connect()
    c.put("f", len(data))
    assert c.frames() == [(b"K", {"offset": 0})]
    part = h.root / partialName(b"f", len(data)).decode()
    part.unlink()
    os.link(outside, part)
    c.data(data)
    c.finish(data)
    assert error("not-allowed")(c.frames())
    assert not (h.root / "f").exists()
    assert outside.read_bytes() == b"precious"
    assert os.path.samefile(part, outside)  # left as planted, for the operator
