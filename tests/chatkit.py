"""Chat test doubles shared by the chat tests: a ChatFactory harness on a fake clock with
in-memory connections, and a fake participant for the I/O-free chat state."""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.address import IPv4Address
from twisted.internet.base import DelayedCall
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from netproto.chat.config import ChatConfig
from netproto.chat.protocol import ChatProtocol
from netproto.chat.server import ChatFactory
from netproto.chat.state import (
    ChatServer,
    IParticipant,
)


class Harness:
    """A chat factory on a fake clock, with in-memory connections."""

    def __init__(
        self,
        clock: Clock | None = None,
        transportClass: type[StringTransport] = StringTransport,
        **config: Any,
    ) -> None:
        self.clock = Clock() if clock is None else clock
        self.transportClass = transportClass
        self.factory = ChatFactory(ChatConfig(**config), self.clock)
        self.factory.startFactory()
        self.port = 40000
        self.transports: list[StringTransport] = []

    def connect(self, host: str = "127.0.0.1") -> tuple[ChatProtocol, StringTransport]:
        self.port += 1
        addr = IPv4Address("TCP", host, self.port)
        proto = self.factory.buildProtocol(addr)
        assert isinstance(proto, ChatProtocol)
        transport = self.transportClass(peerAddress=addr)
        proto.makeConnection(transport)
        self.clock.advance(self.factory.config.noticeDelay)  # the join notice's wait
        self.transports.append(transport)
        for t in self.transports:  # welcomes and join notices: each test starts after them
            t.clear()
        return proto, transport

    def timers(self) -> list[DelayedCall]:
        """What is on the clock besides the log summary's interval."""
        summary = self.factory.logSummary.flush
        calls = cast(list[DelayedCall], self.clock.getDelayedCalls())
        return [c for c in calls if c.func != summary]

    def lines(self, transport: StringTransport) -> list[bytes]:
        """What was written since the last call, once this turn's broadcasts and the room
        notices waiting for company went out, split into lines (each must end with CRLF)."""
        self.clock.advance(self.factory.config.noticeDelay)
        return lines(transport)


def lines(transport: StringTransport) -> list[bytes]:
    """What was written since the last call, split into lines (each must end with CRLF)."""
    data: bytes = transport.value()
    transport.clear()
    assert data == b"" or data.endswith(b"\r\n")
    return data.split(b"\r\n")[:-1]


@implementer(IParticipant)
class Fake:
    """A participant that records what it is sent, as text lines without CRLF."""

    def __init__(self) -> None:
        self.nick = ""
        self.room = None
        self.lines: list[str] = []
        self.raw: list[bytes] = []
        self.closed = False

    def deliver(self, line: bytes) -> None:
        assert line.endswith(b"\r\n")
        self.raw.append(line)
        self.lines.extend(line.decode("utf-8").split("\r\n")[:-1])

    def close(self) -> None:
        self.closed = True

    def take(self) -> list[str]:
        lines, self.lines = self.lines, []
        return lines


def connected(server: ChatServer, n: int) -> list[Fake]:
    people = [Fake() for _ in range(n)]
    for p in people:
        server.connect(p)
    for p in people:
        p.take()
    return people
