"""The one writer of a connection: :class:`Writer`, which sends on the socket at once
when Twisted holds nothing for the connection.

Everything netproto's servers send leaves through it: chat's deliveries
(:meth:`netproto.chat.protocol.ChatProtocol.deliver`, one writer per member), and
every frame of the framed services (:meth:`netproto.framing.FramedProtocol.sendFrame`,
one writer per connection): the hello, ``K`` and ``E`` replies, upload's answers and
exec's output, whose producer (the running command) the writer pauses and resumes.

Why: ``transport.write`` on Twisted's TCP transport only appends to a buffer and
asks the reactor to watch the socket; the bytes leave on the next reactor turn,
after an ``epoll_ctl`` to start watching, the poll, a dispatch through Twisted's
logging context, the ``send``, and an ``epoll_ctl`` to stop watching, and a large
buffered frame is joined into one new string first. Profiles (py-spy) showed this
path as three quarters of the time of a chat line's trip across a room of 5000
(85 ms, 44 ms once sent at once), an extra reactor turn per reply in every exec and
upload round trip, and a copy of each large exec output frame
(docs/performance.md).

What, on Twisted's own socket transports (:func:`directSocket`):

* While Twisted holds no byte of the connection's output, and the connection is
  connected and not closing, data is sent with one ``send`` on the socket (a
  large frame with one ``sendmsg`` of header and payload: no copy). That Twisted
  holds nothing is known without looking, because everything the connection
  sends goes through its writer: nothing else may write to the transport.
* What the kernel does not take goes to ``transport.write``; from then on every
  write goes through ``transport.write`` too, behind it, so bytes always leave
  in the order they were written. The writer registers as the transport's *pull*
  producer, the public way to be told when its buffer has drained (Twisted calls
  :meth:`Writer.resumeProducing` then), and pauses the connection's output
  producer meanwhile: a connection holds at most one write beyond its socket's
  buffer, backpressure without a copy of the stream. Once drained, the writer
  lets go of the transport, resumes the output and sends directly again.
* :meth:`Writer.unsent` is what Twisted holds unsent, read from its buffer.

On any other transport (TLS, which must encrypt; an endpoint wrapper; a test's
``StringTransport``) every write is ``transport.write``, and the writer is the
transport's *streaming* producer: Twisted pauses it past its buffer threshold
(:data:`PAUSE_THRESHOLD`), and it pauses the output in turn. Its buffer cannot be
read there, so :meth:`Writer.unsent` counts what was written since that signal.

Only this module reads Twisted's internals: four attributes of
``FileDescriptor`` (``dataBuffer`` with its ``offset``, and ``_tempDataBuffer``
with its ``_tempDataLen``: its whole output buffer), on the exact classes in
:func:`directTransports`; the socket is the public ``getHandle()``. Nothing of
Twisted's is changed or patched. ``tests/test_writer_canaries.py`` holds Twisted
to these assumptions over real sockets, so an upgrade that breaks them fails
there first.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Sequence
from typing import Any, Final

from twisted.internet.interfaces import IPullProducer, IPushProducer
from zope.interface import implementer


@functools.cache
def directTransports() -> frozenset[type]:
    """Transport classes whose buffering is exactly ``dataBuffer`` + ``_tempDataBuffer``
    and whose handle is the connection's non-blocking stream socket (exact classes:
    a subclass may write otherwise). UNIX ``Server`` can also queue file descriptors
    to pass; netproto never passes any.

    Imported on first use, not with this module: ``twisted.internet.tcp`` brings
    pyOpenSSL with it, which a server without TLS keeps out (:mod:`netproto.tlsimports`).
    """
    from twisted.internet import tcp, unix

    return frozenset({tcp.Server, unix.Server})


#: Writes shorter than this in all are joined and sent with one ``send``; longer
#: ones go with one ``sendmsg`` of their parts (a large payload is not copied).
JOIN_BELOW: Final = 4096

#: What Twisted's transports hold before they pause a streaming producer
#: (``FileDescriptor.bufferSize``). Where the buffer cannot be read, it holds at
#: least this once it has said so: :meth:`Writer.unsent` counts from there.
PAUSE_THRESHOLD: Final = 64 * 1024


def directSocket(transport: Any) -> socket.socket | None:
    """The socket a :class:`Writer` may send on itself, or None for any other transport."""
    if type(transport) in directTransports() and not getattr(transport, "TLS", False):
        handle = transport.getHandle()
        if isinstance(handle, socket.socket):
            return handle
    return None


@implementer(IPullProducer, IPushProducer)
class Writer:
    """Everything one connection sends; see the module docstring.

    :param transport: the connection's transport.
    :param sock: the socket to send on directly, from :func:`directSocket`
        (None: write through the transport only). Injectable, for tests.
    :param limit: the most :meth:`unsent` may reach: a write that would take it
        further is not made, and returns False (None: no limit).
    """

    __slots__ = ("_full", "_now", "_output", "_registering", "limit", "socket", "transport")

    def __init__(
        self, transport: Any, sock: socket.socket | None, limit: int | None = None
    ) -> None:
        self.transport = transport
        self.socket = sock
        self.limit = limit
        #: The socket while writes may go to it (nothing queued), else None.
        self._now = sock
        #: Other transports: -1, or the bytes written since the transport said it was full.
        self._full = -1
        self._output: IPushProducer | None = None
        self._registering = False
        if sock is None:
            transport.registerProducer(self, True)

    @property
    def queued(self) -> bool:
        """Direct sends only: whether the transport holds bytes not yet sent (writes
        then go behind them, and the output is paused)."""
        return self._now is None and self.socket is not None

    @property
    def direct(self) -> bool:
        """Whether writes may go straight to the socket (a plain socket transport)."""
        return self.socket is not None

    def setOutput(self, producer: IPushProducer | None) -> None:
        """The connection's output (a push producer, e.g. a running command), or None
        once it has ended. It is paused whenever the connection cannot take more."""
        self._output = producer
        if producer is not None and (self.queued or self._full >= 0):
            producer.pauseProducing()

    def unsent(self) -> int:
        """Bytes written and not sent yet: exact on direct transports (what Twisted
        holds: the rest of ``dataBuffer`` from ``offset``, and ``_tempDataBuffer``);
        elsewhere a lower bound, 0 until the transport reports its buffer full, then
        :data:`PAUSE_THRESHOLD` plus what was written since."""
        if self.socket is not None:
            t = self.transport
            held: int = len(t.dataBuffer) - t.offset + t._tempDataLen
            return held
        return PAUSE_THRESHOLD + self._full if self._full >= 0 else 0

    # -- writing -------------------------------------------------------------------

    def write(self, data: bytes) -> bool:
        """Send ``data``, in order after everything written before. False when it would
        take :meth:`unsent` past :attr:`limit`: then nothing of it (beyond what the
        socket took at once) is written, and the caller's client is too slow."""
        sock = self._now
        if sock is not None:
            t = self.transport
            if t.connected and not t.disconnecting:  # else the socket may be closed or reused
                try:
                    sent = sock.send(data)
                except OSError:  # EAGAIN, ENOBUFS, or a broken connection Twisted will notice
                    sent = 0
                if sent == len(data):
                    return True
                if sent:
                    data = data[sent:]
        return self._hold([data], len(data))

    def writeSequence(self, parts: Sequence[bytes]) -> bool:
        """:meth:`write` of the parts joined (a frame's header and payload), without
        joining them when they are large."""
        size = sum(map(len, parts))
        if size < JOIN_BELOW:
            return self.write(b"".join(parts))
        rest = list(parts)
        sock = self._now
        t = self.transport
        if sock is not None and t.connected and not t.disconnecting:
            try:
                sent = sock.sendmsg(rest)
            except OSError:
                sent = 0
            if sent == size:
                return True
            size -= sent
            while sent:
                first = rest[0]
                if sent < len(first):
                    rest[0] = first[sent:]
                    break
                sent -= len(first)
                del rest[0]
        return self._hold(rest, size)

    def _hold(self, parts: list[bytes], size: int) -> bool:
        """Give what was not sent to the transport, behind what it holds."""
        if self.limit is not None and self.unsent() + size > self.limit:
            return False
        transport = self.transport
        if len(parts) == 1:
            transport.write(parts[0])  # may pause us (other transports): this write counts
        else:
            transport.writeSequence(parts)
        if self.socket is None:
            if self._full >= 0:
                self._full += size
            return True
        if self._now is None or not transport.connected or transport.disconnecting:
            return True  # already waiting for the drain, or closing: Twisted flushes it
        self._now = None
        if self._output is not None:
            self._output.pauseProducing()
        self._registering = True
        try:
            transport.registerProducer(self, False)  # to be told when it has drained
        finally:
            self._registering = False
        return True

    def loseConnection(self) -> None:
        """Close the connection once what is queued is sent. The writer lets go of the
        transport first: Twisted would not close while a producer it waits on is
        registered."""
        self._output = None
        if self.queued or self.socket is None:
            self._now = self.socket
            self._full = -1
            self.transport.unregisterProducer()
        self.transport.loseConnection()

    # -- the transport's signals (IPullProducer on direct transports, else IPushProducer)

    def pauseProducing(self) -> None:
        """A transport whose buffer cannot be read holds more than its threshold."""
        if self._full < 0:
            self._full = 0
            if self._output is not None:
                self._output.pauseProducing()

    def resumeProducing(self) -> None:
        """The transport has sent everything it held (while registering: nothing
        yet). The output resumes; a closing connection is not held up."""
        if self._registering:
            return
        transport = self.transport
        if self.queued:
            self._now = self.socket
            transport.unregisterProducer()
        elif self._full >= 0:
            self._full = -1
            if getattr(transport, "disconnecting", False):
                transport.unregisterProducer()
        else:
            return
        if self._output is not None:
            self._output.resumeProducing()

    def stopProducing(self) -> None:
        """The connection is gone; its protocol's ``connectionLost`` ends the output."""
        self._now = self.socket
        self._full = -1
        self._output = None
