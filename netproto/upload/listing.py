"""Reading the upload directory back (PROTOCOL.md section 6): ``L`` and ``G``, blocking side.

Everything here does blocking disk I/O and runs in a worker thread (the
protocol hands it to a :class:`~netproto.upload.workers.Lane`). The
confinement is the upload store's: a name is walked segment by segment,
each directory opened relative to its parent's handle with ``O_DIRECTORY |
O_NOFOLLOW``, the file with ``O_NOFOLLOW``, so neither a symbolic link
planted inside the tree nor a swap between a check and a use leads outside
it. Only regular files and directories are shown or read: symbolic links,
FIFOs, sockets and devices are never listed and a ``G`` of one is
``not-allowed`` (a device is never opened: its type is checked with
``lstat`` first, and the open is non-blocking in case it was swapped for a
FIFO since). The server's own ``.netproto*`` files are never shown nor
read, and neither is an entry whose name no client could use (not UTF-8, a
control character, a backslash: :func:`~netproto.upload.names.checkSegment`).

A listing never reads a file: sizes and times come from ``lstat``, digests
from :mod:`netproto.upload.digests`. It is produced one ``I`` frame at a
time (:meth:`Listing.nextPayload`), directories read as they stream
(unsorted, as the file system gives them: the client sorts), so neither a
huge directory nor a huge tree is ever held whole.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
from collections.abc import Iterator, Sequence
from json.encoder import encode_basestring
from typing import Final

from netproto.errors import ProtocolError
from netproto.upload import digests
from netproto.upload.names import RESERVED_PREFIX, checkSegment
from netproto.upload.store import osError

_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: A file to send: never through a symbolic link, never blocking (a FIFO
#: swapped in after the lstat would otherwise wait for a writer forever).
_READ_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_HEAD: Final = b'{"entries":['
_TAIL: Final = b"]}"


def _text(segments: Sequence[bytes]) -> str:
    return "/".join(s.decode("utf-8", "replace") for s in segments)


def openDirectory(rootFD: int, segments: Sequence[bytes]) -> int:
    """A new handle on the directory ``segments`` under the upload directory
    (the upload directory itself for none), never through a symbolic link.

    :raises ProtocolError: ``not-found``; ``not-allowed`` when a segment is a
        symbolic link, a file or anything but a directory.
    """
    fd = os.dup(rootFD)
    try:
        for i, segment in enumerate(segments):
            try:
                child = os.open(segment, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                where = _text(segments[: i + 1])
                if e.errno == errno.ENOENT:
                    raise ProtocolError(
                        "not-found", f"{where}: no such file or directory"
                    ) from None
                if e.errno in (errno.ENOTDIR, errno.ELOOP):
                    raise ProtocolError(
                        "not-allowed", f"{where}: not a directory on the server"
                    ) from None
                raise osError(e, where) from None
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def visible(entry: str) -> bool:
    """Whether a directory entry may be shown to clients: not one of the
    server's own, and a name a client could use in a request."""
    if entry.isascii() and entry.isprintable() and "\\" not in entry:
        # The common case, without a look at each character's category.
        return entry not in (".", "..") and not entry.startswith(RESERVED_PREFIX)
    try:
        checkSegment(entry.encode("utf-8"), entry)
    except (UnicodeEncodeError, ProtocolError):
        return False
    return True


def entryOf(name: str, info: os.stat_result, sha256: str | None) -> bytes | None:
    """The JSON of one listing entry, or ``None`` for anything but a regular
    file or a directory. Written out by hand: a listing of 10,000 files spent
    a third of its time in the generic encoder (only the name needs escaping)."""
    if stat.S_ISREG(info.st_mode):
        head = b'{"name":%s,"type":"file","size":%d' % (encodeString(name), info.st_size)
    elif stat.S_ISDIR(info.st_mode):
        head = b'{"name":%s,"type":"dir","size":0' % encodeString(name)
    else:
        return None
    mtime = round(info.st_mtime_ns / 1e9, 6)
    if sha256 is None:
        return head + b',"mtime":%r}' % mtime
    return head + b',"mtime":%r,"sha256":"%s"}' % (mtime, sha256.encode("ascii"))


