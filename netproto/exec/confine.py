"""Commands die with the server: their confinement, and the server's side of the guardian.

A server that is killed (``SIGKILL``, a crash, the out-of-memory killer) runs
no shutdown code, so its commands and their children would keep running as
orphans, even after a restart. Two things prevent that:

* :class:`Confinement` keeps every command where it can be found after the
  server is gone: in a pids cgroup of its own when the server may create
  them (:mod:`netproto.exec.cgroups`, which also bounds its processes), else
  in a :class:`~netproto.exec.registry.GroupRegistry` file (its process group
  and start time). Without cgroups, a non-root server can bound a command's
  processes with ``RLIMIT_NPROC`` (which counts every process of the user).
* The *guardian* (:mod:`netproto.exec.guardian`), a small process
  started with the exec service, in a session of its own so that a signal to
  the server's process group does not reach it. Its stdin is the read end of a
  pipe whose write end only the server holds: however the server exits, the
  kernel closes that end, the guardian reads end of file, ends what the
  server left (``SIGTERM``, then ``SIGKILL`` after ``--exec-kill-grace``) and
  exits. At its start it first ends what dead servers left (their cgroups
  beside this server's, their registry files in the same data directory):
  that covers a guardian killed together with its server, at the next start.

The guardian holds nothing of the server's but that pipe, costs one idle
process, and nothing per command: the server never writes to it. If it dies
while the server runs, the server starts another (and logs it).
"""

from __future__ import annotations

import itertools
import os
import resource
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

import netproto
from netproto.exec import procs as _procs
from netproto.exec import registry as _registry
from netproto.exec import spawn as _spawn
from netproto.exec.cgroups import PidsCgroups
from netproto.exec.policy import DEFAULT_MAX_TASKS, ExecPolicy
from netproto.exec.spawn import Spawned
from netproto.exec.transport import ExitWatcher

#: Seconds before a guardian that died while the server runs is replaced: a
#: guardian that cannot start (or dies at once) is retried this often, not in a loop.
RESTART_DELAY: Final = 1.0
#: Without a pidfd, how often a guardian let go is looked at until it has
#: exited and is reaped (it holds nothing; this only keeps it from lingering
#: as a zombie).
REAP_LOOK: Final = 0.05
#: Where registry files live, under the server's data directory.
REGISTRY_DIR: Final = "exec-running"

log = Logger()
_instances = itertools.count(1)


def _noRelease() -> None:
    pass


class Confinement:
    """Where this server's commands are kept (see the module docstring).

    :param cgroups: a pids cgroup per command, or None.
    :param registry: the file recording the commands' groups (without cgroups), or None.
    :param nproc: ``RLIMIT_NPROC`` for each command (without cgroups, not root), or None.
    """

    def __init__(
        self,
        cgroups: PidsCgroups | None,
        registry: _registry.GroupRegistry | None,
        nproc: int | None,
    ) -> None:
        self.cgroups = cgroups
        self.registry = registry
        self.nproc = nproc

    @classmethod
    def create(
        cls, dataDir: Path, name: str, policy: ExecPolicy, clock: Callable[[], float]
    ) -> Confinement:
        """The confinement of one server instance called ``name``, as ``policy``
        says (``maxTasks``, ``cgroups``; ``maxProcs`` commands at once, ended
        after ``killGrace``); ``clock`` tells seconds."""
        cgroups = None
        if policy.cgroups:
            bound = DEFAULT_MAX_TASKS if policy.maxTasks is None else policy.maxTasks
            cgroups = PidsCgroups.create(name, bound, policy.killGrace, clock)
        if cgroups is not None:
            return cls(cgroups, None, None)
        registry = None
        try:
            directory = dataDir / REGISTRY_DIR
            directory.mkdir(mode=0o700, exist_ok=True)
            registry = _registry.GroupRegistry(str(directory / name), policy.maxProcs)
        except OSError as e:
            log.warn("exec: cannot record running commands in {dir}: {why}", dir=dataDir, why=e)
        # RLIMIT_NPROC counts all of the user's processes: only when asked for.
        nproc = policy.maxTasks if os.geteuid() != 0 else None
        return cls(None, registry, nproc)

    def describe(self) -> str:
        """What holds and bounds the commands, for the log."""
        if self.cgroups is not None:
            return (
                f"a pids cgroup per command under {self.cgroups.instance} "
                f"(at most {self.cgroups.maxTasks} tasks each)"
            )
        where = f"recorded in {self.registry.path}" if self.registry is not None else "not recorded"
        bound = (
            f"RLIMIT_NPROC {self.nproc} (all of this user's processes)"
            if self.nproc is not None
            else "no bound on a command's processes"
        )
        return f"process groups {where}; {bound}"

    def start(self, spawn: Callable[[], Spawned]) -> tuple[Spawned, Callable[[], None]]:
        """``spawn()`` inside the confinement: what it started, and what to call
        once the command's group is gone."""
        cgroups = self.cgroups
        if cgroups is not None:
            cgroup = cgroups.acquire()
            try:
                spawned = cgroups.startInside(cgroup, spawn)
            except BaseException:
                cgroups.release(cgroup)
                raise
            return spawned, lambda: cgroups.release(cgroup)
        spawned = spawn() if self.nproc is None else self._withNproc(self.nproc, spawn)
        if self.registry is None:
            return spawned, _noRelease
        record = self.registry.add(spawned.pid)
        if record is None:
            return spawned, _noRelease
        registry = self.registry
        return spawned, lambda: registry.remove(record)

    @staticmethod
    def _withNproc(nproc: int, spawn: Callable[[], Spawned]) -> Spawned:
        """``spawn()`` with ``RLIMIT_NPROC`` lowered for the child to inherit.

        The limit is the server's for the few microseconds of the call, so the
        child gets it from birth (setting it afterwards would race with its
        first forks); the server's own limit is put back at once.
        """
        soft, hard = resource.getrlimit(resource.RLIMIT_NPROC)
        limit = nproc if hard == resource.RLIM_INFINITY else min(nproc, hard)
        if soft != resource.RLIM_INFINITY and soft <= limit:
            return spawn()
        resource.setrlimit(resource.RLIMIT_NPROC, (limit, hard))
        try:
            return spawn()
        finally:
            resource.setrlimit(resource.RLIMIT_NPROC, (soft, hard))

    def sweep(self) -> None:
        """Take back the cgroups that emptied since their command ended."""
        if self.cgroups is not None:
            self.cgroups.sweep()

    def close(self) -> None:
        """No command runs any more: remove what recorded them."""
        if self.cgroups is not None:
            self.cgroups.close()
        if self.registry is not None:
            self.registry.close()

    def guardianArguments(self, dataDir: Path, grace: float) -> list[str]:
        """How to tell a guardian what to end (see :func:`main`)."""
        args = ["--grace", repr(grace), "--registries", str(dataDir / REGISTRY_DIR)]
        if self.cgroups is not None:
            args += ["--cgroups", self.cgroups.instance, "--cgroup-home", self.cgroups.home]
        if self.registry is not None:
            args += ["--registry", self.registry.path]
        return args


