"""``netproto upload`` to a server that offers ``pipeline`` (PROTOCOL.md section 6).

The files are sent one after another without waiting for the server's
answers: each one's ``P``, its ``D`` frames (read, hashed and sent by the
same producer as a one-at-a-time upload, paused by the transport) and its
``F``, then the next. Meanwhile the answers are read in the order of the
files: ``K ready`` or an ``E`` refusal, then ``K stored`` or an ``E``. A
refused file's data is skipped by the server; the others go on. At most
:data:`WINDOW` files are unanswered at a time, so the client's own buffers
stay bounded however many small files there are.

Not used with ``--resume``: a resume needs the server's ``K ready`` offset
before the data.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from twisted.internet.defer import (
    Deferred,
    DeferredList,
    DeferredQueue,
    DeferredSemaphore,
    ensureDeferred,
)

from netproto.client.framed import ClientError, FramedClient, ServerError
from netproto.upload import digests

#: Files sent and not yet answered at most: enough to cover the server's
#: group commits and the round trip, few enough to bound what is buffered.
WINDOW: Final = 64


@dataclass
class Flight:
    """One file on its way: the job; its size and digest once sent, or the
    local error that cut it short; what sends its data (to stop it once
    the server refused the file)."""

    job: Any
    sent: Deferred[tuple[int, str]] = field(default_factory=Deferred)
    error: Exception | None = None
    producer: Any = None


async def sendAll(
    reactor: Any,
    client: FramedClient,
    jobs: Sequence[Any],
    args: argparse.Namespace,
    *,
    sendOne: Callable[..., Any],
    stored: Callable[[Any, int, str], None],
    failed: Callable[[Any, Exception], None],
) -> None:
    """Send ``jobs`` pipelined; ``stored(job, size, digest)`` or
    ``failed(job, error)`` is called for each, in order.

    :param sendOne: ``async (reactor, client, job, args, flight)``: sends one
        file's P, D frames and F; fires ``flight.sent``; raises OSError when
        the file cannot be opened (before its P).
    :raises ClientError: the connection was lost.
    """
    queue: DeferredQueue[Flight | None] = DeferredQueue()
    window = DeferredSemaphore(WINDOW)

    async def sender() -> None:
        for job in jobs:
            await window.acquire()
            if not client.connected:
                break
            flight = Flight(job)
            try:
                await sendOne(reactor, client, job, args, flight)
            except OSError as e:  # not opened: no P was sent
                failed(job, e)
                window.release()
                continue
            queue.put(flight)
        queue.put(None)

    async def receiver() -> None:
        while (flight := await queue.get()) is not None:
            try:
                size, digest = await _answered(client, flight)
            except ServerError as e:
                if flight.producer is not None:
                    flight.producer.cancel()  # refused: the rest of it is not sent
                failed(flight.job, flight.error or e)
                if not client.connected:
                    raise ClientError("the server closed the connection") from None
            except (OSError, ClientError) as e:
                if not client.connected:
                    raise
                failed(flight.job, e)
            else:
                stored(flight.job, size, digest)
            window.release()

    done = DeferredList(
        [ensureDeferred(sender()), ensureDeferred(receiver())],
        fireOnOneErrback=True,
        consumeErrors=True,
    )
    try:
        await done
    except Exception as e:  # the first failure of either side
        first = getattr(e, "subFailure", None)
        if first is not None:
            first.raiseException()
        raise


async def _answered(client: FramedClient, flight: Flight) -> tuple[int, str]:
    """Read one file's answers (K ready, then K stored); check them against
    what was sent. A refusal or an error is a ServerError."""
    ready = await client.receiveJSON(b"K")
    if ready.get("offset") != 0:
        raise ClientError(f"protocol error: a pipelined file asked to start at {ready}")
    stored = await client.receiveJSON(b"K")
    size, digest = await flight.sent
    if flight.error is not None:
        raise flight.error
    if stored.get("sha256") != digest or stored.get("size") != size:
        raise ClientError(
            f"the server stored something else: {stored} (sent {size} bytes, {digest})"
        )
    return size, digest


def sha256Of(path: str) -> tuple[int, str]:
    """Size and SHA-256 of a local file (for ``--sync``; in a thread)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        size = digests.hashPrefix(f.fileno(), size, h)
    return size, h.hexdigest()
