"""The chat service's plugin declaration and its ``twistd netproto`` options."""

from netproto.services import LazyService

service = LazyService(
    name="chat",
    description="multi-user chat for telnet, netcat and `netproto chat` (LineReceiver)",
    defaultEndpoint="tcp:8000:interface=127.0.0.1",
    builder="netproto.chat.server.makeFactory",
    enabledByDefault=True,
    optParameters=[],
)
