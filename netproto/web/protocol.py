"""One browser member: a WebSocket (autobahn) carrying a chat member (PROTOCOL.md section 7).

A browser member *is* a telnet member: the chat factory's
:meth:`~netproto.chat.server.ChatFactory.buildProtocol` makes its
:class:`~netproto.chat.protocol.ChatProtocol` (or the ``! server full`` refusal),
counted against the same caps, and that protocol runs over a
:class:`MessageTransport` instead of a socket. So rooms, nicks, history, flood
control, the idle sweep, the quit notices and the logs are the chat's own code,
and a clustered chat carries browser members as it carries telnet ones. Only the
wire differs:

- each text message in is one line (:meth:`ChatProtocol.lineReceived`, which
  answers an over-long one with ``! line too long``); a binary message gets
  ``! binary messages are not read: send text, one line per message``; after
  :data:`MAX_STRIKES` such messages in a row the WebSocket is closed (1008);
  a message past ``--chat-max-line`` + :data:`OVERLONG_SLACK` is not even
  buffered: autobahn closes with 1009;
- each line out is one text message: a delivery (one or more CRLF lines, the
  same ``bytes`` object for every member due them) becomes its frames once per
  delivery (:class:`FrameCache`, with autobahn's prepared messages) and every
  browser member due it is sent the same frames;
- everything this connection sends, autobahn's handshake and control frames
  included, leaves through one :class:`~netproto.directsend.Writer` with the
  ``--chat-max-queue`` bound, as a telnet member's lines do. Once the member is
  welcomed its ``sender`` (where :meth:`ChatProtocol.deliver` writes) is a
  :class:`FrameSender` on that writer: a delivery costs a lookup in the frame
  cache and one ``send``, and a browser that stops reading is cut off (``too
  slow reading``) exactly as a telnet member is, by what is still unsent.

The handshake is refused with HTTP 403 unless the ``Origin`` is the page's own
(the scheme of this connection and its ``Host``) or listed in ``--web-origins``.
A request without ``Origin`` is not from a browser page (browsers always send
one on a WebSocket), so it is not a cross-site request and is let in.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Final

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import TrafficStats
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IAddress, ISSLTransport
from twisted.internet.protocol import Protocol
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from netproto.addresses import describeAddress
from netproto.chat.protocol import ChatProtocol
from netproto.chat.state import CRLF, errorLine
from netproto.directsend import Writer, directSocket
from netproto.logsummary import RepeatSummary, sourceOf
from netproto.web.plugin import ANY_ORIGIN, normalizeOrigin

if TYPE_CHECKING:
    from netproto.chat.server import ChatFactory

#: How much longer than ``--chat-max-line`` a text message may be and still be read
#: whole, to be answered with ``! line too long`` (a paste a little over the limit).
#: Past it autobahn stops reading the message and closes with 1009: no message
#: larger than this is ever buffered.
OVERLONG_SLACK: Final = 16 * 1024

#: Binary or over-long messages in a row before the WebSocket is closed (1008):
#: a page that keeps sending what it was told is refused is broken or hostile,
#: and each costs an error line.
MAX_STRIKES: Final = 10

#: Seconds from the TCP connection to the end of the WebSocket handshake; a peer
#: that has not finished it by then is dropped (it holds a socket and a buffer).
OPEN_HANDSHAKE_TIMEOUT: Final = 10.0

#: Seconds the closing handshake may take before the connection is dropped.
CLOSE_HANDSHAKE_TIMEOUT: Final = 2.0

_DONE = Failure(ConnectionDone())

BINARY_REFUSED = errorLine("binary messages are not read: send text, one line per message")

# RFC 6455 close codes.
POLICY_VIOLATION: Final = 1008
NORMAL: Final = 1000

#: autobahn's state of an open WebSocket.
OPEN: Final = WebSocketServerProtocol.STATE_OPEN


class AutobahnLog:
    """What autobahn logs for one factory's connections: its debug and info lines
    dropped (several per connection), its warnings and errors (a peer's protocol
    violation, a failed TLS handshake: the peer's doing, not the server's) logged
    at info level, summarised (:class:`~netproto.logsummary.RepeatSummary`) so that
    a peer repeating them cannot flood the log."""

    __slots__ = ("_summary",)

    def __init__(self, summary: RepeatSummary) -> None:
        self._summary = summary

    def _drop(self, *args: Any, **kwargs: Any) -> None:
        pass

    debug = info = trace = _drop

    def warn(self, format: str, **kwargs: Any) -> None:
        kwargs.pop("log_failure", None)
        self._summary.emit(("web", format), LogLevel.info, "web: " + format, **kwargs)

    error = critical = failure = warn


#: Bytes of lines (with their frames) the frame cache keeps by content; past it
#: the table starts again empty. A flush of a busy room is a few hundred lines;
#: 1 MiB holds many flushes' worth and bounds what the cache can ever hold.
FRAME_TABLE_BYTES: Final = 1 << 20


class FrameCache:
    """A delivery's lines as text frames, encoded once for every member due them.

    The chat hands the same ``bytes`` object to every member due the same lines
    (:meth:`~netproto.chat.state.ChatRoom.flush`), so the frames of the last
    delivery are kept with it: the next member given that very object gets the
    same frames, one encoding per flush whatever the room's size. Senders and
    newcomers are given their own join of the same lines (without their own, or
    without what preceded their join): those are framed from a table of each
    line's frame, one dictionary lookup a line. The frames are autobahn's
    prepared messages (server frames are not masked, so one encoding fits every
    connection); joined, they go out with one write per member.
    """

    __slots__ = ("_factory", "_frames", "_lines", "_table", "_tableBytes")

    def __init__(self, factory: WebSocketServerFactory) -> None:
        self._factory = factory
        self._lines = b""
        self._frames = b""
        self._table: dict[bytes, bytes] = {}
        self._tableBytes = 0

    def frames(self, lines: bytes) -> bytes:
        """``lines`` (CRLF-ended) as one text frame each, without the CRLF."""
        if lines is self._lines:
            return self._frames
        parts = lines.split(CRLF)
        if not parts[-1]:
            parts.pop()
        table = self._table
        try:
            frames = b"".join([table[part] for part in parts])
        except KeyError:
            frames = b"".join([self._frame(part) for part in parts])
        self._lines, self._frames = lines, frames
        return frames

    @property
    def held(self) -> int:
        """Bytes of lines and frames the table holds (about; see FRAME_TABLE_BYTES)."""
        return self._tableBytes

    def _frame(self, line: bytes) -> bytes:
        """``line``'s frame, from the table or prepared (and kept) now."""
        frame = self._table.get(line)
        if frame is None:
            frame = self._factory.prepareMessage(line).payloadHybi
            if self._tableBytes > FRAME_TABLE_BYTES:
                self._table.clear()
                self._tableBytes = 0
            self._table[line] = frame
            self._tableBytes += 2 * len(frame)
        return frame


