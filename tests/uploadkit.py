"""upload test doubles shared by the upload tests: upload connections driven by
FramedPeers over one store, a worker executor the test steps, a disk that fills up,
a real tiny tmpfs, objects planted at a partial file's name, and checks of the
frames that come back."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.internet.testing import MemoryReactorClock

from netproto.testing import FramedPeer, PausableTransport
from netproto.upload.protocol import UploadProtocol
from netproto.upload.server import UploadFactory, makeQuotas, uploadDirectory
from netproto.upload.store import Buffer, UploadStore
from netproto.upload.workers import callNow
from tests.support import makeContext, token

#: The resume TTL of the harness's store, in seconds.
TTL = 3600.0


class StepExecutor:
    """Holds worker-thread jobs until the test runs them, to see what happens meanwhile.

    :ivar settled: called when :meth:`runAll` has run every job (a
        :class:`Harness` puts the flush of its connections here), so that
        what the jobs let through (a client read resumed) arrives, and the
        jobs that brings are run too.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self.settled: list[Callable[[], object]] = []

    def __call__(self, function: Callable[..., Any], *args: Any) -> None:
        self.calls.append((function, args))

    def runAll(self) -> None:
        """Run every held job, and those they lead to, until none is left."""
        while True:
            while self.calls:
                function, args = self.calls.pop(0)
                function(*args)
            for settle in self.settled:
                settle()
            if not self.calls:
                return


class Harness:
    """Upload connections, each driven by a :class:`FramedPeer` (in memory), over
    one store in ``tmp/data/uploads``, time on a MemoryReactorClock.

    :param options: ``twistd netproto`` options (quotas, timeouts), by long name.
    :param users: names that may also log in, each with the password ``pw``.
    """

    def __init__(
        self,
        tmp: Path,
        *,
        maxSize: int = 0,
        minFree: int = 0,
        writev: Callable[[int, Sequence[Buffer]], int] = os.writev,
        executor: Callable[..., object] = callNow,
        options: Mapping[str, Any] | None = None,
        users: Sequence[str] = (),
    ) -> None:
        self.clock = MemoryReactorClock()
        self.clock.advance(1_000_000_000)  # wall-clock-like "now" for file mtimes
        self.context = makeContext(tmp, reactor=self.clock, options=options)
        if users:
            checker = InMemoryUsernamePasswordDatabaseDontUse(**dict.fromkeys(users, b"pw"))
            self.context.portal.registerChecker(checker)
            self.context.authMethods = ("token", "password")
        self.root = uploadDirectory(self.context)
        self.store = UploadStore(self.root, resumeTTL=TTL, minFree=minFree, writev=writev)
        self.factory = UploadFactory(
            self.context,
            self.store,
            executor,
            maxSize=maxSize,
            quotas=makeQuotas(self.context),
        )
        self.token = token(self.context)
        self.connections: list[Connection] = []
        if isinstance(executor, StepExecutor):
            executor.settled.append(self.flush)

    def open(self) -> Connection:
        """A new connection whose hello was read, not logged in."""
        conn = Connection(FramedPeer(self.factory, self.clock))
        self.connections.append(conn)
        return conn

    def connect(self, user: str | None = None) -> Connection:
        """A connection logged in with the token, or as ``user``: its K and nothing else came."""
        conn = self.open()
        if user is None:
            assert conn.peer.login(self.token) == {"user": "token"}
        else:
            assert conn.peer.login(user=user, password="pw") == {"user": user}
        conn.peer.expectNothing()
        return conn

    def flush(self) -> None:
        """Move the bytes of every connection both ways until all are quiet."""
        for conn in self.connections:
            conn.peer.flush()

    def files(self) -> set[str]:
        """Every file and directory under the upload dir, relative, '/'-separated."""
        found = set()
        for dirPath, dirs, files in os.walk(self.root):
            for n in dirs + files:
                found.add(os.path.relpath(os.path.join(dirPath, n), self.root))
        return found


