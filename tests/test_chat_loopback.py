"""The chat server over real loopback TCP, in the test's reactor: rooms, forms, many clients."""

from __future__ import annotations

import resource
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.protocols.basic import LineOnlyReceiver

from netproto.chat.config import ChatConfig
from netproto.chat.server import ChatFactory
from tests.support import eventually, waitDeferred


class Client(LineOnlyReceiver):
    """A test client: records every line (they must end in CRLF); ``say`` sends one."""

    delimiter = b"\n"
    MAX_LENGTH = 1 << 20

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.closed: Deferred[None] = Deferred()

    def lineReceived(self, line: bytes) -> None:
        assert line.endswith(b"\r"), line
        self.lines.append(line[:-1].decode("utf-8"))

    def connectionLost(self, reason: Any = None) -> None:
        self.closed.callback(None)

    def say(self, text: str) -> None:
        self.sendLine(text.encode("utf-8"))

    def take(self) -> list[str]:
        lines, self.lines = self.lines, []
        return lines

    async def expect(self, *wanted: str) -> None:
        """Wait until exactly ``wanted`` arrived (and nothing else), then forget them."""
        await eventually(lambda: len(self.lines) >= len(wanted), timeout=10)
        assert self.take() == list(wanted)


class Server:
    def __init__(self, **config: Any) -> None:
        self.factory = ChatFactory(ChatConfig(**config), reactor)
        # A long accept queue: the 1000-client test connects 100 at a time.
        self.port = reactor.listenTCP(0, self.factory, backlog=1024, interface="127.0.0.1")
        self.portNumber: int = self.port.getHost().port  # type: ignore[attr-defined]

    async def connect(self, bind: str | None = None) -> Client:
        endpoint = TCP4ClientEndpoint(
            reactor,
            "127.0.0.1",
            self.portNumber,
            bindAddress=(bind, 0) if bind else None,
        )
        client = Client()
        await waitDeferred(connectProtocol(endpoint, client))
        await eventually(lambda: client.lines, timeout=10)
        return client


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.port.stopListening()
    for p in list(s.factory.server.nicks.values()):
        p.close()


async def quiet(*clients: Client) -> None:
    """Let in-flight lines arrive: a /who round trip on each client is answered after them."""
    for c in clients:
        before = len(c.lines)
        c.say("/who")
        await eventually(
            lambda c=c, before=before: any(  # type: ignore[misc]
                ln.startswith("*** ") and " in #" in ln for ln in c.lines[before:]
            )
        )
        c.lines[:] = [ln for ln in c.lines if not (ln.startswith("*** ") and " in #" in ln)]


@pytest_twisted.ensureDeferred
async def test_three_clients_in_two_rooms(server: Server) -> None:
    """Messages, actions, private messages, joins, parts, nick changes and quits reach exactly
    the right members, in the exact forms of PROTOCOL.md."""
    a = await server.connect()
    assert a.take() == [
        "*** Welcome to netproto chat. You are guest1 in #lobby. /help for commands."
    ]
    b = await server.connect()
    b.take()
    c = await server.connect()
    c.take()
    await a.expect("*** guest2 has joined #lobby", "*** guest3 has joined #lobby")
    await b.expect("*** guest3 has joined #lobby")

    a.say("/nick alice")
    b.say("/nick bob")
    c.say("/nick carol")
    await a.expect(
        "*** guest1 is now known as alice",
        "*** guest2 is now known as bob",
        "*** guest3 is now known as carol",
    )
    await quiet(b, c)
    b.take(), c.take()

    c.say("/join #dev")
    await c.expect("*** carol has left #lobby", "*** carol has joined #dev")
    await a.expect("*** carol has left #lobby")
    await b.expect("*** carol has left #lobby")

    a.say("hello lobby")
    a.say("/me waves")
    await b.expect("<alice> hello lobby", "* alice waves")
    c.say("hello dev")
    a.say("/msg CAROL psst")
    await c.expect("*alice* psst")
    await quiet(a, b, c)
    assert a.take() == [] and b.take() == [] and c.take() == []

    b.say("/join dev")
    await b.expect(
        "*** bob has left #lobby",
        "*** bob has joined #dev",
        "*** history: <carol> hello dev",
    )
    await c.expect("*** bob has joined #dev")
    await a.expect("*** bob has left #lobby")

    b.say("/quit gone fishing")
    await waitDeferred(b.closed)
    await c.expect("*** bob has quit (gone fishing)")
    await quiet(a)
    assert a.take() == []

    c.transport.loseConnection()  # type: ignore[union-attr]
    await waitDeferred(c.closed)
    a.say("/rooms")
    await a.expect("*** 1 room: #lobby (1)")


