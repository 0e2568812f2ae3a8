"""The exec connection: ``R``, ``0``, ``C``, ``S`` and ``W`` frames (PROTOCOL.md sections 3 and 5).

One command at a time per connection. Each frame type has one handler in
:attr:`ExecProtocol.frameHandlers`; a handler raises
:class:`~netproto.errors.ProtocolError` for the peer's mistakes and the
framed base turns it into the ``E`` frame (``busy``, ``not-found`` and
``not-allowed`` leave the connection open; ``bad-frame`` closes it).

Frames that arrive for a command that has just ended (``0``, ``C``, ``S``
sent before the client read ``X``) are dropped: that is a race, not a
mistake. A ``0`` for a command started without ``"stdin": true``, or after
``C``, is a mistake (``bad-frame``). An ``S`` is also dropped (and logged)
once the command's process group is gone, even before ``X`` (its output held
open by a process that left the group): the group's id may be another's then.

On a terminal (``R`` with ``"pty"``), ``0`` frames are keystrokes whatever
``"stdin"`` says, ``C`` writes the terminal's end-of-file character and
leaves it open (more ``0`` frames may follow, as keys after a Ctrl-D), ``S``
goes to the terminal's foreground process group, and ``W`` resizes it. A
``W`` for a command on pipes is a mistake (``bad-frame``); one for a command
that has just ended is dropped.
"""

from __future__ import annotations

import select
from typing import TYPE_CHECKING, Any, ClassVar, Final

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from netproto.codec import HEADER, decodeJSON
from netproto.errors import ProtocolError
from netproto.exec.audit import StartLog
from netproto.exec.pty import windowSize
from netproto.framing import FramedProtocol, FrameHandler, State

if TYPE_CHECKING:
    from netproto.exec.process import CommandProtocol
    from netproto.exec.server import ExecFactory

#: The signals a client may send with ``S``.
SIGNALS: frozenset[str] = frozenset({"INT", "TERM", "KILL", "HUP"})
#: While the client is not read (its command's stdin is full), how often its
#: socket is checked for the client having gone: a transport that is not
#: reading is not watched by the reactor at all.
HANGUP_CHECK: Final = 1.0
_POLLRDHUP: Final = getattr(select, "POLLRDHUP", 0)
#: The type byte of a ``0`` frame, as :meth:`ExecProtocol.dataReceived` sees it in a read.
_STDIN_TYPE: Final = ord("0")


def peerHungUp(transport: object) -> bool:
    """Whether the peer of ``transport``'s socket has closed or reset it
    (``POLLRDHUP``: seen even with unread data before it)."""
    getHandle = getattr(transport, "getHandle", None)
    if getHandle is None:
        return False
    try:
        fd = getHandle().fileno()
        poller = select.poll()
        poller.register(fd, _POLLRDHUP | select.POLLHUP | select.POLLERR)
        events = poller.poll(0)
    except (OSError, ValueError, AttributeError):
        return False
    return any(mask & (_POLLRDHUP | select.POLLHUP | select.POLLERR) for _, mask in events)


@implementer(IPushProducer)
class ClientReading:
    """Reading the client, as the producer of a command's stdin pipe.

    Paused while the pipe is full (the client is then not read, and TCP slows
    it down); while paused, the socket is checked every :data:`HANGUP_CHECK`
    seconds, and a client that has gone is disconnected, which ends its
    command. Without the check, a client vanishing while its command ignores
    stdin would never be noticed.
    """

    def __init__(self, proto: ExecProtocol, clock: Any) -> None:
        self.proto = proto
        self.clock = clock
        #: Whether the client is not read now (the stdin pipe is full).
        self.paused = False
        self._check: IDelayedCall | None = None

    def pauseProducing(self) -> None:
        self.paused = True
        transport = self.proto.transport
        if transport is not None:
            IPushProducer(transport).pauseProducing()
            if self._check is None:
                self._check = self.clock.callLater(HANGUP_CHECK, self._checkPeer)

    def resumeProducing(self) -> None:
        self.paused = False
        self._cancel()
        transport = self.proto.transport
        if transport is not None:
            IPushProducer(transport).resumeProducing()

    def stopProducing(self) -> None:
        self.paused = False
        self._cancel()

    def _cancel(self) -> None:
        if self._check is not None and self._check.active():
            self._check.cancel()
        self._check = None

    def _checkPeer(self) -> None:
        self._check = None
        transport = self.proto.transport
        if transport is None or self.proto.state is State.CLOSED:
            return
        if peerHungUp(transport):
            self.proto.log.info(
                "exec: {peer} went away while its command's stdin was full", peer=self.proto.peer
            )
            getattr(transport, "abortConnection", transport.loseConnection)()
            return
        self._check = self.clock.callLater(HANGUP_CHECK, self._checkPeer)


