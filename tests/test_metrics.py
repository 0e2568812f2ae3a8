"""netproto.metrics in memory: the log-event counter, the summaries it catches up
with, how a command's end is named, and the families built from live state."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from twisted.application.service import MultiService
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, globalLogPublisher
from twisted.python import usage

import netproto
from netproto.logsummary import DEFAULT_BURST, RepeatSummary
from netproto.metrics import (
    EVENT_FORMATS,
    EventCounts,
    NetprotoCollector,
    collect,
    exitOutcome,
)
from netproto.options import streamEndpoint
from netproto.services import ListeningService
from netproto.tap import Options
from tests.chatkit import Harness
from tests.fileskit import Served, fetch
from tests.uploadkit import StepExecutor

FRAMED_REFUSAL = "{service}: refused {peer}: {code}: {message}"


def refused(log: Logger, summary: RepeatSummary, n: int, source: str = "127.0.0.2") -> None:
    for i in range(n):
        summary.emit(
            (source, "exec: refused (auth-failed)"),
            LogLevel.info,
            FRAMED_REFUSAL,
            service="exec",
            peer=f"{source}:{i}",
            code="auth-failed",
            message="authentication failed",
        )


def test_a_summarised_flood_is_counted_whole_once_its_interval_ends() -> None:
    """A flood from one address is logged as DEFAULT_BURST events and one summary
    line; the counter sees the burst at once and the rest with the summary: in the
    end every refusal, none twice."""
    counts = EventCounts()
    clock = Clock()
    log = Logger(observer=counts)
    summary = RepeatSummary(log, clock=clock)
    refused(log, summary, 1000)
    assert counts.refusals["exec", "auth-failed"] == DEFAULT_BURST
    clock.advance(summary.interval)
    assert counts.refusals["exec", "auth-failed"] == 1000


def test_floods_past_the_source_cap_are_counted_per_kind() -> None:
    """Sources past RepeatSummary's cap are summarised per kind ("other sources"):
    still counted, under their service and code."""
    counts = EventCounts()
    clock = Clock()
    summary = RepeatSummary(Logger(observer=counts), clock=clock, maxKeys=2)
    for n in range(10):
        refused(summary.log, summary, 3, source=f"10.0.0.{n}")
    clock.advance(summary.interval)
    assert counts.refusals["exec", "auth-failed"] == 30


def test_refusals_logged_one_by_one_and_summarised_share_their_labels() -> None:
    """chat's and web's refusals, past the burst: the summary's kind names the same
    code as the events logged one by one (one word: server-full, origin)."""
    counts = EventCounts()
    clock = Clock()
    summary = RepeatSummary(Logger(observer=counts), clock=clock)
    for _ in range(20):
        summary.emit(
            ("10.0.0.1", "chat: refused (server full)"),
            LogLevel.warn,
            "chat: refused {peer}: server full ({why})",
            peer="10.0.0.1:1",
            why="64 clients from 10.0.0.1",
        )
        summary.emit(
            ("10.0.0.1", "web: refused (origin)"),
            LogLevel.warn,
            "web: refused {peer}: origin {origin} is not allowed (--web-origins)",
            peer="10.0.0.1:1",
            origin="http://evil.example",
        )
    clock.advance(summary.interval)
    assert counts.refusals == {("chat", "server-full"): 20, ("web", "origin"): 20}


def test_each_event_format_counted_is_one_the_code_writes() -> None:
    """A service that rewords a counted event would silently stop its counter:
    every format in EVENT_FORMATS is a literal in netproto's source."""
    source = "\n".join(path.read_text() for path in Path(netproto.__file__).parent.rglob("*.py"))
    for format in EVENT_FORMATS:
        if format.startswith("{repeat_kind}"):
            continue  # logsummary.SUMMARY_FORMAT, imported, not copied
        assert f'"{format}"' in source, format


def test_events_count_under_their_service_and_nothing_else() -> None:
    counts = EventCounts()
    log = Logger(observer=counts)
    log.info("{service}: connection from {peer}", service="upload", peer="p")
    log.info("chat: {peer} connected as {nick}", peer="p", nick="n")
    log.info("{service}: {peer} authenticated as {user}", service="upload", peer="p", user="u")
    log.info(
        "{service}: {peer} disconnected ({user})",
        service="upload",
        peer="p",
        user="unauthenticated",
    )
    log.info(
        "upload: {peer} ({user}) stored {name} ({size} bytes, sha256 {sha256})",
        peer="p",
        user="u",
        name="f",
        size=10,
        sha256="0",
    )
    log.info("an event of no interest {size}", size=99)
    assert counts.connections == {"upload": 1, "chat": 1}
    assert counts.sessionsOpened == {"upload": 1}
    assert counts.sessionsClosed == {}  # an unauthenticated end is not a session's end
    assert counts.uploads == {"upload": 1}
    assert counts.uploadBytes == {"upload": 10}


