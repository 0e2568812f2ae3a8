"""The upload's pipelined data path: the lanes (writing, hashing, flushing),
their worker threads, flow control over both lanes, early flushes, and
replies sent at once."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as globalReactor
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactor
from twisted.python.failure import Failure

from netproto.runtime import ARENA_MAX, tuneAllocator
from netproto.upload.pipeline import Pipeline
from netproto.upload.protocol import UploadProtocol
from netproto.upload.store import PartialFile
from netproto.upload.workers import Lane, WorkerThreads, callNow
from tests.uploadkit import Harness, SmallDisk, StepExecutor, error, stored


def laneOf(job: tuple[Callable[..., Any], tuple[Any, ...]]) -> object:
    """The lane whose drain a held executor job is."""
    return getattr(job[0], "__self__", None)


def runLane(steps: StepExecutor, lane: object) -> int:
    """Run only ``lane``'s held jobs (until it has none); returns how many."""
    ran = 0
    while True:
        jobs = [j for j in steps.calls if laneOf(j) is lane]
        if not jobs:
            return ran
        steps.calls.remove(jobs[0])
        jobs[0][0](*jobs[0][1])
        ran += 1


# -- lanes -----------------------------------------------------------------------


def test_lane_runs_calls_in_order_with_one_job_per_burst() -> None:
    """Calls queued on a lane run in order in one executor job (no hop per
    call); after a burst the lane gives its thread back and asks for a new job."""
    steps = StepExecutor()
    lane = Lane(steps, callNow)
    lane.burst = 3
    seen: list[int] = []
    results: list[int] = []
    for i in range(7):
        lane.run(seen.append, i).addCallback(lambda _, n: results.append(n), i)
    assert len(steps.calls) == 1
    assert not lane.idle
    steps.runAll()
    assert seen == results == list(range(7))
    assert lane.idle


def test_lane_failure_reaches_its_deferred_only() -> None:
    """A call that raises fails its own Deferred; the next calls still run."""
    lane = Lane(callNow, callNow)

    def boom() -> None:
        raise OSError(errno.EIO, "disk")

    errors: list[BaseException] = []

    def caught(f: Failure) -> None:
        assert f.value is not None
        errors.append(f.value)

    lane.run(boom).addErrback(caught)
    answers: list[int] = []
    lane.run(lambda: 42).addCallback(answers.append)
    assert answers == [42]
    assert isinstance(errors[0], OSError)


def test_worker_threads_run_off_the_reactor_thread_and_stop() -> None:
    """Jobs run in the pool's own threads; stop() ends them, later jobs are dropped."""
    pool = WorkerThreads(MemoryReactor(), size=2)
    ran: list[str] = []
    done = threading.Event()

    def job() -> None:
        ran.append(threading.current_thread().name)
        done.set()

    pool(job)
    assert done.wait(5)
    assert ran[0].startswith("netproto-upload-")
    threads = list(pool._threads)
    pool.stop()
    assert not any(t.is_alive() for t in threads)
    pool(job)
    assert len(ran) == 1


@pytest_twisted.ensureDeferred
async def test_lane_reports_results_on_the_reactor_thread() -> None:
    """With real worker threads, a lane's call runs in one of them and its
    result comes back on the reactor thread."""
    pool = WorkerThreads(globalReactor, size=2)
    lane = Lane(pool, globalReactor.callFromThread)  # type: ignore[attr-defined]
    try:
        d: Deferred[str] = lane.run(lambda: threading.current_thread().name)
        worker = await d.addTimeout(5, globalReactor)
        assert worker.startswith("netproto-upload-")
        assert threading.current_thread() is threading.main_thread()
    finally:
        pool.stop()


# -- the pipelined protocol ----------------------------------------------------------


def test_big_file_is_hashed_and_written_in_separate_lanes_in_order(tmp_path: Path) -> None:
    """Data beyond a batch goes to the writing and the hashing lane; whatever
    order the two run in, the file is whole and its digest checked."""
    steps = StepExecutor()
    h = Harness(tmp_path, executor=steps)
    c = h.connect()
    data = os.urandom(3 * Pipeline.batchSize + 12345)
    c.put("big", len(data))
    steps.runAll()
    c.frames()
    c.data(data, chunk=200_000)
    proto = c.proto
    assert proto.upload is not None
    assert proto.upload.pipelined
    pipeline = proto.pipeline
    assert pipeline is not None
    # The hashing lane first, then the writing lane: each in its own order.
    runLane(steps, pipeline.hasher)
    runLane(steps, pipeline.writer)
    c.finish(data)
    steps.runAll()
    assert c.frames() == stored("big", data)
    assert (h.root / "big").read_bytes() == data


