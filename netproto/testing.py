"""Test helpers for people who write netproto service plugins (a supported API).

* :func:`makeContext` builds the :class:`~netproto.services.ServerContext` a
  service's builder receives, with a fresh data dir and token.
* :func:`serveInMemory` connects a client protocol to your service through
  Twisted's in-memory transports (``twisted.test.iosim``): no sockets, no real
  time, deterministic.
* :class:`FramedPeer` is a scripted client of a framed service (hello,
  login, send frames, expect frames, deadlines on a clock), also in memory.
* :func:`checkService` is the conformance check every service plugin must
  pass; ``docs/extending.md`` walks through using it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IProtocol,
    IProtocolFactory,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.protocol import DatagramProtocol, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.plugin import IPlugin
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, IOPump
from zope.interface import implementer

from netproto.auth import makePortal
from netproto.codec import FrameDecoder, Hello, decodeJSON, encodeFrame, encodeJSON
from netproto.services import (
    INetprotoService,
    ServerContext,
    ServiceError,
    declaredDefaults,
    parseDatagramEndpoint,
)

_NAME = re.compile(r"^[a-z][a-z0-9-]{0,31}$")


def makeContext(
    tmp: Path,
    reactor: Any = None,
    options: Mapping[str, Any] | None = None,
    usersFile: Path | None = None,
) -> ServerContext:
    """A server context whose data dir is ``tmp/data`` (token auth unless ``usersFile``).

    :param reactor: defaults to a :class:`MemoryReactorClock`; pass the real
        reactor for loopback tests.
    """
    reactor = MemoryReactorClock() if reactor is None else reactor
    dataDir = tmp / "data"
    dataDir.mkdir(mode=0o700, parents=True, exist_ok=True)
    portal, methods, _ = makePortal(dataDir, usersFile, reactor)
    return ServerContext(
        reactor=reactor,
        portal=portal,
        authMethods=methods,
        dataDir=dataDir,
        options=dict(options or {}),
    )


def readToken(context: ServerContext) -> str:
    """The token of a context made by :func:`makeContext`."""
    return (context.dataDir / "token").read_text().strip()


def defaultOptions(service: INetprotoService) -> dict[str, Any]:
    """The service's own options at their defaults, as ``twistd netproto`` would pass them."""
    return declaredDefaults(service)


def serveInMemory(
    serverFactory: IProtocolFactory,
    client: Protocol,
    clock: Any = None,
    peerAddress: IAddress | None = None,
) -> tuple[IProtocol, Protocol, IOPump]:
    """Connect ``client`` to a protocol of ``serverFactory`` in memory.

    Returns ``(server, client, pump)``; call ``pump.flush()`` to move bytes
    both ways until both sides are quiet.

    Both ends' transports are :class:`PausableTransport`: a protocol that
    pauses reading (``transport.pauseProducing()``) gets nothing more until it
    resumes, as over TCP; what was sent meanwhile is delivered by the next
    pump after the resume.

    :param clock: the :class:`~twisted.internet.task.Clock` the pump runs
        (``callLater(0, ...)`` calls fire on each pump); pass the reactor of
        the service's context (a :class:`MemoryReactorClock` from
        :func:`makeContext`) so that the service's timers and the pump share
        one time. Default: a clock of its own. Or a real reactor, for a
        service that needs real I/O besides its connection (exec runs
        processes): the pump then runs by itself on that reactor, once after
        each write, close or resumed read of either end, and the test waits
        on Deferreds as over a socket.
    :param peerAddress: the client's address as the server sees it (given to
        ``buildProtocol`` and returned by ``transport.getPeer()``), for a
        service that tells peers apart by address (per-host caps); default:
        an address that is no IP address.
    """
    server = serverFactory.buildProtocol(peerAddress or IPv4Address("TCP", "127.0.0.1", 4242))
    assert server is not None, "the factory refused the connection"
    serverIO = PausableTransport(server, isServer=True, peerAddress=peerAddress)
    clientIO = PausableTransport(client, isServer=False)
    server.makeConnection(serverIO)
    client.makeConnection(clientIO)
    pump = _Pump(client, server, clientIO, serverIO, False, clock=clock)
    if clock is not None and not hasattr(clock, "advance"):
        pump.runOn(clock)
    pump.flush()
    return server, client, pump