class FrameSender:
    """A browser member's ``sender`` (:attr:`ChatProtocol.sender`): the chat's
    deliveries as text frames, on the connection's writer. What
    :class:`~netproto.directsend.Writer` is to a telnet member, one frame cache
    lookup away."""

    __slots__ = ("cache", "socket", "writer")

    def __init__(self, socket: WebChatProtocol, writer: Writer) -> None:
        self.socket = socket
        self.writer = writer
        self.cache = socket.factory.cache

    def write(self, lines: bytes) -> bool:
        """Send ``lines`` (CRLF-ended), one text message each; False when what is
        still unsent would pass ``--chat-max-queue``: the chat cuts the member off."""
        if self.socket.state != OPEN:
            return True  # closing: nothing more goes out after the close frame
        return self.writer.write(self.cache.frames(lines))

    def loseConnection(self) -> None:
        """Close the WebSocket (1000) once what is queued has been sent."""
        self.socket.sendClose(NORMAL)


class MessageTransport:
    """The chat member's transport: its lines become text messages of ``socket``.

    Just enough of ``ITransport`` for :class:`~netproto.chat.protocol.ChatProtocol`:
    its welcome (or the ``! server full`` refusal) is written here, its close and
    abort act on the WebSocket. The chat's writer registers itself as a producer
    and is never paused: once the member is welcomed, :class:`FrameSender` is its
    sender and the connection's own writer bounds what is queued.
    """

    __slots__ = ("connected", "disconnecting", "producer", "socket")

    def __init__(self, socket: WebChatProtocol) -> None:
        self.socket = socket
        self.connected = True
        self.disconnecting = False
        self.producer: Any = None

    def write(self, data: bytes) -> None:
        self.socket.sendLines(data)

    def writeSequence(self, data: list[bytes]) -> None:
        self.socket.sendLines(b"".join(data))

    def loseConnection(self) -> None:
        """Close the WebSocket (1000) once what is queued has been sent."""
        if not self.disconnecting:
            self.disconnecting = True
            self.socket.sendClose(NORMAL)

    def abortConnection(self) -> None:
        self.disconnecting = True
        transport = self.socket.transport
        if transport is not None:
            transport.abortConnection()

    def getPeer(self) -> IAddress:
        peer: IAddress = self.socket.transport.getPeer()
        return peer

    def getHost(self) -> IAddress:
        host: IAddress = self.socket.transport.getHost()
        return host

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None


