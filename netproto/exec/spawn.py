"""Starting a command in a session of its own, and ending its process group.

This module is the one place where exec touches processes directly. Why not
``reactor.spawnProcess``: it cannot start a new session or process group (no
``setsid``), its fork path costs more than ``subprocess``'s ``vfork``, and it
reads the output pipes 8 KiB at a time. Instead:

* :func:`spawn` starts the command with :class:`subprocess.Popen`
  (``start_new_session=True``: the child calls ``setsid()``, so its pid is also
  its session and process group id; ``close_fds``; ``vfork`` on Linux; an
  exec failure is an :class:`OSError` here, not an exit status 1 later). The
  pipes are ours: the parent's ends are non-blocking, the output pipes are
  enlarged to :data:`PIPE_SIZE` so a fast writer is not stopped every 64 KiB.
* Exit is watched through a pidfd (Linux 5.3 and later): readable once the
  child has exited, so the reactor needs no ``SIGCHLD`` handler of ours and
  Twisted's own reaping (which only waits for the pids it spawned) is left
  alone. Elsewhere :mod:`netproto.exec.transport` polls instead.
* :func:`killGroup`, :func:`reapGroup` and :func:`groupAlive` end and reap
  what is left of a command's process group. :func:`becomeSubreaper` makes
  the server the reaper of its commands' orphans (Linux ``prctl``), so a
  background child whose shell has gone is reparented to us, not to PID 1,
  and :func:`reapGroup` can wait for it: no zombie stays behind even when
  PID 1 does not reap (as in many containers).

What this cannot do: a process that leaves the group (``setsid``, ``setpgid``,
as daemons and job-control shells do) is not signalled by :func:`killGroup`;
see ``docs/exec.md``.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import os
import signal
import subprocess
import sys
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

#: Size asked for each output pipe (``F_SETPIPE_SZ``): a command writing fast
#: fills 1 MiB before it blocks, and each read takes up to a whole frame. The
#: kernel caps it at ``/proc/sys/fs/pipe-max-size`` (1 MiB by default); past
#: a user's ``pipe-user-pages-soft`` the call fails and the default stays.
PIPE_SIZE: Final = 1 << 20

#: ``prctl(PR_SET_CHILD_SUBREAPER, 1)`` (linux/prctl.h).
_PR_SET_CHILD_SUBREAPER: Final = 36


@dataclass
class Spawned:
    """A started command: its pid (also its session and process group id) and
    the parent's ends of its pipes, non-blocking and owned by the caller."""

    pid: int
    popen: subprocess.Popen[bytes]
    stdin: int | None
    stdout: int
    stderr: int
    pidfd: int | None


def spawn(
    executable: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str,
    stdin: bool,
    devnull: int,
) -> Spawned:
    """Start ``argv`` (``executable`` is the already-resolved program) in a new session.

    :param stdin: give the command a pipe for stdin; otherwise ``devnull``
        (an open ``/dev/null``), so a read sees end of file at once.
    :raises OSError: the command could not be started (no such program,
        permission denied, no such directory, out of processes); nothing is
        left open then.
    """
    opened: list[int] = []
    try:
        if stdin:
            inR, inW = os.pipe()
            opened += [inR, inW]
        outR, outW = os.pipe()
        opened += [outR, outW]
        errR, errW = os.pipe()
        opened += [errR, errW]
        for fd in (inW, outR, errR) if stdin else (outR, errR):
            setPipeSize(fd, PIPE_SIZE)
        popen = subprocess.Popen(
            list(argv),
            executable=executable,
            stdin=inR if stdin else devnull,
            stdout=outW,
            stderr=errW,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
        )
    except BaseException:
        for fd in opened:
            os.close(fd)
        raise
    # The child has its copies; the parent keeps its own ends only.
    os.close(outW)
    os.close(errW)
    if stdin:
        os.close(inR)
        os.set_blocking(inW, False)
    os.set_blocking(outR, False)
    os.set_blocking(errR, False)
    return Spawned(
        pid=popen.pid,
        popen=popen,
        stdin=inW if stdin else None,
        stdout=outR,
        stderr=errR,
        pidfd=pidfdOpen(popen.pid),
    )


def setPipeSize(fd: int, size: int) -> bool:
    """Ask for a pipe buffer of ``size`` bytes; whether the kernel agreed."""
    setSize = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setSize is None:
        return False
    try:
        fcntl.fcntl(fd, setSize, size)
    except OSError:
        return False
    return True


def pidfdOpen(pid: int) -> int | None:
    """A pidfd for ``pid`` (readable once it exits), or None where there are none."""
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return None
    try:
        fd: int = opener(pid)
    except OSError:
        return None
    return fd


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


def reapGroup(pgid: int) -> int:
    """Reap every exited child of ours in group ``pgid``; how many were reaped.

    Call it only once the group's leader has been reaped through its
    :class:`subprocess.Popen`, or this could take the leader's status.
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


def reapStrays(keep: Container[int]) -> list[int]:
    """Reap zombie children of this process that nobody else waits for; their pids.

    A subreaper inherits every orphan below it, also processes that left
    their command's group (``setsid``) and so are no group's member when they
    exit. ``keep`` names the children someone else reaps (commands not yet
    reaped through their ``Popen``, Twisted's own processes). Linux only
    (``/proc/self/task/*/children``); elsewhere nothing is done.
    """
    reaped: list[int] = []
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return reaped
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/children") as f:
                children = [int(pid) for pid in f.read().split()]
        except (OSError, ValueError):
            continue
        for pid in children:
            if pid in keep or not _isZombie(pid):
                continue
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    reaped.append(pid)
            except ChildProcessError:
                continue
    return reaped


def _isZombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    # The state follows the command name, which is in parentheses and may hold any byte.
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] == b"Z"


@functools.cache
def becomeSubreaper() -> bool:
    """Make this process the reaper of its descendants' orphans (Linux); whether it worked.

    Done once per process (the setting is the process's, and is kept).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def signalNumber(name: str) -> int:
    """``"INT"`` to ``signal.SIGINT``'s number; :class:`ValueError` for anything else."""
    try:
        return int(signal.Signals[f"SIG{name}"])
    except KeyError:
        raise ValueError(f"unknown signal {name!r}") from None


def signalName(number: int) -> str:
    """``signal.SIGTERM``'s number to ``"TERM"`` (the form X frames use)."""
    try:
        return signal.Signals(number).name.removeprefix("SIG")
    except ValueError:
        return str(number)
