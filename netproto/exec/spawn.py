"""Starting a command in a session of its own, and ending its process group.

This module is the one place where exec touches processes directly. Why not
``reactor.spawnProcess``: it cannot start a new session or process group (no
``setsid``), its fork path costs more than ``subprocess``'s ``vfork``, and it
reads the output pipes 8 KiB at a time. Instead:

* :func:`spawn` starts the command with the C library's ``posix_spawn``
  (:class:`PosixSpawner`, through :mod:`ctypes`: ``POSIX_SPAWN_SETSID`` so its
  pid is also its session and process group id, a ``chdir`` and a
  ``closefrom(3)`` file action, every signal back to its default action and
  an empty signal mask). That is the ``vfork``-like path ``subprocess`` also
  takes, without the Python-level work of :class:`subprocess.Popen` around it,
  which cost a fifth of a short command's round trip. Where the C library
  lacks ``posix_spawn_file_actions_addchdir_np`` or ``..._addclosefrom_np``
  (before glibc 2.34, musl, other systems), :class:`subprocess.Popen` with
  ``start_new_session=True`` and ``close_fds`` does the same. Either way an
  exec failure is an :class:`OSError` here, not an exit status 1 later. The
  pipes are ours: the parent's ends are non-blocking; an output pipe is
  enlarged (:func:`setPipeSize`) only once a read finds it full, so a short
  command costs no ``fcntl`` and no larger pipe.
* Exit is watched through a pidfd (Linux 5.3 and later): readable once the
  child has exited, so the reactor needs no ``SIGCHLD`` handler of ours and
  Twisted's own reaping (which only waits for the pids it spawned) is left
  alone. :meth:`Spawned.poll` reaps the command's first process
  (``waitpid(WNOHANG)``).
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
import errno
import fcntl
import functools
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Final

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

# posix_spawn flags (spawn.h; the same values in glibc and musl).
_POSIX_SPAWN_SETSIGDEF: Final = 0x04
_POSIX_SPAWN_SETSIGMASK: Final = 0x08
_POSIX_SPAWN_SETSID: Final = 0x80
#: Bytes reserved for ``posix_spawnattr_t``, ``posix_spawn_file_actions_t``
#: and ``sigset_t``: more than any C library's (glibc's are 336, 80 and 128).
_OPAQUE_SIZE: Final = 1024


class Spawned:
    """A started command: its pid (also its session and process group id) and
    the parent's ends of its pipes, non-blocking and owned by the caller."""

    __slots__ = ("_popen", "pid", "pidfd", "returncode", "stderr", "stdin", "stdout")

    def __init__(
        self,
        pid: int,
        *,
        stdin: int | None,
        stdout: int,
        stderr: int,
        pidfd: int | None,
        popen: subprocess.Popen[bytes] | None = None,
    ) -> None:
        self.pid = pid
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.pidfd = pidfd
        #: Like :attr:`subprocess.Popen.returncode`: ``-N`` for signal N.
        self.returncode: int | None = None
        self._popen = popen

    def poll(self) -> int | None:
        """Reap the command's first process if it has exited; its return code or None."""
        if self.returncode is not None:
            return self.returncode
        if self._popen is not None:
            self.returncode = self._popen.poll()
            return self.returncode
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            # Reaped by someone else: the status is lost (Popen says 0 too).
            self.returncode = 0
            return 0
        if pid == 0:
            return None
        self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


def _voidp(buffer: ctypes.Array[ctypes.c_char]) -> int:
    return ctypes.addressof(buffer)


