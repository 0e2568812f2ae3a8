"""The chat cluster's link to Redis: two connections kept up by themselves.

A :class:`RedisLink` holds one connection for commands and one for pub/sub (a
Redis connection that subscribes can run nothing else), each a
:class:`twisted.application.internet.ClientService` that reconnects with
exponential backoff. The link is *up* once both are connected, authenticated,
on their database, and the cluster's Lua scripts are loaded; it goes *down* as
soon as either is lost (then the other is dropped too, so both come back
together with nothing half-remembered: subscriptions and script hashes are per
connection). Whoever uses it is told through :class:`ILinkListener`.

The wire is txredisapi's (its protocol classes: command encoding, replies,
pub/sub messages), parsed by hiredis's C reader when ``hiredis`` is installed,
which txredisapi picks by itself; docs/cluster.md says why. Every reply comes
back as ``bytes`` (no decoding, no number guessing): chat lines are relayed
exactly as they were encoded.

Commands go out in the order they are called, over the one command connection,
so Redis runs them in that order: the cluster relies on it (a member's lines,
its nick change and its messages reach Redis in the order it sent them).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import txredisapi  # type: ignore[import-untyped]
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import Deferred, fail, gatherResults
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface

from netproto.chat.redisurl import RedisAddress

#: Seconds before the first reconnection attempt; the delay doubles per failed
#: attempt up to :data:`MAX_RETRY_DELAY`. Short, since a Redis restart takes a
#: second or two and members are told the cluster is gone meanwhile.
FIRST_RETRY_DELAY = 0.25

#: Longest wait between two reconnection attempts: a Redis that is back is found
#: within this many seconds, and a dead one costs a connection attempt this often.
MAX_RETRY_DELAY = 5.0


class LinkDown(Exception):
    """The link to Redis is down: the command was not sent, or its reply never came."""


class ILinkListener(Interface):
    """Who a :class:`RedisLink` reports to (the cluster)."""

    def linkUp() -> None:
        """Both connections are ready and the scripts loaded; commands may go."""

    def linkDown() -> None:
        """The link was lost; every command in flight fails with :class:`LinkDown`."""

    def message(channel: bytes, payload: bytes) -> None:
        """A pub/sub message on a channel the link subscribed to."""


class _Commands(txredisapi.RedisProtocol):  # type: ignore[misc]
    """txredisapi's command protocol, reporting readiness and loss to its link."""

    factory: _LinkFactory

    def connectionLost(self, why: Failure) -> None:
        # The link hears of it first, so commands failing next find it down.
        self.factory.link._lost(self)
        super().connectionLost(why)


class _Subscriber(txredisapi.SubscriberProtocol):  # type: ignore[misc]
    """txredisapi's pub/sub protocol, handing each message to its link."""

    factory: _LinkFactory

    def messageReceived(self, pattern: Any, channel: bytes, message: bytes) -> None:
        self.factory.link.listener.message(channel, message)

    def connectionLost(self, why: Failure) -> None:
        # The link hears of it first, so commands failing next find it down.
        self.factory.link._lost(self)
        super().connectionLost(why)


class _LinkFactory(Factory):
    """Builds one kind of connection of a link, with what txredisapi's protocols
    expect of their factory (``stopTrying``, ``connectionError``, ``isLazy``)."""

    isLazy = True
    noisy = False

    def __init__(self, link: RedisLink, kind: type[_Commands] | type[_Subscriber]) -> None:
        self.link = link
        self.kind = kind

    def buildProtocol(self, addr: Any) -> Any:
        address = self.link.address
        proto = self.kind(
            None,  # charset: replies stay bytes
            password=address.password,
            username=address.username,
            dbid=address.db if address.db else None,
            convertNumbers=False,
        )
        proto.factory = self
        proto.whenConnected().addCallback(self.link._ready)
        return proto

    def stopTrying(self) -> None:
        """txredisapi calls this when AUTH or SELECT fails: a mistake in the URL that
        retrying will not fix; the link keeps trying anyway (the operator may fix
        Redis), and says why in the log."""

    def connectionError(self, why: str) -> None:
        self.link.log.warn("cluster: {why}", why=why)


