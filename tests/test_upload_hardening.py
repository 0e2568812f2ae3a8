"""Upload hardening (issue 9, findings 6-8), in memory: objects planted at a
partial file's name, every OS error at every step, quotas and the per-user
cap on parallel uploads, and a transfer that stalls between frames."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from netproto.codec import encodeFrame
from netproto.testing import defaultOptions
from netproto.upload import plugin as uploadPlugin
from netproto.upload import store
from netproto.upload.names import partialName
from netproto.upload.plugin import DEFAULT_MAX_PER_USER
from netproto.upload.protocol import UploadProtocol
from tests.uploadkit import PLANTS, Harness, StepExecutor, error, smallTmpfs, stored


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


def fillInodes(mount: Path, limit: int = 1000) -> list[Path]:
    """Create empty files in ``mount`` until it has no inode left (real ENOSPC);
    returns them. Fails if ``limit`` files did not use up its inodes."""
    made: list[Path] = []
    for i in range(limit):
        path = mount / f"filler{i}"
        try:
            path.touch()
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
            return made
        made.append(path)
    raise AssertionError(f"{mount} still had inodes after {limit} files")


def remount(path: Path, mode: str) -> None:
    """Make the file system at ``path`` read-only (``ro``) or writable (``rw``): real EROFS."""
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True)


# -- finding 6: objects planted at the partial file's name -----------------------


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


# -- finding 7: every OS error at every step has its code, and none is fatal ----------


def test_out_of_inodes_at_put_is_no_space(tmp_path: Path) -> None:
    """On a file system out of inodes (a real tmpfs with nr_inodes): a P for a
    new file (ENOSPC creating the partial file) and one in a new directory
    (ENOSPC at mkdir) get E no-space, not internal; the connection stays
    usable and stores a file once an inode is free again."""
    with smallTmpfs(tmp_path / "data" / "uploads", "1m", inodes=4) as mount:
        h = Harness(tmp_path)
        fillers = fillInodes(mount)
        c = h.connect()
        assert error("no-space")(c.upload("f", b"data"))
        assert error("no-space")(c.upload("dir/f", b"data"))
        assert not c.closed
        fillers[0].unlink()
        assert c.upload("f", b"data") == stored("f", b"data")


def test_read_only_upload_dir_is_not_allowed(tmp_path: Path) -> None:
    """On a read-only file system (a real tmpfs remounted ro): a P at the top
    (EROFS creating the partial file) and one in a new directory (EROFS at
    mkdir) get E not-allowed, not internal; once writable again the same
    connection stores a file."""
    with smallTmpfs(tmp_path / "data" / "uploads", "1m") as mount:
        h = Harness(tmp_path)
        c = h.connect()
        remount(mount, "ro")
        try:
            assert error("not-allowed")(c.upload("f", b"data"))
            assert error("not-allowed")(c.upload("dir/f", b"data"))
            assert not c.closed
        finally:
            remount(mount, "rw")
        assert c.upload("f", b"data") == stored("f", b"data")
        assert h.files() == {"f"}


class Fault:
    """One system call of the store made to fail with ``code``, for the faults a
    real file system cannot be made to give on demand (EDQUOT without quotas
    set up, ENAMETOOLONG from a file system with a short NAME_MAX, ENOSPC at
    fsync or rename, EIO)."""

    def __init__(self, call: str, errnum: int, code: str = "") -> None:
        self.call = call
        self.errnum = errnum
        #: the code the peer must get
        self.code = code

    def __repr__(self) -> str:
        return f"{self.call}-{errno.errorcode[self.errnum]}"

    def fail(self, *args: Any, **kwargs: Any) -> Any:
        raise OSError(self.errnum, os.strerror(self.errnum))

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        if self.call == "open-partial":
            realOpen = os.open

            def open_(path: Any, flags: int, mode: int = 0o777, **kw: Any) -> int:
                if isinstance(path, bytes) and path.startswith(b".netproto-part"):
                    self.fail()
                return realOpen(path, flags, mode, **kw)

            monkeypatch.setattr(os, "open", open_)
        elif self.call in ("rename", "renameNoReplace"):
            monkeypatch.setattr(store, "renameNoReplace", self.fail)
            monkeypatch.setattr(os, "rename", self.fail)
        else:
            monkeypatch.setattr(os, self.call, self.fail)


@pytest.mark.parametrize(
    "fault",
    [
        Fault("mkdir", errno.ENAMETOOLONG, "invalid-name"),
        Fault("mkdir", errno.EMLINK, "no-space"),
        Fault("open-partial", errno.EDQUOT, "no-space"),
        Fault("open-partial", errno.EACCES, "not-allowed"),
        Fault("fstatvfs", errno.EIO, "internal"),
        Fault("writev", errno.EFBIG, "too-large"),
        Fault("writev", errno.EDQUOT, "no-space"),
        Fault("fsync", errno.ENOSPC, "no-space"),
        Fault("fsync", errno.EIO, "internal"),
        Fault("rename", errno.EDQUOT, "no-space"),
        Fault("rename", errno.EROFS, "not-allowed"),
        Fault("rename", errno.ENOENT, "not-found"),
    ],
    ids=repr,
)
@pytest.mark.parametrize("overwrite", [False, True], ids=["new", "overwrite"])
def test_every_os_error_at_every_step_has_its_code_and_is_not_fatal(
    h: Harness,
    monkeypatch: pytest.MonkeyPatch,
    loggedErrors: list[dict[str, Any]],
    fault: Fault,
    overwrite: bool,
) -> None:
    """An OS error at any step (mkdir, creating the partial file, statvfs,
    write, fsync, rename) is answered with its documented code, never a
    traceback or a closed connection; nothing appears under the final name and
    no partial data is left; the next file on the same connection is stored.
    Only an unexpected errno (EIO) is internal, logged for the operator."""
    data = os.urandom(5000)
    c = h.connect()
    if overwrite:
        assert c.upload("d/f", b"old") == stored("d/f", b"old")
    with monkeypatch.context() as patch:
        writev = h.store.writev
        if fault.call == "writev":
            h.store.writev = fault.fail
        else:
            fault.install(patch)
        try:
            frames = c.upload("d/f" if overwrite else "new/f", data, overwrite=overwrite)
        finally:
            h.store.writev = writev
    assert error(fault.code)(frames), frames
    assert not c.closed
    if overwrite:
        assert h.files() == {"d", "d/f"}
        assert (h.root / "d" / "f").read_bytes() == b"old"
    else:  # a directory made before the failure stays (docs/upload.md)
        assert h.files() == (set() if fault.call in ("mkdir", "fstatvfs") else {"new"})
    assert len(loggedErrors) == (fault.code == "internal")
    loggedErrors.clear()
    assert c.upload("next", data) == stored("next", data)


def test_partial_data_that_cannot_be_removed_is_not_fatal(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When removing a failed file's partial data fails too (the file system
    went read-only), the peer still gets the file's own error and the
    connection goes on; the data is left for the expiry sweep."""
    c = h.connect()
    c.put("f", 5)
    assert c.frames() == [(b"K", {"offset": 0})]
    c.data(b"hello")
    with monkeypatch.context() as patch:
        patch.setattr(os, "unlink", Fault("unlink", errno.EROFS).fail)
        c.finish(b"HELLO")
        assert error("checksum-mismatch")(c.frames())
    assert not c.closed
    assert [p.name for p in h.root.iterdir()] == [partialName(b"f", 5).decode()]
    assert c.upload("g", b"x") == stored("g", b"x")


