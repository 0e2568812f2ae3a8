"""Which commands this server runs, written where they outlive the server.

When the server dies without ending its commands (``SIGKILL``, a crash, the
out-of-memory killer), something else must find them:
:mod:`netproto.exec.guardian` at once, or the next server at its start. Each
server instance has a name, :func:`instanceName` (its pid and start time, so a
dead server's name is told from a live one's even after its pid is reused);
with cgroups, its commands are found in its cgroup directory of that name
(:mod:`netproto.exec.cgroups`); without, in a :class:`GroupRegistry`: a file of
that name in ``DATA_DIR/exec-running`` holding the process group and start
time of every running command.

The file is memory-mapped: recording a command is two stores into shared
memory (no system call beyond reading its start time), and what was stored
is in the kernel's page cache, so it is there for the guardian and the next
server whatever happened to this process.

Whose group is it? A group id is a pid, and pids are reused. The kernel never
gives a new process a pid that is still some group's id, so while any member
of a command's group lives, that id is the command's. A group is ended only
if its first process still lives with the start time recorded, or if no
process has that pid any more (then the members left are the command's,
unless all of them had exited and the pid went round ``pid_max`` and was
taken by the leader of a new group that has exited too, in the time between:
that is the risk this accepts). A process with that pid and another start
time means the command's group is long gone: it is left alone. What is ended
is the command's whole session (its first process started it, so its id is
the group's): the same holds of a session id, and a session also holds the
groups a job-control shell makes, one per job, on a terminal.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import signal
import time
from collections.abc import Iterable
from typing import Final

from netproto.exec import procs as _procs

#: How instance names start.
PREFIX: Final = "netproto-"
#: The first line of a registry file, then the boot it belongs to.
MAGIC: Final = b"netproto exec groups 1\n"
#: Bytes before the first record: :data:`MAGIC`, the boot id, zeros.
HEADER: Final = 64
#: Bytes of one record: the group id and the start time, two 64-bit integers.
RECORD: Final = 16
#: How often :func:`endGroups` looks whether the groups have gone.
POLL: Final = 0.05
#: After ``SIGKILL``, how long :func:`endGroups` waits for the groups to be gone.
KILL_WAIT: Final = 5.0


def bootId() -> bytes:
    """This boot's id: start times count from boot, so a record of another
    boot says nothing about any process of this one."""
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            return f.read().strip()
    except OSError:
        return b""


def instanceName(pid: int, start: int, n: int) -> str:
    """The name of one server instance (``n`` counts factory starts in one process)."""
    return f"{PREFIX}{pid}-{start}-{n}"


def instanceOwner(name: str) -> tuple[int, int] | None:
    """The pid and start time an instance name records, or None for another name."""
    parts = name.removeprefix(PREFIX).split("-")
    if not name.startswith(PREFIX) or len(parts) != 3 or not all(p.isdigit() for p in parts):
        return None
    return int(parts[0]), int(parts[1])


def stale(directory: str) -> list[str]:
    """The instance entries in ``directory`` whose server is dead."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    found = []
    for name in names:
        owner = instanceOwner(name)
        if owner is not None and _procs.startTime(owner[0]) != owner[1]:
            found.append(os.path.join(directory, name))
    return found


class GroupRegistry:
    """The running commands of one server instance, in a memory-mapped file.

    :param path: the file (created; it must not exist).
    :param size: how many commands it can hold at once.
    """

    def __init__(self, path: str, size: int) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            length = HEADER + RECORD * size
            os.ftruncate(fd, length)
            os.pwrite(fd, MAGIC + bootId(), 0)
            self._map = mmap.mmap(fd, length)
        except OSError:
            os.unlink(path)
            raise
        finally:
            os.close(fd)
        self._records = memoryview(self._map)[HEADER:].cast("q")
        self._free = list(range(size - 1, -1, -1))

    def add(self, pgid: int) -> int | None:
        """Record the command whose group is ``pgid`` (its first process not yet
        reaped); its record's number, or None when it cannot be recorded."""
        start = _procs.startTime(pgid)
        if start is None or not self._free:
            return None
        i = self._free.pop()
        # The start time first: a record with a group id is whole.
        self._records[2 * i + 1] = start
        self._records[2 * i] = pgid
        return i

    def remove(self, i: int) -> None:
        """The command of record ``i`` is gone."""
        self._records[2 * i] = 0
        self._free.append(i)

    def close(self) -> None:
        """Every command is gone: the file goes."""
        if self._map.closed:
            return
        self._records.release()
        self._map.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def recorded(path: str) -> list[tuple[int, int]]:
    """The ``(group id, start time)`` records of a registry file of this boot."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return []
    if not data.startswith(MAGIC + bootId()) or not bootId():
        return []
    body = data[HEADER : HEADER + (len(data) - HEADER) // RECORD * RECORD]
    if not body:
        return []
    numbers = memoryview(body).cast("q")
    return [(numbers[i], numbers[i + 1]) for i in range(0, len(numbers), 2) if numbers[i] > 0]


def _ours(pgid: int, start: int) -> bool:
    """Whether group ``pgid`` is still the command recorded with ``start`` (see the module)."""
    now = _procs.startTime(pgid)
    return now is None or now == start


def _signal(sids: Iterable[int], sig: int) -> None:
    for sid in sids:
        _procs.killSession(sid, sig)


def endGroups(records: Iterable[tuple[int, int]], grace: float) -> int:
    """End the recorded commands that are still theirs, each its whole session
    (its group, and the groups a job-control shell on a terminal made in it):
    ``SIGHUP`` (what a terminal's hang-up sends, which an interactive shell
    obeys), ``SIGTERM`` and ``SIGCONT``, then ``SIGKILL`` to those with members
    after ``grace`` seconds. A blocking call, for the guardian. Returns how many
    sessions had members."""
    targets = {pgid for pgid, start in records if _ours(pgid, start)}
    alive = _procs.liveSessions(targets)
    for ending in (signal.SIGHUP, signal.SIGTERM, signal.SIGCONT):
        _signal(alive, ending)
    found = len(alive)
    for sig, wait in ((signal.SIGKILL, grace), (None, KILL_WAIT)):
        deadline = time.monotonic() + wait
        while alive and time.monotonic() < deadline:
            time.sleep(POLL)
            alive = _procs.liveSessions(alive)
        if sig is not None:
            _signal(alive, sig)
    return found
