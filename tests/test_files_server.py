"""The upload service reading files back (PROTOCOL.md section 6): L, I, K listed and
G, K sending, D, F, in memory (FramedPeer), every disk call real."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from netproto.codec import encodeJSON
from netproto.upload import digests
from netproto.upload.protocol import UploadProtocol
from tests.fileskit import Served, fetch, listing, put, refusal, rot, sha
from tests.uploadkit import StepExecutor


@pytest.fixture
def served(tmp_path: Path) -> Served:
    return Served(tmp_path)


def test_the_hello_offers_list_and_get(served: Served) -> None:
    peer = served.peer()
    assert {"list", "get"} <= set(peer.hello.features)


def test_a_tree_is_listed_with_sizes_times_and_the_digests_of_uploads(served: Served) -> None:
    """L of the top lists one level; with recursive, the whole tree. An uploaded
    file carries its SHA-256; a file put there by other means does not (the
    server would have to read it); a directory is a dir."""
    peer = served.peer()
    put(peer, "a.txt", b"hello")
    put(peer, "d/e/b.bin", b"x" * 1000)
    (served.root / "d" / "local.txt").write_bytes(b"not uploaded")
    top, _ = listing(peer)
    assert set(top) == {"a.txt", "d"}
    assert top["a.txt"]["type"] == "file" and top["a.txt"]["size"] == 5
    assert top["a.txt"]["sha256"] == sha(b"hello")
    assert abs(top["a.txt"]["mtime"] - (served.root / "a.txt").stat().st_mtime) < 1e-3
    assert top["d"]["type"] == "dir" and "sha256" not in top["d"]
    tree, _ = listing(peer, recursive=True)
    assert set(tree) == {"a.txt", "d", "d/e", "d/e/b.bin", "d/local.txt"}
    assert tree["d/e/b.bin"]["sha256"] == sha(b"x" * 1000)
    assert "sha256" not in tree["d/local.txt"]
    sub, _ = listing(peer, "d/e")
    assert set(sub) == {"d/e/b.bin"}
    one, _ = listing(peer, "a.txt")
    assert set(one) == {"a.txt"}


def test_a_digest_is_given_only_for_the_content_it_was_kept_for(served: Served) -> None:
    """A file changed in place (new mtime) or replaced by other means (new
    inode) loses its digest; a restart (a new service on the same directory)
    keeps it."""
    peer = served.peer()
    put(peer, "changed", b"one")
    put(peer, "replaced", b"two")
    put(peer, "kept", b"three")
    path = served.root / "changed"
    with open(path, "ab") as f:
        f.write(b"!")
    os.utime(path, ns=(0, path.stat().st_mtime_ns + 1_000_000_000))
    (served.root / "new").write_bytes(b"two")
    os.replace(served.root / "new", served.root / "replaced")
    entries, _ = listing(peer)
    assert "sha256" not in entries["changed"] and "sha256" not in entries["replaced"]
    assert entries["kept"]["sha256"] == sha(b"three")
    again, _ = listing(Served(served.root.parent.parent).peer())
    assert again["kept"]["sha256"] == sha(b"three")


def test_the_servers_own_files_links_and_special_files_are_never_listed(
    served: Served, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    peer = served.peer()
    put(peer, "ok", b"ok")
    root = served.root
    (root / ".netproto-anything").write_bytes(b"own")
    (root / "link").symlink_to(outside, target_is_directory=True)
    (root / "filelink").symlink_to(outside / "secret")
    os.mkfifo(root / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "sock"))
    (root / "bad\x07name").write_bytes(b"no client could name it")
    try:
        entries, _ = listing(peer, recursive=True)
    finally:
        sock.close()
    assert set(entries) == {"ok"}


def test_a_listing_comes_in_frames_within_max_frame(served: Served) -> None:
    """Many entries: several I frames, none over the hello's max_frame, every
    entry once, and the count at the end."""
    served.factory.maxFrame = 2048
    peer = served.peer()
    (served.root / "many").mkdir()
    names = {f"many/file-{i:04d}-{'x' * 40}" for i in range(300)}
    for name in names:
        (served.root / name).write_bytes(b"")
    entries, payloads = listing(peer, "many")
    assert set(entries) == names
    assert len(payloads) > 10
    assert max(len(p) + 1 for p in payloads) <= 2048


@pytest.mark.parametrize(
    "path", ["../x", "/etc", "a/../../x", ".netproto-quota.sqlite", "a\\b", "a\x00b", "d//e"]
)
def test_bad_names_cannot_be_listed_or_fetched(served: Served, path: str) -> None:
    peer = served.peer()
    assert refusal(peer, b"L", {"path": path}) == "invalid-name"
    assert refusal(peer, b"G", {"name": path}) == "invalid-name"


def test_symlinks_and_special_files_are_never_followed_or_read(
    served: Served, tmp_path: Path
) -> None:
    """A link planted inside, to a directory or a file outside, is neither listed
    through nor read; a FIFO is refused without the server waiting on it, a
    directory is not a file; a missing name is not-found. The connection stays
    usable after each."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    root = served.root
    (root / "d").mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    (root / "d" / "filelink").symlink_to(outside / "secret")
    os.mkfifo(root / "fifo")
    peer = served.peer()
    assert refusal(peer, b"L", {"path": "link"}) == "not-allowed"
    assert refusal(peer, b"L", {"path": "link", "recursive": True}) == "not-allowed"
    assert refusal(peer, b"G", {"name": "link/secret"}) == "not-allowed"
    assert refusal(peer, b"G", {"name": "d/filelink"}) == "not-allowed"
    assert refusal(peer, b"L", {"path": "d/filelink"}) == "not-allowed"
    assert refusal(peer, b"G", {"name": "fifo"}) == "not-allowed"
    assert refusal(peer, b"G", {"name": "d"}) == "not-allowed"
    assert refusal(peer, b"G", {"name": "missing"}) == "not-found"
    assert refusal(peer, b"L", {"path": "missing"}) == "not-found"
    assert refusal(peer, b"G", {"name": "missing/x"}) == "not-found"
    put(peer, "fine", b"fine")
    assert fetch(peer, "fine") == (b"fine", (b"F", {"sha256": sha(b"fine")}))