@pytest_twisted.ensureDeferred
async def test_every_error_gets_a_bang_line_and_the_connection_stays_usable(server: Server) -> None:
    """Each mistake over the wire gets one ``! `` line; the same connection then works."""
    a = await server.connect()
    a.take()
    b = await server.connect()
    b.take()
    await a.expect("*** guest2 has joined #lobby")
    mistakes = {
        "/bogus": "! unknown command: /bogus (try /help)",
        "/nick guest2": "! nick taken: guest2",
        "/nick bad!name": "! invalid nick: bad!name (1-32 letters, digits, _ or -)",
        "/msg ghost boo": "! no such nick: ghost",
        "/join #no#pe": "! invalid room name: #no#pe "
        "(1-32 letters, digits, _ or -, after an optional #)",
        "x" * 5000: "! line too long (limit 4096 bytes)",
    }
    for line, error in mistakes.items():
        a.say(line)
        await a.expect(error)
    a.say("still talking")
    await b.expect("<guest1> still talking")


@pytest_twisted.ensureDeferred
async def test_invalid_utf8_and_telnet_bytes_over_the_wire(server: Server) -> None:
    """Raw bytes: IAC sequences vanish, bad UTF-8 becomes U+FFFD, output is CRLF."""
    a = await server.connect()
    b = await server.connect()
    b.take()
    assert a.transport is not None
    a.transport.write(b"\xff\xfb\x18ab\xffc\xe9d\r\n")
    await b.expect("<guest1> ab\ufffdd")


@pytest_twisted.ensureDeferred
async def test_a_thousand_clients_in_one_room_all_get_a_broadcast() -> None:
    """1000 simultaneous members of #lobby: every other one receives one member's line."""
    n = 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2 * n + 100:
        if hard != resource.RLIM_INFINITY and hard < 2 * n + 100:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is below {2 * n + 100}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    server = Server()
    clients: list[Client] = []
    try:
        for i in range(0, n, 100):
            clients += await gatherResults(
                [
                    Deferred.fromCoroutine(
                        server.connect(bind=f"127.0.{1 + j // 250}.{1 + j % 250}")
                    )
                    for j in range(i, min(i + 100, n))
                ]
            )
        assert server.factory.clients == n
        assert len(server.factory.server.rooms["lobby"].members) == n
        clients[0].say("hello, all of you")
        want = "<guest1> hello, all of you"
        await eventually(lambda: all(want in c.lines for c in clients[1:]), timeout=60)
        assert want not in clients[0].lines
    finally:
        server.port.stopListening()
        for c in clients:
            if c.transport is not None:
                c.transport.loseConnection()
        await waitDeferred(gatherResults([c.closed for c in clients]), timeout=60)
    await eventually(lambda: server.factory.clients == 0, timeout=60)
    assert not server.factory.server.nicks and not server.factory.server.rooms


@pytest_twisted.ensureDeferred
async def test_server_full_is_said_before_closing() -> None:
    """Past the per-address cap a client reads ``! server full`` and is closed; others go on."""
    server = Server(maxPerAddress=2)
    a = await server.connect()
    await server.connect()
    c = Client()
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", server.portNumber)
    await waitDeferred(connectProtocol(endpoint, c))
    await waitDeferred(c.closed)
    assert c.lines == ["! server full"]
    a.say("/who")
    await eventually(lambda: "*** 2 in #lobby: guest1, guest2" in a.lines)
    server.port.stopListening()
    for p in list(server.factory.server.nicks.values()):
        p.close()
