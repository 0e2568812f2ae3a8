"""``netproto greet NAME``: the client half of the greet example.

netproto imports this module only when ``netproto greet`` runs. It provides
what :class:`netproto.services.ClientCommand` asks for: ``configure(parser)``
and ``async run(reactor, args) -> int``.
"""

from __future__ import annotations

import argparse
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import connectProtocol
from twisted.internet.error import ConnectError
from twisted.internet.protocol import connectionDone
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

from netproto.client.connection import addConnectionArguments, clientEndpoint
from netproto.client.framed import ClientError
from netproto.plugins.greet_plugin import PORT


def configure(parser: argparse.ArgumentParser) -> None:
    """The subcommand's arguments: a name, and where the server is."""
    parser.add_argument("name", metavar="NAME", help="who to greet")
    addConnectionArguments(parser, PORT)


class GreetClient(LineOnlyReceiver):
    """Sends one name; ``answer`` fires with the server's line."""

    delimiter = b"\r\n"
    MAX_LENGTH = 1024

    def __init__(self, name: str) -> None:
        self.name = name
        self.answer: Deferred[str] = Deferred()

    def connectionMade(self) -> None:
        self.sendLine(self.name.encode())

    def lineReceived(self, line: bytes) -> None:
        if not self.answer.called:
            self.answer.callback(line.decode("utf-8", "replace"))
        if self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.answer.called:
            self.answer.errback(ClientError("the server closed the connection"))


async def run(reactor: Any, args: argparse.Namespace) -> int:
    """Greet ``args.name`` and print the answer; a failure is one line (ClientError)."""
    client = GreetClient(args.name)
    try:
        await connectProtocol(clientEndpoint(reactor, args), client)
    except ConnectError as e:
        raise ClientError(f"cannot connect: {e}") from None
    print(await client.answer)  # noqa: T201 - the output asked for
    return 0
