"""Ordered blocking calls off the reactor thread: the upload service's lanes.

The disk is the blocking library that forces threads on the upload service.
A :class:`Lane` runs the calls given to it one at a time, in order, in a
worker thread, and hands each result back to the reactor thread. A
connection has two: one writes (and opens, syncs, renames), one hashes, so on
two cores the SHA-256 of a big file runs beside its writes instead of after
them (hashlib and ``os.write`` release the GIL on big buffers).

Unlike one thread-pool call per blocking call, a lane keeps its worker thread
while it has queued calls: the next call starts in the thread at once
instead of waiting for the reactor to hear about the last one. After
:attr:`Lane.burst` calls in a row it gives the thread back to the pool and
asks again from the reactor, so a long upload never keeps other connections
from the pool's threads.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Final, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorCore
from twisted.logger import Logger
from twisted.python.failure import Failure

T = TypeVar("T")

#: Starts ``function(*args)`` in a worker thread (``reactor.callInThread``);
#: what it returns is ignored (results come back through a :data:`Reporter`).
Executor = Callable[..., object]
#: Calls ``function(*args)`` on the reactor thread, from any thread
#: (``reactor.callFromThread``).
Reporter = Callable[..., object]

#: Calls a lane runs in a row before it gives its thread back to the pool.
BURST: Final = 16
#: Threads of a :class:`WorkerThreads`: a big upload keeps three busy at
#: most (writing, hashing, flushing), a small file one.
THREADS: Final = 8

log = Logger()


def callNow(function: Callable[..., object], *args: object) -> None:
    """The :data:`Executor` and :data:`Reporter` of a reactor without
    threads (tests, a fake reactor): call at once, on the reactor thread."""
    function(*args)


class Lane:
    """Calls run in order, one at a time, in a worker thread; each one's
    result comes back on the reactor thread as its Deferred firing.

    :param executor: starts a worker-thread job (the lane's drain loop).
    :param report: calls a function on the reactor thread from the worker.
    """

    burst: int = BURST

    def __init__(self, executor: Executor, report: Reporter) -> None:
        self._executor = executor
        self._report = report
        self._lock = threading.Lock()
        self._queue: deque[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = deque()
        self._draining = False
        #: calls asked for whose Deferred has not fired yet (reactor thread only)
        self._outstanding = 0

    @property
    def idle(self) -> bool:
        """No call is queued, running, or waiting to report its result."""
        return self._outstanding == 0

    def run(self, function: Callable[..., T], *args: Any) -> Deferred[T]:
        """Queue ``function(*args)`` after every call queued before it."""
        d: Deferred[T] = Deferred()
        self._outstanding += 1
        with self._lock:
            self._queue.append((function, args, d))
            if self._draining:
                return d
            self._draining = True
        self._start()
        return d

    def _start(self) -> None:
        self._executor(self._drain)

    def _drain(self) -> None:
        """In a worker thread: run queued calls until none is left or the
        burst is used up (then the reactor starts a new drain)."""
        for _ in range(self.burst):
            with self._lock:
                if not self._queue:
                    self._draining = False
                    return
                function, args, d = self._queue.popleft()
            try:
                result = function(*args)
            except BaseException:
                result = Failure()
            self._report(self._fire, d, result)
        self._report(self._start)

    def _fire(self, d: Deferred[Any], result: object) -> None:
        self._outstanding -= 1
        if isinstance(result, Failure):
            d.errback(result)
        else:
            d.callback(result)


class WorkerThreads:
    """The upload service's own small thread pool: the :data:`Executor` of its lanes.

    Why not the reactor's pool: Twisted's ``ThreadPool`` spends some tens of
    microseconds of Python per job on its coordination (a ``Team``, context
    and logging wrappers), in the worker thread, holding the GIL exactly when
    the reactor thread handles the job's result; at two jobs per small file
    that is a good part of a file's time. Here a job is a ``SimpleQueue``
    put and get. Keeping disk work apart also means a slow disk cannot take
    the threads the reactor's pool gives name resolution or password checks.

    The threads start at the first job and stop when the reactor shuts down
    (each after its current job; later jobs are dropped).
    """

    def __init__(self, reactor: IReactorCore, size: int = THREADS) -> None:
        self.size = size
        self._queue: queue.SimpleQueue[tuple[Callable[..., object], tuple[Any, ...]] | None] = (
            queue.SimpleQueue()
        )
        self._threads: list[threading.Thread] = []
        self._stopped = False
        reactor.addSystemEventTrigger("during", "shutdown", self.stop)

    def __call__(self, function: Callable[..., object], *args: Any) -> None:
        """Run ``function(*args)`` in one of the threads."""
        if self._stopped:
            return
        if not self._threads:
            for i in range(self.size):
                thread = threading.Thread(target=self._work, name=f"netproto-upload-{i}")
                thread.daemon = True
                thread.start()
                self._threads.append(thread)
        self._queue.put((function, args))

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            function, args = job
            try:
                function(*args)
            except BaseException:
                log.failure("upload: a worker thread job failed")

    def stop(self) -> None:
        """Let each thread finish its current job, then end it."""
        self._stopped = True
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()
        self._threads = []
