"""``D`` frames whose payload goes from the file to the socket with ``os.sendfile``.

Why: a download's data was read into user space (hashed there) and then copied
again into the socket by ``sendmsg``. On a plain TCP connection whose writer may
send on its socket (:attr:`netproto.directsend.Writer.direct`), the frame's header
is written through the writer and its payload leaves with ``sendfile`` from the
one open file at the frame's offset: the kernel moves the page cache's pages into
the socket. The SHA-256 of the same bytes is still computed in the worker lane
(:class:`netproto.upload.listing.Source`), one batch ahead of the sending.

What is promised: frames leave in order and whole. Whatever the socket does not
take at once (or everything, when the writer holds unsent bytes, or on any other
transport: TLS must encrypt) is read with ``pread`` and given to the writer, so
backpressure is the writer's as for any frame: at most one frame beyond the
socket's buffer per connection. A file that got shorter between its hashing and
its sending (it was truncated in place: a replace is a new file and does not
matter) cannot end its frame: the connection is aborted rather than a frame
sent short.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from netproto.codec import frameHeader
from netproto.directsend import Writer
from netproto.upload.listing import Source


class FileSpan(NamedTuple):
    """A frame's payload still in its file: ``length`` bytes at ``offset`` of ``fd``."""

    fd: int
    offset: int
    length: int


class Spans:
    """A download's next frames as spans of its file, hashed in the lane into one
    reused buffer (no new allocation per frame) before they are sent.

    :param source: the download's open file, its hash and position.
    :param frameSize: the most payload a frame may carry (``max_frame`` - 1).
    """

    def __init__(self, source: Source, frameSize: int) -> None:
        self.source = source
        self.buffer = memoryview(bytearray(frameSize))

    def read(self, frames: int) -> list[FileSpan]:
        """Hash up to ``frames`` frames' bytes from where the last read ended, as
        :meth:`Source.read` does; an empty list at the end of the file."""
        source, buffer = self.source, self.buffer
        spans = []
        for _ in range(frames):
            start = source.position
            n = min(len(buffer), source.size - start)
            if not n:
                break
            got = source.readInto(buffer[:n])
            spans.append(FileSpan(source.fd, start, got))
        return spans


def sendSpan(writer: Writer, kind: bytes, span: FileSpan) -> None:
    """Send the frame ``kind`` whose payload is ``span``; see the module docstring."""
    fd, offset, length = span
    header = frameHeader(kind, length)
    transport = writer.transport
    sock = writer.socket
    if sock is None or writer.queued or not transport.connected or transport.disconnecting:
        _hold(writer, header, span)
        return
    writer.write(header)
    if writer.queued:  # the socket did not take the header whole
        _hold(writer, b"", span)
        return
    sent = 0
    try:
        while sent < length:
            n = os.sendfile(sock.fileno(), fd, offset + sent, length - sent)
            if not n:
                break  # the file ended early: _hold finds it shorter too
            sent += n
    except BlockingIOError:
        pass  # the socket is full: the rest waits in the writer
    except OSError:
        return  # a broken connection, which Twisted notices and reports
    if sent < length:
        _hold(writer, b"", FileSpan(fd, offset + sent, length - sent))


def _hold(writer: Writer, header: bytes, span: FileSpan) -> None:
    """Give the writer the header and the span read from the file."""
    fd, offset, length = span
    payload = os.pread(fd, length, offset)
    if len(payload) < length:
        writer.transport.abortConnection()
        return
    if header:
        writer.writeSequence((header, payload))
    else:
        writer.write(payload)
