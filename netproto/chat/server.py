"""The chat service's factory: one :class:`ChatServer`, the connection caps, the idle sweep.

``twistd netproto`` calls :func:`makeFactory` with the server context; the chat
options (``--chat-*``) arrive in ``context.options``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress, IDelayedCall
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, LogLevel

from netproto.addresses import CountPerAddress, describeAddress
from netproto.chat.config import ChatConfig
from netproto.chat.protocol import ChatProtocol
from netproto.chat.state import ChatServer, errorLine
from netproto.logsummary import RepeatSummary, sourceOf
from netproto.services import ServerContext, ServiceError

SERVER_FULL = errorLine("server full")

#: How often, as a fraction of the idle timeout, the idle sweep runs: a quiet client
#: is disconnected between 1 and 1.25 timeouts after its last line. One sweep over
#: every client costs far less than a timer per client.
SWEEP_FRACTION = 0.25

#: Members the idle sweep dismisses per reactor turn. Each costs a farewell line, a
#: close and a quit notice queued in its room (tens of microseconds); a pass over
#: thousands goes on at the next turn (``callLater(0)``) every this many, so the
#: reactor serves everyone else in between and a sweep never holds it for long.
SWEEP_BATCH = 100


class Refusal(Protocol):
    """Says ``! server full`` and closes: what a client past a connection cap gets."""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(SERVER_FULL)
        self.transport.loseConnection()


def addressKey(addr: IAddress | None) -> str | None:
    """The IP address counted against the per-address cap; None (not counted) for UNIX sockets."""
    if isinstance(addr, (IPv4Address, IPv6Address)):
        return addr.host
    return None


class ChatFactory(ServerFactory):
    """Builds a :class:`ChatProtocol` per connection, within the caps of ``config``.

    :ivar server: the chat state every connection shares.
    :ivar clock: the reactor's clock (``seconds``, ``callLater``): flood control and
        the idle sweep use it, never the wall clock.
    """

    log = Logger()
    #: Lines taken from clients (past the flood control) and their bytes, for --metrics.
    lines = 0
    lineBytes = 0

    def __init__(self, config: ChatConfig, clock: Any, server: ChatServer | None = None) -> None:
        self.config = config
        self.clock = clock
        if server is None:
            server = ChatServer(config.history, clock, config.noticeDelay)
        self.server = server
        #: Connection events per source and interval (finding 11 of the hardening
        #: issue): a client refused 12,000 times a second costs two log lines.
        self.logSummary = RepeatSummary(self.log, clock=clock)
        self.clients = 0
        self.perAddress = CountPerAddress()
        # Flood control (see ChatProtocol.lineReceived): one line per `lineInterval`
        # seconds on average, up to `burst` lines at once. 0 turns it off. The half
        # interval of slack keeps float rounding from eating the burst's last line.
        self.lineInterval = 1.0 / config.rate if config.rate else 0.0
        self.burstTolerance = (config.burst - 0.5) * self.lineInterval
        self._sweeper: LoopingCall | None = None
        self._sweeping: IDelayedCall | None = None  # the next turn of a sweep pass

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        config = self.config
        key = addressKey(addr)
        if config.maxClients and self.clients >= config.maxClients:
            return self._refuse(addr, f"{self.clients} clients (--chat-max-clients)")
        if not self.perAddress.admit(key, config.maxPerAddress):
            return self._refuse(addr, f"{config.maxPerAddress} clients from {key}")
        self.clients += 1
        return ChatProtocol(self, key)

    def _refuse(self, addr: IAddress | None, why: str) -> Protocol:
        self.logSummary.emit(
            (sourceOf(addr), "chat: refused (server full)"),
            LogLevel.warn,
            "chat: refused {peer}: server full ({why})",
            peer=describeAddress(addr),
            why=why,
        )
        refusal = Refusal()
        refusal.factory = self
        return refusal

    def release(self, proto: ChatProtocol) -> None:
        """A member built by :meth:`buildProtocol` left the chat: free its slots (once;
        its connection may take up to ``closeGrace`` more to close)."""
        self.clients -= 1
        self.perAddress.release(proto.address)

    # -- the idle sweep -------------------------------------------------------------

    def startFactory(self) -> None:
        timeout = self.config.idleTimeout
        if timeout and self._sweeper is None:
            self._sweeper = LoopingCall(self.sweep)
            self._sweeper.clock = self.clock
            self._sweeper.start(timeout * SWEEP_FRACTION, now=False)

    def stopFactory(self) -> None:
        self.logSummary.flush()
        if self._sweeper is not None:
            self._sweeper.stop()
            self._sweeper = None
        if self._sweeping is not None:
            self._sweeping.cancel()
            self._sweeping = None

    def sweep(self) -> None:
        """Dismiss every member that sent no line for ``idleTimeout`` seconds.

        The pass goes :data:`SWEEP_BATCH` members per reactor turn, and each batch
        costs its room one flush (:meth:`ChatServer.dismiss`), so a sweep of N idle
        members in a room of N is linear, not N² deliveries in one turn.
        """
        if self._sweeping is not None:
            return  # the previous pass is still going
        limit = self.clock.seconds() - self.config.idleTimeout
        idle = [
            p
            for p in self.server.nicks.values()
            if isinstance(p, ChatProtocol) and p.lastActive <= limit
        ]
        self._dismissIdle(idle, 0, limit)

    def _dismissIdle(self, idle: list[ChatProtocol], start: int, limit: float) -> None:
        """One turn of a sweep pass: ``idle[start:]``, :data:`SWEEP_BATCH` at most."""
        self._sweeping = None
        end = start + SWEEP_BATCH
        # Skip those who left, or spoke, since the pass began.
        batch = [p for p in idle[start:end] if p.room is not None and p.lastActive <= limit]
        for p in batch:
            p.timedOut()
        farewell = errorLine(f"idle for {self.config.idleTimeout:g} s; disconnecting")
        self.server.dismiss(batch, "idle timeout", farewell)
        if end < len(idle):
            self._sweeping = self.clock.callLater(0, self._dismissIdle, idle, end, limit)


def makeFactory(context: ServerContext) -> ChatFactory:
    """The chat service's factory, set up from the ``--chat-*`` options (:mod:`.plugin`).

    With ``--chat-redis``, its chat is a :class:`~netproto.chat.cluster.ClusterChatServer`
    linked to that Redis (imported only then: without the option nothing of the
    cluster is loaded), which leaves the cluster when the reactor shuts down.
    """
    config = ChatConfig.fromOptions(context.options)
    url = context.options.get("chat-redis")
    if url is None:
        return ChatFactory(config, context.reactor)
    from netproto.chat.cluster import ClusterChatServer
    from netproto.chat.redislink import RedisLink
    from netproto.chat.redisurl import RedisAddress
    from netproto.chat.scripts import SCRIPTS

    reactor = context.reactor
    try:
        link = RedisLink(reactor, RedisAddress.fromURL(url), SCRIPTS)
    except (ValueError, OSError) as e:  # a CA file that cannot be read, say
        raise ServiceError(f"--chat-redis: {e}") from None
    server = ClusterChatServer(link, config.history, reactor, config.noticeDelay)
    reactor.addSystemEventTrigger("before", "shutdown", server.stop)
    link.start()
    return ChatFactory(config, reactor, server)
