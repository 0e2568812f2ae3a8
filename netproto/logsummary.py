"""Repeated log events summarised: the first one as it is, the rest as a count.

A peer can make the server log a line per connection it opens, per frame it
gets wrong, per guess at the token: one client on loopback reached 12,000
refusals a second, about 95 MiB of log a minute. :class:`RepeatSummary`
keeps such a flood to a few lines per peer and interval, without
hiding anything from an operator: the first :data:`DEFAULT_BURST` events of a
kind from a source in an interval are logged as they are, with all their
fields; the ones after them in the same interval are only counted, and when
the interval ends one line per (source, kind) says how many there were::

    chat: refused 127.0.0.2:40112: server full (64 clients from 127.0.0.2)
    chat: refused (server full) ... and 11999 more like this from 127.0.0.2 in the last 10 s

It costs one dictionary entry per (source, kind) seen in the interval, at
most :data:`MAX_KEYS` of them (past that, new sources are counted per kind
only), and one timer while anything is tracked, none when idle: never a
timer per event.
"""

from __future__ import annotations

from typing import Any, Final, cast

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress, IDelayedCall, IListeningPort, IReactorTime
from twisted.logger import ILogObserver, LogEvent, Logger, LogLevel
from zope.interface import implementer

from netproto.addresses import describeAddress

#: Seconds an interval lasts: a flood costs about two lines per (source, kind)
#: per interval, and an operator reading the log learns of a new source at
#: once and of the size of its flood at most this late.
DEFAULT_INTERVAL: Final = 10.0

#: Events of one (source, kind) logged one by one in an interval before the rest
#: are only counted: a person who reconnects a few times still sees each of their
#: connections in the log; a flood costs this many lines and one summary.
DEFAULT_BURST: Final = 5

#: Most (source, kind) pairs tracked in one interval. An attacker with many
#: addresses (a routed IPv6 /64 has 2**64) could otherwise grow the table
#: without bound; each entry costs about 200 bytes, so the cap is about
#: 200 KiB, and a thousand sources in ten seconds is more than anyone reads
#: one by one. Past it, events from sources not yet tracked are counted per
#: kind only (``from other sources``), never logged one by one.
MAX_KEYS: Final = 1024

#: Most kinds counted for sources past :data:`MAX_KEYS`. Kinds are fixed
#: strings written in the code, so a handful exist; the cap only guards
#: against a caller that puts what a peer sent into a kind.
MAX_KINDS: Final = 64

#: The source named in the summary of events from sources past the cap.
OTHER_SOURCES: Final = "other sources"
#: The kind of events past both caps.
OTHER_KINDS: Final = "other events"

#: How a summary line reads; its fields are for JSON log consumers too.
SUMMARY_FORMAT: Final = (
    "{repeat_kind} ... and {repeat_count} more like this from {repeat_source} "
    "in the last {repeat_seconds} s"
)


def sourceOf(address: IAddress | None) -> str:
    """The part of a peer's address that names who sends: the IP address without
    the port, which changes with every connection; the whole description otherwise
    (``unix:...``)."""
    if isinstance(address, (IPv4Address, IPv6Address)):
        return address.host
    if isinstance(address, UNIXAddress):
        return "unix"
    return describeAddress(address)


class _Tally:
    """What is known of one (source, kind) in the current interval."""

    __slots__ = ("count", "level", "logged")

    def __init__(self, level: LogLevel, count: int = 0) -> None:
        self.level = level
        #: events logged one by one
        self.logged = 1
        #: events after the first, not logged one by one
        self.count = count


