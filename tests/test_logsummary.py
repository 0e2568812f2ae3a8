"""netproto.logsummary: a flood of log events costs a line and a count, with bounded memory."""

from __future__ import annotations

from typing import Any, cast

import pytest
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, Logger, LogLevel, formatEvent

from netproto.logsummary import DEFAULT_BURST, OTHER_KINDS, OTHER_SOURCES, RepeatSummary, sourceOf

REFUSED = "chat: refused (server full)"
FORMAT = "chat: refused {peer}: server full"


class Recorder:
    """A summariser on a Clock whose log goes to a list (one event logged per
    key and interval unless ``burst`` says otherwise)."""

    def __init__(self, interval: float = 10.0, burst: int = 1, **caps: int) -> None:
        self.events: list[dict[str, Any]] = []
        self.clock = Clock()
        log = Logger(namespace="test", observer=cast(ILogObserver, self.events.append))
        self.summary = RepeatSummary(log, interval, self.clock, burst=burst, **caps)

    def refuse(self, host: str, port: int = 1, kind: str = REFUSED) -> None:
        self.summary.emit((host, kind), LogLevel.warn, FORMAT, peer=f"{host}:{port}")

    @property
    def lines(self) -> list[str]:
        return [formatEvent(e) for e in self.events]


def test_firstEventIsLoggedAsItIs() -> None:
    """The first event of a (source, kind) is logged at once, with its own level,
    format and fields: nothing an operator needs is delayed or lost."""
    r = Recorder()
    r.refuse("127.0.0.2", 40112)
    assert r.lines == ["chat: refused 127.0.0.2:40112: server full"]
    (event,) = r.events
    assert event["log_level"] is LogLevel.warn
    assert event["peer"] == "127.0.0.2:40112"
    assert event["log_namespace"] == "test"


def test_aBurstIsLoggedOneByOneBeforeCounting() -> None:
    """With the default burst, a person reconnecting a few times sees each
    connection logged; the sixth and later in the interval are only counted."""
    r = Recorder(burst=DEFAULT_BURST)
    for port in range(DEFAULT_BURST + 3):
        r.refuse("127.0.0.2", port)
    assert r.lines == [f"chat: refused 127.0.0.2:{port}: server full" for port in range(5)]
    r.clock.advance(10)
    assert r.lines[-1] == (
        "chat: refused (server full) ... and 3 more like this from 127.0.0.2 in the last 10 s"
    )
    assert len(r.lines) == DEFAULT_BURST + 1


def test_repeatsAreCountedAndSummarisedOnceAtTheIntervalsEnd() -> None:
    """12,000 refusals of one source in an interval make two lines: the first
    refusal, and at the interval's end a count of the 11,999 others."""
    r = Recorder()
    for port in range(12_000):
        r.refuse("127.0.0.2", port)
    assert len(r.events) == 1
    r.clock.advance(9.9)
    assert len(r.events) == 1
    r.clock.advance(0.1)
    assert r.lines[1] == (
        "chat: refused (server full) ... and 11999 more like this from 127.0.0.2 in the last 10 s"
    )
    summary = r.events[1]
    assert summary["log_level"] is LogLevel.warn
    assert summary["repeat_count"] == 11_999
    assert summary["repeat_source"] == "127.0.0.2"
    assert summary["repeat_kind"] == REFUSED


def test_sourcesAndKindsAreSummarisedApart() -> None:
    """Each (source, kind) gets its own first line and its own count; a quiet
    honest source is not lumped with an abusive one."""
    r = Recorder()
    for _ in range(3):
        r.refuse("127.0.0.2")
        r.refuse("127.0.0.3")
        r.refuse("127.0.0.2", kind="exec: authentication failed")
    r.refuse("127.0.0.1")
    assert len(r.events) == 4
    r.clock.advance(10)
    summaries = sorted(r.lines[4:])
    assert summaries == [
        "chat: refused (server full) ... and 2 more like this from 127.0.0.2 in the last 10 s",
        "chat: refused (server full) ... and 2 more like this from 127.0.0.3 in the last 10 s",
        "exec: authentication failed ... and 2 more like this from 127.0.0.2 in the last 10 s",
    ]


def test_aNewIntervalLogsTheFirstEventAgain() -> None:
    """After an interval ends, a source's next event is logged as it is: a flood
    that goes on shows up as one line and one count per interval."""
    r = Recorder()
    for _ in range(3):
        r.refuse("127.0.0.2")
        r.refuse("127.0.0.2")
        r.clock.advance(10)
    assert len(r.events) == 6
    assert [e.get("repeat_count") for e in r.events] == [None, 1] * 3


