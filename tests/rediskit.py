"""A real redis-server for the chat cluster's tests: private, on a free loopback port,
its files in a temp dir, nothing saved to disk; waited for with a deadline.

Debian's ``redis-server`` package (installed by ``.ci/run``); a test that starts one
fails where it is missing, saying so (:func:`tests.programs.required`).
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hiredis

from tests.programs import required
from tests.support import waitUntil


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _encode(args: tuple[str, ...]) -> bytes:
    parts = [f"*{len(args)}\r\n".encode()]
    for a in args:
        data = a.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def command(
    port: int, *args: str, timeout: float = 5.0, password: str | None = None, db: int = 0
) -> Any:
    """One command over a plain socket (after AUTH and SELECT if asked); its reply as
    hiredis parses it (bytes, ints, lists; an error reply as a
    :class:`hiredis.ReplyError` value)."""
    first = ([("AUTH", password)] if password is not None else []) + (
        [("SELECT", str(db))] if db else []
    )
    reader = hiredis.Reader()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"".join(_encode(c) for c in [*first, args]))
        replies: list[Any] = []
        while len(replies) <= len(first):
            reply = reader.gets()
            if reply is not False:
                replies.append(reply)
                continue
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("redis-server closed the connection")
            reader.feed(chunk)
        return replies[-1]


class Redis:
    """One redis-server process; :meth:`stop` and :meth:`start` again on the same port."""

    def __init__(self, directory: Path, port: int | None = None, *extra: str) -> None:
        self.directory = directory
        self.port = port or freePort()
        self.extra = extra  # more redis-server options (TLS, a password)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> None:
        program = required("redis-server", "redis-server")
        self.proc = subprocess.Popen(
            [program, "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
             str(self.directory), "--save", "", "--appendonly", "no", "--daemonize", "no",
             *self.extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        proc = self.proc

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"redis-server on port {self.port} exited at start")
            try:
                reply = command(self.port, "PING", timeout=1.0)
            except OSError:
                return False
            # PONG, or NOAUTH from a Redis with a password: either way it is up.
            return reply == b"PONG" or isinstance(reply, hiredis.ReplyError)

        waitUntil(up, timeout, interval=0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


@contextmanager
def redisServer(tmp: Path) -> Iterator[Redis]:
    """A running :class:`Redis`, stopped at the end."""
    directory = tmp / "redis"
    directory.mkdir(exist_ok=True)
    redis = Redis(directory)
    redis.start()
    try:
        yield redis
    finally:
        redis.stop()


class LineClient:
    """A chat member over a real socket, reading whole lines with deadlines."""

    def __init__(self, port: int, timeout: float = 15.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.timeout = timeout
        self.buf = b""
        self.closed = False
        self.nick = self.expect("*** Welcome").split(" You are ", 1)[1].split(" ", 1)[0]

    def send(self, *lines: str) -> None:
        self.sock.sendall(b"".join(line.encode() + b"\n" for line in lines))

    def line(self, timeout: float | None = None) -> str | None:
        """The next line, or None once the server closed the connection."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while b"\r\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line within the deadline; have {self.buf!r}")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                self.closed = True
                return None
            self.buf += data
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode()

    def expect(self, start: str, timeout: float | None = None) -> str:
        """Read lines until one starts with ``start``; return it (the others are dropped)."""
        skipped: list[str] = []
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            line = self.line(max(0.0, deadline - time.monotonic()))
            if line is None:
                raise AssertionError(f"closed before {start!r}; got {skipped}")
            if line.startswith(start):
                return line
            skipped.append(line)

    def until(self, start: str, timeout: float | None = None) -> list[str]:
        """Every line up to and including the first that starts with ``start``."""
        got: list[str] = []
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not got or not got[-1].startswith(start):
            line = self.line(max(0.0, deadline - time.monotonic()))
            if line is None:
                raise AssertionError(f"closed before {start!r}; got {got}")
            got.append(line)
        return got

    def sync(self, tag: str) -> list[str]:
        """Every line the server sent before the answer to a ``/msg`` to itself:
        everything due to this member so far has come once that answer comes."""
        self.send(f"/msg {self.nick} {tag}")
        return self.until(f"*{self.nick}* {tag}")[:-1]

    def rename(self, nick: str) -> None:
        self.send(f"/nick {nick}")
        self.expect(f"*** {self.nick} is now known as {nick}")
        self.nick = nick

    def close(self) -> None:
        self.sock.close()
