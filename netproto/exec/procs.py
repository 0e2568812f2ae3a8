"""Processes by pid and group, through ``os`` and ``/proc`` alone (Linux).

Signalling a process group, telling whether it still has members, reaping
it and the orphans that came to this process, and a process's start time
(which, with its pid, tells it from a later process given the same pid).
Light on purpose: the guardian imports it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
from collections.abc import Container


def killGroup(pgid: int, sig: int) -> bool:
    """Send ``sig`` to every process of group ``pgid``; whether any was there."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        # Some member (a setuid program) is not ours to signal; it is there.
        return True
    return True


def groupAlive(pgid: int) -> bool:
    """Whether any process (a zombie included) is still in group ``pgid``."""
    return killGroup(pgid, 0)


def _stat(pid: int) -> list[bytes] | None:
    """The fields of ``/proc/PID/stat`` from the state on (the third field
    is the first here), or None when there is no such process (Linux)."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        stat = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    # They follow the command name, which is in parentheses and may hold any byte.
    return stat[stat.rfind(b")") + 2 :].split()


def isZombie(pid: int) -> bool:
    """Whether ``pid`` is a zombie (exited, not yet reaped)."""
    fields = _stat(pid)
    return fields is not None and fields[0] == b"Z"


def liveGroups(pgids: Container[int]) -> set[int]:
    """Which of the process groups ``pgids`` have a member that is not a zombie
    (a scan of ``/proc``, Linux): unlike :func:`groupAlive`, not fooled by
    zombies that a parent who does not reap leaves in a group."""
    return _liveBy(pgids, 2)


def liveSessions(sids: Container[int]) -> set[int]:
    """Which of the sessions ``sids`` have a member that is not a zombie, as
    :func:`liveGroups` for groups. A session holds its leader's group and
    every other group made in it (the jobs of a job-control shell)."""
    return _liveBy(sids, 3)


def _liveBy(ids: Container[int], field: int) -> set[int]:
    """Which of ``ids`` the non-zombie processes have as their group (``field``
    2 of their state fields) or session (3)."""
    alive: set[int] = set()
    try:
        names = os.listdir("/proc")
    except OSError:
        return alive
    for name in names:
        if not name.isdigit():
            continue
        fields = _stat(int(name))
        if fields is not None and fields[0] != b"Z" and int(fields[field]) in ids:
            alive.add(int(fields[field]))
    return alive


def startTime(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot (Linux), or None
    when there is none: with its pid, what tells a process from a later one
    that was given the same pid."""
    fields = _stat(pid)
    try:
        return None if fields is None else int(fields[19])
    except (IndexError, ValueError):
        return None


def reapGroup(pgid: int) -> int:
    """Reap every exited child of ours in group ``pgid``; how many were reaped.

    Call it only once the group's leader has been reaped by whoever started
    it, or this could take the leader's status.
    """
    reaped = 0
    while True:
        try:
            info = os.waitid(os.P_PGID, pgid, os.WEXITED | os.WNOHANG)
        except ChildProcessError:
            return reaped
        except OSError as e:  # pragma: no cover - EINTR is retried by Python
            if e.errno == errno.EINTR:
                continue
            return reaped
        if info is None:
            return reaped
        reaped += 1


def reapOrphans(started: Container[int]) -> list[int]:
    """Reap the exited orphans this process adopted as their subreaper; their pids.

    A subreaper inherits every orphan below it, also processes that left
    their command's group (``setsid``) and so are no group's member when they
    exit. Only the children that are neither in this process's own session
    nor in ``started`` (the processes this server started and reaps itself:
    every exec factory's commands and guardians,
    :func:`netproto.exec.spawn.unreaped`) are reaped: whatever another part
    of the server starts directly (``reactor.spawnProcess``,
    :mod:`subprocess`) is born in the server's session, and left to its
    starter; what is in another session and was not started here can only
    have come as an orphan. (A process another part of the server starts in
    a session of its own, as ``spawnProcess(usePTY=True)`` does, cannot be
    told from an orphan: see ``docs/exec.md``.) Linux only (``/proc/self/task/*/children``);
    elsewhere nothing is done.
    """
    reaped: list[int] = []
    try:
        tasks = os.listdir("/proc/self/task")
        ownSession = os.getsid(0)
    except OSError:
        return reaped
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/children") as f:
                children = [int(pid) for pid in f.read().split()]
        except (OSError, ValueError):
            continue
        for pid in children:
            fields = None if pid in started else _stat(pid)
            # Fields from the state on: state, ppid, process group, session.
            if fields is None or fields[0] != b"Z" or int(fields[3]) == ownSession:
                continue
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    reaped.append(pid)
            except ChildProcessError:
                continue
    return reaped


def sessionMembers(sid: int) -> list[int]:
    """The pids of every process (zombies included) in session ``sid``: a scan
    of ``/proc`` (Linux). A terminal's command puts each job of an interactive
    shell in a process group of its own, all of them in its session."""
    members: list[int] = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return members
    for name in names:
        if name.isdigit():
            fields = _stat(int(name))
            if fields is not None and int(fields[3]) == sid:
                members.append(int(name))
    return members


def _inSession(pid: int, sid: int, group: int | None) -> bool:
    fields = _stat(pid)
    return (
        fields is not None and int(fields[3]) == sid and (group is None or int(fields[2]) == group)
    )


def killSession(sid: int, sig: int, group: int | None = None) -> bool:
    """Send ``sig`` to every process of session ``sid`` (of its process group
    ``group`` only, if given); whether any was there (a zombie counts, as for
    :func:`killGroup`).

    Each process is held by a pidfd and checked to be in the session (and
    group) before it is signalled, so a pid reused between the scan and the
    signal is never hit. Without pidfds (before Linux 5.3), the group ``sid``
    (or ``group``) alone is signalled.
    """
    opener = getattr(os, "pidfd_open", None)
    sender = getattr(signal, "pidfd_send_signal", None)
    if opener is None or sender is None:
        return killGroup(sid if group is None else group, sig)
    there = False
    for pid in sessionMembers(sid):
        try:
            pidfd = opener(pid)
        except OSError:
            continue  # gone since the scan
        try:
            if not _inSession(pid, sid, group):
                continue
            there = True
            if sig:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    sender(pidfd, sig)
        finally:
            os.close(pidfd)
    return there


def reapSession(sid: int) -> int:
    """Reap every exited child of ours in session ``sid`` (the orphans a
    terminal's shell left to this process, its subreaper); how many.

    As with :func:`reapGroup`, call it only once the session's leader has
    been reaped by whoever started it.
    """
    reaped = 0
    me = os.getpid()
    for pid in sessionMembers(sid):
        fields = _stat(pid)
        if fields is None or fields[0] != b"Z" or int(fields[1]) != me:
            continue
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                reaped += 1
        except ChildProcessError:
            continue
    return reaped
