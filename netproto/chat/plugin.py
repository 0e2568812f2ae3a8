"""The chat service's plugin declaration and its ``twistd netproto`` options.

This module is imported whenever plugins are discovered (``twistd --help``), so it
imports nothing but the plugin API; the coerce functions below are its only code.
Every limit is explained in ``docs/chat.md``.
"""

from __future__ import annotations

from netproto.services import LazyService


def _count(text: str) -> int:
    """A whole number >= 0 (0 turns the limit or feature off where the doc says so)."""
    value = int(text)
    if value < 0:
        raise ValueError(f"{text!r} is negative")
    return value


def _positive(text: str) -> int:
    """A whole number >= 1."""
    value = int(text)
    if value < 1:
        raise ValueError(f"{text!r} is not at least 1")
    return value


def _seconds(text: str) -> float:
    """A duration or rate >= 0 (0 turns the feature off)."""
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"{text!r} is not a finite number >= 0")
    return value


_count.coerceDoc = "Must be a whole number >= 0."  # type: ignore[attr-defined]
_positive.coerceDoc = "Must be a whole number >= 1."  # type: ignore[attr-defined]
_seconds.coerceDoc = "Must be a number >= 0."  # type: ignore[attr-defined]

service = LazyService(
    name="chat",
    description="multi-user chat for telnet, netcat and `netproto chat` (LineReceiver)",
    defaultEndpoint="tcp:8000:interface=127.0.0.1",
    builder="netproto.chat.server.makeFactory",
    enabledByDefault=True,
    optParameters=[
        ["chat-history", None, 20,
         "Messages of a room replayed (marked as history) to a client that joins it; 0 disables.",
         _count],
        ["chat-max-line", None, 4096,
         "Longest input line in bytes; a longer one gets '! line too long' and is dropped.",
         _positive],
        ["chat-max-queue", None, 262144,
         "Bytes of output queued for a client that does not read before it is cut off.",
         _positive],
        ["chat-rate", None, 20.0,
         "Lines per second a client may send on average ('! slow down' past it); 0 disables.",
         _seconds],
        ["chat-burst", None, 40,
         "Lines a client may send at once before --chat-rate applies.",
         _positive],
        ["chat-max-clients", None, 10000,
         "Connections in total; past it a new client gets '! server full'. 0 = no cap.",
         _count],
        ["chat-max-per-address", None, 64,
         "Connections from one IP address; past it '! server full'. 0 = no cap.",
         _count],
        ["chat-idle-timeout", None, 0.0,
         "Seconds without a line from a client before it is disconnected; 0 disables.",
         _seconds],
    ],
)  # fmt: skip
