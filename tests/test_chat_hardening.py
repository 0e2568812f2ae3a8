"""Issue 9's chat findings, in memory: the idle sweep's cost, closing a client that does not
read, look-alike names and invisible characters. (The output bound over real sockets is in
``test_chat_direct.py``; the attacks from outside in ``adversarial/test_chat_attacks.py``.)"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from netproto.chat.commands import interpret
from netproto.chat.confusables import prototypes, skeleton
from netproto.chat.protocol import ChatProtocol
from netproto.chat.server import SWEEP_BATCH, SWEEP_FRACTION
from netproto.chat.state import ChatServer, cleanText, nameKey, normalizeName
from tests.chatkit import Harness, connected, lines


class CountingTransport(StringTransport):
    """A StringTransport that counts its writes: one write is one pass of a delivery."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)


class ReactorClock(Clock):
    """A clock whose :meth:`turn` runs only the calls due when the turn starts, as Twisted's
    reactor does: a ``callLater(0)`` made during a turn runs on the next one, after the
    reactor has served the network. (``Clock.advance`` runs it in the same call.)"""

    def turn(self, seconds: float = 0.0) -> None:
        self.rightNow += seconds
        due = sorted((c for c in self.calls if c.getTime() <= self.rightNow), key=lambda c: c.time)
        for call in due:
            if call in self.calls:  # not cancelled by an earlier one
                self.calls.remove(call)
                call.called = 1
                call.func(*call.args, **call.kw)


IDLE = 60.0
SWEEP = IDLE * SWEEP_FRACTION


def idleRoom(
    idle: int, talkers: int, clock: Clock | None = None, **config: Any
) -> tuple[Harness, list[ChatProtocol], list[tuple[ChatProtocol, CountingTransport]]]:
    """``idle`` silent members, then ``talkers`` members who speak until just before the
    sweep that finds the silent ones idle; the clock stands just before that sweep."""
    h = Harness(clock, CountingTransport, idleTimeout=IDLE, rate=0, maxPerAddress=0, **config)
    h.clock.advance(1)  # the sweeps run at SWEEP, 2 * SWEEP, ...: the one at IDLE + SWEEP finds
    quiet = [h.connect()[0] for _ in range(idle)]  # these idle, not the one at IDLE
    talking = [h.connect() for _ in range(talkers)]
    for k in range(1, round(IDLE / SWEEP) + 1):
        h.clock.advance(k * SWEEP + 0.5 - h.clock.seconds())  # just after a sweep
        for p, _ in talking:
            p.dataReceived(b"/who\n")  # active, without a broadcast
    h.clock.advance(IDLE + SWEEP - 1 - h.clock.seconds())
    for t in h.transports:
        t.clear()
    assert all(p.room is not None for p in quiet)
    return h, quiet, [(p, t) for p, t in talking if isinstance(t, CountingTransport)]


# -- finding 1: the idle sweep ---------------------------------------------------------------


def test_an_idle_sweep_costs_each_remaining_member_one_write() -> None:
    """Issue 9 finding 1: 80 members swept at once from a room cost each member who stays ONE
    write holding all 80 quit notices, not a flush of the room per quit (80 writes each)."""
    h, quiet, talking = idleRoom(80, 3)
    for _, t in talking:
        t.writes = 0
    h.clock.advance(1)  # the sweep
    h.clock.advance(h.factory.config.noticeDelay)  # the quit notices' wait
    assert all(p.room is None for p in quiet)
    for _, t in talking:
        assert t.writes == 1
        got = lines(t)
        assert got == [b"*** guest%d has quit (idle timeout)" % (i + 1) for i in range(80)]
    for p in quiet:
        assert isinstance(p.transport, StringTransport)
        assert lines(p.transport) == [b"! idle for 60 s; disconnecting"]
        assert p.transport.disconnecting


def test_an_idle_sweep_goes_a_batch_per_reactor_turn() -> None:
    """Issue 9 finding 1: a sweep of more than SWEEP_BATCH members dismisses SWEEP_BATCH per
    reactor turn, so the reactor serves everyone else between batches; the members who stay
    are never sent more than one write per batch."""
    clock = ReactorClock()
    n = SWEEP_BATCH * 2 + SWEEP_BATCH // 2
    h, quiet, talking = idleRoom(n, 2, clock)
    for _, t in talking:
        t.writes = 0
    left = []
    clock.turn(1)  # the sweep's first turn
    left.append(sum(p.room is None for p in quiet))
    while clock.getDelayedCalls() and left[-1] < n:
        clock.turn()
        left.append(sum(p.room is None for p in quiet))
    assert left == [SWEEP_BATCH, 2 * SWEEP_BATCH, n]
    clock.turn(h.factory.config.noticeDelay)
    for _, t in talking:
        assert t.writes <= 3
        assert len(lines(t)) == n


