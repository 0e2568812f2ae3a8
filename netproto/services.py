"""The service plugin API: what a netproto service is, how it is found and served.

A service is any object providing :class:`INetprotoService`, placed in a
module of a ``netproto/plugins/`` folder anywhere on ``sys.path`` (see
``docs/extending.md``). chat, exec and upload are registered exactly like a
third-party service. ``twistd netproto`` serves every service whose
``enabledByDefault`` is true on its ``--NAME`` endpoint, and any other with
``--service NAME=ENDPOINT``. A service may also bring a ``netproto NAME``
client subcommand (:class:`ClientCommand`).
"""

from __future__ import annotations

import atexit
import ipaddress
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from twisted.application.service import IService, Service
from twisted.cred.credentials import ICredentials
from twisted.cred.portal import Portal
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.plugin import IPlugin, getPlugins
from twisted.python.failure import Failure
from twisted.python.reflect import namedAny
from zope.interface import Attribute, Interface, implementer

from netproto.addresses import describeAddress
from netproto.auth import IUser
from netproto.logsummary import RepeatSummary, summarizeAcceptErrors

Kind = Literal["stream", "datagram"]


@dataclass
class ServerContext:
    """What every service of one server shares.

    :ivar reactor: the reactor (inject a fake one in tests).
    :ivar portal: the ``twisted.cred`` portal of the framed services.
    :ivar authMethods: the methods the hello offers (``token``, ``password``).
    :ivar dataDir: server state, e.g. the token; a service keeps its own
        state in a directory of its own option, defaulting to one under here.
    :ivar options: every parsed ``twistd netproto`` option, by long name
        (``chat-history``, ``exec-timeout``, ...), so a service reads its own
        (:meth:`optionsOf` fills in the declared defaults).
    :ivar tls: with ``--tls``, the server's TLS options (an
        ``IOpenSSLServerConnectionCreator``, :mod:`netproto.tls`): the services
        that take TLS (:func:`takesTLS`) are served over it on any stream endpoint.
    :ivar runAs: the user (a :class:`netproto.runtime.RunAs`) the server runs as
        once its ports are bound, when it starts as root and twistd drops root
        (``--uid``); None when it stays who it is. Services build as root: what
        they make for later use must be for this user (exec's commands run as it).
    """

    reactor: Any
    portal: Portal
    authMethods: tuple[str, ...]
    dataDir: Path
    options: Mapping[str, Any] = field(default_factory=dict)
    tls: Any = None
    runAs: Any = None
    #: Objects several services of one server use, by name (see :meth:`shared`).
    sharedObjects: dict[str, Any] = field(default_factory=dict)

    def optionsOf(self, service: INetprotoService) -> dict[str, Any]:
        """``service``'s own options: those given, the declared defaults for the rest.

        ``twistd netproto`` passes every option; a test or an embedding
        program may pass only some. Either way the service reads each value
        from here, so its defaults are written once, in its declaration.
        """
        declared = declaredDefaults(service)
        return declared | {k: self.options[k] for k in declared if k in self.options}

    def login(self, credentials: ICredentials) -> Deferred[IUser]:
        """Check ``credentials``; fires with the :class:`IUser` avatar."""
        d: Deferred[tuple[Any, Any, Any]] = self.portal.login(credentials, None, IUser)

        def avatar(result: tuple[Any, Any, Any]) -> IUser:
            user: IUser = result[1]
            return user

        return d.addCallback(avatar)

    def shared(self, key: str, make: Callable[[], Any]) -> Any:
        """The object of this server known as ``key``, made by ``make`` the first time.

        Whichever service is built first makes it, so services that share state
        need no order: the chat's factory (``"chat"``) is the chat listener's and
        the web service's, whose browser members join the same chat.
        """
        if key not in self.sharedObjects:
            self.sharedObjects[key] = make()
        return self.sharedObjects[key]


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
    client = Attribute(
        "ClientCommand or None: the ``netproto NAME`` subcommand this service brings. "
        "Optional: a service without this attribute has none."
    )
    moreClients = Attribute(
        "mapping of name to ClientCommand: more ``netproto`` subcommands the service "
        "brings besides ``netproto NAME`` (upload's ``ls`` and ``download``). Optional."
    )
    tls = Attribute(
        "bool or None: whether ``--tls`` serves this service over TLS. Optional: None "
        "or absent means yes for framed services (they carry the token), no for others."
    )
    usesOpenSSL = Attribute(
        "callable taking the parsed options (a mapping) and returning whether this "
        "service, served with them, may import pyOpenSSL (TLS of its own, a client "
        "library that imports it). Optional: None or absent means it may. When no "
        "served service may and nothing else asks for TLS, ``twistd netproto`` keeps "
        "pyOpenSSL out of the process (:mod:`netproto.tlsimports`)."
    )

    def build(context: ServerContext) -> IProtocolFactory | DatagramProtocol:
        """A protocol factory (stream) or a datagram protocol (datagram) to serve."""


