"""The upload service's factory: the store, the worker threads and the expiry sweep."""

from __future__ import annotations

from typing import Any, Final

from twisted.internet import task, threads
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from netproto.framing import FramedFactory
from netproto.services import ServerContext, ServiceError
from netproto.upload.protocol import Executor, UploadProtocol
from netproto.upload.store import UploadStore

log = Logger()

#: The sweep for expired partial files runs every quarter of the resume TTL,
#: but not more often than this (it walks the whole upload tree) ...
MIN_SWEEP_INTERVAL: Final = 60.0
#: ... nor less often than this.
MAX_SWEEP_INTERVAL: Final = 3600.0


def threadExecutor(reactor: Any) -> Executor:
    """Run blocking store calls in the reactor's thread pool (bounded; stopped
    with the reactor). A reactor without threads (a test's fake one) runs
    them at once instead."""
    if not hasattr(reactor, "getThreadPool"):
        return maybeDeferred

    def execute(function: Any, *args: Any) -> Deferred[Any]:
        return threads.deferToThreadPool(reactor, reactor.getThreadPool(), function, *args)

    return execute


class UploadFactory(FramedFactory):
    """Shares the store and the options between the upload connections.

    :ivar store: the upload directory.
    :ivar executor: runs a blocking call off the reactor thread, returning a Deferred.
    :ivar maxSize: the ``--upload-max-size`` (0: no limit).
    """

    protocol = UploadProtocol

    def __init__(
        self,
        context: ServerContext,
        store: UploadStore,
        executor: Executor,
        maxSize: int = 0,
    ) -> None:
        super().__init__(context)
        self.store = store
        self.executor = executor
        self.maxSize = maxSize
        self._sweeper: task.LoopingCall | None = None

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
        d = self.executor(self.store.sweep, self.context.reactor.seconds())

        def swept(removed: int) -> None:
            if removed:
                log.info("upload: removed {n} expired partial uploads", n=removed)

        def failed(f: Failure) -> None:
            log.failure("upload: the expiry sweep failed", f)

        return d.addCallbacks(swept, failed)


def makeFactory(context: ServerContext) -> UploadFactory:
    """The upload service (``builder`` of :mod:`netproto.upload.plugin`)."""
    options = context.options
    try:
        store = UploadStore(
            context.uploadDir,
            resumeTTL=float(options.get("upload-resume-ttl", 86400.0)),
            minFree=int(options.get("upload-min-free", 64 * 1024 * 1024)),
        )
    except OSError as e:
        raise ServiceError(f"upload directory {context.uploadDir}: {e.strerror}") from None
    log.info("upload: files land in {dir}", dir=context.uploadDir)
    return UploadFactory(
        context,
        store,
        threadExecutor(context.reactor),
        maxSize=int(options.get("upload-max-size", 0)),
    )