def test_a_member_who_speaks_during_a_sweep_pass_stays() -> None:
    """A pass spread over several turns re-checks each member: one who spoke since the pass
    began (or left) is skipped."""
    clock = ReactorClock()
    h, quiet, _ = idleRoom(SWEEP_BATCH + 10, 1, clock)
    clock.turn(1)
    late = quiet[-1]
    late.dataReceived(b"still here\n")
    quiet[-2].dataReceived(b"/quit\n")
    clock.turn()
    assert late.room is not None
    assert all(p.room is None for p in quiet[:-1])


def test_stopping_the_factory_ends_a_sweep_pass() -> None:
    """stopFactory cancels the rest of a pass in progress: nothing is left on the clock."""
    clock = ReactorClock()
    h, quiet, talking = idleRoom(SWEEP_BATCH + 1, 0, clock, closeGrace=0)
    clock.turn(1)
    h.factory.stopFactory()
    clock.turn()  # the closed members' aborts (grace 0)
    clock.turn(h.factory.config.noticeDelay)  # the quit notices
    assert [c for c in clock.getDelayedCalls() if c.active()] == []
    assert quiet[-1].room is not None


def test_dismiss_flushes_each_room_once_and_first_delivers_what_was_owed() -> None:
    """ChatServer.dismiss: a leaver first gets the lines its room owed it, then its farewell,
    and nothing after; the others get every quit notice, together."""
    clock = Clock()
    server = ChatServer(clock=clock, noticeDelay=0.01)
    a, b, c, d = connected(server, 4)
    clock.advance(0.01)
    for p in (a, b, c, d):
        p.take()
    interpret(server, d, "last words")
    server.dismiss([a, b], "idle timeout", b"! bye\r\n")
    assert a.take() == b.take() == ["<guest4> last words", "! bye"]
    assert a.closed and b.closed
    assert c.take() == ["<guest4> last words"]
    clock.advance(0.01)
    assert (
        c.raw[-1] == b"*** guest1 has quit (idle timeout)\r\n*** guest2 has quit (idle timeout)\r\n"
    )
    assert a.take() == b.take() == []


# -- finding 2: closing a client that does not read ------------------------------------------


def test_quitting_frees_the_slots_at_once_and_aborts_a_client_that_does_not_read() -> None:
    """Issue 9 finding 2: after ``/quit`` the member's per-address and total slots are free at
    once, though its client has not taken what is queued; after --chat-close-grace the
    connection is aborted; its loss later frees nothing twice."""
    h = Harness(maxPerAddress=1, maxClients=2, closeGrace=5)
    a, ta = h.connect("127.0.0.2")
    h.connect("127.0.0.3")
    a.dataReceived(b"/quit\n")
    assert ta.disconnecting and not ta.disconnected  # waits for the client to read
    again = h.factory.buildProtocol(IPv4Address("TCP", "127.0.0.2", 1))
    assert isinstance(again, ChatProtocol)
    h.clock.advance(4.9)
    assert not ta.disconnected
    h.clock.advance(0.1)
    assert ta.disconnected  # abortConnection
    a.connectionLost(Failure(ConnectionDone()))
    assert h.factory.clients == 2
    assert h.factory.perAddress == {"127.0.0.2": 1, "127.0.0.3": 1}


def test_an_idle_client_that_does_not_read_is_aborted_after_the_grace() -> None:
    """Issue 9 finding 2: the idle timeout frees the slot at once and aborts the connection
    after --chat-close-grace if the client never took its farewell."""
    h = Harness(idleTimeout=10, maxPerAddress=1, closeGrace=3)
    a, ta = h.connect("127.0.0.2")
    h.clock.advance(12.5)  # the sweep at 12.5 finds it idle
    assert a.room is None and ta.disconnecting and not ta.disconnected
    assert h.factory.perAddress == {} and h.factory.clients == 0
    h.clock.advance(3)
    assert ta.disconnected


def test_a_connection_that_closes_in_time_leaves_no_timer() -> None:
    """A client that takes what is queued closes before the grace ends: its abort is cancelled."""
    h = Harness(closeGrace=5)
    a, ta = h.connect()
    a.dataReceived(b"/quit\n")
    assert h.timers()
    a.connectionLost(Failure(ConnectionDone()))
    h.clock.advance(h.factory.config.noticeDelay)  # the quit notice's wait
    assert not h.timers()
    assert h.factory.clients == 0


def test_closing_a_connection_already_lost_schedules_nothing() -> None:
    """A transport may lose its connection inside ``loseConnection`` (Twisted's TCP does
    when its write side is already shut): close then leaves no abort on the clock."""
    h = Harness(closeGrace=5)
    a, ta = h.connect()
    a.connectionLost(Failure(ConnectionDone()))
    a.close()
    h.clock.advance(h.factory.config.noticeDelay)
    assert not h.timers()
    assert h.factory.clients == 0


