"""``twistd netproto``: its options and the service tree it builds.

Every option is checked in ``postOptions``, so a mistake (a bad endpoint, an
unknown service, an unreadable users file) is one line from twistd and exit
status 1, never a traceback.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from twisted.application.service import IServiceCollection, MultiService
from twisted.logger import Logger
from twisted.python import usage

from netproto.auth import AuthSetupError, makePortal
from netproto.framing import (
    DEFAULT_FRAME_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_UNAUTHENTICATED_PER_HOST,
)
from netproto.jsonlog import checkTwistdOptions, jsonLogged, logFormat
from netproto.options import count, defaultDataDir, seconds, streamEndpoint
from netproto.runtime import HandOver, RunAs, plannedDrop, raiseFileLimit, tuneAllocator
from netproto.services import (
    INetprotoService,
    ServerContext,
    ServiceError,
    discoverServices,
    makeServices,
    mayUseOpenSSL,
    parseDatagramEndpoint,
)
from netproto.tls import CertificateError, ServerCertificate, loadOrCreate
from netproto.tlsimports import keepOpenSSLOut, plainEndpoint

log = Logger()

DISABLED = "none"


class ServerOptions(usage.Options):
    """Options of ``twistd netproto``; :func:`Options` adds the services' own."""

    synopsis = "[options]"
    longdesc = (
        "Serve netproto's chat, exec and upload services, and any service plugin "
        "asked for with --service. Endpoints are Twisted server endpoint "
        "descriptions (tcp:8000:interface=0.0.0.0, ssl:8443:privateKey=..., "
        "unix:/run/netproto/chat.sock); 'none' disables a service."
    )
    optFlags = [
        ["list-services", None, "List the service plugins found, then exit."],
        [
            "tls",
            None,
            "Serve exec, upload (every service that takes the token) and services declared "
            "for it over TLS, with a self-signed certificate made once in the data dir; "
            "its SHA-256 fingerprint is logged for clients to pin.",
        ],
        [
            "allow-plaintext",
            None,
            "Let a service that takes the token listen in plaintext on a non-loopback "
            "address (refused otherwise: the token would cross the network in clear).",
        ],
    ]
    optParameters = [
        [
            "data-dir",
            None,
            None,
            "Server state (the token). [default: $NETPROTO_HOME, "
            "$XDG_DATA_HOME/netproto or ~/.local/share/netproto]",
        ],
        [
            "users",
            None,
            None,
            "Users file (NAME:HASH lines from `netproto passwd`); "
            "with it, exec and upload take passwords instead of the token.",
        ],
        [
            "frame-timeout",
            None,
            DEFAULT_FRAME_TIMEOUT,
            "Seconds a frame of a framed service (exec, upload) may take to arrive whole "
            "once its first byte has; a peer trickling a frame gets E timeout. 0: no limit.",
            seconds,
        ],
        [
            "idle-timeout",
            None,
            DEFAULT_IDLE_TIMEOUT,
            "Seconds an authenticated exec or upload connection may stay idle (no frame, "
            "no command running, no upload being written) before it gets E timeout. 0: no limit.",
            seconds,
        ],
        [
            "max-unauthenticated-per-host",
            None,
            DEFAULT_MAX_UNAUTHENTICATED_PER_HOST,
            "Connections from one IP address to a framed service (exec, upload) that may be "
            "not yet authenticated at once; past it, E busy and a close. 0: no cap.",
            count,
        ],
        [
            "metrics",
            None,
            DISABLED,
            "Endpoint serving Prometheus metrics at /metrics (e.g. tcp:9100:interface=127.0.0.1); "
            "'none': not served. See docs/operations.md, Metrics.",
            streamEndpoint,
        ],
        [
            "log-format",
            None,
            "text",
            "text, or json: one JSON object a line for log shippers, written where "
            "twistd's --logfile says. See docs/operations.md, JSON logs.",
            logFormat,
        ],
    ]

    services: dict[str, INetprotoService] = {}

    def __init__(self) -> None:
        super().__init__()
        self["service"] = []
        self.endpoints: list[tuple[str, str]] = []
        self.context: ServerContext | None = None
        self.tokenPath: Path | None = None
        self.certificate: ServerCertificate | None = None
        #: The user twistd runs the server as once its ports are bound (--uid as root).
        self.runAs: RunAs | None = None

    def opt_service(self, value: str) -> None:
        """Serve a plugin service: NAME=ENDPOINT, or NAME for its default endpoint. Repeatable."""
        self["service"].append(value)

    def postOptions(self) -> None:
        if self["list-services"]:
            print(self.listServices())  # noqa: T201 - the output asked for
            raise SystemExit(0)
        endpoints: list[tuple[str, str]] = []
        for name, service in self.services.items():
            if service.enabledByDefault and self[name] != DISABLED:
                endpoints.append((name, self[name]))
        for value in self["service"]:
            name, sep, description = value.partition("=")
            if name not in self.services:
                raise usage.UsageError(
                    f"--service {value}: no service named {name!r} "
                    f"(found: {', '.join(self.services)}; see --list-services)"
                )
            endpoints.append((name, description if sep else self.services[name].defaultEndpoint))
        if not self.usesOpenSSL(endpoints):
            keepOpenSSLOut()  # before the reactor's import below: 13 MiB less
        for name, description in endpoints:
            self._checkEndpoint(name, description)
        self.endpoints = endpoints
        if self["log-format"] == "json":
            try:
                checkTwistdOptions(getattr(self, "parent", None))
            except ValueError as e:
                raise usage.UsageError(str(e)) from None
        dataDir = Path(self["data-dir"]) if self["data-dir"] else defaultDataDir()
        try:
            dataDir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise usage.UsageError(f"--data-dir {dataDir}: {e.strerror}") from None
        from twisted.internet import reactor

        try:
            portal, methods, tokenPath = makePortal(
                dataDir, Path(self["users"]) if self["users"] else None, reactor
            )
        except AuthSetupError as e:
            raise usage.UsageError(str(e)) from None
        self.tokenPath = tokenPath
        self.runAs = plannedDrop(getattr(self, "parent", None))  # twistd's --uid, --gid
        if self["tls"]:
            try:
                self.certificate = loadOrCreate(dataDir)
            except CertificateError as e:
                raise usage.UsageError(f"--tls: {e}") from None
        self.context = ServerContext(
            reactor=reactor,
            portal=portal,
            authMethods=methods,
            dataDir=dataDir,
            options=dict(self),
            tls=self.certificate.contextFactory() if self.certificate else None,
            runAs=self.runAs,
        )

    def usesOpenSSL(self, endpoints: Sequence[tuple[str, str]]) -> bool:
        """Whether serving ``endpoints`` with these options may use pyOpenSSL:
        ``--tls``, an endpoint that is not plain TCP, UNIX or systemd (``ssl:``,
        an endpoint plugin), or a service that declares it may."""
        served = [self["metrics"]] if self["metrics"] != DISABLED else []
        served += [description for _, description in endpoints]
        return (
            bool(self["tls"])
            or not all(plainEndpoint(description) for description in served)
            or any(mayUseOpenSSL(self.services[name], self) for name, _ in endpoints)
        )

    def _checkEndpoint(self, name: str, description: str) -> None:
        from twisted.internet import reactor
        from twisted.internet.endpoints import serverFromString

        try:
            if self.services[name].kind == "datagram":
                parseDatagramEndpoint(description)
            else:
                serverFromString(reactor, description)
        except (ValueError, TypeError, KeyError, ServiceError) as e:
            raise usage.UsageError(f"{name} endpoint {description!r}: {e}") from None
        except IndexError:  # systemd:...:index=N beyond the sockets passed
            raise usage.UsageError(
                f"{name} endpoint {description!r}: no such socket passed by systemd "
                "(LISTEN_FDS, with LISTEN_FDNAMES as systemd sets them)"
            ) from None

    def listServices(self) -> str:
        lines = []
        for name, service in self.services.items():
            how = f"--{name}" if service.enabledByDefault else f"--service {name}=ENDPOINT"
            lines.append(
                f"{name:12} {service.kind:8} {service.defaultEndpoint:32} {how}\n"
                f"{'':12} {service.description}"
            )
        return "\n".join(lines)