class RedisLink:
    """Both connections to one Redis, and the cluster's scripts.

    :param scripts: Lua scripts by name; loaded on every (re)connection, run with
        :meth:`script` (EVALSHA: the script's text crosses the wire once).
    """

    log = Logger()

    def __init__(self, reactor: Any, address: RedisAddress, scripts: Mapping[str, str]) -> None:
        self.reactor = reactor
        self.address = address
        self.listener: Any = None  # an ILinkListener, set before start()
        self._scripts = {name: text.encode() for name, text in scripts.items()}
        self._hashes = {  # EVALSHA names a script by its SHA-1
            name: hashlib.sha1(text, usedforsecurity=False).hexdigest()
            for name, text in self._scripts.items()
        }
        self.commands: _Commands | None = None
        self.subscriber: _Subscriber | None = None
        self.up = False
        self._loading: Deferred[Any] | None = None
        endpoint = address.endpoint(reactor)
        policy = backoffPolicy(initialDelay=FIRST_RETRY_DELAY, maxDelay=MAX_RETRY_DELAY, factor=2.0)
        self._services = [
            ClientService(endpoint, _LinkFactory(self, kind), retryPolicy=policy, clock=reactor)
            for kind in (_Commands, _Subscriber)
        ]

    def start(self) -> None:
        for service in self._services:
            service.startService()

    def stop(self) -> Deferred[Any]:
        """Stop (re)connecting and close both connections."""
        self.up = False
        return gatherResults([s.stopService() for s in self._services], consumeErrors=True)

    def reset(self) -> None:
        """Drop both connections (a reply that never came): they reconnect by themselves."""
        for proto in (self.commands, self.subscriber):
            if proto is not None and proto.transport is not None:
                proto.transport.abortConnection()

    # -- commands ------------------------------------------------------------------

    def execute(self, *args: Any) -> Deferred[Any]:
        """Run one command; fails with :class:`LinkDown` if the link is not up."""
        proto = self.commands
        if not self.up or proto is None:
            return fail(LinkDown())
        return self._send(proto, args)

    def script(self, name: str, keys: Sequence[Any], args: Sequence[Any]) -> Deferred[Any]:
        """Run the loaded script ``name`` (EVALSHA)."""
        return self.execute("EVALSHA", self._hashes[name], len(keys), *keys, *args)

    def subscribe(self, channel: bytes) -> Deferred[Any]:
        """Subscribe; fires once Redis confirmed it, so what is published after that
        reaches this link."""
        proto = self.subscriber
        if not self.up or proto is None:
            return fail(LinkDown())
        return self._send(proto, ("SUBSCRIBE", channel))

    def unsubscribe(self, channel: bytes) -> None:
        proto = self.subscriber
        if self.up and proto is not None:
            self._send(proto, ("UNSUBSCRIBE", channel)).addErrback(lambda _: None)

    @staticmethod
    def _send(proto: Any, args: Sequence[Any]) -> Deferred[Any]:
        try:
            d: Deferred[Any] = proto.execute_command(*args, apply_timeout=False)
        except txredisapi.ConnectionError:
            return fail(LinkDown())
        return d.addErrback(_asLinkDown)

    # -- connection events -------------------------------------------------------

    def _ready(self, proto: Any) -> None:
        transport = proto.transport
        if ITCPTransport.providedBy(transport):
            # Commands go out as written: a join is several round trips, each of
            # which Nagle's algorithm could hold for an acknowledgement.
            transport.setTcpNoDelay(True)
        if isinstance(proto, _Subscriber):
            self.subscriber = proto
        else:
            self.commands = proto
        if self.commands is None or self.subscriber is None or self._loading is not None:
            return
        commands = self.commands
        loads = [self._send(commands, ("SCRIPT", "LOAD", text)) for text in self._scripts.values()]
        self._loading = gatherResults(loads, consumeErrors=True)
        self._loading.addCallbacks(self._loaded, self._loadFailed, callbackArgs=(commands,))

    def _loaded(self, _: object, commands: Any) -> None:
        self._loading = None
        if commands is not self.commands or self.subscriber is None:
            return  # lost while loading; the next connection tries again
        self.up = True
        self.log.info(
            "cluster: linked to Redis at {host}:{port}",
            host=self.address.host,
            port=self.address.port,
        )
        self.listener.linkUp()

    def _loadFailed(self, failure: Failure) -> None:
        self._loading = None
        self.log.warn("cluster: loading the scripts failed: {why}", why=failure.getErrorMessage())
        self.reset()

    def _lost(self, proto: Any) -> None:
        if proto is self.commands:
            self.commands = None
        elif proto is self.subscriber:
            self.subscriber = None
        else:
            return
        self.reset()  # the other one too: both come back together
        if self.up:
            self.up = False
            self.log.warn("cluster: lost the link to Redis; reconnecting")
            self.listener.linkDown()


def _asLinkDown(failure: Failure) -> Failure:
    if failure.check(txredisapi.ConnectionError):
        return Failure(LinkDown())
    return failure