# -- finding 8: quotas, parallel uploads per user, stalled transfers -------------------


def quotaHarness(tmp: Path, **options: int) -> Harness:
    """Users alice, bob and carol; ``options`` as ``upload_quota_files=2`` (dashes for _)."""
    return Harness(
        tmp,
        options={k.replace("_", "-"): v for k, v in options.items()},
        users=("alice", "bob", "carol"),
    )


def refusedFor(code: str, quota: str) -> Callable[[list[tuple[bytes, Any]]], bool]:
    """An E ``code`` whose message names ``quota`` (the option an operator changes)."""

    def check(frames: list[tuple[bytes, Any]]) -> bool:
        return error(code)(frames) and quota in frames[0][1]["message"]

    return check


def test_files_quota_is_no_space_naming_it_and_other_users_still_upload(tmp_path: Path) -> None:
    """With --upload-quota-files 2, a user's third file is refused before any
    data with no-space naming the quota; the connection stays; replacing one's
    own file is not a new file; other users upload as before."""
    h = quotaHarness(tmp_path, upload_quota_files=2)
    alice = h.connect("alice")
    assert alice.upload("a", b"1") == stored("a", b"1")
    assert alice.upload("d/b", b"2") == stored("d/b", b"2")
    assert refusedFor("no-space", "--upload-quota-files")(alice.upload("c", b"3"))
    assert not alice.closed
    assert alice.upload("a", b"11", overwrite=True) == stored("a", b"11")
    bob = h.connect("bob")
    assert bob.upload("c", b"3") == stored("c", b"3")
    assert {p for p in h.files() if not p.startswith(".netproto-quota")} == {"a", "d", "d/b", "c"}