def optionsFor(services: Mapping[str, INetprotoService]) -> type[ServerOptions]:
    """A :class:`ServerOptions` subclass with every service's endpoint and options."""
    parameters: list[Sequence[Any]] = []
    flags: list[Sequence[Any]] = []
    for name, service in services.items():
        if service.enabledByDefault:
            parameters.append(
                [name, None, service.defaultEndpoint, f"Endpoint of {name} ('none' disables it)."]
            )
        parameters.extend(list(p) for p in service.optParameters)
        flags.extend(list(f) for f in service.optFlags)
    return type(
        "Options",
        (ServerOptions,),
        {"optParameters": parameters, "optFlags": flags, "services": dict(services)},
    )


def Options() -> ServerOptions:
    """What twistd instantiates: plugin discovery happens here, not at import."""
    try:
        services = discoverServices()
    except ServiceError as e:
        raise usage.UsageError(str(e)) from None
    return optionsFor(services)()


def makeService(options: ServerOptions) -> IServiceCollection:
    """A ``MultiService`` with one listening service per endpoint."""
    assert options.context is not None, "postOptions has run"
    raiseFileLimit()
    tuneAllocator()
    top = MultiService()
    for child in makeServices(options.services, options.endpoints, options.context):
        child.setServiceParent(top)
    if options.runAs is not None:  # last: once the others made their files as root
        HandOver(options.context.dataDir, options.runAs).setServiceParent(top)
    if options.tokenPath is not None:
        log.info(
            "netproto: token in {path} (the bundled client reads it from there)",
            path=str(options.tokenPath),
        )
    if options.certificate is not None:
        log.info(
            "netproto: TLS certificate {path}, fingerprint {fingerprint} "
            "(clients pin it: netproto ... --fingerprint {fingerprint})",
            path=str(options.certificate.certPath),
            fingerprint=options.certificate.fingerprint,
        )
    if options["metrics"] != DISABLED:
        from netproto.metrics import metricsService  # prometheus_client only when asked

        metricsService(options["metrics"], top, options.context).setServiceParent(top)
    if not options.endpoints:
        log.warn("netproto: every service is disabled; nothing to serve")
    reactor = options.context.reactor
    from netproto.status import installStatusSignal  # SIGUSR1 logs a status line

    installStatusSignal(top, reactor)
    # Once the loop turns, signal handlers are installed: SIGTERM now means a
    # clean shutdown. Supervisors and tests wait for this line.
    reactor.callWhenRunning(
        reactor.callLater,
        0,
        log.info,
        "netproto: ready ({count} endpoints)",
        count=len(options.endpoints),
    )
    if options["log-format"] == "json":
        return jsonLogged(top, getattr(options, "parent", None), options.services)
    return top
