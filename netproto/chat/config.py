"""The chat service's limits, in one place, with the reason for each default.

``twistd netproto --chat-*`` options arrive in ``ServerContext.options``;
:meth:`ChatConfig.fromOptions` turns them into this object, which the state, the
protocol and the factory read. Tests build one directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

#: The ``twistd netproto`` option of each configurable limit, and its type.
#: Their defaults are :class:`ChatConfig`'s, which the chat plugin declares.
OPTIONS: Final = {
    "history": ("chat-history", int),
    "maxLine": ("chat-max-line", int),
    "maxQueue": ("chat-max-queue", int),
    "rate": ("chat-rate", float),
    "burst": ("chat-burst", int),
    "maxClients": ("chat-max-clients", int),
    "maxPerAddress": ("chat-max-per-address", int),
    "idleTimeout": ("chat-idle-timeout", float),
    "closeGrace": ("chat-close-grace", float),
}


@dataclass(frozen=True, slots=True)
class ChatConfig:
    """Every limit of one chat server.

    :ivar history: messages per room replayed to a joiner; 0 keeps none.
        Twenty lines are a screenful of context without flooding a newcomer.
    :ivar maxLine: longest input line in bytes (the CR of CRLF not counted);
        PROTOCOL.md section 1 says 4096.
    :ivar maxQueue: bytes of output the server may hold unsent for a client before
        it is cut off (256 KiB by contract): what Twisted's transport still holds,
        measured each time a line is queued (the history replay on joining
        included), so a reader that keeps up, however slowly, is never cut off and
        one that stops never holds more. Where the transport's buffer cannot be read
        (TLS), estimated as the transport's own threshold (see
        :data:`netproto.directsend.PAUSE_THRESHOLD`) plus what was written
        since it reported its buffer full.
    :ivar rate: sustained lines per second per client; 0 turns flood control off.
    :ivar burst: lines a client may send back to back before ``rate`` applies.
    :ivar maxClients: connections in total (0: no cap). Ten thousand leaves room
        for the 5000-member benchmark and then some; each idle member costs
        about 1.5 KiB.
    :ivar maxPerAddress: connections from one IP address (0: no cap); 64 lets a
        household or a NAT share an address but stops one host taking all slots.
    :ivar idleTimeout: seconds without a line before a client is disconnected;
        0 (the default) never disconnects a quiet reader.
    :ivar closeGrace: seconds a closing connection (``/quit``, the idle timeout) has
        to hand its client what is still queued before it is aborted. A reader on
        any live link takes ``maxQueue`` in far less than 5 s; a client that
        stopped reading, or whose host vanished, would otherwise keep its socket
        and its buffer forever. The member's connection slots are free as soon as
        it has left the chat, whatever this is; 0 aborts at once.
    :ivar noticeDelay: seconds a room notice (join, part, quit, nick change) may
        wait for a message to go out with; see :class:`netproto.chat.state.ChatRoom`.
        10 ms is far below what a person notices, and long enough for a client that
        connects and speaks at once to be heard in the same write as its join.
        Not a ``twistd`` option: a tuning constant, kept here to be tested.
    """

    history: int = 20
    maxLine: int = 4096
    maxQueue: int = 256 * 1024
    rate: float = 20.0
    burst: int = 40
    maxClients: int = 10000
    maxPerAddress: int = 64
    idleTimeout: float = 0.0
    closeGrace: float = 5.0
    noticeDelay: float = 0.01

    @classmethod
    def fromOptions(cls, options: Mapping[str, Any]) -> ChatConfig:
        """The config from parsed ``twistd netproto`` options; missing ones keep their defaults."""
        values: dict[str, Any] = {}
        for attr, (option, kind) in OPTIONS.items():
            if options.get(option) is not None:
                values[attr] = kind(options[option])
        return cls(**values)
