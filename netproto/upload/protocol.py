"""The upload protocol (PROTOCOL.md sections 4 and 6) on the framed base.

This is the wire class: it turns ``P``, ``D`` and ``F`` frames into calls on
the connection's :class:`~netproto.upload.pipeline.Pipeline` (which opens,
writes, hashes, flushes and renames off the reactor thread), and their
results into ``K`` and ``E`` frames; ``L`` and ``G`` into streamed answers
(:mod:`netproto.upload.outflow`, :mod:`netproto.upload.listing`). It never
touches the disk.

Where the *current* file (the one the client's ``D`` and ``F`` frames are
for) is in its life is one table, :data:`PHASES`: every phase change goes
through it, and the frames valid in a phase are the ones it lists for that
phase (anything else is ``bad-frame``). Once its ``F`` has come, a file is
no longer current: it is finished (checked, made durable, renamed) in the
background while the client goes on with the next ``P``.

Pipelining (feature ``pipeline``, PROTOCOL.md section 6): a client may send
a file's ``P``, ``D`` frames and ``F`` without waiting for ``K ready``, and
the next ``P`` without waiting for ``K stored``. Data that comes while its
file is being opened waits with it; each file's answers (``K ready`` or an
``E``, then ``K stored`` or an ``E``) are queued with the file and sent in
the order of the files (:attr:`UploadProtocol.flight`), whatever order the
disk finishes them in. After a refusal or an error the rest of that file's
``D`` frames and its ``F`` are dropped, and the connection stays usable:
every refusal and error of this service is non-fatal except ``bad-frame``
(a frame not valid in the current phase, a malformed request) and
``frame-too-large``. At most :data:`MAX_IN_FLIGHT` files are in flight on
a connection (from their ``P`` to their last answer); a ``P`` beyond that,
and an ``L`` or a ``G`` while uploads are unanswered, waits with everything
after it in :attr:`UploadProtocol.backlog`, reading stopped, until its turn.
Small files finishing together are made durable together (a group commit:
:meth:`Pipeline.flush <netproto.upload.pipeline.Pipeline.flush>`, called
once a read's frames are handled); their answers go out in one write
(:meth:`UploadProtocol.together`); no ``K stored`` is sent before its file
and its directory entry are on disk.

Flow control: the bytes received but not yet both hashed and written
(:meth:`Pipeline.queued <netproto.upload.pipeline.Pipeline.queued>`, for
every file in flight) are counted; above :attr:`UploadProtocol.highWater`
the transport is paused, and resumed once the pipeline is back under
:attr:`UploadProtocol.lowWater`, so the server's memory stays bounded
however fast the client sends. The backlog holds at most what one read
brought (reading stops as soon as it is not empty).
"""

from __future__ import annotations

import enum
import re
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final, cast

from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure

from netproto.codec import decodeJSON, encodeJSON, frameHeader
from netproto.errors import ProtocolError
from netproto.framing import FramedProtocol, State
from netproto.upload.listing import Listing, Source
from netproto.upload.names import splitName
from netproto.upload.outflow import BATCH_FRAMES, Batch, Outflow
from netproto.upload.pipeline import Pipeline, Upload
from netproto.upload.workers import Lane
from netproto.upload.zerocopy import FileSpan, Spans

if TYPE_CHECKING:
    from netproto.upload.server import UploadFactory

_SHA256_HEX: Final = re.compile(r"[0-9a-fA-F]{64}")

#: Files a connection has in flight at most (from their P to their last
#: answer): each holds an open partial file and its directory (two
#: descriptors), up to a batch of received data, and one of its user's
#: parallel uploads (``--upload-max-per-user``, which lowers this when it is
#: smaller). Measured with 1000 pipelined files of 4 KiB (docs/performance.md):
#: 4 in flight give about 450 files/s, 8 about 1000, 32 no more than 8 (the
#: group commits are then as large as the disk can use); with the opens and
#: small files of a read done in one call, 8 and 64 both about 2,600.
MAX_IN_FLIGHT: Final = 8


