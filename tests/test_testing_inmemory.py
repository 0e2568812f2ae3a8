"""netproto.testing's in-memory connection (serveInMemory, PausableTransport): paused reading."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import reactor as globalReactor
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.test.iosim import IOPump

from netproto.testing import PausableTransport, serveInMemory
from tests.support import eventually


class Reader(Protocol):
    """Records what it reads, and whether a read came inside ``resumeProducing``."""

    def __init__(self) -> None:
        self.reads: list[bytes] = []
        self.resuming = False
        self.readWhileResuming = False
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.reads.append(data)
        self.readWhileResuming |= self.resuming

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self.lost = reason

    def pause(self) -> None:
        IPushProducer(self.transport).pauseProducing()

    def resume(self) -> None:
        self.resuming = True
        IPushProducer(self.transport).resumeProducing()
        self.resuming = False


def connect() -> tuple[Reader, PausableTransport, IOPump]:
    """A Reader served in memory; the client end's transport and the pump."""
    server, client, pump = serveInMemory(
        Factory.forProtocol(Reader), Protocol(), MemoryReactorClock()
    )
    assert isinstance(server, Reader)
    assert isinstance(client.transport, PausableTransport)
    return server, client.transport, pump


def test_a_paused_reader_gets_nothing_until_it_resumes() -> None:
    """Bytes sent while the server has paused reading are held, in order, and
    delivered after the resume by the next pump, not inside resumeProducing
    (as a TCP transport reads again on the next reactor iteration)."""
    server, clientIO, pump = connect()
    server.pause()
    clientIO.write(b"one ")
    pump.flush()
    clientIO.write(b"two")
    pump.flush()
    assert server.reads == []
    server.resume()
    assert server.reads == []
    pump.flush()
    assert b"".join(server.reads) == b"one two"
    assert not server.readWhileResuming
    clientIO.write(b" three")
    pump.flush()
    assert b"".join(server.reads) == b"one two three"


def test_the_transport_is_a_push_producer() -> None:
    """Services adapt their transport to IPushProducer to pause it (exec's
    ClientReading does): the in-memory transport must declare it."""
    server, _, _ = connect()
    assert IPushProducer.providedBy(server.transport)


def test_a_close_while_paused_is_reported_at_once() -> None:
    """The other end going away is seen even while reading is paused (a test of a
    peer that vanishes needs no resume); what was held is dropped with it."""
    server, clientIO, pump = connect()
    server.pause()
    clientIO.write(b"never read")
    clientIO.loseConnection()
    pump.flush()
    assert server.lost is not None
    assert server.reads == []


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data.upper())


@pytest_twisted.ensureDeferred
async def test_on_a_real_reactor_the_pump_runs_by_itself() -> None:
    """Given a real reactor (a service that also does real I/O), no one calls
    flush: what an end writes, and what a resumed reader held, move on the
    reactor's next turn, and a close reaches the other end."""
    client = Reader()
    server, _, _ = serveInMemory(Factory.forProtocol(Echo), client, globalReactor)
    assert client.transport is not None
    client.transport.write(b"hello")
    await eventually(lambda: b"".join(client.reads) == b"HELLO")
    client.pause()
    client.transport.write(b" again")
    clientIO = client.transport
    assert isinstance(clientIO, PausableTransport)
    await eventually(lambda: b"".join(clientIO.held) == b" AGAIN")
    client.resume()
    await eventually(lambda: b"".join(client.reads) == b"HELLO AGAIN")
    assert isinstance(server, Echo) and server.transport is not None
    server.transport.loseConnection()
    await eventually(lambda: client.lost is not None)
