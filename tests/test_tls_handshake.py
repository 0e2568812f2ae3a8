"""The TLS handshake's deadline (:class:`netproto.tls.HandshakeDeadline`): a
client that connects and sends nothing, or half a ``ClientHello``, is cut off
once the deadline has passed; one that finished its handshake is not.

Units on a ``StringTransport`` and a ``Clock``, and a client and server in
memory (``iosim``) for the handshake that completes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import ssl as twistedSSL
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.test.iosim import FakeTransport, connectedServerAndClient

from netproto.framing import DEFAULT_FRAME_TIMEOUT
from netproto.tls import HandshakeDeadline, loadOrCreate
from tests.support import halfAClientHello

ADDRESS = IPv4Address("TCP", "127.0.0.1", 40000)


class Received(Protocol):
    """Keeps what arrived (after the handshake, decrypted)."""

    def __init__(self) -> None:
        self.data = b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data


def serverProtocol(
    tmp: Path, clock: Clock, timeout: float | None, served: Any = None
) -> TLSMemoryBIOProtocol:
    """A server-side TLS protocol with the certificate's options and ``timeout``."""
    options = loadOrCreate(tmp).contextFactory(timeout, reactor=clock)
    factory = TLSMemoryBIOFactory(options, False, served or Factory.forProtocol(Received))
    protocol = factory.buildProtocol(ADDRESS)
    assert isinstance(protocol, TLSMemoryBIOProtocol)
    return protocol


def test_a_client_that_sends_nothing_is_aborted_at_the_deadline(tmp_path: Path) -> None:
    """Connected, then silent: the connection stays until the deadline, then is aborted."""
    clock, transport = Clock(), StringTransport()
    protocol = serverProtocol(tmp_path, clock, 5.0)
    protocol.makeConnection(transport)
    clock.advance(4.9)
    assert not transport.disconnecting
    clock.advance(0.1)
    assert transport.disconnected  # aborted: StringTransport's abortConnection


def test_half_a_client_hello_is_aborted_at_the_deadline(tmp_path: Path) -> None:
    """Half a ``ClientHello``, then nothing: aborted at the deadline from the connection."""
    clock, transport = Clock(), StringTransport()
    protocol = serverProtocol(tmp_path, clock, 5.0)
    protocol.makeConnection(transport)
    clock.advance(2)
    protocol.dataReceived(halfAClientHello())
    clock.advance(2.9)
    assert not transport.disconnecting
    clock.advance(0.1)
    assert transport.disconnected


def test_a_finished_handshake_outlives_the_deadline(tmp_path: Path) -> None:
    """A client that completed its handshake keeps its connection past the
    deadline, and its data still arrives."""
    clock = Clock()
    received = Received()
    served = Factory.forProtocol(lambda: received)
    clientFactory = TLSMemoryBIOFactory(
        twistedSSL.CertificateOptions(), True, Factory.forProtocol(Protocol), clock
    )
    client, server, pump = connectedServerAndClient(
        lambda: serverProtocol(tmp_path, clock, 5.0, served),
        lambda: clientFactory.buildProtocol(ADDRESS),
        clock=clock,
    )
    pump.flush()
    clock.advance(10)
    assert isinstance(server.transport, FakeTransport) and not server.transport.disconnecting
    assert client.transport is not None
    client.write(b"still here")
    clock.advance(0)  # the TLS transport sends what was written at the next turn
    pump.flush()
    assert received.data == b"still here"


class Framed(Factory):
    """A served factory with a frame deadline, as :class:`netproto.framing.FramedFactory`."""

    protocol = Protocol
    frameTimeout = 7.0


def test_the_deadline_is_the_served_factorys_frame_deadline(tmp_path: Path) -> None:
    """Not given: the served factory's ``frameTimeout`` (``--frame-timeout``), else
    the default frame deadline; 0 arms nothing."""
    plain = serverProtocol(tmp_path, Clock(), None)
    framed = serverProtocol(tmp_path, Clock(), None, Framed())
    options = loadOrCreate(tmp_path).contextFactory(reactor=Clock())
    assert isinstance(options, HandshakeDeadline)
    assert options.deadlineFor(plain) == DEFAULT_FRAME_TIMEOUT
    assert options.deadlineFor(framed) == 7.0
    clock, transport = Clock(), StringTransport()
    serverProtocol(tmp_path, clock, 0).makeConnection(transport)
    assert not clock.getDelayedCalls()
    assert not transport.disconnecting
