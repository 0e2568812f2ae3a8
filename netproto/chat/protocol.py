"""The chat wire: a ``LineReceiver`` that turns bytes into lines for the chat state and
lines from it into bytes (PROTOCOL.md section 1).

What it adds to the plain line splitting, each because a real client needs it:

- LF or CRLF input (one CR before the LF is dropped); telnet IAC sequences removed
  by :class:`~netproto.chat.telnet.TelnetFilter`, created only once a 0xFF byte
  arrives; invalid UTF-8 replaced by U+FFFD.
- An over-long line gets ``! line too long``, the rest of it is skipped, and the
  connection stays up.
- Flood control as a token bucket in its "virtual scheduling" form: one float per
  client (the time its next line is due), checked against the clock on each line;
  no timer per client.
- Slow readers: each time a line is queued, what the member's writer still holds
  unsent is measured (:meth:`netproto.directsend.Writer.unsent`); a line that
  would take it past ``--chat-max-queue`` cuts the client off (``abortConnection``:
  its buffer is freed at once). What counts is what is still queued, so a reader
  that keeps up, however slowly, stays, and one that stops never holds more than
  the bound, the history replayed on joining included. Nobody else waits for it.
- Closing: ``/quit`` and the idle timeout free the member's connection slots at
  once and close the connection once its client has taken what is queued, or
  abort it after ``--chat-close-grace``: a client that stopped reading (or whose
  host vanished) cannot keep its socket and buffer.
- Output leaves at once: each member has a :class:`~netproto.directsend.Writer`,
  which sends a delivery with one ``send`` on its socket while Twisted holds nothing
  for it, instead of a write on the next reactor turn; TCP connections have Nagle's
  algorithm off.

Per-connection state is a handful of slots, allocated nothing until needed: an
idle member costs a few hundred bytes above Twisted's own transport.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, ITCPTransport
from twisted.logger import LogLevel
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from netproto.addresses import describePeer
from netproto.chat.commands import interpret
from netproto.chat.state import ChatRoom, IParticipant, errorLine
from netproto.chat.telnet import TelnetFilter
from netproto.directsend import Writer, directSocket
from netproto.logsummary import sourceOf

if TYPE_CHECKING:
    from netproto.chat.server import ChatFactory

SLOW_DOWN = errorLine("slow down")

_DONE = Failure(ConnectionDone())


class LineSender(Protocol):
    """Where a member's output goes: a telnet member's
    :class:`~netproto.directsend.Writer`, or a browser member's frame sender
    (:class:`netproto.web.protocol.FrameSender`)."""

    def write(self, data: bytes) -> bool:
        """Send ``data`` (whole CRLF-ended lines); False once what is still
        unsent passes the member's bound (the chat then cuts it off)."""

    def loseConnection(self) -> None:
        """Close once what is queued has been sent."""


