"""Test helpers for people who write netproto service plugins (a supported API).

* :func:`makeContext` builds the :class:`~netproto.services.ServerContext` a
  service's builder receives, with a fresh data dir and token.
* :func:`serveInMemory` connects a client protocol to your service through
  Twisted's in-memory transports (``twisted.test.iosim``): no sockets, no real
  time, deterministic.
* :func:`checkService` is the conformance check every service plugin must
  pass; ``docs/extending.md`` walks through using it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IProtocol, IProtocolFactory
from twisted.internet.protocol import DatagramProtocol, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.plugin import IPlugin
from twisted.python.failure import Failure
from twisted.test.iosim import IOPump, connectedServerAndClient

from netproto.auth import makePortal
from netproto.services import (
    INetprotoService,
    ServerContext,
    ServiceError,
    declaredDefaults,
    parseDatagramEndpoint,
)

_NAME = re.compile(r"^[a-z][a-z0-9-]{0,31}$")


def makeContext(
    tmp: Path,
    reactor: Any = None,
    options: Mapping[str, Any] | None = None,
    usersFile: Path | None = None,
) -> ServerContext:
    """A server context whose data dir is ``tmp/data`` (token auth unless ``usersFile``).

    :param reactor: defaults to a :class:`MemoryReactorClock`; pass the real
        reactor for loopback tests.
    """
    reactor = MemoryReactorClock() if reactor is None else reactor
    dataDir = tmp / "data"
    dataDir.mkdir(mode=0o700, parents=True, exist_ok=True)
    portal, methods, _ = makePortal(dataDir, usersFile, reactor)
    return ServerContext(
        reactor=reactor,
        portal=portal,
        authMethods=methods,
        dataDir=dataDir,
        options=dict(options or {}),
    )


def readToken(context: ServerContext) -> str:
    """The token of a context made by :func:`makeContext`."""
    return (context.dataDir / "token").read_text().strip()


def defaultOptions(service: INetprotoService) -> dict[str, Any]:
    """The service's own options at their defaults, as ``twistd netproto`` would pass them."""
    return declaredDefaults(service)


def serveInMemory(
    serverFactory: IProtocolFactory, client: Protocol
) -> tuple[IProtocol, Protocol, IOPump]:
    """Connect ``client`` to a protocol of ``serverFactory`` in memory.

    Returns ``(server, client, pump)``; call ``pump.flush()`` to move bytes
    both ways until both sides are quiet.
    """
    clientProto, server, pump = connectedServerAndClient(
        lambda: serverFactory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4242)),
        lambda: client,
        greet=True,
    )
    assert server is not None, "the factory refused the connection"
    return server, clientProto, pump


def checkService(service: object, tmp: Path) -> None:
    """Fail with an AssertionError listing every way ``service`` breaks the plugin contract.

    It checks the declaration (interfaces, name, kind, default endpoint,
    options), that ``build`` returns the right kind of object for the
    default options, and that the built protocol survives a connection that
    sends garbage and goes away: a bad peer must never crash a service.
    """
    problems: list[str] = []
    if not IPlugin.providedBy(service):
        problems.append("does not provide twisted.plugin.IPlugin (getPlugins will not see it)")
    if not INetprotoService.providedBy(service):
        raise AssertionError("does not provide netproto.services.INetprotoService")
    svc = service
    if not isinstance(svc.name, str) or not _NAME.match(svc.name):
        problems.append(f"name {svc.name!r}: use 1-32 lowercase letters, digits or '-'")
    if not isinstance(svc.description, str) or not svc.description.strip():
        problems.append("description is empty")
    if svc.kind not in ("stream", "datagram"):
        problems.append(f"kind {svc.kind!r} is neither 'stream' nor 'datagram'")
    try:
        if svc.kind == "datagram":
            parseDatagramEndpoint(svc.defaultEndpoint)
        else:
            serverFromString(MemoryReactorClock(), svc.defaultEndpoint)
    except (ValueError, TypeError, KeyError, ServiceError) as e:
        problems.append(f"default endpoint {svc.defaultEndpoint!r} does not parse: {e}")
    names = [p[0] for p in svc.optParameters] + [f[0] for f in svc.optFlags]
    for name in names:
        if not isinstance(name, str) or not name.startswith(f"{svc.name}-"):
            problems.append(f"option {name!r} should start with '{svc.name}-'")
    if len(set(names)) != len(names):
        problems.append("an option is declared twice")
    if problems:
        raise AssertionError(f"service {svc.name!r}: " + "; ".join(problems))
    context = makeContext(tmp, options=defaultOptions(svc))
    built = svc.build(context)
    if svc.kind == "datagram":
        if not isinstance(built, DatagramProtocol):
            raise AssertionError(f"service {svc.name!r}: build() did not return a DatagramProtocol")
        return
    if not IProtocolFactory.providedBy(built):
        raise AssertionError(f"service {svc.name!r}: build() did not return a protocol factory")
    _survivesGarbage(svc.name, built)


def _survivesGarbage(name: str, factory: IProtocolFactory) -> None:
    factory.doStart()
    try:
        for chunk in _garbage():
            proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4242))
            if proto is None:
                continue
            transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 4242))
            proto.makeConnection(transport)
            try:
                proto.dataReceived(chunk)
            except Exception as e:
                raise AssertionError(
                    f"service {name!r}: dataReceived({chunk[:20]!r}...) raised {e!r}"
                ) from e
            proto.connectionLost(Failure(ConnectionError("test over")))
    finally:
        factory.doStop()


def _garbage() -> Sequence[bytes]:
    return [
        b"",
        b"\x00" * 64,
        b"\xff\xfb\x01\xff\xfd\x03",
        b"\xff" * 4096,
        os.urandom(4096),
        b"x" * 100_000 + b"\n",
        b"\r\n" * 100,
    ]


__all__ = [
    "checkService",
    "defaultOptions",
    "makeContext",
    "readToken",
    "serveInMemory",
]
