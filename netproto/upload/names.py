"""Upload names (PROTOCOL.md section 4): which names a client may use, as pure functions.

A name is a relative path of ``/``-separated segments. Each segment is 1-255
bytes of UTF-8 with no NUL, control character or backslash, is not ``.`` or
``..`` and does not start with ``.netproto`` (the prefix of the server's own
files, so no client name can ever collide with a temporary or resume file).

Checking the name is the first of two defences: it keeps ``..`` and absolute
paths out. The second is in :mod:`netproto.upload.store`, which opens every
segment relative to its parent's directory handle without following
symbolic links, so nothing planted inside the upload directory can lead
outside it either.
"""

from __future__ import annotations

import hashlib
import unicodedata
from typing import Final

from netproto.errors import ProtocolError

#: Longest segment in bytes: NAME_MAX of every common POSIX file system.
MAX_SEGMENT_BYTES: Final = 255
#: Longest whole name in bytes (PATH_MAX less the terminating NUL). PROTOCOL.md
#: does not bound the depth; without a bound one P frame could ask for
#: tens of thousands of nested directories.
MAX_NAME_BYTES: Final = 4095
#: Names starting with this are the server's own (temporary and resume files).
RESERVED_PREFIX: Final = ".netproto"
#: Prefix of the file that holds an upload's data until it is renamed into place.
PARTIAL_PREFIX: Final = RESERVED_PREFIX + "-part-"


def _refuse(message: str) -> ProtocolError:
    return ProtocolError("invalid-name", message)


def splitName(name: object) -> tuple[bytes, ...]:
    """The segments of a valid upload name, UTF-8 encoded, in order.

    The bytes are exactly the UTF-8 of what the client sent (no Unicode
    normalisation), so a file is stored under the name its owner chose.

    :raises ProtocolError: ``invalid-name``, with a message saying which rule
        the name breaks.
    """
    if not isinstance(name, str):
        raise _refuse("name must be a string")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise _refuse("name is not valid Unicode (lone surrogate)") from None
    if not encoded:
        raise _refuse("name is empty")
    if len(encoded) > MAX_NAME_BYTES:
        raise _refuse(f"name is {len(encoded)} bytes long, over the limit of {MAX_NAME_BYTES}")
    if encoded.startswith(b"/"):
        raise _refuse("absolute names are not allowed: names are relative to the upload directory")
    segments = encoded.split(b"/")
    for raw, text in zip(segments, name.split("/"), strict=True):
        checkSegment(raw, text)
    return tuple(segments)


def checkSegment(raw: bytes, text: str) -> None:
    """Refuse one segment (``raw`` is the UTF-8 of ``text``) that breaks a rule."""
    if not raw:
        raise _refuse("empty segment: no leading, trailing or double '/'")
    if len(raw) > MAX_SEGMENT_BYTES:
        raise _refuse(f"segment of {len(raw)} bytes, over the limit of {MAX_SEGMENT_BYTES}")
    if text in (".", ".."):
        raise _refuse(f"segment {text!r} is not allowed")
    if "\\" in text:
        raise _refuse("backslash is not allowed in names")
    for ch in text:
        # Category Cc: C0 controls (NUL included), DEL and C1 controls.
        if unicodedata.category(ch) == "Cc":
            raise _refuse(f"control character U+{ord(ch):04X} is not allowed in names")
    if text.startswith(RESERVED_PREFIX):
        raise _refuse(f"names starting with {RESERVED_PREFIX!r} are reserved for the server")


def partialName(leaf: bytes, size: int) -> bytes:
    """The name of the file holding the data of ``leaf`` (of ``size`` bytes) until
    it is complete, in the same directory.

    It is a function of the name and the size only, so an interrupted upload
    is found again by the next ``P`` of the same name and size (resume), and
    two uploads of the same file meet at one file whose lock says it is busy.
    The leaf is hashed to keep the name short and free of anything the
    client chose.
    """
    digest = hashlib.sha256(leaf).hexdigest()[:32]
    return f"{PARTIAL_PREFIX}{digest}-{size}".encode("ascii")


def isPartialName(entry: str) -> bool:
    """Whether a directory entry is one of the server's partial-upload files."""
    return entry.startswith(PARTIAL_PREFIX)
