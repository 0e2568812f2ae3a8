"""The upload protocol (PROTOCOL.md section 4) on the framed base.

This is the wire class: it turns ``P``, ``D`` and ``F`` frames into calls on
the connection's :class:`~netproto.upload.pipeline.Pipeline` (which opens,
writes, hashes, flushes and renames off the reactor thread), and their
results into ``K`` and ``E`` frames. It never touches the disk.

Where one file is in its life is one table, :data:`PHASES`: every phase
change goes through it, and the frames valid in a phase are the ones it
lists for that phase (anything else is ``bad-frame``). An error while data
flows (``size-mismatch`` for too many bytes, ``no-space``) is sent at once;
the rest of that file's ``D`` frames and its ``F`` are then ignored (the
client may have pipelined them), and the connection stays usable for the
next ``P``. Every refusal and error of this service is non-fatal except
``bad-frame`` (a frame not valid in the current phase, a malformed ``P`` or
``F``).

Flow control: the bytes received but not yet both hashed and written
(:meth:`Pipeline.queued <netproto.upload.pipeline.Pipeline.queued>`) are
counted; above :attr:`UploadProtocol.highWater` the transport is paused, and
resumed once the pipeline is back under :attr:`UploadProtocol.lowWater`, so
the server's memory stays bounded however fast the client sends.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure

from netproto.codec import decodeJSON, encodeJSON
from netproto.errors import ProtocolError
from netproto.framing import FramedProtocol
from netproto.upload.listing import Listing, Source
from netproto.upload.names import splitName
from netproto.upload.outflow import BATCH_FRAMES, Batch, Outflow
from netproto.upload.pipeline import Pipeline, Upload
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
    LISTING = "listing"  # L received: I frames, then K listed (or an E)
    SENDING = "sending"  # G received: K sending, D frames, then F (or an E)


class Step(enum.Enum):
    """What moves a file from phase to phase, besides the client's frames."""

    #: its partial file is open: ``K ready``
    OPENED = "opened"
    #: its ``P`` was refused (``invalid-name``, ``too-large``, ``busy``,
    #: ``exists``, ``no-space``...): that ``E`` is sent
    REFUSED = "refused"
    #: an error after ``K ready`` (too many bytes, a failed write, a failed
    #: check at ``F``): that ``E`` is sent and its data removed
    FAILED = "failed"
    #: ``K stored`` is sent
    STORED = "stored"
    #: the answer to an ``L`` or a ``G`` ended (its last frame, or an ``E``)
    ANSWERED = "answered"
    #: the connection is gone
    LOST = "lost"