def test_oneTimerWhileTrackingNoneWhenIdle() -> None:
    """However many events and sources, at most one delayed call is pending, and
    none once an interval has ended with nothing new: an idle server keeps no
    timer for its logs."""
    r = Recorder()
    assert r.clock.getDelayedCalls() == []
    for n in range(500):
        r.refuse(f"10.0.{n // 250}.{n % 250}")
        r.refuse(f"10.0.{n // 250}.{n % 250}")
        assert len(r.clock.getDelayedCalls()) == 1
    r.clock.advance(10)
    assert r.clock.getDelayedCalls() == []
    assert len(r.summary) == 0


def test_noSummaryWhenNothingWasCounted() -> None:
    """A source that caused one event gets no summary line: quiet peers cost one line."""
    r = Recorder()
    r.refuse("127.0.0.1")
    r.clock.advance(10)
    assert len(r.events) == 1


def test_theIntervalStartsAtItsFirstEvent() -> None:
    """An interval lasts ``interval`` seconds from its first event, not from the
    last summary: a late event is summarised as late as a prompt one."""
    r = Recorder(interval=5)
    r.clock.advance(100)
    r.refuse("127.0.0.2")
    r.clock.advance(4)
    r.refuse("127.0.0.2")
    assert len(r.events) == 1
    r.clock.advance(1)
    assert r.events[1]["repeat_count"] == 1
    assert r.events[1]["repeat_seconds"] == "5"


def test_manySourcesStayWithinTheCap() -> None:
    """An attacker from 10,000 addresses cannot grow the table past the cap:
    past ``maxKeys`` sources, new ones are counted per kind only and said in
    one line ``from other sources``; the first ``maxKeys`` are as usual."""
    r = Recorder(maxKeys=100)
    for n in range(10_000):
        r.refuse(f"10.{n // 62500}.{n // 250 % 250}.{n % 250}")
        assert len(r.summary) <= 101
    assert len(r.events) == 100
    r.clock.advance(10)
    assert r.lines[100:] == [
        f"chat: refused (server full) ... and 9900 more like this from {OTHER_SOURCES} "
        "in the last 10 s"
    ]


def test_sourcesAlreadyTrackedAreStillCountedPastTheCap() -> None:
    """Reaching the cap does not move sources already tracked to the shared
    count: the abuser seen first keeps its own line."""
    r = Recorder(maxKeys=2)
    r.refuse("127.0.0.2")
    r.refuse("127.0.0.3")
    r.refuse("127.0.0.4")
    r.refuse("127.0.0.2")
    r.clock.advance(10)
    assert sorted(r.lines[2:]) == [
        "chat: refused (server full) ... and 1 more like this from 127.0.0.2 in the last 10 s",
        f"chat: refused (server full) ... and 1 more like this from {OTHER_SOURCES} "
        "in the last 10 s",
    ]


def test_kindsPastTheirCapShareOneCount() -> None:
    """A caller that wrongly puts peer data in the kind still cannot grow the
    table: past ``maxKinds`` the kinds share one count."""
    r = Recorder(maxKeys=1, maxKinds=3)
    r.refuse("127.0.0.2")
    for n in range(1000):
        r.refuse("127.0.0.3", kind=f"kind {n}")
        assert len(r.summary) <= 1 + 3 + 1
    r.clock.advance(10)
    counts = {e["repeat_kind"]: e["repeat_count"] for e in r.events[1:]}
    assert counts == {"kind 0": 1, "kind 1": 1, "kind 2": 1, OTHER_KINDS: 997}


def test_flushSaysTheCountsNowAndCancelsTheTimer() -> None:
    """``flush`` (called when a service stops) logs the counts so far, with the
    time they really cover, and leaves no timer behind."""
    r = Recorder()
    r.refuse("127.0.0.2")
    r.clock.advance(2.5)
    r.refuse("127.0.0.2")
    r.summary.flush()
    assert r.lines[1].endswith("from 127.0.0.2 in the last 2.5 s")
    assert r.clock.getDelayedCalls() == []
    r.summary.flush()
    assert len(r.events) == 2


def test_theSummaryKeepsTheFirstEventsLevel() -> None:
    """A summary is logged at the level of the events it counts, so an operator's
    level filter treats it like them."""
    r = Recorder()
    for _ in range(2):
        r.summary.emit(("127.0.0.2", "exec: connection"), LogLevel.info, "exec: connection")
    r.clock.advance(10)
    assert [e["log_level"] for e in r.events] == [LogLevel.info, LogLevel.info]


@pytest.mark.parametrize(
    ("address", "source"),
    [
        (IPv4Address("TCP", "127.0.0.2", 40112), "127.0.0.2"),
        (IPv6Address("TCP", "::1", 40112), "::1"),
        (UNIXAddress(b"/run/netproto/chat.sock"), "unix"),
        (None, "None"),
    ],
)
def test_sourceIsTheAddressWithoutItsPort(address: Any, source: str) -> None:
    """Every connection of one host has the same source, whatever its port."""
    assert sourceOf(address) == source
