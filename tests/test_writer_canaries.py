"""Canaries: the Twisted internals netproto.directsend.Writer reads, over real sockets, one
test per transport class it accepts (Twisted's TCP and UNIX servers) and one for TLS, which
it must leave to ``transport.write``. A Twisted upgrade that changes them fails here first;
the writer must then be revisited (see its module docstring)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, ssl, tcp, unix
from twisted.internet.protocol import ClientFactory, Factory, Protocol

from netproto.directsend import PAUSE_THRESHOLD, Writer, directSocket, directTransports
from tests.support import eventually, readNow

SMALL = 4096  # socket buffer sizes that make the kernel refuse data early


class Accepted(Protocol):
    """The server side: it only records itself."""

    def __init__(self, made: list[Accepted]) -> None:
        self.made = made

    def connectionMade(self) -> None:
        self.made.append(self)


def tcpPair(made: list[Accepted], tmp: Path) -> tuple[Any, socket.socket]:
    listener: Any = reactor
    port = listener.listenTCP(0, Factory.forProtocol(lambda: Accepted(made)), interface="127.0.0.1")
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL)
    client.setblocking(False)
    client.connect_ex(("127.0.0.1", port.getHost().port))
    return port, client


def unixPair(made: list[Accepted], tmp: Path) -> tuple[Any, socket.socket]:
    path = str(tmp / "s")
    listener: Any = reactor
    port = listener.listenUNIX(path, Factory.forProtocol(lambda: Accepted(made)))
    client = socket.socket(socket.AF_UNIX)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL)
    client.connect(path)
    client.setblocking(False)
    return port, client


@pytest.mark.parametrize(("listen", "kind"), [(tcpPair, tcp.Server), (unixPair, unix.Server)])
@pytest_twisted.ensureDeferred
async def test_a_socket_server_transport_is_as_the_writer_assumes(
    listen: Callable[[list[Accepted], Path], tuple[Any, socket.socket]],
    kind: type,
    tmp_path: Path,
) -> None:
    """The server transport is the exact class the writer knows, its handle the socket;
    ``write`` buffers in ``_tempDataBuffer``/``_tempDataLen``, the reactor moves it to
    ``dataBuffer`` and sends from ``offset`` on (``unsent`` follows it), the buffers are
    empty again once all is sent, and a pull producer is resumed then. The writer sends
    at once when nothing is held, queues behind what is, and the peer gets every byte in
    order."""
    made: list[Accepted] = []
    port, client = listen(made, tmp_path)
    try:
        (proto,) = await eventually(lambda: made)
        transport: Any = proto.transport
        actual: type = type(transport)
        assert actual is kind and kind in directTransports()
        sock = directSocket(transport)
        assert sock is transport.getHandle() and sock is not None
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL)
        writer = Writer(transport, sock)
        assert transport.producer is None  # nothing registered until something is queued
        assert writer.write(b"at once") and not writer.queued and writer.unsent() == 0
        assert await eventually(lambda: readNow(client)) == b"at once"  # before the reactor wrote

        big = b"B" * (transport.SEND_LIMIT * 2)
        writer.write(big)  # more than the kernel takes: the rest is Twisted's
        assert writer.queued and transport.producer is writer and not transport.streamingProducer
        held = writer.unsent()
        assert 0 < held == len(transport.dataBuffer) - transport.offset + transport._tempDataLen
        writer.write(b"after")
        assert writer.unsent() == held + 5 and transport._tempDataBuffer[-1] == b"after"
        got = bytearray()

        def partly() -> bool:  # the reactor sent part of its buffer: dataBuffer and offset
            got.extend(readNow(client, 1 << 14))
            return transport.offset > 0 and writer.unsent() == (
                len(transport.dataBuffer) - transport.offset + transport._tempDataLen
            )

        await eventually(partly)

        def drained() -> bool:  # Twisted resumed its pull producer: the writer let go
            got.extend(readNow(client))
            return not writer.queued

        await eventually(drained, timeout=20)
        assert transport.producer is None and writer.unsent() == 0
        assert not transport.dataBuffer and not transport._tempDataBuffer
        await eventually(lambda: got.extend(readNow(client)) or len(got) >= len(big) + 5)
        assert bytes(got) == big + b"after"
    finally:
        client.close()
        for p in made:
            p.transport.abortConnection()  # type: ignore[union-attr]
        await port.stopListening()


class Reader(Protocol):
    """A TLS client that reads only when told."""

    def __init__(self) -> None:
        self.got = bytearray()

    def dataReceived(self, data: bytes) -> None:
        self.got += data


@pytest_twisted.ensureDeferred
async def test_tls_falls_back_to_transport_write_and_pauses_the_writer() -> None:
    """A TLS connection is not sent on directly (it must encrypt): the writer writes
    through it and is its streaming producer; when the peer stops reading, Twisted pauses
    it (what ``unsent`` then counts from), and resumes it once the peer has read all."""
    made: list[Accepted] = []
    cert = ssl.KeyPair.generate().selfSignedCert(1, CN="localhost")
    port = reactor.listenSSL(  # type: ignore[attr-defined]
        0, Factory.forProtocol(lambda: Accepted(made)), cert.options(), interface="127.0.0.1"
    )
    reader = Reader()
    factory = ClientFactory.forProtocol(lambda: reader)
    connector = reactor.connectSSL(  # type: ignore[attr-defined]
        "127.0.0.1", port.getHost().port, factory, ssl.CertificateOptions()
    )
    try:
        (proto,) = await eventually(lambda: made)
        transport: Any = proto.transport
        assert directSocket(transport) is None
        writer = Writer(transport, None)
        assert transport.producer is not None  # Twisted's wrapper around the writer
        writer.write(b"hello")
        await eventually(lambda: bytes(reader.got) == b"hello")
        reader.transport.pauseProducing()  # type: ignore[union-attr]  # stops reading
        chunk = b"t" * 16384
        sent = 0
        while writer.unsent() == 0:  # until Twisted says the buffer is full
            writer.write(chunk)
            sent += len(chunk)
            assert sent < 64 << 20, "the TLS transport never paused its producer"
        assert writer.unsent() >= PAUSE_THRESHOLD
        reader.transport.resumeProducing()  # type: ignore[union-attr]
        await eventually(lambda: len(reader.got) == 5 + sent, timeout=20)
        await eventually(lambda: writer.unsent() == 0)
        assert bytes(reader.got) == b"hello" + chunk * (sent // len(chunk))
    finally:
        connector.disconnect()
        for p in made:
            p.transport.abortConnection()  # type: ignore[union-attr]
        await port.stopListening()
