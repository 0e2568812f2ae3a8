"""The upload service's factory: the store, the worker threads and the expiry sweep."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Final

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from netproto.framing import FramedFactory
from netproto.services import ServerContext, ServiceError
from netproto.upload import plugin
from netproto.upload.protocol import UploadProtocol
from netproto.upload.quota import Ledger, Quotas
from netproto.upload.store import UploadStore
from netproto.upload.workers import Executor, Lane, Reporter, WorkerThreads, callNow

log = Logger()

#: The sweep for expired partial files runs every quarter of the resume TTL,
#: but not more often than this (it walks the whole upload tree) ...
MIN_SWEEP_INTERVAL: Final = 60.0
#: ... nor less often than this.
MAX_SWEEP_INTERVAL: Final = 3600.0


def threadExecutor(reactor: Any) -> tuple[Executor, Reporter]:
    """Run blocking store calls in the service's own worker threads
    (:class:`~netproto.upload.workers.WorkerThreads`: bounded, stopped with
    the reactor), their results reported with ``callFromThread``. A reactor
    without threads (a test's fake one) runs them at once instead."""
    if not hasattr(reactor, "callFromThread"):
        return callNow, callNow
    return WorkerThreads(reactor), reactor.callFromThread


class UploadFactory(FramedFactory):
    """Shares the store and the options between the upload connections.

    :ivar store: the upload directory.
    :ivar executor: starts a call in a worker thread (``reactor.callInThread``).
    :ivar report: calls a function on the reactor thread from a worker thread
        (``reactor.callFromThread``; :func:`~netproto.upload.workers.callNow`
        when the executor runs calls on the reactor thread itself).
    :ivar maxSize: the ``--upload-max-size`` (0: no limit).
    :ivar quotas: the per-user quotas and cap on parallel uploads (none by default).
    """

    protocol = UploadProtocol
    #: PROTOCOL.md section 6: listing, downloads and pipelined uploads.
    features = ("list", "get", "pipeline")

    def __init__(
        self,
        context: ServerContext,
        store: UploadStore,
        executor: Executor,
        *,
        maxSize: int = 0,
        report: Reporter = callNow,
        quotas: Quotas | None = None,
    ) -> None:
        super().__init__(context)
        self.store = store
        self.executor = executor
        self.report = report
        self.maxSize = maxSize
        self.quotas = Quotas() if quotas is None else quotas
        self._sweeper: task.LoopingCall | None = None
        self._sweepLane = Lane(executor, report)

    def startFactory(self) -> None:
        ttl = self.store.resumeTTL
        interval = min(max(ttl / 4, MIN_SWEEP_INTERVAL), MAX_SWEEP_INTERVAL)
        self._sweeper = task.LoopingCall(self._sweep)
        self._sweeper.clock = self.context.reactor
        self._sweeper.start(interval, now=True).addErrback(
            lambda f: log.failure("upload: the expiry sweep stopped", f)
        )

    def stopFactory(self) -> None:
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        self._sweeper = None

    def _sweep(self) -> Deferred[None]:
        self._sweepLane.run(self.quotas.reconcile, self.store.rootFD).addErrback(
            lambda f: log.failure("upload: the quota check against the disk failed", f)
        )
        d = self._sweepLane.run(self.store.sweep, self.context.reactor.seconds())

        def swept(removed: int) -> None:
            if removed:
                log.info("upload: removed {n} expired partial uploads", n=removed)

        def failed(f: Failure) -> None:
            log.failure("upload: the expiry sweep failed", f)

        return d.addCallbacks(swept, failed)


def uploadDirectory(context: ServerContext) -> Path:
    """Where uploads land: ``--upload-dir``, else ``DATA_DIR/uploads``."""
    given = context.options.get("upload-dir")
    return Path(given) if given else context.dataDir / "uploads"


def makeFactory(context: ServerContext) -> UploadFactory:
    """The upload service (``builder`` of :mod:`netproto.upload.plugin`)."""
    options = context.optionsOf(plugin.service)
    root = uploadDirectory(context)
    try:
        store = UploadStore(
            root,
            resumeTTL=float(options["upload-resume-ttl"]),
            minFree=int(options["upload-min-free"]),
        )
    except OSError as e:
        raise ServiceError(f"upload directory {root}: {e.strerror}") from None
    log.info("upload: files land in {dir}", dir=root)
    executor, report = threadExecutor(context.reactor)
    return UploadFactory(
        context,
        store,
        executor,
        maxSize=int(options["upload-max-size"]),
        report=report,
        quotas=makeQuotas(context),
    )


def makeQuotas(context: ServerContext) -> Quotas:
    """The quotas the options ask for; the index of stored files is opened
    (and summed) only when a quota on files or bytes is set."""
    options = context.optionsOf(plugin.service)
    maxFiles = int(options["upload-quota-files"])
    maxBytes = int(options["upload-quota-bytes"])
    ledger = None
    if maxFiles or maxBytes:
        root = uploadDirectory(context)
        try:
            ledger = Ledger(root)
        except (OSError, sqlite3.Error) as e:
            raise ServiceError(f"upload quota index in {root}: {e}") from None
    return Quotas(
        maxFiles=maxFiles,
        maxBytes=maxBytes,
        maxParallel=int(options["upload-max-per-user"]),
        ledger=ledger,
    )
