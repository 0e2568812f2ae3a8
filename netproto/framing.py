"""Length-prefixed frames (PROTOCOL.md section 2) and the framed base protocol.

Two layers live here, the way h11 splits parsing from I/O:

* :class:`FrameDecoder` is sans-IO: feed it bytes, pull ``(type, payload)``
  frames out. It keeps one linear receive buffer (a ``bytearray`` and a read
  offset), so a 256 KiB frame that arrives in 64 KiB reads is copied into the
  buffer once and sliced out once, instead of Twisted's
  ``IntNStringReceiver`` re-concatenating everything it holds on every read
  (quadratic in the number of reads per frame). The length limit is checked as
  soon as the four length bytes are in, before anything else is buffered.
* :class:`FramedProtocol` is the Twisted side shared by exec and upload: the
  ``H`` hello, the authentication state machine (one table,
  :data:`TRANSITIONS`), the unauthenticated grace timer, ``E`` errors, and
  dispatch of authenticated frames to a service's handler table. It is an
  :class:`~twisted.protocols.basic.Int32StringReceiver`, so
  ``sendString``/``stringReceived`` keep their meaning, with a faster
  ``dataReceived``.
"""

from __future__ import annotations

import enum
import itertools
import json
import re
import struct
from collections.abc import Callable, Container, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Final, cast

from twisted.cred.credentials import ICredentials, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, ITCPTransport
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger, LogLevel
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure

from netproto import __version__
from netproto.addresses import describePeer
from netproto.auth import IUser, TokenCredentials
from netproto.directsend import sendNow
from netproto.errors import ErrorCode, ProtocolError
from netproto.logsummary import RepeatSummary, sourceOf

if TYPE_CHECKING:
    from netproto.services import ServerContext

HEADER: Final = struct.Struct(">I")

#: Largest frame (type byte included) a peer may send before it has
#: authenticated: enough for an ``A`` frame, small enough that an anonymous
#: peer cannot make the server buffer much.
PRE_AUTH_MAX_FRAME: Final = 4 * 1024
#: Default largest frame after authentication: a 256 KiB data payload plus its
#: type byte. Announced in the hello as ``max_frame``.
DEFAULT_MAX_FRAME: Final = 256 * 1024 + 1

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
#: Seconds a connection closed for a fatal error may take to drain what is
#: queued for it (the ``E`` frame at least) before it is aborted: a peer that
#: stopped reading must not keep its connection and buffers by not reading.
CLOSE_GRACE: Final = 10.0
#: Deadlines this close to now count as passed, so that float rounding of a
#: re-armed delayed call cannot make it fire again and again at the same time.
_SLACK: Final = 1e-6

#: Deepest nesting of arrays and objects in a control payload. netproto's own
#: payloads nest two levels (``{"env": {...}}``); 32 leaves plugins room and
#: stays far below Python's recursion limit, so neither the decoder nor code
#: walking a request can exhaust the stack (a 4 KiB ``A`` frame of ``[`` was a
#: ``RecursionError``, an ``E internal`` and a traceback in the log).
MAX_JSON_DEPTH: Final = 32
#: Largest magnitude of a number in a control payload: what a signed 64-bit
#: integer holds in any client's language. Every quantity of the protocol
#: (sizes, offsets, seconds) is far below it; beyond it numbers overflow
#: ``float()``, ``time_t`` and file offsets (a 400-digit ``timeout`` was an
#: ``OverflowError`` in exec).
MAX_JSON_NUMBER: Final = 2**63 - 1
#: Characters of the longest integer within :data:`MAX_JSON_NUMBER`, sign
#: included: longer ones are refused before Python converts them (which costs
#: time quadratic in their length).
_MAX_INT_CHARS: Final = len(str(-MAX_JSON_NUMBER))

_TYPE_BYTES: Final = [bytes((i,)) for i in range(256)]
_NO_TYPES: Final[frozenset[bytes]] = frozenset()


