"""The upload protocol (PROTOCOL.md section 4) on the framed base.

The protocol turns ``P``, ``D`` and ``F`` frames into calls on a
:class:`~netproto.upload.store.PartialFile`, and their results into ``K`` and
``E`` frames. It never touches the disk itself: every store call goes through
one of the connection's two :class:`lanes <netproto.upload.workers.Lane>`, which
run it off the reactor thread, in order. The *writing* lane opens, writes,
syncs and renames; the *hashing* lane feeds the SHA-256. Each batch of data
goes to both, so on two cores a big file is hashed while it is written and
while the reactor receives the next batch; a small file's data never goes to
the hashing lane: one call writes, hashes, checks, syncs and renames it.

Data comes in without copies: ``D`` is a streamed frame type
(:attr:`~netproto.framing.FramedProtocol.streamedFrames`), so its payload
arrives as views of the transport's reads, which are batched (about
:attr:`UploadProtocol.batchSize` bytes) and handed to the lanes as they are.

Flow control: the bytes received but not yet both hashed and written are
counted; above :attr:`UploadProtocol.highWater` the transport is paused, and
resumed once the lanes are back under :attr:`UploadProtocol.lowWater`, so the
server's memory stays bounded however fast the client sends.

Where one file is in its life is one table, :data:`PHASE_FRAMES`. An error
while data flows (``size-mismatch`` for too many bytes, ``no-space``) is sent
at once; the rest of that file's ``D`` frames and its ``F`` are then ignored
(the client may have pipelined them), and the connection stays usable for
the next ``P``. Every refusal and error of this service is non-fatal except
``bad-frame`` (a frame not valid in the current phase, a malformed ``P`` or
``F``).
"""

from __future__ import annotations

import contextlib
import enum
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure

from netproto.errors import ProtocolError
from netproto.codec import decodeJSON
from netproto.framing import FramedProtocol
from netproto.upload.names import splitName
from netproto.upload.quota import Quotas, Reservation
from netproto.upload.store import Buffer, PartialFile, UploadStore
from netproto.upload.workers import Lane

if TYPE_CHECKING:
    from netproto.upload.server import UploadFactory

_SHA256_HEX: Final = re.compile(r"[0-9a-fA-F]{64}")


class Phase(enum.Enum):
    """Where the current file of a connection is."""

    IDLE = "idle"  # waiting for a P
    OPENING = "opening"  # P accepted; its partial file is being opened
    RECEIVING = "receiving"  # K ready sent: D frames, then F
    DISCARDING = "discarding"  # an E was sent mid-file: its D frames and F are dropped
    FINISHING = "finishing"  # F received: last writes, checks, fsync, rename


#: The frames valid in each phase; anything else is ``bad-frame``. A P while
#: discarding starts the next file (the client gave up the failed one
#: without its F).
PHASE_FRAMES: Final[Mapping[Phase, frozenset[bytes]]] = {
    Phase.IDLE: frozenset({b"P"}),
    Phase.OPENING: frozenset(),
    Phase.RECEIVING: frozenset({b"D", b"F"}),
    Phase.DISCARDING: frozenset({b"D", b"F", b"P"}),
    Phase.FINISHING: frozenset(),
}


class Upload:
    """The reactor's view of one file being received."""

    __slots__ = (
        "flushing",
        "gather",
        "hashing",
        "name",
        "offset",
        "overwrite",
        "partial",
        "pending",
        "pendingBytes",
        "pipelined",
        "received",
        "reservation",
        "resume",
        "segments",
        "size",
        "unflushed",
        "writing",
    )

    def __init__(
        self, name: str, segments: tuple[bytes, ...], size: int, overwrite: bool, resume: bool
    ) -> None:
        self.name = name
        self.segments = segments
        self.size = size
        self.overwrite = overwrite
        self.resume = resume
        self.partial: PartialFile | None = None
        #: its place among its user's uploads and quota (set once opened)
        self.reservation: Reservation | None = None
        self.offset = 0
        #: bytes of the file held so far: kept ones plus those received
        self.received = 0
        #: received data not yet handed to the lanes, in order: views of
        #: reads, and bytearrays gathering small pieces
        self.pending: list[Buffer] = []
        self.pendingBytes = 0
        #: the bytearray at the end of ``pending`` that small pieces are added to
        self.gather: bytearray | None = None
        #: bytes handed to the writing lane and not yet written
        self.writing = 0
        #: bytes handed to the hashing lane and not yet hashed
        self.hashing = 0
        #: some data went to the lanes before F (else F does it all in one call)
        self.pipelined = False
        #: bytes written since the last flush started
        self.unflushed = 0
        #: a flush is running in the flushing lane
        self.flushing = False