#: Every phase change of a connection's current file, and the frames valid in
#: each phase (a frame type not listed for the phase is ``bad-frame``).
#: ``D`` in RECEIVING stays there without a change; a ``P`` while discarding
#: starts the next file (the client gave up the failed one without its F).
PHASES: Final[Mapping[Phase, Mapping[bytes | Step, Phase]]] = {
    Phase.IDLE: {
        b"P": Phase.OPENING,
        b"L": Phase.LISTING,
        b"G": Phase.SENDING,
        Step.LOST: Phase.IDLE,
    },
    Phase.OPENING: {Step.OPENED: Phase.RECEIVING, Step.REFUSED: Phase.IDLE, Step.LOST: Phase.IDLE},
    Phase.RECEIVING: {
        b"D": Phase.RECEIVING,
        b"F": Phase.FINISHING,
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
    Phase.FINISHING: {Step.STORED: Phase.IDLE, Step.FAILED: Phase.IDLE, Step.LOST: Phase.IDLE},
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
    """One upload connection: files one after another, ``P``, ``D``..., ``F``."""

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
        self.upload: Upload | None = None
        #: the way to the disk (set once authenticated)
        self.pipeline: Pipeline | None = None
        #: the answer to an L or a G being sent
        self.outflow: Outflow | None = None
        self._paused = False

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

    # -- frames ------------------------------------------------------------------

    def putReceived(self, payload: bytes) -> Deferred[Any]:
        """``P``: check the request, then open the partial file off the reactor."""
        if b"P" not in PHASES[self.phase]:
            self._nextPhase(b"P")  # bad-frame
        request = decodeJSON(payload)
        if "size" not in request:
            raise ProtocolError("bad-frame", "P: 'size' is missing")
        size = _countField(request, "size", "P")
        overwrite, resume = _boolField(request, "overwrite"), _boolField(request, "resume")
        self._nextPhase(b"P")  # a P while discarding ends the failed file
        self.upload = None
        name = request.get("name")
        try:
            segments = splitName(name)
            assert isinstance(name, str)
            maxSize = self.factory.maxSize
            if maxSize and size > maxSize:
                raise ProtocolError(
                    "too-large", f"{name}: {size} bytes is over the limit of {maxSize} bytes"
                )
        except ProtocolError:
            self._nextPhase(Step.REFUSED)
            raise
        upload = Upload(name, segments, size, overwrite, resume)
        self.upload = upload
        assert self.pipeline is not None
        d = self.pipeline.open(upload, self._user(), self.factory.context.reactor.seconds())
        d.addCallbacks(self._opened, self._openFailed, (upload,), {}, (upload,))
        return d

    def _opened(self, offset: int, upload: Upload) -> None:
        if self.upload is not upload:
            # The connection went away meanwhile: keep only data kept before.
            assert self.pipeline is not None
            assert upload.partial is not None
            self.pipeline.release(upload, keep=upload.resume and upload.partial.written > 0)
            return
        self._nextPhase(Step.OPENED)
        # One line per stored file is the audit trail; a line per start only
        # for resumes (a log event costs as much as a small file's syscalls).
        if offset:
            self._logFrom("resumes", upload.name, upload.size, offset)
        self._reply({"offset": offset})

    def _openFailed(self, failure: Failure, upload: Upload) -> None:
        failure.trap(ProtocolError)
        if self.upload is upload:
            self.upload = None
            self._nextPhase(Step.REFUSED)
            self.fail(failure.value)  # type: ignore[arg-type]

    def dataFrameReceived(self, payload: bytes | memoryview) -> None:
        """``D`` (streamed: called for each piece of a frame as it arrives):
        count, queue for the pipeline, and pause the client if it is ahead."""
        if self.phase is not Phase.RECEIVING:
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

    def finishReceived(self, payload: bytes) -> Deferred[Any] | None:
        """``F``: the file is checked, synced and renamed, and ``K stored`` follows."""
        if b"F" not in PHASES[self.phase]:
            self._nextPhase(b"F")  # bad-frame
        request = decodeJSON(payload)
        sha256 = request.get("sha256")
        if not isinstance(sha256, str) or not _SHA256_HEX.fullmatch(sha256):
            raise ProtocolError("bad-frame", "F: 'sha256' must be 64 hexadecimal digits")
        discarding = self.phase is Phase.DISCARDING
        self._nextPhase(b"F")
        if discarding:
            return None
        upload = self.upload
        assert upload is not None
        assert self.pipeline is not None
        d = self.pipeline.finish(upload, sha256.lower())
        d.addCallbacks(self._stored, self._finishFailed, (upload,), {}, (upload,))
        return d

    def _stored(self, digest: str, upload: Upload) -> None:
        if self.upload is upload:
            self.upload = None
            self._nextPhase(Step.STORED)
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
        failure.trap(ProtocolError)
        self.dataFailed(upload, failure.value)  # type: ignore[arg-type]
        self._updateFlow()

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

        def produce() -> Batch:
            if source.position < offset:
                source.skipTo(offset)
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
        outflow = Outflow(self._lane(), produce, self.sendFrame, self._answered, cleanup)
        self.outflow = outflow
        assert self.sender is not None
        self.sender.setOutput(outflow)
        outflow.start()

    def _answered(self, failure: Failure | None) -> None:
        """The answer to an ``L`` or a ``G`` ended: with its last frame, or
        with ``failure`` (an ``E`` for a :class:`ProtocolError`)."""
        if self.outflow is not None:
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
        """A write or the final checks of ``upload`` failed: if it is still the
        current file, it ends with ``error``."""
        if self.upload is upload:
            self._abort(upload, error)

    def progressed(self) -> None:
        self._updateFlow()

    def bug(self, failure: Failure) -> None:
        self._handlerFailed(failure)

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
        self._nextPhase(Step.FAILED)
        assert self.pipeline is not None
        self.pipeline.release(upload, keep=False)
        self.fail(error)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        upload, phase = self.upload, self.phase
        self.upload = None
        if self.outflow is not None:
            self.outflow.stop()
            self.outflow = None
        self._nextPhase(Step.LOST)
        if upload is not None and upload.partial is not None:
            assert self.pipeline is not None
            # Kept for a resume only when it was asked for and nothing went wrong.
            self.pipeline.release(upload, keep=upload.resume and phase is Phase.RECEIVING)
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
        if self.phase is Phase.OPENING or self.phase is Phase.FINISHING:
            return True
        if self.phase is Phase.LISTING or self.phase is Phase.SENDING:
            # Opening what to send is work; then only an answer that moves
            # is: a client that takes nothing leaves its connection idle.
            return self.outflow is None or self.outflow.progressed()
        return self.pipeline is not None and self.pipeline.busy

    def readingPaused(self) -> bool:
        """Reading is paused while the pipeline catches up (flow control): the
        client cannot send then, so a frame's deadline does not run."""
        return self._paused

    # -- flow control ---------------------------------------------------------------

    def _updateFlow(self) -> None:
        queued = Pipeline.queued(self.upload)
        if self.transport is None:
            return
        if not self._paused and queued > self.highWater:
            self._paused = True
            cast(IPushProducer, self.transport).pauseProducing()
        elif self._paused and queued <= self.lowWater:
            self._paused = False
            cast(IPushProducer, self.transport).resumeProducing()

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

    def _user(self) -> str:
        return self.avatar.name if self.avatar is not None else "?"
