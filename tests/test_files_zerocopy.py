"""netproto.upload.zerocopy: ``D`` frames sent with sendfile on a real socket, the
rest of a frame the socket did not take held by the connection's writer, in order."""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path
from typing import Any

from netproto.codec import encodeFrame
from netproto.directsend import Writer
from netproto.upload.zerocopy import FileSpan, sendSpan


class HeldTransport:
    """The attributes of Twisted's FileDescriptor that the writer reads; what it holds
    is what the reactor would send later."""

    def __init__(self) -> None:
        self.connected = True
        self.disconnecting = False
        self.aborted = False
        self.dataBuffer = b""
        self.offset = 0
        self._tempDataBuffer: list[bytes] = []
        self._tempDataLen = 0
        self.producer: Any = None

    def write(self, data: bytes) -> None:
        self.writeSequence([data])

    def writeSequence(self, parts: list[bytes]) -> None:
        self._tempDataBuffer.extend(bytes(p) for p in parts)
        self._tempDataLen += sum(map(len, parts))

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def abortConnection(self) -> None:
        self.aborted = True

    def drain(self) -> bytes:
        data = b"".join(self._tempDataBuffer)
        self._tempDataBuffer, self._tempDataLen = [], 0
        if self.producer is not None:
            self.producer.resumeProducing()
        return data


def readAll(sock: socket.socket) -> bytes:
    got = bytearray()
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            return bytes(got)
        got += chunk


def test_frames_arrive_whole_and_in_order_however_much_the_socket_takes(
    tmp_path: Path,
) -> None:
    """Frames of a file sent as spans: whatever the socket did not take (a part of a
    header, of a payload, or whole frames while the writer holds bytes) is held by the
    writer, never more than one frame, and the byte stream is exactly the frames."""
    rng = random.Random(7)
    data = rng.randbytes(3 << 20)
    path = tmp_path / "f"
    path.write_bytes(data)
    sender, receiver = socket.socketpair()
    sender.setblocking(False)
    receiver.setblocking(False)
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    transport = HeldTransport()
    writer = Writer(transport, sender)
    fd = os.open(path, os.O_RDONLY)
    stream, expected, held = bytearray(), bytearray(), 0
    try:
        offset = 0
        while offset < len(data):
            n = min(rng.choice([1, 100, 5000, 70000, 256 * 1024]), len(data) - offset)
            sendSpan(writer, b"D", FileSpan(fd, offset, n))
            expected += encodeFrame(b"D", data[offset : offset + n])
            offset += n
            if writer.queued:
                held += 1
                assert writer.unsent() <= n + 5
                stream += readAll(receiver)
                stream += transport.drain()
                assert not writer.queued
        stream += readAll(receiver)
    finally:
        os.close(fd)
        sender.close()
        receiver.close()
    assert held, "the socket always took everything: the holding path was not tried"
    assert stream == expected
    assert not transport.aborted


def test_a_file_shorter_than_its_span_aborts_rather_than_sends_a_short_frame(
    tmp_path: Path,
) -> None:
    """A file truncated between its hashing and its sending cannot fill its frame:
    the connection is aborted (a short frame would desynchronise the client)."""
    path = tmp_path / "f"
    path.write_bytes(b"x" * 1000)
    sender, receiver = socket.socketpair()
    sender.setblocking(False)
    transport = HeldTransport()
    writer = Writer(transport, sender)
    fd = os.open(path, os.O_RDONLY)
    try:
        sendSpan(writer, b"D", FileSpan(fd, 0, 2000))
    finally:
        os.close(fd)
        sender.close()
        receiver.close()
    assert transport.aborted