def test_bytes_quota_counts_stored_files_and_uploads_in_progress(tmp_path: Path) -> None:
    """With --upload-quota-bytes 100: what a user stored and what their uploads in
    progress announced count together; a refused upload costs nothing; once an
    upload in progress is dropped its room is given back; others are unaffected."""
    h = quotaHarness(tmp_path, upload_quota_bytes=100)
    first, second = h.connect("alice"), h.connect("alice")
    assert first.upload("a", b"x" * 40) == stored("a", b"x" * 40)
    first.put("b", 50)
    assert first.frames() == [(b"K", {"offset": 0})]
    assert refusedFor("no-space", "--upload-quota-bytes")(second.upload("c", b"y" * 11))
    assert second.upload("c", b"y" * 10) == stored("c", b"y" * 10)
    first.drop()
    assert second.upload("d", b"z" * 50) == stored("d", b"z" * 50)
    assert refusedFor("no-space", "100 bytes")(second.upload("e", b"!"))
    assert h.connect("bob").upload("e", b"b" * 100) == stored("e", b"b" * 100)


def test_overwriting_another_users_file_moves_its_charge(tmp_path: Path) -> None:
    """The file's owner is whoever stored it last: when bob replaces alice's
    file, it no longer counts for alice (she may store another) and counts
    for bob."""
    h = quotaHarness(tmp_path, upload_quota_files=1)
    alice, bob = h.connect("alice"), h.connect("bob")
    assert alice.upload("shared", b"a") == stored("shared", b"a")
    assert error("no-space")(alice.upload("other", b"a"))
    assert bob.upload("shared", b"b", overwrite=True) == stored("shared", b"b")
    assert alice.upload("other", b"a") == stored("other", b"a")
    assert error("no-space")(bob.upload("more", b"b"))


def test_quota_survives_a_restart_and_follows_the_disk(tmp_path: Path) -> None:
    """The charge of stored files survives a restart (a new factory over the same
    upload dir); files an operator removes are given back at the next sweep."""
    h = quotaHarness(tmp_path, upload_quota_files=2, upload_quota_bytes=1000)
    alice = h.connect("alice")
    assert alice.upload("a", b"x" * 600) == stored("a", b"x" * 600)
    assert alice.upload("b", b"y") == stored("b", b"y")
    h.store.close()
    again = quotaHarness(tmp_path, upload_quota_files=2, upload_quota_bytes=1000)
    alice = again.connect("alice")
    assert refusedFor("no-space", "--upload-quota-files")(alice.upload("c", b"z"))
    (again.root / "b").unlink()
    (again.root / "a").write_bytes(b"x" * 900)  # changed behind the server's back
    again.factory.startFactory()  # the sweep at start reconciles the index
    again.factory.stopFactory()
    assert refusedFor("no-space", "--upload-quota-bytes")(alice.upload("c", b"z" * 101))
    assert alice.upload("c", b"z" * 100) == stored("c", b"z" * 100)


