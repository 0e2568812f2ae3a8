"""exec test doubles shared by the exec tests: the policy for a test directory, fake
processes, a factory whose commands the test ends by hand, a logged-in connection driven
by a FramedPeer, reading a spawned child to its end, and an exec server on a loopback
port with the client's side of a command (R, K, output, X)."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IPushProducer
from twisted.internet.testing import MemoryReactorClock
from twisted.test.iosim import FakeTransport
from zope.interface import implementer

from netproto.client.framed import FramedClient, connectFramed
from netproto.codec import decodeJSON
from netproto.exec.policy import ExecPolicy, Prepared
from netproto.exec.process import CommandProtocol
from netproto.exec.protocol import ExecProtocol
from netproto.exec.server import ExecFactory, makeFactory
from netproto.testing import FramedPeer
from tests.support import eventually, makeContext, token, waitDeferred


def policyFor(tmp_path: Path, **options: Any) -> ExecPolicy:
    opts: dict[str, Any] = {"exec-cwd": str(tmp_path)}
    opts.update(options)
    return ExecPolicy.fromOptions(opts, environ={"HOME": str(tmp_path), "SECRET": "s3cret"})


def drain(child: Any) -> bytes:
    """A spawned child's whole stdout, once it has exited; its descriptors closed."""
    os.set_blocking(child.stdout, True)
    out = b""
    while chunk := os.read(child.stdout, 4096):
        out += chunk
    os.close(child.stdout)
    os.close(child.stderr)
    while child.poll() is None:
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
    if child.pidfd is not None:
        os.close(child.pidfd)
    return out


@implementer(IPushProducer)
class FakeProcess:
    """Stands in for the process transport: records what the bridge asks of it."""

    def __init__(self, pid: int = 4242) -> None:
        self.pid = pid
        self.calls: list[tuple[str, Any]] = []

    def pauseProducing(self) -> None:
        self.calls.append(("pause", None))

    def resumeProducing(self) -> None:
        self.calls.append(("resume", None))

    def stopProducing(self) -> None:
        self.calls.append(("stop", None))

    def signalProcess(self, name: str) -> None:
        self.calls.append(("signal", name))

    def loseConnection(self) -> None:
        self.calls.append(("terminate", None))

    def write(self, data: bytes) -> None:
        self.calls.append(("stdin", data))

    def closeStdin(self) -> None:
        self.calls.append(("closeStdin", None))

    def setWindow(self, rows: int, cols: int) -> bool:
        self.calls.append(("window", (rows, cols)))
        return True


class ScriptedFactory(ExecFactory):
    """An exec factory whose commands are FakeProcesses the test ends by hand."""

    def __init__(self, context: Any, policy: ExecPolicy) -> None:
        super().__init__(context, policy, subreaper=False)
        self.started: list[tuple[CommandProtocol, FakeProcess, Prepared]] = []

    def startCommand(self, proto: ExecProtocol, prepared: Prepared, user: str) -> CommandProtocol:
        command = CommandProtocol(proto, self.context.reactor, prepared.timeout, self.maxFrame - 1)
        process = FakeProcess(pid=1000 + len(self.started))
        command.makeConnection(process)
        self.started.append((command, process, prepared))
        return command


class Conn:
    """One exec connection over a ScriptedFactory, logged in, driven by a
    :class:`FramedPeer` (in memory), its time on a MemoryReactorClock.

    :ivar transport: the server end's in-memory transport (to see it closing).
    """

    proto: ExecProtocol
    transport: FakeTransport

    def __init__(self, tmp_path: Path, options: Mapping[str, Any] | None = None) -> None:
        self.clock = MemoryReactorClock()
        context = makeContext(tmp_path, reactor=self.clock, options=options)
        self.factory = ScriptedFactory(context, policyFor(tmp_path))
        self.peer = FramedPeer(self.factory, self.clock)
        proto = self.peer.server
        assert isinstance(proto, ExecProtocol)
        self.proto = proto
        assert isinstance(proto.transport, FakeTransport)
        self.transport = proto.transport
        self.peer.login(token(context))

    def send(self, kind: bytes, payload: Any = b"") -> None:
        """A frame; a payload that is not bytes is sent as its JSON."""
        if not isinstance(payload, bytes):
            payload = json.dumps(payload).encode()
        self.peer.send(kind, payload)

    def sendRaw(self, data: bytes) -> None:
        """Bytes as they are, whole frames or not."""
        self.peer.sendRaw(data)

    def frames(self) -> list[tuple[bytes, Any]]:
        """The frames received since the last call (JSON ones decoded)."""
        return [(k, json.loads(p) if k in b"HKEX" else p) for k, p in self.peer.take()]

    def drop(self) -> None:
        """The client goes away."""
        self.peer.close()

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)