class PosixSpawner:
    """``posix_spawn`` with ``setsid``, ``chdir`` and ``closefrom`` through :mod:`ctypes`.

    The attributes (flags, signal mask, default signals) are the same for
    every command, so they are made once. :meth:`available` is None where the
    C library lacks a needed function.
    """

    def __init__(self, libc: ctypes.CDLL) -> None:
        vp, ci = ctypes.c_void_p, ctypes.c_int
        self._spawn = libc.posix_spawn
        self._spawn.argtypes = [vp, ctypes.c_char_p, vp, vp, vp, vp]
        self._spawn.restype = ci
        self._faInit = libc.posix_spawn_file_actions_init
        self._faDestroy = libc.posix_spawn_file_actions_destroy
        self._dup2 = libc.posix_spawn_file_actions_adddup2
        self._chdir = libc.posix_spawn_file_actions_addchdir_np
        self._closefrom = libc.posix_spawn_file_actions_addclosefrom_np
        signatures: tuple[tuple[Any, list[Any]], ...] = (
            (self._faInit, [vp]),
            (self._faDestroy, [vp]),
            (self._dup2, [vp, ci, ci]),
            (self._chdir, [vp, ctypes.c_char_p]),
            (self._closefrom, [vp, ci]),
        )
        for f, args in signatures:
            f.argtypes, f.restype = args, ci
        self._attr = ctypes.create_string_buffer(_OPAQUE_SIZE)
        empty = ctypes.create_string_buffer(_OPAQUE_SIZE)
        every = ctypes.create_string_buffer(_OPAQUE_SIZE)
        failed = (
            libc.posix_spawnattr_init(self._attr)
            or libc.sigemptyset(empty)
            or libc.sigfillset(every)
            or libc.posix_spawnattr_setsigmask(self._attr, empty)
            # Every signal back to its default: Python ignores SIGPIPE and
            # SIGXFSZ, and a server started under nohup ignores SIGHUP.
            or libc.posix_spawnattr_setsigdefault(self._attr, every)
            or libc.posix_spawnattr_setflags(
                self._attr,
                ctypes.c_short(
                    _POSIX_SPAWN_SETSID | _POSIX_SPAWN_SETSIGMASK | _POSIX_SPAWN_SETSIGDEF
                ),
            )
        )
        if failed:
            raise OSError(ctypes.get_errno(), "posix_spawnattr setup failed")
        self._attrp = _voidp(self._attr)
        self._actions: dict[tuple[tuple[int, ...], bytes], ctypes.Array[ctypes.c_char]] = {}

    @staticmethod
    @functools.cache
    def available() -> PosixSpawner | None:
        """The spawner of this process's C library (Linux), or None."""
        if not sys.platform.startswith("linux"):
            return None
        try:
            return PosixSpawner(ctypes.CDLL(None, use_errno=True))
        except (OSError, AttributeError):
            return None

    def spawn(
        self,
        executable: bytes,
        argv: list[bytes],
        envp: list[bytes],
        cwd: bytes,
        fds: Sequence[int],
    ) -> int:
        """Start ``executable``; the child's fds 0, 1, 2 are ``fds`` (each >= 3),
        every other fd is closed. The pid; :class:`OSError` if it could not start."""
        fa = self._fileActions(tuple(fds[:3]), cwd)
        cargv = (ctypes.c_char_p * (len(argv) + 1))(*argv, None)
        cenv = (ctypes.c_char_p * (len(envp) + 1))(*envp, None)
        pid = ctypes.c_int(0)
        err = self._spawn(ctypes.addressof(pid), executable, fa, self._attrp, cargv, cenv)
        if err:
            raise OSError(err, os.strerror(err), os.fsdecode(executable))
        return pid.value

    #: File action lists kept for reuse (see :meth:`_fileActions`).
    keepActions: int = 8

    def _fileActions(self, fds: tuple[int, ...], cwd: bytes) -> int:
        """The file actions (dup2 onto 0, 1, 2, chdir, closefrom) for ``fds`` and ``cwd``.

        A list of actions is only read by ``posix_spawn``, and the pipe
        descriptors of one command are usually those of the one before
        (closed, then reused), so the lists are kept per ``(fds, cwd)``:
        building one costs eight C calls and, in glibc, a ``getrlimit`` per
        action.
        """
        key = (fds, cwd)
        kept = self._actions.get(key)
        if kept is not None:
            return _voidp(kept)
        actions = ctypes.create_string_buffer(_OPAQUE_SIZE)
        fa = _voidp(actions)
        if self._faInit(fa):
            raise OSError(errno.ENOMEM, os.strerror(errno.ENOMEM))
        err = (
            self._dup2(fa, fds[0], 0)
            or self._dup2(fa, fds[1], 1)
            or self._dup2(fa, fds[2], 2)
            or self._chdir(fa, cwd)
            or self._closefrom(fa, 3)
        )
        if err:
            self._faDestroy(fa)
            raise OSError(err, os.strerror(err))
        if len(self._actions) >= self.keepActions:
            for old in self._actions.values():
                self._faDestroy(_voidp(old))
            self._actions.clear()
        self._actions[key] = actions
        return fa


