"""Attacks on the upload service: planted links and races in the upload
directory, a full disk at every step, stalled transfers, and one user filling
the disk for everyone.

Each test states the attack, the behaviour expected and the measure, taken from
outside the server (:mod:`tests.adversarial.outside`): what each connection
receives, the files on disk inside and outside the upload directory, the
server's open descriptors and its log.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import Any

import pytest

from netproto.auth import writeUser
from netproto.upload.names import PARTIAL_PREFIX, partialName
from tests.adversarial.outside import ABUSER, HONEST, Target, connectFrom
from tests.support import BlockingFramed, waitUntil
from tests.uploadkit import plantFifo, plantHardLink, plantSymlink, smallTmpfs

Netproto = Callable[..., AbstractContextManager[Target]]

#: How long a test waits for what should follow within seconds: generous, for a
#: loaded 2-core machine; the point is that it happens, not how fast.
DEADLINE = 30.0
#: Data frames of the attacking and honest clients.
CHUNK = 64 * 1024
PASSWORD = "correct horse"


# -- a client ---------------------------------------------------------------------------


Connect = Callable[..., BlockingFramed]


@pytest.fixture
def connect() -> Iterator[Connect]:
    """``connect(target, source, user=None)``: an upload connection from
    ``source``, logged in with the token or as ``user``; closed at the end."""
    made: list[BlockingFramed] = []

    def connect_(target: Target, source: str, user: str | None = None) -> BlockingFramed:
        client = BlockingFramed(connectFrom(source, target.port("upload"), timeout=DEADLINE))
        made.append(client)
        if user is None:
            client.login(target.token, "upload")
        else:
            client.recvJSON(b"H")
            client.sendJSON(b"A", {"user": user, "password": PASSWORD})
            assert client.recvJSON(b"K") == {"user": user}
        return client

    yield connect_
    for client in made:
        client.close()


def answer(client: BlockingFramed) -> tuple[bytes, dict[str, Any]]:
    """The server's next K or E, decoded."""
    frame = client.recv()
    assert frame is not None, "the server closed the connection"
    kind, payload = frame
    assert kind in (b"K", b"E"), frame
    body: dict[str, Any] = json.loads(payload)
    return kind, body


def put(client: BlockingFramed, name: str, size: int, **flags: bool) -> dict[str, Any]:
    """P; the K ready or E that answers it, as ``{"offset": N}`` or ``{"code": ...}``."""
    client.sendJSON(b"P", {"name": name, "size": size, **flags})
    kind, body = answer(client)
    assert kind == b"E" or set(body) == {"offset"}, body
    return body


def rest(client: BlockingFramed, data: bytes, offset: int = 0) -> dict[str, Any]:
    """After K ready: the data from ``offset``, F, and the K stored or E that answers."""
    for i in range(offset, len(data), CHUNK):
        client.send(b"D", data[i : i + CHUNK])
    client.sendJSON(b"F", {"sha256": hashlib.sha256(data).hexdigest()})
    return answer(client)[1]


def upload(client: BlockingFramed, name: str, data: bytes, **flags: bool) -> dict[str, Any]:
    """A whole file: the K stored (with ``sha256``) or the E (with ``code``) it ends with."""
    ready = put(client, name, len(data), **flags)
    return ready if "code" in ready else rest(client, data, ready["offset"])


def isStored(reply: dict[str, Any], data: bytes) -> bool:
    return reply.get("sha256") == hashlib.sha256(data).hexdigest()


def partials(root: Path) -> list[Path]:
    return sorted(root.rglob(PARTIAL_PREFIX + "*"))


def noTraceback(target: Target) -> None:
    """The server logged no traceback and answered nothing with ``internal``."""
    assert "Traceback" not in target.twistd.log
    assert ": internal:" not in target.twistd.log


def lastFrame(client: BlockingFramed) -> tuple[bytes, dict[str, Any]]:
    """Read until the server closes the connection (within the socket's
    timeout); the last frame it sent, decoded."""
    last = None
    while (frame := client.recv()) is not None:
        last = frame
    assert last is not None, "closed without a word"
    return last[0], json.loads(last[1])