class FrameTooLarge(Exception):
    """The peer announced a frame longer than the current limit."""

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"frame of {length} bytes is over the limit of {limit}")
        self.length = length
        self.limit = limit


class EmptyFrame(Exception):
    """The peer announced a frame of length 0: there is not even a type byte."""


def encodeFrame(kind: bytes, payload: bytes = b"") -> bytes:
    """One frame: the big-endian length of type byte plus payload, then both."""
    return HEADER.pack(len(payload) + 1) + kind + payload


# One encoder for every control payload: json.dumps with non-default
# arguments builds a new encoder on each call.
_JSON_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def encodeJSON(obj: Mapping[str, Any]) -> bytes:
    """The compact UTF-8 JSON used for every control payload."""
    return _JSON_ENCODER.encode(obj).encode("utf-8")


def _parseInt(text: str) -> int:
    if len(text) > _MAX_INT_CHARS or abs(value := int(text)) > MAX_JSON_NUMBER:
        raise ProtocolError("bad-frame", f"an integer of {len(text)} characters is out of range")
    return value


def _parseFloat(text: str) -> float:
    value = float(text)
    if not abs(value) <= MAX_JSON_NUMBER:  # also false for NaN
        raise ProtocolError("bad-frame", f"the number {text[:40]} is out of range")
    return value


def _parseConstant(name: str) -> float:
    raise ProtocolError("bad-frame", f"{name} is not a number JSON allows")


# One decoder for every control payload: numbers checked as they are parsed.
_JSON_DECODER: Final = json.JSONDecoder(
    parse_int=_parseInt, parse_float=_parseFloat, parse_constant=_parseConstant
)

#: A JSON string (or, unterminated, the rest of the payload). It matches at
#: every ``"`` without backtracking, so stripping strings is linear however the
#: payload is crafted.
_STRING: Final = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKETS: Final = bytes(b for b in range(256) if b not in b"[]{}")
#: Opening brackets to the signed byte +1, closing ones to -1.
_NESTING: Final = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
#: ``\uD800`` to ``\uDFFF`` escapes: the only way a payload can carry a lone surrogate.
_SURROGATE_ESCAPE: Final = re.compile(rb"\\u[dD][89a-fA-F]")


def nestedDeeperThan(payload: bytes, limit: int) -> bool:
    """Whether the arrays and objects of a JSON ``payload`` nest deeper than
    ``limit``, found without parsing it: the brackets outside strings are
    counted, at C speed (two counts when there are few brackets at all).

    Never an underestimate of how deep a JSON parser would go, valid payload
    or not: up to where a parser stops, its strings are the ones stripped here.
    """
    if payload.count(b"[") + payload.count(b"{") <= limit:
        return False
    steps = _STRING.sub(b"", payload).translate(_NESTING, _NOT_BRACKETS)
    with memoryview(steps) as view:
        return max(itertools.accumulate(view.cast("b")), default=0) > limit


