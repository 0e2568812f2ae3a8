"""Direct sends (netproto.directsend) over real loopback TCP: order, partial sends, cut-off,
and the Twisted internals they rely on."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, tcp
from twisted.internet.testing import StringTransport

from netproto.chat.config import ChatConfig
from netproto.chat.protocol import _CUT, _DIRECT, _FLOWING, TRANSPORT_BUFFER, ChatProtocol
from netproto.chat.server import ChatFactory
from netproto.directsend import directSocket, holdsNothing, unsent
from tests.support import eventually

SMALL = 4096  # socket buffer sizes that make the kernel refuse data early


class Loop:
    """A chat server on loopback, and raw client sockets whose reading the test controls."""

    def __init__(self, sndbuf: int | None = None, **config: Any) -> None:
        self.factory = ChatFactory(ChatConfig(**{"rate": 0, "history": 0, **config}), reactor)
        self.port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        if sndbuf:  # accepted sockets inherit it, from their first byte
            self.port.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)  # type: ignore[attr-defined]
        self.socks: list[socket.socket] = []

    async def connect(self, rcvbuf: int | None = None) -> tuple[socket.socket, ChatProtocol]:
        """A raw client (with a small receive buffer if asked) and its server-side protocol."""
        before = set(self.factory.server.nicks.values())
        s = socket.socket()
        if rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", self.port.getHost().port))  # type: ignore[attr-defined]
        self.socks.append(s)
        new = await eventually(lambda: set(self.factory.server.nicks.values()) - before)
        (proto,) = new
        assert isinstance(proto, ChatProtocol)
        await eventually(lambda: b"Welcome" in read(s))
        return s, proto

    def close(self) -> None:
        for s in self.socks:
            s.close()
        self.port.stopListening()
        for p in list(self.factory.server.nicks.values()):
            p.close()


def read(s: socket.socket, limit: int = 1 << 20) -> bytes:
    """What can be read from ``s`` now, without waiting."""
    chunks = []
    try:
        while limit > 0:
            data = s.recv(min(limit, 1 << 16))
            if not data:
                break
            chunks.append(data)
            limit -= len(data)
    except BlockingIOError:
        pass
    return b"".join(chunks)


@pytest.fixture
def loop() -> Iterator[Loop]:
    lp = Loop(maxQueue=64 << 20)
    yield lp
    lp.close()


@pytest_twisted.ensureDeferred
async def test_twisted_tcp_transport_is_as_direct_sends_assume(loop: Loop) -> None:
    """Twisted's TCP server transport is the exact class direct sends know; its handle is the
    socket; ``write`` buffers in ``dataBuffer``/``_tempDataBuffer``, which are empty again once
    the reactor has sent them, and ``unsent`` counts what is left of them while it sends. If
    an upgrade changes this, direct sends and the output bound must be revisited. (And chat
    connections have Nagle's algorithm off.)"""
    s, proto = await loop.connect(rcvbuf=SMALL)
    transport: Any = proto.transport
    assert type(transport) is tcp.Server
    assert directSocket(transport) is transport.getHandle()
    assert proto._backlog == _DIRECT
    assert transport.getHandle().getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    assert holdsNothing(transport) and unsent(transport) == 0
    transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL)
    transport.write(b"queued\r\n")
    assert not holdsNothing(transport) and unsent(transport) == 8
    big = b"B" * (transport.SEND_LIMIT * 2)
    transport.write(big)
    assert unsent(transport) == 8 + len(big)
    got = bytearray()

    def partly() -> bool:  # Twisted sent part of its buffer: dataBuffer and offset moved
        got.extend(read(s, 1 << 14))
        return transport.offset > 0 and unsent(transport) == 8 + len(big) - transport.offset

    await eventually(partly)

    def complete() -> bool:
        got.extend(read(s))
        return holdsNothing(transport) and unsent(transport) == 0 and len(got) == 8 + len(big)

    await eventually(complete, timeout=20)
    assert bytes(got) == b"queued\r\n" + big


def test_other_transports_get_plain_writes() -> None:
    """Only Twisted's own TCP and UNIX server classes qualify: not a test transport, not a
    subclass (its write path may differ), not a connection after startTLS."""

    class Subclass(tcp.Server):
        pass

    assert directSocket(StringTransport()) is None
    assert directSocket(object.__new__(Subclass)) is None
    tls = object.__new__(tcp.Server)
    tls.TLS = True
    assert directSocket(tls) is None


