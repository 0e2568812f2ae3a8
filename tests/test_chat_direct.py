"""Chat's deliveries through the member's writer (netproto.directsend) over real loopback
TCP: order, partial sends, the cut-off. (The Twisted internals the writer reads are pinned
by tests/test_writer_canaries.py.)"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from netproto.chat.config import ChatConfig
from netproto.chat.protocol import ChatProtocol
from netproto.chat.server import ChatFactory
from netproto.directsend import PAUSE_THRESHOLD, Writer
from tests.support import eventually, readNow

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
        await eventually(lambda: b"Welcome" in readNow(s))
        return s, proto

    def close(self) -> None:
        for s in self.socks:
            s.close()
        self.port.stopListening()
        for p in list(self.factory.server.nicks.values()):
            p.close()


@pytest.fixture
def loop() -> Iterator[Loop]:
    lp = Loop(maxQueue=64 << 20)
    yield lp
    lp.close()


def queue(proto: ChatProtocol) -> Writer:
    """The member's writer (it must not have been cut off)."""
    sender = proto.sender
    assert isinstance(sender, Writer) and sender.socket is not None
    return sender


@pytest_twisted.ensureDeferred
async def test_a_partial_send_hands_the_rest_to_twisted_and_order_is_kept(loop: Loop) -> None:
    """A line bigger than the socket buffers (but below Twisted's pause threshold) is sent in
    part; the rest goes to Twisted and the lines after it queue behind it (none is sent on
    the socket ahead of it). Once Twisted has sent everything, deliveries are direct again.
    The reader gets every byte in order."""
    s, proto = await loop.connect(rcvbuf=SMALL)
    writer = queue(proto)
    writer.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL)  # type: ignore[union-attr]
    big = b"B" * (PAUSE_THRESHOLD // 2) + b"\r\n"
    proto.deliver(big)
    assert writer.queued and writer.unsent() > 0
    after = [b"after %d\r\n" % i for i in range(100)]
    for line in after:
        proto.deliver(line)
    assert writer.queued
    want = big + b"".join(after)
    got = bytearray()

    def complete() -> bool:
        got.extend(readNow(s))
        return len(got) >= len(want)

    await eventually(complete, timeout=20)
    assert bytes(got) == want
    await eventually(lambda: not writer.queued)
    assert writer.unsent() == 0
    proto.deliver(b"direct again\r\n")
    assert not writer.queued
    assert await eventually(lambda: readNow(s)) == b"direct again\r\n"


@pytest_twisted.ensureDeferred
async def test_direct_sends_and_twisted_buffering_interleave_without_loss(loop: Loop) -> None:
    """Numbered lines delivered while the reader reads in small bursts go now directly, now
    through Twisted; the reader still gets each exactly once, in order."""
    s, proto = await loop.connect(rcvbuf=SMALL)
    writer = queue(proto)
    writer.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL)  # type: ignore[union-attr]
    lines = [b"%05d " % i + b"x" * 500 + b"\r\n" for i in range(2000)]
    got = bytearray()
    states = set()
    for i, line in enumerate(lines):
        proto.deliver(line)
        states.add(writer.queued)
        if i % 50 == 49:
            got.extend(readNow(s, 8192))  # a slow reader: some of it, now and then
            await eventually(lambda: True)  # let the reactor run its writes
    want = b"".join(lines)

    def complete() -> bool:
        got.extend(readNow(s))
        return len(got) >= len(want)

    await eventually(complete, timeout=20)
    assert bytes(got) == want
    assert states == {False, True}  # both paths were taken


@pytest_twisted.ensureDeferred
async def test_a_reader_that_stops_is_still_cut_off_and_others_get_everything() -> None:
    """With direct sends, a member that never reads fills the kernel's buffers, then
    Twisted's; Twisted's full-buffer signal starts the count and past --chat-max-queue the
    member is cut off, while a reading member gets every line."""
    loop = Loop(maxQueue=PAUSE_THRESHOLD + 32 * 1024)
    try:
        silent, slow = await loop.connect(rcvbuf=SMALL)
        sock = queue(slow).socket
        assert sock is not None  # no send buffer autotuning up to megabytes
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL)
        reader, _ = await loop.connect()
        talker, _ = await loop.connect()
        readNow(silent)
        readNow(reader)
        lines = [b"%05d " % i + b"y" * 1000 for i in range(600)]
        got = bytearray()

        def received(data: bytes) -> bool:
            got.extend(readNow(reader))
            return data in got

        for i in range(0, len(lines), 20):
            talker.send(b"".join(line + b"\n" for line in lines[i : i + 20]))
            await eventually(lambda i=i: received(lines[i]))  # type: ignore[misc]
        assert slow.sender is None  # cut off
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
        writer = queue(proto)
        writer.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL)  # type: ignore[union-attr]
        line = b"x" * 1000 + b"\r\n"
        for _ in range(160):  # the standing queue
            proto.deliver(line)
        got = bytearray()
        for rounds in range(1, 101):
            for _ in range(10):
                proto.deliver(line)
            assert proto.sender is writer  # not cut off
            assert PAUSE_THRESHOLD < writer.unsent() <= 256 * 1024  # never empty

            def caughtUp(want: int = rounds * 10 * len(line)) -> bool:
                got.extend(readNow(s, want - len(got)))  # no more than came since
                return len(got) >= want

            await eventually(caughtUp, interval=0.001)
        assert proto.sender is writer
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
        heldWhenCut: list[int] = []
        build = loop.factory.buildProtocol

        def recorded(addr: Any) -> Any:
            proto: Any = build(addr)
            cutOff = proto._cutOff

            def measured() -> None:  # what the writer holds when the next line is refused
                heldWhenCut.append(proto.sender.unsent())
                cutOff()

            proto._cutOff = measured
            made.append(proto)
            return proto

        loop.factory.buildProtocol = recorded  # type: ignore[method-assign]
        silent = socket.socket()
        silent.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL)
        silent.setblocking(False)
        silent.connect_ex(("127.0.0.1", loop.port.getHost().port))  # type: ignore[attr-defined]
        loop.socks.append(silent)
        (proto,) = await eventually(lambda: made)
        assert isinstance(proto, ChatProtocol)
        await eventually(lambda: heldWhenCut)
        assert proto.sender is None and heldWhenCut[0] <= 64 * 1024  # the replay is one write
        await eventually(lambda: proto not in loop.factory.server.nicks.values())
    finally:
        loop.close()
