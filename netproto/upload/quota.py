"""Per-user upload quotas and the cap on parallel uploads per user.

What a user stores is bounded in files and bytes (``--upload-quota-files``,
``--upload-quota-bytes``), and how many uploads a user has in progress at
once (``--upload-max-per-user``). PROTOCOL.md has no code for a quota: an
exceeded quota is ``no-space`` with a message naming the quota, too many
uploads at once is ``busy`` (docs/upload.md).

The accounting, and why it is shaped so:

* **Who stored what survives restarts** in a small SQLite index at the top of
  the upload directory, :data:`INDEX_NAME` (``.netproto*`` names are the
  server's own: no client can write, list or fetch them). One row per file
  stored while a quota is set: its name, its user, its size. The totals per
  user are summed from it at start; each stored file is one indexed
  ``INSERT OR REPLACE`` (WAL journal, no fsync per file), so the cost per upload
  stays small. After a crash the last few rows may be lost: those files then
  count for nobody until they are replaced.
* **The disk is the truth.** :meth:`Quotas.reconcile`, run with the expiry
  sweep, drops the rows of files that were removed and corrects the sizes of
  files that changed, so an operator who deletes a user's files gives the
  room back without telling the server.
* **Uploads in progress are reserved** when they start (their announced
  size, one file), so parallel uploads of one user cannot together pass
  the quota; the reservation becomes the stored file's charge, or is
  returned when the upload fails or its connection goes.
* **Overwriting is credited** to the file's owner: a user who replaces their
  own file is charged the difference, not a second file. The check needs
  the old file's owner, a read of the index: that is why the check runs in
  the worker thread that opens the file (:meth:`Quotas.reserve`), under a
  lock held only for arithmetic, never for I/O.

Kept partial data (an interrupted upload waiting for its resume) is not
charged: the resume TTL and ``--upload-min-free`` bound it.

Which thread touches the index: while serving, only upload's worker threads
(:mod:`netproto.upload.workers`): :meth:`Quotas.reserve` and
:meth:`Quotas.commit` run in a connection's writing lane (with the opening
and the renaming of its file), :meth:`Quotas.reconcile` in the factory's
sweep lane; the reactor thread only calls :meth:`Quotas.release`, which is
arithmetic under a lock that no I/O holds. The index is opened and summed
once, when the service is built, before the reactor runs (a broken index
then stops the service from starting). ``tests/test_upload_quota_threads.py``
checks it on the real reactor.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from twisted.logger import Logger

from netproto.errors import ProtocolError
from netproto.upload.names import RESERVED_PREFIX

log = Logger()

#: The index of stored files and their users, at the top of the upload directory.
INDEX_NAME: Final = RESERVED_PREFIX + "-quota.sqlite"
#: Index rows checked against the disk per lock hold in :meth:`Ledger.reconcile`:
#: uploads finishing meanwhile wait for at most one batch of ``lstat`` calls.
RECONCILE_BATCH: Final = 500


_OWNER: Final = "SELECT user, size FROM files WHERE name = ?"


@dataclass
class Usage:
    """Files and bytes, stored or reserved."""

    files: int = 0
    bytes: int = 0

    def add(self, files: int, size: int) -> None:
        self.files += files
        self.bytes += size


@dataclass
class Reservation:
    """One upload in progress: its slot among its user's parallel uploads, and
    (under a quota) its announced size and one file, until it is stored or ends."""

    user: str
    name: str
    size: int
    #: still held (the slot and the reserved room); cleared exactly once
    active: bool = True


class Ledger:
    """The on-disk index of stored files: name, user, size. Blocking (worker
    threads only); safe to call from several threads at once.

    :raises sqlite3.Error, OSError: from the constructor, when the index
        cannot be opened or created (the service then does not start).
    """

    def __init__(self, root: Path) -> None:
        path = root / INDEX_NAME
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            pass
        else:
            # Never follow what someone may have planted at the index's name.
            if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
                raise OSError(f"{path} is not a regular file with one link")
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS files "
            "(name TEXT PRIMARY KEY, user TEXT NOT NULL, size INTEGER NOT NULL) WITHOUT ROWID"
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def totals(self) -> dict[str, Usage]:
        """Files and bytes per user, as the index has them."""
        with self._lock:
            rows = self._db.execute(
                "SELECT user, count(*), sum(size) FROM files GROUP BY user"
            ).fetchall()
        return {user: Usage(files, size) for user, files, size in rows}

    def ownerOf(self, name: str) -> tuple[str, int] | None:
        """The user and size recorded for ``name``, if any."""
        with self._lock:
            row = self._db.execute(_OWNER, (name,)).fetchone()
        return None if row is None else (row[0], row[1])

    def replace(self, name: str, user: str, size: int) -> tuple[str, int] | None:
        """Record that ``user`` stored ``name`` of ``size`` bytes; returns the
        user and size it replaces, if any."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(_OWNER, (name,)).fetchone()
                self._db.execute(
                    "INSERT OR REPLACE INTO files (name, user, size) VALUES (?, ?, ?)",
                    (name, user, size),
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return None if row is None else (row[0], row[1])

    def reconcile(self, rootFD: int) -> dict[str, Usage]:
        """Check every row against the file on disk (``lstat`` relative to the
        upload directory): rows of files gone (or no longer regular files)
        are dropped, sizes that changed are corrected.

        :returns: the change of each user's totals.
        """
        change: dict[str, Usage] = {}
        after = ""
        while True:
            with self._lock:
                rows = self._db.execute(
                    "SELECT name, user, size FROM files WHERE name > ? ORDER BY name LIMIT ?",
                    (after, RECONCILE_BATCH),
                ).fetchall()
                if not rows:
                    return change
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    for name, user, size in rows:
                        now = _sizeOnDisk(rootFD, name)
                        if now is None:
                            self._db.execute("DELETE FROM files WHERE name = ?", (name,))
                            change.setdefault(user, Usage()).add(-1, -size)
                        elif now != size:
                            self._db.execute(
                                "UPDATE files SET size = ? WHERE name = ?", (now, name)
                            )
                            change.setdefault(user, Usage()).add(0, now - size)
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            after = rows[-1][0]


def _sizeOnDisk(rootFD: int, name: str) -> int | None:
    """The size of the regular file ``name`` under the upload directory, or
    ``None`` if there is none (or something else is there)."""
    try:
        info = os.stat(name, dir_fd=rootFD, follow_symlinks=False)
    except OSError:
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


class Quotas:
    """The limits on what each user stores and uploads at once, and their accounting.

    Thread-safe: :meth:`reserve` and :meth:`commit` run in worker threads,
    :meth:`release` on the reactor thread; the lock is held for arithmetic
    only.

    :param maxFiles: files one user may store (0: no limit).
    :param maxBytes: bytes one user may store (0: no limit).
    :param maxParallel: uploads one user may have in progress (0: no limit).
    :param ledger: the index; needed when ``maxFiles`` or ``maxBytes`` is set.
    """

    def __init__(
        self,
        maxFiles: int = 0,
        maxBytes: int = 0,
        maxParallel: int = 0,
        ledger: Ledger | None = None,
    ) -> None:
        self.maxFiles = maxFiles
        self.maxBytes = maxBytes
        self.maxParallel = maxParallel
        self.ledger = ledger
        self._lock = threading.Lock()
        #: uploads in progress per user
        self.active: Counter[str] = Counter()
        #: stored, per user (from the ledger)
        self.used: dict[str, Usage] = ledger.totals() if ledger is not None else {}
        #: announced by uploads in progress, per user
        self.reserved: dict[str, Usage] = {}

    @property
    def enabled(self) -> bool:
        """Whether a quota on files or bytes is set (and stored files are recorded)."""
        return self.ledger is not None

    def reserve(self, user: str, name: str, size: int, overwrite: bool) -> Reservation:
        """Admit a new upload of ``user``, or refuse it.

        :raises ProtocolError: ``busy`` when the user has ``maxParallel``
            uploads in progress; ``no-space`` when storing ``size`` more bytes
            and one more file would pass the user's quota (what ``name``
            would replace, if the user owns it, is credited).
        """
        previous = self.ledger.ownerOf(name) if overwrite and self.ledger is not None else None
        credit = Usage(1, previous[1]) if previous is not None and previous[0] == user else Usage()
        with self._lock:
            if self.maxParallel and self.active[user] >= self.maxParallel:
                raise ProtocolError(
                    "busy",
                    f"{user} has {self.active[user]} uploads in progress, the most allowed "
                    f"at once (--upload-max-per-user)",
                )
            used = self.used.get(user, Usage())
            reserved = self.reserved.get(user, Usage())
            files = used.files + reserved.files + 1 - credit.files
            total = used.bytes + reserved.bytes + size - credit.bytes
            if self.maxFiles and files > self.maxFiles:
                raise ProtocolError(
                    "no-space",
                    f"{name}: over {user}'s upload quota of {self.maxFiles} files "
                    f"(--upload-quota-files): {used.files} stored, {reserved.files} in progress",
                )
            if self.maxBytes and total > self.maxBytes:
                raise ProtocolError(
                    "no-space",
                    f"{name}: {size} bytes would pass {user}'s upload quota of {self.maxBytes} "
                    f"bytes (--upload-quota-bytes): {used.bytes} stored, "
                    f"{reserved.bytes} in progress",
                )
            self.active[user] += 1
            self.reserved.setdefault(user, Usage()).add(1, size)
        return Reservation(user, name, size)

    def release(self, reservation: Reservation) -> None:
        """Give back an upload's slot and reserved room (once; later calls do nothing)."""
        with self._lock:
            self._release(reservation)

    def _release(self, reservation: Reservation) -> None:
        if not reservation.active:
            return
        reservation.active = False
        user = reservation.user
        self.active[user] -= 1
        if not self.active[user]:
            del self.active[user]
        self.reserved[user].add(-1, -reservation.size)

    def commit(self, reservation: Reservation) -> None:
        """The upload is stored under its name: charge it to its user (and take
        what it replaced off its owner), record it, and give back the slot.
        Called once the file is in place, even if the connection went meanwhile.
        """
        user, name, size = reservation.user, reservation.name, reservation.size
        previous = None
        if self.ledger is not None:
            try:
                previous = self.ledger.replace(name, user, size)
            except sqlite3.Error as e:
                # The file is stored; only its record for after a restart is missing.
                log.warn("upload: cannot record {name} for the quotas: {error}", name=name, error=e)
        with self._lock:
            self._release(reservation)
            if self.ledger is not None:
                self.used.setdefault(user, Usage()).add(1, size)
                if previous is not None:
                    self.used.setdefault(previous[0], Usage()).add(-1, -previous[1])

    def reconcile(self, rootFD: int) -> None:
        """Bring the index and the totals in line with the files on disk (a
        worker job, run with the expiry sweep)."""
        if self.ledger is None:
            return
        try:
            change = self.ledger.reconcile(rootFD)
        except sqlite3.Error as e:
            log.warn("upload: cannot check the quota index against the disk: {error}", error=e)
            return
        with self._lock:
            for user, delta in change.items():
                self.used.setdefault(user, Usage()).add(delta.files, delta.bytes)
