"""A pids cgroup per command (cgroup v1): a bound on its processes, and every one of them found.

A process group is what a command *asks* to be; a cgroup is what it *is*:
a process cannot leave it (``setsid`` and double forks do not help), and its
``pids.max`` bounds how many tasks (processes and threads) it may have at
once, which ``RLIMIT_NPROC`` cannot do for root. Where the server may create
cgroups in the cgroup v1 ``pids`` hierarchy (root, or a delegated subtree),
each command runs in one:

* the server's own pids cgroup (*home*) gets one directory per server
  instance (named by :func:`netproto.exec.registry.instanceName`), and in it
  one cgroup per running command, named by a number and reused (a ``mkdir``
  and ``rmdir`` per command would cost 60 µs);
* placement has no race: the reactor thread moves *itself* into the
  command's cgroup (writing ``0`` to a cgroup's ``tasks`` moves the calling
  thread alone, without the lock that moving a whole process takes), starts
  the command, whose first process is then born in the cgroup, and moves back.
  Writing the child's pid to ``cgroup.procs`` after it started would let it
  fork before it is moved (and costs six times as much). Measured here:
  13 µs per command for the two moves;
* a cgroup is reused once it is empty. One that still has members when its
  command's group is gone (processes that left the group with ``setsid``) has
  them sent ``SIGTERM`` and is set aside; :meth:`PidsCgroups.sweep` sends
  ``SIGKILL`` to what is still there after the grace period, and takes the
  cgroup back once it is empty. So with cgroups nothing of a command outlives
  it, not even what left its process group.

What ends the members when the server dies is :mod:`netproto.exec.guardian`;
:func:`endCgroups` is how. cgroup v2 is not used: enabling the ``pids``
controller below the server's own cgroup needs the server moved into a leaf
first, which is the service manager's business (see ``docs/exec.md``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from collections.abc import Callable, Iterable
from typing import Final, TypeVar

T = TypeVar("T")

#: How often :func:`endCgroups` looks whether the members have gone.
POLL: Final = 0.05
#: After ``SIGKILL``, how long :func:`endCgroups` waits for the members to be gone.
KILL_WAIT: Final = 5.0


def _unescape(field: str) -> str:
    """A path from ``/proc/self/mountinfo`` (spaces and the like are octal escapes)."""
    return field.encode().decode("unicode_escape").encode("latin-1").decode("utf-8", "replace")


def pidsHome(
    cgroupFile: str = "/proc/self/cgroup", mountinfo: str = "/proc/self/mountinfo"
) -> str | None:
    """The directory of this process's own cgroup in the v1 ``pids`` hierarchy, or None."""
    own = None
    try:
        with open(cgroupFile) as f:
            for line in f:
                parts = line.rstrip("\n").split(":", 2)
                if len(parts) == 3 and "pids" in parts[1].split(","):
                    own = parts[2]
        if own is None:
            return None
        with open(mountinfo) as f:
            for line in f:
                fields = line.split()
                if "-" not in fields:
                    continue
                sep = fields.index("-")
                if fields[sep + 1] != "cgroup" or "pids" not in fields[sep + 3].split(","):
                    continue
                root, mountPoint = _unescape(fields[3]), _unescape(fields[4])
                if root not in ("/", own) and not own.startswith(root + "/"):
                    continue
                inside = own[len(root) :] if root != "/" else own
                return os.path.normpath(mountPoint + "/" + inside.lstrip("/"))
    except OSError:
        return None
    return None


def members(cgroup: str) -> list[int]:
    """The pids of the processes in ``cgroup`` (read afresh: a kept descriptor of
    ``cgroup.procs`` keeps showing the list of its first read, in v1)."""
    try:
        with open(os.path.join(cgroup, "cgroup.procs"), "rb") as f:
            return [int(pid) for pid in f.read().split()]
    except (OSError, ValueError):
        return []


