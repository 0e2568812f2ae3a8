"""The upload protocol (PROTOCOL.md section 4) on the framed base.

The protocol turns ``P``, ``D`` and ``F`` frames into calls on a
:class:`~netproto.upload.store.PartialFile`, and their results into ``K`` and
``E`` frames. It never touches the disk itself: every store call goes, in
order, through the connection's :class:`SerialWorker`, which runs it off the
reactor thread (the disk is the blocking library that forces a thread). One
worker per connection keeps the calls of one upload in order without locks,
and lets the reactor decode the next frames while the last ones are hashed
and written.

Flow control: the bytes received but not yet written are counted; above
:attr:`UploadProtocol.highWater` the transport is paused, and resumed once the
writer is back under :attr:`UploadProtocol.lowWater`, so the server's memory
stays bounded however fast the client sends.

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
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure

from netproto.errors import ProtocolError
from netproto.framing import FramedProtocol, decodeJSON
from netproto.upload.names import splitName
from netproto.upload.store import PartialFile

if TYPE_CHECKING:
    from netproto.upload.server import UploadFactory

T = TypeVar("T")
Executor = Callable[..., "Deferred[Any]"]

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


class SerialWorker:
    """Runs blocking calls through ``executor`` (e.g. a thread pool) one at a
    time, in the order they were asked for; results come back on the reactor."""

    def __init__(self, executor: Executor) -> None:
        self._executor = executor
        self._queue: deque[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = deque()
        self._busy = False

    def run(self, function: Callable[..., T], *args: Any) -> Deferred[T]:
        d: Deferred[T] = Deferred()
        self._queue.append((function, args, d))
        if not self._busy:
            self._next()
        return d

    @property
    def idle(self) -> bool:
        return not self._busy and not self._queue

    def _next(self) -> None:
        if not self._queue:
            self._busy = False
            return
        self._busy = True
        function, args, d = self._queue.popleft()
        self._executor(function, *args).addBoth(self._done, d)

    def _done(self, result: object, d: Deferred[Any]) -> None:
        # Start the next call before handling this one's result, so the
        # worker thread is busy while the reactor deals with the result.
        self._next()
        if isinstance(result, Failure):
            d.errback(result)
        else:
            d.callback(result)


class Upload:
    """The reactor's view of one file being received."""

    __slots__ = (
        "name",
        "offset",
        "overwrite",
        "partial",
        "pending",
        "pendingBytes",
        "received",
        "resume",
        "segments",
        "size",
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
        self.offset = 0
        #: bytes of the file held so far: kept ones plus those received
        self.received = 0
        #: received data not yet handed to the writer
        self.pending: list[bytes] = []
        self.pendingBytes = 0
        #: bytes handed to the writer and not yet written
        self.writing = 0


def _boolField(request: Mapping[str, Any], key: str) -> bool:
    value = request.get(key, False)
    if not isinstance(value, bool):
        raise ProtocolError("bad-frame", f"P: {key!r} must be true or false")
    return value


class UploadProtocol(FramedProtocol):
    """One upload connection: files one after another, ``P``, ``D``..., ``F``."""

    serviceName = "upload"
    factory: UploadFactory

    #: Received bytes not yet on disk above which reading from the client
    #: stops: a few frames, enough to keep the writer thread busy.
    highWater: int = 4 * 1024 * 1024
    #: ... and below which it starts again.
    lowWater: int = 1024 * 1024
    #: Pending bytes that start a write while the file is still coming; below
    #: it data waits for more (or for F), so a small file costs one thread hop
    #: for its data, its checks and its rename together.
    writeThreshold: int = 256 * 1024

    def __init__(self) -> None:
        super().__init__()
        self.phase = Phase.IDLE
        self.upload: Upload | None = None
        self.worker: SerialWorker | None = None
        self._paused = False

    def authenticated(self) -> None:
        self.worker = SerialWorker(self.factory.executor)

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
        assert self.worker is not None
        d = self.worker.run(
            self.factory.store.begin,
            segments,
            size,
            overwrite,
            resume,
            self.factory.context.reactor.seconds(),
        )
        d.addCallbacks(self._opened, self._openFailed, (upload,), {}, (upload,))
        return d

    def _opened(self, partial: PartialFile, upload: Upload) -> None:
        if self.upload is not upload:
            # The connection went away meanwhile: keep only data kept before.
            self._release(partial, keep=upload.resume and partial.written > 0)
            return
        upload.partial = partial
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
        self.sendJSON(b"K", {"offset": partial.offset})

    def _openFailed(self, failure: Failure, upload: Upload) -> None:
        failure.trap(ProtocolError)
        if self.upload is upload:
            self.upload = None
            self.phase = Phase.IDLE
            self.fail(failure.value)  # type: ignore[arg-type]

    def dataFrameReceived(self, payload: bytes) -> None:
        """``D``: count, queue for the writer, and pause the client if it is ahead."""
        self._expect(b"D")
        if self.phase is Phase.DISCARDING:
            return
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
        upload.pending.append(payload)
        upload.pendingBytes += n
        if upload.writing == 0 and upload.pendingBytes >= self.writeThreshold:
            self._flush(upload)
        self._updateFlow()

    def _flush(self, upload: Upload) -> None:
        chunks, upload.pending = upload.pending, []
        upload.writing, upload.pendingBytes = upload.pendingBytes, 0
        assert self.worker is not None
        assert upload.partial is not None
        d = self.worker.run(upload.partial.write, chunks)
        d.addCallbacks(self._written, self._writeFailed, (upload,), {}, (upload,))
        d.addErrback(self._handlerFailed)

    def _written(self, _: None, upload: Upload) -> None:
        upload.writing = 0
        if (
            self.upload is upload
            and self.phase is Phase.RECEIVING
            and upload.pendingBytes >= self.writeThreshold
        ):
            self._flush(upload)
        self._updateFlow()

    def _writeFailed(self, failure: Failure, upload: Upload) -> None:
        upload.writing = 0
        failure.trap(ProtocolError)
        if self.upload is upload:
            self._abort(upload, failure.value)  # type: ignore[arg-type]
        self._updateFlow()

    def finishReceived(self, payload: bytes) -> Deferred[Any] | None:
        """``F``: hand the last data and the client's digest to the writer; it
        checks, syncs and renames, and ``K stored`` follows."""
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
        assert upload.partial is not None
        assert self.worker is not None
        self.phase = Phase.FINISHING
        chunks, upload.pending = upload.pending, []
        upload.writing += upload.pendingBytes
        upload.pendingBytes = 0
        d = self.worker.run(_complete, upload.partial, chunks, sha256.lower(), upload.overwrite)
        d.addCallbacks(self._stored, self._finishFailed, (upload,), {}, (upload,))
        return d

    def _stored(self, digest: str, upload: Upload) -> None:
        upload.writing = 0
        if self.upload is upload:
            self.upload = None
            self.phase = Phase.IDLE
        self.log.info(
            "upload: {peer} ({user}) stored {name} ({size} bytes, sha256 {sha256})",
            peer=self.peer,
            user=self._user(),
            name=upload.name,
            size=upload.size,
            sha256=digest,
        )
        self.sendJSON(b"K", {"name": upload.name, "size": upload.size, "sha256": digest})
        self._updateFlow()

    def _finishFailed(self, failure: Failure, upload: Upload) -> None:
        upload.writing = 0
        failure.trap(ProtocolError)
        if self.upload is upload:
            self._abort(upload, failure.value)  # type: ignore[arg-type]
        self._updateFlow()

    frameHandlers = {b"P": putReceived, b"D": dataFrameReceived, b"F": finishReceived}

    # -- ending a file early ------------------------------------------------------

    def _abort(self, upload: Upload, error: ProtocolError) -> None:
        """Answer the current file with ``error`` and remove its data; the
        connection stays usable."""
        self.upload = None
        self.phase = Phase.DISCARDING if self.phase is Phase.RECEIVING else Phase.IDLE
        upload.pending, upload.pendingBytes = [], 0
        if upload.partial is not None:
            self._release(upload.partial, keep=False)
        self.fail(error)

    def _release(self, partial: PartialFile, keep: bool, chunks: list[bytes] | None = None) -> None:
        """Close ``partial``, keeping its data (and ``chunks`` received but not yet
        written) for a resume, or removing it."""
        assert self.worker is not None
        if keep:
            d = self.worker.run(_keep, partial, chunks or [])
        else:
            d = self.worker.run(partial.discard)
        d.addErrback(self._handlerFailed)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        upload, phase = self.upload, self.phase
        self.upload = None
        self.phase = Phase.IDLE
        if upload is not None and upload.partial is not None:
            chunks, upload.pending = upload.pending, []
            # Kept for a resume only when it was asked for and nothing went wrong.
            keep = upload.resume and phase is Phase.RECEIVING
            self._release(upload.partial, keep, chunks)
            self.log.info(
                "upload: {peer} left during {name} at {received} of {size} bytes ({what})",
                peer=self.peer,
                name=upload.name,
                received=upload.received,
                size=upload.size,
                what="kept for resume" if upload.resume else "removed",
            )
        super().connectionLost(reason)

    # -- flow control ---------------------------------------------------------------

    def _updateFlow(self) -> None:
        upload = self.upload
        queued = upload.pendingBytes + upload.writing if upload is not None else 0
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


def _complete(partial: PartialFile, chunks: list[bytes], sha256: str, overwrite: bool) -> str:
    """In the worker: the last data, then :meth:`PartialFile.finish` (checks, sync, rename)."""
    partial.write(chunks)
    return partial.finish(sha256, overwrite)


def _keep(partial: PartialFile, chunks: list[bytes]) -> None:
    """In the worker: write what was received, then keep the partial file for a resume."""
    with contextlib.suppress(ProtocolError):  # the data is broken: keep() removes it
        partial.write(chunks)
    partial.keep()
