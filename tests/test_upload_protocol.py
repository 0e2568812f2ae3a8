"""The upload protocol and store without sockets: FramedPeer in memory, a fake clock,
and store calls run by an executor the test controls (at once, or step by step)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from twisted.internet.testing import MemoryReactorClock

from netproto.upload.names import partialName
from netproto.upload.protocol import Phase, UploadProtocol
from netproto.upload.server import makeFactory, uploadDirectory
from netproto.upload.store import renameNoReplace
from tests.support import makeContext
from tests.uploadkit import TTL, Harness, SmallDisk, StepExecutor, error, stored


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


# -- storing -------------------------------------------------------------------


def test_file_is_stored_whole_under_its_name(h: Harness) -> None:
    """P, K ready at offset 0, D frames, F: K stored names the file, its size and
    SHA-256, and the file holds exactly the bytes sent; nothing else is left."""
    data = os.urandom(300_000)
    c = h.connect()
    assert c.upload("report.bin", data) == stored("report.bin", data)
    assert (h.root / "report.bin").read_bytes() == data
    assert h.files() == {"report.bin"}
    assert c.proto.phase is Phase.IDLE


def test_several_files_over_one_connection(h: Harness) -> None:
    """Files follow one another over one connection, an empty one included."""
    c = h.connect()
    for i, data in enumerate([b"", b"x", os.urandom(70_000)]):
        assert c.upload(f"f{i}", data) == stored(f"f{i}", data)
    assert h.files() == {"f0", "f1", "f2"}
    assert (h.root / "f0").read_bytes() == b""


def test_unicode_name_and_subdirectories(h: Harness) -> None:
    """A Chinese name lands under its exact UTF-8 bytes; directories are made on demand."""
    name = "报告/二〇二四/季度 总结.txt"
    c = h.connect()
    assert c.upload(name, "你好".encode()) == stored(name, "你好".encode())
    assert (h.root / "报告" / "二〇二四" / "季度 总结.txt").read_text() == "你好"


def test_upload_dir_is_created_private(tmp_path: Path) -> None:
    """A missing upload dir is created with mode 0700."""
    context = makeContext(tmp_path, reactor=MemoryReactorClock())
    makeFactory(context).store.close()
    assert (uploadDirectory(context).stat().st_mode & 0o777) == 0o700


# -- refusals that keep the connection -------------------------------------------


def test_existing_file_is_refused_without_overwrite(h: Harness) -> None:
    """An existing name gets E exists before any data; the old file is intact and
    the connection serves the next P; with overwrite the file is replaced."""
    c = h.connect()
    c.upload("a", b"old")
    assert error("exists")(c.upload("a", b"new"))
    assert (h.root / "a").read_bytes() == b"old"
    assert not c.closed
    assert c.upload("a", b"new", overwrite=True) == stored("a", b"new")
    assert (h.root / "a").read_bytes() == b"new"


def test_a_directory_is_never_overwritten(h: Harness) -> None:
    """A name that is a directory on the server is refused, even with overwrite."""
    (h.root / "d").mkdir(parents=True)
    c = h.connect()
    assert error("exists")(c.upload("d", b"x", overwrite=True))
    assert (h.root / "d").is_dir()


def test_too_large_is_refused_before_data(tmp_path: Path) -> None:
    """A size over --upload-max-size gets E too-large, creates nothing, and the
    connection stays usable."""
    h = Harness(tmp_path, maxSize=100)
    c = h.connect()
    assert error("too-large")(c.upload("big", b"x" * 101))
    assert c.upload("ok", b"x" * 100) == stored("ok", b"x" * 100)
    assert h.files() == {"ok"}


@pytest.mark.parametrize("name", ["../evil", "/abs", "a\\b", "a\x00b", "a\x07b", ".netproto-x"])
def test_bad_names_are_refused_and_nothing_is_written(h: Harness, name: str) -> None:
    """Name attacks get E invalid-name; nothing is created, inside or outside."""
    c = h.connect()
    assert error("invalid-name")(c.upload(name, b"payload"))
    assert h.files() == set()
    assert not (h.root.parent / "evil").exists()
    assert not c.closed


def test_symlink_inside_upload_dir_cannot_lead_outside(h: Harness, tmp_path: Path) -> None:
    """A symbolic link planted inside the upload dir, pointing outside, is never
    followed: as a directory the name is refused; as the final name it is not
    written through (exists), and with overwrite the link itself is replaced."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_bytes(b"precious")
    h.root.mkdir(parents=True, exist_ok=True)
    (h.root / "link").symlink_to(outside)
    (h.root / "leaf").symlink_to(outside / "victim")
    c = h.connect()
    assert error("invalid-name")(c.upload("link/new", b"evil"))
    assert error("invalid-name")(c.upload("link/victim", b"evil", overwrite=True))
    assert error("exists")(c.upload("leaf", b"evil"))
    assert c.upload("leaf", b"safe", overwrite=True) == stored("leaf", b"safe")
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]
    assert (outside / "victim").read_bytes() == b"precious"
    assert not (h.root / "leaf").is_symlink()
    assert (h.root / "leaf").read_bytes() == b"safe"


