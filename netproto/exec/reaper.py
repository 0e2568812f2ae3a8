"""Ending one command's process group: ``SIGTERM``, a grace period, ``SIGKILL``, the sweep.

A command is a process group (its first process, the *leader*, started it
with ``setsid``; the group's id is the leader's pid). :class:`GroupReaper`
is everything exec does to that group, apart from the pipes and the leader's
own exit, which :class:`~netproto.exec.transport.CommandTransport` watches (as
Twisted's ``internet/process.py`` keeps reaping apart from the pipes):

* :meth:`GroupReaper.signal` forwards a client's ``S``;
* :meth:`GroupReaper.terminate` sends ``SIGTERM`` now and ``SIGKILL`` after
  the grace period, only if the group still has members then;
* after ``SIGKILL`` it looks (backing off) for the leader reaped and the group
  empty, then tells the transport to stop waiting for output pipes that
  processes outside the group still hold (:attr:`GroupReaper.onEmptied`);
* once the command has ended (:meth:`GroupReaper.commandEnded`) it reaps and
  ends whatever is left of the group, until nothing is, then fires
  :attr:`GroupReaper.onGone` and :meth:`GroupReaper.whenGone`; every timer is
  cancelled then.

**The pid-reuse window.** A group id is a pid, and the kernel never gives a
new process a pid that is some group's id while that group has a member
(zombies count). Until the leader is reaped the id is the command's; after
that, only while a member is left, and this process is the only one that reaps
them (the server is their subreaper, and reaping happens on the reactor
thread, where this runs). So once the leader is reaped, every signal is
preceded by a look (signal 0): an empty group is never signalled, and a
client's ``S`` then is dropped, as frames for a command that has just ended
are (see ``docs/exec.md``).

The kill and reap functions and the clock are injected: the tests drive this
class with :class:`twisted.internet.task.Clock` and a fake group.
"""

from __future__ import annotations

import enum
import signal
from collections.abc import Callable
from typing import Any, Final

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from netproto.exec import procs as _procs

#: How often a group is looked at while it is waited for (its members are not
#: ours to be told about): first after this many seconds, then doubling up to
#: :data:`LOOK_MAX`. Short groups go in one look; long ones cost little.
LOOK_FIRST: Final = 0.005
LOOK_MAX: Final = 0.25
#: After ``SIGKILL``, how long a group may still show members (processes we
#: may not signal, zombies of a parent that does not reap) before it is given
#: up on with a warning: a bound on how long a command holds its slot.
GIVE_UP_AFTER_KILL: Final = 5.0

log = Logger()


class Phase(enum.Enum):
    """How far the ending of the group has gone."""

    RUNNING = "running"
    TERMINATING = "terminating"  # SIGTERM sent; SIGKILL when the grace period is over
    KILLED = "killed"  # SIGKILL sent
    GONE = "gone"  # nothing of the group is left (or it was given up on)


#: Every transition: (phase, event) to the next phase. An event not listed
#: for a phase changes nothing (a second ``terminate``, anything once gone).
TRANSITIONS: Final[dict[tuple[Phase, str], Phase]] = {
    (Phase.RUNNING, "terminate"): Phase.TERMINATING,
    (Phase.RUNNING, "kill"): Phase.KILLED,
    (Phase.TERMINATING, "kill"): Phase.KILLED,
    (Phase.RUNNING, "gone"): Phase.GONE,
    (Phase.TERMINATING, "gone"): Phase.GONE,
    (Phase.KILLED, "gone"): Phase.GONE,
}

#: What ending a terminal's command sends to its session: ``SIGHUP`` (an
#: interactive shell ignores ``SIGTERM`` but hangs up its jobs and exits on
#: it), ``SIGTERM``, then ``SIGCONT`` so that stopped jobs (Ctrl-Z) take them.
HANGUP: Final = (signal.SIGHUP, signal.SIGTERM, signal.SIGCONT)

