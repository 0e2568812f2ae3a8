"""Process-wide settings of a ``twistd netproto`` server, applied once at start.

They concern the whole process, not one service, so they live here and
:func:`netproto.tap.makeService` applies them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import pwd
import resource
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from twisted.application.service import Service
from twisted.logger import Logger

log = Logger()


def raiseFileLimit() -> int:
    """Raise the soft limit on open files to the hard limit; every client is a descriptor.

    Returns the limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            log.warn("netproto: cannot raise the open-file limit above {soft}", soft=soft)
    return soft


#: glibc ``mallopt`` parameter numbers (``malloc.h``).
M_TRIM_THRESHOLD: Final = -1
M_MMAP_THRESHOLD: Final = -3
#: Allocations below this come from the heap rather than each from its own
#: ``mmap``: above the largest read the framed transports make
#: (:data:`netproto.framing.MAX_READ_SIZE`, 1 MiB).
MMAP_THRESHOLD: Final = 2 * 1024 * 1024
#: Free memory at the top of the heap kept rather than given back to the
#: kernel at once: the few MiB an upload cycles through per batch.
TRIM_THRESHOLD: Final = 16 * 1024 * 1024
M_ARENA_MAX: Final = -8
#: Malloc arenas at most: the reactor thread's and one that the worker
#: threads share. glibc gives each new thread an arena of its own (up to 8
#: per core), and each keeps what it freed up to the trim threshold: the
#: server's RSS grew with every listing or download that landed on a thread
#: not used before (7.9 MB over 8 listings of 10,000 files, against 2.5 MB
#: with two arenas, flat after the second; docs/performance.md). The worker
#: threads hold the GIL while they allocate, so they seldom wait for each
#: other's arena.
ARENA_MAX: Final = 2


def tuneAllocator() -> bool:
    """Keep the C allocator from mapping and unmapping every large read
    buffer, and from growing an arena per thread (:data:`ARENA_MAX`).

    Process-wide, so it is set here, once, by ``twistd netproto``. An upload
    arrives as reads of up to 1 MiB, each a new ``bytes`` object
    that lives until both lanes are done with it. glibc serves blocks over
    its mmap threshold (128 KiB at start, raised only as such blocks are
    freed) with a fresh ``mmap`` each and gives them back with ``munmap``: a
    page fault per 4 KiB and a TLB shootdown across the worker threads per
    read, about a third more CPU for a 1 GiB upload on a fresh server. Fixing
    the thresholds (the documented ``mallopt`` knobs, also settable as
    ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``) serves them from
    the heap, which they then reuse. Process-wide, and it keeps at most
    :data:`TRIM_THRESHOLD` of freed memory. Returns whether it was applied
    (not on other C libraries, nor when the environment already sets them:
    ``MALLOC_ARENA_MAX`` alone keeps the operator's arena count and tunes
    the rest).
    """
    if any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if "MALLOC_ARENA_MAX" not in os.environ:
        mallopt(M_ARENA_MAX, ARENA_MAX)
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )


@dataclass(frozen=True)
class RunAs:
    """The user a server started as root will run as once it has bound its ports
    (``twistd --uid/--gid``): twistd switches to it after every service's
    ``privilegedStartService``.

    :ivar uid: its user id.
    :ivar gid: its group id (``--gid``, else the user's primary group).
    :ivar name: its name, home and login shell, from the password database
        (its id and ``/`` when it has no entry).
    """

    uid: int
    gid: int
    name: str
    home: str
    shell: str

    @classmethod
    def of(cls, uid: int, gid: int | None = None) -> RunAs:
        try:
            entry = pwd.getpwuid(uid)
        except KeyError:
            return cls(uid, uid if gid is None else gid, str(uid), "/", "")
        return cls(
            uid, entry.pw_gid if gid is None else gid, entry.pw_name, entry.pw_dir, entry.pw_shell
        )


def plannedDrop(twistdOptions: Mapping[str, Any] | None) -> RunAs | None:
    """Whom ``twistd`` will run the server as after binding, if it drops root:
    ``--uid`` given (not ``--euid``, which keeps the real uid) while running as
    root, to another user. None otherwise (the server stays who it is)."""
    if twistdOptions is None or os.getuid() != 0:
        return None
    uid = twistdOptions.get("uid")
    if uid is None or uid == 0 or twistdOptions.get("euid"):
        return None
    return RunAs.of(int(uid), twistdOptions.get("gid"))


def handOver(root: Path, user: RunAs) -> int:
    """Give ``root`` and what the server made in it as root to ``user``: every
    entry owned by root, not descending into directories ``user`` already owns
    (what it made there while running is its own). Symbolic links are changed
    themselves, never followed. Returns how many entries changed owner.

    Run once, as root, after the services have started (their directories and
    files exist) and before twistd drops root, so that the server, running as
    ``user``, can use its token, its certificate, its upload directory and its
    registry of running commands.
    """
    changed = 0
    pending = [root]
    while pending:
        path = pending.pop()
        try:
            info = path.lstat()
        except FileNotFoundError:
            continue
        if info.st_uid != 0:
            continue
        os.lchown(path, user.uid, user.gid)
        changed += 1
        if stat.S_ISDIR(info.st_mode):
            pending.extend(path.iterdir())
    return changed


def closedTo(path: Path, user: RunAs) -> Path | None:
    """The first directory above ``path`` that ``user`` may not enter (by its mode
    bits, for the user, its group or its supplementary groups), or None."""
    groups = set(os.getgrouplist(user.name, user.gid)) if user.name != str(user.uid) else set()
    groups.add(user.gid)
    for parent in reversed(path.resolve().parents):
        info = parent.stat()
        if info.st_uid == user.uid:
            allowed = info.st_mode & stat.S_IXUSR
        elif info.st_gid in groups:
            allowed = info.st_mode & stat.S_IXGRP
        else:
            allowed = info.st_mode & stat.S_IXOTH
        if not allowed:
            return parent
    return None


class HandOver(Service):
    """The last service of a server that drops root: hands its data dir over
    (:func:`handOver`) once every other service has started as root."""

    def __init__(self, root: Path, user: RunAs) -> None:
        self.root = root
        self.user = user

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        changed = handOver(self.root, self.user)
        closed = closedTo(self.root, self.user)
        if closed is not None:
            log.warn(
                "netproto: {user} may not enter {closed}, above the data dir {root}: "
                "what the server opens there by name once it runs as {user} will fail "
                "(give a --data-dir it can reach, e.g. /var/lib/netproto)",
                user=self.user.name,
                closed=str(closed),
                root=str(self.root),
            )
        log.info(
            "netproto: runs as {user} (uid {uid}, gid {gid}) once its ports are bound; "
            "{root} is its own ({changed} entries handed over)",
            user=self.user.name,
            uid=self.user.uid,
            gid=self.user.gid,
            root=str(self.root),
            changed=changed,
        )
