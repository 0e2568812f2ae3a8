"""The error codes of the framed services and the one exception that carries them.

A peer's mistake is raised as :class:`ProtocolError` anywhere below the framed
protocol; :class:`netproto.framing.FramedProtocol` is the single place that turns
it into an ``E`` frame (and a close, when the error is fatal) and logs it with
the peer's address. Anything else that escapes a handler is our bug: it is
logged with its traceback and the peer only sees ``E internal``.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

ErrorCode = Literal[
    "bad-frame",
    "frame-too-large",
    "auth-required",
    "auth-failed",
    "busy",
    "not-allowed",
    "not-found",
    "exists",
    "invalid-name",
    "too-large",
    "size-mismatch",
    "checksum-mismatch",
    "no-space",
    "timeout",
    "internal",
]

#: Every code PROTOCOL.md section 2 defines, in its order.
ERROR_CODES: Final[tuple[ErrorCode, ...]] = get_args(ErrorCode)

#: Codes after which the server always closes the connection.
FATAL_CODES: Final[frozenset[ErrorCode]] = frozenset(
    {"bad-frame", "frame-too-large", "auth-required", "auth-failed", "timeout", "internal"}
)


class ProtocolError(Exception):
    """A refusal the peer must hear about as an ``E`` frame.

    :param code: one of :data:`ERROR_CODES`.
    :param message: a human-readable sentence for the peer (and the log).
    :param fatal: close the connection after sending the error; defaults to
        whether ``code`` is one of :data:`FATAL_CODES`.
    """

    def __init__(self, code: ErrorCode, message: str, *, fatal: bool | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code: ErrorCode = code
        self.message = message
        self.fatal = code in FATAL_CODES if fatal is None else fatal
