"""The server base of the framed services (PROTOCOL.md section 2), on Twisted.

The wire format itself (frames, JSON payloads, the hello) is sans-IO in
:mod:`netproto.codec`; this module is the Twisted side shared by exec and
upload: :class:`FramedProtocol` moves bytes between the transport and a
:class:`~netproto.codec.FrameDecoder`, runs the authentication state machine
(one table, :data:`TRANSITIONS`), the deadlines (grace, frame, idle, close),
turns a peer's mistakes into ``E`` frames in one place, and dispatches
authenticated frames to a service's handler table. :class:`FramedFactory`
holds what the connections share.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Final, cast

from twisted.cred.credentials import ICredentials, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, ITCPTransport
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from netproto.addresses import CountPerAddress, describePeer
from netproto.auth import IUser, TokenCredentials
from netproto.codec import (
    DEFAULT_MAX_FRAME,
    HEADER,
    PRE_AUTH_MAX_FRAME,
    EmptyFrame,
    FrameDecoder,
    FrameTooLarge,
    Hello,
    decodeJSON,
    encodeJSON,
)
from netproto.directsend import Writer, directSocket
from netproto.errors import ErrorCode, ProtocolError
from netproto.logsummary import RepeatSummary, sourceOf

if TYPE_CHECKING:
    from netproto.services import ServerContext

#: Twisted's TCP transport reads at most ``bufferSize`` (64 KiB) per call. A
#: connection whose reads fill that is streaming data (an upload, a command's
#: stdin): its read size grows, by 4x each time a read comes back full, up to
#: this, which cuts the per-read work of the reactor for bulk transfers.
#: The same attribute is the transport's write-buffer threshold for
#: producers, so the bound on what one connection buffers grows with it.
MAX_READ_SIZE: Final = 1024 * 1024

#: Default seconds within which a whole frame must arrive once its first byte
#: has (``--frame-timeout``; 0 turns it off). A peer trickling a frame holds
#: its connection and a buffer of up to ``max_frame``: without a deadline, one
#: byte a second kept both forever. 30 s still lets a frame of the largest size
#: through any link of 9 KiB/s or more.
DEFAULT_FRAME_TIMEOUT: Final = 30.0
#: Default seconds an authenticated connection may stay idle: no frame
#: received, none in progress and the service not busy (``--idle-timeout``; 0
#: turns it off). Authenticated peers are trusted, so this is for reclaiming
#: connections that were forgotten or whose peer vanished without a FIN, not
#: for defence; 10 minutes (as ProFTPD's ``TimeoutIdle``) never cuts a session
#: working with pauses, and the bundled clients never hold a connection idle.
DEFAULT_IDLE_TIMEOUT: Final = 600.0
#: Default most connections from one IP address that may be unauthenticated at
#: once (``--max-unauthenticated-per-host``; 0: no cap). Each holds a descriptor
#: and a protocol for up to the grace period (30 s) without proving anything,
#: so without a cap one host could hold thousands and starve the server of
#: descriptors. A connection stops counting once it is authenticated, so the
#: cap only bounds logins in progress: a person or a NAT of a few users has
#: a handful at a time; 16 leaves room for scripts that connect in parallel.
#: Past it a connection gets ``E busy`` and is closed at once. UNIX-socket
#: peers are not counted (they have no address to tell apart).
DEFAULT_MAX_UNAUTHENTICATED_PER_HOST: Final = 16
#: Seconds a connection closed for a fatal error may take to drain what is
#: queued for it (the ``E`` frame at least) before it is aborted: a peer that
#: stopped reading must not keep its connection and buffers by not reading.
CLOSE_GRACE: Final = 10.0
#: Deadlines this close to now count as passed, so that float rounding of a
#: re-armed delayed call cannot make it fire again and again at the same time.
_SLACK: Final = 1e-6

_NO_TYPES: Final[frozenset[bytes]] = frozenset()


def _hostOf(address: object) -> str | None:
    """The IP address a connection counts against per-host caps; None for
    peers without one (UNIX sockets)."""
    if isinstance(address, (IPv4Address, IPv6Address)):
        return address.host
    return None


def growReadSize(transport: object, lastRead: int) -> None:
    """Let a TCP transport read more per call once a read came back full.

    Only Twisted's own socket transports have ``bufferSize``; others (TLS,
    in-memory test transports) are left alone.
    """
    size = getattr(transport, "bufferSize", None)
    if isinstance(size, int) and lastRead >= size and size < MAX_READ_SIZE:
        transport.bufferSize = min(size * 4, MAX_READ_SIZE)  # type: ignore[attr-defined]


class State(enum.Enum):
    """Where a framed connection is in its life.

    Frames are read only in UNAUTHENTICATED and READY; in the other states
    what arrives stays in the decoder's buffer, unread.
    """

    UNAUTHENTICATED = "unauthenticated"
    #: the credentials of an ``A`` are being checked
    AUTHENTICATING = "authenticating"
    READY = "ready"
    #: a login failed: the ``E auth-failed`` and the close wait for a delay
    #: that slows guessing (the factory's ``authFailureDelay``)
    FAILED = "failed"
    CLOSED = "closed"


class Event(enum.Enum):
    """What moves a connection from state to state, besides the peer's frames."""

    #: the credentials were accepted: ``K {"user"}``
    ACCEPTED = "credentials accepted"
    #: the credentials were refused, or the method is not offered
    REJECTED = "credentials rejected"
    #: a fatal ``E`` was sent (a bad or oversized frame, a deadline, the end
    #: of the failed-login delay), or the connection was lost
    CLOSE = "close"


