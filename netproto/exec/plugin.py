"""The exec service's plugin declaration and its ``twistd netproto`` options."""

from netproto.services import LazyService

service = LazyService(
    name="exec",
    description="remote command execution, streamed, with stdin, signals and timeouts",
    defaultEndpoint="tcp:8001:interface=127.0.0.1",
    builder="netproto.exec.server.makeFactory",
    enabledByDefault=True,
    optParameters=[],
)