#: ``kill(pgid, sig)``: send ``sig`` to the group (0 only looks); whether it has members.
KillGroup = Callable[[int, int], bool]
#: ``reap(pgid)``: reap the group's exited members; how many.
ReapGroup = Callable[[int], int]


class GroupReaper:
    """Ends one command's process group; see the module docstring.

    :param pgid: the group (the leader's pid).
    :param clock: an ``IReactorTime``: the grace period and the looks.
    :param grace: seconds between ``SIGTERM`` and ``SIGKILL``.
    :param pollLeader: reaps the leader if it has exited; whether it is reaped.
    :param kill: :func:`netproto.exec.procs.killGroup` unless testing.
    :param reap: :func:`netproto.exec.procs.reapGroup` unless testing (it must
        not take the leader's status: it is called only once the leader is reaped).
    :param endSignals: what :meth:`terminate` sends, in order: ``SIGTERM``; a
        terminal's command (whose ``kill`` and ``reap`` are its session's) gets
        :data:`HANGUP`, what a terminal's hang-up sends.
    """

    def __init__(
        self,
        pgid: int,
        clock: Any,
        grace: float,
        *,
        pollLeader: Callable[[], bool],
        kill: KillGroup = _procs.killGroup,
        reap: ReapGroup = _procs.reapGroup,
        endSignals: tuple[int, ...] = (signal.SIGTERM,),
    ) -> None:
        self.pgid = pgid
        self.endSignals = endSignals
        self.clock = clock
        self.grace = grace
        self.phase = Phase.RUNNING
        self._pollLeader = pollLeader
        self._kill = kill
        self._reap = reap
        self._leaderReaped = False
        self._terminated = False
        self._ended = False
        self._killedAt: float | None = None
        self._killTimer: IDelayedCall | None = None
        self._lookTimer: IDelayedCall | None = None
        self._lookDelay = LOOK_FIRST
        self._waiters: list[Deferred[None]] = []
        #: Called once the group is gone, before the :meth:`whenGone` Deferreds
        #: (the factory's per-command bookkeeping, without a Deferred per command).
        self.onGone: Callable[[], None] | None = None
        #: Called when, after ``SIGKILL``, the leader is reaped and the group is
        #: empty (or given up on) while the command has not ended: its output
        #: pipes are held outside the group, and are no longer waited for.
        self.onEmptied: Callable[[], None] | None = None

    @property
    def gone(self) -> bool:
        return self.phase is Phase.GONE

    @property
    def terminated(self) -> bool:
        """Whether the server ended the group (``SIGTERM`` or ``SIGKILL`` sent)
        rather than it going by itself; still said once it is gone (for the log)."""
        return self._terminated

    def _to(self, event: str) -> bool:
        """Take ``event``; whether it moved the phase (see :data:`TRANSITIONS`)."""
        after = TRANSITIONS.get((self.phase, event))
        if after is None:
            return False
        self._terminated = self._terminated or after in (Phase.TERMINATING, Phase.KILLED)
        self.phase = after
        return True

    def leaderReaped(self) -> None:
        """The leader has been reaped: from now on the group id may be reused once
        the group is empty, so every signal is preceded by a look."""
        self._leaderReaped = True

    def _send(self, sig: int) -> bool:
        """``sig`` to the group if it is still the command's; whether it was sent."""
        if self.gone or (self._leaderReaped and not self._kill(self.pgid, 0)):
            return False
        return self._kill(self.pgid, sig)

    # -- asked for ---------------------------------------------------------------

    def signal(self, sig: int) -> bool:
        """A client's signal for the group; whether it was sent (never to an empty
        group once its leader is reaped: the pid-reuse window). ``SIGKILL`` is
        :meth:`kill`, which also gives up on output held outside the group."""
        if sig == signal.SIGKILL:
            return self.kill()
        return self._send(sig)

    def terminate(self) -> None:
        """``SIGTERM`` (:attr:`endSignals`) now, ``SIGKILL`` after the grace
        period if members are left."""
        if self._to("terminate"):
            for sig in self.endSignals:
                self._send(sig)
            self._killTimer = self.clock.callLater(self.grace, self.kill)

    def kill(self) -> bool:
        """``SIGKILL`` now; then, before the command has ended, look for the group
        emptied. Whether it did anything (sent, or the looks started)."""
        if self._killTimer is not None and self._killTimer.active():
            self._killTimer.cancel()
        self._killTimer = None
        if self.gone:
            return False
        self._to("kill")
        if self._killedAt is None:
            self._killedAt = self.clock.seconds()
        sent = self._send(signal.SIGKILL)
        if self._ended:
            return sent
        if self._lookTimer is None:
            self._lookTimer = self.clock.callLater(self._lookDelay, self._lookAfterKill)
        return True

    def commandEnded(self) -> None:
        """The command has ended (leader reaped, output pipes closed): sweep the group."""
        self._ended = True
        self._leaderReaped = True
        self._cancelLook()
        self._lookDelay = LOOK_FIRST
        self._sweep()

    def whenGone(self) -> Deferred[None]:
        """Fires once nothing of the group is left (reaped, or given up on)."""
        d: Deferred[None] = Deferred()
        if self.gone:
            d.callback(None)
        else:
            self._waiters.append(d)
        return d

    # -- looks -----------------------------------------------------------------

    def _killedLongAgo(self) -> bool:
        return (
            self._killedAt is not None
            and self.clock.seconds() - self._killedAt > GIVE_UP_AFTER_KILL
        )

    def _emptied(self) -> bool:
        """Reap what has exited (the leader first); whether nothing is left."""
        if not self._leaderReaped:
            self._leaderReaped = self._pollLeader()
            if not self._leaderReaped:
                return False
        # Most groups are empty once their leader is reaped: one look says so.
        if not self._kill(self.pgid, 0):
            return True
        self._reap(self.pgid)
        return not self._kill(self.pgid, 0)

    def _schedule(self, look: Callable[[], None]) -> None:
        self._lookTimer = self.clock.callLater(self._lookDelay, look)
        self._lookDelay = min(self._lookDelay * 2, LOOK_MAX)

    def _lookAfterKill(self) -> None:
        """After ``SIGKILL``, before the command ended: once the group is empty,
        output pipes still open are held outside it; stop waiting for them."""
        self._lookTimer = None
        if self._ended or self.gone:
            return
        emptied = self._emptied()
        if self._ended or self.gone:
            return  # polling the leader ended the command: the sweep took over
        if emptied or (self._leaderReaped and self._killedLongAgo()):
            if self.onEmptied is not None:
                self.onEmptied()
            return
        self._schedule(self._lookAfterKill)

    def _sweep(self) -> None:
        """After the command's end: reap and end what is left of the group, until none is."""
        self._lookTimer = None
        if self._emptied():
            self._gone()
            return
        if self.phase is Phase.RUNNING:
            log.info(
                "exec: command {pid} ended; ending what is left of its process group",
                pid=self.pgid,
            )
            self.terminate()
        if self._killedLongAgo():
            log.warn(
                "exec: process group {pid} still has members {seconds} s after SIGKILL; "
                "giving up on it",
                pid=self.pgid,
                seconds=GIVE_UP_AFTER_KILL,
            )
            self._gone()
            return
        self._schedule(self._sweep)

    def _cancelLook(self) -> None:
        if self._lookTimer is not None and self._lookTimer.active():
            self._lookTimer.cancel()
        self._lookTimer = None

    def _gone(self) -> None:
        self._to("gone")
        self._cancelLook()
        if self._killTimer is not None and self._killTimer.active():
            self._killTimer.cancel()
        self._killTimer = None
        onGone, self.onGone = self.onGone, None
        if onGone is not None:
            onGone()
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)
