"""Two tiny services that show the plugin API: a TCP line echo and a UDP echo."""

from __future__ import annotations

from twisted.internet.protocol import DatagramProtocol, Factory
from twisted.protocols.basic import LineOnlyReceiver

from netproto.services import ServerContext


class LineEcho(LineOnlyReceiver):
    """Sends every line back, CRLF-terminated; an over-long line closes the connection."""

    delimiter = b"\n"
    factory: LineEchoFactory

    def connectionMade(self) -> None:
        self.MAX_LENGTH = self.factory.maxLine

    def lineReceived(self, line: bytes) -> None:
        self.sendLine(line.rstrip(b"\r") + b"\r")


class LineEchoFactory(Factory):
    protocol = LineEcho  # type: ignore[assignment]

    def __init__(self, maxLine: int) -> None:
        self.maxLine = maxLine


def makeEchoFactory(context: ServerContext) -> LineEchoFactory:
    """The ``echo`` service's factory; ``--echo-max-line`` bounds a line."""
    return LineEchoFactory(int(context.options.get("echo-max-line", 16384)))


class DatagramEcho(DatagramProtocol):
    """Sends every datagram back to where it came from."""

    def __init__(self, context: ServerContext) -> None:
        self.context = context

    def datagramReceived(self, datagram: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.write(datagram, addr)
