"""The bundled exec client (``netproto exec``'s :func:`netproto.exec.client.run`)
against the real exec server factory, its connection in memory (twisted.test.iosim
through :func:`netproto.testing.serveInMemory`): no sockets between the two.

The commands are real processes, so both ends run on the real reactor; only
``connectTCP`` is replaced, by an in-memory connection to the factory. The
client writes to the local stdout and stderr (fds 1 and 2, captured by
``capfd``) and reads the local stdin (fd 0, a pipe put there for the test).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as globalReactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocolFactory

from netproto.client.framed import ClientError
from netproto.exec.client import configure, run
from netproto.exec.server import ExecFactory, makeFactory
from netproto.testing import serveInMemory
from tests.support import eventually, makeContext, token, waitDeferred

#: Where the client is told to connect; connectTCP to it is served in memory.
PORT = 8001


class InMemoryTCP:
    """The real reactor, except that ``connectTCP`` reaches ``server`` in memory.

    The client builds its endpoint from ``--endpoint`` on the reactor it is
    given, as ``netproto exec`` does; only the connection itself changes.
    """

    def __init__(self, reactor: Any, server: IProtocolFactory) -> None:
        self._reactor = reactor
        self.server = server
        self.connections = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def connectTCP(
        self,
        host: str,
        port: int,
        factory: IProtocolFactory,
        timeout: float = 30.0,
        bindAddress: object = None,
    ) -> None:
        assert (host, port) == ("127.0.0.1", PORT)
        client = factory.buildProtocol(IPv4Address("TCP", host, port))
        assert client is not None
        serveInMemory(self.server, client, self._reactor)  # type: ignore[arg-type]
        self.connections += 1


@asynccontextmanager
async def execServer(tmp_path: Path, **options: Any) -> AsyncIterator[tuple[ExecFactory, str]]:
    """The exec factory as ``twistd netproto`` builds it, started; on the way out
    it is stopped and every command is gone."""
    opts: dict[str, Any] = {"exec-cwd": str(tmp_path), "exec-kill-grace": 0.5}
    opts.update(options)
    context = makeContext(tmp_path, options=opts)
    factory = makeFactory(context)
    factory.doStart()
    guardian = factory.guardian
    try:
        yield factory, token(context)
    finally:
        factory.doStop()
        await waitDeferred(factory.endAll(), 15)
        if guardian is not None:
            # Let go at the stop: it exits at once and is reaped on the reactor.
            await eventually(lambda: guardian.child is None, timeout=10)


async def runClient(tmp_path: Path, factory: ExecFactory, tok: str, *argv: str) -> int:
    """``netproto exec ARGV`` with the token, connected in memory; its exit status."""
    tokenFile = tmp_path / "client-token"
    tokenFile.write_text(tok)
    parser = argparse.ArgumentParser()
    configure(parser)
    args = parser.parse_args(
        [
            "--endpoint",
            f"tcp:host=127.0.0.1:port={PORT}",
            "--token-file",
            str(tokenFile),
            "--known-servers",
            str(tmp_path / "known_servers"),
            *argv,
        ]
    )
    reactor = InMemoryTCP(globalReactor, factory)
    status = await waitDeferred(Deferred.fromCoroutine(run(reactor, args)), 20)
    assert reactor.connections == 1
    return status


@contextmanager
def stdinFrom(data: bytes) -> Iterator[None]:
    """The process's fd 0 reads ``data`` then end of file, for the block."""
    read, write = os.pipe()
    os.write(write, data)  # small: fits in the pipe
    os.close(write)
    saved = os.dup(0)
    os.dup2(read, 0)
    os.close(read)
    try:
        yield
    finally:
        os.dup2(saved, 0)
        os.close(saved)


@pytest_twisted.ensureDeferred
async def test_output_goes_to_stdout_and_stderr_and_the_exit_code_is_the_status(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A command's stdout and stderr arrive on the local stdout and stderr, each
    to its own, and its exit code is the client's exit status."""
    async with execServer(tmp_path) as (factory, tok):
        status = await runClient(
            tmp_path, factory, tok, "-n", "--", "sh", "-c", "echo out; echo err >&2; exit 3"
        )
    assert status == 3
    captured = capfd.readouterr()
    assert (captured.out, captured.err) == ("out\n", "err\n")


@pytest_twisted.ensureDeferred
async def test_a_signal_that_ends_the_command_is_128_plus_its_number(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A command ended by SIGTERM gives the status a shell gives: 128 + 15."""
    async with execServer(tmp_path) as (factory, tok):
        status = await runClient(tmp_path, factory, tok, "-n", "--shell", "kill -TERM $$")
    assert status == 128 + 15


@pytest_twisted.ensureDeferred
async def test_stdin_is_sent_and_closed(
    tmp_path: Path, capfdbinary: pytest.CaptureFixture[bytes]
) -> None:
    """With -i the local stdin is forwarded (0 frames), every byte value, and its
    end is a C: cat gives it back whole and the command exits 0."""
    data = bytes(range(256)) * 100
    async with execServer(tmp_path) as (factory, tok):
        with stdinFrom(data):
            status = await runClient(tmp_path, factory, tok, "-i", "--", "sh", "-c", "cat; echo")
    assert status == 0
    assert capfdbinary.readouterr().out == data + b"\n"


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        (["--", "no-such-program-here"], 127, "not-found: no such program"),
        (["--", "cat"], 126, "not-allowed: 'cat' may not run"),
        (["--shell", "echo hi"], 126, "not-allowed: the shell may not run"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_refused_command_is_an_error_with_a_shells_status(
    tmp_path: Path, argv: list[str], status: int, message: str
) -> None:
    """A command the server refuses (E not-found, E not-allowed) is a ClientError
    naming the server's reason, with the status a shell would give (127, 126)."""
    async with execServer(tmp_path, **{"exec-allow": "echo"}) as (factory, tok):
        with pytest.raises(ClientError) as info:
            await runClient(tmp_path, factory, tok, "-n", *argv)
    assert info.value.exitCode == status
    assert message in str(info.value)
