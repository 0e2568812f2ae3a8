"""The SHA-256 the server knows for a stored file (PROTOCOL.md section 6).

When an upload stores a file, its verified SHA-256 is kept with the file
itself, in an extended attribute (:data:`XATTR`), together with what it
belongs to: the file's size, modification time (nanoseconds) and inode.
A listing then gives the digest without reading the file, ``G`` can tell
data that rotted on disk (the digest of what it read differs while size,
time and inode are unchanged: ``E checksum-mismatch``), and ``upload
--sync`` can skip files the server already holds.

Why an extended attribute and not an index of our own: it lives and dies
with the file (a file removed, replaced or copied elsewhere by the operator
takes or loses it by itself: a copy is a new inode, so its attribute, if
copied, no longer matches), it survives restarts with no file to keep
consistent, and reading it costs one ``getxattr``. A file changed in place
gets a new modification time, so a stale digest is never given out: it only
stops being known. Where the file system has no user extended attributes
(``ENOTSUP``: some tmpfs, NFS), digests are simply not known; everything
still works, downloads are still verified end to end by ``F``, and ``--sync``
uploads such files again (docs/upload.md).

Every function here does blocking I/O and runs in a worker thread.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Final

#: Where a stored file's digest is kept: ``user.`` attributes may be set by the
#: file's owner (the server) on regular files.
XATTR: Final = "user.netproto.sha256"
#: Version of the attribute's text; another version is ignored (unknown).
_VERSION: Final = "1"
#: Largest attribute value read back: ours is about 120 bytes; anything
#: longer was not written by this server.
MAX_VALUE: Final = 256

_HEX_DIGITS: Final = b"0123456789abcdef"


def _value(sha256: str, info: os.stat_result) -> bytes:
    return f"{_VERSION} {sha256} {info.st_size} {info.st_mtime_ns} {info.st_ino}".encode("ascii")


def record(fd: int, sha256: str) -> None:
    """Keep ``sha256`` as the digest of the open file ``fd`` as it is now
    (once its last byte is written). Never raises: a file system without
    extended attributes, or one that is full, only leaves the digest unknown."""
    with contextlib.suppress(OSError):
        os.setxattr(fd, XATTR, _value(sha256, os.fstat(fd)))


def _parse(raw: bytes, info: os.stat_result) -> str | None:
    if len(raw) > MAX_VALUE:
        return None
    version, _, rest = raw.partition(b" ")
    sha256, _, belongs = rest.partition(b" ")
    if version != _VERSION.encode() or len(sha256) != 64:
        return None
    # Compared as text: what it belongs to must be exactly this file now.
    if belongs != b"%d %d %d" % (info.st_size, info.st_mtime_ns, info.st_ino):
        return None  # the file changed since: the digest is not this content's
    # Lowercase hex: nothing left once the hex digits are deleted.
    return None if sha256.translate(None, _HEX_DIGITS) else sha256.decode("ascii")


def known(fd: int, info: os.stat_result) -> str | None:
    """The stored digest of the open file ``fd`` (whose status is ``info``)
    when it still belongs to this exact content; else ``None``."""
    try:
        raw = os.getxattr(fd, XATTR)
    except OSError:
        return None
    return _parse(raw, info)


def knownAt(dirFD: int, entry: str, info: os.stat_result) -> str | None:
    """The stored digest of ``entry`` in the directory ``dirFD`` (whose
    ``lstat`` is ``info``), without opening it and without following a
    symbolic link: ``getxattr`` has no ``dir_fd``, so the entry is named
    through the directory's handle in ``/proc/self/fd``, which leads to the
    directory that was opened (confined) whatever was renamed since."""
    try:
        raw = os.getxattr(f"/proc/self/fd/{dirFD}/{entry}", XATTR, follow_symlinks=False)
    except OSError:
        return None
    return _parse(raw, info)


#: Bytes read at a time by :func:`hashPrefix`: large reads for speed, one
#: buffer reused, so hashing a file of any size holds this much.
HASH_CHUNK: Final = 1 << 20


def hashPrefix(fd: int, length: int, hasher: Any) -> int:
    """Feed the first ``length`` bytes of the file ``fd`` to ``hasher`` and
    return how many there were: fewer when the file is shorter. Read with
    ``pread``, so ``fd``'s offset is left where it was. A hash state cannot
    be saved, so every resume (an upload's on the server, an upload's or a
    download's on the client) re-reads what it kept, and ``--sync`` hashes
    whole local files, with this one function. Blocking: call it in a worker
    thread."""
    buf = bytearray(min(HASH_CHUNK, length))
    view = memoryview(buf)
    position = 0
    while position < length:
        n = os.preadv(fd, [view[: min(len(buf), length - position)]], position)
        if n <= 0:
            break
        hasher.update(view[:n])
        position += n
    return position