def test_parallel_uploads_per_user_are_capped_with_busy(tmp_path: Path) -> None:
    """With --upload-max-per-user 2, a user's third upload at once is refused
    with busy naming the option, before any data; other users are not
    affected; a finished or dropped upload frees its slot."""
    h = quotaHarness(tmp_path, upload_max_per_user=2)
    one, two, three = h.connect("alice"), h.connect("alice"), h.connect("alice")
    for c in (one, two):
        c.put(f"f{id(c)}", 1)
        assert c.frames() == [(b"K", {"offset": 0})]
    assert refusedFor("busy", "--upload-max-per-user")(three.upload("g", b"1"))
    assert not three.closed
    assert h.connect("bob").upload("g", b"1") == stored("g", b"1")
    one.data(b"1")
    one.finish(b"1")
    assert one.frames()[0][0] == b"K"
    assert three.upload("h", b"1") == stored("h", b"1")
    three.put("i", 1)
    assert three.frames() == [(b"K", {"offset": 0})]
    assert error("busy")(one.upload("j", b"1"))
    two.drop()
    assert one.upload("j", b"1") == stored("j", b"1")


def test_stalled_transfer_is_ended_by_the_idle_timeout(tmp_path: Path) -> None:
    """A client that got K ready and then sends nothing holds its partial file
    and its user's upload slot only until the idle timeout: then E timeout,
    the connection closed, the partial data removed and the slot free."""
    h = quotaHarness(tmp_path, upload_max_per_user=1, idle_timeout=60)
    stalled = h.connect("alice")
    stalled.put("f", 10)
    assert stalled.frames() == [(b"K", {"offset": 0})]
    stalled.data(b"12345")
    h.clock.advance(59)
    assert not stalled.closed
    assert error("busy")(h.connect("alice").upload("g", b"1"))
    h.clock.advance(2)
    assert error("timeout")(stalled.frames())
    assert stalled.closed
    stalled.drop()  # the transport's close reaches the protocol
    assert h.files() == set()
    assert h.connect("alice").upload("g", b"1") == stored("g", b"1")


def test_a_file_the_server_is_still_writing_is_not_idle(tmp_path: Path) -> None:
    """While the server is still opening, writing or renaming a file (a slow
    disk: the worker jobs are held here), the connection is busy, not idle:
    the idle timeout does not cut it, and the file is stored once the disk
    catches up."""
    steps = StepExecutor()
    h = Harness(tmp_path, executor=steps, options={"idle-timeout": 60})
    c = h.connect()
    data = os.urandom(300_000)
    c.put("f", len(data))
    h.clock.advance(120)
    steps.runAll()
    assert c.frames() == [(b"K", {"offset": 0})]
    c.data(data)
    c.finish(data)
    h.clock.advance(120)
    assert not c.closed
    steps.runAll()
    assert c.frames() == stored("f", data)


def test_reading_paused_by_flow_control_stops_the_frame_deadline(tmp_path: Path) -> None:
    """While reading is paused for the disk to catch up, the client cannot
    send: a data frame in progress then is not timed out by the frame
    deadline, and completes once reading resumes."""
    steps = StepExecutor()
    h = Harness(tmp_path, executor=steps, options={"frame-timeout": 30, "idle-timeout": 60})
    c = h.connect()
    data = os.urandom(UploadProtocol.highWater + 2 * 256 * 1024)
    c.put("f", len(data))
    steps.runAll()
    assert c.frames() == [(b"K", {"offset": 0})]
    cut = UploadProtocol.highWater + 256 * 1024 + 100
    chunk = 256 * 1024
    before = b"".join(
        encodeFrame(b"D", data[i : min(i + chunk, cut - 100)]) for i in range(0, cut - 100, chunk)
    )
    frame = encodeFrame(b"D", data[cut - 100 : cut + 1000])
    # One read that passes the high-water mark and ends inside a frame: reading
    # pauses with that frame begun.
    c.sendRaw(before + frame[:104])
    assert c.paused
    assert c.proto._decoder.inFrame
    h.clock.advance(100)
    assert not c.closed
    steps.runAll()
    assert not c.paused
    c.sendRaw(frame[104:])
    c.data(data[cut + 1000 :])
    c.finish(data)
    steps.runAll()
    assert c.frames() == stored("f", data)


def test_the_declared_default_cap_is_the_one_documented_in_the_code() -> None:
    """``twistd netproto --help`` shows the cap the service uses by default."""
    assert defaultOptions(uploadPlugin.service)["upload-max-per-user"] == DEFAULT_MAX_PER_USER
