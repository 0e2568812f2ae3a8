"""``--metrics ENDPOINT``: Prometheus text exposition at ``/metrics`` (PROTOCOL.md section 8).

Nothing here costs a connection anything it did not already cost. The numbers come
from three places, read when Prometheus scrapes:

* the log events the services emit anyway (connections, authentication failures,
  refusals by code, uploads stored), counted by :class:`EventCounts`, a
  ``twisted.logger`` observer that looks each event's format string up in
  :data:`EVENT_FORMATS` (one dictionary lookup per event). Events a peer repeats
  are summarised by :class:`~netproto.logsummary.RepeatSummary`; their summary
  line carries the count, so the counters catch up at the end of each summary
  interval (10 s) and lose nothing;
* the services' live state (chat rooms and members, exec's running commands),
  read at scrape time;
* three plain integer attributes the services keep for this: chat's
  ``ChatFactory.lines`` and ``lineBytes`` (lines taken from clients) and exec's
  ``ExecFactory.exits`` (ended commands by how they ended).

Labels are the service name and a few fixed values (refusal codes, how a
command ended); never a peer, user or nick, whose number a client decides.
Counters are counters (``_total``): Prometheus's ``rate()`` needs them never to
go down while the process lives.

The page is rendered on the reactor thread (:class:`MetricsRequest`), not with
``prometheus_client.twisted.MetricsResource``: that one is a WSGI resource run
in the reactor's thread pool, which would read the services' state while the
reactor changes it, and a scrape caught by shutdown would block the pool's
join on the reactor thread forever (it waits for a thread waiting for the
reactor). A scrape costs the reactor well under a millisecond, every 15 s.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar, Final

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from twisted.application.service import MultiService, Service
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.web import http
from zope.interface import implementer

import netproto
from netproto.chat.server import ChatFactory
from netproto.logsummary import SUMMARY_FORMAT
from netproto.services import INetprotoService, ListeningService, ServerContext

#: Where the exposition is served (Prometheus's default ``metrics_path``).
METRICS_PATH: Final = b"metrics"

#: Refusal codes of the upload service that mean a file was not stored (the
#: others, such as ``auth-required``, are about the connection, not a file).
UPLOAD_FAILURE_CODES: Final = frozenset(
    {
        "busy",
        "checksum-mismatch",
        "exists",
        "invalid-name",
        "no-space",
        "not-allowed",
        "size-mismatch",
        "too-large",
    }
)

#: A client that left in the middle of a file: the reason label of that failure.
CLIENT_LEFT: Final = "client-left"


def _count(value: Any) -> int:
    """A count carried by an event, or 0 for anything else (an observer must not raise)."""
    return value if isinstance(value, int) and value > 0 else 0


@implementer(ILogObserver)
@dataclass
class EventCounts:
    """The counters the log events make: a ``twisted.logger`` observer.

    Each counter is a :class:`~collections.Counter` keyed by label values.
    """

    connections: Counter[str] = field(default_factory=Counter)
    authFailures: Counter[str] = field(default_factory=Counter)
    refusals: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: Framed sessions that authenticated, and their ends (always logged one by one).
    sessionsOpened: Counter[str] = field(default_factory=Counter)
    sessionsClosed: Counter[str] = field(default_factory=Counter)
    uploads: Counter[str] = field(default_factory=Counter)
    uploadBytes: Counter[str] = field(default_factory=Counter)
    uploadsLeft: Counter[str] = field(default_factory=Counter)
    #: Downloads started, and the bytes of data they sent (a download cut short
    #: counts what was sent; counted when a download ends).
    downloads: Counter[str] = field(default_factory=Counter)
    downloadBytes: Counter[str] = field(default_factory=Counter)

    #: log_format -> what it counts; filled below, next to the handlers.
    formats: ClassVar[dict[str, Callable[[EventCounts, LogEvent], None]]] = {}

    def __call__(self, event: LogEvent) -> None:
        handler = self.formats.get(event.get("log_format"))  # type: ignore[arg-type]
        if handler is not None:
            handler(self, event)

    # -- one handler per event format ---------------------------------------------------

    def _connection(self, event: LogEvent) -> None:
        self.connections[str(event.get("service", "chat"))] += 1

    def _authFailed(self, event: LogEvent) -> None:
        self.authFailures[str(event.get("service"))] += 1

    def _refused(self, event: LogEvent) -> None:
        self.refusals[str(event.get("service")), str(event.get("code"))] += 1

    def _chatFull(self, event: LogEvent) -> None:
        self.refusals["chat", "server-full"] += 1

    def _webOrigin(self, event: LogEvent) -> None:
        self.refusals["web", "origin"] += 1

    def _webFull(self, event: LogEvent) -> None:
        self.refusals["web", "too-many-connections"] += 1

    def _chatCutOff(self, event: LogEvent) -> None:
        self.refusals["chat", "too-slow"] += 1

    def _authenticated(self, event: LogEvent) -> None:
        self.sessionsOpened[str(event.get("service"))] += 1

    def _disconnected(self, event: LogEvent) -> None:
        if event.get("user") != "unauthenticated":
            self.sessionsClosed[str(event.get("service"))] += 1

    def _stored(self, event: LogEvent) -> None:
        self.uploads["upload"] += 1
        self.uploadBytes["upload"] += _count(event.get("size"))

    def _transfer(self, event: LogEvent) -> None:
        if event.get("what") == "fetches":
            self.downloads["upload"] += 1

    def _downloadSent(self, event: LogEvent) -> None:
        self.downloadBytes["upload"] += _count(event.get("sent"))

    def _left(self, event: LogEvent) -> None:
        self.uploadsLeft["upload"] += 1

    def _summary(self, event: LogEvent) -> None:
        """``... and N more like this``: the N events a summary stands for."""
        kind, n = event.get("repeat_kind"), _count(event.get("repeat_count"))
        if not isinstance(kind, str) or not n:
            return
        service, _, what = kind.partition(": ")
        if what in ("connection", "connected"):
            self.connections[service] += n
        elif what == "authentication failed":
            self.authFailures[service] += n
        elif what == "cut off (too slow reading)":
            self.refusals[service, "too-slow"] += n
        elif what.startswith("refused (") and what.endswith(")"):
            # "refused (auth-failed)", "refused (server full)": the code, in one word
            self.refusals[service, what[len("refused (") : -1].replace(" ", "-")] += n


#: The format strings of the events counted (as the services write them; the
#: end-to-end test in tests/test_metrics_e2e.py fails when one changes).
EVENT_FORMATS: Final[Mapping[str, Callable[[EventCounts, LogEvent], None]]] = {
    "{service}: connection from {peer}": EventCounts._connection,
    "chat: {peer} connected as {nick}": EventCounts._connection,
    "{service}: authentication failed from {peer}: {why}": EventCounts._authFailed,
    "{service}: refused {peer}: {code}: {message}": EventCounts._refused,
    "chat: refused {peer}: server full ({why})": EventCounts._chatFull,
    "chat: {peer} ({nick}) cut off: more than {limit} bytes of output left unread": (
        EventCounts._chatCutOff
    ),
    "web: refused {peer}: origin {origin} is not allowed (--web-origins)": EventCounts._webOrigin,
    "web: refused {peer}: {why} (--chat-max-clients, --chat-max-per-address)": (
        EventCounts._webFull
    ),
    "{service}: {peer} authenticated as {user}": EventCounts._authenticated,
    "{service}: {peer} disconnected ({user})": EventCounts._disconnected,
    "upload: {peer} ({user}) stored {name} ({size} bytes, sha256 {sha256})": EventCounts._stored,
    "upload: {peer} ({user}) {what} {name} ({size} bytes from {offset})": EventCounts._transfer,
    "upload: {peer} left during {name} at {received} of {size} bytes ({what})": EventCounts._left,
    "upload: {peer} was sent {sent} bytes of data ({how})": EventCounts._downloadSent,
    SUMMARY_FORMAT: EventCounts._summary,
}
EventCounts.formats.update(EVENT_FORMATS)


def exitOutcome(key: tuple[Any, ...] | None) -> str:
    """How a command ended, from ``ExecFactory.exits``'s key ``(code, signal, timed_out)``:
    ``success``, ``failure`` (a non-zero code), ``signal``, ``timeout`` or ``unknown``."""
    if key is None or len(key) != 3:
        return "unknown"
    code, signal, timedOut = key
    if timedOut:
        return "timeout"
    if signal is not None:
        return "signal"
    return "success" if code == 0 else "failure"


@dataclass
class Families:
    """The metric families of one scrape, built from a snapshot."""

    families: dict[str, Metric] = field(default_factory=dict)

    def counter(
        self, name: str, doc: str, labels: Iterable[str], values: Mapping[Any, int]
    ) -> None:
        family = CounterMetricFamily(name, doc, labels=list(labels))
        for key, value in sorted(values.items()):
            family.add_metric(list(key) if isinstance(key, tuple) else [key], value)
        self.families[name] = family

    def gauge(self, name: str, doc: str, values: Mapping[str, int]) -> None:
        family = GaugeMetricFamily(name, doc, labels=["service"])
        for service, value in sorted(values.items()):
            family.add_metric([service], value)
        self.families[name] = family


def collect(counts: EventCounts, services: Iterable[ListeningService]) -> list[Metric]:
    """Every family of PROTOCOL.md section 8, from ``counts`` and the services' state.

    Call it on the reactor thread (it reads the services' live state).
    """
    # exec's factory class, if exec is loaded: a server without exec never imports it.
    execServer = sys.modules.get("netproto.exec.server")
    execFactory = execServer.ExecFactory if execServer is not None else ()

    chatLines: Counter[str] = Counter()
    chatBytes: Counter[str] = Counter()
    rooms: Counter[str] = Counter()
    members: Counter[str] = Counter()
    openConnections: Counter[str] = Counter()
    running: Counter[str] = Counter()
    exits: Counter[tuple[str, str]] = Counter()
    for service in services:
        name, built = service.service.name, service.built
        if isinstance(built, ChatFactory):
            chatLines[name] += built.lines
            chatBytes[name] += built.lineBytes
            rooms[name] += len(built.server.rooms)
            members[name] += len(built.server.nicks)
            openConnections[name] += built.clients
        elif service.service.kind == "stream":
            openConnections[name] += max(
                0, counts.sessionsOpened[name] - counts.sessionsClosed[name]
            )
        if isinstance(built, execFactory):
            running[name] += len(built.commands)
            for key, value in built.exits.items():
                exits[name, exitOutcome(key)] += value
    started: Counter[str] = Counter(running)
    for (name, _), value in exits.items():
        started[name] += value
    failures = Counter(
        {
            (name, code): value
            for (name, code), value in counts.refusals.items()
            if name == "upload" and code in UPLOAD_FAILURE_CODES
        }
    )
    for name, value in counts.uploadsLeft.items():
        failures[name, CLIENT_LEFT] += value

    out = Families()
    info = InfoMetricFamily("netproto_build", "The netproto release serving.")
    info.add_metric([], {"version": netproto.__version__})
    out.families[info.name] = info
    SERVICE = ("service",)
    out.counter(
        "netproto_connections",
        "Connections accepted (chat: connections let in; framed: every connection).",
        SERVICE,
        counts.connections,
    )
    out.gauge(
        "netproto_connections_open",
        "Open connections (chat: members' connections; exec, upload: authenticated sessions).",
        openConnections,
    )
    out.counter(
        "netproto_auth_failures", "Failed logins of framed services.", SERVICE, counts.authFailures
    )
    out.counter(
        "netproto_refusals",
        "Refusals by code: framed E codes; chat server-full and too-slow (cut off).",
        ("service", "code"),
        counts.refusals,
    )
    out.gauge("netproto_chat_rooms", "Chat rooms (a room exists while it has members).", rooms)
    out.gauge("netproto_chat_members", "Chat members (every nick in use).", members)
    out.counter(
        "netproto_chat_lines", "Lines taken from chat clients (messages and commands).", SERVICE,
        chatLines,
    )  # fmt: skip
    out.counter("netproto_chat_line_bytes", "Bytes of those lines.", SERVICE, chatBytes)
    out.counter("netproto_exec_commands_started", "Commands started.", SERVICE, started)
    out.gauge("netproto_exec_commands_running", "Commands running now.", running)
    out.counter(
        "netproto_exec_command_exits",
        "Commands ended, by outcome: success, failure (non-zero code), signal, timeout.",
        ("service", "outcome"),
        exits,
    )
    out.counter("netproto_uploads", "Files stored.", SERVICE, counts.uploads)
    out.counter("netproto_upload_bytes", "Bytes of the files stored.", SERVICE, counts.uploadBytes)
    out.counter(
        "netproto_upload_failures",
        "Files not stored, by reason: the refusal's code, or client-left.",
        ("service", "reason"),
        failures,
    )
    out.counter("netproto_downloads", "Downloads started (G).", SERVICE, counts.downloads)
    out.counter(
        "netproto_download_bytes",
        "Bytes of data the downloads sent (a download cut short counts what it sent).",
        SERVICE,
        counts.downloadBytes,
    )
    return list(out.families.values())


class NetprotoCollector(Collector):
    """The prometheus_client collector of one server: :func:`collect` at each scrape.

    :param services: the server's services, read at each scrape (a plain
        iterable of :class:`~netproto.services.ListeningService` and others).
    """

    def __init__(self, counts: EventCounts, services: Iterable[Any]) -> None:
        self.counts = counts
        self.services = services

    def collect(self) -> Iterator[Metric]:
        listening = [s for s in self.services if isinstance(s, ListeningService)]
        yield from collect(self.counts, listening)


#: Seconds an idle HTTP connection to the metrics endpoint stays open.
#: Prometheus keeps its connection between scrapes (15 s by default, 60 s at
#: most in practice); anything that opens one and goes quiet is closed within
#: a minute instead of twisted.web's default of 12 hours.
SCRAPE_IDLE_TIMEOUT: Final = 60


class MetricsRequest(http.Request):
    """``GET /metrics``: the registry, in the format the scraper's ``Accept`` asks
    for (Prometheus text, or OpenMetrics), rendered on the reactor thread; any
    other path is 404."""

    def __init__(self, *args: Any, registry: CollectorRegistry, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.registry = registry

    def process(self) -> None:
        if self.path.split(b"?", 1)[0] != b"/" + METRICS_PATH:
            self.setResponseCode(http.NOT_FOUND)
            self.finish()
            return
        encode, contentType = choose_encoder(self.getHeader("accept") or "")
        self.setHeader(b"Content-Type", contentType.encode())
        self.write(encode(self.registry))
        self.finish()


class MetricsFactory(http.HTTPFactory):
    """twisted.web's HTTP protocol serving :class:`MetricsRequest` only. Not a
    ``Site`` with resources: ``twisted.web.server`` would add 3 MB to the
    server's memory (2.5 MB more than ``twisted.web.http``) for one page.
    Logs no line per request (no access log file)."""

    noisy = False

    def __init__(self, registry: CollectorRegistry, reactor: Any) -> None:
        super().__init__(timeout=SCRAPE_IDLE_TIMEOUT, reactor=reactor)
        self.registry = registry

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        channel.requestFactory = partial(MetricsRequest, registry=self.registry)  # type: ignore[union-attr]
        return channel


@implementer(INetprotoService)
@dataclass(frozen=True)
class MetricsEndpoint:
    """The metrics listener, shaped as a service so :class:`ListeningService`
    serves it (and logs ``netproto: metrics listening on ADDRESS``)."""

    registry: CollectorRegistry
    name: str = "metrics"
    description: str = "Prometheus text exposition at /metrics"
    defaultEndpoint: str = "none"
    kind: str = "stream"
    enabledByDefault: bool = False
    optParameters: tuple[Any, ...] = ()
    optFlags: tuple[Any, ...] = ()
    client: None = None
    moreClients: Mapping[str, Any] = field(default_factory=dict)
    #: Plain HTTP even with --tls: the numbers carry no credential, and a
    #: scraper would have to pin the self-signed certificate.
    tls: bool = False
    #: Its endpoint is among those netproto.tap checks; prometheus_client needs no pyOpenSSL.
    usesOpenSSL: None = None

    def build(self, context: ServerContext) -> MetricsFactory:
        return MetricsFactory(self.registry, context.reactor)


class ObserverService(Service):
    """Keeps ``observer`` on the global log publisher while running."""

    def __init__(self, observer: ILogObserver) -> None:
        self.observer = observer

    def startService(self) -> None:
        super().startService()
        globalLogPublisher.addObserver(self.observer)

    def stopService(self) -> None:
        globalLogPublisher.removeObserver(self.observer)
        return super().stopService()  # type: ignore[no-any-return]


def metricsService(description: str, top: MultiService, context: ServerContext) -> MultiService:
    """What ``--metrics DESCRIPTION`` adds to ``top``: the event counter and the listener."""
    counts = EventCounts()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NetprotoCollector(counts, top))
    # process_*: RSS, open descriptors and their limit, CPU, start time (read from /proc).
    ProcessCollector(registry=registry)
    metrics = MultiService()
    metrics.setName("metrics")
    ObserverService(counts).setServiceParent(metrics)
    ListeningService(MetricsEndpoint(registry), description, context).setServiceParent(metrics)
    return metrics


__all__ = ["METRICS_PATH", "EventCounts", "collect", "exitOutcome", "metricsService"]