def users(home: Path, *names: str) -> Path:
    """A users file in ``home`` naming each user, all with :data:`PASSWORD`."""
    path = home.parent / "users"
    for name in names:
        writeUser(path, name, PASSWORD)
    return path


# -- planted links ------------------------------------------------------------------


PLANTS: dict[str, Callable[[Path, Path], None]] = {
    "hardlink": plantHardLink,
    "symlink": plantSymlink,
    "fifo": plantFifo,
}


@pytest.mark.e2e
def test_links_planted_at_partial_names_never_write_outside(
    netproto: Netproto, connect: Connect
) -> None:
    """Attack: a local user who can write in the upload directory plants, at the
    exact (predictable) partial-file name of the uploads an abusive client then
    makes, a hard link to a file outside, a symbolic link to it, and a FIFO, at
    the top and in a subdirectory; the client uploads each name plainly and
    with resume.

    Expected: each upload is refused with ``not-allowed`` before any data, the
    connection stays usable, nothing appears under the final names, and an
    honest client stores a file meanwhile; the server logs a warning naming each
    planted object and no traceback.

    Measure: the outside file's bytes and mtime (unchanged), the files under
    the upload directory, and the server's log."""
    with netproto(services=("upload",)) as target:
        outside = target.home.parent / "outside.txt"
        outside.write_bytes(b"precious")
        before = outside.stat().st_mtime_ns
        honest = connect(target, HONEST)
        assert isStored(upload(honest, "sub/first", b"x"), b"x")
        abuser = connect(target, ABUSER)
        data = b"written by the attacker"
        for kind, plant in PLANTS.items():
            for directory in ("", "sub/"):
                name = f"{directory}{kind}"
                part = target.uploadDir / directory / partialName(kind.encode(), len(data)).decode()
                plant(part, outside)
                for resume in (False, True):
                    assert upload(abuser, name, data, resume=resume)["code"] == "not-allowed"
                assert not (target.uploadDir / name).exists()
                target.twistd.waitLog(rf"{part.name} is not a partial file of this server")
        assert isStored(upload(honest, "sub/second", b"y"), b"y")
        assert outside.read_bytes() == b"precious"
        assert outside.stat().st_mtime_ns == before
        noTraceback(target)


_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
RENAME_EXCHANGE = 2
AT_FDCWD = -100


def exchange(a: Path, b: Path) -> None:
    """Swap two directory entries atomically (``renameat2(RENAME_EXCHANGE)``)."""
    if _libc.renameat2(AT_FDCWD, bytes(a), AT_FDCWD, bytes(b), RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(a))


@pytest.mark.e2e
@pytest.mark.slow
def test_directory_swapped_for_a_symlink_during_uploads_writes_nothing_outside(
    netproto: Netproto,
    connect: Connect,
) -> None:
    """Attack: while an abusive client uploads 300 files into ``d/``, a local
    user swaps ``d`` with a symbolic link to a directory outside, back and
    forth, as fast as the kernel allows (``renameat2(RENAME_EXCHANGE)``, atomic:
    at every moment ``d`` is one or the other).

    Expected: every upload is either stored, inside the upload directory, or
    refused with ``invalid-name`` (a symbolic link in the way); nothing is
    ever written outside, and the server logs no traceback.

    Measure: the outside directory (still empty), each stored file found, whole,
    under whichever of the two names its real directory has at the end."""
    with netproto(services=("upload",)) as target:
        outside = target.home.parent / "outside"
        outside.mkdir()
        client = connect(target, ABUSER)
        assert isStored(upload(client, "d/seed", b"s"), b"s")
        swapped = target.uploadDir / "swapped"
        swapped.symlink_to(outside, target_is_directory=True)
        stop = threading.Event()
        swaps = [0]

        def swapper() -> None:
            while not stop.is_set():
                exchange(target.uploadDir / "d", swapped)
                swaps[0] += 1

        thread = threading.Thread(target=swapper, daemon=True)
        thread.start()
        stored: dict[str, bytes] = {}
        refused = 0
        try:
            for i in range(300):
                data = os.urandom(1 + i * 37 % 3000)
                reply = upload(client, f"d/f{i}", data)
                if "code" in reply:
                    assert reply["code"] == "invalid-name", reply
                    refused += 1
                else:
                    assert isStored(reply, data)
                    stored[f"f{i}"] = data
        finally:
            stop.set()
            thread.join(DEADLINE)
        assert swaps[0] > 10  # the attack did run (thousands of swaps, usually)
        assert list(outside.iterdir()) == []
        real = next(p for p in (target.uploadDir / "d", swapped) if not p.is_symlink())
        for leaf, data in stored.items():
            assert (real / leaf).read_bytes() == data
        assert len(stored) + refused == 300
        noTraceback(target)