def encodeString(text: str) -> bytes:
    """``text`` as a JSON string, in UTF-8 (as :func:`netproto.codec.encodeJSON` does)."""
    return encode_basestring(text).encode("utf-8")


class Listing:
    """One ``L`` request's entries, a frame's worth at a time.

    Not thread-safe: the protocol runs its methods one at a time in its lane.

    :param rootFD: the upload directory's handle.
    :param segments: the path to list (none: the top).
    :param recursive: list the whole tree below it.
    :param maxPayload: the most bytes of one ``I`` payload.
    """

    def __init__(
        self, rootFD: int, segments: Sequence[bytes], recursive: bool, maxPayload: int
    ) -> None:
        self.rootFD = rootFD
        self.recursive = recursive
        self.maxPayload = maxPayload
        #: entries produced so far (``K listed``'s ``count``)
        self.count = 0
        #: directories still to list, deepest last (each by its segments)
        self._todo: list[tuple[bytes, ...]] = []
        #: the directory being read: its handle, its entries, its name prefix
        self._current: tuple[int, Iterator[os.DirEntry[str]], str] | None = None
        #: an entry that did not fit in the last frame
        self._carry: bytes | None = None
        #: the segments of the directory being read
        self._path: tuple[bytes, ...] = ()
        #: the first directory was opened (a later one that vanished is skipped)
        self._opened = False
        self._start(tuple(segments))

    def _start(self, segments: tuple[bytes, ...]) -> None:
        """Check the path: a directory is listed; a regular file is its own one entry."""
        if not segments:
            self._todo.append(segments)
            return
        parent = openDirectory(self.rootFD, segments[:-1])
        try:
            leaf = segments[-1].decode("utf-8")
            try:
                info = os.stat(leaf, dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                raise ProtocolError(
                    "not-found", f"{_text(segments)}: no such file or directory"
                ) from None
            except OSError as e:
                raise osError(e, _text(segments)) from None
            if stat.S_ISDIR(info.st_mode):
                self._todo.append(segments)
                return
            entry = entryOf(_text(segments), info, digests.knownAt(parent, leaf, info))
            if entry is None:
                raise ProtocolError(
                    "not-allowed", f"{_text(segments)}: not a regular file or a directory"
                )
            self._carry = entry
        finally:
            os.close(parent)

    def close(self) -> None:
        """Let go of the directory being read (the listing ended or was abandoned)."""
        if self._current is not None:
            fd, entries, _ = self._current
            self._current = None
            with contextlib.suppress(OSError):
                entries.close()  # type: ignore[attr-defined]
                os.close(fd)
        self._todo.clear()

    def nextPayload(self) -> bytes | None:
        """The next ``I`` payload, or ``None`` once every entry was given."""
        items: list[bytes] = []
        room = self.maxPayload - len(_HEAD) - len(_TAIL)
        for entry in self._entries():
            cost = len(entry) + (1 if items else 0)
            if cost > room and items:
                self._carry = entry
                break
            items.append(entry)
            room -= cost
            self.count += 1
        if not items:
            return None
        return _HEAD + b",".join(items) + _TAIL

    def _entries(self) -> Iterator[bytes]:
        if self._carry is not None:
            entry, self._carry = self._carry, None
            yield entry
        while True:
            if self._current is None:
                if not self._todo:
                    return
                self._open(self._todo.pop())
                continue
            fd, entries, prefix = self._current
            try:
                dirEntry = next(entries, None)
            except OSError as e:
                self.close()
                raise osError(e, prefix.rstrip("/") or "/") from None
            if dirEntry is None:
                self._current = None
                entries.close()  # type: ignore[attr-defined]
                os.close(fd)
                continue
            made = self._entry(fd, prefix, dirEntry)
            if made is not None:
                yield made

    def _open(self, segments: tuple[bytes, ...]) -> None:
        try:
            fd = openDirectory(self.rootFD, segments)
        except ProtocolError:
            if not self._opened:
                raise
            return  # removed or replaced since it was seen: nothing to list there
        self._opened = True
        try:
            entries = os.scandir(fd)
        except OSError as e:
            os.close(fd)
            raise osError(e, _text(segments)) from None
        prefix = _text(segments) + "/" if segments else ""
        self._current = (fd, iter(entries), prefix)
        self._path = segments

    def _entry(self, fd: int, prefix: str, dirEntry: os.DirEntry[str]) -> bytes | None:
        name = dirEntry.name
        if not visible(name):
            return None
        try:
            info = dirEntry.stat(follow_symlinks=False)
        except OSError:
            return None  # gone since it was read
        sha256 = digests.knownAt(fd, name, info) if stat.S_ISREG(info.st_mode) else None
        entry = entryOf(prefix + name, info, sha256)
        if entry is not None and self.recursive and stat.S_ISDIR(info.st_mode):
            self._todo.append((*self._path, name.encode("utf-8")))
        return entry


#: Bytes hashed per read when a download starts past offset 0 (the ``F``
#: digest is of the whole file, so the part not sent is read and hashed too).
PREFIX_CHUNK: Final = 1 << 20


class Source:
    """One ``G`` request's file: open once, so a file replaced meanwhile is
    sent whole as it was. Not thread-safe: used from one lane.

    :ivar size: the file's size when it was opened (what ``K sending`` says).
    :ivar stored: the digest kept for this exact content, if known.
    """

    def __init__(self, rootFD: int, segments: Sequence[bytes]) -> None:
        name = _text(segments)
        self.name = name
        parent = openDirectory(rootFD, segments[:-1])
        try:
            leaf = segments[-1]
            try:
                seen = os.stat(leaf, dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                raise ProtocolError("not-found", f"{name}: no such file") from None
            if not stat.S_ISREG(seen.st_mode):
                what = "a directory" if stat.S_ISDIR(seen.st_mode) else "not a regular file"
                raise ProtocolError("not-allowed", f"{name}: {what}")
            try:
                fd = os.open(leaf, _READ_FLAGS, dir_fd=parent)
            except FileNotFoundError:
                raise ProtocolError("not-found", f"{name}: no such file") from None
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENXIO):
                    raise ProtocolError("not-allowed", f"{name}: not a regular file") from None
                raise
        except OSError as e:
            raise osError(e, name) from None
        finally:
            os.close(parent)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):  # swapped since the lstat
                raise ProtocolError("not-allowed", f"{name}: not a regular file")
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        self.size = info.st_size
        self.stored = digests.known(fd, info)
        self.hasher = hashlib.sha256()
        self.position = 0
        self.closed = False

    def skipTo(self, offset: int) -> None:
        """Hash the first ``offset`` bytes, which the client already has."""
        while self.position < offset:
            self._read(min(PREFIX_CHUNK, offset - self.position))

    def read(self, frameSize: int, frames: int) -> list[bytes]:
        """Up to ``frames`` pieces of at most ``frameSize`` bytes from where the
        last read ended, hashed; an empty list at the end of the file."""
        pieces = []
        for _ in range(frames):
            left = self.size - self.position
            if not left:
                break
            pieces.append(self._read(min(frameSize, left)))
        return pieces

    def _read(self, n: int) -> bytes:
        try:
            data = os.pread(self.fd, n, self.position)
        except OSError as e:
            raise osError(e, self.name) from None
        if not data:
            raise self._shorter()
        self.hasher.update(data)
        self.position += len(data)
        return data

    def readInto(self, view: memoryview) -> int:
        """:meth:`read` of one piece into ``view`` (a reused buffer): its length."""
        try:
            got = os.preadv(self.fd, [view], self.position)
        except OSError as e:
            raise osError(e, self.name) from None
        if not got:
            raise self._shorter()
        self.hasher.update(view[:got])
        self.position += got
        return got

    def _shorter(self) -> ProtocolError:
        return ProtocolError(
            "size-mismatch",
            f"{self.name}: the file got shorter on the server during the download",
            fatal=False,
        )

    def finish(self) -> str:
        """The whole file's SHA-256, once everything was read.

        :raises ProtocolError: ``checksum-mismatch`` when the digest kept for
            this content differs from what was read (the data rotted on disk).
        """
        digest = self.hasher.hexdigest()
        if self.stored is not None and digest != self.stored:
            raise ProtocolError(
                "checksum-mismatch",
                f"{self.name}: the data on the server's disk no longer matches the "
                f"SHA-256 it was stored with ({self.stored}); it is damaged",
                fatal=False,
            )
        return digest

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(OSError):
                os.close(self.fd)