@implementer(IPushProducer)
class PausableTransport(FakeTransport):
    """iosim's in-memory transport, with paused reading modelled.

    :class:`~twisted.test.iosim.FakeTransport` has ``pauseProducing`` and
    ``resumeProducing`` as no-ops, so a protocol that pauses reading (the
    framed base while a password is checked, upload for backpressure, exec
    while a command's stdin is full) still got every byte in a test. Here,
    while paused, bytes that arrive are held, in order; after
    ``resumeProducing`` they are delivered, as one read, by the next pump of
    the :class:`IOPump` (never inside ``resumeProducing``: like a TCP
    transport, which reads again on the next reactor iteration).

    A close by the other end is reported at once even while paused, and what
    was held is then dropped (as a reset would do): a test of a peer that
    goes away needs no resume.

    :ivar kick: called on a write, a close or a resume: how a pump on a real
        reactor (:func:`serveInMemory` given one) knows it has work.
    """

    def __init__(
        self, protocol: IProtocol, isServer: bool, peerAddress: IAddress | None = None
    ) -> None:
        super().__init__(protocol, isServer, peerAddress=peerAddress)
        #: Whether reading is paused (``pauseProducing`` called, not yet resumed).
        self.paused = False
        #: What arrived while paused (or since the resume), not yet delivered.
        self.held: list[bytes] = []
        #: Told when there is something for the pump to do (a pump on a real reactor).
        self.kick: Callable[[], object] = _nothing

    def write(self, data: bytes) -> None:
        super().write(data)
        self.kick()

    def loseConnection(self) -> None:
        super().loseConnection()
        self.kick()

    def abortConnection(self) -> None:
        super().abortConnection()
        self.kick()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.kick()

    def bufferReceived(self, buf: object) -> None:
        if isinstance(buf, bytes) and (self.paused or self.held):
            self.held.append(buf)
            return
        super().bufferReceived(buf)

    def deliverHeld(self) -> bool:
        """Deliver what was held if reading is no longer paused; whether it did."""
        if self.paused or not self.held or self.disconnected:
            return False
        data = b"".join(self.held)
        self.held.clear()
        self.protocol.dataReceived(data)
        return True

    def reportDisconnect(self) -> None:
        self.held.clear()
        super().reportDisconnect()


class _Pump(IOPump):
    """An :class:`IOPump` that also delivers what a resumed transport held."""

    serverIO: PausableTransport
    clientIO: PausableTransport
    #: The delayed call of the next flush, when the pump runs on a real reactor.
    _next: IDelayedCall | None = None
    _reactor: IReactorTime | None = None

    def runOn(self, reactor: IReactorTime) -> None:
        """Flush on ``reactor`` whenever an end has something to move."""
        self._reactor = reactor
        self.serverIO.kick = self.clientIO.kick = self._kick

    def _kick(self) -> None:
        if self._reactor is not None and self._next is None:
            self._next = self._reactor.callLater(0, self._flushNow)

    def _flushNow(self) -> None:
        self._next = None
        self.flush()

    def pump(self, debug: bool = False, advanceClock: bool = True) -> bool:
        if advanceClock and self._reactor is None:
            self.clock.advance(0)
        held = self.serverIO.deliverHeld() | self.clientIO.deliverHeld()
        return bool(super().pump(debug, advanceClock=False)) or held


def _nothing() -> None:
    pass


class _FrameCollector(Protocol):
    """The client end of a :class:`FramedPeer`: decodes what the server sends."""

    def __init__(self) -> None:
        self.decoder = FrameDecoder(PEER_MAX_FRAME)
        self.frames: list[tuple[bytes, bytes]] = []
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.decoder.feed(data)
        while (frame := self.decoder.next()) is not None:
            self.frames.append(frame)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self.lost = reason


#: Largest frame a :class:`FramedPeer` accepts from the server under test: far
#: above any ``max_frame``, so that a server sending too much is seen as frames
#: to look at rather than as an exception inside the pump.
PEER_MAX_FRAME: Final = 64 * 1024 * 1024


