"""Declarations of the example services (served only with ``--service``)."""

from netproto.services import LazyService, never

echo = LazyService(
    name="echo",
    description="TCP line echo: every line comes back (an example plugin)",
    defaultEndpoint="tcp:8007:interface=127.0.0.1",
    builder="netproto.examples.echo.makeEchoFactory",
    optParameters=[["echo-max-line", None, 16384, "longest echo line in bytes", int]],
    usesOpenSSL=never,
)

dgramEcho = LazyService(
    name="dgram-echo",
    description="UDP echo: every datagram comes back (an example datagram plugin)",
    defaultEndpoint="udp:8007:interface=127.0.0.1",
    builder="netproto.examples.echo.DatagramEcho",
    kind="datagram",
    usesOpenSSL=never,
)
