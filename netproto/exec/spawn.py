"""Starting a command in a session of its own, with its pipes ours.

Why not ``reactor.spawnProcess`` (which since Twisted 24.3 also starts
children with ``posix_spawnp`` where it can): it has no per-command working
directory on that path (a ``cwd`` sends it back to its fork), it cannot start
a new session or process group, and to close the child's other descriptors
it looks at every one the server has open, a cost that grows with the
number of connections. Instead:

* :func:`spawn` starts the command with :class:`subprocess.Popen`
  (``cwd``, ``start_new_session=True`` so its pid is also its session and
  process group id, ``close_fds=True``): CPython's ``_posixsubprocess``
  starts it with ``vfork`` (Python 3.10 and later) and closes what the child
  must not inherit with ``close_range``, without a look at each descriptor.
  Measured against the C library's ``posix_spawn`` (with ``chdir`` and
  ``closefrom`` file actions, through :mod:`ctypes`): the same cost per
  spawn and per ``true`` round trip within noise, so that second way was
  deleted (see ``docs/exec.md``). An exec failure is an :class:`OSError`
  here, not an exit status 1 later. The parent's ends of the pipes are
  non-blocking; an output pipe is enlarged (:func:`setPipeSize`) only once a
  read finds it full, so a short command costs no ``fcntl`` and no larger pipe.
* Exit is watched through a pidfd (Linux 5.3 and later): readable once the
  child has exited, so the reactor needs no ``SIGCHLD`` handler of ours and
  Twisted's own reaping (which only waits for the pids it spawned) is left
  alone. :meth:`Spawned.poll` reaps the command's first process.
* :func:`becomeSubreaper` makes the server the reaper of its commands'
  orphans (Linux ``prctl``), so a background child whose shell has gone is
  reparented to us, not to PID 1, and :mod:`netproto.exec.procs` can reap it
  (with its group, or as an orphan): no zombie stays behind even when PID 1
  does not reap (as in many containers). Ending a group is
  :mod:`netproto.exec.reaper`'s.

A process that leaves the group (``setsid``, ``setpgid``, as daemons and
job-control shells do) is not signalled with it; only a cgroup
(:mod:`netproto.exec.cgroups`) follows it. See ``docs/exec.md``.
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Final

#: Size asked for an output pipe once a read finds it full (``F_SETPIPE_SZ``):
#: a command writing fast then fills 1 MiB before it blocks, and each read
#: takes up to a whole frame. The kernel caps it at
#: ``/proc/sys/fs/pipe-max-size`` (1 MiB by default); past a user's
#: ``pipe-user-pages-soft`` the call fails and the default stays.
PIPE_SIZE: Final = 1 << 20
#: A pipe's size until then (Linux's default).
DEFAULT_PIPE_SIZE: Final = 64 * 1024

#: ``prctl(PR_SET_CHILD_SUBREAPER, 1)`` (linux/prctl.h).
_PR_SET_CHILD_SUBREAPER: Final = 36

#: The pids of every process started here (commands, guardians) and not yet
#: reaped by its :class:`Spawned`, process-wide: what the reaping of orphans
#: (:func:`netproto.exec.procs.reapOrphans`) must leave to its starter. Were
#: one reaped by another (another exec factory's look for strays, in the same
#: process), its ``Popen`` would never learn its status: it would report exit
#: status 0 and warn, when collected, that its process "is still running".
_unreaped: set[int] = set()


def unreaped() -> frozenset[int]:
    """The pids started here and not yet reaped (see :data:`_unreaped`)."""
    return frozenset(_unreaped)


class Spawned:
    """A started command: its pid (also its session and process group id) and
    the parent's ends of its pipes, non-blocking and owned by the caller."""

    __slots__ = ("_popen", "pid", "pidfd", "stderr", "stdin", "stdout")

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        *,
        stdin: int | None,
        stdout: int,
        stderr: int,
        pidfd: int | None,
    ) -> None:
        self._popen = popen
        self.pid = popen.pid
        _unreaped.add(popen.pid)
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.pidfd = pidfd

    @property
    def returncode(self) -> int | None:
        """Like :attr:`subprocess.Popen.returncode`: ``-N`` for signal N."""
        return self._popen.returncode

    def poll(self) -> int | None:
        """Reap the command's first process if it has exited; its return code or None."""
        returncode = self._popen.poll()
        if returncode is not None:
            _unreaped.discard(self.pid)
        return returncode


def spawn(
    executable: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str,
    stdin: bool,
    devnull: int,
    pidfd: bool = True,
) -> Spawned:
    """Start ``argv`` (``executable`` is the already-resolved program) in a new session.

    :param stdin: give the command a pipe for stdin; otherwise ``devnull``
        (an open ``/dev/null``), so a read sees end of file at once.
    :param pidfd: open the command's pidfd now; ``False`` leaves
        :attr:`Spawned.pidfd` None, for a caller that opens it only when it
        needs one (:func:`pidfdOpen`, while it has not reaped the pid).
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
        if stdin:
            setPipeSize(inW, PIPE_SIZE)
        popen = _start(
            executable, argv, env=env, cwd=cwd, fds=(inR if stdin else devnull, outW, errW)
        )
    except BaseException:
        for fd in opened:
            os.close(fd)
        raise
    # The child has its copies; the parent keeps its own ends only.
    for fd in opened:
        if fd not in (inW if stdin else -1, outR, errR):
            os.close(fd)
    if stdin:
        os.set_blocking(inW, False)
    os.set_blocking(outR, False)
    os.set_blocking(errR, False)
    return Spawned(
        popen,
        stdin=inW if stdin else None,
        stdout=outR,
        stderr=errR,
        pidfd=pidfdOpen(popen.pid) if pidfd else None,
    )


def _start(
    executable: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str,
    fds: tuple[int, int, int],
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a new session in ``cwd`` with ``fds`` as its 0, 1 and 2
    and no other descriptor of ours, every signal at its default."""
    return subprocess.Popen(
        list(argv),
        executable=executable,
        stdin=fds[0],
        stdout=fds[1],
        stderr=fds[2],
        env=dict(env),
        cwd=cwd,
        start_new_session=True,
        close_fds=True,
    )


def startHelper(
    argv: Sequence[str], *, stdin: int, devnull: int, env: Mapping[str, str]
) -> Spawned:
    """Start a helper of the server (not a client's command) in a session of its own.

    Its stdin is ``stdin``, its stdout ``devnull`` and its stderr the
    server's; it starts in ``/``. The caller reaps it (:meth:`Spawned.poll`).
    """
    popen = _start(argv[0], argv, env=env, cwd="/", fds=(stdin, devnull, 2))
    return Spawned(popen, stdin=None, stdout=-1, stderr=-1, pidfd=pidfdOpen(popen.pid))


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
