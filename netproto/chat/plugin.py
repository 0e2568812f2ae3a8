"""The chat service's plugin declaration: its ``twistd netproto`` options and
its ``netproto chat`` subcommand.

This module is imported whenever plugins are discovered (``twistd --help``), so it
imports nothing but the plugin API, the options' coerce functions and the chat's
limits (:class:`~netproto.chat.config.ChatConfig`, a plain dataclass), whose
defaults are the options' defaults: written once, there, with their reasons.
Every limit is explained in ``docs/chat.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from netproto.chat.config import ChatConfig
from netproto.chat.redisurl import redisURL
from netproto.options import count, positive, seconds
from netproto.services import ClientCommand, LazyService, ServerContext

if TYPE_CHECKING:
    from netproto.chat.server import ChatFactory

_DEFAULT = ChatConfig()


def buildFactory(context: ServerContext) -> ChatFactory:
    """The chat's factory, one per server (:meth:`ServerContext.shared`): the chat
    listener's, and the web service's, whose browser members join the same chat."""
    from netproto.chat.server import makeFactory

    factory: ChatFactory = context.shared("chat", lambda: makeFactory(context))
    return factory


def usesRedis(options: Mapping[str, Any]) -> bool:
    """Whether the chat is clustered (``--chat-redis``): txredisapi imports
    pyOpenSSL whatever the URL, so the server keeps it (netproto.tlsimports)."""
    return options.get("chat-redis") is not None


service = LazyService(
    name="chat",
    description="multi-user chat for telnet, netcat and `netproto chat` (LineReceiver)",
    defaultEndpoint="tcp:8000:interface=127.0.0.1",
    builder="netproto.chat.plugin.buildFactory",
    enabledByDefault=True,
    usesOpenSSL=usesRedis,
    client=ClientCommand(
        "netproto.chat.client", "join the chat (interactive, or lines from stdin)"
    ),
    optParameters=[
        ["chat-history", None, _DEFAULT.history,
         "Messages of a room replayed (marked as history) to a client that joins it; 0 disables.",
         count],
        ["chat-max-line", None, _DEFAULT.maxLine,
         "Longest input line in bytes; a longer one gets '! line too long' and is dropped.",
         positive],
        ["chat-max-queue", None, _DEFAULT.maxQueue,
         "Bytes of output queued for a client that does not read before it is cut off.",
         positive],
        ["chat-rate", None, _DEFAULT.rate,
         "Lines per second a client may send on average ('! slow down' past it); 0 disables.",
         seconds],
        ["chat-burst", None, _DEFAULT.burst,
         "Lines a client may send at once before --chat-rate applies.",
         positive],
        ["chat-max-clients", None, _DEFAULT.maxClients,
         "Connections in total; past it a new client gets '! server full'. 0 = no cap.",
         count],
        ["chat-max-per-address", None, _DEFAULT.maxPerAddress,
         "Connections from one IP address; past it '! server full'. 0 = no cap.",
         count],
        ["chat-idle-timeout", None, _DEFAULT.idleTimeout,
         "Seconds without a line from a client before it is disconnected; 0 disables.",
         seconds],
        ["chat-close-grace", None, _DEFAULT.closeGrace,
         "Seconds a closing client has to read what is queued for it before it is aborted.",
         seconds],
        ["chat-redis", None, None,
         "redis://HOST:PORT/DB (rediss:// for TLS; a password as redis://:PASS@HOST): one "
         "chat with every server naming the same Redis. Unset: this server alone, no Redis.",
         redisURL],
    ],
)  # fmt: skip
