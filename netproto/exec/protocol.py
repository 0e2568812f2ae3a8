"""The exec connection: ``R``, ``0``, ``C`` and ``S`` frames (PROTOCOL.md section 3).

One command at a time per connection. Each frame type has one handler in
:attr:`ExecProtocol.frameHandlers`; a handler raises
:class:`~netproto.errors.ProtocolError` for the peer's mistakes and the
framed base turns it into the ``E`` frame (``busy``, ``not-found`` and
``not-allowed`` leave the connection open; ``bad-frame`` closes it).

Frames that arrive for a command that has just ended (``0``, ``C``, ``S``
sent before the client read ``X``) are dropped: that is a race, not a
mistake. A ``0`` for a command started without ``"stdin": true``, or after
``C``, is a mistake (``bad-frame``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from twisted.internet.interfaces import IConsumer
from twisted.python.failure import Failure

from netproto.errors import ProtocolError
from netproto.framing import FramedProtocol, FrameHandler, decodeJSON

if TYPE_CHECKING:
    from netproto.exec.process import CommandProtocol
    from netproto.exec.server import ExecFactory

#: The signals a client may send with ``S``.
SIGNALS: frozenset[str] = frozenset({"INT", "TERM", "KILL", "HUP"})


class ExecProtocol(FramedProtocol):
    """The server side of one exec connection."""

    serviceName = "exec"
    factory: ExecFactory

    def __init__(self) -> None:
        super().__init__()
        self.command: CommandProtocol | None = None
        #: Whether the running command still takes ``0`` frames.
        self.stdinOpen = False

    # -- frames ----------------------------------------------------------------

    def _run(self, payload: bytes) -> None:
        request = decodeJSON(payload)
        if self.command is not None:
            raise ProtocolError("busy", "a command is already running on this connection")
        assert self.avatar is not None
        prepared = self.factory.policy.prepare(request, user=self.avatar.name, peer=self.peer)
        self.command = self.factory.startCommand(self, prepared, self.avatar.name)
        self.stdinOpen = prepared.stdin
        # Backpressure: while this connection's send buffer is full, the
        # command's output is not read (and the command blocks on its pipe).
        assert self.transport is not None
        IConsumer(self.transport).registerProducer(self.command, True)

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
        self.stdinOpen = False
        if command.transport is not None:
            command.transport.closeStdin()

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
            self.command.signal(name)

    frameHandlers: ClassVar[dict[bytes, FrameHandler]] = {
        b"R": _run,
        b"0": _stdin,
        b"C": _closeStdin,
        b"S": _signal,
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
        if self.transport is not None:
            IConsumer(self.transport).unregisterProducer()

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        command, self.command = self.command, None
        if command is not None:
            self.log.info(
                "exec: {peer} went away; ending command {pid}",
                peer=self.peer,
                pid=command.transport.pid if command.transport is not None else None,
            )
            command.stopProducing()
        super().connectionLost(reason)
