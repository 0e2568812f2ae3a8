"""The log of who ran what: every command a connection starts, in few log events.

One ``twisted.logger`` event costs about a fifth of the server's work for a
short command (formatting, the time stamp, the file write), so a client
running commands in a loop must not cost one event per command. Every
command is still logged, with its pid, the peer address and the user:

* a command started when the connection has logged nothing for
  :attr:`StartLog.window` seconds is logged at once, in its own line
  (``exec: PEER (USER) started PID: COMMAND``), as interactive use sees;
* commands started within the window after it are collected and logged
  together when the window ends, or as soon as :attr:`StartLog.batch` of them
  are waiting (``exec: PEER (USER) started N commands: PID 'COMMAND', ...``),
  and when the connection closes. Nothing is kept beyond one batch.

Refusals and commands the server ends are logged elsewhere, one line each.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger


class StartLog:
    """The started commands of one connection; see the module docstring.

    :param log: where the lines go.
    :param clock: an ``IReactorTime`` for the window.
    """

    window: float = 1.0
    batch: int = 100

    def __init__(self, log: Logger, clock: Any, peer: str, user: str) -> None:
        self.log = log
        self.clock = clock
        self.peer = peer
        self.user = user
        self._pending: list[str] = []
        self._timer: IDelayedCall | None = None

    def started(self, pid: int, command: str) -> None:
        """Log (now or with the next batch) that ``command`` started as ``pid``."""
        if self._timer is None:
            self.log.info(
                "exec: {peer} ({user}) started {pid}: {command}",
                peer=self.peer,
                user=self.user,
                pid=pid,
                command=command,
            )
            self._timer = self.clock.callLater(self.window, self._windowEnded)
            return
        self._pending.append(f"{pid} {command!r}")
        if len(self._pending) >= self.batch:
            self.flush()

    def flush(self) -> None:
        """Log the commands collected so far, if any, in one line."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        self.log.info(
            "exec: {peer} ({user}) started {count} commands: {commands}",
            peer=self.peer,
            user=self.user,
            count=len(pending),
            commands=", ".join(pending),
        )

    def _windowEnded(self) -> None:
        self._timer = None
        if self._pending:
            self.flush()
            # Still busy: the next commands are batched too.
            self._timer = self.clock.callLater(self.window, self._windowEnded)

    def close(self) -> None:
        """The connection is closing: log what is collected, stop the window."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.flush()