def test_a_file_in_the_way_of_a_directory_is_refused(h: Harness) -> None:
    """'a/b' when 'a' is a file: invalid-name, the file untouched."""
    c = h.connect()
    c.upload("a", b"file")
    assert error("invalid-name")(c.upload("a/b", b"x"))
    assert (h.root / "a").read_bytes() == b"file"


# -- errors during the data, and what they leave ---------------------------------


def test_wrong_checksum_stores_nothing(h: Harness) -> None:
    """An F whose SHA-256 does not match gets E checksum-mismatch; neither the file
    nor its partial data remain; the connection goes on."""
    c = h.connect()
    c.put("f", 5)
    c.frames()
    c.data(b"hello")
    c.finish(b"HELLO")
    assert error("checksum-mismatch")(c.frames())
    assert h.files() == set()
    assert c.upload("f", b"hello") == stored("f", b"hello")


def test_short_upload_stores_nothing(h: Harness) -> None:
    """F before all the announced bytes: E size-mismatch, nothing left."""
    c = h.connect()
    c.put("f", 10)
    c.frames()
    c.data(b"12345")
    c.finish(b"12345")
    assert error("size-mismatch")(c.frames())
    assert h.files() == set()
    assert not c.closed


def test_long_upload_stores_nothing_and_the_rest_is_ignored(h: Harness) -> None:
    """More bytes than announced: E size-mismatch at once; the rest of that file's
    D frames and its F are ignored, and the next P works."""
    c = h.connect()
    c.put("f", 4)
    c.frames()
    c.data(b"12345")
    assert error("size-mismatch")(c.frames())
    c.data(b"more")
    c.finish(b"12345more")
    assert c.frames() == []
    assert h.files() == set()
    assert c.upload("g", b"1234") == stored("g", b"1234")


def test_disk_full_while_writing_is_no_space_and_leaves_nothing(tmp_path: Path) -> None:
    """ENOSPC from the disk mid-file: E no-space, the partial data removed,
    nothing under the final name; the connection stays usable."""
    disk = SmallDisk(100_000)
    h = Harness(tmp_path, writev=disk.writev)
    c = h.connect()
    data = os.urandom(600_000)
    c.put("big", len(data))
    c.frames()
    c.data(data)
    c.finish(data)
    assert error("no-space")(c.frames())
    assert h.files() == set()
    disk.free = 10**9
    assert c.upload("small", b"fits") == stored("small", b"fits")


def test_no_free_space_is_refused_at_put(tmp_path: Path) -> None:
    """A P that would leave less than --upload-min-free is refused with no-space
    before any data, and creates nothing."""
    h = Harness(tmp_path, minFree=2**62)
    c = h.connect()
    assert error("no-space")(c.upload("dir/f", b"x"))
    assert h.files() == set()


