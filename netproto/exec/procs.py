"""Processes by pid and group, through ``os`` and ``/proc`` alone (Linux).

Signalling a process group, telling whether it still has members, and a
process's start time (which, with its pid, tells it from a later process
given the same pid). Light on purpose: the guardian imports it.
"""

from __future__ import annotations

import os
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
    alive: set[int] = set()
    try:
        names = os.listdir("/proc")
    except OSError:
        return alive
    for name in names:
        if not name.isdigit():
            continue
        fields = _stat(int(name))
        if fields is not None and fields[0] != b"Z" and int(fields[2]) in pgids:
            alive.add(int(fields[2]))
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