#: A frame type (the peer sent that frame) or an :class:`Event`.
Trigger = bytes | Event

#: Every transition of the connection state machine, and the only place that
#: sets :attr:`FramedProtocol.state` (through ``FramedProtocol._advance``).
#: A frame the table does not list for UNAUTHENTICATED is ``E auth-required``;
#: in READY the service's frames are dispatched by
#: :attr:`FramedProtocol.frameHandlers` without changing state, and any
#: other is ``E bad-frame`` (a second ``A`` too: one connection, one identity).
TRANSITIONS: Final[Mapping[State, Mapping[Trigger, State]]] = {
    State.UNAUTHENTICATED: {b"A": State.AUTHENTICATING, Event.CLOSE: State.CLOSED},
    State.AUTHENTICATING: {
        Event.ACCEPTED: State.READY,
        Event.REJECTED: State.FAILED,
        Event.CLOSE: State.CLOSED,
    },
    State.READY: {Event.CLOSE: State.CLOSED},
    State.FAILED: {Event.CLOSE: State.CLOSED},
    State.CLOSED: {Event.CLOSE: State.CLOSED},
}

FrameHandler = Callable[[Any, bytes], object]


class FramedProtocol(Protocol):
    """The server side of a framed service.

    The wire format is ``Int32StringReceiver``'s (a 4-byte big-endian length,
    then that many bytes, here a type byte and its payload), but this is a
    plain :class:`~twisted.internet.protocol.Protocol` and not an
    ``IntNStringReceiver``: its buffer re-joins everything held on every read
    (quadratic in the reads a frame spans), it checks the length limit only
    through ``lengthLimitExceeded`` after buffering, and it cannot pass bulk
    data through without copies. The bytes go to a sans-IO
    :class:`~netproto.codec.FrameDecoder` instead, and this class does the
    rest: states, deadlines, errors, dispatch.

    Subclasses set :attr:`serviceName` and :attr:`frameHandlers` (frame type
    to handler, valid once authenticated) and may override :meth:`authenticated`,
    :meth:`isBusy`, :meth:`readingPaused` and ``connectionLost``. A handler
    raises :class:`ProtocolError` for the peer's mistakes; it may return a
    Deferred, whose failure is handled the same way. The factory must be a
    :class:`FramedFactory`.

    Deadlines (each ``E timeout`` and a close): authentication within the
    factory's ``graceTimeout``; every frame whole within ``frameTimeout`` of
    its first byte, before and after authentication; and, once
    authenticated, a frame at least every ``idleTimeout`` unless the service
    :meth:`isBusy`. One delayed call per connection watches the last two: a
    read only stores the time, and the call is moved only when a frame starts
    that must end before it.
    """

    serviceName: ClassVar[str] = "framed"
    frameHandlers: ClassVar[Mapping[bytes, FrameHandler]] = {}
    #: Frame types (once authenticated) whose handler gets the payload in
    #: pieces as they arrive (:meth:`FrameDecoder.take`): each piece a
    #: read-only ``memoryview`` of a received read, not a copy, so bulk data
    #: is never copied in user space between the socket and its consumer.
    #: The handler is called once per piece (once with ``b""`` for an empty
    #: frame) and must not rely on where frames begin or end.
    streamedFrames: ClassVar[frozenset[bytes]] = frozenset()

    factory: FramedFactory
    log = Logger()

    def __init__(self) -> None:
        self.state = State.UNAUTHENTICATED
        self.avatar: IUser | None = None
        self.peer = "?"
        #: Reading paused while a password is checked (:meth:`_authenticate`).
        self._pausedForLogin = False
        #: Who this is in summarised log lines (:func:`netproto.logsummary.sourceOf`).
        self.source = "?"
        #: The IP address this connection counts against while it is not
        #: authenticated (:meth:`FramedFactory.admitUnauthenticated`); None
        #: once authenticated or closed, or for a peer without an address.
        self._unauthenticatedHost: str | None = None
        self._decoder = FrameDecoder(PRE_AUTH_MAX_FRAME)
        self._graceTimer: IDelayedCall | None = None
        self._failTimer: IDelayedCall | None = None
        #: The one delayed call that checks the frame and idle deadlines (then
        #: aborts a connection that was closed and does not drain).
        self._watchdog: IDelayedCall | None = None
        #: When the first byte of the frame being received arrived; None between frames.
        self._frameStart: float | None = None
        #: When the peer last sent anything (or the service was last seen busy).
        self._lastActive = 0.0
        self._wasBusy = False

    # -- connection life ---------------------------------------------------

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.sender = Writer(self.transport, directSocket(self.transport))
        self.peer = describePeer(self.transport)
        if ITCPTransport.providedBy(self.transport):
            # Small control frames must not wait for Nagle's algorithm.
            self.transport.setTcpNoDelay(True)
        self.source = sourceOf(self.transport.getPeer())
        self.factory.logSummary.emit(
            (self.source, f"{self.serviceName}: connection"),
            LogLevel.info,
            "{service}: connection from {peer}",
            service=self.serviceName,
            peer=self.peer,
        )
        ctx = self.factory.context
        hello = Hello(
            self.serviceName,
            tuple(ctx.authMethods),
            self.factory.maxFrame,
            features=self.factory.features,
        )
        self.sendFrame(b"H", hello.encode())
        host = _hostOf(self.transport.getPeer())
        if not self.factory.admitUnauthenticated(host):
            self.fail(
                ProtocolError(
                    "busy",
                    f"{self.factory.maxUnauthenticatedPerHost} connections from {host} are "
                    "not authenticated yet (--max-unauthenticated-per-host); try later",
                    fatal=True,
                )
            )
            return
        self._unauthenticatedHost = host
        self._graceTimer = ctx.reactor.callLater(self.factory.graceTimeout, self._graceExpired)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self._advance(Event.CLOSE)
        self._stopCountingUnauthenticated()
        for timer in (self._graceTimer, self._failTimer, self._watchdog):
            if timer is not None and timer.active():
                timer.cancel()
        self._graceTimer = self._failTimer = self._watchdog = None
        if self.avatar is not None:
            # An authenticated session's end is always logged: it closes an audit trail.
            self.log.info(
                "{service}: {peer} disconnected ({user})",
                service=self.serviceName,
                peer=self.peer,
                user=self.avatar.name,
            )
            return
        self.factory.logSummary.emit(
            (self.source, f"{self.serviceName}: disconnected"),
            LogLevel.info,
            "{service}: {peer} disconnected ({user})",
            service=self.serviceName,
            peer=self.peer,
            user="unauthenticated",
        )

    def _stopCountingUnauthenticated(self) -> None:
        """Authenticated, or gone: no longer one of its host's unauthenticated connections."""
        host, self._unauthenticatedHost = self._unauthenticatedHost, None
        if host is not None:
            self.factory.leftUnauthenticated(host)

    def _advance(self, trigger: Trigger) -> None:
        """Move to the state :data:`TRANSITIONS` gives for ``trigger``; one it
        does not list for the current state is a bug of ours."""
        try:
            self.state = TRANSITIONS[self.state][trigger]
        except KeyError:
            raise RuntimeError(f"no transition from {self.state} on {trigger!r}") from None

    def _readsFrames(self) -> bool:
        """Whether frames are taken out of the buffer in the current state: in
        UNAUTHENTICATED and READY. In AUTHENTICATING reading is paused (a password
        being checked) or the answer is immediate (the token); in FAILED what
        arrives is dropped (:meth:`dataReceived`)."""
        return self.state is State.READY or self.state is State.UNAUTHENTICATED

    def _graceExpired(self) -> None:
        self._graceTimer = None  # cancelled on READY and on the close
        if self.state is not State.READY:
            self.fail(ProtocolError("timeout", "no authentication within the grace period"))

    # -- the frame and idle deadlines -------------------------------------------

    def isBusy(self) -> bool:
        """Whether the service has work in progress for this connection (a
        command running, a file being written): a busy connection is never idle.
        Services override this; the base has nothing in progress."""
        return False

    def readingPaused(self) -> bool:
        """Whether the service has paused reading this connection (its
        consumer is full). The frame deadline does not run out while it is:
        the peer cannot send then. Services that pause the transport override
        this."""
        return False

    def _noteProgress(self, completed: bool) -> None:
        """After a read was handled: note the time, and when a frame started,
        make sure the watchdog runs by its deadline."""
        factory = self.factory
        now = factory.context.reactor.seconds()
        self._lastActive = now
        if not self._decoder.inFrame:
            self._frameStart = None
            if self._watchdog is None and self.state is State.READY and factory.idleTimeout:
                self._armWatchdog(now + factory.idleTimeout)
        elif completed or self._frameStart is None:
            self._frameStart = now
            if factory.frameTimeout:
                self._armWatchdog(now + factory.frameTimeout)

    def _armWatchdog(self, when: float) -> None:
        """Have the watchdog run at ``when`` at the latest (never later than it is)."""
        reactor = self.factory.context.reactor
        delay = max(0.0, when - reactor.seconds())
        timer = self._watchdog
        if timer is None or not timer.active():
            self._watchdog = reactor.callLater(delay, self._checkDeadlines)
        elif timer.getTime() > when:
            timer.reset(delay)

    def _checkDeadlines(self) -> None:
        """Close the connection whose frame or idle deadline has passed;
        otherwise run again by the next deadline."""
        self._watchdog = None
        if self.state is State.CLOSED:
            return
        factory = self.factory
        now = factory.context.reactor.seconds()
        if self._frameStart is not None and self._decoder.inFrame and factory.frameTimeout:
            if not self._readsFrames() or self.readingPaused():
                # Not reading (credentials being checked, the service's
                # consumer full): the peer could not send; its clock restarts.
                self._frameStart = now
            elif now + _SLACK >= self._frameStart + factory.frameTimeout:
                self.fail(
                    ProtocolError(
                        "timeout", f"a frame did not arrive whole within {factory.frameTimeout:g} s"
                    )
                )
                return
            self._armWatchdog(self._frameStart + factory.frameTimeout)
        elif self.state is State.READY and factory.idleTimeout:
            self._frameStart = None
            busy = self.isBusy()
            if busy or self._wasBusy:
                # Busy time counts as activity, and so does the end of it: the
                # peer gets a whole idle period after its command or its file.
                self._lastActive = now
            self._wasBusy = busy
            if now + _SLACK >= self._lastActive + factory.idleTimeout:
                self.fail(ProtocolError("timeout", f"idle for {factory.idleTimeout:g} s; closing"))
                return
            self._armWatchdog(self._lastActive + factory.idleTimeout)

    # -- receiving -----------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.state is State.CLOSED or self.state is State.FAILED:
            # After a failed login nothing is read again: not buffered either, or a
            # peer could fill memory during the failed-login delay.
            return
        if len(data) >= 65536:
            growReadSize(self.transport, len(data))
        self._decoder.feed(data)
        self._dispatchBuffered()

    def _dispatchBuffered(self) -> None:
        decoder = self._decoder
        completed = decoder.completed
        self._dispatchFrames()
        if self.state is not State.CLOSED:
            self._noteProgress(decoder.completed != completed)

    def _dispatchFrames(self) -> None:
        decoder = self._decoder
        # As _readsFrames, inline: this loop runs for every frame.
        while (state := self.state) is State.READY or state is State.UNAUTHENTICATED:
            try:
                frame = decoder.take(self.streamedFrames if state is State.READY else _NO_TYPES)
            except FrameTooLarge as e:
                self.fail(
                    ProtocolError(
                        "frame-too-large",
                        f"frame length {e.length} is over the limit of {e.limit} bytes",
                    )
                )
                return
            except EmptyFrame:
                self.fail(ProtocolError("bad-frame", "frame length 0: a frame needs a type byte"))
                return
            if frame is None:
                return
            # A memoryview only for the streamedFrames, whose handlers take one.
            self.frameReceived(frame[0], cast(bytes, frame[1]))

    def frameReceived(self, kind: bytes, payload: bytes) -> None:
        """Route one frame by the state table; the single error boundary."""
        try:
            if self.state is State.READY:
                handler = self.frameHandlers.get(kind)
                if handler is None:
                    raise ProtocolError("bad-frame", f"unexpected frame type {kind!r}")
                result = handler(self, payload)
                if isinstance(result, Deferred):
                    result.addErrback(self._handlerFailed)
                return
            if kind not in TRANSITIONS[self.state]:
                raise ProtocolError("auth-required", "authenticate with an A frame first")
            self._advance(kind)
            self._authenticate(payload)
        except ProtocolError as e:
            self.fail(e)
        except Exception:
            self._handlerFailed(Failure())

    def _handlerFailed(self, failure: Failure) -> None:
        if isinstance(failure.value, ProtocolError):
            self.fail(failure.value)
            return
        self.log.failure(
            "{service}: internal error serving {peer}",
            failure,
            service=self.serviceName,
            peer=self.peer,
        )
        self.fail(ProtocolError("internal", "internal server error"))

    # -- authentication ------------------------------------------------------

    def _authenticate(self, payload: bytes) -> None:
        request = decodeJSON(payload)
        credentials: ICredentials
        if "token" in request:
            token = request["token"]
            if not isinstance(token, str):
                raise ProtocolError("bad-frame", "token must be a string")
            credentials, method = TokenCredentials(token), "token"
        elif "user" in request:
            user, password = request.get("user"), request.get("password")
            if not isinstance(user, str) or not isinstance(password, str):
                raise ProtocolError("bad-frame", "user and password must be strings")
            credentials = UsernamePassword(user.encode(), password.encode())
            method = "password"
        else:
            raise ProtocolError("bad-frame", "A needs a token, or a user and a password")
        offered = self.factory.context.authMethods
        if method not in offered:
            self._authFailed(f"{method} is not offered (offered: {', '.join(offered)})")
            return
        if method == "password":
            method = f"password for {request['user']!r}"
        d = self.factory.context.login(credentials)
        d.addCallbacks(self._loggedIn, self._loginFailed, errbackArgs=(method,))
        d.addErrback(self._handlerFailed)
        if self.state is State.AUTHENTICATING and self.transport is not None:
            # Checked off the reactor thread (a password): stop reading until the
            # answer, so what the peer sends meanwhile waits in the kernel, not here.
            self.transport.pauseProducing()  # type: ignore[attr-defined]
            self._pausedForLogin = True

    def _loggedIn(self, avatar: IUser) -> None:
        if self.state is State.CLOSED:
            return
        self.avatar = avatar
        self._advance(Event.ACCEPTED)
        self._stopCountingUnauthenticated()
        if self._pausedForLogin:
            self._pausedForLogin = False
            self.transport.resumeProducing()  # type: ignore[union-attr]
        if self._graceTimer is not None and self._graceTimer.active():
            self._graceTimer.cancel()
        self._graceTimer = None
        self._decoder.maxFrame = self.factory.maxFrame
        self.log.info(
            "{service}: {peer} authenticated as {user}",
            service=self.serviceName,
            peer=self.peer,
            user=avatar.name,
        )
        self.sendJSON(b"K", {"user": avatar.name})
        self.authenticated()
        self._dispatchBuffered()

    def _loginFailed(self, failure: Failure, method: str) -> None:
        failure.trap(UnauthorizedLogin)
        self._authFailed(f"{method}: {failure.getErrorMessage() or 'bad credentials'}")

    def _authFailed(self, why: str) -> None:
        if self.state is State.CLOSED:
            return
        # Stop reading and answer only after a delay that slows guessing.
        self._advance(Event.REJECTED)
        self.factory.logSummary.emit(
            (self.source, f"{self.serviceName}: authentication failed"),
            LogLevel.warn,
            "{service}: authentication failed from {peer}: {why}",
            service=self.serviceName,
            peer=self.peer,
            why=why,
        )
        self._failTimer = self.factory.context.reactor.callLater(
            self.factory.authFailureDelay,
            self.fail,
            ProtocolError("auth-failed", "authentication failed"),
        )

    def authenticated(self) -> None:
        """Called once the peer is authenticated (``self.avatar`` is set)."""

    # -- sending ---------------------------------------------------------------

    #: Where every frame of this connection goes, from ``connectionMade`` on: sent at
    #: once when nothing is queued, in order, a large payload not copied; a service's
    #: output producer (exec's command) is registered with it (:mod:`netproto.directsend`).
    sender: Writer | None = None

    def sendFrame(self, kind: bytes, payload: bytes = b"") -> None:
        """Write one frame through :attr:`sender`."""
        if self.sender is not None:
            self.sender.writeSequence((HEADER.pack(len(payload) + 1) + kind, payload))

    def sendJSON(self, kind: bytes, obj: Mapping[str, Any]) -> None:
        self.sendFrame(kind, encodeJSON(obj))

    def sendError(self, code: ErrorCode, message: str) -> None:
        self.sendJSON(b"E", {"code": code, "message": message})

    def fail(self, error: ProtocolError) -> None:
        """Tell the peer about ``error``; close the connection if it is fatal."""
        if self.state is State.CLOSED:
            return
        self.factory.logSummary.emit(
            (self.source, f"{self.serviceName}: refused ({error.code})"),
            LogLevel.info,
            "{service}: refused {peer}: {code}: {message}",
            service=self.serviceName,
            peer=self.peer,
            code=error.code,
            message=error.message,
        )
        self.sendError(error.code, error.message)
        if error.fatal:
            self._advance(Event.CLOSE)
            if self.transport is not None:
                # Armed first: a transport that reports the loss at once
                # (connectionLost inside loseConnection) cancels it.
                if self._watchdog is not None and self._watchdog.active():
                    self._watchdog.cancel()
                self._watchdog = self.factory.context.reactor.callLater(
                    CLOSE_GRACE, self._drainExpired
                )
                self.transport.loseConnection()

    def _drainExpired(self) -> None:
        """The peer did not take what was left for it within :data:`CLOSE_GRACE`."""
        self._watchdog = None
        if self.transport is not None:
            getattr(self.transport, "abortConnection", self.transport.loseConnection)()