def _aboveStdio(fd: int, opened: list[int]) -> int:
    """``fd`` if it is 3 or more, else a close-on-exec copy that is (so that
    the child's dup2 onto 0, 1, 2 cannot overwrite one of its own sources)."""
    if fd >= 3:
        return fd
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    opened.append(high)
    return high


def _encoded(text: str) -> bytes:
    data = os.fsencode(text)
    if b"\0" in data:
        raise ValueError("embedded null byte")
    return data


def spawn(
    executable: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str,
    stdin: bool,
    devnull: int,
    spawner: PosixSpawner | bool | None = True,
    pidfd: bool = True,
) -> Spawned:
    """Start ``argv`` (``executable`` is the already-resolved program) in a new session.

    :param stdin: give the command a pipe for stdin; otherwise ``devnull``
        (an open ``/dev/null``), so a read sees end of file at once.
    :param spawner: ``True`` for :meth:`PosixSpawner.available`, ``False``
        (or None) for :class:`subprocess.Popen`.
    :param pidfd: open the command's pidfd now; ``False`` leaves
        :attr:`Spawned.pidfd` None, for a caller that opens it only when it
        needs one (:func:`pidfdOpen`, while it has not reaped the pid).
    :raises OSError: the command could not be started (no such program,
        permission denied, no such directory, out of processes); nothing is
        left open then.
    """
    if spawner is True:
        spawner = PosixSpawner.available()
    opened: list[int] = []
    popen: subprocess.Popen[bytes] | None = None
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
        childIn = inR if stdin else devnull
        pid, popen = _start(
            spawner,
            executable,
            argv=argv,
            env=env,
            cwd=cwd,
            fds=(childIn, outW, errW),
            opened=opened,
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
        pid=pid,
        stdin=inW if stdin else None,
        stdout=outR,
        stderr=errR,
        pidfd=pidfdOpen(pid) if pidfd else None,
        popen=popen,
    )


def _start(
    spawner: PosixSpawner | bool | None,
    executable: str,
    *,
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: str,
    fds: tuple[int, int, int],
    opened: list[int],
) -> tuple[int, subprocess.Popen[bytes] | None]:
    """Start ``argv`` in a new session with ``fds`` as its 0, 1 and 2 (copies
    made to keep them apart from 0-2 are added to ``opened``): the pid, and the
    :class:`subprocess.Popen` when that was the way."""
    if isinstance(spawner, PosixSpawner):
        pid = spawner.spawn(
            _encoded(executable),
            [_encoded(a) for a in argv],
            [_encoded(f"{k}={v}") for k, v in env.items()],
            _encoded(cwd),
            [_aboveStdio(fd, opened) for fd in fds],
        )
        return pid, None
    popen = subprocess.Popen(
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
    return popen.pid, popen


def startHelper(
    argv: Sequence[str], *, stdin: int, devnull: int, env: Mapping[str, str]
) -> Spawned:
    """Start a helper of the server (not a client's command) in a session of its own.

    Its stdin is ``stdin``, its stdout ``devnull`` and its stderr the
    server's; it starts in ``/``. The caller reaps it (:meth:`Spawned.poll`).
    """
    opened: list[int] = []
    try:
        pid, popen = _start(
            PosixSpawner.available() or False,
            argv[0],
            argv=argv,
            env=env,
            cwd="/",
            fds=(stdin, devnull, 2),
            opened=opened,
        )
    finally:
        for fd in opened:
            os.close(fd)
    return Spawned(pid=pid, stdin=None, stdout=-1, stderr=-1, pidfd=pidfdOpen(pid), popen=popen)


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