def test_odd_fields_never_make_the_observer_raise() -> None:
    """An observer that raises would be dropped by the log publisher (and log an
    error): counts from events with missing or odd fields are skipped or zero."""
    counts = EventCounts()
    counts({"log_format": "upload: {peer} ({user}) stored {name} ({size} bytes, sha256 {sha256})"})
    counts({"log_format": "{repeat_kind} ... and {repeat_count} more like this from "
            "{repeat_source} in the last {repeat_seconds} s", "repeat_kind": 3})  # fmt: skip
    counts({})
    assert counts.uploadBytes == {"upload": 0}


def test_a_command_end_is_named_by_what_x_reports() -> None:
    assert exitOutcome((0, None, False)) == "success"
    assert exitOutcome((3, None, False)) == "failure"
    assert exitOutcome((None, "KILL", False)) == "signal"
    assert exitOutcome((None, "KILL", True)) == "timeout"
    assert exitOutcome(None) == "unknown"


def served(name: str, built: Any) -> ListeningService:
    service = ListeningService.__new__(ListeningService)
    service.service = type("Declared", (), {"name": name, "kind": "stream"})()
    service.built = built
    return service


def test_chat_lines_rooms_and_members_come_from_the_chat_itself() -> None:
    """Lines taken (blank ones and those past the flood limit are not), their
    bytes, members and rooms, read from a chat factory with two members."""
    chat = Harness(rate=1.0, burst=3)
    alice, _ = chat.connect()
    chat.connect()
    for line in (b"/join ops", b"", b"one", b"two", b"three is dropped: flood"):
        alice.lineReceived(line)
    text = "\n".join(
        f"{s.name} {s.labels.get('service')} {s.value:g}"
        for family in collect(EventCounts(), [served("chat", chat.factory)])
        for s in family.samples
    )
    assert "netproto_chat_lines_total chat 3" in text
    assert f"netproto_chat_line_bytes_total chat {len(b'/join opsonetwo')}" in text
    assert "netproto_connections_open chat 2" in text
    assert "netproto_chat_members chat 2" in text
    assert "netproto_chat_rooms chat 2" in text


def test_the_collector_serves_the_exposition_from_a_service_tree() -> None:
    counts = EventCounts()
    counts.connections["exec"] = 4
    registry = CollectorRegistry(auto_describe=False)
    top = MultiService()
    registry.register(NetprotoCollector(counts, top))
    text = generate_latest(registry).decode()
    assert 'netproto_connections_total{service="exec"} 4.0' in text
    assert re.search(r'netproto_build_info\{version="[^"]+"\} 1.0', text)


def test_metrics_is_off_by_default_and_a_bad_endpoint_is_one_line() -> None:
    assert Options()["metrics"] == "none"
    assert streamEndpoint("tcp:0") == "tcp:0"
    with pytest.raises(usage.UsageError, match="endpoint 'nonsense:1'"):
        Options().parseOptions(["--metrics", "nonsense:1"])


@pytest.fixture
def counted() -> Iterator[EventCounts]:
    """An :class:`EventCounts` that sees every event logged during the test."""
    counts = EventCounts()
    globalLogPublisher.addObserver(counts)
    try:
        yield counts
    finally:
        globalLogPublisher.removeObserver(counts)


def test_a_download_cut_short_counts_the_bytes_sent_not_the_files_size(
    tmp_path: Path, counted: EventCounts
) -> None:
    """The client goes away after the first frames of a 40 MiB download: the
    download is counted, and its bytes are those sent, not the file's size."""
    executor = StepExecutor()
    served = Served(tmp_path, executor)
    peer = served.peer()
    size = 40 << 20
    with open(served.root / "big", "wb") as f:
        f.truncate(size)
    peer.sendJSON(b"G", {"name": "big", "offset": 0})
    function, args = executor.calls.pop(0)
    function(*args)  # the file opened, and the first frames made and sent
    frames = peer.take()
    assert frames[0][0] == b"K" and frames[-1][0] == b"D"
    sent = sum(len(payload) for kind, payload in frames if kind == b"D")
    assert 0 < sent < size
    peer.close()
    executor.runAll()
    assert counted.downloads == {"upload": 1}
    assert counted.downloadBytes == {"upload": sent}


def test_a_download_from_an_offset_counts_what_it_sent(
    tmp_path: Path, counted: EventCounts
) -> None:
    """Whole from an offset: the bytes after the offset, once the ``F`` went out."""
    served = Served(tmp_path)
    peer = served.peer()
    (served.root / "f").write_bytes(b"x" * 5000)
    data, (kind, _) = fetch(peer, "f", offset=1000)
    assert kind == b"F" and len(data) == 4000
    assert counted.downloads == {"upload": 1}
    assert counted.downloadBytes == {"upload": 4000}
