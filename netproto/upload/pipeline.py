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
while the reactor receives the next batch; a small file's data never goes to
the hashing lane: one call writes, hashes, checks, syncs and renames it.

Data comes in as views of the transport's reads (``D`` is a streamed frame
type), is batched (about :attr:`Pipeline.batchSize` bytes) and handed to the
lanes as it is, without copies. :meth:`Pipeline.queued` says how much it
holds, for the wire class's flow control.
"""

from __future__ import annotations

import contextlib
from collections import deque
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


class PipelineOwner(Protocol):
    """What a :class:`Pipeline` tells the wire class."""

    def dataFailed(self, upload: Upload, error: ProtocolError) -> None:
        """Writing ``upload``'s data failed (``no-space``, an I/O error)."""

    def progressed(self) -> None:
        """What the pipeline holds (:meth:`Pipeline.queued`) went down."""

    def bug(self, failure: Failure) -> None:
        """A call failed with something other than a :class:`ProtocolError`."""


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
    #: Most files one group commit makes durable: a client pipelining faster
    #: than the disk still hears about its files every so many.
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
        #: small files whose data and checks are queued in the writing lane
        self._staging = 0
        #: small files checked and waiting for their group commit, with their
        #: digest and the Deferred of their finish
        self._group: list[tuple[Upload, str, Deferred[str]]] = []

    @property
    def busy(self) -> bool:
        """A lane has a call queued, running, or waiting to report."""
        return not (self.writer.idle and self.hasher.idle and self.flusher.idle)

    @staticmethod
    def queued(upload: Upload | None) -> int:
        """Bytes of ``upload`` received and not yet both hashed and on disk."""
        if upload is None:
            return 0
        return upload.pendingBytes + max(upload.writing, upload.hashing)

    # -- a file's life --------------------------------------------------------------

    def open(self, upload: Upload, user: str, now: float) -> Deferred[int]:
        """Admit ``upload`` (its user's parallel uploads and quota) and open its
        partial file; the result is the offset to receive from."""
        d = self.writer.run(_begin, self.quotas, self.store, user, upload, now)
        return d.addCallback(self._opened, upload)

    def _opened(self, opened: tuple[Reservation, PartialFile], upload: Upload) -> int:
        upload.reservation, upload.partial = opened
        upload.offset = upload.partial.offset
        # A pipelining client's data may have come before the open ended.
        upload.received += upload.offset
        upload.receiving = not upload.abandoned
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
        """The last data and the client's digest go to the lanes; the file is
        checked, synced and renamed into place. The result is its digest."""
        upload.receiving = False
        partial = upload.partial
        assert partial is not None
        if not upload.pipelined:
            # Everything is still here: one call writes, hashes and checks it
            # (a small file's only hop after its P), then it joins a group
            # commit with the files finishing right after it.
            chunks, n = upload.pending, upload.pendingBytes
            upload.pending, upload.pendingBytes, upload.gather = [], 0, None
            upload.writing += n
            d: Deferred[str] = Deferred()
            self._staging += 1
            staged = self.writer.run(_stage, upload, chunks, sha256)
            staged.addCallbacks(self._staged, self._stageFailed, (upload, d), {}, (d,))
            staged.addErrback(self.owner.bug)
        else:
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

    # -- group commit ---------------------------------------------------------------

    def _staged(self, digest: str, upload: Upload, d: Deferred[str]) -> None:
        self._staging -= 1
        self._group.append((upload, digest, d))
        self._commitWhenDue()

    def _stageFailed(self, failure: Failure, d: Deferred[str]) -> None:
        self._staging -= 1
        d.errback(failure)
        self._commitWhenDue()

    def _commitWhenDue(self) -> None:
        """Commit the staged files once no more are being staged right behind
        them (the lane has caught up with the client), or once the group is
        :attr:`groupMax` files: one flush of the disk for all of them."""
        if self._group and (self._staging == 0 or len(self._group) >= self.groupMax):
            group, self._group = self._group, []
            d = self.writer.run(_commitGroup, self.quotas, [upload for upload, _, _ in group])
            d.addCallback(self._committed, group)
            d.addErrback(self.owner.bug)

    @staticmethod
    def _committed(
        results: list[ProtocolError | None], group: list[tuple[Upload, str, Deferred[str]]]
    ) -> None:
        for (_, digest, d), error in zip(group, results, strict=True):
            if error is None:
                d.callback(digest)
            else:
                d.errback(error)

    def _place(self, _: None, upload: Upload, sha256: str) -> Deferred[str]:
        if upload.abandoned:
            raise ProtocolError("internal", f"{upload.name}: upload ended", fatal=False)
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


def _stage(upload: Upload, chunks: list[Buffer], sha256: str) -> str:
    """In the worker: a small file's data, hashed and written, then its size
    and digest checked; it is made durable by :func:`_commitGroup`."""
    assert upload.partial is not None
    upload.partial.write(chunks)
    return upload.partial.verify(sha256)


def _commitGroup(quotas: Quotas, uploads: list[Upload]) -> list[ProtocolError | None]:
    """In the worker: :func:`~netproto.upload.store.commitGroup`, then each
    stored file charged to its user."""
    files = []
    for upload in uploads:
        assert upload.partial is not None
        files.append((upload.partial, upload.overwrite))
    results = commitGroup(files)
    for upload, error in zip(uploads, results, strict=True):
        if error is None:
            assert upload.reservation is not None
            quotas.commit(upload.reservation)
    return results


def _keep(partial: PartialFile, chunks: list[Buffer]) -> None:
    """In the worker: write what was received, then keep the partial file for a
    resume (its hash is rebuilt from the file when it is resumed)."""
    with contextlib.suppress(ProtocolError):  # the data is broken: keep() removes it
        partial.writeData(chunks)
    partial.keep()


def _nothing() -> None:
    """A lane call that only marks the point where every call before it is done."""
