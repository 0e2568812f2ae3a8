"""netproto.directsend.Writer on a fake socket and a fake transport: order, fallback,
pausing the output, the drain, the guards. (Real sockets: tests/test_writer_canaries.py.)"""

from __future__ import annotations

import random
import socket
from typing import Any, cast

import pytest
from twisted.internet.interfaces import IPushProducer
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from netproto.codec import HEADER, encodeFrame
from netproto.directsend import JOIN_BELOW, PAUSE_THRESHOLD, Writer


class FakeSocket:
    """Takes at most ``room`` bytes per call; 0 room: would block. ``error`` is raised instead."""

    def __init__(self) -> None:
        self.room = 1 << 30
        self.error: OSError | None = None
        self.sent = bytearray()
        self.calls = 0

    def _take(self, data: bytes) -> int:
        self.calls += 1
        if self.error is not None:
            raise self.error
        if self.room <= 0:
            raise BlockingIOError()
        n = min(self.room, len(data))
        self.sent += data[:n]
        return n

    def send(self, data: bytes) -> int:
        return self._take(data)

    def sendmsg(self, buffers: list[bytes]) -> int:
        return self._take(b"".join(buffers))


class FakeTransport:
    """Buffers as Twisted's FileDescriptor does (the attributes the writer reads) and tells
    its producer as it does: a pull producer at once when registered, and when drained."""

    def __init__(self) -> None:
        self.connected = True
        self.disconnecting = False
        self.dataBuffer = b""
        self.offset = 0
        self._tempDataBuffer: list[bytes] = []
        self._tempDataLen = 0
        self.producer: Any = None
        self.streaming = False

    def write(self, data: bytes) -> None:
        self.writeSequence([data])

    def writeSequence(self, parts: list[bytes]) -> None:
        if self.connected:
            self._tempDataBuffer.extend(parts)
            self._tempDataLen += sum(map(len, parts))

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        assert self.producer is None, "a producer was never unregistered"
        self.producer, self.streaming = producer, streaming
        if not streaming:
            producer.resumeProducing()

    def unregisterProducer(self) -> None:
        self.producer = None

    def loseConnection(self) -> None:
        self.disconnecting = True

    def drain(self) -> bytes:
        """The reactor sent everything held."""
        data = self.dataBuffer[self.offset :] + b"".join(self._tempDataBuffer)
        self.dataBuffer, self.offset, self._tempDataBuffer, self._tempDataLen = b"", 0, [], 0
        if self.producer is not None and not self.streaming:
            self.producer.resumeProducing()
        return data