@dataclass(frozen=True)
class ClientCommand:
    """A ``netproto`` subcommand a service brings, named like the service.

    ``module`` is imported only when its subcommand is run (``netproto
    --help`` reads just ``help``). It provides ``configure(parser)``, which
    adds the subcommand's arguments to its ``argparse`` parser, and ``async
    run(reactor, args) -> int``, the exit status; optionally ``prepare(args)``,
    called before the reactor starts (prompts, checks of local files). A
    failure the user should read is a
    :class:`~netproto.client.framed.ClientError`: one line on stderr.

    :ivar module: dotted name of that module.
    :ivar help: one line of plain text for ``netproto --help``.
    """

    module: str
    help: str


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
    client: ClientCommand | None = None
    moreClients: Mapping[str, ClientCommand] = field(default_factory=dict)
    tls: bool | None = None
    usesOpenSSL: Callable[[Mapping[str, Any]], bool] | None = None

    def build(self, context: ServerContext) -> IProtocolFactory | DatagramProtocol:
        built: IProtocolFactory | DatagramProtocol = namedAny(self.builder)(context)
        return built


def never(options: Mapping[str, Any]) -> bool:
    """A service's :attr:`~INetprotoService.usesOpenSSL` when nothing it does imports pyOpenSSL."""
    return False


def mayUseOpenSSL(service: INetprotoService, options: Mapping[str, Any]) -> bool:
    """Whether ``service``, served with ``options``, may import pyOpenSSL
    (see :attr:`INetprotoService.usesOpenSSL`)."""
    declared = getattr(service, "usesOpenSSL", None)
    return declared is None or bool(declared(options))


class ServiceError(Exception):
    """A service cannot be set up as asked; the message is for the operator."""


def declaredDefaults(service: INetprotoService) -> dict[str, Any]:
    """``service``'s own options at their declared defaults, coerced as
    ``twistd netproto`` passes them (flags are 0)."""
    options: dict[str, Any] = {}
    for parameter in service.optParameters:
        long, default = parameter[0], parameter[2]
        coerce = parameter[4] if len(parameter) > 4 else None
        options[long] = coerce(default) if coerce is not None and default is not None else default
    for flag in service.optFlags:
        options[flag[0]] = 0
    return options


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


