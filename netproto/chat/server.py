"""The chat service's factory: one :class:`ChatServer`, the connection caps, the idle sweep.

``twistd netproto`` calls :func:`makeFactory` with the server context; the chat
options (``--chat-*``) arrive in ``context.options``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from netproto.addresses import describeAddress
from netproto.chat.config import ChatConfig
from netproto.chat.protocol import TRANSPORT_BUFFER, ChatProtocol
from netproto.chat.state import ChatServer, errorLine
from netproto.services import ServerContext

SERVER_FULL = errorLine("server full")

#: How often, as a fraction of the idle timeout, the idle sweep runs: a quiet client
#: is disconnected between 1 and 1.25 timeouts after its last line. One sweep over
#: every client costs far less than a timer per client.
SWEEP_FRACTION = 0.25


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

    def __init__(self, config: ChatConfig, clock: Any, server: ChatServer | None = None) -> None:
        self.config = config
        self.clock = clock
        if server is None:
            server = ChatServer(config.history, clock, config.noticeDelay)
        self.server = server
        self.clients = 0
        self.perAddress: dict[str, int] = {}
        # Flood control (see ChatProtocol.lineReceived): one line per `lineInterval`
        # seconds on average, up to `burst` lines at once. 0 turns it off. The half
        # interval of slack keeps float rounding from eating the burst's last line.
        self.lineInterval = 1.0 / config.rate if config.rate else 0.0
        self.burstTolerance = (config.burst - 0.5) * self.lineInterval
        self.queueAllowance = max(0, config.maxQueue - TRANSPORT_BUFFER)
        self._sweeper: LoopingCall | None = None

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        config = self.config
        key = addressKey(addr)
        if config.maxClients and self.clients >= config.maxClients:
            return self._refuse(addr, f"{self.clients} clients (--chat-max-clients)")
        perAddress = config.maxPerAddress
        if key is not None and perAddress and self.perAddress.get(key, 0) >= perAddress:
            return self._refuse(addr, f"{perAddress} clients from {key}")
        self.clients += 1
        if key is not None:
            self.perAddress[key] = self.perAddress.get(key, 0) + 1
        return ChatProtocol(self, key)

    def _refuse(self, addr: IAddress | None, why: str) -> Protocol:
        self.log.warn(
            "chat: refused {peer}: server full ({why})", peer=describeAddress(addr), why=why
        )
        refusal = Refusal()
        refusal.factory = self
        return refusal

    def release(self, proto: ChatProtocol) -> None:
        """A connection built by :meth:`buildProtocol` is gone: free its slots."""
        self.clients -= 1
        key = proto.address
        if key is not None:
            left = self.perAddress[key] - 1
            if left:
                self.perAddress[key] = left
            else:
                del self.perAddress[key]

    # -- the idle sweep -------------------------------------------------------------

    def startFactory(self) -> None:
        timeout = self.config.idleTimeout
        if timeout and self._sweeper is None:
            self._sweeper = LoopingCall(self.sweep)
            self._sweeper.clock = self.clock
            self._sweeper.start(timeout * SWEEP_FRACTION, now=False)

    def stopFactory(self) -> None:
        if self._sweeper is not None:
            self._sweeper.stop()
            self._sweeper = None

    def sweep(self) -> None:
        """Disconnect every client that sent no line for ``idleTimeout`` seconds."""
        limit = self.clock.seconds() - self.config.idleTimeout
        for participant in list(self.server.nicks.values()):
            if isinstance(participant, ChatProtocol) and participant.lastActive <= limit:
                participant.timedOut()


def makeFactory(context: ServerContext) -> ChatFactory:
    """The chat service's factory, set up from the ``--chat-*`` options (:mod:`.plugin`)."""
    config = ChatConfig.fromOptions(context.options)
    return ChatFactory(config, context.reactor)