def instance() -> str:
    """A fresh instance name for this process (see :func:`netproto.exec.registry.instanceName`)."""
    pid = os.getpid()
    return _registry.instanceName(pid, _procs.startTime(pid) or 0, next(_instances))


class Guardian:
    """The server's side of its guardian process: started, watched, replaced, let go.

    :param reactor: ``IReactorFDSet`` and ``IReactorTime``.
    :param arguments: the guardian's options (:meth:`Confinement.guardianArguments`).
    :param devnull: an open ``/dev/null``, the guardian's stdout.
    """

    def __init__(self, reactor: Any, arguments: Sequence[str], devnull: int) -> None:
        self.reactor = reactor
        self.argv = [sys.executable, "-m", "netproto.exec.guardian", *arguments]
        self.devnull = devnull
        self.child: Spawned | None = None
        self._pipe: int | None = None
        self._watcher: ExitWatcher | None = None
        self._restart: IDelayedCall | None = None
        self._stopped = False

    @property
    def pid(self) -> int | None:
        return self.child.pid if self.child is not None else None

    def start(self) -> bool:
        """Start the guardian; whether it runs."""
        self._restart = None
        if self._stopped:
            return False
        # The guardian imports this very netproto, whatever sys.path the server had.
        env = dict(os.environ)
        home = str(Path(netproto.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [home, env.get("PYTHONPATH")]))
        # Nor a netproto in the server's directory (Python 3.11 and later).
        env["PYTHONSAFEPATH"] = "1"
        readEnd, writeEnd = os.pipe2(os.O_CLOEXEC)
        try:
            child = _spawn.startHelper(self.argv, stdin=readEnd, devnull=self.devnull, env=env)
        except OSError as e:
            os.close(writeEnd)
            log.warn(
                "exec: cannot start the guardian ({why}): commands will not end with "
                "the server if it is killed",
                why=e,
            )
            return False
        finally:
            os.close(readEnd)
        self.child, self._pipe = child, writeEnd
        if child.pidfd is not None:
            self._watcher = ExitWatcher(self.reactor, child.pidfd, self.check)
            child.pidfd = None
        return True

    def check(self) -> None:
        """If the guardian has exited, reap it, and replace it unless it was let
        go. Called when its pidfd says so, else by the factory's periodic look."""
        child = self.child
        if child is None or child.poll() is None:
            return
        self.child = None
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None
        if self._pipe is not None:
            os.close(self._pipe)
            self._pipe = None
        if not self._stopped:
            log.warn(
                "exec: the guardian (pid {pid}) exited with {code}; starting another",
                pid=child.pid,
                code=child.returncode,
            )
            self._restart = self.reactor.callLater(RESTART_DELAY, self.start)

    def stop(self) -> None:
        """Let the guardian go: it sees end of file, finds nothing left and exits
        (and is reaped when it has)."""
        self._stopped = True
        if self._restart is not None and self._restart.active():
            self._restart.cancel()
        self._restart = None
        if self._pipe is not None:
            os.close(self._pipe)
            self._pipe = None
        if self.child is not None and self._watcher is None:
            # No pidfd says when it has exited: look (it exits at once, or
            # once it has ended what was left, within the grace period).
            self._restart = self.reactor.callLater(REAP_LOOK, self._reapOnceExited)

    def _reapOnceExited(self) -> None:
        self._restart = None
        self.check()
        if self.child is not None:
            self._restart = self.reactor.callLater(REAP_LOOK, self._reapOnceExited)