#: What autobahn keeps per connection and never reads once the WebSocket is open
#: (the handshake's request and reply), or never with this service's options (the
#: UTF-8 validator: invalid bytes are replaced, not refused). Dropped at the open,
#: so that an idle browser member costs a few KiB (docs/web.md); the class holds a
#: None in their stead.
_OPENING_ONLY: Final = (
    "http_headers",
    "http_request_data",
    "http_response_data",
    "http_status_line",
    "http_request_uri",
    "http_request_path",
    "http_request_params",
    "http_request_host",
    "websocket_origin",
    "websocket_protocols",
    "websocket_extensions",
    "_wskey",
    "utf8validator",
)


class WebChatProtocol(WebSocketServerProtocol):
    """One browser member's WebSocket; see the module docstring.

    autobahn copies each of its options (``CONFIG_ATTRS``) into every connection
    unless the protocol class has it: :class:`WebChatFactory` makes a subclass per
    factory that has them, so they are held once.
    """

    factory: WebChatFactory
    #: A TCP, UNIX or TLS transport (``abortConnection``, producers).
    transport: Any
    writer: Writer | None = None
    member: Protocol | None = None
    strikes = 0

    # -- the connection ------------------------------------------------------------

    def connectionMade(self) -> None:
        transport = self.transport
        self.log = self.factory.autobahnLog
        self.writer = Writer(transport, directSocket(transport), self.factory.chat.config.maxQueue)
        super().connectionMade()

    def connectionLost(self, reason: Failure = _DONE) -> None:
        super().connectionLost(reason)
        self.writer = None
        member, self.member = self.member, None
        if member is not None:
            assert isinstance(member.transport, MessageTransport)
            member.transport.connected = False
            member.connectionLost(reason)

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        """Everything autobahn sends (handshake, control frames) goes through the writer."""
        writer = self.writer
        if writer is not None and not writer.write(data):
            self.transport.abortConnection()

    def _closeConnection(self, abort: bool = False) -> None:
        writer = self.writer
        if abort or writer is None:
            self.transport.abortConnection()
        else:
            writer.loseConnection()  # once what is queued has been sent

    # -- the handshake ---------------------------------------------------------------

    def onConnect(self, request: ConnectionRequest) -> None:
        origin = request.headers.get("origin")
        if origin is not None:
            scheme = "https" if ISSLTransport.providedBy(self.transport) else "http"
            host = request.headers.get("host", "")
            if not self.factory.allows(origin, f"{scheme}://{host}"):
                peer = self.transport.getPeer()
                self.factory.chat.logSummary.emit(
                    (sourceOf(peer), "web: refused (origin)"),
                    LogLevel.warn,
                    "web: refused {peer}: origin {origin} is not allowed (--web-origins)",
                    peer=describeAddress(peer),
                    origin=origin[:200],
                )
                raise ConnectionDeny(403, "origin not allowed")

    def onOpen(self) -> None:
        """The browser is in: its chat member is made and connected (or refused)."""
        factory = self.factory
        state = self.__dict__
        # Counters and the queue of chopped writes are never used here (sendData is
        # this class's own): one of each for the factory instead of one per member.
        state.update(trafficStats=factory.trafficStats, send_queue=factory.sendQueue)
        self.__dict__ = {k: v for k, v in state.items() if k not in _OPENING_ONLY}
        member = factory.chat.buildProtocol(self.transport.getPeer())
        assert member is not None
        self.member = member
        member.makeConnection(MessageTransport(self))
        if isinstance(member, ChatProtocol) and member.sender is not None:
            assert self.writer is not None
            member.sender = FrameSender(self, self.writer)

    # -- messages --------------------------------------------------------------------

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        member = self.member
        if not isinstance(member, ChatProtocol):
            return  # refused: "! server full" is on its way, then the close
        if isBinary or len(payload) > self.factory.chat.config.maxLine + 1:
            self.strikes += 1
            if self.strikes > MAX_STRIKES:
                # sendClose takes application codes only (1000, 3000-4999).
                self.sendCloseFrame(POLICY_VIOLATION, b"too many refused messages")
                return
            if isBinary:
                self.factory.chat.server.send(member, BINARY_REFUSED)
                return
        else:
            self.strikes = 0
        member.lineReceived(payload)

    def sendLines(self, data: bytes) -> None:
        """The chat member's output: CRLF lines, each sent as one text message."""
        writer = self.writer
        if (
            writer is not None
            and self.state == self.STATE_OPEN
            and not writer.write(self.factory.cache.frames(data))
        ):
            self.transport.abortConnection()


