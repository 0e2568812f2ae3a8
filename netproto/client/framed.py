"""The client side of the framed services: connect, read the hello, authenticate.

:class:`FramedClient` turns received frames into awaitable values, in order,
and applies backpressure: when more than :attr:`FramedClient.highWater`
frames wait unread, it stops reading from the socket until the program
catches up.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any, cast

from twisted.internet.defer import Deferred, ensureDeferred, fail
from twisted.internet.defer import TimeoutError as HelloTimeout
from twisted.internet.interfaces import (
    IPushProducer,
    IReactorTime,
    IStreamClientEndpoint,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from netproto.codec import (
    DEFAULT_MAX_FRAME,
    EmptyFrame,
    FrameDecoder,
    FrameTooLarge,
    Hello,
    decodeJSON,
    encodeFrame,
    encodeJSON,
    frameHeader,
)
from netproto.errors import ERROR_CODES, ProtocolError


class ClientError(Exception):
    """A failure to report to the user as one line; ``exitCode`` is the status to exit with."""

    def __init__(self, message: str, exitCode: int = 1) -> None:
        super().__init__(message)
        self.exitCode = exitCode


class ServerError(ClientError):
    """The server answered with an ``E`` frame."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"server refused: {code}: {message}")
        self.code = code
        self.serverMessage = message


class ConnectionClosed(ClientError):
    """The connection ended while a frame was awaited."""


#: A frame from a server may be this large at most; anything larger is garbage.
CLIENT_MAX_FRAME = 16 * 1024 * 1024


class FramedClient(Protocol):
    """One framed connection, seen from the client."""

    highWater = 64

    def __init__(self) -> None:
        self._decoder = FrameDecoder(CLIENT_MAX_FRAME)
        self._frames: deque[tuple[bytes, bytes]] = deque()
        self._waiting: deque[Deferred[tuple[bytes, bytes]]] = deque()
        self._closed: Failure | None = None
        self._paused = False
        self.maxFrame = DEFAULT_MAX_FRAME
        #: the server's hello, once :func:`connectFramed` has read it
        self.hello: Hello | None = None
        self.connected = False

    def connectionMade(self) -> None:
        self.connected = True
        if ITCPTransport.providedBy(self.transport):
            self.transport.setTcpNoDelay(True)

    def dataReceived(self, data: bytes) -> None:
        self._decoder.feed(data)
        while True:
            try:
                frame = self._decoder.next()
            except (FrameTooLarge, EmptyFrame) as e:
                self._lose(ClientError(f"server sent a broken frame: {e}"))
                return
            if frame is None:
                break
            if self._waiting:
                self._waiting.popleft().callback(frame)
            else:
                self._frames.append(frame)
        if len(self._frames) > self.highWater and not self._paused and self.transport:
            self._paused = True
            cast(IPushProducer, self.transport).pauseProducing()

    def _lose(self, error: Exception) -> None:
        self._closed = Failure(error)
        if self.transport is not None:
            cast(ITCPTransport, self.transport).abortConnection()

    def connectionLost(self, reason: Failure = Failure(ConnectionClosed("closed"))) -> None:  # noqa: B008
        self.connected = False
        if self._closed is None and reason.check(ClientError):
            self._closed = reason  # e.g. a refused certificate (netproto.client.pinning)
        if self._closed is None:
            self._closed = Failure(ConnectionClosed("the server closed the connection"))
        while self._waiting:
            self._waiting.popleft().errback(self._closed)

    def receive(self) -> Deferred[tuple[bytes, bytes]]:
        """The next frame as ``(type, payload)``; an ``E`` frame fails with :class:`ServerError`."""
        if self._frames:
            frame = self._frames.popleft()
            if self._paused and len(self._frames) <= self.highWater // 2 and self.transport:
                self._paused = False
                cast(IPushProducer, self.transport).resumeProducing()
            d: Deferred[tuple[bytes, bytes]] = Deferred()
            d.callback(frame)
        elif self._closed is not None:
            closed: Deferred[tuple[bytes, bytes]] = fail(self._closed)
            return closed
        else:
            d = Deferred()
            self._waiting.append(d)
        return d.addCallback(_raiseServerError)

    async def receiveJSON(self, expected: bytes) -> dict[str, Any]:
        """The next frame, which must be of type ``expected`` with a JSON object payload."""
        kind, payload = await self.receive()
        if kind != expected:
            raise ClientError(f"protocol error: expected a {expected!r} frame, got {kind!r}")
        try:
            return decodeJSON(payload)
        except Exception:
            raise ClientError(f"protocol error: {kind!r} frame payload is not JSON") from None

    def send(self, kind: bytes, payload: bytes = b"") -> None:
        assert self.transport is not None
        if len(payload) < 4096:
            self.transport.write(encodeFrame(kind, payload))
        else:
            self.transport.writeSequence([frameHeader(kind, len(payload)), payload])

    def sendJSON(self, kind: bytes, obj: Mapping[str, Any]) -> None:
        self.send(kind, encodeJSON(obj))

    def close(self) -> None:
        if self.transport is not None and self.connected:
            self.transport.loseConnection()


