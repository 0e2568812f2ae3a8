"""The service plugin API: what a netproto service is, how it is found and served.

A service is any object providing :class:`INetprotoService`, placed in a
module of a ``netproto/plugins/`` folder anywhere on ``sys.path`` (see
``docs/extending.md``). chat, exec and upload are registered exactly like a
third-party service. ``twistd netproto`` serves every service whose
``enabledByDefault`` is true on its ``--NAME`` endpoint, and any other with
``--service NAME=ENDPOINT``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from twisted.application.service import IService, Service
from twisted.cred.credentials import ICredentials
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.plugin import IPlugin, getPlugins
from twisted.python.failure import Failure
from twisted.python.reflect import namedAny
from zope.interface import Attribute, Interface, implementer

from netproto.addresses import describeAddress
from netproto.auth import IUser

Kind = Literal["stream", "datagram"]


@dataclass
class ServerContext:
    """What every service of one server shares.

    :ivar reactor: the reactor (inject a fake one in tests).
    :ivar portal: the ``twisted.cred`` portal of the framed services.
    :ivar authMethods: the methods the hello offers (``token``, ``password``).
    :ivar dataDir: server state, e.g. the token.
    :ivar uploadDir: where uploads land.
    :ivar options: every parsed ``twistd netproto`` option, by long name
        (``chat-history``, ``exec-timeout``, ...), so a service reads its own.
    """

    reactor: Any
    portal: Portal
    authMethods: tuple[str, ...]
    dataDir: Path
    uploadDir: Path
    options: Mapping[str, Any] = field(default_factory=dict)

    def login(self, credentials: ICredentials) -> Deferred[IUser]:
        """Check ``credentials``; fires with the :class:`IUser` avatar."""
        d: Deferred[tuple[Any, Any, Any]] = self.portal.login(credentials, None, IUser)

        def avatar(result: tuple[Any, Any, Any]) -> IUser:
            user: IUser = result[1]
            return user

        return d.addCallback(avatar)


class INetprotoService(Interface):
    """A protocol service that ``twistd netproto`` can serve."""

    name = Attribute("str: the service's name: ``--NAME`` and ``--service NAME=...``")
    description = Attribute("str: one line for ``--list-services``")
    defaultEndpoint = Attribute(
        "str: the server endpoint description used when none is given, "
        "e.g. ``tcp:8000:interface=127.0.0.1`` or, for datagrams, ``udp:9000``"
    )
    kind = Attribute("``'stream'`` (TCP, TLS, UNIX: any endpoint) or ``'datagram'`` (UDP)")
    enabledByDefault = Attribute(
        "bool: served unless disabled (``--NAME none``); otherwise only with ``--service``"
    )
    optParameters = Attribute(
        "list of ``[long, short, default, doc, coerce]`` options this service adds "
        "to ``twistd netproto``; long names should start with the service name"
    )
    optFlags = Attribute("list of ``[long, short, doc]`` flags this service adds")

    def build(context: ServerContext) -> IProtocolFactory | DatagramProtocol:
        """A protocol factory (stream) or a datagram protocol (datagram) to serve."""


@implementer(IPlugin, INetprotoService)
@dataclass(frozen=True)
class LazyService:
    """A service declared by name, its code imported only when it is served.

    ``builder`` names a callable ``(ServerContext) -> factory or protocol``, as
    ``"package.module.function"``; keeping the import lazy keeps ``twistd
    --help`` and ``--list-services`` fast. Put one of these in a module of a
    ``netproto/plugins/`` folder to add a service.
    """

    name: str
    description: str
    defaultEndpoint: str
    builder: str
    kind: Kind = "stream"
    enabledByDefault: bool = False
    optParameters: Sequence[Sequence[Any]] = ()
    optFlags: Sequence[Sequence[Any]] = ()

    def build(self, context: ServerContext) -> IProtocolFactory | DatagramProtocol:
        built: IProtocolFactory | DatagramProtocol = namedAny(self.builder)(context)
        return built


class ServiceError(Exception):
    """A service cannot be set up as asked; the message is for the operator."""


def discoverServices() -> dict[str, INetprotoService]:
    """Every service plugin on ``sys.path``, by name, built-ins included."""
    import netproto.plugins

    found: dict[str, INetprotoService] = {}
    for plugin in getPlugins(INetprotoService, netproto.plugins):
        if plugin.name in found:
            raise ServiceError(f"two service plugins are named {plugin.name!r}")
        found[plugin.name] = plugin
    return dict(sorted(found.items()))


def parseDatagramEndpoint(description: str) -> tuple[int, str]:
    """``udp:PORT[:interface=ADDR]`` as ``(port, interface)``.

    Twisted has no endpoint strings for datagrams; this is the same syntax as
    its ``tcp:`` endpoint, limited to what ``listenUDP`` takes.
    """
    kind, _, rest = description.partition(":")
    parts = rest.split(":") if rest else []
    if kind != "udp" or not parts:
        raise ServiceError(f"datagram endpoint {description!r}: expected udp:PORT[:interface=ADDR]")
    port, interface = parts[0], ""
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if key != "interface" or not sep:
            raise ServiceError(f"datagram endpoint {description!r}: unknown option {part!r}")
        interface = value
    if port.startswith("port="):
        port = port[5:]
    if not port.isdigit() or int(port) > 65535:
        raise ServiceError(f"datagram endpoint {description!r}: bad port {port!r}")
    return int(port), interface


@implementer(IService)
class ListeningService(Service):
    """Listens on one endpoint while running; logs where.

    Like ``StreamServerEndpointService``, but for datagrams too, and it logs
    the bound address, so port 0 is usable (tests read the log line). A
    failure to listen at startup ends ``twistd`` with that reason in one line.
    """

    log = Logger()

    def __init__(self, service: INetprotoService, description: str, context: ServerContext) -> None:
        self.service = service
        self.description = description
        self.context = context
        self.port: IListeningPort | None = None
        self.setName(f"{service.name} on {description}")

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if self.port is not None:
            return
        try:
            built = self.service.build(self.context)
        except ServiceError as e:
            # An operator's mistake the options could not catch: one line, exit 1.
            raise SystemExit(f"netproto: cannot serve {self.service.name}: {e}") from None
        if self.service.kind == "datagram":
            portNumber, interface = parseDatagramEndpoint(self.description)
            self.port = self.context.reactor.listenUDP(portNumber, built, interface=interface)
        else:
            endpoint = serverFromString(self.context.reactor, self.description)
            failures: list[Failure] = []
            d = endpoint.listen(built)
            d.addCallback(self._listening)
            d.addErrback(failures.append)
            if failures:
                # One line for the operator, not a traceback; twistd exits with status 1.
                raise SystemExit(
                    f"netproto: cannot serve {self.service.name} on {self.description}: "
                    f"{failures[0].getErrorMessage()}"
                )
            return
        self._listening(self.port)

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        self.log.info(
            "netproto: {service} listening on {address} ({description})",
            service=self.service.name,
            address=describeAddress(port.getHost()),
            description=self.description,
        )

    def startService(self) -> None:
        super().startService()
        self.privilegedStartService()

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        port, self.port = self.port, None
        if port is None:
            return None
        stopped: Deferred[None] | None = port.stopListening()
        return stopped


def makeServices(
    services: Mapping[str, INetprotoService],
    endpoints: Iterable[tuple[str, str]],
    context: ServerContext,
) -> Sequence[ListeningService]:
    """One :class:`ListeningService` per ``(service name, endpoint description)``."""
    made = []
    for name, description in endpoints:
        if name not in services:
            known = ", ".join(services) or "none"
            raise ServiceError(f"unknown service {name!r} (known: {known})")
        made.append(ListeningService(services[name], description, context))
    return made