# -- a full disk ----------------------------------------------------------------------


@pytest.fixture
def tinyDisk(netproto: Netproto, tmp_path: Path) -> Iterator[Target]:
    """A server whose upload directory is a 2 MiB tmpfs with 48 inodes, and no
    free-space reserve (``--upload-min-free 0``): every ENOSPC is real."""
    with ExitStack() as stack:
        mount = stack.enter_context(smallTmpfs(tmp_path / "tiny", "2m", inodes=48))
        target = stack.enter_context(
            netproto("--upload-dir", str(mount), "--upload-min-free", "0", services=("upload",))
        )
        yield target


@pytest.mark.e2e
@pytest.mark.slow
def test_disk_full_at_every_step(tinyDisk: Target, connect: Connect, tmp_path: Path) -> None:
    """Attack: abusive clients fill the upload file system: two uploads of 1.2 MiB
    at once, both admitted (each fits alone) and then out of space while
    written; a file bigger than what is free (refused at P); then tiny files,
    some in new directories, until no inode is left (ENOSPC creating the
    partial file, and at mkdir).

    Expected: every upload ends with ``K stored`` and a whole file, or with
    ``E no-space``, never ``internal``, and its connection stays usable; once
    the server has answered, no partial file is left; after the operator frees
    room, an honest client stores a file on a connection that saw the failures.

    Measure: each reply, the SHA-256 of every stored file, the partial files on
    disk, the server's fds back to its baseline, and its log."""
    target = tinyDisk
    mount = tmp_path / "tiny"
    base = target.fds()
    first, second = connect(target, ABUSER), connect(target, ABUSER)
    big = [os.urandom(1200 * 1024) for _ in range(2)]
    for i, (client, data) in enumerate(zip((first, second), big, strict=True)):
        assert put(client, f"big{i}", len(data)) == {"offset": 0}
    replies = [rest(client, data) for client, data in zip((first, second), big, strict=True)]
    assert sorted(r.get("code", "stored") for r in replies) == ["no-space", "stored"]
    assert put(first, "huge", 4 * 1024 * 1024)["code"] == "no-space"  # refused at P
    waitUntil(lambda: partials(mount) == [], timeout=DEADLINE)

    codes: list[str] = []
    kept: dict[str, bytes] = {}
    for i in range(100):
        name = f"dir{i}/f" if i % 3 == 0 else f"small{i}"
        data = os.urandom(i * 11 % 500)
        reply = upload(second, name, data)
        if "code" in reply:
            codes.append(reply["code"])
        else:
            assert isStored(reply, data)
            kept[name] = data
        if len(codes) >= 6:
            break
    assert set(codes) == {"no-space"}
    waitUntil(lambda: partials(mount) == [], timeout=DEADLINE)
    for name, data in kept.items():
        assert (mount / name).read_bytes() == data
    for path in mount.glob("small*"):
        path.unlink()  # the operator makes room
    assert isStored(upload(second, "after", b"fits"), b"fits")
    honest = connect(target, HONEST)
    assert isStored(upload(honest, "honest", b"ok"), b"ok")
    for client in (first, second, honest):
        client.close()
    target.waitFds(base)
    noTraceback(target)


