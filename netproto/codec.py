"""The framed wire format, sans-IO (PROTOCOL.md section 2): everything a
client or a server needs to speak it, and nothing about sockets or Twisted.

Feed a :class:`FrameDecoder` the bytes that arrived and take ``(type,
payload)`` frames out of it; build frames with :func:`encodeFrame` (or
:func:`frameHeader` before a payload sent as is), control payloads with
:func:`encodeJSON`, and read a peer's with :func:`decodeJSON`, which applies
the limits that keep a hostile payload harmless. The hello (``H``) is built
with :meth:`Hello.encode` and read with :meth:`Hello.decode`. The limits on
frame lengths are here because both ends need them; when to apply which one
(before or after authentication) is the server base's business
(:mod:`netproto.framing`), as is every timer and the state machine.

The decoder keeps one linear receive buffer (a ``bytearray`` and a read
offset), so a 256 KiB frame that arrives in 64 KiB reads is copied into the
buffer once and sliced out once, instead of Twisted's ``IntNStringReceiver``
re-concatenating everything it holds on every read (quadratic in the number of
reads per frame). The length limit is checked as soon as the four length bytes
are in, before anything else is buffered.
"""

from __future__ import annotations

import itertools
import json
import re
import struct
from collections.abc import Container, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from netproto import __version__
from netproto.errors import ProtocolError

#: The length before every frame: 4 bytes, unsigned, big-endian.
HEADER: Final = struct.Struct(">I")

#: Largest frame (type byte included) a peer may send before it has
#: authenticated: enough for an ``A`` frame, small enough that an anonymous
#: peer cannot make the server buffer much.
PRE_AUTH_MAX_FRAME: Final = 4 * 1024
#: Default largest frame after authentication: a 256 KiB data payload plus its
#: type byte. Announced in the hello as ``max_frame``.
DEFAULT_MAX_FRAME: Final = 256 * 1024 + 1

#: Deepest nesting of arrays and objects in a control payload. netproto's own
#: payloads nest two levels (``{"env": {...}}``); 32 leaves plugins room and
#: stays far below Python's recursion limit, so neither the decoder nor code
#: walking a request can exhaust the stack (a 4 KiB ``A`` frame of ``[`` was a
#: ``RecursionError``, an ``E internal`` and a traceback in the log).
MAX_JSON_DEPTH: Final = 32
#: Largest magnitude of a number in a control payload: what a signed 64-bit
#: integer holds in any client's language. Every quantity of the protocol
#: (sizes, offsets, seconds) is far below it; beyond it numbers overflow
#: ``float()``, ``time_t`` and file offsets (a 400-digit ``timeout`` was an
#: ``OverflowError`` in exec).
MAX_JSON_NUMBER: Final = 2**63 - 1
#: Characters of the longest integer within :data:`MAX_JSON_NUMBER`, sign
#: included: longer ones are refused before Python converts them (which costs
#: time quadratic in their length).
_MAX_INT_CHARS: Final = len(str(-MAX_JSON_NUMBER))

_TYPE_BYTES: Final = [bytes((i,)) for i in range(256)]


class FrameTooLarge(Exception):
    """The peer announced a frame longer than the current limit."""

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"frame of {length} bytes is over the limit of {limit}")
        self.length = length
        self.limit = limit


class EmptyFrame(Exception):
    """The peer announced a frame of length 0: there is not even a type byte."""


def encodeFrame(kind: bytes, payload: bytes | bytearray = b"") -> bytes:
    """One frame: the big-endian length of type byte plus payload, then both."""
    return HEADER.pack(len(payload) + 1) + kind + payload


def frameHeader(kind: bytes, payloadLength: int) -> bytes:
    """What goes before a payload of ``payloadLength`` bytes sent on its own
    (``writeSequence([frameHeader(kind, len(p)), p])``: a large payload is
    not copied into a new string)."""
    return HEADER.pack(payloadLength + 1) + kind


# One encoder for every control payload: json.dumps with non-default
# arguments builds a new encoder on each call.
_JSON_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def encodeJSON(obj: Mapping[str, Any]) -> bytes:
    """The compact UTF-8 JSON used for every control payload."""
    return _JSON_ENCODER.encode(obj).encode("utf-8")