# -- a server on a loopback port ----------------------------------------------------------


@dataclass
class Server:
    factory: ExecFactory
    port: int
    token: str

    async def connect(self) -> FramedClient:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        return await connectFramed(endpoint, "exec", {"token": self.token})


@asynccontextmanager
async def serving(tmp_path: Path, **options: Any) -> AsyncIterator[Server]:
    """An exec server on a loopback port; on the way out every command is gone."""
    opts: dict[str, Any] = {"exec-cwd": str(tmp_path), "exec-kill-grace": 0.5}
    opts.update(options)
    context = makeContext(tmp_path, options=opts)
    factory = makeFactory(context)
    factory.strayReapInterval = 0.05
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    try:
        address = port.getHost()
        assert isinstance(address, IPv4Address)
        yield Server(factory, address.port, token(context))
    finally:
        await maybeDeferred(port.stopListening)
        await waitDeferred(factory.endAll(), 15)


@dataclass
class Result:
    pid: int
    out: bytes = b""
    err: bytes = b""
    exit: dict[str, Any] = field(default_factory=dict)
    kinds: list[bytes] = field(default_factory=list)


async def started(client: FramedClient, request: dict[str, Any]) -> int:
    """Send R and wait for its K; the command's pid."""
    client.sendJSON(b"R", request)
    k = await waitDeferred(Deferred.fromCoroutine(client.receiveJSON(b"K")))
    pid: int = k["pid"]
    return pid


async def finish(client: FramedClient, pid: int, timeout: float = 20) -> Result:
    """Collect output frames up to X."""
    result = Result(pid)
    out, err = bytearray(), bytearray()
    while True:
        kind, payload = await waitDeferred(client.receive(), timeout)
        result.kinds.append(kind)
        if kind == b"1":
            out += payload
        elif kind == b"2":
            err += payload
        elif kind == b"X":
            result.exit = decodeJSON(payload)
            break
        else:
            raise AssertionError(f"unexpected frame {kind!r}")
    result.out, result.err = bytes(out), bytes(err)
    return result


async def run(client: FramedClient, request: dict[str, Any], stdin: bytes | None = None) -> Result:
    if stdin is not None:
        request = {**request, "stdin": True}
    pid = await started(client, request)
    if stdin is not None:
        chunk = client.maxFrame - 1
        for i in range(0, len(stdin), chunk):
            client.send(b"0", stdin[i : i + chunk])
        client.send(b"C")
    return await finish(client, pid)


def buffered(transport: Any) -> int:
    """Bytes a Twisted FileDescriptor transport holds, not yet written."""
    return int(len(transport.dataBuffer) - transport.offset + transport._tempDataLen)


def connections(factory: ExecFactory) -> list[Any]:
    """The connections of the factory's running commands."""
    return [t.proto.sink for t in factory.commands.values()]  # type: ignore[attr-defined]


async def stalledAt(pid: int) -> int:
    """Once process ``pid`` has written nothing for a while (blocked on a full
    pipe or terminal): how many bytes it had written."""
    process = psutil.Process(pid)
    written: list[int] = []

    def stalled() -> bool:
        written.append(process.io_counters().write_chars)
        return len(written) > 5 and written[-1] == written[-6]

    await eventually(stalled, timeout=20, interval=0.05)
    return written[-1]