for _name in _OPENING_ONLY:
    setattr(WebChatProtocol, _name, None)


class WebChatFactory(WebSocketServerFactory):
    """The WebSocket side of the web service: its members join ``chat``.

    :param chat: the chat's factory (state, limits, caps), shared with the chat
        listener (:func:`netproto.chat.plugin.buildFactory`).
    :param origins: ``--web-origins``, normalised (:func:`~netproto.web.plugin.origins`).
    """

    protocol = WebChatProtocol  # type: ignore[assignment]

    def __init__(self, chat: ChatFactory, origins: tuple[str, ...], reactor: Any) -> None:
        super().__init__(reactor=reactor)
        self.chat = chat
        self.origins = frozenset(origins)
        self.cache = FrameCache(self)
        self.autobahnLog = AutobahnLog(chat.logSummary)
        self.trafficStats = TrafficStats()
        self.sendQueue: deque[Any] = deque()
        limit = chat.config.maxLine + 1 + OVERLONG_SLACK
        self.setProtocolOptions(
            maxFramePayloadSize=limit,
            maxMessagePayloadSize=limit,
            # Section 1: invalid UTF-8 is replaced (U+FFFD), never fatal.
            utf8validateIncoming=False,
            openHandshakeTimeout=OPEN_HANDSHAKE_TIMEOUT,
            closeHandshakeTimeout=CLOSE_HANDSHAKE_TIMEOUT,
            webStatus=False,  # a plain GET of /chat gets 426, not autobahn's page
            failByDrop=False,  # a peer past a limit is told why (close frame), then dropped
            allowNullOrigin=True,  # "null" is refused by onConnect, with the others (403)
        )

        options: dict[str, Any] = {
            attr: getattr(self, attr) for attr in WebChatProtocol.CONFIG_ATTRS
        }
        for attr, value in options.items():
            if callable(value):  # perMessageCompressionAccept: a function, not a method
                options[attr] = staticmethod(value)
        # Nothing left to copy per connection: autobahn's loop over its options, which
        # also formats them all for a debug line, has nothing to do (about 0.5 ms a
        # connection here).
        options["CONFIG_ATTRS"] = ()
        self.protocol = type("WebChatProtocol", (WebChatProtocol,), options)  # type: ignore[assignment]

    def allows(self, origin: str, own: str) -> bool:
        """Whether a page from ``origin`` may open the chat WebSocket."""
        origin = normalizeOrigin(origin)
        return (
            origin == normalizeOrigin(own) or origin in self.origins or ANY_ORIGIN in self.origins
        )