def test_dropped_connection_removes_partial_data(h: Harness) -> None:
    """A connection lost mid-file without resume leaves nothing behind."""
    c = h.connect()
    c.put("f", 1000)
    c.frames()
    c.data(b"x" * 500)
    c.drop()
    assert h.files() == set()


def test_dropped_connection_keeps_data_for_resume(h: Harness) -> None:
    """With resume, data from a lost connection is kept (under a reserved name
    only) and the next P of the same name and size continues from its offset;
    the file is complete and right."""
    data = os.urandom(400_000)
    c = h.connect()
    c.put("f", len(data), resume=True)
    c.frames()
    c.data(data[:300_000])
    c.drop()
    assert not (h.root / "f").exists()
    [kept] = h.files()
    assert kept.startswith(".netproto-part-")
    c = h.connect()
    c.put("f", len(data), resume=True)
    assert c.frames() == [(b"K", {"offset": 300_000})]
    c.data(data[300_000:])
    c.finish(data)
    assert c.frames() == stored("f", data)
    assert (h.root / "f").read_bytes() == data
    assert h.files() == {"f"}


def test_resume_needs_same_size_and_a_fresh_partial(h: Harness) -> None:
    """Kept data is used only for the same name and size, within the resume TTL;
    a P without resume removes it."""
    c = h.connect()
    c.put("f", 100, resume=True)
    c.frames()
    c.data(b"x" * 50)
    c.drop()
    c = h.connect()
    c.put("f", 101, resume=True)
    assert c.frames() == [(b"K", {"offset": 0})]
    c.drop()
    c = h.connect()
    c.put("f", 100, resume=True)
    assert c.frames() == [(b"K", {"offset": 50})]
    c.drop()
    [part] = [p for p in h.root.iterdir() if p.name.endswith("-100")]
    old = h.clock.seconds() - TTL - 1
    os.utime(part, (old, old))
    c = h.connect()
    c.put("f", 100, resume=True)
    assert c.frames() == [(b"K", {"offset": 0})]
    c.data(b"y" * 10)
    c.drop()
    c = h.connect()
    c.put("f", 100)
    assert c.frames() == [(b"K", {"offset": 0})]
    c.drop()
    assert {p for p in h.files() if p.endswith("-100")} == set()


def test_sweep_removes_only_expired_unlocked_partials(h: Harness) -> None:
    """The expiry sweep removes kept data older than the TTL anywhere in the tree,
    and leaves fresh data and data in use alone."""
    c = h.connect()
    c.put("a/old", 10, resume=True)
    c.frames()
    c.data(b"x")
    c.drop()
    c = h.connect()
    c.put("fresh", 10, resume=True)
    c.frames()
    c.data(b"x")
    c.drop()
    busy = h.connect()
    busy.put("busy", 10, resume=True)
    busy.frames()
    oldPart = h.root / "a" / partialName(b"old", 10).decode()
    freshPart = h.root / partialName(b"fresh", 10).decode()
    busyPart = h.root / partialName(b"busy", 10).decode()
    old = h.clock.seconds() - TTL - 1
    for part in (oldPart, busyPart):
        os.utime(part, (old, old))
    assert h.store.sweep(h.clock.seconds()) == 1
    assert not oldPart.exists()
    assert freshPart.exists()
    assert busyPart.exists()


def test_same_file_twice_at_once_is_busy(h: Harness) -> None:
    """Two connections uploading the same name and size at once: the second is
    told busy (its own data never mixes with the first's)."""
    a, b = h.connect(), h.connect()
    a.put("f", 4)
    assert a.frames() == [(b"K", {"offset": 0})]
    assert error("busy")(b.upload("f", b"1234"))
    a.data(b"1234")
    a.finish(b"1234")
    assert a.frames() == stored("f", b"1234")