@implementer(IPushProducer)
class Output:
    """A push producer recording what it was told."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def stopProducing(self) -> None:
        self.calls.append("stop")


def direct() -> tuple[Writer, FakeTransport, FakeSocket, Output]:
    transport, sock, output = FakeTransport(), FakeSocket(), Output()
    writer = Writer(transport, cast(socket.socket, sock))
    writer.setOutput(output)
    return writer, transport, sock, output


@pytest.mark.parametrize("seed", range(5))
def test_bytes_keep_their_order_and_the_output_waits_while_anything_is_queued(
    seed: int,
) -> None:
    """Writes go to the socket while nothing is queued; the rest of one it did not take,
    and every write after it, go to the transport, the output is paused until the
    transport reports it has drained, and the byte stream is exactly the writes in order."""
    rng = random.Random(seed)
    writer, transport, sock, output = direct()
    expected = bytearray()
    paths = set()
    for i in range(300):
        sock.room = rng.choice([0, 3, 100, 5000, 1 << 30])
        payload = bytes([i % 256]) * rng.choice([0, 10, JOIN_BELOW - 6, JOIN_BELOW, 70000])
        before = sock.calls
        if rng.random() < 0.5:
            assert writer.write(b"line %d\r\n" % i + payload)
            expected += b"line %d\r\n" % i + payload
        else:
            assert writer.writeSequence((HEADER.pack(len(payload) + 1) + b"1", payload))
            expected += encodeFrame(b"1", payload)
        paths.add((sock.calls > before, writer.queued))
        if writer.queued:
            assert output.calls[-1] == "pause" and transport.producer is writer
            assert writer.unsent() == transport._tempDataLen
            if rng.random() < 0.3:
                sock.sent += transport.drain()
                assert not writer.queued and output.calls[-1] == "resume"
                assert transport.producer is None and writer.unsent() == 0
        else:
            assert transport.producer is None and writer.unsent() == 0
    sock.sent += transport.drain()
    assert bytes(sock.sent) == bytes(expected)
    assert paths >= {(True, False), (True, True), (False, True)}  # every path was taken


def test_a_large_write_goes_in_one_sendmsg_and_its_rest_without_the_sent_part() -> None:
    """A frame of a large payload is one ``sendmsg``; if the socket takes part of the
    header, or of the payload, the transport gets exactly the rest."""
    payload = b"p" * 10000
    for room in (2, 4 + 1 + 500):
        writer, transport, sock, _ = direct()
        sock.room = room
        writer.writeSequence((HEADER.pack(len(payload) + 1) + b"1", payload))
        assert sock.calls == 1 and writer.queued
        assert bytes(sock.sent) + transport.drain() == encodeFrame(b"1", payload)


def test_nothing_is_sent_on_the_socket_once_closing_or_closed() -> None:
    """After loseConnection, or once the connection is gone, the socket is not touched
    (it may be closed, its number reused): bytes go to the transport, which flushes or
    drops them, and nothing is registered with it."""
    writer, transport, sock, _ = direct()
    transport.disconnecting = True
    writer.write(b"bye")
    assert sock.calls == 0 and transport.drain() == b"bye" and transport.producer is None
    writer, transport, sock, _ = direct()
    transport.connected = False
    writer.write(b"late")
    assert sock.calls == 0 and transport.producer is None and not writer.queued


def test_a_socket_error_leaves_the_bytes_to_the_transport() -> None:
    """EAGAIN, ENOBUFS or a broken connection: the transport gets the write (and finds out
    about the connection itself); no byte is lost or reordered."""
    writer, transport, sock, _ = direct()
    sock.error = OSError(105, "No buffer space available")
    writer.write(b"a")
    sock.error = None
    writer.writeSequence((b"h", b"b" * JOIN_BELOW))
    assert sock.sent == b"" and transport.drain() == b"a" + b"h" + b"b" * JOIN_BELOW


def test_a_write_past_the_limit_is_refused_whole() -> None:
    """With a limit, a write that would leave more than it unsent is not made and the
    caller is told; one that fits is made."""
    writer, transport, sock, _ = direct()
    writer.limit = 100
    sock.room = 0
    assert writer.write(b"x" * 60)
    assert not writer.write(b"y" * 41)
    assert writer.writeSequence((b"z" * 20, b"z" * 20))
    assert writer.unsent() == 100 and transport.drain() == b"x" * 60 + b"z" * 40
    sock.room = 10  # part sent at once; the rest (101) counts
    assert not writer.write(b"w" * 111)
    assert sock.sent == b"w" * 10 and transport.drain() == b""


def test_other_transports_get_every_write_and_pause_the_output() -> None:
    """Without a socket (TLS, test transports) every write is the transport's; the writer
    is its streaming producer, pauses and resumes the output when told, and counts what
    is written from the full signal on, the write that filled the buffer included."""
    transport = StringTransport()
    writer = Writer(transport, None, limit=PAUSE_THRESHOLD + 5)
    assert not writer.direct and transport.producer is writer and transport.streaming
    output = Output()
    writer.setOutput(output)
    writer.writeSequence((b"K", b"{}"))
    writer.writeSequence((b"1", b"d" * JOIN_BELOW))
    assert transport.value() == b"K{}1" + b"d" * JOIN_BELOW
    assert writer.unsent() == 0  # not known until the transport says it is full
    writer.pauseProducing()
    assert output.calls == ["pause"]
    assert writer.write(b"abc")
    assert writer.unsent() == PAUSE_THRESHOLD + 3
    assert not writer.write(b"abc")
    writer.resumeProducing()
    assert output.calls == ["pause", "resume"] and writer.unsent() == 0
    late = Output()
    writer.pauseProducing()
    writer.setOutput(late)  # an output set while the transport is full starts paused
    assert late.calls == ["pause"]


def test_a_closing_connection_is_not_held_up_by_the_writer() -> None:
    """Twisted closes only when no producer waits to be resumed: the writer lets go of
    the transport when asked to close, and when it is resumed while closing."""
    transport = StringTransport()
    writer = Writer(transport, None)
    writer.pauseProducing()
    transport.loseConnection()
    writer.resumeProducing()
    assert transport.producer is None
    writer, fake, sock, output = direct()
    sock.room = 0
    writer.write(b"queued")
    assert fake.producer is writer
    writer.loseConnection()
    assert fake.producer is None and fake.disconnecting and fake.drain() == b"queued"
    assert output.calls == ["pause"]  # not resumed: the connection is closing


def test_a_lost_connection_stops_the_writer() -> None:
    """stopProducing: nothing is queued any more and the output is let go of (its
    protocol's connectionLost ends it)."""
    writer, transport, sock, output = direct()
    sock.room = 0
    writer.write(b"x")
    writer.stopProducing()
    assert not writer.queued and writer.unsent() == 1
    writer.resumeProducing()
    assert output.calls == ["pause"]
