"""The chat service's plugin declaration and its ``twistd netproto`` options.

This module is imported whenever plugins are discovered (``twistd --help``), so it
imports nothing but the plugin API and the options' coerce functions.
Every limit is explained in ``docs/chat.md``.
"""

from __future__ import annotations

from netproto.options import count, positive, seconds
from netproto.services import LazyService

service = LazyService(
    name="chat",
    description="multi-user chat for telnet, netcat and `netproto chat` (LineReceiver)",
    defaultEndpoint="tcp:8000:interface=127.0.0.1",
    builder="netproto.chat.server.makeFactory",
    enabledByDefault=True,
    optParameters=[
        ["chat-history", None, 20,
         "Messages of a room replayed (marked as history) to a client that joins it; 0 disables.",
         count],
        ["chat-max-line", None, 4096,
         "Longest input line in bytes; a longer one gets '! line too long' and is dropped.",
         positive],
        ["chat-max-queue", None, 262144,
         "Bytes of output queued for a client that does not read before it is cut off.",
         positive],
        ["chat-rate", None, 20.0,
         "Lines per second a client may send on average ('! slow down' past it); 0 disables.",
         seconds],
        ["chat-burst", None, 40,
         "Lines a client may send at once before --chat-rate applies.",
         positive],
        ["chat-max-clients", None, 10000,
         "Connections in total; past it a new client gets '! server full'. 0 = no cap.",
         count],
        ["chat-max-per-address", None, 64,
         "Connections from one IP address; past it '! server full'. 0 = no cap.",
         count],
        ["chat-idle-timeout", None, 0.0,
         "Seconds without a line from a client before it is disconnected; 0 disables.",
         seconds],
        ["chat-close-grace", None, 5.0,
         "Seconds a closing client has to read what is queued for it before it is aborted.",
         seconds],
    ],
)  # fmt: skip