# -- finding 12: look-alike names and invisible characters -----------------------------------


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("paypal", "\u0440\u0430\u0443\u0440\u0430l"),  # Cyrillic r, a, u, r, a
        ("alice", "\uff41\uff4c\uff49\uff43\uff45"),  # fullwidth
        ("Alice", "ALICE"),
        ("bob", "b0b"),
        ("will", "wi11"),
        ("mary", "rnary"),
        ("admin", "\U0001d41a\U0001d41d\U0001d426\U0001d422\U0001d427"),  # mathematical bold
        ("Omega", "\u039fmega"),  # Greek capital omicron
    ],
)
def test_a_nick_that_looks_like_a_taken_one_is_refused(first: str, second: str) -> None:
    """Issue 9 finding 12: nicks are unique on their TR39 skeleton (after NFKC and case
    folding): a look-alike of a nick in use is ``nick taken``."""
    server = ChatServer()
    a, b = connected(server, 2)
    interpret(server, a, f"/nick {first}")
    a.take()
    b.take()
    interpret(server, b, f"/nick {second}")
    assert b.take()[0].startswith("! nick taken: ")
    assert b.nick == "guest2"


def test_fullwidth_names_are_shown_as_their_ascii_twins() -> None:
    """NFKC: a fullwidth nick or room becomes the ASCII one it stands for."""
    assert normalizeName("\uff41\uff4c\uff49\uff43\uff45") == "alice"
    server = ChatServer()
    (a,) = connected(server, 1)
    interpret(server, a, "/join \uff44\uff45\uff56")
    assert a.take()[-1] == "*** guest1 has joined #dev"


def test_a_room_that_looks_like_another_is_the_same_room() -> None:
    """Room names share the rule: ``#l\u043ebby`` (Cyrillic o) is ``#lobby``."""
    server = ChatServer()
    (a,) = connected(server, 1)
    interpret(server, a, "/join #l\u043ebby")
    assert a.take() == ["! you are already in #lobby"]


def test_names_that_merely_differ_stay_distinct() -> None:
    """The skeleton merges look-alikes only: different names keep different keys."""
    names = ["alice", "alicia", "bob", "bobby", "\u65e5\u672c", "\u0437\u043e\u044f", "zoe"]
    assert len({nameKey(normalizeName(n) or "") for n in names}) == len(names)


@pytest.mark.parametrize(
    "name",
    [
        "\u3164",  # HANGUL FILLER: a letter that shows as nothing
        "ab\u115fcd",
        "\uffa0",
        "bob\u202e",  # RIGHT-TO-LEFT OVERRIDE
        "a\u200bb",  # ZERO WIDTH SPACE
        "a\u2028b",
    ],
)
def test_invisible_and_control_characters_make_a_name_invalid(name: str) -> None:
    """Issue 9 finding 12: a name with a character that shows as nothing, or reorders or
    breaks the line, is refused."""
    assert normalizeName(name) is None


@pytest.mark.parametrize(
    "char",
    [
        "\u202a",
        "\u202b",
        "\u202c",
        "\u202d",
        "\u202e",
        "\u2066",
        "\u2067",
        "\u2068",
        "\u2069",
        "\u200e",
        "\u200f",
        "\u061c",
        "\u2028",
        "\u2029",
        "\u200b",
        "\u2060",
        "\ufeff",
        "\U000e0041",  # TAG LATIN CAPITAL LETTER A
        "\x1b",
        "\x85",
    ],
)
def test_bidi_controls_and_line_separators_are_removed_from_relayed_text(char: str) -> None:
    """Issue 9 finding 12: BiDi embeddings, overrides, isolates and marks, line and
    paragraph separators and the other format and control characters never reach others."""
    server = ChatServer()
    a, b = connected(server, 2)
    interpret(server, a, f"evil{char}txt.exe")
    interpret(server, a, f"/me waves{char}back")
    interpret(server, a, f"/msg guest2 psst{char}!")
    assert b.take() == ["<guest1> eviltxt.exe", "* guest1 wavesback", "*guest1* psst!"]


def test_clean_text_keeps_tabs_joiners_and_other_scripts() -> None:
    """What is kept: TAB, the zero-width joiner and non-joiner (emoji sequences, Persian),
    right-to-left letters, other spaces."""
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
    persian = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"
    assert cleanText(f" a\tb {family} {persian}\u3000x ") == f"a\tb {family} {persian}\u3000x"


def test_the_skeleton_table_follows_tr39() -> None:
    """Spot checks of the rebuilt TR39 classes, in both directions of a pair."""
    table = prototypes()
    assert table["\u0430"] == "a"  # Cyrillic a
    assert "a" not in table  # a prototype
    assert skeleton("\u0261") == skeleton("g")  # LATIN SMALL LETTER SCRIPT G
    assert skeleton("m") == "rn"
    assert skeleton("\uff9e") == skeleton("\u309b")  # two marks alike only to each other
