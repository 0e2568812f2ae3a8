"""The "shout" service: every line you send comes back in capitals.

This is the code of the extending tutorial (docs/extending.md). It is a
stand-alone module: nothing in netproto knows about it.
"""

from __future__ import annotations

from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineOnlyReceiver

from netproto.services import ServerContext


class Shout(LineOnlyReceiver):
    """Answers each line with the same line in upper case."""

    delimiter = b"\n"
    MAX_LENGTH = 1024

    def lineReceived(self, line: bytes) -> None:
        text = line.rstrip(b"\r").decode("utf-8", "replace")
        self.sendLine(text.upper().encode("utf-8") + b"\r")

    def lineLengthExceeded(self, line: bytes) -> None:
        self.sendLine(b"! line too long\r")
        if self.transport is not None:
            self.transport.loseConnection()


def makeFactory(context: ServerContext) -> Factory:
    """Called by netproto with the server context when the service starts."""
    return Factory.forProtocol(Shout)
