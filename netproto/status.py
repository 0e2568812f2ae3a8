"""One status line on ``SIGUSR1``: what a running server holds that ``ps`` cannot show.

RSS, open descriptors and child processes can be read from outside the
process (``ps``, ``/proc``, psutil). What cannot is inside the reactor: its
pending timers (a leak of delayed calls is a leak of memory and of work
that one day all fires), its thread pool, and which service the open
connections belong to. ``kill -USR1 PID`` logs them in one line::

    netproto: status: delayed_calls=3 threads=9 pool_threads=0 pool_busy=0
        pool_queued=0 conn_chat=12 conn_exec=1 conn_upload=0

(one line in the log; wrapped here).

The fields are also in the log event, for JSON log consumers;
:func:`parseStatus` reads them back from a text line (the soak and the
tests do).

twistd with ``--logfile=FILE`` rotates that file on ``SIGUSR1``. The handler
here is installed once the reactor runs, after twistd's, and calls it first:
``SIGUSR1`` then both rotates the log and writes the status line at the top
of the new file.
"""

from __future__ import annotations

import re
import signal
import threading
from collections.abc import Iterable
from types import FrameType
from typing import Any, Final

from twisted.application.service import IServiceCollection
from twisted.internet import tcp
from twisted.logger import Logger

from netproto.services import ListeningService

log = Logger()

#: The text every status line starts with.
PREFIX: Final = "netproto: status:"
_FIELD: Final = re.compile(r"([\w-]+)=(\d+)")


def _listeningPorts(top: IServiceCollection) -> dict[int, str]:
    """``id(listening port)`` to the name of the service it serves."""
    ports: dict[int, str] = {}
    for child in top:
        if isinstance(child, ListeningService) and child.port is not None:
            ports[id(child.port)] = child.service.name
    return ports


def statusFields(reactor: Any, top: IServiceCollection) -> dict[str, int]:
    """What the status line says, as numbers.

    ``conn_NAME`` counts the stream connections of service NAME that the
    reactor watches: one paused both ways (an upload waiting for its disk
    with nothing to send) is not among them for that moment.
    """
    pool = getattr(reactor, "threadpool", None)
    fields = {
        "delayed_calls": len(reactor.getDelayedCalls()),
        "threads": threading.active_count(),
        "pool_threads": pool.workers if pool is not None else 0,
        "pool_busy": len(pool.working) if pool is not None else 0,
        "pool_queued": pool.q.qsize() if pool is not None else 0,
    }
    ports = _listeningPorts(top)
    connections = dict.fromkeys(ports.values(), 0)
    watched: Iterable[object] = {*reactor.getReaders(), *reactor.getWriters()}
    for selectable in watched:
        if isinstance(selectable, tcp.Server):
            name = ports.get(id(selectable.server))
            if name is not None:
                connections[name] += 1
    fields.update((f"conn_{name}", count) for name, count in connections.items())
    return fields


def logStatus(reactor: Any, top: IServiceCollection) -> dict[str, int]:
    """Log the status line now; returns its fields."""
    fields = statusFields(reactor, top)
    text = " ".join(f"{name}={{{name}}}" for name in fields)
    log.info(f"{PREFIX} {text}", **fields)
    return fields


def parseStatus(line: str) -> dict[str, int] | None:
    """The fields of a status line in a text log, or None if ``line`` is not one."""
    _, found, rest = line.partition(PREFIX)
    if not found:
        return None
    return {name: int(value) for name, value in _FIELD.findall(rest)}


def installStatusSignal(top: IServiceCollection, reactor: Any) -> None:
    """Log a status line on each ``SIGUSR1``, from the time the reactor runs.

    Installed then, not now, so that twistd's own ``SIGUSR1`` handler (log
    rotation, set up after the service is built) exists and is kept: it is
    called first. The line is logged from the reactor thread.
    """

    def install() -> None:
        previous = signal.getsignal(signal.SIGUSR1)

        def onSignal(signum: int, frame: FrameType | None) -> None:
            if callable(previous):
                previous(signum, frame)
            reactor.callFromThread(logStatus, reactor, top)

        signal.signal(signal.SIGUSR1, onSignal)

    reactor.callWhenRunning(install)


__all__ = ["PREFIX", "installStatusSignal", "logStatus", "parseStatus", "statusFields"]
