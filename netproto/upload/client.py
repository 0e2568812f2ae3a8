"""``netproto upload``: send files and directories to the upload service, verified.

Each file is read once: the bytes are hashed as they are sent, and the
server's ``K stored`` must name the same SHA-256. Sending is a streaming
producer registered on the transport, so a slow server or network pauses the
reading instead of filling memory. With ``--resume`` the server may answer
``K {"offset": N}``: the first N bytes are then read and hashed (in a thread)
but not sent.

Output: one line per stored file on stdout (``SHA256  SIZE  NAME``, like
``sha256sum`` with the size), a progress bar on stderr when stderr is a
terminal and a file takes more than a moment, and one line per failed file
on stderr; the exit status is 1 if any file failed.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, Final

from twisted.internet import threads
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer
from zope.interface import implementer

from netproto.client.connection import clientEndpoint, credentials
from netproto.client.framed import (
    ClientError,
    ConnectionClosed,
    FramedClient,
    ServerError,
    connectFramed,
)
from netproto.errors import ProtocolError
from netproto.upload import digests
from netproto.upload.names import splitName
from netproto.upload.pipelined import Flight, sendAll, sha256Of
from netproto.upload.remote import Entry, addTransferArguments, complain, listRemote, say

DEFAULT_PORT: Final = 8002
#: Seconds a file must take before its progress bar appears.
PROGRESS_DELAY: Final = float(os.environ.get("NETPROTO_PROGRESS_DELAY", "0.5"))
#: D frames sent per reactor turn at most, so the reactor stays responsive
#: even when the transport never asks to pause.
FRAMES_PER_TURN: Final = 16


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths", nargs="+", metavar="PATH", help="files and directories (sent recursively)"
    )
    parser.add_argument(
        "--as",
        dest="remoteName",
        metavar="NAME",
        default=None,
        help="name on the server (for a directory: the name of its top); one PATH only",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace files that exist on the server"
    )
    parser.add_argument(
        "--sync",
        action="store_true",
        help="send only files whose size or SHA-256 differ from the server's (implies "
        "--overwrite for those); say what was skipped",
    )
    addTransferArguments(parser, "upload", DEFAULT_PORT)


@dataclass
class Job:
    """One local file and the name it gets on the server."""

    path: str
    name: str


def collect(paths: list[str], remoteName: str | None) -> tuple[list[Job], list[str]]:
    """The files to send (directories walked, relative names kept) and the
    paths that cannot be sent, with the reason."""
    if remoteName is not None and len(paths) != 1:
        raise ClientError("--as takes exactly one PATH")
    jobs: list[Job] = []
    problems: list[str] = []
    for path in paths:
        top = remoteName or os.path.basename(os.path.abspath(path).rstrip("/"))
        try:
            info = os.stat(path)
        except OSError as e:
            problems.append(f"{path}: {e.strerror}")
            continue
        if stat.S_ISDIR(info.st_mode):
            jobs.extend(_walk(path, top, problems))
        elif stat.S_ISREG(info.st_mode):
            jobs.append(Job(path, top))
        else:
            problems.append(f"{path}: not a regular file or a directory")
    for job in jobs:
        try:
            splitName(job.name)
        except ProtocolError as e:
            problems.append(f"{job.path}: cannot be named {job.name!r} on the server: {e.message}")
    bad = {p.split(": ", 1)[0] for p in problems}
    return [j for j in jobs if j.path not in bad], problems


def _walk(root: str, top: str, problems: list[str]) -> Iterator[Job]:
    def onError(e: OSError) -> None:
        problems.append(f"{e.filename}: {e.strerror}")

    for dirPath, dirNames, fileNames in os.walk(root, onerror=onError):
        dirNames.sort()
        relative = os.path.relpath(dirPath, root)
        prefix = top if relative == "." else f"{top}/{relative.replace(os.sep, '/')}"
        for fileName in sorted(fileNames):
            path = os.path.join(dirPath, fileName)
            try:
                regular = stat.S_ISREG(os.stat(path).st_mode)
            except OSError as e:
                problems.append(f"{path}: {e.strerror}")
                continue
            if regular:
                yield Job(path, f"{prefix}/{fileName}")
            else:
                problems.append(f"{path}: not a regular file; skipped")


def prepare(args: argparse.Namespace) -> None:
    """Before the reactor: credentials (may prompt) and the list of files."""
    args.auth = credentials(args)
    args.jobs, args.problems = collect(args.paths, args.remoteName)


@implementer(IPushProducer)
class FileProducer:
    """Sends ``remaining`` bytes of ``file`` as ``D`` frames, hashing them,
    paused and resumed by the transport it is registered on."""

    def __init__(
        self,
        reactor: Any,
        client: FramedClient,
        *,
        file: IO[bytes],
        hasher: Any,
        remaining: int,
        progress: Any,
    ) -> None:
        self.reactor = reactor
        self.client = client
        self.file = file
        self.hasher = hasher
        self.remaining = remaining
        self.progress = progress
        self.chunk = max(1, client.maxFrame - 1)
        self.paused = False
        self.stopped = False
        self.done: Deferred[None] = Deferred()
        self._scheduled: Any = None

    def start(self) -> Deferred[None]:
        consumer: IConsumer = self.client.transport  # type: ignore[assignment]
        consumer.registerProducer(self, True)
        self._schedule()
        return self.done

    def _schedule(self) -> None:
        if self._scheduled is None and not self.stopped:
            self._scheduled = self.reactor.callLater(0, self._pump)

    def _pump(self) -> None:
        self._scheduled = None
        try:
            for _ in range(FRAMES_PER_TURN):
                if self.paused or self.stopped:
                    return
                if not self.remaining:
                    self._finish(None)
                    return
                data = self.file.read(min(self.chunk, self.remaining))
                if not data:
                    raise ClientError("the file got shorter while it was sent")
                self.hasher.update(data)
                self.remaining -= len(data)
                self.client.send(b"D", data)
                self.progress.update(len(data))
        except (OSError, ClientError) as e:
            self._finish(e)
            return
        self._schedule()

    def _finish(self, error: Exception | None) -> None:
        if self.stopped:
            return
        self.stopped = True
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        transport = self.client.transport
        if transport is not None:
            transport.unregisterProducer()  # type: ignore[attr-defined]
        if error is None:
            self.done.callback(None)
        else:
            self.done.errback(error)

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._schedule()

    def stopProducing(self) -> None:
        self._finish(ConnectionClosed("the connection was closed"))

    def cancel(self) -> None:
        """Stop sending (the server answered early); ``done`` fires normally."""
        self._finish(None)


class _NoProgress:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def progressBar(name: str, size: int, offset: int, quiet: bool) -> Any:
    """A tqdm bar on stderr, shown only on a terminal and once the file has
    taken :data:`PROGRESS_DELAY` seconds."""
    if quiet or not sys.stderr.isatty():
        return _NoProgress()
    from tqdm import tqdm

    return tqdm(
        total=size,
        initial=offset,
        desc=name if len(name) <= 30 else "..." + name[-27:],
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        delay=PROGRESS_DELAY,
        leave=False,
        dynamic_ncols=True,
    )


def _hashPrefix(file: IO[bytes], length: int, hasher: Any) -> None:
    """Hash the part the server already has; the file is then read from there."""
    if digests.hashPrefix(file.fileno(), length, hasher) < length:
        raise ClientError("the file is shorter than the part the server has")
    file.seek(length)


async def sendFile(
    reactor: Any, client: FramedClient, job: Job, args: argparse.Namespace
) -> tuple[int, str]:
    """Upload one file; returns its size and SHA-256 as the server confirmed them.

    :raises ServerError: the server refused or failed this file (the
        connection stays usable unless the error is fatal).
    """
    # Opening a local file is quick; the reading is what the producer spreads out.
    with open(job.path, "rb") as file:  # noqa: ASYNC230
        size = os.fstat(file.fileno()).st_size
        client.sendJSON(
            b"P",
            {"name": job.name, "size": size, "overwrite": args.overwrite, "resume": args.resume},
        )
        ready = await client.receiveJSON(b"K")
        offset = ready.get("offset")
        if not isinstance(offset, int) or not 0 <= offset <= size:
            raise ClientError(f"protocol error: the server asked for offset {offset!r}")
        hasher = hashlib.sha256()
        if offset:
            await threads.deferToThreadPool(
                reactor, reactor.getThreadPool(), _hashPrefix, file, offset, hasher
            )
        # The answer to this file may come early: an E while data flows.
        answer = client.receive()
        progress = progressBar(job.name, size, offset, args.quiet)
        producer = FileProducer(
            reactor, client, file=file, hasher=hasher, remaining=size - offset, progress=progress
        )
        sent = producer.start()
        answer.addBoth(_stopping, producer)
        try:
            await sent
        except (OSError, ClientError):
            # A local read failed: end the file on the server (a wrong F is
            # answered size-mismatch and nothing is stored), then report it.
            if client.connected and not answer.called:
                client.sendJSON(b"F", {"sha256": "0" * 64})
                with contextlib.suppress(ClientError):
                    await answer
            raise
        finally:
            progress.close()
        digest = hasher.hexdigest()
        if not answer.called:
            client.sendJSON(b"F", {"sha256": digest})
        kind, payload = await answer
    stored = _decodeStored(kind, payload)
    if producer.remaining or stored.get("sha256") != digest or stored.get("size") != size:
        raise ClientError(
            f"the server stored something else: {stored} (sent {size} bytes, {digest})"
        )
    return size, digest


def _stopping(result: object, producer: FileProducer) -> object:
    """The server answered: whatever is left of the file is not to be sent."""
    producer.cancel()
    return result


def _decodeStored(kind: bytes, payload: bytes) -> dict[str, Any]:
    from netproto.codec import decodeJSON

    if kind != b"K":
        raise ClientError(f"protocol error: expected a 'K' frame, got {kind!r}")
    try:
        return decodeJSON(payload)
    except ProtocolError:
        raise ClientError("protocol error: 'K' frame payload is not JSON") from None


async def sendPipelined(
    reactor: Any, client: FramedClient, job: Job, args: argparse.Namespace, flight: Flight
) -> None:
    """One file's P, D frames and F without waiting for answers (the
    ``sendOne`` of :func:`netproto.upload.pipelined.sendAll`)."""
    with open(job.path, "rb") as file:  # noqa: ASYNC230  (an OSError here: no P sent)
        size = os.fstat(file.fileno()).st_size
        client.sendJSON(
            b"P", {"name": job.name, "size": size, "overwrite": args.overwrite, "resume": False}
        )
        hasher = hashlib.sha256()
        progress = progressBar(job.name, size, 0, args.quiet)
        producer = FileProducer(
            reactor, client, file=file, hasher=hasher, remaining=size, progress=progress
        )
        flight.producer = producer
        try:
            await producer.start()
        except (OSError, ClientError) as e:
            flight.error = e  # the server answers the wrong F with an error
        finally:
            progress.close()
            flight.producer = None
    digest = "0" * 64 if flight.error or producer.remaining else hasher.hexdigest()
    if client.connected:
        client.sendJSON(b"F", {"sha256": digest})
    flight.sent.callback((size, digest))


async def skipUnchanged(reactor: Any, client: FramedClient, jobs: list[Job]) -> list[Job]:
    """``--sync``: the jobs whose file the server does not already hold with
    the same size and SHA-256 (one recursive ``L`` per top name; local files
    hashed in a thread only when the server knows a digest of their size)."""
    if "list" not in (client.hello.features if client.hello else ()):
        raise ClientError("--sync needs a server that lists its files (feature list)")
    remote: dict[str, Entry] = {}
    for top in sorted({job.name.split("/", 1)[0] for job in jobs}):
        try:
            entries = await listRemote(client, top, True)
        except ServerError as e:
            if e.code == "not-found":
                continue
            raise
        remote.update((e.name, e) for e in entries if not e.isDir)
    candidates = []
    for job in jobs:
        there = remote.get(job.name)
        if there is not None and there.sha256 and os.stat(job.path).st_size == there.size:
            candidates.append(job)
    local = await threads.deferToThreadPool(
        reactor, reactor.getThreadPool(), lambda: [sha256Of(j.path) for j in candidates]
    )
    same = {
        job.name
        for job, (size, digest) in zip(candidates, local, strict=True)
        if (size, digest) == (remote[job.name].size, remote[job.name].sha256)
    }
    for job in jobs:
        if job.name in same:
            complain("upload", job.name, "unchanged on the server, skipped")
    return [job for job in jobs if job.name not in same]


async def run(reactor: Any, args: argparse.Namespace) -> int:
    if not hasattr(args, "jobs"):
        prepare(args)
    for problem in args.problems:
        print(f"netproto upload: {problem}", file=sys.stderr)
    failures = len(args.problems)
    if not args.jobs:
        return 1 if failures else 0
    client = await connectFramed(clientEndpoint(reactor, args), "upload", args.auth)

    def stored(job: Job, size: int, digest: str) -> None:
        if not args.quiet:
            say(f"{digest}  {size}  {job.name}")

    def failed(job: Job, e: Exception) -> None:
        nonlocal failures
        failures += 1
        if isinstance(e, ServerError):
            hint = " (--overwrite replaces a file)" if e.code == "exists" else ""
            complain("upload", job.path, f"{e.code}: {e.serverMessage}{hint}")
        elif isinstance(e, OSError):
            complain("upload", job.path, str(e.strerror))
        else:
            complain("upload", job.path, str(e))

    try:
        jobs = args.jobs
        if getattr(args, "sync", False):
            jobs = await skipUnchanged(reactor, client, jobs)
            args.overwrite = True  # what differs replaces what the server has
        features = client.hello.features if client.hello else ()
        if "pipeline" in features and not args.resume:
            await sendAll(
                reactor, client, jobs, args, sendOne=sendPipelined, stored=stored, failed=failed
            )
        else:
            for job in jobs:
                try:
                    size, digest = await sendFile(reactor, client, job, args)
                except (ServerError, OSError) as e:
                    failed(job, e)
                    if not client.connected:
                        raise ClientError("the server closed the connection") from None
                    continue
                stored(job, size, digest)
    finally:
        client.close()
    return 1 if failures else 0