class FramedFactory(ServerFactory):
    """Builds one framed protocol per connection and holds what they share.

    :ivar context: the server-wide context (reactor, portal, options, paths).
    :ivar maxFrame: the post-authentication frame limit announced in the hello.
    :ivar graceTimeout: seconds an unauthenticated connection may stay.
    :ivar authFailureDelay: seconds between a failed ``A`` and its answer.
    :ivar frameTimeout: seconds a frame may take to arrive whole from its
        first byte (``--frame-timeout``; 0: no limit).
    :ivar idleTimeout: seconds an authenticated connection may stay idle
        (``--idle-timeout``; 0: no limit).
    :ivar features: what the hello offers of PROTOCOL.md sections 5 and 6;
        a service sets it to what it implements and its options allow.
    :ivar maxUnauthenticatedPerHost: connections from one IP address that may
        be unauthenticated at once (``--max-unauthenticated-per-host``,
        :data:`DEFAULT_MAX_UNAUTHENTICATED_PER_HOST`; 0: no cap).
    :ivar unauthenticated: how many connections of each IP address are not
        authenticated yet (addresses with none are not kept).
    """

    protocol = FramedProtocol  # type: ignore[assignment]
    graceTimeout: float = 30.0
    authFailureDelay: float = 1.0
    frameTimeout: float = DEFAULT_FRAME_TIMEOUT
    idleTimeout: float = DEFAULT_IDLE_TIMEOUT
    features: tuple[str, ...] = ()
    maxUnauthenticatedPerHost: int = DEFAULT_MAX_UNAUTHENTICATED_PER_HOST

    def __init__(self, context: ServerContext, maxFrame: int = DEFAULT_MAX_FRAME) -> None:
        self.context = context
        self.maxFrame = maxFrame
        options = context.options
        self.frameTimeout = float(options.get("frame-timeout", self.frameTimeout))
        self.idleTimeout = float(options.get("idle-timeout", self.idleTimeout))
        self.maxUnauthenticatedPerHost = int(
            options.get("max-unauthenticated-per-host", self.maxUnauthenticatedPerHost)
        )
        self.unauthenticated = CountPerAddress()
        #: Connection events per source and interval (finding 11 of the hardening
        #: issue): one host's flood of connections or guesses costs a few lines.
        self.logSummary = RepeatSummary(self.protocol.log, clock=context.reactor)

    def admitUnauthenticated(self, host: str | None) -> bool:
        """Count a new connection from ``host`` as unauthenticated, unless its
        host is at the cap (then False: the connection is refused). A peer
        without an IP address (``None``) is always admitted, not counted."""
        return self.unauthenticated.admit(host, self.maxUnauthenticatedPerHost)

    def leftUnauthenticated(self, host: str) -> None:
        """A connection counted by :meth:`admitUnauthenticated` logged in or went away."""
        self.unauthenticated.release(host)

    def stopFactory(self) -> None:
        self.logSummary.flush()