@pytest_twisted.ensureDeferred
async def test_a_partial_send_hands_the_rest_to_twisted_and_order_is_kept(loop: Loop) -> None:
    """A line bigger than the socket buffers (but below Twisted's pause threshold) is sent in
    part; the rest goes to Twisted and the lines after it queue behind it (none is sent on
    the socket ahead of it). Once Twisted has sent everything, deliveries are direct again.
    The reader gets every byte in order."""
    s, proto = await loop.connect(rcvbuf=SMALL)
    assert proto._socket is not None
    proto._socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL)
    big = b"B" * (TRANSPORT_BUFFER // 2) + b"\r\n"
    proto.deliver(big)
    assert proto._backlog == _FLOWING and not holdsNothing(proto.transport)
    after = [b"after %d\r\n" % i for i in range(100)]
    for line in after:
        proto.deliver(line)
    assert proto._backlog == _FLOWING
    want = big + b"".join(after)
    got = bytearray()

    def complete() -> bool:
        got.extend(read(s))
        return len(got) >= len(want)

    await eventually(complete, timeout=20)
    assert bytes(got) == want
    await eventually(lambda: holdsNothing(proto.transport))
    proto.deliver(b"direct again\r\n")
    assert proto._backlog == _DIRECT
    assert await eventually(lambda: read(s)) == b"direct again\r\n"


@pytest_twisted.ensureDeferred
async def test_direct_sends_and_twisted_buffering_interleave_without_loss(loop: Loop) -> None:
    """Numbered lines delivered while the reader reads in small bursts go now directly, now
    through Twisted; the reader still gets each exactly once, in order."""
    s, proto = await loop.connect(rcvbuf=SMALL)
    assert proto._socket is not None
    proto._socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL)
    lines = [b"%05d " % i + b"x" * 500 + b"\r\n" for i in range(2000)]
    got = bytearray()
    states = set()
    for i, line in enumerate(lines):
        proto.deliver(line)
        states.add(proto._backlog)
        if i % 50 == 49:
            got.extend(read(s, 8192))  # a slow reader: some of it, now and then
            await eventually(lambda: True)  # let the reactor run its writes
    want = b"".join(lines)

    def complete() -> bool:
        got.extend(read(s))
        return len(got) >= len(want)

    await eventually(complete, timeout=20)
    assert bytes(got) == want
    assert states >= {_DIRECT, _FLOWING}  # both paths were taken


@pytest_twisted.ensureDeferred
async def test_a_reader_that_stops_is_still_cut_off_and_others_get_everything() -> None:
    """With direct sends, a member that never reads fills the kernel's buffers, then
    Twisted's; Twisted's full-buffer signal starts the count and past --chat-max-queue the
    member is cut off, while a reading member gets every line."""
    loop = Loop(maxQueue=TRANSPORT_BUFFER + 32 * 1024)
    try:
        silent, slow = await loop.connect(rcvbuf=SMALL)
        assert slow._socket is not None  # no send buffer autotuning up to megabytes
        slow._socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL)
        reader, _ = await loop.connect()
        talker, _ = await loop.connect()
        read(silent)
        read(reader)
        lines = [b"%05d " % i + b"y" * 1000 for i in range(600)]
        got = bytearray()

        def received(data: bytes) -> bool:
            got.extend(read(reader))
            return data in got

        for i in range(0, len(lines), 20):
            talker.send(b"".join(line + b"\n" for line in lines[i : i + 20]))
            await eventually(lambda i=i: received(lines[i]))  # type: ignore[misc]
        assert slow._backlog == _CUT
        text = bytes(got)
        said = [ln for ln in text.split(b"\r\n") if ln.startswith(b"<")]
        assert [ln.split(b" ")[1] for ln in said] == [b"%05d" % i for i in range(600)]
        await eventually(lambda: received(b"has quit (too slow reading)"))
        assert slow not in loop.factory.server.nicks.values()
    finally:
        loop.close()


@pytest_twisted.ensureDeferred
async def test_a_slow_reader_whose_queue_stays_under_the_bound_is_never_cut_off() -> None:
    """Issue 9 finding 3: a member that reads steadily, as fast as lines come, but never all
    that is queued (its queue stays at about 160 KiB, under the 256 KiB bound, and never
    empties) is not cut off while a megabyte passes through: what counts is what is still
    queued, not what was written since the queue was last empty."""
    loop = Loop(maxQueue=256 * 1024)
    try:
        s, proto = await loop.connect(rcvbuf=SMALL)
        assert proto._socket is not None
        proto._socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL)
        line = b"x" * 1000 + b"\r\n"
        for _ in range(160):  # the standing queue
            proto.deliver(line)
        got = bytearray()
        for rounds in range(1, 101):
            for _ in range(10):
                proto.deliver(line)
            assert proto._backlog != _CUT
            assert TRANSPORT_BUFFER < unsent(proto.transport) <= 256 * 1024  # never empty

            def caughtUp(want: int = rounds * 10 * len(line)) -> bool:
                got.extend(read(s, want - len(got)))  # no more than came since
                return len(got) >= want

            await eventually(caughtUp, interval=0.001)
        assert proto._backlog != _CUT
        assert bytes(got) == line * (len(got) // len(line))
    finally:
        loop.close()


@pytest_twisted.ensureDeferred
async def test_the_history_replayed_to_a_joiner_counts_against_the_bound() -> None:
    """Issue 9 finding 3: a client that never reads and joins a room whose history is larger
    than --chat-max-queue is cut off at once: the replay is queued like any other output, so
    the server never holds more than the bound for it."""
    loop = Loop(sndbuf=SMALL, maxQueue=64 * 1024, history=100)
    try:
        talker, _ = await loop.connect()
        talker.send(b"".join(b"%03d " % i + b"h" * 996 + b"\n" for i in range(100)))
        lobby = loop.factory.server.rooms["lobby"]
        await eventually(lambda: lobby.history is not None and len(lobby.history) == 100)
        made: list[Any] = []
        build = loop.factory.buildProtocol

        def recorded(addr: Any) -> Any:
            made.append(build(addr))
            return made[-1]

        loop.factory.buildProtocol = recorded  # type: ignore[method-assign]
        silent = socket.socket()
        silent.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL)
        silent.setblocking(False)
        silent.connect_ex(("127.0.0.1", loop.port.getHost().port))  # type: ignore[attr-defined]
        loop.socks.append(silent)
        (proto,) = await eventually(lambda: made)
        assert isinstance(proto, ChatProtocol)
        await eventually(lambda: proto._backlog == _CUT)
        assert unsent(proto.transport) <= 64 * 1024
        await eventually(lambda: proto not in loop.factory.server.nicks.values())
    finally:
        loop.close()