# -- the wire's state table --------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "payload"),
    [
        (b"D", b"data"),
        (b"F", json.dumps({"sha256": "0" * 64}).encode()),
        (b"P", b"not json"),
        (b"P", json.dumps({"name": "f", "size": -1}).encode()),
        (b"P", json.dumps({"name": "f", "size": True}).encode()),
        (b"P", json.dumps({"name": "f", "size": 1, "overwrite": "yes"}).encode()),
        (b"X", b""),
    ],
)
def test_malformed_or_misplaced_frames_are_bad_frames(
    h: Harness, kind: bytes, payload: bytes
) -> None:
    """D or F without a P, a malformed P, an unknown type: E bad-frame and close."""
    c = h.connect()
    c.send(kind, payload)
    assert error("bad-frame")(c.frames())
    assert c.closed


def test_bad_finish_digest_is_a_bad_frame(h: Harness) -> None:
    """An F whose sha256 is not 64 hex digits is malformed: bad-frame."""
    c = h.connect()
    c.put("f", 1)
    c.frames()
    c.data(b"x")
    c.send(b"F", json.dumps({"sha256": "xyz"}).encode())
    assert error("bad-frame")(c.frames())
    c.drop()
    assert h.files() == set()


def test_data_before_ready_waits_for_the_file_to_open(tmp_path: Path) -> None:
    """PROTOCOL.md section 6 (feature ``pipeline``): D and F may follow P without
    waiting for K ready; they are held until the file is open, then stored, and
    the answers come in order (K ready, then K stored)."""
    steps = StepExecutor()
    h = Harness(tmp_path, executor=steps)
    c = h.connect()
    c.put("f", 1)
    c.data(b"x")
    c.finish(b"x")
    assert c.frames() == []  # nothing answered before the file is open
    steps.runAll()
    assert c.frames() == [(b"K", {"offset": 0}), *stored("f", b"x")]
    assert h.files() == {"f"}


def test_fast_client_is_paused_until_the_writer_catches_up(tmp_path: Path) -> None:
    """While writes are outstanding, more than highWater bytes pause reading
    from the client; reading resumes once the writer drains; the file is whole."""
    steps = StepExecutor()
    h = Harness(tmp_path, executor=steps)
    c = h.connect()
    data = os.urandom(UploadProtocol.highWater * 2)
    c.put("f", len(data))
    steps.runAll()
    assert c.frames() == [(b"K", {"offset": 0})]
    c.data(data, chunk=256 * 1024)
    assert c.paused
    steps.runAll()
    assert not c.paused
    c.finish(data)
    steps.runAll()
    assert c.frames() == stored("f", data)
    assert (h.root / "f").read_bytes() == data


def test_small_file_costs_two_store_calls(tmp_path: Path) -> None:
    """A small file is one store call to open and one to write, check, sync and
    rename: per-file overhead stays small."""
    steps = StepExecutor()
    h = Harness(tmp_path, executor=steps)
    c = h.connect()
    c.put("f", 4096)
    assert len(steps.calls) == 1
    steps.runAll()
    c.data(b"x" * 4096)
    c.finish(b"x" * 4096)
    assert len(steps.calls) == 1
    steps.runAll()
    assert c.frames()[-1] == stored("f", b"x" * 4096)[0]


def test_rename_no_replace_never_replaces(tmp_path: Path) -> None:
    """The atomic no-replace rename fails with EEXIST and leaves both files as they were."""
    (tmp_path / "src").write_bytes(b"new")
    (tmp_path / "dst").write_bytes(b"old")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(FileExistsError):
            renameNoReplace(fd, b"src", b"dst")
        renameNoReplace(fd, b"src", b"dst2")
    finally:
        os.close(fd)
    assert (tmp_path / "dst").read_bytes() == b"old"
    assert (tmp_path / "dst2").read_bytes() == b"new"
    assert not (tmp_path / "src").exists()