def _boolField(request: Mapping[str, Any], key: str) -> bool:
    value = request.get(key, False)
    if not isinstance(value, bool):
        raise ProtocolError("bad-frame", f"P: {key!r} must be true or false")
    return value


class UploadProtocol(FramedProtocol):
    """One upload connection: files one after another, ``P``, ``D``..., ``F``."""

    serviceName = "upload"
    factory: UploadFactory
    streamedFrames = frozenset({b"D"})

    #: Received bytes not yet both hashed and on disk above which reading from
    #: the client stops: a few batches, enough to keep both lanes busy.
    highWater: int = 16 * 1024 * 1024
    #: ... and below which it starts again.
    lowWater: int = 8 * 1024 * 1024
    #: Pending bytes handed to the lanes as one batch: one thread hop (and one
    #: result back) per lane per batch, not per frame.
    batchSize: int = 1024 * 1024
    #: Pending bytes that start a batch early while both lanes are idle; below
    #: it data waits for more (or for F), so a small file costs one call for
    #: its data, its checks and its rename together.
    writeThreshold: int = 256 * 1024
    #: Pieces shorter than this are copied together into one buffer rather
    #: than held each as a view: bounds the objects a client of tiny frames
    #: makes the server hold.
    gatherBelow: int = 4096
    #: Longest buffer small pieces are gathered into.
    gatherSize: int = 64 * 1024
    #: Bytes written after which the flushing lane flushes them to disk
    #: (:meth:`~netproto.upload.store.PartialFile.flush`) while more arrive,
    #: so that the fsync after the last byte has little left to wait for.
    flushStep: int = 16 * 1024 * 1024

    def __init__(self) -> None:
        super().__init__()
        self.phase = Phase.IDLE
        self.upload: Upload | None = None
        self.writer: Lane | None = None
        self.hasher: Lane | None = None
        self.flusher: Lane | None = None
        self._paused = False

    def authenticated(self) -> None:
        factory = self.factory
        self.writer = Lane(factory.executor, factory.report)
        self.hasher = Lane(factory.executor, factory.report)
        self.flusher = Lane(factory.executor, factory.report)

    # -- frames ------------------------------------------------------------------

    def _expect(self, kind: bytes) -> None:
        if kind not in PHASE_FRAMES[self.phase]:
            raise ProtocolError(
                "bad-frame",
                f"a {kind!r} frame is not valid while {self.phase.value}",
            )

    def putReceived(self, payload: bytes) -> Deferred[Any]:
        """``P``: check the request, then open the partial file off the reactor."""
        self._expect(b"P")
        request = decodeJSON(payload)
        size = request.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ProtocolError("bad-frame", "P: 'size' must be a whole number of bytes >= 0")
        overwrite, resume = _boolField(request, "overwrite"), _boolField(request, "resume")
        self.phase = Phase.IDLE  # a P while discarding ends the failed file
        self.upload = None
        name = request.get("name")
        segments = splitName(name)
        assert isinstance(name, str)
        maxSize = self.factory.maxSize
        if maxSize and size > maxSize:
            raise ProtocolError(
                "too-large", f"{name}: {size} bytes is over the limit of {maxSize} bytes"
            )
        upload = Upload(name, segments, size, overwrite, resume)
        self.upload = upload
        self.phase = Phase.OPENING
        assert self.writer is not None
        factory = self.factory
        d = self.writer.run(
            _begin,
            factory.quotas,
            factory.store,
            self._user(),
            upload,
            factory.context.reactor.seconds(),
        )
        d.addCallbacks(self._opened, self._openFailed, (upload,), {}, (upload,))
        return d

    def _opened(self, opened: tuple[Reservation, PartialFile], upload: Upload) -> None:
        upload.reservation, upload.partial = opened
        partial = upload.partial
        if self.upload is not upload:
            # The connection went away meanwhile: keep only data kept before.
            self._release(upload, keep=upload.resume and partial.written > 0)
            return
        upload.offset = upload.received = partial.offset
        self.phase = Phase.RECEIVING
        # One line per stored file is the audit trail; a line per start only
        # for resumes (a log event costs as much as a small file's syscalls).
        if upload.offset:
            self.log.info(
                "upload: {peer} ({user}) resumes {name} ({size} bytes from {offset})",
                peer=self.peer,
                user=self._user(),
                name=upload.name,
                size=upload.size,
                offset=upload.offset,
            )
        self._reply({"offset": partial.offset})

    def _openFailed(self, failure: Failure, upload: Upload) -> None:
        failure.trap(ProtocolError)
        if self.upload is upload:
            self.upload = None
            self.phase = Phase.IDLE
            self.fail(failure.value)  # type: ignore[arg-type]

    def dataFrameReceived(self, payload: bytes | memoryview) -> None:
        """``D`` (streamed: called for each piece of a frame as it arrives):
        count, queue for the lanes, and pause the client if it is ahead."""
        if self.phase is not Phase.RECEIVING:
            self._expect(b"D")
            return  # discarding
        upload = self.upload
        assert upload is not None
        n = len(payload)
        if upload.received + n > upload.size:
            self._abort(
                upload,
                ProtocolError(
                    "size-mismatch",
                    f"{upload.name}: more than the announced {upload.size} bytes sent",
                ),
            )
            return
        upload.received += n
        if n >= self.gatherBelow:
            upload.pending.append(payload)
            upload.gather = None
        elif n:
            gather = upload.gather
            if gather is None:
                gather = upload.gather = bytearray()
                upload.pending.append(gather)
            gather += payload
            if len(gather) >= self.gatherSize:
                upload.gather = None
        upload.pendingBytes += n
        if upload.pendingBytes >= self.writeThreshold and (
            upload.pendingBytes >= self.batchSize or upload.writing == upload.hashing == 0
        ):
            self._flush(upload)
        self._updateFlow()

    def _flush(self, upload: Upload) -> None:
        """Hand the pending data to both lanes as one batch."""
        batch, n = upload.pending, upload.pendingBytes
        upload.pending, upload.pendingBytes, upload.gather = [], 0, None
        upload.writing += n
        upload.hashing += n
        upload.pipelined = True
        partial = upload.partial
        assert partial is not None
        assert self.writer is not None
        assert self.hasher is not None
        d = self.writer.run(partial.writeData, batch)
        d.addCallbacks(self._written, self._writeFailed, (upload, n), {}, (upload, n))
        d.addErrback(self._handlerFailed)
        h = self.hasher.run(partial.hashData, batch)
        h.addCallback(self._hashed, upload, n)
        h.addErrback(self._handlerFailed)

    def _written(self, _: None, upload: Upload, n: int) -> None:
        upload.writing -= n
        upload.unflushed += n
        if (
            upload.unflushed >= self.flushStep
            and not upload.flushing
            and self.upload is upload
            and self.phase is Phase.RECEIVING  # after F the final sync does it
        ):
            assert self.flusher is not None
            assert upload.partial is not None
            upload.flushing, upload.unflushed = True, 0
            d = self.flusher.run(upload.partial.flush)
            d.addCallback(self._flushed, upload)
            d.addErrback(self._handlerFailed)
        self._afterBatch(upload)

    def _flushed(self, _: None, upload: Upload) -> None:
        upload.flushing = False

    def _hashed(self, _: None, upload: Upload, n: int) -> None:
        upload.hashing -= n
        self._afterBatch(upload)

    def _afterBatch(self, upload: Upload) -> None:
        if (
            self.upload is upload
            and self.phase is Phase.RECEIVING
            and upload.pendingBytes >= self.writeThreshold
            and upload.writing == upload.hashing == 0
        ):
            self._flush(upload)
        self._updateFlow()

    def _writeFailed(self, failure: Failure, upload: Upload, n: int) -> None:
        upload.writing -= n
        failure.trap(ProtocolError)
        if self.upload is upload:
            self._abort(upload, failure.value)  # type: ignore[arg-type]
        self._updateFlow()

    def finishReceived(self, payload: bytes) -> Deferred[Any] | None:
        """``F``: the last data and the client's digest go to the lanes; the
        file is checked, synced and renamed, and ``K stored`` follows."""
        self._expect(b"F")
        request = decodeJSON(payload)
        sha256 = request.get("sha256")
        if not isinstance(sha256, str) or not _SHA256_HEX.fullmatch(sha256):
            raise ProtocolError("bad-frame", "F: 'sha256' must be 64 hexadecimal digits")
        if self.phase is Phase.DISCARDING:
            self.phase = Phase.IDLE
            return None
        upload = self.upload
        assert upload is not None
        partial = upload.partial
        assert partial is not None
        assert self.writer is not None
        assert self.hasher is not None
        self.phase = Phase.FINISHING
        sha256 = sha256.lower()
        if not upload.pipelined:
            # Everything is still here: one call writes, hashes, checks,
            # syncs and renames (a small file's only hop after its P).
            chunks, n = upload.pending, upload.pendingBytes
            upload.pending, upload.pendingBytes, upload.gather = [], 0, None
            upload.writing += n
            d = self.writer.run(_complete, self.factory.quotas, upload, chunks, sha256)
        else:
            if upload.pendingBytes:
                self._flush(upload)
            # The data is flushed to disk while its last batches are hashed;
            # once both are done and no early flush is running any more, the
            # digest is checked and the file renamed into place.
            assert self.flusher is not None
            hashed = self.hasher.run(_nothing)
            flushed = self.flusher.run(_nothing)
            synced = self.writer.run(partial.sync)
            d = (
                synced.addCallback(lambda _: hashed)
                .addCallback(lambda _: flushed)
                .addCallback(self._place, upload, sha256)
            )
        d.addCallbacks(self._stored, self._finishFailed, (upload,), {}, (upload,))
        return d

    def _place(self, _: None, upload: Upload, sha256: str) -> Deferred[str]:
        if self.upload is not upload:
            raise ProtocolError("internal", f"{upload.name}: upload ended", fatal=False)
        assert self.writer is not None
        return self.writer.run(_finish, self.factory.quotas, upload, sha256, True)

    def _stored(self, digest: str, upload: Upload) -> None:
        upload.writing = 0
        if self.upload is upload:
            self.upload = None
            self.phase = Phase.IDLE
        self._reply({"name": upload.name, "size": upload.size, "sha256": digest})
        # Logged once the reply is on its way: the client's turnaround hides
        # some of the line's cost (about a small file's own syscalls).
        self.log.info(
            "upload: {peer} ({user}) stored {name} ({size} bytes, sha256 {sha256})",
            peer=self.peer,
            user=self._user(),
            name=upload.name,
            size=upload.size,
            sha256=digest,
        )
        self._updateFlow()

    def _finishFailed(self, failure: Failure, upload: Upload) -> None:
        upload.writing = 0
        failure.trap(ProtocolError)
        if self.upload is upload:
            self._abort(upload, failure.value)  # type: ignore[arg-type]
        self._updateFlow()

    frameHandlers = {b"P": putReceived, b"D": dataFrameReceived, b"F": finishReceived}

    # -- replies -------------------------------------------------------------------

    def _reply(self, obj: Mapping[str, Any]) -> None:
        """Send ``K`` (at once: see :meth:`FramedProtocol.sendFrame`); the client
        waits for it before its next step."""
        self.sendJSON(b"K", obj)

    # -- ending a file early ------------------------------------------------------

    def _abort(self, upload: Upload, error: ProtocolError) -> None:
        """Answer the current file with ``error`` and remove its data; the
        connection stays usable."""
        self.upload = None
        self.phase = Phase.DISCARDING if self.phase is Phase.RECEIVING else Phase.IDLE
        upload.pending, upload.pendingBytes, upload.gather = [], 0, None
        self._release(upload, keep=False)
        self.fail(error)

    def _release(self, upload: Upload, keep: bool, chunks: list[Buffer] | None = None) -> None:
        """End ``upload`` without storing it: give back its place among its user's
        uploads, and close its partial file, keeping its data (and ``chunks``
        received but not yet written) for a resume, or removing it."""
        if upload.reservation is not None:
            self.factory.quotas.release(upload.reservation)
        partial = upload.partial
        if partial is None:
            return
        assert self.writer is not None
        if keep:
            d = self.writer.run(_keep, partial, chunks or [])
        else:
            d = self.writer.run(partial.discard)
        d.addErrback(self._handlerFailed)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        upload, phase = self.upload, self.phase
        self.upload = None
        self.phase = Phase.IDLE
        if upload is not None and upload.partial is not None:
            chunks, upload.pending, upload.gather = upload.pending, [], None
            # Kept for a resume only when it was asked for and nothing went wrong.
            keep = upload.resume and phase is Phase.RECEIVING
            self._release(upload, keep, chunks)
            self.log.info(
                "upload: {peer} left during {name} at {received} of {size} bytes ({what})",
                peer=self.peer,
                name=upload.name,
                received=upload.received,
                size=upload.size,
                what="kept for resume" if upload.resume else "removed",
            )
        super().connectionLost(reason)

    # -- the framed base's deadlines --------------------------------------------------

    def isBusy(self) -> bool:
        """The server is working on this connection's file: opening it, writing,
        hashing or flushing what arrived, or checking and renaming it. Waiting
        for the client's next data is not being busy: a transfer that stalls
        between frames (after ``K ready``, or between two ``D`` frames) is an
        idle connection, closed by the framed base's idle timeout like any
        other, which ends the file as a dropped connection does (its partial
        file removed, or kept for a resume) and gives back its user's upload
        slot and reserved quota."""
        if self.phase in (Phase.OPENING, Phase.FINISHING):
            return True
        lanes = (self.writer, self.hasher, self.flusher)
        return any(lane is not None and not lane.idle for lane in lanes)

    def readingPaused(self) -> bool:
        """Reading is paused while the lanes catch up (flow control): the
        client cannot send then, so a frame's deadline does not run."""
        return self._paused

    # -- flow control ---------------------------------------------------------------

    def _updateFlow(self) -> None:
        upload = self.upload
        queued = (
            upload.pendingBytes + max(upload.writing, upload.hashing) if upload is not None else 0
        )
        if self.transport is None:
            return
        if not self._paused and queued > self.highWater:
            self._paused = True
            cast(IPushProducer, self.transport).pauseProducing()
        elif self._paused and queued <= self.lowWater:
            self._paused = False
            cast(IPushProducer, self.transport).resumeProducing()

    def _user(self) -> str:
        return self.avatar.name if self.avatar is not None else "?"