def test_a_file_comes_back_whole_or_from_an_offset_with_the_whole_digest(
    served: Served,
) -> None:
    data = os.urandom(700_000)
    peer = served.peer()
    put(peer, "d/f.bin", data)
    assert fetch(peer, "d/f.bin") == (data, (b"F", {"sha256": sha(data)}))
    assert fetch(peer, "d/f.bin", 300_001) == (data[300_001:], (b"F", {"sha256": sha(data)}))
    assert fetch(peer, "d/f.bin", len(data)) == (b"", (b"F", {"sha256": sha(data)}))
    (served.root / "empty").write_bytes(b"")
    assert fetch(peer, "empty") == (b"", (b"F", {"sha256": sha(b"")}))


def test_an_offset_past_the_end_is_refused_and_the_connection_stays(served: Served) -> None:
    peer = served.peer()
    put(peer, "f", b"12345")
    assert refusal(peer, b"G", {"name": "f", "offset": 6}) == "size-mismatch"
    assert fetch(peer, "f") == (b"12345", (b"F", {"sha256": sha(b"12345")}))


@pytest.mark.parametrize(
    ("frame", "request_"),
    [
        (b"G", {"name": "f", "offset": -1}),
        (b"G", {"name": "f", "offset": "0"}),
        (b"G", {"name": "f", "offset": True}),
        (b"L", {"path": 3}),
        (b"L", {"path": "", "recursive": "yes"}),
    ],
)
def test_malformed_requests_are_bad_frame(
    served: Served, frame: bytes, request_: dict[str, object]
) -> None:
    peer = served.peer()
    peer.sendJSON(frame, request_)
    peer.expectError("bad-frame")
    peer.expectClosed()


def test_data_rotted_on_disk_is_checksum_mismatch_not_f(served: Served) -> None:
    """The stored digest no longer matches what is read: E checksum-mismatch
    instead of F (from any offset); the connection stays usable."""
    data = os.urandom(600_000)
    peer = served.peer()
    put(peer, "f", data)
    rot(served.root / "f", at=500_000)
    got, last = fetch(peer, "f")
    assert last[0] == b"E" and last[1]["code"] == "checksum-mismatch"
    assert len(got) == len(data) and got != data
    assert fetch(peer, "f", 550_000)[1][1]["code"] == "checksum-mismatch"
    put(peer, "g", b"fine")
    assert fetch(peer, "g")[1] == (b"F", {"sha256": sha(b"fine")})


