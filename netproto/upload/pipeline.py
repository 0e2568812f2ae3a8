"""What happens to an upload's data between the wire and the disk.

The wire class (:class:`~netproto.upload.protocol.UploadProtocol`) turns
frames into calls on a :class:`Pipeline` and its results into frames; the
pipeline never sees a frame. It never touches the disk itself either: every
store call goes through one of the connection's three
:class:`lanes <netproto.upload.workers.Lane>`, which run it off the reactor
thread, in order. The *writing* lane opens, writes, syncs and renames; the
*hashing* lane feeds the SHA-256; the *flushing* lane flushes written data
to disk while more arrives. Each batch of data goes to the writing and the
hashing lane, so on two cores a big file is hashed while it is written and
while the reactor receives the next batch.

A small file's data never goes to the hashing lane. Opens, and the data and
checks of files whose ``F`` came before any of their data was handed over,
are jobs (:class:`Job`) queued on the reactor and handed to the writing lane
together, one call at a time (:meth:`Pipeline.flush`, :func:`_runJobs`):
the call opens, writes, hashes and checks each file, then makes those it
stored durable at once (a group commit: one flush of the file system, the
renames, one flush per directory). A pipelining client's small file whose
``P``, ``D`` and ``F`` came in one read is therefore opened and stored in
the same call, with the files read with it; while a call runs, the files
that arrive queue for the next one, so the groups grow with the load.

Data comes in as views of the transport's reads (``D`` is a streamed frame
type), is batched (about :attr:`Pipeline.batchSize` bytes) and handed to the
lanes as it is, without copies. :meth:`Pipeline.queued` says how much it
holds, for the wire class's flow control.
"""

from __future__ import annotations

import contextlib
from collections import deque
from contextlib import AbstractContextManager
from typing import Any, Protocol, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from netproto.errors import ProtocolError
from netproto.upload.quota import Quotas, Reservation
from netproto.upload.store import Buffer, PartialFile, UploadStore, commitGroup
from netproto.upload.workers import Executor, Lane, Reporter

T = TypeVar("T")