class Phase(enum.Enum):
    """Where the current file of a connection is (or what the connection answers)."""

    IDLE = "idle"  # waiting for a P (or an L, a G)
    OPENING = "opening"  # P accepted; its partial file is being opened (D frames wait)
    RECEIVING = "receiving"  # opened: D frames, then F
    DISCARDING = "discarding"  # refused or failed: its D frames and F are dropped
    LISTING = "listing"  # L received: I frames, then K listed (or an E)
    SENDING = "sending"  # G received: K sending, D frames, then F (or an E)


class Step(enum.Enum):
    """What moves the current file from phase to phase, besides the client's frames."""

    #: its partial file is open: ``K ready``
    OPENED = "opened"
    #: its ``P`` was refused (``invalid-name``, ``too-large``, ``busy``,
    #: ``exists``, ``no-space``...)
    REFUSED = "refused"
    #: an error while its data came (too many bytes, a failed write)
    FAILED = "failed"
    #: the answer to an ``L`` or a ``G`` ended (its last frame, or an ``E``)
    ANSWERED = "answered"
    #: the connection is gone
    LOST = "lost"


#: Every phase change of a connection's current file, and the frames valid in
#: each phase (a frame type not listed for the phase is ``bad-frame``).
#: ``D`` while opening or receiving stays there; ``F`` hands the file to the
#: background (its checks, flush and rename) and the connection is free for
#: the next ``P``; a ``P`` while discarding starts the next file (the client
#: gave up the failed one without its F).
PHASES: Final[Mapping[Phase, Mapping[bytes | Step, Phase]]] = {
    Phase.IDLE: {
        b"P": Phase.OPENING,
        b"L": Phase.LISTING,
        b"G": Phase.SENDING,
        Step.LOST: Phase.IDLE,
    },
    Phase.OPENING: {
        b"D": Phase.OPENING,
        b"F": Phase.IDLE,
        Step.OPENED: Phase.RECEIVING,
        Step.REFUSED: Phase.DISCARDING,
        Step.FAILED: Phase.DISCARDING,
        Step.LOST: Phase.IDLE,
    },
    Phase.RECEIVING: {
        b"D": Phase.RECEIVING,
        b"F": Phase.IDLE,
        Step.FAILED: Phase.DISCARDING,
        Step.LOST: Phase.IDLE,
    },
    Phase.DISCARDING: {
        b"D": Phase.DISCARDING,
        b"F": Phase.IDLE,
        b"P": Phase.OPENING,
        b"L": Phase.LISTING,
        b"G": Phase.SENDING,
        Step.LOST: Phase.IDLE,
    },
    # A client waits for the end of an answer before its next request.
    Phase.LISTING: {Step.ANSWERED: Phase.IDLE, Step.LOST: Phase.IDLE},
    Phase.SENDING: {Step.ANSWERED: Phase.IDLE, Step.LOST: Phase.IDLE},
}


def _boolField(request: Mapping[str, Any], key: str, frame: str = "P") -> bool:
    value = request.get(key, False)
    if not isinstance(value, bool):
        raise ProtocolError("bad-frame", f"{frame}: {key!r} must be true or false")
    return value


def _countField(request: Mapping[str, Any], key: str, frame: str) -> int:
    value = request.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProtocolError("bad-frame", f"{frame}: {key!r} must be a whole number >= 0")
    return value


