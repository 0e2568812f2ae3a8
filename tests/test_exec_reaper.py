"""The group reaper on a Clock, with a fake group: which signals, when, and when it is over;
and who reaps a command's first process."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from netproto.exec.procs import isZombie
from netproto.exec.reaper import GIVE_UP_AFTER_KILL, LOOK_MAX, GroupReaper, Phase
from netproto.exec.server import ExecFactory
from netproto.exec.spawn import spawn, unreaped
from tests.execkit import policyFor
from tests.support import makeContext, waitUntil

GRACE = 2.0
PGID = 4242


class FakeGroup:
    """A process group as the reaper sees it through ``kill`` and ``reap``.

    ``members`` live processes (the leader among them until ``leaderExits``);
    ``zombies`` have exited and wait to be reaped. Members exit on the signals
    in ``diesOn``, and on ``SIGKILL`` unless not ``killable`` (then only
    ``leaderExits`` ends the leader).
    """

    def __init__(
        self, members: int = 1, diesOn: frozenset[int] = frozenset(), killable: bool = True
    ) -> None:
        self.members = members
        self.zombies = 0
        self.diesOn = diesOn
        self.killable = killable
        self.leaderExited = False
        #: Every signal sent but the looks (signal 0).
        self.signals: list[int] = []
        self.looks = 0

    def kill(self, pgid: int, sig: int) -> bool:
        assert pgid == PGID
        there = self.members + self.zombies > 0
        if sig == 0:
            self.looks += 1
            return there
        self.signals.append(sig)
        if sig in self.diesOn or (sig == signal.SIGKILL and self.killable):
            self.zombies += self.members
            self.members = 0
            self.leaderExited = True
        return there

    def reap(self, pgid: int) -> int:
        reaped, self.zombies = self.zombies, 0
        return reaped

    def leaderExits(self) -> None:
        self.members -= 1
        self.leaderExited = True

    def pollLeader(self) -> bool:
        return self.leaderExited


def reaperOf(group: FakeGroup, clock: Clock) -> GroupReaper:
    return GroupReaper(
        PGID, clock, GRACE, pollLeader=group.pollLeader, kill=group.kill, reap=group.reap
    )


def test_terminate_sends_TERM_then_KILL_once_the_grace_period_is_over() -> None:
    """A group that ignores SIGTERM gets SIGKILL exactly when the grace period ends, once."""
    clock, group = Clock(), FakeGroup(members=2)
    reaper = reaperOf(group, clock)
    reaper.terminate()
    reaper.terminate()  # a second request changes nothing
    assert group.signals == [signal.SIGTERM]
    assert reaper.phase is Phase.TERMINATING
    clock.advance(GRACE - 0.001)
    assert group.signals == [signal.SIGTERM]
    clock.advance(0.001)
    assert group.signals == [signal.SIGTERM, signal.SIGKILL]
    assert reaper.phase in {Phase.KILLED}


def test_no_KILL_for_a_group_that_ended_on_TERM() -> None:
    """A group that exits on SIGTERM is swept once the command has ended: the KILL
    timer is cancelled, nothing is left scheduled, and whenGone and onGone fire."""
    clock, group = Clock(), FakeGroup(members=2, diesOn=frozenset({signal.SIGTERM}))
    reaper = reaperOf(group, clock)
    gone: list[str] = []
    reaper.onGone = lambda: gone.append("onGone")
    reaper.whenGone().addCallback(lambda _: gone.append("whenGone"))
    reaper.terminate()
    reaper.leaderReaped()
    reaper.commandEnded()
    assert gone == ["onGone", "whenGone"]
    assert reaper.gone and group.zombies == 0
    assert not clock.getDelayedCalls()
    clock.advance(GRACE * 2)
    assert group.signals == [signal.SIGTERM]


def test_KILL_only_if_the_group_still_has_members() -> None:
    """When the grace period ends with the leader reaped and the group empty (its
    output held by a process that left it), no SIGKILL goes to the group id, which
    may be another's by then; the transport is told to stop waiting for the pipes."""
    clock, group = Clock(), FakeGroup(members=1, diesOn=frozenset({signal.SIGTERM}))
    reaper = reaperOf(group, clock)
    emptied: list[bool] = []
    reaper.onEmptied = lambda: emptied.append(True)
    reaper.terminate()
    reaper.leaderReaped()
    group.reap(PGID)
    clock.advance(GRACE)
    assert group.signals == [signal.SIGTERM]
    clock.advance(LOOK_MAX)
    assert emptied == [True]
    assert not clock.getDelayedCalls()