class Connection:
    """One upload connection, driven by ``peer``.

    :ivar proto: the server's protocol (to look at its phase and pipeline).
    :ivar transport: the server end's in-memory transport (``paused`` is
        whether the server has stopped reading the client; ``disconnecting``
        whether it closed the connection).
    """

    proto: UploadProtocol
    transport: PausableTransport

    def __init__(self, peer: FramedPeer) -> None:
        self.peer = peer
        proto = peer.server
        assert isinstance(proto, UploadProtocol)
        self.proto = proto
        assert isinstance(proto.transport, PausableTransport)
        self.transport = proto.transport

    def frames(self) -> list[tuple[bytes, Any]]:
        """The frames received since the last call, their JSON decoded."""
        return [(kind, json.loads(payload)) for kind, payload in self.peer.take()]

    def send(self, kind: bytes, payload: bytes = b"") -> None:
        self.peer.send(kind, payload)

    def sendRaw(self, data: bytes) -> None:
        """Bytes as they are, whole frames or not, in one write."""
        self.peer.sendRaw(data)

    def put(self, name: str, size: int, **flags: bool) -> None:
        self.send(b"P", json.dumps({"name": name, "size": size, **flags}).encode())

    def data(self, data: bytes, chunk: int = 65536) -> None:
        for i in range(0, len(data), chunk):
            self.send(b"D", data[i : i + chunk])

    def finish(self, data: bytes | str) -> None:
        digest = data if isinstance(data, str) else hashlib.sha256(data).hexdigest()
        self.send(b"F", json.dumps({"sha256": digest}).encode())

    def upload(self, name: str, data: bytes, **flags: bool) -> list[tuple[bytes, Any]]:
        self.put(name, len(data), **flags)
        ready = self.frames()
        if ready != [(b"K", {"offset": 0})]:
            return ready
        self.data(data)
        self.finish(data)
        return self.frames()

    def drop(self) -> None:
        """The client goes away."""
        self.peer.close()

    @property
    def paused(self) -> bool:
        """Whether the server has paused reading this connection (flow control)."""
        return bool(self.transport.paused)

    @property
    def closed(self) -> bool:
        """Whether the server has closed the connection."""
        return bool(self.transport.disconnecting)


def stored(name: str, data: bytes) -> list[tuple[bytes, Any]]:
    return [(b"K", {"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})]


def error(code: str) -> Callable[[list[tuple[bytes, Any]]], bool]:
    def check(frames: list[tuple[bytes, Any]]) -> bool:
        return len(frames) == 1 and frames[0][0] == b"E" and frames[0][1]["code"] == code

    return check


class SmallDisk:
    """A ``writev`` for the store that fails with ENOSPC once ``free`` bytes are used."""

    def __init__(self, free: int) -> None:
        self.free = free

    def writev(self, fd: int, buffers: Sequence[Buffer]) -> int:
        size = sum(len(b) for b in buffers)
        if size > self.free:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.free -= size
        return os.writev(fd, buffers)


@contextmanager
def smallTmpfs(path: Path, size: str, inodes: int = 0) -> Iterator[Path]:
    """A tiny tmpfs at ``path`` (``inodes`` > 0 bounds its files and
    directories, the root included): real ENOSPC, for data or for inodes.
    Unmounted on exit, whatever happened."""
    path.mkdir(parents=True)
    options = f"size={size},mode=0700" + (f",nr_inodes={inodes}" if inodes else "")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root?); the injected ENOSPC test covers it")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def plantHardLink(part: Path, outside: Path) -> None:
    os.link(outside, part)


def plantSymlink(part: Path, outside: Path) -> None:
    part.symlink_to(outside)


def plantFifo(part: Path, outside: Path) -> None:
    os.mkfifo(part)


def plantDirectory(part: Path, outside: Path) -> None:
    part.mkdir()


def plantSocket(part: Path, outside: Path) -> None:
    os.mknod(part, stat.S_IFSOCK | 0o600)  # what bind() leaves; the path is too long to bind


def plantForeignFile(part: Path, outside: Path) -> None:
    part.write_bytes(b"left by someone else")
    os.chown(part, 4321, 4321)


PLANTS: dict[str, Callable[[Path, Path], None]] = {
    "hard link to an outside file": plantHardLink,
    "symbolic link to an outside file": plantSymlink,
    "FIFO": plantFifo,
    "directory": plantDirectory,
    "UNIX socket": plantSocket,
    "regular file of another owner": plantForeignFile,
}
