"""Helpers shared by the tests: server contexts, a twistd subprocess, bounded waits.

Nothing here sleeps to synchronise: every wait is on a condition, with a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import psutil
from twisted.internet import reactor as globalReactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from netproto import testing
from netproto.services import ServerContext

T = TypeVar("T")

BIN = Path(sys.executable).parent
TWISTD = str(BIN / "twistd")
NETPROTO = str(BIN / "netproto")


def makeContext(
    tmp: Path,
    reactor: Any = None,
    options: Mapping[str, Any] | None = None,
    usersFile: Path | None = None,
) -> ServerContext:
    """:func:`netproto.testing.makeContext`, on the real reactor unless told otherwise."""
    return testing.makeContext(
        tmp, globalReactor if reactor is None else reactor, options, usersFile
    )


token = testing.readToken


async def eventually(
    predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.01
) -> T:
    """Poll ``predicate`` on the reactor until it returns something true; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {predicate}")
        await deferLater(globalReactor, interval, lambda: None)


def waitUntil(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.01) -> T:
    """The blocking form of :func:`eventually`, for tests that do not run the reactor."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {predicate}")
        time.sleep(interval)


def sendWhilePumping(
    sender: socket.socket,
    payload: bytes,
    pump: Callable[[float], None],
    finished: Callable[[], bool],
    server: psutil.Process,
    *,
    timeout: float = 120.0,
) -> int:
    """Send ``payload`` on the non-blocking ``sender`` as fast as the server takes it,
    reading (``pump(timeout)``) meanwhile, until ``finished()``; the server's peak RSS
    seen on the way. Fails after ``timeout`` seconds."""
    view = memoryview(payload)
    deadline = time.monotonic() + timeout
    peak = server.memory_info().rss
    rounds = 0
    while not finished():
        assert time.monotonic() < deadline, "the readers did not get everything in time"
        if view:
            with contextlib.suppress(BlockingIOError):
                view = view[sender.send(view[: 1 << 18]) :]
        pump(0 if view else 0.05)
        rounds += 1
        if rounds % 50 == 0:
            peak = max(peak, server.memory_info().rss)
    return max(peak, server.memory_info().rss)


def readNow(s: socket.socket, limit: int = 1 << 20) -> bytes:
    """What can be read now from the non-blocking socket ``s``, up to ``limit`` bytes,
    without waiting (b"" when nothing has come, or the peer closed)."""
    chunks = []
    try:
        while limit > 0:
            data = s.recv(min(limit, 1 << 16))
            if not data:
                break
            chunks.append(data)
            limit -= len(data)
    except BlockingIOError:
        pass
    return b"".join(chunks)


class BlockingFramed:
    """A plain blocking socket speaking the framed protocol, for raw-wire tests."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    @classmethod
    def connect(cls, port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> BlockingFramed:
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(sock)

    def send(self, kind: bytes, payload: bytes = b"") -> None:
        self.sock.sendall(struct.pack(">I", len(payload) + 1) + kind + payload)

    def sendJSON(self, kind: bytes, obj: Mapping[str, Any]) -> None:
        self.send(kind, json.dumps(obj).encode())

    def _need(self, n: int) -> bool:
        while len(self.buf) < n:
            data = self.sock.recv(1 << 20)
            if not data:
                return False
            self.buf += data
        return True

    def recv(self) -> tuple[bytes, bytes] | None:
        """The next frame, or None once the server closed the connection."""
        if not self._need(4):
            return None
        (n,) = struct.unpack(">I", self.buf[:4])
        if not self._need(4 + n):
            return None
        frame = self.buf[4 : 4 + n]
        self.buf = self.buf[4 + n :]
        return frame[:1], frame[1:]

    def recvJSON(self, kind: bytes) -> dict[str, Any]:
        frame = self.recv()
        assert frame is not None, f"connection closed while waiting for {kind!r}"
        assert frame[0] == kind, f"expected {kind!r}, got {frame!r}"
        obj: dict[str, Any] = json.loads(frame[1])
        return obj

    def login(self, token: str, service: str | None = None) -> dict[str, Any]:
        hello = self.recvJSON(b"H")
        if service is not None:
            assert hello["service"] == service
        self.sendJSON(b"A", {"token": token})
        self.recvJSON(b"K")
        return hello

    def closedByPeer(self) -> bool:
        """Whether the server closed the connection (reads and drops anything pending)."""
        while True:
            data = self.sock.recv(1 << 16)
            if not data:
                return True
            self.buf += data

    def close(self) -> None:
        self.sock.close()


_LISTENING = re.compile(r"netproto: (\S+) listening on (\S+)")


class Twistd:
    """``twistd -n netproto`` as a subprocess; its log is read on a thread."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], cwd: Path) -> None:
        self.lines: list[str] = []
        self.addresses: dict[str, str] = {}
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._cond:
                self.lines.append(line)
                m = _LISTENING.search(line)
                if m:
                    self.addresses.setdefault(m.group(1), m.group(2))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def waitFor(self, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(
                        "twistd did not get there in time; its log:\n" + "\n".join(self.lines)
                    )
                self._cond.wait(min(left, 0.2))

    def waitListening(self, *services: str, timeout: float = 30.0) -> None:
        """Wait until each service logged its address and the server logged that it is ready."""
        self.waitFor(lambda: all(s in self.addresses for s in services), timeout)
        self.waitLog(r"netproto: ready", timeout)

    def waitLog(self, pattern: str, timeout: float = 30.0) -> str:
        found: list[str] = []

        def seen() -> bool:
            found[:] = [ln for ln in self.lines if re.search(pattern, ln)]
            return bool(found)

        self.waitFor(seen, timeout)
        return found[0]

    def port(self, service: str) -> int:
        return int(self.addresses[service].rsplit(":", 1)[1])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(timeout)
        finally:
            self._reader.join(5)
            # A process twistd started may outlive it holding the log pipe (exec's
            # guardian, while it ends what the server left). Closing the pipe under a
            # reader blocked on it can deadlock: then leave both to end by themselves.
            if self.proc.stdout is not None and not self._reader.is_alive():
                self.proc.stdout.close()

    @property
    def log(self) -> str:
        return "\n".join(self.lines)


def twistdEnv(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ, NETPROTO_HOME=str(home), PYTHONUNBUFFERED="1")
    env.update(extra or {})
    return env


@contextmanager
def runTwistd(
    tmp: Path,
    *args: str,
    services: Sequence[str] = ("chat", "exec", "upload"),
    env: Mapping[str, str] | None = None,
    runner: Sequence[str] = (TWISTD, "-n", "--pidfile=", "--logfile=-"),
) -> Iterator[Twistd]:
    """Start netproto on ephemeral loopback ports (unless ``args`` say otherwise) and
    wait until every service in ``services`` logged where it listens."""
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    endpoints: list[str] = []
    for name in ("chat", "exec", "upload", "web"):
        if f"--{name}" not in args:
            endpoints += [f"--{name}", "tcp:0:interface=127.0.0.1" if name in services else "none"]
    server = Twistd([*runner, "netproto", *endpoints, *args], twistdEnv(home, env), cwd=tmp)
    try:
        server.waitListening(*services)
        yield server
    finally:
        server.stop()


def waitDeferred(d: Deferred[T], timeout: float = 10.0) -> Deferred[T]:
    """``d`` with a deadline: it fails with TimeoutError if it has not fired in time."""
    return d.addTimeout(timeout, globalReactor)


def halfAClientHello() -> bytes:
    """The first half of a real ``ClientHello``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing)
    with contextlib.suppress(ssl.SSLWantReadError):
        client.do_handshake()
    hello = outgoing.read()
    assert hello[:1] == b"\x16"  # a handshake record
    return hello[: len(hello) // 2]