def _parseInt(text: str) -> int:
    if len(text) > _MAX_INT_CHARS or abs(value := int(text)) > MAX_JSON_NUMBER:
        raise ProtocolError("bad-frame", f"an integer of {len(text)} characters is out of range")
    return value


def _parseFloat(text: str) -> float:
    value = float(text)
    if not abs(value) <= MAX_JSON_NUMBER:  # also false for NaN
        raise ProtocolError("bad-frame", f"the number {text[:40]} is out of range")
    return value


def _parseConstant(name: str) -> float:
    raise ProtocolError("bad-frame", f"{name} is not a number JSON allows")


# One decoder for every control payload: numbers checked as they are parsed.
_JSON_DECODER: Final = json.JSONDecoder(
    parse_int=_parseInt, parse_float=_parseFloat, parse_constant=_parseConstant
)

#: A JSON string (or, unterminated, the rest of the payload). It matches at
#: every ``"`` without backtracking, so stripping strings is linear however the
#: payload is crafted.
_STRING: Final = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKETS: Final = bytes(b for b in range(256) if b not in b"[]{}")
#: Opening brackets to the signed byte +1, closing ones to -1.
_NESTING: Final = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
#: ``\uD800`` to ``\uDFFF`` escapes: the only way a payload can carry a lone surrogate.
_SURROGATE_ESCAPE: Final = re.compile(rb"\\u[dD][89a-fA-F]")


def nestedDeeperThan(payload: bytes, limit: int) -> bool:
    """Whether the arrays and objects of a JSON ``payload`` nest deeper than
    ``limit``, found without parsing it: the brackets outside strings are
    counted, at C speed (two counts when there are few brackets at all).

    Never an underestimate of how deep a JSON parser would go, valid payload
    or not: up to where a parser stops, its strings are the ones stripped here.
    """
    if payload.count(b"[") + payload.count(b"{") <= limit:
        return False
    steps = _STRING.sub(b"", payload).translate(_NESTING, _NOT_BRACKETS)
    with memoryview(steps) as view:
        return max(itertools.accumulate(view.cast("b")), default=0) > limit


