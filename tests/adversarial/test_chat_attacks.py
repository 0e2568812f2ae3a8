"""Attacks on the chat service of a running ``twistd netproto``, measured from outside.

Each test states the attack, the behaviour expected and the measure: what honest clients
(from :data:`HONEST`) receive and how long they wait, what the abusive ones (from
:data:`ABUSER` and :func:`abuserHost`) receive, and the server's open descriptors, resident
memory and log. Every wait has a condition and a deadline; times are printed for the
record, never asserted.
"""

from __future__ import annotations

import re
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest

from tests.adversarial.outside import (
    ABUSER,
    HONEST,
    Target,
    abuserHost,
    closedWithin,
    connectFrom,
    readUntil,
)
from tests.support import waitUntil

Netproto = Callable[..., AbstractContextManager[Target]]

#: How long a test waits for what should follow within seconds: generous, for a loaded
#: 2-core machine; the point is that it happens, not how fast.
DEADLINE = 30.0
#: A chat endpoint with an accept queue long enough for thousands of connections at once.
CHAT_ENDPOINT = ("--chat", "tcp:0:interface=127.0.0.1:backlog=1024")
#: Members per abusive source address, under the default --chat-max-per-address (64).
PER_ADDRESS = 60

WHO = re.compile(rb"\*\*\* (\d+) in #lobby")
LINE = 4000  # bytes of text in a flood line: delivered as "<flood> " + text + CRLF
DELIVERED = len(b"<flood> ") + LINE + 2