class UploadProtocol(FramedProtocol):
    """One upload connection: files one after another (or pipelined), listings, downloads."""

    serviceName = "upload"
    factory: UploadFactory
    streamedFrames = frozenset({b"D"})

    #: Received bytes not yet both hashed and on disk above which reading from
    #: the client stops: a few batches, enough to keep both lanes busy.
    highWater: int = 16 * 1024 * 1024
    #: ... and below which it starts again.
    lowWater: int = 8 * 1024 * 1024

    def __init__(self) -> None:
        super().__init__()
        self.phase = Phase.IDLE
        #: the current file: the one the client's D and F frames are for
        self.upload: Upload | None = None
        #: the way to the disk (set once authenticated)
        self.pipeline: Pipeline | None = None
        #: the answer to an L or a G being sent
        self.outflow: Outflow | None = None
        #: files from their P to their last answer, in the order of their P
        self.flight: deque[Upload] = deque()
        #: frames that wait for their turn (a P past MAX_IN_FLIGHT files, an L
        #: or a G while uploads are unanswered), and every frame after them
        self.backlog: deque[tuple[bytes, bytes]] = deque()
        self._replaying = False
        #: frames held to be sent together (:meth:`together`), or None: sent at once
        self._outbox: list[bytes] | None = None
        #: reading paused for flow control, and whether it is paused at all
        self._paused = False
        self._readingStopped = False

    def authenticated(self) -> None:
        factory = self.factory
        self.pipeline = Pipeline(
            factory.executor, factory.report, factory.store, factory.quotas, self
        )

    def _nextPhase(self, trigger: bytes | Step) -> None:
        """Move the current file to the phase :data:`PHASES` gives for
        ``trigger``: a frame not listed for the phase is ``bad-frame``; a
        step not listed is a bug of ours."""
        phase = PHASES[self.phase].get(trigger)
        if phase is None:
            if isinstance(trigger, bytes):
                raise ProtocolError(
                    "bad-frame", f"a {trigger!r} frame is not valid while {self.phase.value}"
                )
            raise RuntimeError(f"no upload phase change from {self.phase} on {trigger}")
        self.phase = phase

    # -- frames that wait for their turn ------------------------------------------

    @property
    def maxInFlight(self) -> int:
        """:data:`MAX_IN_FLIGHT`, or the user's cap on parallel uploads if lower."""
        cap = self.factory.quotas.maxParallel
        return min(MAX_IN_FLIGHT, cap) if cap else MAX_IN_FLIGHT

    def _mustWait(self, kind: bytes) -> bool:
        if kind == b"P":
            return len(self.flight) >= self.maxInFlight
        if kind in {b"L", b"G"}:
            return bool(self.flight)  # the uploads' answers come first
        return False

    def frameReceived(self, kind: bytes, payload: bytes) -> None:
        if (
            self.state is State.READY
            and not self._replaying
            and (self.backlog or self._mustWait(kind))
        ):
            self.backlog.append((kind, payload))
            self._setReading()
            return
        super().frameReceived(kind, payload)

    def _replay(self) -> None:
        """Handle the waiting frames whose turn has come, in order."""
        if self._replaying:
            return
        self._replaying = True
        try:
            while (
                self.backlog
                and self.state is State.READY
                and not self._mustWait(self.backlog[0][0])
            ):
                kind, payload = self.backlog.popleft()
                super().frameReceived(kind, payload)
        finally:
            self._replaying = False
        if self.pipeline is not None:
            self.pipeline.flush()
        self._setReading()

    def _dispatchBuffered(self) -> None:
        """The framed base's handling of what was read (after a read, or after
        a login checked the password): then the files' opens and small files
        it brought go to the disk together (:meth:`Pipeline.flush`)."""
        super()._dispatchBuffered()
        if self.pipeline is not None:
            self.pipeline.flush()

    # -- P, D, F: uploads ------------------------------------------------------------

    def putReceived(self, payload: bytes) -> None:
        """``P``: check the request, then open the partial file off the reactor."""
        if b"P" not in PHASES[self.phase]:
            self._nextPhase(b"P")  # bad-frame
        request = decodeJSON(payload)
        if "size" not in request:
            raise ProtocolError("bad-frame", "P: 'size' is missing")
        size = _countField(request, "size", "P")
        overwrite, resume = _boolField(request, "overwrite"), _boolField(request, "resume")
        self._nextPhase(b"P")  # a P while discarding ends the failed file
        name = request.get("name")
        upload = Upload(name if isinstance(name, str) else repr(name), (), size, overwrite, resume)
        self.upload = upload
        self.flight.append(upload)
        try:
            upload.segments = splitName(name)
            maxSize = self.factory.maxSize
            if maxSize and size > maxSize:
                raise ProtocolError(
                    "too-large", f"{name}: {size} bytes is over the limit of {maxSize} bytes"
                )
        except ProtocolError as e:
            self._refuse(upload, e)
            return
        assert self.pipeline is not None
        d = self.pipeline.open(upload, self._user(), self.factory.context.reactor.seconds())
        d.addCallbacks(self._opened, self._openFailed, (upload,), {}, (upload,))
        d.addErrback(self._handlerFailed)

    def _opened(self, offset: int, upload: Upload) -> None:
        assert self.pipeline is not None
        if upload.abandoned:
            # The connection went away meanwhile: keep only data kept before.
            assert upload.partial is not None
            self.pipeline.release(upload, keep=upload.resume and upload.partial.written > 0)
            return
        if self.upload is upload:
            self._nextPhase(Step.OPENED)
        # One line per stored file is the audit trail; a line per start only
        # for resumes (a log event costs as much as a small file's syscalls).
        if offset:
            self._logFrom("resumes", upload.name, upload.size, offset)
        self._answer(upload, {"offset": offset})
        if upload.sha256 is not None and not upload.finishing:
            self._finish(upload)  # its F came while it was being opened

    def _openFailed(self, failure: Failure, upload: Upload) -> None:
        failure.trap(ProtocolError)
        if not upload.abandoned:
            self._refuse(upload, failure.value)  # type: ignore[arg-type]

    def _refuse(self, upload: Upload, error: ProtocolError) -> None:
        """``upload`` is refused: its answer is ``error``, and what comes of it is dropped."""
        if self.upload is upload:
            self.upload = None
            self._nextPhase(Step.REFUSED)
        assert self.pipeline is not None
        self.pipeline.release(upload, keep=False)
        self._answer(upload, error, last=True)

    def dataFrameReceived(self, payload: bytes | memoryview) -> None:
        """``D`` (streamed: called for each piece of a frame as it arrives):
        count, queue for the pipeline, and pause the client if it is ahead."""
        if self.phase is not Phase.RECEIVING and self.phase is not Phase.OPENING:
            self._nextPhase(b"D")  # discarding (or bad-frame)
            return
        upload = self.upload
        assert upload is not None
        assert self.pipeline is not None
        if upload.received + len(payload) > upload.size:
            self._abort(
                upload,
                ProtocolError(
                    "size-mismatch",
                    f"{upload.name}: more than the announced {upload.size} bytes sent",
                ),
            )
            return
        self.pipeline.add(upload, payload)
        self._updateFlow()

    def finishReceived(self, payload: bytes) -> None:
        """``F``: the file is checked, synced and renamed in the background, and
        ``K stored`` follows in its turn; the client may send the next ``P``."""
        if b"F" not in PHASES[self.phase]:
            self._nextPhase(b"F")  # bad-frame
        request = decodeJSON(payload)
        sha256 = request.get("sha256")
        if not isinstance(sha256, str) or not _SHA256_HEX.fullmatch(sha256):
            raise ProtocolError("bad-frame", "F: 'sha256' must be 64 hexadecimal digits")
        discarding = self.phase is Phase.DISCARDING
        self._nextPhase(b"F")
        upload, self.upload = self.upload, None
        if discarding or upload is None:
            return
        upload.sha256 = sha256.lower()
        if upload.receiving or upload.job is not None:
            self._finish(upload)  # (with its open, when that is still queued)
        # else it is being opened: finished once it is (_opened)

    def _finish(self, upload: Upload) -> None:
        assert self.pipeline is not None
        assert upload.sha256 is not None
        d = self.pipeline.finish(upload, upload.sha256)
        d.addCallbacks(self._stored, self._finishFailed, (upload,), {}, (upload,))
        d.addErrback(self._handlerFailed)

    def _stored(self, digest: str, upload: Upload) -> None:
        self._answer(
            upload, {"name": upload.name, "size": upload.size, "sha256": digest}, last=True
        )
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
        failure.trap(ProtocolError)
        assert self.pipeline is not None
        self.pipeline.release(upload, keep=False)
        self._answer(upload, failure.value, last=True)  # type: ignore[arg-type]
        self._updateFlow()

    def _abort(self, upload: Upload, error: ProtocolError) -> None:
        """End the current file with ``error`` and remove its data; the
        connection stays usable."""
        if self.upload is upload:
            self.upload = None
            self._nextPhase(Step.FAILED)
        assert self.pipeline is not None
        self.pipeline.release(upload, keep=False)
        self._answer(upload, error, last=True)

    # -- answers, in the order of the files ------------------------------------------

    def _answer(
        self, upload: Upload, answer: Mapping[str, Any] | ProtocolError, last: bool = False
    ) -> None:
        """Queue ``answer`` (a ``K`` payload or an ``E``) for ``upload``; send
        whatever is due. A file that already had its last answer gets no more."""
        if upload.answered:
            return
        upload.answers.append(answer if isinstance(answer, ProtocolError) else dict(answer))
        upload.answered = last
        self._sendAnswers()

    def _sendAnswers(self) -> None:
        """Send the answers of the files in flight, oldest file first; a file
        leaves the flight with its last answer, and waiting frames may go on."""
        flight = self.flight
        while flight:
            head = flight[0]
            while head.answers:
                answer = head.answers.popleft()
                if isinstance(answer, ProtocolError):
                    self.fail(answer)
                else:
                    self._reply(answer)
            if not head.answered:
                break
            flight.popleft()
        if self.backlog and self._outbox is None:
            self._replay()

    @contextmanager
    def together(self) -> Iterator[None]:
        """Hold the frames sent meanwhile, then send them in one write (the
        answers of the files one call of the pipeline did: one ``send``
        instead of two per file); then handle the frames whose turn came."""
        if self._outbox is not None:  # already holding
            yield
            return
        self._outbox = []
        try:
            yield
        finally:
            self._sendHeld()
            self._outbox = None
        if self.backlog:
            self._replay()

    def _sendHeld(self) -> None:
        outbox = self._outbox
        if outbox and self.sender is not None:
            self.sender.writeSequence(outbox)
            outbox.clear()

    def sendFrame(self, kind: bytes, payload: bytes = b"") -> None:
        """Send one frame, or hold it while answers are held (:meth:`together`).
        An ``E`` goes at once, after what is held: it may close the connection."""
        outbox = self._outbox
        if outbox is None:
            super().sendFrame(kind, payload)
        elif kind == b"E":
            self._sendHeld()
            super().sendFrame(kind, payload)
        else:
            outbox += (frameHeader(kind, len(payload)), payload)

    # -- L and G: reading back (PROTOCOL.md section 6) --------------------------------

    def listReceived(self, payload: bytes) -> None:
        """``L``: list a directory (or a tree), one ``I`` frame at a time."""
        if b"L" not in PHASES[self.phase]:
            self._nextPhase(b"L")  # bad-frame
        request = decodeJSON(payload)
        path = request.get("path", "")
        if not isinstance(path, str):
            raise ProtocolError("bad-frame", "L: 'path' must be a string")
        recursive = _boolField(request, "recursive", "L")
        self._nextPhase(b"L")
        self.upload = None
        try:
            segments = splitName(path) if path.strip("/") else ()
        except ProtocolError as e:
            self._answered(Failure(e))
            return
        store = self.factory.store
        lane = self._lane()
        d = lane.run(Listing, store.rootFD, segments, recursive, self.factory.maxFrame - 1)
        d.addCallbacks(self._listing, self._answered)

    def _listing(self, listing: Listing) -> None:
        def produce() -> Batch:
            payload = listing.nextPayload()
            if payload is None:
                return [(b"K", encodeJSON({"count": listing.count}))], True
            return [(b"I", payload)], False

        self._stream(produce, listing.close)

    def getReceived(self, payload: bytes) -> None:
        """``G``: send a file from an offset, then its whole SHA-256."""
        if b"G" not in PHASES[self.phase]:
            self._nextPhase(b"G")  # bad-frame
        request = decodeJSON(payload)
        offset = _countField(request, "offset", "G")
        name = request.get("name")
        self._nextPhase(b"G")
        self.upload = None
        try:
            segments = splitName(name)
        except ProtocolError as e:
            self._answered(Failure(e))
            return
        d = self._lane().run(Source, self.factory.store.rootFD, segments)
        d.addCallbacks(self._sending, self._answered, (offset,))

    def _sending(self, source: Source, offset: int) -> None:
        if self.phase is not Phase.SENDING:  # the connection went away meanwhile
            self._lane().run(source.close)
            return
        if offset > source.size:
            self._lane().run(source.close)
            self._answered(
                Failure(
                    ProtocolError(
                        "size-mismatch",
                        f"{source.name}: offset {offset} is past its end ({source.size} bytes)",
                        fatal=False,
                    )
                )
            )
            return
        self._reply({"size": source.size, "offset": offset})
        frameSize = self.factory.maxFrame - 1
        # Plain TCP: the payloads leave with sendfile once hashed (zerocopy.py).
        spans = Spans(source, frameSize) if self.sender and self.sender.direct else None

        def produce() -> Batch:
            if source.position < offset:
                source.skipTo(offset)
            frames: list[tuple[bytes, bytes | FileSpan]]
            if spans is not None:
                frames = [(b"D", span) for span in spans.read(BATCH_FRAMES)]
            else:
                frames = [(b"D", piece) for piece in source.read(frameSize, BATCH_FRAMES)]
            if frames:
                return frames, False
            # Apart from the last data: an E for rotten data comes after it all.
            return [(b"F", encodeJSON({"sha256": source.finish()}))], True

        self._logFrom("fetches", source.name, source.size, offset)
        self._stream(produce, source.close)

    def _stream(self, produce: Callable[[], Batch], cleanup: Callable[[], None]) -> None:
        """Send an answer's frames as the client takes them (:class:`Outflow`)."""
        if self.phase is not Phase.LISTING and self.phase is not Phase.SENDING:
            self._lane().run(cleanup)  # the connection went away meanwhile
            return
        outflow = Outflow(
            self._lane(), produce, self.sendFrame, self._answered, cleanup, writer=self.sender
        )
        self.outflow = outflow
        assert self.sender is not None
        self.sender.setOutput(outflow)
        outflow.start()

    def _answered(self, failure: Failure | None) -> None:
        """The answer to an ``L`` or a ``G`` ended: with its last frame, or
        with ``failure`` (an ``E`` for a :class:`ProtocolError`)."""
        if self.outflow is not None:
            self._logSent(self.outflow, "finished" if failure is None else "ended by an error")
            self.outflow = None
            if self.sender is not None:
                self.sender.setOutput(None)
        if self.phase is not Phase.LISTING and self.phase is not Phase.SENDING:
            return  # the connection is gone
        self._nextPhase(Step.ANSWERED)
        if failure is not None:
            self._handlerFailed(failure)

    def _lane(self) -> Lane:
        """Where this connection's disk work runs, one call at a time."""
        assert self.pipeline is not None
        return self.pipeline.writer

    frameHandlers = {
        b"P": putReceived,
        b"D": dataFrameReceived,
        b"F": finishReceived,
        b"L": listReceived,
        b"G": getReceived,
    }

    # -- what the pipeline reports (PipelineOwner) -----------------------------------

    def dataFailed(self, upload: Upload, error: ProtocolError) -> None:
        """A write of ``upload``'s data failed: it ends with ``error`` (the
        cause, rather than what its finish would then find: a short file)."""
        if not upload.answered:
            self._abort(upload, error)

    def progressed(self) -> None:
        self._updateFlow()

    def bug(self, failure: Failure) -> None:
        self._handlerFailed(failure)

    # -- replies -------------------------------------------------------------------

    def _reply(self, obj: Mapping[str, Any]) -> None:
        """Send ``K`` (at once: see :meth:`FramedProtocol.sendFrame`)."""
        self.sendJSON(b"K", obj)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        current, phase = self.upload, self.phase
        self.upload = None
        self._nextPhase(Step.LOST)
        if self.outflow is not None:
            self.outflow.stop()
            self._logSent(self.outflow, "cut short: the connection went away")
            self.outflow = None
        self.backlog.clear()
        for upload in self.flight:
            if upload.answered:
                continue
            # Not stored unless it already is: the client would never hear of
            # it (a group commit or a rename already under way completes).
            assert self.pipeline is not None
            # Kept for a resume only when it was asked for and nothing went wrong.
            keep = upload is current and upload.resume and phase is Phase.RECEIVING
            self.pipeline.release(upload, keep=keep)
            if upload.partial is not None:
                self.log.info(
                    "upload: {peer} left during {name} at {received} of {size} bytes ({what})",
                    peer=self.peer,
                    name=upload.name,
                    received=upload.received,
                    size=upload.size,
                    what="kept for resume" if keep else "removed",
                )
        self.flight.clear()
        super().connectionLost(reason)

    # -- the framed base's deadlines --------------------------------------------------

    def isBusy(self) -> bool:
        """The server is working on this connection: opening a file, writing,
        hashing or flushing what arrived, checking and renaming a finished
        file, or making an answer. Waiting for the client's next data is not
        being busy: a transfer that stalls between frames (after ``K ready``,
        or between two ``D`` frames), or a download the client stopped
        reading, is an idle connection, closed by the framed base's idle
        timeout like any other, which ends the file as a dropped connection
        does (its partial file removed, or kept for a resume) and gives back
        its user's upload slot and reserved quota."""
        if self.phase is Phase.LISTING or self.phase is Phase.SENDING:
            # Opening what to send is work; then only an answer that moves
            # is: a client that takes nothing leaves its connection idle.
            return self.outflow is None or self.outflow.progressed()
        if self.phase is Phase.OPENING:
            return True
        if any(upload is not self.upload for upload in self.flight):
            return True  # a file being opened or finished in the background
        return self.pipeline is not None and self.pipeline.busy

    def readingPaused(self) -> bool:
        """Reading is paused while the pipeline catches up (flow control) or
        frames wait for their turn: the client cannot send then, so a
        frame's deadline does not run."""
        return self._readingStopped

    # -- flow control ---------------------------------------------------------------

    def _updateFlow(self) -> None:
        queued = sum(Pipeline.queued(upload) for upload in self.flight)
        if not self._paused and queued > self.highWater:
            self._paused = True
        elif self._paused and queued <= self.lowWater:
            self._paused = False
        self._setReading()

    def _setReading(self) -> None:
        """Read from the client unless the pipeline is behind or frames wait."""
        stop = self._paused or bool(self.backlog)
        if stop == self._readingStopped or self.transport is None:
            return
        self._readingStopped = stop
        transport = cast(IPushProducer, self.transport)
        if stop:
            transport.pauseProducing()
        else:
            transport.resumeProducing()

    def _logFrom(self, what: str, name: str, size: int, offset: int) -> None:
        """One audit line for a transfer that starts (a resume, a download)."""
        self.log.info(
            "upload: {peer} ({user}) {what} {name} ({size} bytes from {offset})",
            peer=self.peer,
            user=self._user(),
            what=what,
            name=name,
            size=size,
            offset=offset,
        )

    def _logSent(self, outflow: Outflow, how: str) -> None:
        """One line at the end of an answer that carried data (a download's):
        the bytes of data it handed to the connection, counted by
        :mod:`netproto.metrics`; a listing has no ``D`` frames, and no line."""
        if outflow.dataSent:
            self.log.info(
                "upload: {peer} was sent {sent} bytes of data ({how})",
                peer=self.peer,
                sent=outflow.dataSent,
                how=how,
            )

    def _user(self) -> str:
        return self.avatar.name if self.avatar is not None else "?"