def _exitFailed() -> None:
    """The last word of a server whose startup failed late: exit status 1."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


def endServer(reactor: Any, reason: str) -> None:
    """End the server because it cannot serve what it was asked to: ``reason``
    is logged in one line, the reactor stops, and once twistd has cleaned up
    (pid file, log) the process exits with status 1, as it does for a failure
    found before the reactor ran. twistd itself has no way to set the status
    of a run that stopped, hence the exit handler.
    """
    ListeningService.log.critical("{reason}", reason=reason)
    atexit.register(_exitFailed)
    reactor.callWhenRunning(reactor.stop)


@implementer(IService)
class ListeningService(Service):
    """Listens on one endpoint while running; logs where.

    Like ``StreamServerEndpointService``, but for datagrams too, and it logs
    the bound address, so port 0 is usable (tests read the log line). A
    failure to listen ends ``twistd`` with that reason in one line and exit
    status 1: at once when the endpoint fails while starting (``SystemExit``),
    through ``fatal`` when its ``listen`` Deferred fails later (an endpoint
    that resolves a name or waits for a system service first).

    :param fatal: called with the reason of a late failure; by default
        :func:`endServer`. Tests pass their own.
    """

    log = Logger()

    def __init__(
        self,
        service: INetprotoService,
        description: str,
        context: ServerContext,
        fatal: Callable[[str], None] | None = None,
    ) -> None:
        self.service = service
        self.description = description
        self.context = context
        self.fatal = (
            fatal if fatal is not None else lambda reason: endServer(context.reactor, reason)
        )
        self.port: IListeningPort | None = None
        #: What ``service.build`` made, once started (``--metrics`` reads its state).
        self.built: IProtocolFactory | DatagramProtocol | None = None
        self._waiting: Deferred[None] | None = None
        self._starting, self._startFailure = False, ""
        #: Whether ``--tls`` wraps this service in TLS (see :func:`takesTLS`).
        self.wrapped = False
        #: Whether it carries credentials without TLS: then only on loopback,
        #: unless ``--allow-plaintext`` (the plaintext guard).
        self.inClear = False
        #: Twisted's own lines about connections it could not accept (at the
        #: open-file limit, one flood of lines per refused connection), summarised.
        self.acceptErrors = RepeatSummary(self.log, clock=context.reactor)
        self.setName(f"{service.name} on {description}")

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if self.port is not None or self._waiting is not None:
            return
        try:
            built = self.service.build(self.context)
        except ServiceError as e:
            # An operator's mistake the options could not catch: one line, exit 1.
            raise SystemExit(f"netproto: cannot serve {self.service.name}: {e}") from None
        self.built = built
        if self.service.kind == "datagram":
            portNumber, interface = parseDatagramEndpoint(self.description)
            self._listening(self.context.reactor.listenUDP(portNumber, built, interface=interface))
            return
        # Here, not with this module: endpoints imports pyOpenSSL when it can (netproto.tlsimports).
        from twisted.internet.endpoints import SSL4ServerEndpoint, serverFromString

        endpoint = serverFromString(self.context.reactor, self.description)
        served = built
        tls = self.context.tls
        # An ssl: endpoint is TLS already, as its description configures it.
        if tls and takesTLS(self.service, built) and not isinstance(endpoint, SSL4ServerEndpoint):
            from twisted.protocols.tls import TLSMemoryBIOFactory  # OpenSSL only when used

            served = TLSMemoryBIOFactory(tls, False, built)  # type: ignore[arg-type]
            self.wrapped = True
        self.inClear = carriesCredentials(built) and not (
            self.wrapped or isinstance(endpoint, SSL4ServerEndpoint)
        )
        self._starting, self._startFailure = True, ""
        try:
            waiting = endpoint.listen(served).addCallbacks(self._listening, self._cannotListen)
        finally:
            self._starting = False
        if self._startFailure:
            # One line for the operator, not a traceback; twistd exits with status 1.
            raise SystemExit(self._startFailure)
        if not waiting.called:
            self._waiting = waiting

    def _cannotListen(self, failure: Failure) -> None:
        self._waiting = None
        if failure.check(CancelledError) and not self.running:
            return  # stopped while waiting: nothing went wrong
        self._refuse(
            f"netproto: cannot serve {self.service.name} on {self.description}: "
            f"{failure.getErrorMessage()}"
        )

    def _refuse(self, reason: str) -> None:
        """Starting failed for ``reason``: one line, and twistd ends with status 1."""
        if self._starting:
            self._startFailure = reason
        else:
            self.fatal(reason)

    def _listening(self, port: IListeningPort) -> None:
        self._waiting = None
        self.port = port
        summarizeAcceptErrors(port, self.acceptErrors)
        address = port.getHost()
        if self.inClear and onNetwork(address):
            if not self.context.options.get("allow-plaintext"):
                self.port = None
                port.stopListening()
                self._refuse(
                    f"netproto: refusing to serve {self.service.name} on "
                    f"{describeAddress(address)} in plaintext: its token and passwords would "
                    "cross the network in clear. Use --tls, a loopback interface, or "
                    "--allow-plaintext"
                )
                return
            self.log.warn(
                "netproto: {service} on {address} is in plaintext (--allow-plaintext): "
                "its token and passwords cross the network in clear; --tls encrypts them",
                service=self.service.name,
                address=describeAddress(address),
            )
        self.log.info(
            "netproto: {service} listening on {address} ({description}{tls})",
            service=self.service.name,
            address=describeAddress(address),
            description=self.description,
            tls=", TLS" if self.wrapped else "",
        )

    def startService(self) -> None:
        super().startService()
        self.privilegedStartService()

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        self.acceptErrors.flush()
        if self._waiting is not None:
            self._waiting.cancel()
        port, self.port = self.port, None
        if port is None:
            return None
        stopped: Deferred[None] | None = port.stopListening()
        return stopped


def carriesCredentials(built: object) -> bool:
    """Whether a service's factory takes the token or passwords: a framed service."""
    from netproto.framing import FramedFactory  # not at import: declarations stay light

    return isinstance(built, FramedFactory)


def takesTLS(service: INetprotoService, built: object) -> bool:
    """Whether ``--tls`` serves ``service`` (its factory ``built``) over TLS: as
    its declaration's optional ``tls`` says, else when it carries credentials."""
    wanted = getattr(service, "tls", None)
    return carriesCredentials(built) if wanted is None else bool(wanted)


def onNetwork(address: object) -> bool:
    """Whether a listening address can be reached from other hosts: an IP
    address other than loopback (``0.0.0.0`` and ``::`` included)."""
    if not isinstance(address, (IPv4Address, IPv6Address)):
        return False  # a UNIX socket: its file's permissions decide
    try:
        return not ipaddress.ip_address(address.host.partition("%")[0]).is_loopback
    except ValueError:
        return True


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
