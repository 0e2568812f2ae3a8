"""The "greet" service: send a name, get a greeting back.

The server half of the example of a plugin that brings its own ``netproto``
subcommand (docs/extending.md); the client half is :mod:`greet_client`. Like
the shout example, nothing in netproto knows about it.
"""

from __future__ import annotations

from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineOnlyReceiver

from netproto.services import ServerContext


class Greeter(LineOnlyReceiver):
    """Answers each line (a name) with a greeting."""

    delimiter = b"\r\n"
    #: Longest name in bytes: a peer cannot make the server buffer more (a
    #: longer line closes the connection, LineOnlyReceiver's default).
    MAX_LENGTH = 256

    def lineReceived(self, line: bytes) -> None:
        name = line.decode("utf-8", "replace").strip() or "stranger"
        self.sendLine(f"hello, {name}".encode())


def makeFactory(context: ServerContext) -> Factory:
    """Called by netproto with the server context when the service starts."""
    return Factory.forProtocol(Greeter)