def _raiseServerError(frame: tuple[bytes, bytes]) -> tuple[bytes, bytes]:
    kind, payload = frame
    if kind == b"E":
        try:
            error = decodeJSON(payload)
            code, message = str(error.get("code")), str(error.get("message", ""))
        except Exception:
            code, message = "?", payload[:200].decode("utf-8", "replace")
        if code not in ERROR_CODES:
            message = f"{message} (unknown error code)"
        raise ServerError(code, message)
    return frame


#: Seconds the client waits for the hello, which a framed server sends as soon as
#: a client connects. Longer means it is no framed server, or one behind TLS
#: (``twistd netproto --tls``), which waits for the client to start TLS: without
#: this the client waited out the server's 30 s login grace, then said "closed".
HELLO_TIMEOUT = 15.0


async def connectFramed(
    endpoint: IStreamClientEndpoint,
    service: str,
    auth: Mapping[str, str],
    clock: IReactorTime | None = None,
) -> FramedClient:
    """Connect, check the hello names ``service``, authenticate with ``auth``.

    :param auth: the ``A`` payload: ``{"token": ...}`` or ``{"user": ..., "password": ...}``.
    :param clock: times :data:`HELLO_TIMEOUT` (default: the global reactor).
    :raises ClientError: with a message for the user on any failure.
    """
    try:
        client = await endpoint.connect(Factory.forProtocol(FramedClient))
    except Exception as e:
        raise ClientError(f"cannot connect: {e}") from None
    assert isinstance(client, FramedClient)
    try:
        if clock is None:
            from twisted.internet import reactor

            clock = cast(IReactorTime, reactor)
        waiting = ensureDeferred(client.receiveJSON(b"H"))
        try:
            hello = Hello.fromFields(await waiting.addTimeout(HELLO_TIMEOUT, clock))
        except ProtocolError as e:
            raise ClientError(f"protocol error: {e.message}") from None
        except HelloTimeout:
            raise ClientError(
                f"no hello from the server within {HELLO_TIMEOUT:g} s: not a netproto "
                "framed service, or one run with twistd netproto --tls (then add --tls)"
            ) from None
        if hello.service != service:
            raise ClientError(
                f"that port serves {hello.service!r}, not {service!r}: wrong --server port?"
            )
        client.hello = hello
        client.maxFrame = hello.maxFrame
        offered = hello.auth
        method = "token" if "token" in auth else "password"
        if method not in offered:
            raise ClientError(
                f"the server does not take a {method} (it takes: {', '.join(offered)}); "
                + ("use --user" if method == "token" else "use the token")
            )
        client.sendJSON(b"A", auth)
        await client.receiveJSON(b"K")
    except BaseException:
        client.close()
        raise
    return client
