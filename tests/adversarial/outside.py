"""The attacker's and the observer's view of a running ``twistd netproto``.

Everything here looks at the server from outside, as an attacker or an operator
would: sockets from chosen loopback addresses, and the server process's RSS,
open file descriptors and children read with ``psutil``. Nothing here sleeps to
synchronise; every wait has a condition and a deadline.

Abusive clients bind to :data:`ABUSER` (or :func:`abuserHost`), honest ones to
:data:`HONEST`: the whole of 127.0.0.0/8 is loopback on Linux, so the server's
per-address caps see them as different peers.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

from netproto.status import PREFIX, parseStatus
from tests.support import Twistd, runTwistd, waitUntil

#: Where honest clients and probes connect from.
HONEST = "127.0.0.1"
#: Where abusive clients connect from (one address, so per-address caps apply to them).
ABUSER = "127.0.0.2"


def abuserHost(n: int) -> str:
    """The n-th abusive source address (127.0.1.n ...), for attacks from many addresses."""
    return f"127.0.{1 + n // 250}.{1 + n % 250}"


def raiseOwnFileLimit() -> None:
    """Let the test process hold as many sockets as the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def connectFrom(
    source: str, port: int, host: str = "127.0.0.1", timeout: float = 10.0
) -> socket.socket:
    """A TCP connection to ``host:port`` whose source address is ``source``."""
    return socket.create_connection((host, port), timeout=timeout, source_address=(source, 0))


def readUntil(sock: socket.socket, marker: bytes, timeout: float = 10.0) -> bytes:
    """Read from ``sock`` until ``marker`` has arrived; fail at the deadline or on EOF."""
    deadline = time.monotonic() + timeout
    data = b""
    while marker not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(
                f"{marker!r} did not arrive within {timeout} s; got {data[-500:]!r}"
            )
        sock.settimeout(left)
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before {marker!r}; got {data[-500:]!r}")
        data += chunk
    return data


def closedWithin(sock: socket.socket, timeout: float) -> bool:
    """Whether the server closes ``sock`` (EOF or reset) within ``timeout`` seconds,
    reading and dropping whatever it still sends."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        sock.settimeout(left)
        try:
            if not sock.recv(1 << 16):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False


def isGuardian(proc: psutil.Process) -> bool:
    """Whether ``proc`` is exec's guardian (:mod:`netproto.exec.guardian`)."""
    try:
        return "netproto.exec.guardian" in proc.cmdline()
    except psutil.NoSuchProcess:
        return False


@dataclass
class Target:
    """A running server and what can be measured of it from outside."""

    twistd: Twistd
    home: Path

    @property
    def process(self) -> psutil.Process:
        return psutil.Process(self.twistd.proc.pid)

    def port(self, service: str) -> int:
        return self.twistd.port(service)

    @property
    def token(self) -> str:
        return (self.home / "token").read_text().strip()

    @property
    def uploadDir(self) -> Path:
        return self.home / "uploads"

    def rss(self) -> int:
        """Resident memory of the server process, in bytes."""
        return self.process.memory_info().rss

    def fds(self) -> int:
        """Open file descriptors of the server process."""
        return self.process.num_fds()

    def descendants(self) -> list[psutil.Process]:
        """Every live process below the server (commands and their children), but
        exec's guardian (:mod:`netproto.exec.guardian`), which lives as long as the
        server."""
        alive = []
        for child in self.process.children(recursive=True):
            try:
                if child.status() != psutil.STATUS_ZOMBIE and not isGuardian(child):
                    alive.append(child)
            except psutil.NoSuchProcess:
                pass
        return alive

    def waitFds(self, atMost: int, timeout: float = 20.0) -> int:
        """Wait until the server holds at most ``atMost`` fds; return the count."""
        return waitUntil(lambda: (n := self.fds()) <= atMost and max(n, 1), timeout)

    def chatLatency(self, source: str = HONEST, timeout: float = 10.0) -> float:
        """Seconds an honest chat client waits from connecting to its welcome, then
        for the answer to ``/who``: the server's responsiveness as a user feels it."""
        start = time.monotonic()
        with connectFrom(source, self.port("chat"), timeout=timeout) as sock:
            readUntil(sock, b"/help", timeout)
            sock.sendall(b"/who\r\n")
            readUntil(sock, b"***", timeout)
        return time.monotonic() - start


def askStatus(target: Target) -> dict[str, int]:
    """Send SIGUSR1 to the server and return the fields of the line it logs."""
    before = len(target.twistd.lines)
    os.kill(target.twistd.proc.pid, signal.SIGUSR1)
    target.twistd.waitFor(
        lambda: any(PREFIX in line for line in target.twistd.lines[before:]), timeout=20
    )
    line = next(line for line in target.twistd.lines[before:] if PREFIX in line)
    fields = parseStatus(line)
    assert fields is not None
    return fields


@contextmanager
def serving(
    tmp: Path, *args: str, services: Sequence[str] = ("chat", "exec", "upload")
) -> Iterator[Target]:
    """``twistd -n netproto ARGS`` on ephemeral loopback ports, as a :class:`Target`."""
    raiseOwnFileLimit()
    with runTwistd(tmp, *args, services=services) as twistd:
        yield Target(twistd, tmp / "home")


@contextmanager
def sockets(count: int, source: str, port: int) -> Iterator[list[socket.socket]]:
    """``count`` open connections from ``source``; all closed on exit."""
    opened: list[socket.socket] = []
    try:
        for _ in range(count):
            opened.append(connectFrom(source, port))
        yield opened
    finally:
        for sock in opened:
            sock.close()


def pidAlive(pid: int) -> bool:
    """Whether ``pid`` names a live (not zombie) process."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


__all__ = [
    "ABUSER",
    "HONEST",
    "Target",
    "abuserHost",
    "closedWithin",
    "connectFrom",
    "pidAlive",
    "readUntil",
    "serving",
    "sockets",
]