def decodeJSON(payload: bytes) -> dict[str, Any]:
    """Parse a control payload a peer sent: a JSON object in UTF-8.

    What comes back is sane to use: nested at most :data:`MAX_JSON_DEPTH`
    deep, every number finite and within :data:`MAX_JSON_NUMBER`, every
    string encodable (no lone surrogates). Anything else, and any way the
    payload fails to parse, is :class:`ProtocolError` ``bad-frame`` (one
    log line and a close, never a traceback).
    """
    if nestedDeeperThan(payload, MAX_JSON_DEPTH):
        raise ProtocolError("bad-frame", f"payload nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        obj = _JSON_DECODER.decode(payload.decode("utf-8"))
    except ProtocolError:
        raise
    except Exception as e:  # every way a peer's bytes can fail to parse is its mistake
        raise ProtocolError("bad-frame", f"payload is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad-frame", "payload must be a JSON object")
    if _SURROGATE_ESCAPE.search(payload):
        try:
            encodeJSON(obj)
        except UnicodeEncodeError:
            raise ProtocolError(
                "bad-frame", "payload has a lone surrogate (\\uD800-\\uDFFF)"
            ) from None
    return obj


class FrameDecoder:
    """Turn a byte stream into frames, without I/O.

    >>> d = FrameDecoder(maxFrame=100)
    >>> d.feed(b"\\x00\\x00\\x00\\x03Khi\\x00\\x00")
    >>> d.next()
    (b'K', b'hi')
    >>> d.next() is None
    True

    Reads are parsed in place where possible; a frame that spans many reads
    is accumulated in a ``bytearray`` that grows by appending. Either way each
    byte is copied a bounded number of times (into the buffer at most twice,
    out as payload once), however many reads a frame spans, where Twisted's
    ``IntNStringReceiver`` re-copies its whole buffer on every read.

    :meth:`take` can instead pass bulk frames (an upload's data) through in
    pieces as they arrive, as views of the received reads: no copy at all.

    :ivar maxFrame: the largest frame length (type byte included) accepted;
        it may be changed between frames, e.g. once the peer authenticates.
    :ivar completed: how many frames have come out whole (a streamed frame
        counts once its last piece has), so a caller can tell whether a frame
        ended without looking at each one.
    """

    __slots__ = ("_buf", "_pos", "_streamKind", "_streamLeft", "completed", "maxFrame")

    def __init__(self, maxFrame: int) -> None:
        self.maxFrame = maxFrame
        self.completed = 0
        self._buf: bytes | bytearray = b""
        self._pos = 0
        #: payload bytes still to come of the frame :meth:`take` is streaming
        self._streamLeft = 0
        self._streamKind = b""

    def __len__(self) -> int:
        """Bytes received and not yet returned as frames."""
        return len(self._buf) - self._pos

    @property
    def inFrame(self) -> bool:
        """Whether bytes of a frame have arrived and the frame has not come out
        whole yet (or frames are held: a caller that stopped taking them)."""
        return self._streamLeft > 0 or len(self._buf) > self._pos

    def feed(self, data: bytes) -> None:
        """Add received bytes."""
        buf, pos = self._buf, self._pos
        rest = len(buf) - pos
        if rest == 0:
            self._buf, self._pos = data, 0
        elif rest <= len(data):
            # A short tail of the last read: joining it to this read costs at
            # most twice this read, and the result is parsed in place.
            with memoryview(buf) as view:
                self._buf, self._pos = bytes(view[pos:]) + data, 0
        elif isinstance(buf, bytes):
            # A frame that spans reads: accumulate it by appending.
            with memoryview(buf) as view:
                self._buf = bytearray(view[pos:])
            self._buf += data
            self._pos = 0
        else:
            if pos * 2 >= len(buf):
                del buf[:pos]
                self._pos = 0
            buf += data

    def next(self) -> tuple[bytes, bytes] | None:
        """The next complete frame as ``(type byte, payload)``, or ``None``.

        :raises FrameTooLarge: when the next length is over :attr:`maxFrame`;
            it is raised as soon as the four length bytes are in.
        :raises EmptyFrame: when the next length is 0.
        """
        if self._streamLeft:
            raise RuntimeError("next() in the middle of a frame that take() streams")
        buf, pos = self._buf, self._pos
        avail = len(buf) - pos
        if avail < 4:
            return None
        (length,) = HEADER.unpack_from(buf, pos)
        if length > self.maxFrame:
            raise FrameTooLarge(length, self.maxFrame)
        if length == 0:
            raise EmptyFrame()
        if avail < 4 + length:
            return None
        kind = _TYPE_BYTES[buf[pos + 4]]
        end = pos + 4 + length
        if isinstance(buf, bytes):
            payload = buf[pos + 5 : end]
        else:
            with memoryview(buf) as view:
                payload = bytes(view[pos + 5 : end])
        if end == len(buf):
            self._buf, self._pos = b"", 0
        else:
            self._pos = end
        self.completed += 1
        return kind, payload

    def take(self, streamed: Container[bytes]) -> tuple[bytes, bytes | memoryview] | None:
        """Like :meth:`next`, but a frame whose type is in ``streamed`` comes
        out in pieces, as soon as its header and some of its payload are in.

        A streamed frame gives one ``(type, piece)`` per call for each run of
        its payload received so far, in order (an empty frame gives one empty
        piece), so its bytes are never buffered here. A piece is a read-only
        ``memoryview`` of the bytes object the transport read, so holding it
        keeps that read alive; the caller accounts for what it holds. (Only a
        piece of a frame that was being accumulated from short reads is a
        copy.) The length limit is checked as for :meth:`next`.
        """
        left = self._streamLeft
        buf, pos = self._buf, self._pos
        avail = len(buf) - pos
        if left:
            if avail == 0:
                return None
            n = min(avail, left)
            self._streamLeft = left - n
            if n == left:
                self.completed += 1
            return self._streamKind, self._piece(buf, pos, pos + n)
        if avail < 5 or _TYPE_BYTES[buf[pos + 4]] not in streamed:
            return self.next()
        (length,) = HEADER.unpack_from(buf, pos)
        if length > self.maxFrame:
            raise FrameTooLarge(length, self.maxFrame)
        if length == 0:
            raise EmptyFrame()
        kind = _TYPE_BYTES[buf[pos + 4]]
        n = min(avail - 5, length - 1)
        if n == 0 and length > 1:
            # The header alone: the payload comes with the next reads.
            self._streamLeft, self._streamKind = length - 1, kind
            self._advance(buf, pos + 5)
            return None
        self._streamLeft, self._streamKind = length - 1 - n, kind
        if n == length - 1:
            self.completed += 1
        return kind, self._piece(buf, pos + 5, pos + 5 + n)

    def _piece(self, buf: bytes | bytearray, start: int, end: int) -> bytes | memoryview:
        """``buf[start:end]``, then consume up to ``end``. A view of a read
        (immutable); a copy from the accumulation buffer, which changes."""
        if start == end:
            piece: bytes | memoryview = b""
        elif isinstance(buf, bytes):
            piece = memoryview(buf)[start:end]
        else:
            with memoryview(buf) as view:
                piece = bytes(view[start:end])
        self._advance(buf, end)
        return piece

    def _advance(self, buf: bytes | bytearray, end: int) -> None:
        if end == len(buf):
            self._buf, self._pos = b"", 0
        else:
            self._pos = end


#: The protocol version a hello announces (PROTOCOL.md section 2).
PROTOCOL_VERSION: Final = 1


@dataclass(frozen=True)
class Hello:
    """The ``H`` frame a framed server sends first: which service this is, the
    authentication methods it takes and the largest frame it accepts once
    authenticated.

    :ivar features: the optional parts of PROTOCOL.md sections 5 and 6 the
        server offers (``"pty"`` on exec; ``"list"``, ``"get"``,
        ``"pipeline"`` on upload). A client checks it before using them; a
        version-1 client ignores it.
    :ivar extra: fields this version does not know (a newer server's), kept
        so that a client can look at them; a client ignores what it does not
        know (PROTOCOL.md: new optional fields may appear in any payload).
    """

    service: str
    auth: tuple[str, ...]
    maxFrame: int = DEFAULT_MAX_FRAME
    protocol: int = PROTOCOL_VERSION
    server: str = f"netproto/{__version__}"
    features: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        """The hello's payload, fields in the order PROTOCOL.md lists them."""
        return encodeJSON(
            {
                "service": self.service,
                "protocol": self.protocol,
                "server": self.server,
                "auth": list(self.auth),
                "max_frame": self.maxFrame,
                "features": list(self.features),
                **self.extra,
            }
        )

    @classmethod
    def decode(cls, payload: bytes) -> Hello:
        """Read a hello a server sent.

        :raises ProtocolError: ``bad-frame`` when the payload is not a JSON
            object (see :func:`decodeJSON`) or a field has the wrong type.
        """
        return cls.fromFields(decodeJSON(payload))

    @classmethod
    def fromFields(cls, fields: Mapping[str, Any]) -> Hello:
        """Read a hello whose payload is already decoded (see :meth:`decode`)."""
        fields = dict(fields)
        service = fields.pop("service", None)
        protocol = fields.pop("protocol", PROTOCOL_VERSION)
        server = fields.pop("server", "")
        auth = fields.pop("auth", [])
        maxFrame = fields.pop("max_frame", DEFAULT_MAX_FRAME)
        features = fields.pop("features", [])
        if not isinstance(service, str) or not isinstance(server, str):
            raise ProtocolError("bad-frame", "hello: 'service' and 'server' must be strings")
        if not isinstance(auth, list) or not all(isinstance(m, str) for m in auth):
            raise ProtocolError("bad-frame", "hello: 'auth' must be a list of strings")
        if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
            raise ProtocolError("bad-frame", "hello: 'features' must be a list of strings")
        for name, value in (("protocol", protocol), ("max_frame", maxFrame)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ProtocolError("bad-frame", f"hello: {name!r} must be a whole number >= 1")
        return cls(service, tuple(auth), maxFrame, protocol, server, tuple(features), fields)
