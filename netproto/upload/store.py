"""The upload store: safe, atomic, durable files in the upload directory.

Every function here does blocking disk I/O and is meant to run in a worker
thread (the protocol hands it to one through its executor); none of it
touches the reactor. The promises:

* **Nothing outside the upload directory.** The directory is opened once;
  every name is then walked segment by segment, each opened relative to its
  parent's handle with ``O_DIRECTORY | O_NOFOLLOW`` (``O_NOFOLLOW`` on files),
  so neither ``..`` nor an absolute path nor a symbolic link planted inside
  the tree nor a swap between a check and a use can lead outside it. A
  symbolic link where a directory is needed refuses the name; one under the
  final name is replaced (with ``overwrite``), never followed.
* **Nothing planted is ever opened as a partial file.** Partial files are
  created with ``O_EXCL``; an existing one is reused or replaced only if it
  is a regular file with one link owned by the server's uid. Anything else
  at a partial name (a hard link to a file outside, a symbolic link, a FIFO)
  refuses the upload with ``not-allowed`` (:meth:`UploadStore._openKept`).
* **Every OS error has its code** (:data:`ERRNO_CODES`), never a crash.
* **Nothing half-written under a final name.** Data goes to a partial file
  beside its destination (:func:`netproto.upload.names.partialName`), is
  hashed while written, and only after the size and the SHA-256 match is it
  fsynced, renamed into place atomically (``renameat2(RENAME_NOREPLACE)``
  unless overwriting, so a file that appeared meanwhile is never replaced)
  and the directory fsynced.
* **One writer per partial file.** A partial file is held under an exclusive
  ``flock`` while in use: another upload of the same name and size, in this
  process or another, is told ``busy``, and the sweeper leaves it alone.
* **Resume.** A partial file's length is the offset to continue from; it is
  kept after an interrupted transfer that asked for resume, and removed by
  :meth:`UploadStore.sweep` once untouched for the resume TTL.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import hashlib
import os
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Final

from twisted.logger import Logger

from netproto.errors import ErrorCode, ProtocolError
from netproto.upload import digests
from netproto.upload.names import isPartialName, partialName

log = Logger()

#: What data arrives as: views of received reads, or bytes gathered from small ones.
Buffer = bytes | bytearray | memoryview
#: ``os.writev``: writes buffers in order, returns how many bytes it wrote.
WriteFunction = Callable[[int, Sequence[Buffer]], int]
#: Most buffers one ``writev`` call takes (Linux's IOV_MAX).
IOV_MAX: Final = 1024

_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: A partial file is always a new file: O_EXCL, so nothing planted under its
#: name (a hard link to a file outside, a symbolic link, a FIFO) is ever opened.
_CREATE_FLAGS: Final = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
#: Kept data is reopened only after lstat said it is our own regular file;
#: O_NONBLOCK in case it was swapped for a FIFO in between.
_KEPT_FLAGS: Final = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
#: Times a partial file is looked for again when it is created, removed or
#: replaced by another connection between two steps of ours.
PARTIAL_ATTEMPTS: Final = 5
RENAME_NOREPLACE: Final = 1


def _loadRenameat2() -> Callable[..., int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    function.restype = ctypes.c_int
    loaded: Callable[..., int] = function
    return loaded


_renameat2 = _loadRenameat2()


def renameNoReplace(dirFD: int, src: bytes, dst: bytes) -> None:
    """Rename ``src`` to ``dst`` in one directory, failing with ``EEXIST``
    rather than replacing an existing ``dst``, atomically.

    ``renameat2(RENAME_NOREPLACE)`` where the kernel and file system have it
    (Linux 3.15+, ext4, xfs, btrfs, tmpfs); otherwise ``link`` then
    ``unlink``, which is just as atomic about not replacing (``link`` fails
    with ``EEXIST``) and only briefly shows the data under both names.
    """
    if _renameat2 is not None:
        if _renameat2(dirFD, src, dirFD, dst, RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(code, os.strerror(code), dst.decode("utf-8", "replace"))
    os.link(src, dst, src_dir_fd=dirFD, dst_dir_fd=dirFD, follow_symlinks=False)
    os.unlink(src, dir_fd=dirFD)


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def _text(segments: Iterable[bytes]) -> str:
    return "/".join(s.decode("utf-8", "replace") for s in segments)


#: What an OS error means to the peer: its PROTOCOL.md code and why, in words.
#: An errno not listed is ``internal`` (not fatal here), logged for the operator.
ERRNO_CODES: Final[Mapping[int, tuple[ErrorCode, str]]] = {
    errno.ENOSPC: ("no-space", "the server's disk is full"),
    errno.EDQUOT: ("no-space", "the server's disk quota is used up"),
    errno.EMLINK: ("no-space", "the directory on the server holds as many entries as it can"),
    errno.EFBIG: ("too-large", "larger than the server's file system allows"),
    errno.EACCES: ("not-allowed", "the server may not write there (permission denied)"),
    errno.EPERM: ("not-allowed", "the server may not write there (operation not permitted)"),
    errno.EROFS: ("not-allowed", "the upload directory is read-only"),
    errno.ENAMETOOLONG: ("invalid-name", "too long for the server's file system"),
    errno.EILSEQ: ("invalid-name", "not a valid name on the server's file system"),
    errno.ENOTDIR: ("invalid-name", "a file on the server is in the way of a directory"),
    errno.ELOOP: ("invalid-name", "a symbolic link on the server is in the way"),
    errno.EEXIST: ("exists", "it exists on the server"),
    errno.EISDIR: ("exists", "a directory on the server is in the way"),
    errno.ENOENT: ("not-found", "its directory was removed from the server meanwhile"),
    errno.EBUSY: ("busy", "in use on the server"),
    errno.ETXTBSY: ("busy", "in use on the server"),
}


def osError(e: OSError, what: str) -> ProtocolError:
    """The peer's view of an OS error (:data:`ERRNO_CODES`), never fatal: the
    connection stays usable. An unexpected one is ``internal``, and logged
    for the operator as an error."""
    known = ERRNO_CODES.get(e.errno or 0)
    if known is not None:
        return ProtocolError(known[0], f"{what}: {known[1]}", fatal=False)
    log.error("upload: {what}: {error}", what=what, error=e)
    return ProtocolError("internal", f"{what}: server I/O error", fatal=False)


class PartialFile:
    """One upload's data on its way to its final name.

    Not thread-safe: the protocol runs at most one method of it at a time,
    always in a worker thread.

    :ivar offset: bytes kept from an earlier transfer (the ``K ready`` offset).
    :ivar written: bytes in the file so far, kept ones included.
    """

    def __init__(
        self,
        store: UploadStore,
        *,
        dirFD: int,
        fd: int,
        leaf: bytes,
        part: bytes,
        name: str,
        size: int,
        offset: int,
        hasher: hashlib._Hash,
        ownsDir: bool = True,
        inode: tuple[int, int] = (-1, -1),
    ) -> None:
        self.store = store
        #: (device, inode) of the open file: ``part`` must still name it at the rename
        self.inode = inode
        self.dirFD = dirFD
        #: dirFD is this file's own handle (not the store's), closed with it
        self.ownsDir = ownsDir
        self.fd = fd
        self.leaf = leaf
        self.part = part
        self.name = name
        self.size = size
        self.offset = offset
        self.written = offset
        self.hasher = hasher
        #: an error of :meth:`flush`, for :meth:`sync` to report
        self.flushError: OSError | None = None
        self.closed = False
        #: a write failed: the data is not worth keeping for a resume
        self.broken = False

    def write(self, chunks: Sequence[Buffer]) -> None:
        """Hash and append ``chunks``, in order (one call for a small file).

        :raises ProtocolError: ``no-space`` when the disk is full (the data
            written so far stays; the caller removes it with :meth:`discard`).
        """
        self.hashData(chunks)
        self.writeData(chunks)

    def hashData(self, chunks: Sequence[Buffer]) -> None:
        """Feed ``chunks`` to the SHA-256, in order. The hashing lane calls
        this while the writing lane writes the same chunks (they are never
        changed once handed over); the hash state is used by no one else
        until :meth:`finish`. Nothing is done once the file is closed."""
        if self.closed:
            return
        update = self.hasher.update
        for chunk in chunks:
            update(chunk)

    def writeData(self, chunks: Sequence[Buffer]) -> None:
        """Append ``chunks``, in order, without hashing them: one ``writev``
        for a whole batch (so one GIL release, not one per frame).

        :raises ProtocolError: ``no-space`` when the disk is full;
            ``internal`` if the file was closed meanwhile.
        """
        self._checkOpen()
        writev, fd = self.store.writev, self.fd
        buffers = list(chunks)  # the caller's list is shared with the hashing lane
        first = 0
        while first < len(buffers):
            try:
                n = writev(fd, buffers[first : first + IOV_MAX])
            except OSError as e:
                self.broken = True
                raise osError(e, self.name) from None
            if n <= 0:
                self.broken = True
                raise osError(OSError(errno.EIO, "write wrote nothing"), self.name)
            self.written += n
            while first < len(buffers) and n >= len(buffers[first]):
                n -= len(buffers[first])
                first += 1
            if n:  # a short write: the rest of that buffer next
                buffers[first] = memoryview(buffers[first])[n:]

    def flush(self) -> None:
        """Flush the data written so far to disk (``fdatasync``), from the
        flushing lane while the writing lane goes on writing.

        Only a head start for :meth:`sync`, which is still what makes the
        file durable: the disk (and a virtual disk's host) writes while data
        still arrives, instead of all of it after the last byte. A failure is
        kept and raised by :meth:`sync` and :meth:`finish`: the kernel
        reports a lost write to one fsync of a file description only.
        """
        if self.closed:
            return
        try:
            os.fdatasync(self.fd)
        except OSError as e:
            self.flushError = e

    def sync(self) -> None:
        """Check the size, then flush the data to disk (the first half of
        :meth:`finish`, run while the last data is still being hashed).

        :raises ProtocolError: ``size-mismatch``; ``no-space`` or another
            I/O error from the flush.
        """
        self._checkOpen()
        self._checkSize()
        try:
            os.fsync(self.fd)
        except OSError as e:
            raise osError(e, self.name) from None
        self._checkFlushed()

    def finish(self, sha256: str, overwrite: bool, synced: bool = False) -> str:
        """Check the size and digest, then make the file durable under its final name.

        :param synced: :meth:`sync` was done after the last write.

        On success the file is closed and its SHA-256 (hex) returned; on any
        :class:`ProtocolError` the partial file is left for the caller to
        :meth:`discard`.
        """
        digest = self.verify(sha256)
        if not synced:
            try:
                os.fsync(self.fd)
            except OSError as e:
                raise osError(e, self.name) from None
        self.place(overwrite)
        # From here the file is complete under its name: closing cannot undo that.
        try:
            os.fsync(self.dirFD)
        except OSError as e:
            raise osError(e, f"{self.name} (directory sync)") from None
        finally:
            self._close()
        return digest

    def verify(self, sha256: str) -> str:
        """Check the size and the digest of what was written (the first half
        of :meth:`finish`; a group commit does the rest for many files at
        once: :func:`commitGroup`). Returns the digest.

        :raises ProtocolError: ``size-mismatch``, ``checksum-mismatch``.
        """
        self._checkOpen()
        self._checkSize()
        digest: str = self.hasher.hexdigest()
        if digest != sha256:
            raise ProtocolError(
                "checksum-mismatch",
                f"{self.name}: the SHA-256 of the received data is {digest}, not {sha256}",
            )
        # Kept with the file for listings, downloads and --sync (digests.py); a
        # crash may lose it (it is then only unknown), never make it wrong.
        digests.record(self.fd, digest)
        return digest

    def place(self, overwrite: bool) -> None:
        """Rename the file, whose data is on disk, into place (its directory is
        not flushed here). On a :class:`ProtocolError` nothing is under the
        final name and the partial file is left for :meth:`discard`."""
        try:
            self._checkFlushed()
            self._checkStillNamed()
            if overwrite:
                os.rename(self.part, self.leaf, src_dir_fd=self.dirFD, dst_dir_fd=self.dirFD)
            else:
                renameNoReplace(self.dirFD, self.part, self.leaf)
        except (FileExistsError, IsADirectoryError):
            raise ProtocolError(
                "exists", f"{self.name} appeared on the server during the upload"
            ) from None
        except OSError as e:
            raise osError(e, self.name) from None

    def _checkOpen(self) -> None:
        # A call queued before the file was given up must not touch a file
        # descriptor number that may already belong to another file.
        if self.closed:
            raise ProtocolError("internal", f"{self.name}: upload already ended", fatal=False)

    def _checkStillNamed(self) -> None:
        """Refuse to rename when ``part`` no longer names the file written (a
        local user replaced it meanwhile): whatever is there now must not be
        put under the final name as if it were the data checked."""
        try:
            there = os.stat(self.part, dir_fd=self.dirFD, follow_symlinks=False)
        except FileNotFoundError:
            there = None
        if there is None or (there.st_dev, there.st_ino) != self.inode:
            raise ProtocolError(
                "not-allowed",
                f"{self.name}: its partial data was moved or replaced on the server meanwhile",
            )

    def _checkFlushed(self) -> None:
        if self.flushError is not None:
            self.broken = True
            raise osError(self.flushError, self.name)

    def _checkSize(self) -> None:
        if self.written != self.size:
            raise ProtocolError(
                "size-mismatch",
                f"{self.name}: {self.written} bytes received, {self.size} announced",
            )

    def keep(self) -> None:
        """Close, keeping the data for a later resume (synced, so it survives more
        than a crash); data from a failed write is removed instead."""
        if self.closed:
            return
        if self.broken:
            self.discard()
            return
        with contextlib.suppress(OSError):
            os.fdatasync(self.fd)
        self._close()

    def discard(self) -> None:
        """Remove the partial data and close; never raises. Data that cannot be
        removed (a read-only file system) is left for the expiry sweep."""
        if self.closed:
            return
        try:
            if _sameFile(os.fstat(self.fd), self.dirFD, self.part):
                os.unlink(self.part, dir_fd=self.dirFD)
        except OSError as e:
            log.warn(
                "upload: cannot remove the partial data of {name}: {error}", name=self.name, error=e
            )
        finally:
            self._close()

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            _close(self.fd)
            if self.ownsDir:
                _close(self.dirFD)


def _syncfs(fd: int) -> None:
    """Flush every file system buffer of the file system holding ``fd`` to disk."""
    if _libc is None or _libc.syncfs(fd) != 0:
        code = ctypes.get_errno() if _libc is not None else errno.ENOSYS
        raise OSError(code, os.strerror(code))


def _loadLibc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    except OSError:
        return None


_libc = _loadLibc()


def commitGroup(files: Sequence[tuple[PartialFile, bool]]) -> list[ProtocolError | None]:
    """Make several verified files durable under their final names at once:
    their data flushed to disk together, then each renamed into place, then
    each directory that got a new name flushed once (group commit). For each
    ``(file, overwrite)`` the result is ``None`` (stored, closed) or the
    :class:`ProtocolError` that refused it (the file left for
    :meth:`PartialFile.discard`).

    Why ``syncfs``: one flush of the file system costs about what one
    ``fsync`` does (one journal commit), where N files cost N; it also
    flushes other dirty data of that file system, which big uploads keep
    small by flushing as they go (``Pipeline.flushStep``). A failure of it
    fails the whole group, as a failed ``fsync`` fails its file. Where
    ``syncfs`` is missing, each file is flushed with ``fsync``.
    """
    results: list[ProtocolError | None] = [None] * len(files)
    live = []
    for i, (partial, _) in enumerate(files):
        if partial.closed:  # given up meanwhile
            results[i] = ProtocolError("internal", f"{partial.name}: upload ended", fatal=False)
        else:
            live.append(i)
    if not live:
        return results
    first = files[live[0]][0]
    try:
        if len(live) == 1 or _libc is None:
            for i in live:
                os.fsync(files[i][0].fd)
        else:
            _syncfs(first.fd)
    except OSError as e:
        error = osError(e, first.name)
        return [error if i in live else r for i, r in enumerate(results)]
    #: each directory that got a name: a handle, one of the names, the files in it
    directories: dict[tuple[int, int], tuple[int, str, list[int]]] = {}
    for i in live:
        partial, overwrite = files[i]
        try:
            partial.place(overwrite)
        except ProtocolError as e:
            results[i] = e
            continue
        info = os.fstat(partial.dirFD)
        key = (info.st_dev, info.st_ino)
        if key not in directories:
            directories[key] = (os.dup(partial.dirFD), partial.name, [])
        directories[key][2].append(i)
    for fd, name, placed in directories.values():
        try:
            os.fsync(fd)
        except OSError as e:
            error = osError(e, f"{name} (directory sync)")
            for i in placed:
                results[i] = error
        finally:
            _close(fd)
    for _, _, placed in directories.values():
        for i in placed:
            files[i][0]._close()  # complete under its name: closing cannot undo that
    return results


class UploadStore:
    """The upload directory and the rules for writing into it.

    :param root: the upload directory; created (mode 0700) if missing. It is
        opened once: if it is later moved or replaced, uploads keep going to
        the directory that was opened.
    :param resumeTTL: seconds a partial file may stay untouched before
        :meth:`sweep` removes it (and before a ``P`` stops resuming from it).
    :param minFree: bytes of free space an accepted upload must leave.
    :param writev: ``os.writev``; tests inject a full disk here.
    """

    def __init__(
        self,
        root: Path,
        resumeTTL: float,
        minFree: int = 0,
        writev: WriteFunction = os.writev,
    ) -> None:
        self.root = root
        self.resumeTTL = resumeTTL
        self.minFree = minFree
        self.writev = writev
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.rootFD = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        if self.rootFD >= 0:
            _close(self.rootFD)
            self.rootFD = -1

    # -- P: starting an upload ---------------------------------------------------

    def begin(
        self,
        segments: Sequence[bytes],
        size: int,
        overwrite: bool,
        resume: bool,
        now: float,
    ) -> PartialFile:
        """Open (or, with ``resume``, reopen) the partial file for an upload.

        :param now: the current wall-clock time, for the resume TTL.
        :raises ProtocolError: ``exists``, ``busy``, ``invalid-name``,
            ``no-space``, ``not-allowed``; nothing is left behind but
            intermediate directories.
        """
        name = _text(segments)
        try:
            if not resume:
                # All of it is to come; with resume, only what is not kept (below).
                self._checkFree(self.rootFD, size, name)
            dirFD = self._openParent(segments[:-1], name)
            try:
                return self._beginIn(
                    dirFD,
                    leaf=segments[-1],
                    name=name,
                    size=size,
                    overwrite=overwrite,
                    resume=resume,
                    now=now,
                )
            except BaseException:
                if dirFD != self.rootFD:
                    _close(dirFD)
                raise
        except OSError as e:  # at any step: its code (ERRNO_CODES), never a crash
            raise osError(e, name) from None

    def _beginIn(
        self,
        dirFD: int,
        *,
        leaf: bytes,
        name: str,
        size: int,
        overwrite: bool,
        resume: bool,
        now: float,
    ) -> PartialFile:
        try:
            existing = os.stat(leaf, dir_fd=dirFD, follow_symlinks=False)
        except FileNotFoundError:
            pass
        else:
            if stat.S_ISDIR(existing.st_mode):
                raise ProtocolError("exists", f"{name} is a directory on the server")
            if not overwrite:
                raise ProtocolError("exists", f"{name} exists (ask to overwrite it)")
        part = partialName(leaf, size)
        fd, info, offset = self._openPartial(dirFD, part, name, size if resume else 0, now)
        try:
            hasher = hashlib.sha256()
            if resume:
                self._checkFree(fd, size - offset, name)
            if offset:
                if digests.hashPrefix(fd, offset, hasher) < offset:
                    raise OSError(errno.EIO, "partial file shorter than its length")
                os.lseek(fd, offset, os.SEEK_SET)
        except BaseException:
            if not offset:
                with contextlib.suppress(OSError):
                    os.unlink(part, dir_fd=dirFD)
            _close(fd)
            raise
        return PartialFile(
            self,
            dirFD=dirFD,
            fd=fd,
            leaf=leaf,
            part=part,
            name=name,
            size=size,
            offset=offset,
            hasher=hasher,
            ownsDir=dirFD != self.rootFD,
            inode=(info.st_dev, info.st_ino),
        )

    def _checkFree(self, fd: int, needed: int, name: str) -> None:
        vfs = os.fstatvfs(fd)
        free = vfs.f_bavail * vfs.f_frsize
        if free - self.minFree < needed:
            raise ProtocolError(
                "no-space",
                f"{name}: {needed} bytes do not fit: the server has {free} bytes free "
                f"and keeps {self.minFree}",
            )

    def _openParent(self, segments: Sequence[bytes], name: str) -> int:
        """A handle on the directory of the final name, creating what is missing;
        no segment may be a symbolic link or anything but a directory. For a
        name at the top it is :attr:`rootFD` itself (never closed by a file)."""
        if not segments:
            return self.rootFD
        fd = os.dup(self.rootFD)
        try:
            for i, segment in enumerate(segments):
                created = False
                try:
                    os.mkdir(segment, 0o755, dir_fd=fd)
                    created = True
                except FileExistsError:
                    pass
                try:
                    child = os.open(segment, _DIR_FLAGS, dir_fd=fd)
                except OSError as e:
                    if e.errno in (errno.ENOTDIR, errno.ELOOP):
                        where = _text(segments[: i + 1])
                        raise ProtocolError(
                            "invalid-name",
                            f"{name}: {where} on the server is not a directory "
                            "(a file or a symbolic link is in the way)",
                        ) from None
                    raise
                if created:
                    # The new entry must be as durable as the file that will need it.
                    os.fsync(fd)
                _close(fd)
                fd = child
        except BaseException:
            _close(fd)
            raise
        return fd

    def _openPartial(
        self, dirFD: int, part: bytes, name: str, resumable: int, now: float
    ) -> tuple[int, os.stat_result, int]:
        """The partial file ``part`` for an upload, open and exclusively locked:
        our own kept data when it can be resumed, else a new file (``O_EXCL``).

        :param resumable: the upload's size when it asks to resume, else 0:
            kept data is reused only if it is fresh and no longer than that.
        :returns: the handle, its status, and the offset to continue from.
        :raises ProtocolError: ``busy`` if another upload holds the partial
            file; ``not-allowed`` if something this server did not make is
            in the way (:meth:`_openKept`).
        """
        for _ in range(PARTIAL_ATTEMPTS):
            try:
                fd = os.open(part, _CREATE_FLAGS, 0o644, dir_fd=dirFD)
            except FileExistsError:
                kept = self._openKept(dirFD, part, name)
                if kept is None:
                    continue  # it went away meanwhile
                fd, info = kept
                if 0 < info.st_size <= resumable and now - info.st_mtime <= self.resumeTTL:
                    os.set_blocking(fd, True)
                    return fd, info, info.st_size
                # Not to be resumed: removed (it is ours and locked), and a new one made.
                try:
                    os.unlink(part, dir_fd=dirFD)
                finally:
                    _close(fd)
                continue
            try:
                locked = self._lock(fd, dirFD, part, name)
            except BaseException:
                # (busy: another upload found it first and holds it; it is theirs now)
                _close(fd)
                raise
            if locked is not None:
                return fd, locked, 0
            _close(fd)  # another upload replaced it before we locked it: look again
        raise ProtocolError("busy", f"{name}: its partial file keeps changing")

    def _openKept(self, dirFD: int, part: bytes, name: str) -> tuple[int, os.stat_result] | None:
        """Open and lock the existing ``part``, only if it is what this server
        leaves there: a regular file with one link, owned by the server's uid.

        Anything else was planted by someone with write access to the
        directory (a hard link to a file outside, a symbolic link, a FIFO, a
        directory, a socket, a file of another user): using it could write
        outside the upload directory or block, so the upload is refused with
        ``not-allowed``, the object is left for the operator (who is told
        in the log), and nothing is opened but a regular file.

        :returns: the handle and its status, or ``None`` if ``part`` vanished.
        """
        try:
            seen = os.stat(part, dir_fd=dirFD, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if not _ownPartial(seen):
            raise _planted(name, part, seen)
        try:
            fd = os.open(part, _KEPT_FLAGS, dir_fd=dirFD)
        except FileNotFoundError:
            return None
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):  # swapped since the lstat
                raise _planted(name, part, None) from None
            raise
        try:
            info = self._lock(fd, dirFD, part, name)
            if info is not None and not _ownPartial(info):
                raise _planted(name, part, info)
        except BaseException:
            _close(fd)
            raise
        if info is None:
            _close(fd)
            return None
        return fd, info

    def _lock(self, fd: int, dirFD: int, part: bytes, name: str) -> os.stat_result | None:
        """Take the exclusive lock of the open partial file ``fd`` (``busy`` if
        another upload holds it); its status, or ``None`` when ``part`` no
        longer names it (it was removed or replaced before the lock was had)."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ProtocolError("busy", f"{name} is being uploaded by another connection") from None
        info = os.fstat(fd)
        return info if _sameFile(info, dirFD, part) else None

    # -- expiry ------------------------------------------------------------------

    def sweep(self, now: float) -> int:
        """Remove partial files untouched for longer than the resume TTL, in
        the whole tree; those in use (locked) are left. Returns how many went."""
        removed = 0
        for _, _, files, dirFD in os.fwalk(".", dir_fd=self.rootFD, follow_symlinks=False):
            for entry in files:
                if isPartialName(entry) and self._expire(dirFD, os.fsencode(entry), now):
                    removed += 1
        return removed

    def _expire(self, dirFD: int, entry: bytes, now: float) -> bool:
        """Remove one expired partial file; anything but one of ours (see
        :meth:`_openKept`) is never opened, and left alone."""
        try:
            if not _ownPartial(os.stat(entry, dir_fd=dirFD, follow_symlinks=False)):
                return False
            fd = os.open(entry, _KEPT_FLAGS, dir_fd=dirFD)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            info = os.fstat(fd)
            if (
                now - info.st_mtime <= self.resumeTTL
                or not _ownPartial(info)
                or not _sameFile(info, dirFD, entry)
            ):
                return False
            os.unlink(entry, dir_fd=dirFD)
            return True
        except OSError:
            return False
        finally:
            _close(fd)


def _ownPartial(info: os.stat_result) -> bool:
    """Whether ``info`` is what this server leaves under a partial name: a
    regular file with exactly one link (no name outside the upload directory
    shares it), owned by the server's own uid."""
    return stat.S_ISREG(info.st_mode) and info.st_nlink == 1 and info.st_uid == os.geteuid()


def _planted(name: str, part: bytes, info: os.stat_result | None) -> ProtocolError:
    """The refusal of an upload whose partial name holds something this server did not make."""
    if info is None:
        what = "it changed while being checked"
    elif stat.S_ISLNK(info.st_mode):
        what = "a symbolic link"
    elif not stat.S_ISREG(info.st_mode):
        what = f"not a regular file (mode {stat.filemode(info.st_mode)})"
    elif info.st_nlink != 1:
        what = f"a file with {info.st_nlink} links"
    else:
        what = f"a file owned by uid {info.st_uid}"
    log.warn(
        "upload: refused {name}: {part} is not a partial file of this server ({what}); "
        "remove it to allow uploads of that name and size",
        name=name,
        part=part.decode("ascii"),
        what=what,
    )
    return ProtocolError(
        "not-allowed",
        f"{name}: something the server did not make is in the way of its partial data",
    )


def _sameFile(here: os.stat_result, dirFD: int, entry: bytes) -> bool:
    """Whether ``entry`` in ``dirFD`` still names the open file whose status is ``here``."""
    try:
        there = os.stat(entry, dir_fd=dirFD, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return (there.st_dev, there.st_ino) == (here.st_dev, here.st_ino)