class FramedPeer:
    """A scripted client of a framed service (PROTOCOL.md section 2), in memory.

    It connects to a protocol of ``factory`` through Twisted's in-memory
    transports (:mod:`twisted.test.iosim`: no sockets, no threads), reads
    the hello, and then does what a test tells it, one step at a time::

        peer = FramedPeer(makeFactory(makeContext(tmp_path)))
        assert peer.hello.service == "shout-framed"
        peer.login(token=readToken(context))
        peer.sendJSON(b"S", {"text": "hi"})
        assert peer.expectJSON(b"K") == {"text": "HI"}

    Every step moves bytes both ways until both ends are quiet, so an
    ``expect`` sees all the server had to say by then. Time only moves when
    :meth:`advance` is called: the service's deadlines (grace, frame, idle,
    the failed-login delay) are run on ``clock``, by default the reactor of
    the factory's context (the :class:`MemoryReactorClock` of
    :func:`makeContext`).

    Frames are built and read with :mod:`netproto.codec`, the same sans-IO
    codec the server uses. The ``expect`` methods take the oldest frame not
    yet expected and fail with an :class:`AssertionError` naming what came
    instead.

    :param peerAddress: where the peer connects from, as the server sees it
        (see :func:`serveInMemory`).
    :ivar hello: the server's ``H``, decoded.
    :ivar server: the server-side protocol (to look at its state in a test).
    """

    def __init__(
        self, factory: IProtocolFactory, clock: Any = None, peerAddress: IAddress | None = None
    ) -> None:
        if clock is None:
            context = getattr(factory, "context", None)
            clock = getattr(context, "reactor", None)
            if not hasattr(clock, "advance"):
                raise TypeError("pass a clock: the factory's reactor cannot advance time")
        self.clock = clock
        self._client = _FrameCollector()
        self.server, _, self._pump = serveInMemory(factory, self._client, clock, peerAddress)
        self.hello = Hello.decode(self.expect(b"H"))

    # -- moving bytes and time ------------------------------------------------

    def flush(self) -> None:
        """Move bytes both ways until neither end has more to say."""
        self._pump.flush()

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass on the clock (timers fire), then :meth:`flush`."""
        self.clock.advance(seconds)
        self.flush()

    # -- sending ---------------------------------------------------------------

    def sendRaw(self, data: bytes) -> None:
        """Send bytes as they are (a half frame, a bad length), then :meth:`flush`."""
        transport = self._client.transport
        assert transport is not None
        transport.write(data)
        self.flush()

    def send(self, kind: bytes, payload: bytes = b"") -> None:
        """Send one frame, then :meth:`flush`."""
        self.sendRaw(encodeFrame(kind, payload))

    def sendJSON(self, kind: bytes, obj: Mapping[str, Any]) -> None:
        """Send one frame with a JSON payload, then :meth:`flush`."""
        self.send(kind, encodeJSON(obj))

    def login(
        self, token: str | None = None, *, user: str | None = None, password: str = ""
    ) -> dict[str, Any]:
        """Send ``A`` with ``token`` (or ``user`` and ``password``) and expect
        the ``K``; returns its payload (``{"user": NAME}``)."""
        if (token is None) == (user is None):
            raise TypeError("login with a token or with a user, not both")
        self.sendJSON(
            b"A", {"token": token} if user is None else {"user": user, "password": password}
        )
        return self.expectJSON(b"K")

    def close(self) -> None:
        """Close the connection from the client's end, then :meth:`flush`."""
        transport = self._client.transport
        assert transport is not None
        transport.loseConnection()
        self.flush()

    # -- expecting -------------------------------------------------------------

    @property
    def received(self) -> list[tuple[bytes, bytes]]:
        """Frames that arrived and were not expected yet, oldest first."""
        return list(self._client.frames)

    @property
    def closed(self) -> bool:
        """Whether the connection is closed (by either end)."""
        return self._client.lost is not None

    def expect(self, kind: bytes) -> bytes:
        """The payload of the next frame, which must be of type ``kind``."""
        frames = self._client.frames
        if not frames:
            state = "closed" if self.closed else "open"
            raise AssertionError(f"expected a {kind!r} frame; none came (connection {state})")
        got, payload = frames[0]
        if got != kind:
            raise AssertionError(f"expected a {kind!r} frame, got {got!r} {payload[:200]!r}")
        del frames[0]
        return payload

    def expectJSON(self, kind: bytes) -> dict[str, Any]:
        """The JSON payload of the next frame, which must be of type ``kind``."""
        return decodeJSON(self.expect(kind))

    def expectError(self, code: str) -> str:
        """The message of the next frame, which must be ``E`` with ``code``."""
        error = self.expectJSON(b"E")
        if error.get("code") != code:
            raise AssertionError(f"expected E {code!r}, got E {error!r}")
        return str(error.get("message", ""))

    def take(self) -> list[tuple[bytes, bytes]]:
        """Every frame that arrived and was not expected yet, oldest first, as
        ``(kind, payload)``; they count as expected (for a test that looks at
        a whole exchange at once rather than frame by frame)."""
        self.flush()
        frames = list(self._client.frames)
        self._client.frames.clear()
        return frames

    def expectNothing(self) -> None:
        """No frame is waiting (the server is quiet)."""
        if self._client.frames:
            raise AssertionError(f"expected no frame, got {self._client.frames[:3]!r}")

    def expectClosed(self) -> None:
        """Every frame was expected and the connection is closed."""
        self.expectNothing()
        if not self.closed:
            raise AssertionError("expected the connection to be closed; it is open")