class RepeatSummary:
    """Log the first ``burst`` events per (source, kind) and interval; count the others.

    :param log: where both the events and the summaries are logged (so they
        keep the caller's namespace).
    :param interval: seconds from the first event of an interval to its
        summaries (:data:`DEFAULT_INTERVAL`).
    :param clock: the reactor's clock (``task.Clock`` in tests).
    :param burst: events per (source, kind) and interval logged one by one
        (:data:`DEFAULT_BURST`).
    :param maxKeys: :data:`MAX_KEYS`; ``maxKinds``: :data:`MAX_KINDS`.
    """

    def __init__(
        self,
        log: Logger,
        interval: float = DEFAULT_INTERVAL,
        clock: IReactorTime | None = None,
        *,
        burst: int = DEFAULT_BURST,
        maxKeys: int = MAX_KEYS,
        maxKinds: int = MAX_KINDS,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor

            clock = cast(IReactorTime, reactor)
        self.log = log
        self.interval = interval
        self.clock = clock
        self.maxKeys = maxKeys
        self.maxKinds = maxKinds
        self.burst = burst
        self._tallies: dict[tuple[str, str], _Tally] = {}
        #: events from sources past maxKeys, per kind
        self._others: dict[str, _Tally] = {}
        self._started = 0.0
        self._timer: IDelayedCall | None = None

    def __len__(self) -> int:
        """Entries held now: at most ``maxKeys + maxKinds + 1``."""
        return len(self._tallies) + len(self._others)

    def emit(self, key: tuple[str, str], level: LogLevel, format: str, **fields: Any) -> None:
        """Log ``format`` with ``fields`` at ``level`` (as ``Logger.emit``), unless an
        event with the same ``key`` was logged in this interval: then count it.

        :param key: ``(source, kind)``: who caused it (:func:`sourceOf`) and a
            short fixed description of what happened (``"chat: refused (server
            full)"``), which the summary line repeats. Never put what a peer
            sent in the kind.
        """
        tally = self._tallies.get(key)
        if tally is not None:
            if tally.logged < self.burst:
                tally.logged += 1
                self.log.emit(level, format, **fields)
            else:
                tally.count += 1
            return
        if len(self._tallies) < self.maxKeys:
            self._tallies[key] = _Tally(level)
            self._startInterval()
            self.log.emit(level, format, **fields)
            return
        kind = key[1]
        other = self._others.get(kind)
        if other is None:
            if len(self._others) >= self.maxKinds:
                kind = OTHER_KINDS
                other = self._others.get(kind)
            if other is None:
                other = self._others[kind] = _Tally(level)
        other.count += 1

    def _startInterval(self) -> None:
        if self._timer is None:
            self._started = self.clock.seconds()
            self._timer = self.clock.callLater(self.interval, self.flush)

    def flush(self) -> None:
        """End the interval now: one summary line per (source, kind) with events
        that were only counted, then forget them all. Called by the interval's
        timer; call it also when the service stops, so no count is lost."""
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        tallies, self._tallies = self._tallies, {}
        others, self._others = self._others, {}
        seconds = round(self.clock.seconds() - self._started, 1)
        rows = [(source, kind, tally) for (source, kind), tally in tallies.items()]
        rows += [(OTHER_SOURCES, kind, tally) for kind, tally in others.items()]
        for source, kind, tally in rows:
            if tally.count:
                self.log.emit(
                    tally.level,
                    SUMMARY_FORMAT,
                    repeat_kind=kind,
                    repeat_count=tally.count,
                    repeat_source=source,
                    repeat_seconds=f"{seconds:g}",
                )


@implementer(ILogObserver)
class SummarizingObserver:
    """Passes the events of a logger that is not ours through a
    :class:`RepeatSummary`, one kind per format string, all from ``source``."""

    def __init__(self, summary: RepeatSummary, source: str) -> None:
        self.summary = summary
        self.source = source

    def __call__(self, event: LogEvent) -> None:
        format = event.get("log_format") or ""
        fields = {k: v for k, v in event.items() if not k.startswith("log_")}
        level = event.get("log_level", LogLevel.info)
        self.summary.emit((self.source, format), level, format, **fields)


def summarizeAcceptErrors(port: IListeningPort, summary: RepeatSummary) -> None:
    """Summarise what Twisted's listening ``port`` logs about connections it
    could not accept.

    At the open-file limit Twisted's TCP and UNIX ports accept each new
    connection on a reserved descriptor and close it at once (good: the
    client is refused, not left hanging), logging three lines for each
    (``EMFILE encountered``, ``EMFILE recovery: Closed socket from ...``,
    ``Re-reserving ...``): an attacker holding the server at its limit
    would write thousands of lines a second. This replaces the port's
    logger, ``tcp.Port._logger``, which is Twisted's private attribute (read
    by ``Port.doRead``, Twisted 16 to 25): the one place netproto changes a
    default path of Twisted's logging; tests/adversarial's open-file test
    checks it still takes effect. A port without that attribute (UDP, a
    test's fake) is left as it is."""
    logger = getattr(port, "_logger", None)
    if isinstance(logger, Logger):
        source = str(port.getHost())
        port._logger = Logger(  # type: ignore[attr-defined]
            namespace=logger.namespace, observer=SummarizingObserver(summary, source)
        )


__all__ = [
    "DEFAULT_BURST",
    "DEFAULT_INTERVAL",
    "MAX_KEYS",
    "MAX_KINDS",
    "RepeatSummary",
    "SummarizingObserver",
    "sourceOf",
    "summarizeAcceptErrors",
]