def decodeJSON(payload: bytes) -> dict[str, Any]:
    """Parse a control payload a peer sent: a JSON object in UTF-8.

    What comes back is sane to use: nested at most :data:`MAX_JSON_DEPTH`
    deep, every number finite and within :data:`MAX_JSON_NUMBER`, every
    string encodable (no lone surrogates). Anything else, and any way the
    payload fails to parse, is :class:`ProtocolError` ``bad-frame`` (one
    log line and a close, never a traceback).
    """
    if nestedDeeperThan(payload, MAX_JSON_DEPTH):
        raise ProtocolError("bad-frame", f"payload nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        obj = _JSON_DECODER.decode(payload.decode("utf-8"))
    except ProtocolError:
        raise
    except Exception as e:  # every way a peer's bytes can fail to parse is its mistake
        raise ProtocolError("bad-frame", f"payload is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad-frame", "payload must be a JSON object")
    if _SURROGATE_ESCAPE.search(payload):
        try:
            encodeJSON(obj)
        except UnicodeEncodeError:
            raise ProtocolError(
                "bad-frame", "payload has a lone surrogate (\\uD800-\\uDFFF)"
            ) from None
    return obj


class FrameDecoder:
    """Turn a byte stream into frames, without I/O.

    >>> d = FrameDecoder(maxFrame=100)
    >>> d.feed(b"\\x00\\x00\\x00\\x03Khi\\x00\\x00")
    >>> d.next()
    (b'K', b'hi')
    >>> d.next() is None
    True

    Reads are parsed in place where possible; a frame that spans many reads
    is accumulated in a ``bytearray`` that grows by appending. Either way each
    byte is copied a bounded number of times (into the buffer at most twice,
    out as payload once), however many reads a frame spans, where Twisted's
    ``IntNStringReceiver`` re-copies its whole buffer on every read.

    :meth:`take` can instead pass bulk frames (an upload's data) through in
    pieces as they arrive, as views of the received reads: no copy at all.

    :ivar maxFrame: the largest frame length (type byte included) accepted;
        it may be changed between frames, e.g. once the peer authenticates.
    :ivar completed: how many frames have come out whole (a streamed frame
        counts once its last piece has), so a caller can tell whether a frame
        ended without looking at each one.
    """

    __slots__ = ("_buf", "_pos", "_streamKind", "_streamLeft", "completed", "maxFrame")

    def __init__(self, maxFrame: int) -> None:
        self.maxFrame = maxFrame
        self.completed = 0
        self._buf: bytes | bytearray = b""
        self._pos = 0
        #: payload bytes still to come of the frame :meth:`take` is streaming
        self._streamLeft = 0
        self._streamKind = b""

    def __len__(self) -> int:
        """Bytes received and not yet returned as frames."""
        return len(self._buf) - self._pos

    @property
    def inFrame(self) -> bool:
        """Whether bytes of a frame have arrived and the frame has not come out
        whole yet (or frames are held: a caller that stopped taking them)."""
        return self._streamLeft > 0 or len(self._buf) > self._pos

    def feed(self, data: bytes) -> None:
        """Add received bytes."""
        buf, pos = self._buf, self._pos
        rest = len(buf) - pos
        if rest == 0:
            self._buf, self._pos = data, 0
        elif rest <= len(data):
            # A short tail of the last read: joining it to this read costs at
            # most twice this read, and the result is parsed in place.
            with memoryview(buf) as view:
                self._buf, self._pos = bytes(view[pos:]) + data, 0
        elif isinstance(buf, bytes):
            # A frame that spans reads: accumulate it by appending.
            with memoryview(buf) as view:
                self._buf = bytearray(view[pos:])
            self._buf += data
            self._pos = 0
        else:
            if pos * 2 >= len(buf):
                del buf[:pos]
                self._pos = 0
            buf += data

    def next(self) -> tuple[bytes, bytes] | None:
        """The next complete frame as ``(type byte, payload)``, or ``None``.

        :raises FrameTooLarge: when the next length is over :attr:`maxFrame`;
            it is raised as soon as the four length bytes are in.
        :raises EmptyFrame: when the next length is 0.
        """
        if self._streamLeft:
            raise RuntimeError("next() in the middle of a frame that take() streams")
        buf, pos = self._buf, self._pos
        avail = len(buf) - pos
        if avail < 4:
            return None
        (length,) = HEADER.unpack_from(buf, pos)
        if length > self.maxFrame:
            raise FrameTooLarge(length, self.maxFrame)
        if length == 0:
            raise EmptyFrame()
        if avail < 4 + length:
            return None
        kind = _TYPE_BYTES[buf[pos + 4]]
        end = pos + 4 + length
        if isinstance(buf, bytes):
            payload = buf[pos + 5 : end]
        else:
            with memoryview(buf) as view:
                payload = bytes(view[pos + 5 : end])
        if end == len(buf):
            self._buf, self._pos = b"", 0
        else:
            self._pos = end
        self.completed += 1
        return kind, payload

    def take(self, streamed: Container[bytes]) -> tuple[bytes, bytes | memoryview] | None:
        """Like :meth:`next`, but a frame whose type is in ``streamed`` comes
        out in pieces, as soon as its header and some of its payload are in.

        A streamed frame gives one ``(type, piece)`` per call for each run of
        its payload received so far, in order (an empty frame gives one empty
        piece), so its bytes are never buffered here. A piece is a read-only
        ``memoryview`` of the bytes object the transport read, so holding it
        keeps that read alive; the caller accounts for what it holds. (Only a
        piece of a frame that was being accumulated from short reads is a
        copy.) The length limit is checked as for :meth:`next`.
        """
        left = self._streamLeft
        buf, pos = self._buf, self._pos
        avail = len(buf) - pos
        if left:
            if avail == 0:
                return None
            n = min(avail, left)
            self._streamLeft = left - n
            if n == left:
                self.completed += 1
            return self._streamKind, self._piece(buf, pos, pos + n)
        if avail < 5 or _TYPE_BYTES[buf[pos + 4]] not in streamed:
            return self.next()
        (length,) = HEADER.unpack_from(buf, pos)
        if length > self.maxFrame:
            raise FrameTooLarge(length, self.maxFrame)
        if length == 0:
            raise EmptyFrame()
        kind = _TYPE_BYTES[buf[pos + 4]]
        n = min(avail - 5, length - 1)
        if n == 0 and length > 1:
            # The header alone: the payload comes with the next reads.
            self._streamLeft, self._streamKind = length - 1, kind
            self._advance(buf, pos + 5)
            return None
        self._streamLeft, self._streamKind = length - 1 - n, kind
        if n == length - 1:
            self.completed += 1
        return kind, self._piece(buf, pos + 5, pos + 5 + n)

    def _piece(self, buf: bytes | bytearray, start: int, end: int) -> bytes | memoryview:
        """``buf[start:end]``, then consume up to ``end``. A view of a read
        (immutable); a copy from the accumulation buffer, which changes."""
        if start == end:
            piece: bytes | memoryview = b""
        elif isinstance(buf, bytes):
            piece = memoryview(buf)[start:end]
        else:
            with memoryview(buf) as view:
                piece = bytes(view[start:end])
        self._advance(buf, end)
        return piece

    def _advance(self, buf: bytes | bytearray, end: int) -> None:
        if end == len(buf):
            self._buf, self._pos = b"", 0
        else:
            self._pos = end


def growReadSize(transport: object, lastRead: int) -> None:
    """Let a TCP transport read more per call once a read came back full.

    Only Twisted's own socket transports have ``bufferSize``; others (TLS,
    in-memory test transports) are left alone.
    """
    size = getattr(transport, "bufferSize", None)
    if isinstance(size, int) and lastRead >= size and size < MAX_READ_SIZE:
        transport.bufferSize = min(size * 4, MAX_READ_SIZE)  # type: ignore[attr-defined]


class State(enum.Enum):
    """Where a framed connection is in its life."""

    UNAUTHENTICATED = "unauthenticated"
    AUTHENTICATING = "authenticating"
    READY = "ready"
    CLOSED = "closed"


#: Every transition of the connection state machine in one place. A frame
#: type not listed for the current state is answered as the value says:
#: ``auth-required`` before authentication, ``bad-frame`` after it. The
#: service's own frames are valid in READY and are listed by each protocol's
#: :attr:`FramedProtocol.frameHandlers`.
TRANSITIONS: Final[Mapping[State, Mapping[bytes, State]]] = {
    State.UNAUTHENTICATED: {b"A": State.AUTHENTICATING},
    # While the credentials are checked nothing is read: frames stay buffered.
    State.AUTHENTICATING: {},
    # A second A is not valid: one connection, one identity.
    State.READY: {},
    State.CLOSED: {},
}

FrameHandler = Callable[[Any, bytes], object]


class FramedProtocol(Int32StringReceiver):
    """The server side of a framed service.

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
        #: Who this is in summarised log lines (:func:`netproto.logsummary.sourceOf`).
        self.source = "?"
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
        self.sendJSON(
            b"H",
            {
                "service": self.serviceName,
                "protocol": 1,
                "server": f"netproto/{__version__}",
                "auth": list(ctx.authMethods),
                "max_frame": self.factory.maxFrame,
            },
        )
        self._graceTimer = ctx.reactor.callLater(self.factory.graceTimeout, self._graceExpired)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self.state = State.CLOSED
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

    def _graceExpired(self) -> None:
        self._graceTimer = None
        if self.state in (State.UNAUTHENTICATED, State.AUTHENTICATING):
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
            if self.state is State.AUTHENTICATING or self.readingPaused():
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
        if self.state is State.CLOSED:
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
        while self.state is not State.CLOSED and self.state is not State.AUTHENTICATING:
            try:
                frame = decoder.take(
                    self.streamedFrames if self.state is State.READY else _NO_TYPES
                )
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

    def stringReceived(self, string: bytes) -> None:
        """A whole frame, type byte first (``Int32StringReceiver``'s interface)."""
        if not string:
            self.fail(ProtocolError("bad-frame", "frame length 0: a frame needs a type byte"))
            return
        self.frameReceived(string[:1], string[1:])

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
            nextState = TRANSITIONS[self.state].get(kind)
            if nextState is None:
                raise ProtocolError("auth-required", "authenticate with an A frame first")
            self.state = nextState
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

    def _loggedIn(self, avatar: IUser) -> None:
        if self.state is State.CLOSED:
            return
        self.avatar = avatar
        self.state = State.READY
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
        self.state = State.AUTHENTICATING
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

    def sendFrame(self, kind: bytes, payload: bytes = b"") -> None:
        """Write one frame; small ones are sent at once (:mod:`netproto.directsend`),
        large payloads are not copied into a new string."""
        if self.transport is None:
            return
        if len(payload) < 4096:
            # Replies a peer waits for leave now, not on the next reactor turn.
            sendNow(self.transport, HEADER.pack(len(payload) + 1) + kind + payload)
        else:
            self.transport.writeSequence([HEADER.pack(len(payload) + 1) + kind, payload])

    def sendJSON(self, kind: bytes, obj: Mapping[str, Any]) -> None:
        self.sendFrame(kind, encodeJSON(obj))

    def sendString(self, string: bytes) -> None:
        """``Int32StringReceiver``'s send: ``string`` is a type byte and payload."""
        self.sendFrame(string[:1], string[1:])

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
            self.state = State.CLOSED
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

    def lengthLimitExceeded(self, length: int) -> None:
        self.fail(ProtocolError("frame-too-large", f"frame length {length} is over the limit"))


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
    """

    protocol = FramedProtocol  # type: ignore[assignment]
    graceTimeout: float = 30.0
    authFailureDelay: float = 1.0
    frameTimeout: float = DEFAULT_FRAME_TIMEOUT
    idleTimeout: float = DEFAULT_IDLE_TIMEOUT

    def __init__(self, context: ServerContext, maxFrame: int = DEFAULT_MAX_FRAME) -> None:
        self.context = context
        self.maxFrame = maxFrame
        options = context.options
        self.frameTimeout = float(options.get("frame-timeout", self.frameTimeout))
        self.idleTimeout = float(options.get("idle-timeout", self.idleTimeout))
        #: Connection events per source and interval (finding 11 of the hardening
        #: issue): one host's flood of connections or guesses costs a few lines.
        self.logSummary = RepeatSummary(self.protocol.log, clock=context.reactor)

    def stopFactory(self) -> None:
        self.logSummary.flush()