def taskCount(cgroup: str) -> int | None:
    """How many tasks (zombies included) count against ``cgroup``'s ``pids.max``."""
    try:
        with open(os.path.join(cgroup, "pids.current"), "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def _write(path: str, text: str) -> bool:
    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError:
        return False
    return True


def _signalAll(cgroups: Iterable[str], sig: int) -> int:
    """Send ``sig`` to every member of every cgroup; how many were there."""
    count = 0
    for cgroup in cgroups:
        for pid in members(cgroup):
            try:
                os.kill(pid, sig)
                count += 1
            except OSError:
                continue
    return count


def _waitEmpty(cgroups: list[str], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while any(members(c) for c in cgroups):
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL)
    return True


def endCgroups(instance: str, grace: float) -> int:
    """End every process in the command cgroups of ``instance`` and remove them.

    ``SIGTERM``, then after at most ``grace`` seconds ``pids.max`` 0 (no more
    forks) and ``SIGKILL`` until none is left. A blocking call, for the
    guardian. Returns how many processes were signalled at first.
    """
    try:
        cgroups = [
            entry.path for entry in os.scandir(instance) if entry.is_dir(follow_symlinks=False)
        ]
    except OSError:
        return 0
    found = _signalAll(cgroups, signal.SIGTERM)
    if found and not _waitEmpty(cgroups, grace):
        for cgroup in cgroups:
            _write(os.path.join(cgroup, "pids.max"), "0")
        deadline = time.monotonic() + KILL_WAIT
        while _signalAll(cgroups, signal.SIGKILL) and time.monotonic() < deadline:
            time.sleep(POLL)
    for path in [*cgroups, instance]:
        try:
            os.rmdir(path)
        except OSError:
            continue
    return found


class CommandCgroup:
    """One command's cgroup: its directory, and its ``tasks`` and ``pids.current``
    files kept open (opening a cgroup file costs 30 µs, a ``pread`` 1.5)."""

    __slots__ = ("current", "path", "retiredAt", "tasks")

    def __init__(self, path: str, tasks: int, current: int) -> None:
        self.path = path
        self.tasks = tasks
        self.current = current
        #: When its command's group was gone with members left here.
        self.retiredAt = 0.0

    def taskCount(self) -> int | None:
        """How many tasks count against its ``pids.max``; None if it is gone."""
        try:
            return int(os.pread(self.current, 32, 0))
        except (OSError, ValueError):
            return None

    def close(self) -> None:
        os.close(self.tasks)
        os.close(self.current)


class PidsCgroups:
    """This server's command cgroups; see the module docstring.

    :param home: the server's own pids cgroup.
    :param name: the instance directory's name
        (:func:`netproto.exec.registry.instanceName`).
    :param maxTasks: ``pids.max`` of every command cgroup.
    :param grace: seconds between ``SIGTERM`` and ``SIGKILL`` for what is left
        in a cgroup when its command's group is gone.
    :param clock: seconds, for the grace period.
    :raises OSError: the server may not create or enter cgroups there.
    """

    def __init__(
        self,
        home: str,
        name: str,
        maxTasks: int,
        grace: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.home = home
        self.instance = os.path.join(home, name)
        self.maxTasks = maxTasks
        self.grace = grace
        self.clock = clock
        self._homeTasks = os.open(os.path.join(home, "tasks"), os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.mkdir(self.instance, 0o755)
        except OSError:
            os.close(self._homeTasks)
            raise
        self._free: list[CommandCgroup] = []
        #: Cgroups whose command has ended but which still have members.
        self.retired: list[CommandCgroup] = []
        self._made = 0
        self._closed = False

    @classmethod
    def create(
        cls,
        name: str,
        maxTasks: int,
        grace: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        home: str | None = None,
    ) -> PidsCgroups | None:
        """The command cgroups of this server, or None where it may not have them."""
        home = home if home is not None else pidsHome()
        if home is None:
            return None
        try:
            cgroups = cls(home, name, maxTasks, grace, clock)
            cgroups.release(cgroups.acquire())  # one made and entered now: any failure shows
        except OSError:
            return None
        return cgroups

    def acquire(self) -> CommandCgroup:
        """An empty command cgroup (a kept one, else a new one).

        :raises OSError: ``EAGAIN`` when none can be made (the client hears
            ``busy``: it is not the program's fault).
        """
        if self._free:
            return self._free.pop()
        self._made += 1
        path = os.path.join(self.instance, str(self._made))
        opened: list[int] = []
        try:
            os.mkdir(path, 0o755)
            if not _write(os.path.join(path, "pids.max"), str(self.maxTasks)):
                raise OSError(errno.EIO, "cannot set pids.max")
            for name, mode in (("tasks", os.O_WRONLY), ("pids.current", os.O_RDONLY)):
                opened.append(os.open(os.path.join(path, name), mode | os.O_CLOEXEC))
        except OSError as e:
            for fd in opened:
                os.close(fd)
            with contextlib.suppress(OSError):
                os.rmdir(path)
            raise OSError(
                errno.EAGAIN, f"cannot make a cgroup in {self.instance}: {e.strerror}"
            ) from None
        return CommandCgroup(path, *opened)

    def startInside(self, cgroup: CommandCgroup, start: Callable[[], T]) -> T:
        """``start()`` with the calling thread in ``cgroup``, so that what it
        starts is born there; the thread is back home when this returns."""
        try:
            os.write(cgroup.tasks, b"0")
        except OSError as e:
            # Not the program's fault: the client hears "busy", not "not-found".
            raise OSError(errno.EAGAIN, f"cannot enter {cgroup.path}: {e.strerror}") from None
        try:
            return start()
        finally:
            os.write(self._homeTasks, b"0")

    def release(self, cgroup: CommandCgroup) -> None:
        """The command of ``cgroup`` is gone: keep it for the next, or end what
        is left in it (``SIGTERM`` now) and set it aside."""
        if self._keep(cgroup):
            cgroup.retiredAt = self.clock()
            _signalAll([cgroup.path], signal.SIGTERM)
            self.retired.append(cgroup)

    def _keep(self, cgroup: CommandCgroup) -> bool:
        """Reuse ``cgroup`` if it is empty, drop it if it cannot be; whether it has members."""
        count = cgroup.taskCount()
        if self._closed or count is None:
            self._drop(cgroup)  # closing, or the cgroup was removed under us
        elif count == 0:
            self._free.append(cgroup)
        else:
            return True
        return False

    def sweep(self) -> None:
        """Take back the set-aside cgroups that have emptied; ``SIGKILL`` to what
        is still in those set aside longer than the grace period."""
        retired, self.retired = self.retired, []
        now = self.clock()
        for cgroup in retired:
            if self._keep(cgroup):
                if now - cgroup.retiredAt >= self.grace:
                    _signalAll([cgroup.path], signal.SIGKILL)
                self.retired.append(cgroup)

    def _drop(self, cgroup: CommandCgroup) -> None:
        cgroup.close()
        with contextlib.suppress(OSError):  # members left: the guardian ends them
            os.rmdir(cgroup.path)

    def close(self) -> None:
        """Remove the empty cgroups (what still has members is the guardian's)."""
        if self._closed:
            return
        self._closed = True
        free, self._free = self._free, []
        retired, self.retired = self.retired, []
        for cgroup in [*free, *retired]:
            self._drop(cgroup)
        with contextlib.suppress(OSError):
            os.rmdir(self.instance)
        os.close(self._homeTasks)