# -- stalled transfers and quotas ----------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.slow
def test_stalled_transfers_are_ended_and_give_everything_back(
    netproto: Netproto, connect: Connect, tmp_path: Path
) -> None:
    """Attack: an abusive user opens 10 upload connections (its cap of uploads at
    once, ``--upload-max-per-user 10``); on each it asks for a 1 MiB file,
    sends 1000 bytes once ``K ready`` came, then stops sending (on two of them
    in the middle of a data frame).

    Expected: within the idle timeout (3 s here) or the frame deadline (2 s),
    each connection gets ``E timeout`` (for its frame, on the two) and is
    closed; their partial data is removed; meanwhile an honest user uploads as
    usual; afterwards the abusive user may upload again: the stalled uploads
    gave back their slots.

    Measure: each connection's last frame and its close, the partial files on
    disk, the server's fds back to their baseline, the honest user's upload and
    the abusive user's next one."""
    home = tmp_path / "home"
    home.mkdir()
    with netproto(
        "--users",
        str(users(home, "mallory", "alice")),
        "--upload-max-per-user",
        "10",
        "--idle-timeout",
        "3",
        "--frame-timeout",
        "2",
        services=("upload",),
    ) as target:
        base = target.fds()
        stalled = []
        for i in range(10):
            client = connect(target, ABUSER, "mallory")
            assert put(client, f"stall{i}", 1024 * 1024) == {"offset": 0}
            client.send(b"D", b"x" * 1000)
            if i < 2:
                client.sock.sendall(b"\x00\x00\x10\x01D" + b"y" * 100)  # a frame begun
            stalled.append(client)
        alice = connect(target, HONEST, "alice")
        assert isStored(upload(alice, "honest", b"ok"), b"ok")
        for i, client in enumerate(stalled):
            kind, body = lastFrame(client)
            assert (kind, body["code"]) == (b"E", "timeout")
            assert ("frame" in body["message"]) == (i < 2), body
            client.close()
        waitUntil(lambda: partials(target.uploadDir) == [], timeout=DEADLINE)
        mallory = connect(target, ABUSER, "mallory")
        assert isStored(upload(mallory, "again", b"back"), b"back")
        mallory.close()
        alice.close()
        target.waitFds(base)
        noTraceback(target)


@pytest.mark.e2e
@pytest.mark.slow
def test_one_user_over_quota_does_not_stop_the_others_even_after_a_restart(
    netproto: Netproto, connect: Connect, tmp_path: Path
) -> None:
    """Attack: an abusive user stores files until refused, with quotas of 5 files
    and 50,000 bytes per user, then tries again after the server restarted.

    Expected: the 6th file (or one passing 50,000 bytes) is refused with
    ``no-space`` naming the quota, before any data; another user stores files
    as usual; after a restart the abusive user is still refused (the
    accounting survives) and the other user still is not.

    Measure: each reply, and the files on disk per user (the abusive user's
    never more than the quota)."""
    home = tmp_path / "home"
    home.mkdir()
    args = [
        "--users",
        str(users(home, "mallory", "alice")),
        "--upload-quota-files",
        "5",
        "--upload-quota-bytes",
        "50000",
    ]
    data = os.urandom(9000)
    with netproto(*args, services=("upload",)) as target:
        mallory = connect(target, ABUSER, "mallory")
        replies = [upload(mallory, f"m/{i}", data) for i in range(7)]
        assert [isStored(r, data) for r in replies] == [True] * 5 + [False] * 2
        assert replies[5]["code"] == "no-space"
        assert "--upload-quota-files" in replies[5]["message"]
        assert upload(mallory, "m/big", os.urandom(6000))["code"] == "no-space"
        alice = connect(target, HONEST, "alice")
        assert isStored(upload(alice, "a/0", data), data)
    with netproto(*args, services=("upload",)) as target:
        mallory = connect(target, ABUSER, "mallory")
        assert upload(mallory, "m/after-restart", b"x")["code"] == "no-space"
        alice = connect(target, HONEST, "alice")
        assert isStored(upload(alice, "a/1", data), data)
        assert len(list((target.uploadDir / "m").iterdir())) == 5
        noTraceback(target)
