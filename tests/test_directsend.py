"""netproto.directsend.sendNow on a real loopback TCP transport: at once, in order, or buffered."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport

from netproto.directsend import holdsNothing, sendNow
from tests.support import eventually


class Accepted(Protocol):
    connections: list[Accepted] = []

    def connectionMade(self) -> None:
        Accepted.connections.append(self)


@pytest_twisted.async_yield_fixture
async def pair() -> AsyncIterator[tuple[socket.socket, Any]]:
    """A blocking client socket and the server side's Twisted TCP transport."""
    Accepted.connections = []
    listener: Any = reactor
    port = listener.listenTCP(0, Factory.forProtocol(Accepted), interface="127.0.0.1")
    client = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=5)
    try:
        await eventually(lambda: Accepted.connections)
        yield client, Accepted.connections[0].transport
    finally:
        client.close()
        for proto in Accepted.connections:
            transport: Any = proto.transport
            transport.abortConnection()
        stopped: Any = port.stopListening()
        await stopped


def recvExactly(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        assert chunk, "closed"
        data += chunk
    return data


@pytest_twisted.ensureDeferred
async def test_sent_at_once_when_twisted_holds_nothing(
    pair: tuple[socket.socket, Any],
) -> None:
    """The peer can read the bytes before the reactor turns again: no buffering in Twisted."""
    client, transport = pair
    sendNow(transport, b"now")
    assert holdsNothing(transport)
    assert recvExactly(client, 3) == b"now"  # blocking read; the reactor has not run


@pytest_twisted.ensureDeferred
async def test_behind_buffered_data_it_is_buffered_too(pair: tuple[socket.socket, Any]) -> None:
    """When Twisted holds earlier bytes, later ones queue behind them: order is kept."""
    client, transport = pair
    transport.write(b"first ")
    sendNow(transport, b"second")
    assert not holdsNothing(transport)
    await eventually(lambda: holdsNothing(transport))
    assert recvExactly(client, 12) == b"first second"


@pytest_twisted.ensureDeferred
async def test_a_closing_transport_keeps_the_reactor_path(
    pair: tuple[socket.socket, Any],
) -> None:
    """While the transport is closing, bytes go through transport.write (and are flushed)."""
    client, transport = pair
    transport.disconnecting = True
    sendNow(transport, b"bye")
    assert not holdsNothing(transport)
    transport.disconnecting = False
    await eventually(lambda: holdsNothing(transport))
    assert recvExactly(client, 3) == b"bye"


def test_other_transports_get_write() -> None:
    t = StringTransport()
    sendNow(t, b"x")
    assert t.value() == b"x"