@implementer(IParticipant)
class ChatProtocol(LineReceiver):
    """One chat connection: a participant of :class:`~netproto.chat.state.ChatServer`.

    :ivar nick: set by the chat state.
    :ivar room: set by the chat state; None once the participant has left.
    :ivar sender: where its output goes; None before the connection is made and
        once it is cut off or gone (everything is dropped then).
    """

    delimiter = b"\n"

    __slots__ = (
        "_abortCall",
        "_discarding",
        "_pending",
        "_reason",
        "_slot",
        "_tat",
        "_telnet",
        "_throttled",
        "address",
        "lastActive",
        "nick",
        "room",
        "sender",
        "source",
    )

    def __init__(self, chatFactory: ChatFactory, address: str | None) -> None:
        self.factory = chatFactory
        # One CR may precede the LF; it is not part of the line's length.
        self.MAX_LENGTH = chatFactory.config.maxLine + 1
        self.nick = ""
        self.room: ChatRoom | None = None
        #: The IP address counted against --chat-max-per-address (None: not counted).
        self.address = address
        #: Who this is in summarised log lines (:func:`netproto.logsummary.sourceOf`).
        self.source = "?"
        self._tat = 0.0  # when the next line is due under the flood limit
        self.lastActive = 0.0
        self.sender: LineSender | None = None
        self._telnet: TelnetFilter | None = None
        self._discarding = False  # skipping the rest of an over-long line
        self._pending: bytes | None = None  # input after an over-long line
        self._throttled = False  # "! slow down" already sent for this burst
        self._reason: str | None = None  # why we closed, for the quit notice
        self._slot = True  # holds its connection slots (see ChatFactory.release)
        self._abortCall: IDelayedCall | None = None  # the end of --chat-close-grace

    # -- connection ----------------------------------------------------------------

    def connectionMade(self) -> None:
        factory = self.factory
        assert self.transport is not None
        self.sender = Writer(self.transport, directSocket(self.transport), factory.config.maxQueue)
        if ITCPTransport.providedBy(self.transport):
            # Lines go out as written: a line must not wait, under Nagle's algorithm,
            # for the client's (possibly delayed) acknowledgement of the previous one.
            # Rooms already coalesce what a turn sends to one write per member.
            self.transport.setTcpNoDelay(True)
        if factory.config.idleTimeout:
            self.lastActive = factory.clock.seconds()
        factory.server.connect(self)
        self.source = sourceOf(self.transport.getPeer())
        factory.logSummary.emit(
            (self.source, "chat: connected"),
            LogLevel.info,
            "chat: {peer} connected as {nick}",
            peer=describePeer(self.transport),
            nick=self.nick,
        )

    def connectionLost(self, reason: Failure = _DONE) -> None:
        factory = self.factory
        if self._reason is not None:
            why = self._reason
        elif self.room is None:
            why = "quit"  # the chat state removed it already: /quit
        else:
            why = "connection closed" if reason.check(ConnectionDone) else "connection lost"
        factory.logSummary.emit(
            (self.source, "chat: disconnected"),
            LogLevel.info,
            "chat: {peer} ({nick}) disconnected: {why}",
            peer=describePeer(self.transport),
            nick=self.nick,
            why=why,
        )
        abortCall = self._abortCall
        if abortCall is not None and abortCall.active():
            abortCall.cancel()
        self.sender = None  # nothing more to send, nor to abort (see close)
        factory.server.disconnect(self, why)
        self._release()

    # -- input ---------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        telnet = self._telnet
        if telnet is not None or b"\xff" in data:
            if telnet is None:
                telnet = self._telnet = TelnetFilter()
            if not telnet.idle or b"\xff" in data:
                data, reply = telnet.feed(data)
                if reply:
                    self.deliver(reply)  # the one output path (see deliver)
        while data:
            if self._discarding:
                cut = data.find(b"\n")
                if cut < 0:
                    return
                data = data[cut + 1 :]
                self._discarding = False
            LineReceiver.dataReceived(self, data)
            data, self._pending = self._pending or b"", None

    def lineLengthExceeded(self, line: bytes) -> None:
        """LineReceiver hands over the over-long line and everything buffered after it."""
        self._tooLong()
        cut = line.find(b"\n")
        if cut < 0:
            self._discarding = True  # the rest of this line is still to come
        else:
            self._pending = line[cut + 1 :]

    def _tooLong(self) -> None:
        factory = self.factory
        factory.server.send(
            self, errorLine(f"line too long (limit {factory.config.maxLine} bytes)")
        )

    def lineReceived(self, line: bytes) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
        factory = self.factory
        if len(line) > factory.config.maxLine:
            self._tooLong()
            return
        if not line.strip() or self.room is None:
            return  # blank lines are ignored; nothing counts after leaving
        now = factory.clock.seconds()
        self.lastActive = now
        interval = factory.lineInterval
        if interval:
            due = self._tat
            due = max(due, now)
            if due - now > factory.burstTolerance:
                if not self._throttled:
                    self._throttled = True
                    factory.server.send(self, SLOW_DOWN)
                return
            self._tat = due + interval
            self._throttled = False
        factory.lines += 1
        factory.lineBytes += len(line)
        interpret(factory.server, self, line.decode("utf-8", "replace"))

    # -- output: IParticipant --------------------------------------------------------

    def deliver(self, line: bytes) -> None:
        """Send ``line`` through the member's writer: the one path by which this
        connection's output leaves. A line that would take what is still queued for
        the member past ``--chat-max-queue`` cuts the client off."""
        sender = self.sender
        if sender is not None and not sender.write(line):
            self._cutOff()

    def close(self) -> None:
        """The member has left the chat: free its connection slots now, and close once
        its client has taken what is queued, or abort after ``--chat-close-grace``."""
        transport = self.transport
        assert transport is not None
        sender = self.sender
        if sender is None:
            transport.loseConnection()
        else:
            sender.loseConnection()
        self._release()
        if self._abortCall is None and sender is not None:
            factory = self.factory
            self._abortCall = factory.clock.callLater(
                factory.config.closeGrace,
                transport.abortConnection,  # type: ignore[attr-defined]
            )

    def _release(self) -> None:
        if self._slot:
            self._slot = False
            self.factory.release(self)

    def _cutOff(self) -> None:
        self.sender = None
        self._reason = "too slow reading"
        self.factory.logSummary.emit(
            (self.source, "chat: cut off (too slow reading)"),
            LogLevel.warn,
            "chat: {peer} ({nick}) cut off: more than {limit} bytes of output left unread",
            peer=describePeer(self.transport),
            nick=self.nick,
            limit=self.factory.config.maxQueue,
        )
        self.transport.abortConnection()  # type: ignore[union-attr]

    def timedOut(self) -> None:
        """The idle sweep is dismissing this member: its end is logged as an idle timeout."""
        self._reason = "idle timeout"
