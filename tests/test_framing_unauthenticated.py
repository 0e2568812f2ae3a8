"""The framed base's cap on connections per IP address that are not
authenticated yet (``--max-unauthenticated-per-host``), in memory (FramedPeer,
a MemoryReactorClock)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, globalLogPublisher

from netproto.framing import DEFAULT_MAX_UNAUTHENTICATED_PER_HOST, FramedFactory
from netproto.logsummary import DEFAULT_BURST, DEFAULT_INTERVAL
from netproto.tap import ServerOptions
from netproto.testing import FramedPeer
from tests.support import makeContext, token

ABUSER = IPv4Address("TCP", "10.0.0.2", 40000)
HONEST = IPv4Address("TCP", "10.0.0.1", 40001)
CAP = 3


class Server:
    """A framed factory (the base alone) on a clock, with the cap at ``cap``."""

    def __init__(self, tmp: Path, cap: int = CAP) -> None:
        self.clock = MemoryReactorClock()
        options = {"max-unauthenticated-per-host": cap}
        self.context = makeContext(tmp, reactor=self.clock, options=options)
        self.factory = FramedFactory(self.context)
        self.token = token(self.context)

    def connect(self, peer: Any = ABUSER) -> FramedPeer:
        return FramedPeer(self.factory, self.clock, peerAddress=peer)


def refused(peer: FramedPeer) -> bool:
    """The peer got its hello, then E busy naming the option, and is closed."""
    message = peer.expectError("busy")
    assert "--max-unauthenticated-per-host" in message
    peer.expectClosed()
    return True


@pytest.fixture
def events() -> Iterator[list[dict[str, Any]]]:
    """Every event logged while the test runs."""
    seen: list[dict[str, Any]] = []
    observer = cast(ILogObserver, seen.append)
    globalLogPublisher.addObserver(observer)
    try:
        yield seen
    finally:
        globalLogPublisher.removeObserver(observer)


def test_past_the_cap_a_host_gets_busy_and_a_close_and_others_are_served(tmp_path: Path) -> None:
    """With CAP connections of one address logging in, its next one gets its
    hello, E busy and a close at once; another address logs in meanwhile."""
    s = Server(tmp_path)
    held = [s.connect() for _ in range(CAP)]
    assert all(not p.closed for p in held)
    assert refused(s.connect())
    honest = s.connect(HONEST)
    assert honest.login(s.token) == {"user": "token"}
    assert s.factory.unauthenticated == {ABUSER.host: CAP}


def test_a_login_or_a_close_gives_the_slot_back(tmp_path: Path) -> None:
    """An authenticated connection no longer counts, nor one that is gone: the
    host may then open another one."""
    s = Server(tmp_path)
    held = [s.connect() for _ in range(CAP)]
    held[0].login(s.token)
    assert not s.connect().closed
    assert refused(s.connect())
    held[1].close()
    assert not s.connect().closed
    assert refused(s.connect())


def test_the_grace_period_and_a_failed_login_give_the_slot_back_only_when_closed(
    tmp_path: Path,
) -> None:
    """A connection closed for not logging in in time gives its slot back; one
    whose login failed keeps it during the delay (a guesser cannot go round
    the cap by failing), and gives it back once closed."""
    s = Server(tmp_path)
    held = [s.connect() for _ in range(CAP)]
    held[0].sendJSON(b"A", {"token": "wrong"})
    assert refused(s.connect())
    held[0].advance(s.factory.authFailureDelay)
    held[0].expectError("auth-failed")
    late = s.connect()  # takes the failed one's slot
    assert not late.closed
    s.clock.advance(s.factory.graceTimeout)
    for peer in (*held, late):
        peer.flush()
        assert peer.closed
    assert s.factory.unauthenticated == {}


def test_ipv6_addresses_are_counted_and_other_peers_are_not(tmp_path: Path) -> None:
    """An IPv6 address is a host like an IPv4 one; a peer without an IP address
    (a UNIX socket) is not counted."""
    s = Server(tmp_path, cap=1)
    v6 = IPv6Address("TCP", "2001:db8::1", 4000)
    assert not s.connect(v6).closed
    assert refused(s.connect(v6))
    others = [s.connect(None) for _ in range(5)]
    assert all(not p.closed for p in others)


def test_zero_means_no_cap(tmp_path: Path) -> None:
    """--max-unauthenticated-per-host 0 turns the cap off."""
    s = Server(tmp_path, cap=0)
    peers = [s.connect() for _ in range(DEFAULT_MAX_UNAUTHENTICATED_PER_HOST + 5)]
    assert all(not p.closed for p in peers)


def test_refusals_are_summarised_in_the_log(tmp_path: Path, events: list[dict[str, Any]]) -> None:
    """A host refused many times costs a few log lines and one count per interval."""
    s = Server(tmp_path, cap=1)
    s.connect()
    tries = 50
    for _ in range(tries):
        assert refused(s.connect())
    busy = [e for e in events if "refused" in e.get("log_format", "") and e.get("code") == "busy"]
    assert len(busy) == DEFAULT_BURST
    s.clock.advance(DEFAULT_INTERVAL)
    counts = [e["repeat_count"] for e in events if "busy" in str(e.get("repeat_kind", ""))]
    assert counts == [tries - DEFAULT_BURST]


def test_the_option_defaults_to_the_constant() -> None:
    """``twistd netproto --help`` shows the cap the base uses by default."""
    options = ServerOptions()
    options.parseOptions([])
    assert options["max-unauthenticated-per-host"] == DEFAULT_MAX_UNAUTHENTICATED_PER_HOST
    assert FramedFactory.maxUnauthenticatedPerHost == DEFAULT_MAX_UNAUTHENTICATED_PER_HOST
