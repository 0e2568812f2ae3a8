"""Sending an exec connection's frames: straight to the socket when nothing is queued.

Twisted's TCP transport only buffers what ``write`` is given; the send happens
on the reactor's next turn (``epoll_ctl`` to watch for writability,
``epoll_wait``, ``send``, ``epoll_ctl`` again), and it joins the buffered
pieces of a large frame into one new string before sending it. For a short
command that is two extra turns per command (``K``, then ``X``); for a fast
one, a copy of every byte of output. :class:`FrameWriter` is the one place
where exec does otherwise:

* On Twisted's own socket transports (TCP, UNIX; not TLS, which must encrypt,
  and not test transports: :func:`netproto.directsend.directSocket`), while
  the transport holds nothing unsent, a frame is sent at once with one
  ``send`` (``sendmsg`` of the header and the payload, so a large payload is
  not copied). Nothing is patched: the socket
  is the transport's public ``getHandle()``, and whatever the socket does not
  take goes to ``transport.write`` as usual.
* From then on, until the transport has written everything out, every frame
  goes through ``transport.write`` too (the order of frames is kept), the
  command's output is paused, and the writer is registered as the
  transport's *pull* producer, the public way to be told when its buffer has
  drained (Twisted calls ``resumeProducing`` then). The writer then lets go
  of the transport and resumes the command's output. So one connection holds
  at most one frame of output beyond its socket's buffer: backpressure
  without a full copy of the stream.
* On other transports every frame goes through ``transport.write`` and the
  command's output is the transport's streaming producer (Twisted pauses it
  while more than the transport's ``bufferSize`` waits).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IConsumer, IPullProducer, IPushProducer
from zope.interface import implementer

from netproto.directsend import directSocket
from netproto.codec import HEADER

#: Payloads shorter than this are joined to their header and sent with one
#: ``send``; longer ones go with ``sendmsg`` (no copy of the payload).
JOIN_BELOW = 4096


@implementer(IPullProducer)
class FrameWriter:
    """Writes one connection's frames; see the module docstring.

    :ivar queued: whether the transport holds frames not yet sent (frames
        then go through it, and the output producer is paused).
    """

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.socket = directSocket(transport)
        self.queued = False
        self._output: IPushProducer | None = None
        self._registering = False

    @property
    def direct(self) -> bool:
        """Whether frames may go straight to the socket (a plain socket transport)."""
        return self.socket is not None

    # -- the producer of output ----------------------------------------------------

    def setOutput(self, producer: IPushProducer | None) -> None:
        """The running command's output (a push producer), or None once it has ended.

        It is paused whenever the connection cannot take more."""
        if self.socket is None:
            consumer = IConsumer(self.transport)
            if producer is None:
                consumer.unregisterProducer()
            else:
                consumer.registerProducer(producer, True)
            return
        self._output = producer
        if producer is not None and self.queued:
            producer.pauseProducing()

    # -- sending -----------------------------------------------------------------

    def send(self, kind: bytes, payload: bytes = b"") -> None:
        """Send one frame (the payload is not copied when it is long)."""
        transport = self.transport
        if transport is None:
            return
        head = HEADER.pack(len(payload) + 1) + kind
        sock = self.socket
        if sock is None or self.queued or not transport.connected or transport.disconnecting:
            if len(payload) < JOIN_BELOW:
                transport.write(head + payload)
            else:
                transport.writeSequence([head, payload])
            return
        try:
            if len(payload) < JOIN_BELOW:
                data = head + payload
                sent = sock.send(data)
                if sent == len(data):
                    return
                rest = [data[sent:]]
            else:
                sent = sock.sendmsg([head, payload])
                if sent == len(head) + len(payload):
                    return
                cut = sent - len(head)
                rest = [head[sent:], payload] if cut < 0 else [payload[cut:]]
        except (BlockingIOError, InterruptedError):
            rest = [head, payload]
        except OSError:
            # The connection is broken: let the transport find out and close.
            transport.writeSequence([head, payload])
            return
        self._queue(rest)

    def _queue(self, rest: list[bytes]) -> None:
        """The socket is full: the transport takes the rest, and output waits."""
        self.queued = True
        self.transport.writeSequence(rest)
        if self._output is not None:
            self._output.pauseProducing()
        self._registering = True
        try:
            # A pull producer is asked for more each time the buffer drains.
            self.transport.registerProducer(self, False)
        finally:
            self._registering = False

    # -- IPullProducer, for the transport --------------------------------------------

    def resumeProducing(self) -> None:
        """The transport has written everything it held (or, while registering, nothing yet)."""
        if self._registering or not self.queued:
            return
        self.queued = False
        self.transport.unregisterProducer()
        if self._output is not None:
            self._output.resumeProducing()

    def stopProducing(self) -> None:
        """The connection is gone; the protocol's ``connectionLost`` ends the command."""
        self.queued = False
        self._output = None