class Upload:
    """The reactor's view of one file being received."""

    __slots__ = (
        "abandoned",
        "answered",
        "answers",
        "finishing",
        "flushing",
        "gather",
        "hashing",
        "job",
        "name",
        "offset",
        "overwrite",
        "partial",
        "pending",
        "pendingBytes",
        "pipelined",
        "received",
        "receiving",
        "reservation",
        "resume",
        "segments",
        "sha256",
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
        #: opened, and more data may come (until finished or released)
        self.receiving = False
        #: its F was handed to the pipeline (no more data comes)
        self.finishing = False
        #: its open, queued and not yet handed to the writing lane (the data
        #: and checks of a file whose F comes before then join it)
        self.job: Job | None = None
        #: released without being stored: whatever is still queued for it
        #: must not store it
        self.abandoned = False
        #: the digest of the client's F, once it came (maybe before the open ended)
        self.sha256: str | None = None
        #: what the connection still has to answer for it, in order: a reply
        #: (``K``) or a refusal (a ProtocolError)
        self.answers: deque[dict[str, Any] | ProtocolError] = deque()
        #: its last answer is known (``K stored`` or an ``E``)
        self.answered = False


class Job:
    """One file's work in a writing lane call (:func:`_runJobs`): its open,
    its data and checks (then its group commit), or both; and what each came
    to. Made on the reactor thread, filled in by the worker thread while the
    call runs, read on the reactor thread once the lane reports the call
    done (which orders the two).
    """

    __slots__ = (
        "chunks",
        "opened",
        "opening",
        "sha256",
        "stored",
        "upload",
        "whenOpened",
        "whenStored",
    )

    def __init__(self, upload: Upload) -> None:
        self.upload = upload
        #: (user, now) when the job opens the file
        self.opening: tuple[str, float] | None = None
        #: the client's digest when the job stores the file, and its data
        self.sha256: str | None = None
        self.chunks: list[Buffer] = []
        self.opened: tuple[Reservation, PartialFile] | Failure | None = None
        self.stored: str | Failure | None = None
        self.whenOpened: Deferred[tuple[Reservation, PartialFile]] | None = None
        self.whenStored: Deferred[str] | None = None


class PipelineOwner(Protocol):
    """What a :class:`Pipeline` tells the wire class."""

    def dataFailed(self, upload: Upload, error: ProtocolError) -> None:
        """Writing ``upload``'s data failed (``no-space``, an I/O error)."""

    def progressed(self) -> None:
        """What the pipeline holds (:meth:`Pipeline.queued`) went down."""

    def bug(self, failure: Failure) -> None:
        """A call failed with something other than a :class:`ProtocolError`."""

    def together(self) -> AbstractContextManager[None]:
        """While in it, the answers the pipeline's results lead to are held, and
        sent together when it ends (one write for a call's files)."""


class Pipeline:
    """One connection's uploads on their way to the disk, one file at a time.

    :param owner: told about failures and progress (the wire class).
    """

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
    #: Most jobs one writing lane call does (so most files one group commit
    #: makes durable): a client pipelining faster than the disk still hears
    #: about its files every so many. The connection's files in flight
    #: (:data:`~netproto.upload.protocol.MAX_IN_FLIGHT`) bound it first.
    groupMax: int = 64

    def __init__(
        self,
        executor: Executor,
        report: Reporter,
        store: UploadStore,
        quotas: Quotas,
        owner: PipelineOwner,
    ) -> None:
        self.store = store
        self.quotas = quotas
        self.owner = owner
        self.writer = Lane(executor, report)
        self.hasher = Lane(executor, report)
        self.flusher = Lane(executor, report)
        #: opens and small files' data, checks and commits, for the next call
        self._jobs: list[Job] = []
        #: a call of jobs is in the writing lane (the next waits for its end)
        self._running = False

    @property
    def busy(self) -> bool:
        """A job is queued, or a lane has a call queued, running, or waiting to report."""
        return bool(self._jobs) or not (self.writer.idle and self.hasher.idle and self.flusher.idle)

    @staticmethod
    def queued(upload: Upload | None) -> int:
        """Bytes of ``upload`` received and not yet both hashed and on disk."""
        if upload is None:
            return 0
        return upload.pendingBytes + max(upload.writing, upload.hashing)

    # -- a file's life --------------------------------------------------------------

    def open(self, upload: Upload, user: str, now: float) -> Deferred[int]:
        """Admit ``upload`` (its user's parallel uploads and quota) and open its
        partial file, in the next call of jobs (:meth:`flush`); the result is
        the offset to receive from."""
        job = Job(upload)
        job.opening = (user, now)
        opened: Deferred[tuple[Reservation, PartialFile]] = Deferred()
        job.whenOpened = opened
        upload.job = job
        self._jobs.append(job)
        return opened.addCallback(self._opened, upload)

    def flush(self) -> None:
        """Hand the queued jobs to the writing lane as one call, unless a call
        of jobs is running: its end hands over what queued meanwhile. The
        wire class calls this once it has handled what a read brought."""
        if self._running or not self._jobs:
            return
        jobs, self._jobs = self._jobs[: self.groupMax], self._jobs[self.groupMax :]
        for job in jobs:
            job.upload.job = None  # handed over: an F from now on makes a job of its own
        self._running = True
        d = self.writer.run(_runJobs, self.quotas, self.store, jobs)
        d.addCallback(self._ran, jobs)
        d.addErrback(self.owner.bug)

    def _ran(self, _: None, jobs: list[Job]) -> None:
        self._running = False
        with self.owner.together():
            for job in jobs:
                if job.whenOpened is not None:
                    _fire(job.whenOpened, job.opened)
                if job.whenStored is not None:
                    _fire(job.whenStored, job.stored)
        self.flush()

    def _opened(self, opened: tuple[Reservation, PartialFile], upload: Upload) -> int:
        upload.reservation, upload.partial = opened
        upload.offset = upload.partial.offset
        # A pipelining client's data may have come before the open ended.
        upload.received += upload.offset
        upload.receiving = not (upload.abandoned or upload.finishing)
        if upload.receiving and upload.pendingBytes >= self.writeThreshold:
            self._batch(upload)
        return upload.offset

    def add(self, upload: Upload, piece: bytes | memoryview) -> None:
        """Queue a piece of ``upload``'s data (the caller checked its size)."""
        n = len(piece)
        upload.received += n
        if n >= self.gatherBelow:
            upload.pending.append(piece)
            upload.gather = None
        elif n:
            gather = upload.gather
            if gather is None:
                gather = upload.gather = bytearray()
                upload.pending.append(gather)
            gather += piece
            if len(gather) >= self.gatherSize:
                upload.gather = None
        upload.pendingBytes += n
        if (
            upload.receiving  # else not open yet (pipelined): batched once it is
            and upload.pendingBytes >= self.writeThreshold
            and (upload.pendingBytes >= self.batchSize or upload.writing == upload.hashing == 0)
        ):
            self._batch(upload)

    def finish(self, upload: Upload, sha256: str) -> Deferred[str]:
        """The last data and the client's digest go to the lanes (or, for a
        file none of whose data went yet, to a job: :meth:`flush`); the file
        is checked, synced and renamed into place. The result is its digest."""
        upload.receiving = False
        upload.finishing = True
        if not upload.pipelined:
            # Everything is still here: a job writes, hashes and checks it and
            # makes it durable with the other files of its call; with its open
            # when that is still queued (its only hop, then).
            chunks, n = upload.pending, upload.pendingBytes
            upload.pending, upload.pendingBytes, upload.gather = [], 0, None
            upload.writing += n
            job = upload.job
            if job is None:
                job = Job(upload)
                self._jobs.append(job)
            d: Deferred[str] = Deferred()
            job.sha256, job.chunks, job.whenStored = sha256, chunks, d
        else:
            partial = upload.partial
            assert partial is not None
            if upload.pendingBytes:
                self._batch(upload)
            # The data is flushed to disk while its last batches are hashed;
            # once both are done and no early flush is running any more, the
            # digest is checked and the file renamed into place.
            hashed = self.hasher.run(_nothing)
            flushed = self.flusher.run(_nothing)
            synced = self.writer.run(partial.sync)
            d = (
                synced.addCallback(lambda _: hashed)
                .addCallback(lambda _: flushed)
                .addCallback(self._place, upload, sha256)
            )
        return d.addBoth(_settled, upload)

    def _place(self, _: None, upload: Upload, sha256: str) -> Deferred[str]:
        if upload.abandoned:
            raise _ended(upload)
        return self.writer.run(_finish, self.quotas, upload, sha256, True)

    def release(self, upload: Upload, keep: bool) -> None:
        """End ``upload`` without storing it: give back its place among its
        user's uploads, and close its partial file, keeping its data (and what
        was received but not yet written) for a resume, or removing it."""
        chunks = upload.pending if keep else []
        upload.pending, upload.pendingBytes, upload.gather = [], 0, None
        upload.receiving = False
        upload.abandoned = True
        if upload.reservation is not None:
            self.quotas.release(upload.reservation)
        partial = upload.partial
        if partial is None:
            return
        d = self.writer.run(_keep, partial, chunks) if keep else self.writer.run(partial.discard)
        d.addErrback(self.owner.bug)

    # -- batches --------------------------------------------------------------------

    def _batch(self, upload: Upload) -> None:
        """Hand the pending data to both lanes as one batch."""
        batch, n = upload.pending, upload.pendingBytes
        upload.pending, upload.pendingBytes, upload.gather = [], 0, None
        upload.writing += n
        upload.hashing += n
        upload.pipelined = True
        partial = upload.partial
        assert partial is not None
        d = self.writer.run(partial.writeData, batch)
        d.addCallbacks(self._written, self._writeFailed, (upload, n), {}, (upload, n))
        d.addErrback(self.owner.bug)
        h = self.hasher.run(partial.hashData, batch)
        h.addCallback(self._hashed, upload, n)
        h.addErrback(self.owner.bug)

    def _written(self, _: None, upload: Upload, n: int) -> None:
        upload.writing -= n
        upload.unflushed += n
        # After F the final sync does it.
        if upload.unflushed >= self.flushStep and not upload.flushing and upload.receiving:
            assert upload.partial is not None
            upload.flushing, upload.unflushed = True, 0
            d = self.flusher.run(upload.partial.flush)
            d.addCallback(_flushed, upload)
            d.addErrback(self.owner.bug)
        self._afterBatch(upload)

    def _hashed(self, _: None, upload: Upload, n: int) -> None:
        upload.hashing -= n
        self._afterBatch(upload)

    def _afterBatch(self, upload: Upload) -> None:
        if (
            upload.receiving
            and upload.pendingBytes >= self.writeThreshold
            and upload.writing == upload.hashing == 0
        ):
            self._batch(upload)
        self.owner.progressed()

    def _writeFailed(self, failure: Failure, upload: Upload, n: int) -> None:
        upload.writing -= n
        failure.trap(ProtocolError)
        self.owner.dataFailed(upload, failure.value)  # type: ignore[arg-type]
        self.owner.progressed()


def _settled(result: T, upload: Upload) -> T:
    """A finish ended, stored or not: nothing of the file is being written any more."""
    upload.writing = 0
    return result


def _flushed(_: None, upload: Upload) -> None:
    upload.flushing = False


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


def _ended(upload: Upload) -> ProtocolError:
    """The refusal of a file given up (released) before it could be stored."""
    return ProtocolError("internal", f"{upload.name}: upload ended", fatal=False)


def _runJobs(quotas: Quotas, store: UploadStore, jobs: list[Job]) -> None:
    """In the worker: each job's open (:func:`_begin`), then its data, hashed
    and written, and its size and digest checked; then the files that passed
    made durable together (:func:`~netproto.upload.store.commitGroup`) and
    charged to their users. Every outcome is left in its job, failures
    included: one file's refusal is no other file's. A file given up
    meanwhile (``abandoned``) is not opened, written or committed."""
    staged: list[tuple[Job, PartialFile, Reservation]] = []
    for job in jobs:
        upload = job.upload
        partial, reservation = upload.partial, upload.reservation
        try:
            if job.opening is not None:
                if upload.abandoned:
                    raise _ended(upload)
                reservation, partial = job.opened = _begin(
                    quotas, store, job.opening[0], upload, job.opening[1]
                )
            if job.sha256 is not None:
                assert partial is not None
                assert reservation is not None
                if upload.abandoned:
                    raise _ended(upload)
                partial.write(job.chunks)
                job.stored = partial.verify(job.sha256)
                staged.append((job, partial, reservation))
        except BaseException:
            failure = Failure()
            if job.opening is not None and job.opened is None:
                job.opened = failure
            job.stored = failure
    live = []
    for job, partial, reservation in staged:
        if job.upload.abandoned:
            job.stored = Failure(_ended(job.upload))
        else:
            live.append((job, partial, reservation))
    if not live:
        return
    try:
        results = commitGroup([(partial, job.upload.overwrite) for job, partial, _ in live])
    except BaseException:
        failure = Failure()
        for job, _, _ in live:
            job.stored = failure
        return
    for (job, _, reservation), error in zip(live, results, strict=True):
        if error is None:
            quotas.commit(reservation)
        else:
            job.stored = Failure(error)


def _fire(d: Deferred[T], result: T | Failure | None) -> None:
    if isinstance(result, Failure):
        d.errback(result)
    else:
        d.callback(result)  # type: ignore[arg-type]


def _keep(partial: PartialFile, chunks: list[Buffer]) -> None:
    """In the worker: write what was received, then keep the partial file for a
    resume (its hash is rebuilt from the file when it is resumed)."""
    with contextlib.suppress(ProtocolError):  # the data is broken: keep() removes it
        partial.writeData(chunks)
    partial.keep()


def _nothing() -> None:
    """A lane call that only marks the point where every call before it is done."""