def checkService(service: object, tmp: Path) -> None:
    """Fail with an AssertionError listing every way ``service`` breaks the plugin contract.

    It checks the declaration (interfaces, name, kind, default endpoint,
    options), that ``build`` returns the right kind of object for the
    default options, and that the built protocol survives a connection that
    sends garbage and goes away: a bad peer must never crash a service.
    """
    problems: list[str] = []
    if not IPlugin.providedBy(service):
        problems.append("does not provide twisted.plugin.IPlugin (getPlugins will not see it)")
    if not INetprotoService.providedBy(service):
        raise AssertionError("does not provide netproto.services.INetprotoService")
    svc = service
    if not isinstance(svc.name, str) or not _NAME.match(svc.name):
        problems.append(f"name {svc.name!r}: use 1-32 lowercase letters, digits or '-'")
    if not isinstance(svc.description, str) or not svc.description.strip():
        problems.append("description is empty")
    if svc.kind not in ("stream", "datagram"):
        problems.append(f"kind {svc.kind!r} is neither 'stream' nor 'datagram'")
    try:
        if svc.kind == "datagram":
            parseDatagramEndpoint(svc.defaultEndpoint)
        else:
            serverFromString(MemoryReactorClock(), svc.defaultEndpoint)
    except (ValueError, TypeError, KeyError, ServiceError) as e:
        problems.append(f"default endpoint {svc.defaultEndpoint!r} does not parse: {e}")
    names = [p[0] for p in svc.optParameters] + [f[0] for f in svc.optFlags]
    for name in names:
        if not isinstance(name, str) or not name.startswith(f"{svc.name}-"):
            problems.append(f"option {name!r} should start with '{svc.name}-'")
    if len(set(names)) != len(names):
        problems.append("an option is declared twice")
    if problems:
        raise AssertionError(f"service {svc.name!r}: " + "; ".join(problems))
    context = makeContext(tmp, options=defaultOptions(svc))
    built = svc.build(context)
    if svc.kind == "datagram":
        if not isinstance(built, DatagramProtocol):
            raise AssertionError(f"service {svc.name!r}: build() did not return a DatagramProtocol")
        return
    if not IProtocolFactory.providedBy(built):
        raise AssertionError(f"service {svc.name!r}: build() did not return a protocol factory")
    _survivesGarbage(svc.name, built)


def _survivesGarbage(name: str, factory: IProtocolFactory) -> None:
    factory.doStart()
    try:
        for chunk in _garbage():
            proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4242))
            if proto is None:
                continue
            transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 4242))
            proto.makeConnection(transport)
            try:
                proto.dataReceived(chunk)
            except Exception as e:
                raise AssertionError(
                    f"service {name!r}: dataReceived({chunk[:20]!r}...) raised {e!r}"
                ) from e
            proto.connectionLost(Failure(ConnectionError("test over")))
    finally:
        factory.doStop()


def _garbage() -> Sequence[bytes]:
    return [
        b"",
        b"\x00" * 64,
        b"\xff\xfb\x01\xff\xfd\x03",
        b"\xff" * 4096,
        os.urandom(4096),
        b"x" * 100_000 + b"\n",
        b"\r\n" * 100,
    ]


__all__ = [
    "PEER_MAX_FRAME",
    "FramedPeer",
    "PausableTransport",
    "checkService",
    "defaultOptions",
    "makeContext",
    "readToken",
    "serveInMemory",
]