class ExecProtocol(FramedProtocol):
    """The server side of one exec connection."""

    serviceName = "exec"
    factory: ExecFactory

    def __init__(self) -> None:
        super().__init__()
        self.command: CommandProtocol | None = None
        #: Whether the running command still takes ``0`` frames.
        self.stdinOpen = False
        #: Whether the running command is on a terminal.
        self.onTerminal = False
        self._closedWaiters: list[Deferred[None]] = []
        #: The running command's stdin pipe reading this connection, if it has one.
        self.reading: ClientReading | None = None
        self._startLog: StartLog | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self.factory.connections.add(self)

    def startLog(self, log: Logger, user: str) -> StartLog:
        """This connection's log of started commands (see :mod:`netproto.exec.audit`)."""
        if self._startLog is None:
            self._startLog = StartLog(log, self.factory.context.reactor, self.peer, user)
        return self._startLog

    def whenClosed(self) -> Deferred[None]:
        """Fires once this connection is closed."""
        d: Deferred[None] = Deferred()
        if self.state is State.CLOSED and self.transport is None:
            d.callback(None)
        else:
            self._closedWaiters.append(d)
        return d

    def isBusy(self) -> bool:
        """A connection whose command runs is never idle, however quiet the command."""
        return self.command is not None

    def readingPaused(self) -> bool:
        """Whether the command's full stdin pipe has paused reading this connection."""
        return self.reading is not None and self.reading.paused

    # -- frames ----------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """A read that is exactly one whole ``0`` frame for a command that takes
        it, with nothing held before it, goes straight to the command: a
        keystroke's usual read. Everything else takes the framed base's path.

        Why: a keystroke's round trip is this read, the write to the command
        and the ``1`` frame back; the decoder's buffering and the per-frame
        dispatch were a fifth of the server's Python on that path. What the
        base would do for such a frame is done here too: its length checked
        against the limit, the handler's checks (:meth:`_stdin`), the
        connection's activity noted for the idle and frame deadlines."""
        size = len(data)
        if (
            size > 5
            and data[4] == _STDIN_TYPE
            and self.stdinOpen
            and self.state is State.READY
            and not self._decoder.inFrame
            and HEADER.unpack_from(data)[0] == size - 4 <= self._decoder.maxFrame
        ):
            command = self.command
            if command is not None and command.transport is not None:
                try:
                    command.transport.write(data[5:])
                except Exception:
                    self._handlerFailed(Failure())  # as frameReceived would
                    return
                self._noteProgress(True)
                return
        super().dataReceived(data)

    def _run(self, payload: bytes) -> None:
        request = decodeJSON(payload)
        if self.command is not None:
            raise ProtocolError("busy", "a command is already running on this connection")
        assert self.avatar is not None
        prepared = self.factory.policy.prepare(request, user=self.avatar.name, peer=self.peer)
        self.command = self.factory.startCommand(self, prepared, self.avatar.name)
        self.stdinOpen = prepared.stdin
        self.onTerminal = prepared.terminal is not None
        # Backpressure: while this connection cannot take more, the
        # command's output is not read (and the command blocks on its pipe).
        assert self.sender is not None
        self.sender.setOutput(self.command)

    def _stdin(self, payload: bytes) -> None:
        command = self.command
        if command is None:
            return  # for a command that has ended: the client had not seen X yet
        if not self.stdinOpen:
            raise ProtocolError("bad-frame", "0 frame without stdin: true, or after C")
        if payload and command.transport is not None:
            command.transport.write(payload)

    def _closeStdin(self, payload: bytes) -> None:
        command = self.command
        if command is None or not self.stdinOpen:
            return
        self.stdinOpen = self.onTerminal
        if command.transport is not None:
            command.transport.closeStdin()

    def _window(self, payload: bytes) -> None:
        rows, cols = windowSize(decodeJSON(payload))
        command = self.command
        if command is None:
            return  # for a command that has ended: the client had not seen X yet
        if not self.onTerminal:
            raise ProtocolError("bad-frame", 'W for a command without "pty"')
        resize = getattr(command.transport, "setWindow", None)
        if resize is not None:
            resize(rows, cols)

    def _signal(self, payload: bytes) -> None:
        request = decodeJSON(payload)
        name = request.get("signal")
        if not isinstance(name, str) or name not in SIGNALS:
            raise ProtocolError(
                "bad-frame", f'"signal" must be one of {", ".join(sorted(SIGNALS))}'
            )
        if self.command is not None:
            self.log.info(
                "exec: {peer} sends SIG{name} to command {pid}",
                peer=self.peer,
                name=name,
                pid=self._pid(),
            )
            if not self.command.signal(name):
                self.log.info(
                    "exec: SIG{name} dropped: the command's process group is gone", name=name
                )

    frameHandlers: ClassVar[dict[bytes, FrameHandler]] = {
        b"R": _run,
        b"0": _stdin,
        b"C": _closeStdin,
        b"S": _signal,
        b"W": _window,
    }

    # -- the command's life ------------------------------------------------------

    def _pid(self) -> int | None:
        if self.command is None or self.command.transport is None:
            return None
        pid: int = self.command.transport.pid
        return pid

    def commandEnded(self, command: CommandProtocol) -> None:
        """The command's ``X`` has been sent: the connection takes the next ``R``."""
        if command is not self.command:
            return
        self.command = None
        self.stdinOpen = False
        self.onTerminal = False
        self.reading = None
        if self.sender is not None:
            self.sender.setOutput(None)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        if self._startLog is not None:
            self._startLog.close()
        command, self.command = self.command, None
        if command is not None:
            self.log.info(
                "exec: {peer} went away; ending command {pid}",
                peer=self.peer,
                pid=command.transport.pid if command.transport is not None else None,
            )
            command.stopProducing()
        super().connectionLost(reason)
        self.factory.connections.discard(self)
        waiters, self._closedWaiters = self._closedWaiters, []
        for d in waiters:
            d.callback(None)