def _begin(
    quotas: Quotas, store: UploadStore, user: str, upload: Upload, now: float
) -> tuple[Reservation, PartialFile]:
    """In the worker: admit the upload (its user's parallel uploads and quota),
    then open its partial file."""
    reservation = quotas.reserve(user, upload.name, upload.size, upload.overwrite)
    try:
        partial = store.begin(upload.segments, upload.size, upload.overwrite, upload.resume, now)
    except BaseException:
        quotas.release(reservation)
        raise
    return reservation, partial


def _finish(quotas: Quotas, upload: Upload, sha256: str, synced: bool) -> str:
    """In the worker: :meth:`PartialFile.finish` (checks, sync, rename), then
    the stored file is charged to its user."""
    assert upload.partial is not None
    assert upload.reservation is not None
    digest = upload.partial.finish(sha256, upload.overwrite, synced)
    quotas.commit(upload.reservation)
    return digest


def _complete(quotas: Quotas, upload: Upload, chunks: list[Buffer], sha256: str) -> str:
    """In the worker: the last data, then :func:`_finish`."""
    assert upload.partial is not None
    upload.partial.write(chunks)
    return _finish(quotas, upload, sha256, False)


def _keep(partial: PartialFile, chunks: list[Buffer]) -> None:
    """In the worker: write what was received, then keep the partial file for a
    resume (its hash is rebuilt from the file when it is resumed)."""
    with contextlib.suppress(ProtocolError):  # the data is broken: keep() removes it
        partial.writeData(chunks)
    partial.keep()


def _nothing() -> None:
    """A lane call that only marks the point where every call before it is done."""