class Crowd:
    """``n`` members connected from abusive addresses (``PER_ADDRESS`` each), whose input a
    thread reads and drops, noting which of them received ``marker`` and which were closed."""

    def __init__(self, port: int, n: int, marker: bytes = b"! idle for") -> None:
        self.marker = marker
        self.socks = [connectFrom(abuserHost(i // PER_ADDRESS), port) for i in range(n)]
        self.welcomed: set[socket.socket] = set()
        self.marked: set[socket.socket] = set()
        self.closed: set[socket.socket] = set()
        self.firstMark = threading.Event()
        self._tails = dict.fromkeys(self.socks, b"")
        self._selector = selectors.DefaultSelector()
        for sock in self.socks:
            sock.setblocking(False)
            self._selector.register(sock, selectors.EVENT_READ)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(0.05):
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                try:
                    data = sock.recv(1 << 16)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    self._selector.unregister(sock)
                    self.closed.add(sock)
                    continue
                seen = self._tails[sock] + data
                self._tails[sock] = seen[-64:]
                if b"/help for commands" in seen:
                    self.welcomed.add(sock)
                if self.marker in seen:
                    self.marked.add(sock)
                    self.firstMark.set()

    def say(self, line: bytes) -> None:
        """Each member sends ``line`` (small: the socket's send buffer takes it at once)."""
        for sock in self.socks:
            sock.send(line)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._selector.close()
        for sock in self.socks:
            sock.close()


@contextmanager
def crowd(port: int, n: int) -> Iterator[Crowd]:
    c = Crowd(port, n)
    try:
        waitUntil(lambda: len(c.welcomed) == n, DEADLINE)
        yield c
    finally:
        c.close()


class Probe:
    """An honest member that asks ``/who`` and times the answers."""

    def __init__(self, port: int) -> None:
        self.sock = connectFrom(HONEST, port)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        readUntil(self.sock, b"/help for commands", DEADLINE)
        self.buf = b""

    def who(self) -> tuple[int, float]:
        """The member count ``/who`` reports, and the seconds it took to come."""
        start = time.monotonic()
        self.sock.sendall(b"/who\n")
        while (m := WHO.search(self.buf)) is None:
            self.buf += readUntil(self.sock, b"\r\n", DEADLINE)
        self.buf = self.buf[m.end() :]
        return int(m.group(1)), time.monotonic() - start

    def close(self) -> None:
        self.sock.close()


def nonReader(source: str, port: int) -> socket.socket:
    """A client that does not read, with the smallest receive buffer the kernel allows and a
    small MSS (a small-MTU path): the server's kernel then buffers a few hundred KiB for it,
    not the megabytes loopback tunes itself to, and the server's own queue fills sooner."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


class Flooder:
    """An honest member named ``flood`` that sends lines of :data:`LINE` bytes in steps and
    waits, after each step, until the server has acted on them (two ``/who`` round trips:
    the room's broadcast goes out on the turn between them)."""

    def __init__(self, port: int) -> None:
        self.sock = connectFrom(HONEST, port)
        readUntil(self.sock, b"/help for commands", DEADLINE)
        self.command(b"/nick flood", b"is now known as flood")

    def command(self, line: bytes, answer: bytes) -> None:
        self.sock.sendall(line + b"\n")
        readUntil(self.sock, answer, DEADLINE)

    def send(self, lines: int) -> None:
        self.sock.sendall((b"f" * LINE + b"\n") * lines)
        for _ in range(2):
            self.command(b"/who", b" in #")

    def close(self) -> None:
        """Quit, so the nick is free when this returns."""
        self.sock.sendall(b"/quit\n")
        assert closedWithin(self.sock, DEADLINE)
        self.sock.close()


def tcpQueues(local: tuple[str, int], remote: tuple[str, int]) -> tuple[int, int]:
    """The kernel's send and receive queues (bytes) of the IPv4 TCP socket ``local`` ->
    ``remote``, from ``/proc/net/tcp``: what ``ss`` shows as Send-Q and Recv-Q."""

    def hexAddress(addr: tuple[str, int]) -> str:
        packed = socket.inet_aton(addr[0])
        return f"{int.from_bytes(packed, 'little'):08X}:{addr[1]:04X}"

    want = (hexAddress(local), hexAddress(remote))
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if (fields[1], fields[2]) == want:
            send, receive = fields[4].split(":")
            return int(send, 16), int(receive, 16)
    raise AssertionError(f"no TCP socket {local} -> {remote}")


def heldByServer(client: socket.socket, delivered: int, received: int) -> int:
    """What the server process still holds for ``client`` (its own buffers, the bound's
    measure): the ``delivered`` bytes it was due, less what it ``received`` and what the
    kernel holds in between (the server socket's send queue, the client's receive queue)."""
    local, remote = client.getsockname(), client.getpeername()
    serverSend, _ = tcpQueues(remote, local)
    _, clientReceive = tcpQueues(local, remote)
    return delivered - received - serverSend - clientReceive


def cutOffs(target: Target) -> int:
    return sum("cut off: more than" in line for line in target.twistd.lines)


# -- slow and never-reading clients (issue 9, findings 2 and 3) ------------------------------

#: The queue (bytes) the slow reader starts from in the server: past the 64 KiB at which
#: Twisted's transport reports its buffer full, well under the 256 KiB bound.
STANDING = 150 * 1024


@pytest.mark.slow
def test_a_steady_slow_reader_survives_a_flood_while_a_never_reader_is_cut_off(
    netproto: Netproto,
) -> None:
    """Attack: an honest member floods the lobby (--chat-rate 0) while two abusive members
    listen: one never reads; the other lets a queue of about 150 KiB build up in the server
    (under the 256 KiB bound), then reads steadily, a tenth faster than lines arrive, until
    it has read a megabyte. Expected: the never-reader is cut off; the slow reader is never
    cut off and gets every line (issue 9 finding 3: a reader whose queue never emptied was
    cut off once what was written to it since it last emptied passed the bound). Measure: the
    log's cut-offs, the slow reader's queue in the server (what it was due, less what it
    read and what the kernel holds: /proc/net/tcp), what it received, the server's RSS.

    (Whether its queue in the server empties is the kernel's choice: loopback TCP grows the
    server's socket buffer as the reader reads. ``test_chat_direct.py`` holds the socket
    buffer small to check the bound against a queue that never empties.)"""
    with netproto("--chat-rate", "0", services=("chat",)) as target:
        port = target.port("chat")
        flooder = Flooder(port)
        slow = nonReader(ABUSER, port)
        silent = nonReader(ABUSER, port)
        try:
            slow.settimeout(DEADLINE)
            readUntil(slow, b"has joined #lobby", DEADLINE)  # the silent one's; then only lines
            before = cutOffs(target)
            baseline = peak = target.rss()
            lines = 0
            while heldByServer(slow, lines * DELIVERED, 0) < STANDING:
                flooder.send(5)
                lines += 5
            got = bytearray()
            held = [heldByServer(slow, lines * DELIVERED, 0)]
            while len(got) < 1_000_000:
                flooder.send(10)
                lines += 10
                held.append(heldByServer(slow, lines * DELIVERED, len(got)))
                want = min(len(got) + 11 * DELIVERED, lines * DELIVERED)
                while len(got) < want:
                    data = slow.recv(want - len(got))
                    assert data, "the slow reader was cut off"
                    got += data
                peak = max(peak, target.rss())
            assert cutOffs(target) == before + 1  # the never-reader
            assert closedWithin(silent, DEADLINE)
            received = bytes(got).split(b"\r\n")[:-1]
            notices = [ln for ln in received if ln.startswith(b"*** ")]
            assert notices == [b"*** guest3 has quit (too slow reading)"]  # the never-reader
            assert len(received) > 1_000_000 // DELIVERED
            assert set(received) - set(notices) == {b"<flood> " + b"f" * LINE}
            print(
                f"\nslow reader: read {len(got) / 1e6:.1f} MB, its queue in the server "
                f"{max(min(held), 0) >> 10}-{max(held) >> 10} KiB; server RSS "
                f"+{(peak - baseline) / 2**20:.1f} MiB"
            )
            assert max(held) < 256 * 1024
            assert peak - baseline < 16 * 2**20
        finally:
            for sock in (slow, silent):
                sock.close()
            flooder.close()


@pytest.mark.slow
def test_idle_clients_that_never_read_are_aborted_and_their_slots_freed(
    netproto: Netproto,
) -> None:
    """Attack: eight clients from one address fill its --chat-max-per-address (8) and,
    with an honest flooder, the --chat-max-clients (9); they stop reading while the lobby is
    flooded (so the server holds output for each, under the bound), and never speak.
    Expected: the idle timeout dismisses them, their slots are free at once and their
    connections are aborted after --chat-close-grace (issue 9 finding 2: ``loseConnection``
    waited for them to read, forever, and ``! server full`` followed). Measure: the
    server's queue for each (from /proc/net/tcp), its open fds back to their baseline, a
    new client from the same address and an honest one welcomed."""
    args = ("--chat-rate", "0", "--chat-max-per-address", "8", "--chat-max-clients", "9")
    grace = ("--chat-idle-timeout", "4", "--chat-close-grace", "1")
    with netproto(*args, *grace, services=("chat",)) as target:
        port = target.port("chat")
        baseline = target.fds()
        flooder = Flooder(port)
        silent = [nonReader(ABUSER, port) for _ in range(8)]
        try:
            target.twistd.waitFor(lambda: target.fds() >= baseline + 9)
            refused = connectFrom(ABUSER, port)
            assert b"! server full" in readUntil(refused, b"\r\n", DEADLINE)
            refused.close()
            lines = 0
            while min(heldByServer(s, lines * DELIVERED, 0) for s in silent) < 64 * 1024:
                flooder.send(5)
                lines += 5
            assert cutOffs(target) == 0
            flooder.close()
            target.waitFds(baseline, timeout=DEADLINE)
            assert cutOffs(target) == 0
            for source in (ABUSER, HONEST):
                with connectFrom(source, port) as welcomed:
                    assert b"Welcome" in readUntil(welcomed, b"/help", DEADLINE)
        finally:
            for sock in silent:
                sock.close()


# -- lines: endless, and at the limit split every way ----------------------------------------


def test_boundary_and_endless_lines_split_every_way(netproto: Netproto) -> None:
    """Attack: an abusive member sends lines at the limit (4096 bytes) and one byte past it,
    ended by LF, by CRLF and by CRLF split between the CR and the LF, one byte per send,
    and a line of 8 MB that never ends until a last LF. Expected: every line at the limit
    reaches the room exactly; each longer line gets ``! line too long`` and is dropped with
    the rest of it; the connection stays usable; the endless line costs no memory.
    Measure: what an honest member receives, what the abuser receives, the server's RSS."""
    with netproto(services=("chat",)) as target:
        port = target.port("chat")
        honest = connectFrom(HONEST, port)
        readUntil(honest, b"/help for commands", DEADLINE)
        abuser = connectFrom(ABUSER, port)
        abuser.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        readUntil(abuser, b"/help for commands", DEADLINE)
        abuser.sendall(b"/nick abuser\n")
        readUntil(honest, b"is now known as abuser", DEADLINE)
        baseline = target.rss()
        limit = 4096
        at = [bytes([c]) * limit for c in b"ABCDE"]
        past = b"P" * (limit + 1)
        abuser.sendall(at[0] + b"\n")
        abuser.sendall(past + b"\n")
        abuser.sendall(at[1] + b"\r\n")
        abuser.sendall(past + b"\r\n")
        abuser.sendall(at[2] + b"\r")
        text = readUntil(honest, b"<abuser> B", DEADLINE)  # the CR waits alone for its LF
        abuser.sendall(b"\n")
        for byte in at[3] + b"\r\n":
            abuser.send(bytes([byte]))
        for byte in past + b"\n":
            abuser.send(bytes([byte]))
        chunk = b"Z" * (1 << 20)
        for _ in range(8):
            abuser.sendall(chunk)
        abuser.sendall(b"\n" + at[4] + b"\nafter\n")
        text += readUntil(honest, b"<abuser> after\r\n", DEADLINE)
        said = [ln for ln in text.split(b"\r\n") if ln.startswith(b"<abuser>")]
        assert said == [b"<abuser> " + line for line in at[:4]] + [
            b"<abuser> " + at[4],
            b"<abuser> after",
        ]
        abuser.sendall(b"/who\n")  # answered after everything before it
        answers = readUntil(abuser, b" in #lobby", DEADLINE)
        assert answers.count(b"! line too long (limit 4096 bytes)") == 4
        assert target.rss() - baseline < 8 * 2**20
        honest.close()
        abuser.close()


# -- flood -----------------------------------------------------------------------------------


def test_a_flooder_gets_slow_down_and_honest_messages_keep_their_pace(netproto: Netproto) -> None:
    """Attack: an abusive member sends short lines as fast as its socket takes them (default
    flood control: 20 lines/s, bursts of 40) while two honest members talk. Expected: the
    flooder gets ``! slow down`` and most of its lines are dropped; each honest message
    arrives within its deadline. Measure: the honest round trip (printed), how many of the
    flooder's lines reached the room, the server's RSS."""
    with netproto(services=("chat",)) as target:
        port = target.port("chat")
        alice = connectFrom(HONEST, port)
        readUntil(alice, b"/help for commands", DEADLINE)
        bob = connectFrom(HONEST, port)
        readUntil(bob, b"/help for commands", DEADLINE)
        flooder = connectFrom(ABUSER, port)
        readUntil(flooder, b"/help for commands", DEADLINE)
        baseline = target.rss()
        stop = threading.Event()
        sent = [0]

        def flood() -> None:
            burst = b"".join(b"flood %06d\n" % i for i in range(1000))
            while not stop.is_set():
                try:
                    flooder.sendall(burst)
                except OSError:
                    return
                sent[0] += 1000

        thread = threading.Thread(target=flood, daemon=True)
        thread.start()
        try:
            readUntil(flooder, b"! slow down", DEADLINE)
            trips = []
            received = b""
            for i in range(20):
                start = time.monotonic()
                alice.sendall(b"ping %d\n" % i)
                received += readUntil(bob, b"ping %d\r\n" % i, DEADLINE)
                trips.append(time.monotonic() - start)
        finally:
            stop.set()
            thread.join(DEADLINE)
        relayed = sum(ln.startswith(b"<guest3> flood") for ln in received.split(b"\r\n"))
        print(
            f"\nflood: {sent[0]} lines sent, {relayed} relayed; honest round trip "
            f"max {max(trips) * 1000:.1f} ms, median {sorted(trips)[10] * 1000:.1f} ms"
        )
        assert relayed < sent[0] // 10
        assert target.rss() - baseline < 16 * 2**20
        for sock in (alice, bob, flooder):
            sock.close()


# -- 2,000 members: idle sweeps and churn ----------------------------------------------------


@pytest.mark.slow
def test_an_idle_sweep_of_2000_members_does_not_stall_the_server(netproto: Netproto) -> None:
    """Attack: 2,000 members in the lobby (from 34 abusive addresses) fall idle at once, so
    one idle sweep must dismiss them all. Expected: the sweep goes in batches, one reactor
    turn each, so an honest member's ``/who`` is answered in between (it sees the room
    partly swept) and every slot is freed (issue 9 finding 1: the sweep sent N²/2 notices in
    one turn and nobody was answered for 11 s). Measure: the honest member's ``/who``
    answers during the sweep and their delay (printed), the idle members' farewells and
    closes, the server's fds back to baseline."""
    n = 2000
    # --chat-rate 0: the probe asks /who back to back while the sweep runs.
    args = (*CHAT_ENDPOINT, "--chat-idle-timeout", "10", "--chat-close-grace", "2")
    with netproto(*args, "--chat-rate", "0", services=("chat",)) as target:
        port = target.port("chat")
        baseline = target.fds()
        probe = Probe(port)
        with crowd(port, n) as members:
            members.say(b"/rooms\n")  # all idle from now on, within one sweep's reach
            before = []
            deadline = time.monotonic() + DEADLINE
            while not members.firstMark.wait(0.25):  # the probe stays active meanwhile
                before.append(probe.who()[1])
                assert time.monotonic() < deadline, "no sweep came"
            counts: list[int] = []
            delays: list[float] = []
            while not counts or counts[-1] > 1:
                count, delay = probe.who()
                counts.append(count)
                delays.append(delay)
            print(
                f"\n/who before the sweep: max {max(before) * 1000:.0f} ms; during it: "
                f"{len(counts)} answers, counts {counts[:8]}..., max {max(delays) * 1000:.0f} ms"
            )
            assert any(1 < c <= n for c in counts), "the sweep was one reactor turn"
            waitUntil(lambda: len(members.closed) == n, DEADLINE)
            assert members.marked == set(members.socks)
        target.waitFds(baseline + 1, timeout=DEADLINE)
        assert probe.who()[0] == 1
        probe.close()


@pytest.mark.slow
def test_churn_with_who_at_2000_members_keeps_the_server_responsive(netproto: Netproto) -> None:
    """Attack: 2,000 idle members in the lobby while abusive clients keep joining, asking
    ``/who`` (a 2,000-name answer) and leaving, 100 times, four at once from four
    addresses. Expected: the server keeps answering an honest client; every connection is
    gone afterwards.
    Measure: the honest client's latency from connecting to its ``/who`` answer (printed),
    the server's fds back to baseline."""
    with netproto(*CHAT_ENDPOINT, services=("chat",)) as target:
        port = target.port("chat")
        baseline = target.fds()
        with crowd(port, 2000):
            quiet = target.chatLatency(timeout=DEADLINE)
            cycles = [0] * 4

            def churn(worker: int) -> None:
                for _ in range(25):
                    with connectFrom(abuserHost(100 + worker), port, timeout=DEADLINE) as sock:
                        readUntil(sock, b"/help for commands", DEADLINE)
                        sock.sendall(b"/who\n")
                        readUntil(sock, b" in #lobby", DEADLINE)
                        sock.sendall(b"/quit\n")
                        assert closedWithin(sock, DEADLINE)
                    cycles[worker] += 1

            workers = [threading.Thread(target=churn, args=(w,), daemon=True) for w in range(4)]
            for w in workers:
                w.start()
            busy = []
            while any(w.is_alive() for w in workers):
                busy.append(target.chatLatency(timeout=DEADLINE))
            for w in workers:
                w.join(DEADLINE)
            assert sum(cycles) == 100
            print(
                f"\nchurn: {sum(cycles)} join-who-quit cycles; honest latency quiet "
                f"{quiet * 1000:.0f} ms, during churn max {max(busy) * 1000:.0f} ms "
                f"({len(busy)} probes)"
            )
        target.waitFds(baseline, timeout=DEADLINE)
        target.chatLatency(timeout=DEADLINE)