def test_signals_are_refused_once_the_group_is_empty_after_its_leader_was_reaped() -> None:
    """The pid-reuse window: before the leader is reaped a signal goes straight to
    the group; after, only while a member is left; never once the group is gone."""
    clock, group = Clock(), FakeGroup(members=2)
    reaper = reaperOf(group, clock)
    assert reaper.signal(signal.SIGINT)
    assert group.looks == 0  # the id is the command's while its leader is not reaped
    group.leaderExits()
    group.reap(PGID)
    reaper.leaderReaped()
    assert reaper.signal(signal.SIGHUP)  # one member left: the id is still the command's
    group.members = 0
    assert not reaper.signal(signal.SIGINT)
    assert group.signals == [signal.SIGINT, signal.SIGHUP]
    reaper.commandEnded()
    assert not reaper.signal(signal.SIGKILL)
    assert reaper.gone
    assert not reaper.signal(signal.SIGTERM)
    reaper.terminate()
    assert group.signals == [signal.SIGINT, signal.SIGHUP]
    assert not clock.getDelayedCalls()


def test_what_is_left_after_the_command_is_ended_and_reaped() -> None:
    """Members left when the command ends (a background child that ignores TERM)
    get SIGTERM, then SIGKILL after the grace period; the group is reaped and gone."""
    clock, group = Clock(), FakeGroup(members=2)
    reaper = reaperOf(group, clock)
    group.leaderExits()
    reaper.commandEnded()
    assert group.signals == [signal.SIGTERM]
    assert not reaper.gone
    clock.advance(GRACE)
    assert group.signals == [signal.SIGTERM, signal.SIGKILL]
    clock.pump([LOOK_MAX] * 4)
    assert reaper.gone and group.zombies == 0
    assert not clock.getDelayedCalls()


def test_a_group_that_will_not_go_is_given_up_on_after_KILL() -> None:
    """Members that outlive SIGKILL (not ours to signal) hold the command only for
    GIVE_UP_AFTER_KILL seconds; then the group is given up on, timers cancelled."""
    clock, group = Clock(), FakeGroup(members=2, killable=False)
    reaper = reaperOf(group, clock)
    reaper.leaderReaped()
    reaper.commandEnded()
    clock.advance(GRACE)
    assert reaper.phase is Phase.KILLED
    steps = int((GIVE_UP_AFTER_KILL + 1) / LOOK_MAX) + 1
    clock.pump([LOOK_MAX] * steps)
    assert reaper.gone
    assert not clock.getDelayedCalls()


def test_KILL_before_the_end_waits_for_the_leader_then_gives_up_on_held_output() -> None:
    """An S KILL while the command runs: the leader is polled until it has exited,
    and once the group is empty the output held outside it is no longer waited for."""
    clock, group = Clock(), FakeGroup(members=1, killable=False)
    reaper = reaperOf(group, clock)
    emptied: list[bool] = []
    reaper.onEmptied = lambda: emptied.append(True)
    assert reaper.signal(signal.SIGKILL)
    clock.advance(LOOK_MAX)
    assert emptied == []  # the leader has not exited yet
    group.leaderExits()
    clock.pump([LOOK_MAX] * 2)
    assert emptied == [True]
    assert not clock.getDelayedCalls()


@pytest.mark.parametrize("event", ["terminate", "kill", "commandEnded"])
def test_nothing_is_scheduled_once_gone(event: str) -> None:
    """Whatever comes after the group is gone schedules nothing and signals nothing."""
    clock, group = Clock(), FakeGroup(members=1)
    reaper = reaperOf(group, clock)
    group.leaderExits()
    group.reap(PGID)
    reaper.commandEnded()
    assert reaper.gone
    getattr(reaper, event)()
    assert group.signals == []
    assert not clock.getDelayedCalls()


def test_a_command_is_reaped_by_its_own_spawn_not_by_another_factory(tmp_path: Path) -> None:
    """Each command's first process is reaped by its own ``Spawned`` (which
    thereby learns its exit status), never by the look for strays of another
    exec factory in the same process: a command that exited with status 3 is
    seen exiting with 3 (its process reaped by the other, its ``Popen`` used
    to report 0, or, never polled again, warn that it was "still running")."""
    devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    child = spawn(
        "/bin/sh",
        ["sh", "-c", "exit 3"],
        env={},
        cwd="/",
        stdin=False,
        devnull=devnull,
        pidfd=False,
    )
    try:
        waitUntil(lambda: isZombie(child.pid))
        assert child.pid in unreaped()
        other = ExecFactory(makeContext(tmp_path), policyFor(tmp_path), guard=False)
        other._reapStrays()
        assert isZombie(child.pid)
        assert child.poll() == 3
        assert child.pid not in unreaped()
    finally:
        os.close(devnull)
        os.close(child.stdout)
        os.close(child.stderr)
        waitUntil(lambda: child.poll() is not None)
