"""The answers of ``L`` and ``G`` (PROTOCOL.md section 6), sent as fast as the client takes them.

Both answers are a stream of frames made off the reactor thread (a listing's
``I`` frames from the disk's directories, a download's ``D`` frames from its
file) and ended by one last frame (``K listed``, ``F``) or an ``E``. An
:class:`Outflow` asks the connection's lane for the next frames only when
the connection can take them: it is the connection writer's output producer
(:meth:`netproto.directsend.Writer.setOutput`), paused while the socket holds
unsent data and resumed once it drained, so a client that stops reading
stops the reading of the disk, and the server holds one batch
(:data:`BATCH_FRAMES` frames) for it at most, whatever the file's size.
While the client takes what was sent, the lane already makes the next batch:
the disk, the hashing and the socket work at once.

It counts the bytes of data (``D`` payloads) it handed to the connection
(:attr:`Outflow.dataSent`): what a download logs at its end, and
``--metrics`` counts, so a download the client left counts what it was
sent, not the file's size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from netproto.directsend import Writer
from netproto.upload.workers import Lane
from netproto.upload.zerocopy import FileSpan, sendSpan

#: Frames a lane call makes at most: 2 frames of 256 KiB, 512 KiB held per
#: download at most. Measured on a 1 GiB download (docs/performance.md):
#: 8 frames grew the server's RSS by about 35 MB (each worker thread's
#: malloc arena keeps what it allocated for the reads) for no more speed;
#: 2 grow it by about 9 MB and are as fast or faster.
#: On plain TCP the frames are spans of the file (zerocopy.py): the batch
#: holds one reused frame-sized buffer, not the frames.
BATCH_FRAMES: Final = 2

#: Frames to send, in order, and whether they end the answer. A payload still
#: in its file (:class:`~netproto.upload.zerocopy.FileSpan`) is sent with
#: ``sendfile`` (only where the connection's writer sends on its socket).
Batch = tuple[Sequence[tuple[bytes, bytes | FileSpan]], bool]


@implementer(IPushProducer)
class Outflow:
    """One answer streamed from a lane to the connection.

    :param lane: where ``produce`` runs (the connection's writing lane: one
        thing at a time on a connection).
    :param produce: makes the next frames, in the worker thread; raises a
        :class:`~netproto.errors.ProtocolError` to end the answer with it.
    :param send: sends one frame (the connection's ``sendFrame``).
    :param ended: told once the answer ended: ``None`` after its last
        frame, else the failure to answer with (an ``E``, or our bug).
    :param cleanup: releases what ``produce`` used (a file), in the lane,
        after its last call, however the answer ended.
    :param writer: the connection's writer, for payloads still in their file
        (spans are sent in :meth:`_made`, before :meth:`stop` can queue the
        cleanup that closes their file).
    """

    def __init__(
        self,
        lane: Lane,
        produce: Callable[[], Batch],
        send: Callable[[bytes, bytes], None],
        ended: Callable[[Failure | None], None],
        cleanup: Callable[[], None],
        *,
        writer: Writer | None = None,
    ) -> None:
        self.lane = lane
        self.produce = produce
        self.send = send
        self.ended = ended
        self.cleanup = cleanup
        self.writer = writer
        self.paused = False
        self.stopped = False
        #: a lane call is making the next batch
        self.making = False
        #: frames were sent since :meth:`progressed` was last asked
        self._moved = False
        #: payload bytes of the ``D`` frames handed to the connection (those
        #: still in its buffers when a client vanished included)
        self.dataSent = 0

    def start(self) -> None:
        self._next()

    def progressed(self) -> bool:
        """Whether the answer moved (a batch made or sent) since the last
        ask: a client that takes nothing leaves its connection idle."""
        moved, self._moved = self._moved or self.making, False
        return moved

    def _next(self) -> None:
        self.making = True
        d = self.lane.run(self.produce)
        d.addCallbacks(self._made, self._failed)

    def _made(self, batch: Batch) -> None:
        self.making = False
        if self.stopped:
            return
        frames, last = batch
        send = self.send
        sent = 0
        for kind, payload in frames:
            if isinstance(payload, FileSpan):
                assert self.writer is not None
                sendSpan(self.writer, kind, payload)
                sent += payload.length
            else:
                send(kind, payload)
                if kind == b"D":
                    sent += len(payload)
        self.dataSent += sent
        self._moved = True
        if last:
            self._end(None)
        elif not self.paused:
            self._next()

    def _failed(self, failure: Failure) -> None:
        self.making = False
        if not self.stopped:
            self._end(failure)

    def _end(self, failure: Failure | None) -> None:
        self.stop()
        self.ended(failure)

    def stop(self) -> None:
        """Make no more frames (the answer ended, or the connection is gone)."""
        if not self.stopped:
            self.stopped = True
            self.lane.run(self.cleanup)

    # -- IPushProducer: the connection's writer -------------------------------------

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        if not self.making and not self.stopped:
            self._next()

    def stopProducing(self) -> None:
        self.stop()