def test_lagging_hash_lane_pauses_the_client(tmp_path: Path) -> None:
    """Memory stays bounded by the slower lane: with every write done but the
    hashing behind, reading stays paused until the hashes catch up."""
    steps = StepExecutor()
    h = Harness(tmp_path, executor=steps)
    c = h.connect()
    data = os.urandom(UploadProtocol.highWater + 4 * Pipeline.batchSize)
    c.put("f", len(data))
    steps.runAll()
    c.frames()
    c.data(data, chunk=256 * 1024)
    assert c.paused
    pipeline = c.proto.pipeline
    assert pipeline is not None
    runLane(steps, pipeline.writer)
    assert c.paused
    runLane(steps, pipeline.hasher)
    assert not c.paused
    c.finish(data)
    steps.runAll()
    assert c.frames() == stored("f", data)


def test_wrong_digest_after_pipelining_stores_nothing(tmp_path: Path) -> None:
    """The digest is checked after the data is synced and before the rename:
    a mismatch on a pipelined file leaves nothing behind."""
    h = Harness(tmp_path)
    c = h.connect()
    data = os.urandom(2 * Pipeline.batchSize)
    c.put("f", len(data))
    c.frames()
    c.data(data)
    c.finish("0" * 64)
    assert error("checksum-mismatch")(c.frames())
    assert h.files() == set()


def test_data_is_flushed_while_it_arrives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every flushStep bytes written, the flushing lane flushes them (so the
    final fsync has little left); the file is stored as before."""
    flushes: list[int] = []
    original = PartialFile.flush

    def counted(self: PartialFile) -> None:
        flushes.append(self.written)
        original(self)

    monkeypatch.setattr(PartialFile, "flush", counted)
    monkeypatch.setattr(Pipeline, "flushStep", 1024 * 1024)
    h = Harness(tmp_path)
    c = h.connect()
    data = os.urandom(5 * 1024 * 1024)
    assert c.upload("f", data) == stored("f", data)
    assert len(flushes) >= 3


def test_failed_early_flush_fails_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loggedErrors: list[dict[str, Any]]
) -> None:
    """A write-back error seen by an early flush is not lost (the kernel
    reports it once): the file fails, nothing appears under its name."""

    def failing(self: PartialFile) -> None:
        self.flushError = OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(PartialFile, "flush", failing)
    monkeypatch.setattr(Pipeline, "flushStep", 1024 * 1024)
    h = Harness(tmp_path)
    c = h.connect()
    data = os.urandom(3 * 1024 * 1024)
    assert error("internal")(c.upload("f", data))
    assert h.files() == set()
    loggedErrors.clear()  # the I/O error is logged for the operator


def test_no_space_mid_pipeline_leaves_nothing(tmp_path: Path) -> None:
    """ENOSPC in the writing lane while the hashing lane is ahead: E no-space,
    the partial data removed, and the connection usable."""
    disk = SmallDisk(Pipeline.batchSize)
    h = Harness(tmp_path, writev=disk.writev)
    c = h.connect()
    data = os.urandom(4 * Pipeline.batchSize)
    assert error("no-space")(c.upload("f", data))
    assert h.files() == set()
    disk.free = 10**9
    assert c.upload("g", b"fits") == stored("g", b"fits")


# -- replies sent at once ------------------------------------------------------------


def test_allocator_tuning_respects_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """An operator's own MALLOC_* settings win: the tuning is then not applied."""
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert tuneAllocator() is False


#: Six threads, alive together, each allocating (above Python's small
#: object sizes, so from malloc); then glibc's per-arena statistics.
ARENAS_SCRIPT = """
import ctypes, sys, threading
from netproto.runtime import tuneAllocator
tuneAllocator() if sys.argv[1] == "tuned" else None
allocated, done = threading.Barrier(7), threading.Event()
def allocate():
    held = bytes(100_000)
    allocated.wait()
    done.wait()
threads = [threading.Thread(target=allocate) for _ in range(6)]
for t in threads:
    t.start()
allocated.wait()
ctypes.CDLL(None).malloc_stats()
done.set()
"""


def arenasUsed(mode: str, environ: dict[str, str] | None = None) -> int:
    """The malloc arenas a process made for six threads, tuned or not."""
    result = subprocess.run(
        [sys.executable, "-c", ARENAS_SCRIPT, mode],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **(environ or {})},
    )
    return result.stderr.count("Arena ")


def test_the_tuned_allocator_keeps_two_arenas_however_many_threads() -> None:
    """glibc gives each new thread an arena of its own (each then keeps what
    it freed): tuned, the six threads share the second of two; the
    operator's MALLOC_ARENA_MAX still wins."""
    assert arenasUsed("untuned") > ARENA_MAX
    assert arenasUsed("tuned") == ARENA_MAX
    assert arenasUsed("tuned", {"MALLOC_ARENA_MAX": "4"}) == 4
