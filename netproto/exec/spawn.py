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
from collections.abc import Callable, Mapping, Sequence
from typing import Final

from netproto.exec import pty as _pty

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
    the parent's ends of its pipes (or of its terminal), non-blocking and
    owned by the caller."""

    __slots__ = (
        "_popen",
        "pid",
        "pidfd",
        "returncode",
        "stderr",
        "stdin",
        "stdout",
        "terminal",
    )

    def __init__(
        self,
        popen: subprocess.Popen[bytes] | int,
        *,
        stdin: int | None,
        stdout: int,
        stderr: int,
        pidfd: int | None,
    ) -> None:
        #: The Popen of a command; None for a helper started by pid alone
        #: (:func:`startHelper`), which is reaped with ``waitpid``.
        self._popen = popen if isinstance(popen, subprocess.Popen) else None
        self.pid: int = popen.pid if isinstance(popen, subprocess.Popen) else popen
        _unreaped.add(self.pid)
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.pidfd = pidfd
        #: Whether ``stdout`` and ``stdin`` are a pseudo-terminal's master end.
        self.terminal = False
        #: Like :attr:`subprocess.Popen.returncode`: ``-N`` for signal N; None
        #: until :meth:`poll` has reaped the process.
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """Reap the command's first process if it has exited; its return code or None."""
        if self.returncode is None:
            self.returncode = (
                self._popen.poll() if self._popen is not None else _waitNoHang(self.pid)
            )
            if self.returncode is not None:
                _unreaped.discard(self.pid)
        return self.returncode


def _waitNoHang(pid: int) -> int | None:
    """Reap child ``pid`` if it has exited: its return code (``-N`` for signal N), or None."""
    try:
        reaped, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return 0  # reaped by another: its status is lost (as Popen.poll says then)
    return os.waitstatus_to_exitcode(status) if reaped == pid else None


def spawn(
    executable: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str,
    stdin: bool,
    devnull: int,
    pidfd: bool = True,
    window: tuple[int, int] | None = None,
) -> Spawned:
    """Start ``argv`` (``executable`` is the already-resolved program) in a new session.

    :param stdin: give the command a pipe for stdin; otherwise ``devnull``
        (an open ``/dev/null``), so a read sees end of file at once.
    :param pidfd: open the command's pidfd now; ``False`` leaves
        :attr:`Spawned.pidfd` None, for a caller that opens it only when it
        needs one (:func:`pidfdOpen`, while it has not reaped the pid).
    :param window: ``(rows, cols)``: start it on a new pseudo-terminal of
        that size instead (:func:`spawnOnTerminal`); ``stdin`` is then moot.
    :raises OSError: the command could not be started (no such program,
        permission denied, no such directory, out of processes); nothing is
        left open then.
    """
    if window is not None:
        return spawnOnTerminal(executable, argv, env=env, cwd=cwd, window=window, pidfd=pidfd)
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


def spawnOnTerminal(
    executable: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str,
    window: tuple[int, int],
    pidfd: bool = True,
) -> Spawned:
    """Start ``argv`` as :func:`spawn` does, on a new pseudo-terminal of
    ``window`` (rows, columns), set before it starts: its stdin, stdout and
    stderr, and its session's controlling terminal (PROTOCOL.md section 5).

    The :class:`Spawned` has the terminal's master end as ``stdout`` (what the
    command writes) and a second descriptor of it as ``stdin`` (keystrokes;
    a reactor registers one object per descriptor), both non-blocking;
    ``stderr`` is -1 (the terminal merges the streams) and ``terminal`` is set.

    Making the terminal the controlling one takes an ``ioctl`` in the child
    between ``setsid`` and ``exec``: Python's ``preexec_fn``, which starts the
    child with ``fork`` instead of ``vfork``. Only terminals pay for it.
    """
    master, slave = _pty.openTerminal(*window)
    try:
        keys = os.dup(master)
    except BaseException:
        os.close(master)
        os.close(slave)
        raise
    try:
        popen = _start(
            executable,
            argv,
            env=env,
            cwd=cwd,
            fds=(slave, slave, slave),
            preexec=_pty.takeControllingTerminal,
        )
    except BaseException:
        os.close(master)
        os.close(keys)
        raise
    finally:
        # Only the command holds the slave end: when it and its children have
        # all closed it, reading the master end says so (EIO).
        os.close(slave)
    spawned = Spawned(
        popen,
        stdin=keys,
        stdout=master,
        stderr=-1,
        pidfd=pidfdOpen(popen.pid) if pidfd else None,
    )
    spawned.terminal = True
    return spawned


def _start(
    executable: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str,
    fds: tuple[int, int, int],
    preexec: Callable[[], None] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a new session in ``cwd`` with ``fds`` as its 0, 1 and 2
    and no other descriptor of ours, every signal at its default; ``preexec``
    runs in the child just before ``exec``."""
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
        # Unsafe with threads in general (the child of a fork may need a lock
        # another thread held); what runs here is one ioctl through a C call,
        # with the GIL the forking thread holds: what Twisted's usePTY does too.
        preexec_fn=preexec,  # noqa: PLW1509
    )


def startHelper(
    argv: Sequence[str], *, stdin: int, devnull: int, env: Mapping[str, str]
) -> Spawned:
    """Start a helper of the server (not a client's command) in a session of its own.

    Its stdin is ``stdin``, its stdout ``devnull`` and its stderr the
    server's; it starts in the server's directory (the guardian moves to
    ``/`` itself). The caller reaps it (:meth:`Spawned.poll`).

    Started with ``posix_spawn``, not :class:`subprocess.Popen`: a helper
    such as the guardian outlives the server on purpose, and a ``Popen``
    collected while its process runs (at the server's exit, or a test
    session's) warns that it is "still running". Only the descriptors the
    server made inheritable reach it (Python makes every other one
    close-on-exec), which are its 0, 1 and 2.
    """
    pid = os.posix_spawn(
        argv[0],
        list(argv),
        dict(env),
        file_actions=[(os.POSIX_SPAWN_DUP2, stdin, 0), (os.POSIX_SPAWN_DUP2, devnull, 1)],
        setsid=True,
        setsigdef=_DEFAULT_SIGNALS,
    )
    return Spawned(pid, stdin=None, stdout=-1, stderr=-1, pidfd=pidfdOpen(pid))


#: The signals Python ignores and a child it starts gets back at their default
#: (as :class:`subprocess.Popen` does with ``restore_signals``).
_DEFAULT_SIGNALS: Final = tuple(
    getattr(signal, name) for name in ("SIGPIPE", "SIGXFZ", "SIGXFSZ") if hasattr(signal, name)
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