def test_a_file_replaced_during_its_download_is_sent_whole_as_it_was(tmp_path: Path) -> None:
    """G reads from the one file it opened: the file replaced (renamed over)
    after the first batch still comes whole, with its own digest."""
    executor = StepExecutor()
    served = Served(tmp_path, executor)
    peer = served.peer()
    old = os.urandom(5 * 256 * 1024 * 2)
    (served.root / "f").write_bytes(old)
    peer.sendJSON(b"G", {"name": "f", "offset": 0})
    while not peer.received:
        executor.runAll()
        peer.flush()
    assert json.loads(peer.expect(b"K")) == {"size": len(old), "offset": 0}
    (served.root / "new").write_bytes(b"new content")
    os.replace(served.root / "new", served.root / "f")
    frames: list[tuple[bytes, bytes]] = []
    while not frames or frames[-1][0] != b"F":
        executor.runAll()
        frames += peer.take()
    assert b"".join(p for k, p in frames if k == b"D") == old
    assert json.loads(frames[-1][1]) == {"sha256": sha(old)}


def test_a_request_during_an_answer_is_bad_frame(tmp_path: Path) -> None:
    """A client waits for the end of an answer before its next request."""
    executor = StepExecutor()
    served = Served(tmp_path, executor)
    peer = served.peer()
    (served.root / "f").write_bytes(b"data")
    peer.sendJSON(b"G", {"name": "f", "offset": 0})
    peer.sendJSON(b"L", {"path": ""})
    peer.expectError("bad-frame")
    peer.expectClosed()
    executor.runAll()


def test_a_connection_lost_during_a_download_closes_its_file(tmp_path: Path) -> None:
    """The client goes away in the middle: the server stops reading and closes the file."""
    executor = StepExecutor()
    served = Served(tmp_path, executor)
    peer = served.peer()
    size = 40 << 20  # more than one worker job's batches (a lane's burst)
    with open(served.root / "f", "wb") as f:
        f.truncate(size)
    before = len(os.listdir("/proc/self/fd"))
    peer.sendJSON(b"G", {"name": "f", "offset": 0})
    function, args = executor.calls.pop(0)
    function(*args)
    frames = peer.take()
    assert json.loads(frames[0][1]) == {"size": size, "offset": 0}
    assert frames[-1][0] == b"D"
    assert len(os.listdir("/proc/self/fd")) == before + 1
    peer.close()
    executor.runAll()
    assert len(os.listdir("/proc/self/fd")) == before


def test_the_digest_attribute_is_ignored_when_it_is_not_ours(served: Served) -> None:
    """A value another program wrote under the attribute's name is not trusted."""
    path = served.root / "f"
    path.write_bytes(b"data")
    info = path.stat()
    forged = f"1 {sha(b'data')} {info.st_size} {info.st_mtime_ns} {info.st_ino + 1}"
    os.setxattr(path, digests.XATTR, forged.encode())
    entries, _ = listing(served.peer())
    assert "sha256" not in entries["f"]
    os.setxattr(path, digests.XATTR, b"garbage " * 100)
    assert "sha256" not in listing(served.peer())[0]["f"]
    assert encodeJSON({}) == b"{}"


def test_directories_swapped_for_symlinks_during_a_listing_are_not_followed(
    tmp_path: Path,
) -> None:
    """A recursive listing read one frame at a time; after the first frame
    every directory not listed yet is swapped for a symbolic link to a
    directory outside: nothing outside is ever listed."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    steps = StepExecutor()
    served = Served(tmp_path, steps)
    served.factory.maxFrame = 1024
    for d in range(6):
        for f in range(20):
            path = served.root / "tree" / f"d{d}" / f"file-{f:02d}-{'x' * 30}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")
    peer = served.peer()
    server = peer.server
    assert isinstance(server, UploadProtocol) and server.pipeline is not None
    server.pipeline.writer.burst = 1  # one lane call per worker job
    peer.sendJSON(b"L", {"path": "tree", "recursive": True})
    frames: list[tuple[bytes, bytes]] = []
    while not frames:
        function, args = steps.calls.pop(0)
        function(*args)
        frames += peer.take()
    seen = {e["name"] for _, p in frames for e in json.loads(p)["entries"]}
    swapped = 0
    for d in range(6):
        if not any(name.startswith(f"tree/d{d}/") for name in seen):
            real = served.root / "tree" / f"d{d}"
            real.rename(served.root / "tree" / f".netproto-moved-{d}")
            real.symlink_to(outside, target_is_directory=True)
            swapped += 1
    assert swapped
    while not frames or frames[-1][0] != b"K":
        steps.runAll()
        frames += peer.take()
    names = {e["name"] for k, p in frames if k == b"I" for e in json.loads(p)["entries"]}
    assert not any("secret" in name for name in names)
    assert json.loads(frames[-1][1]) == {"count": len(names)}
    assert (outside / "secret").read_bytes() == b"secret"
