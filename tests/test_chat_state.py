"""The chat state and command language without any I/O: who receives which line, in which form."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from netproto.chat.commands import COMMANDS, interpret
from netproto.chat.state import (
    LIST_LINE,
    ChatServer,
    IParticipant,
    cleanText,
    listLines,
    normalizeName,
)
from tests.chatkit import Fake, connected


def test_fake_participant_provides_the_interface() -> None:
    """The test double is a faithful IParticipant, so these tests hold for the protocol too."""
    assert verifyObject(IParticipant, Fake())


def test_connect_gives_a_guest_nick_the_lobby_and_a_welcome() -> None:
    """A newcomer is named guestN in #lobby by a welcome notice; the lobby hears of the join."""
    server = ChatServer()
    a = Fake()
    server.connect(a)
    assert a.take() == [
        "*** Welcome to netproto chat. You are guest1 in #lobby. /help for commands."
    ]
    b = Fake()
    server.connect(b)
    assert a.take() == ["*** guest2 has joined #lobby"]
    assert b.take()[0].startswith("*** Welcome to netproto chat. You are guest2 in #lobby.")


def test_guest_nicks_skip_names_already_taken() -> None:
    """A free guest nick is chosen even if someone took guestN by hand."""
    server = ChatServer()
    (a,) = connected(server, 1)
    interpret(server, a, "/nick GUEST2")
    b = Fake()
    server.connect(b)
    assert b.nick == "guest3"


def test_messages_reach_exactly_the_other_members_of_the_room() -> None:
    """``<NICK> TEXT`` goes to the room's other members, not the sender, not other rooms."""
    server = ChatServer()
    a, b, c = connected(server, 3)
    interpret(server, c, "/join dev")
    for p in (a, b, c):
        p.take()
    interpret(server, a, "hello there")
    assert a.take() == []
    assert b.take() == ["<guest1> hello there"]
    assert c.take() == []


def test_one_encoded_line_is_shared_by_every_recipient() -> None:
    """A broadcast encodes its line once: every recipient gets the same bytes object."""
    server = ChatServer()
    a, b, c = connected(server, 3)
    interpret(server, a, "shared")
    assert b.raw[-1] is c.raw[-1]


def test_slash_slash_escapes_a_leading_slash() -> None:
    """``//TEXT`` says ``/TEXT``."""
    server = ChatServer()
    a, b = connected(server, 2)
    interpret(server, a, "//etc/passwd is a file")
    assert b.take() == ["<guest1> /etc/passwd is a file"]


def test_blank_and_control_only_lines_are_ignored() -> None:
    """Blank lines (and lines of control characters) send nothing to anyone."""
    server = ChatServer()
    a, b = connected(server, 2)
    for text in ("", "   ", "\x1b\x07"):
        interpret(server, a, text)
    assert a.take() == [] and b.take() == []


def test_control_characters_are_removed_from_relayed_text() -> None:
    """Terminal escapes are not relayed to other people's terminals; tabs are kept."""
    server = ChatServer()
    a, b = connected(server, 2)
    interpret(server, a, "red\x1b[31m\ttext\x9b")
    assert b.take() == ["<guest1> red[31m\ttext"]


def test_action_goes_to_the_others_in_the_room() -> None:
    """``/me TEXT`` gives ``* NICK TEXT`` to the others in the room."""
    server = ChatServer()
    a, b = connected(server, 2)
    interpret(server, a, "/me waves")
    assert b.take() == ["* guest1 waves"]
    assert a.take() == []


def test_private_message_reaches_only_its_target_in_any_room() -> None:
    """``/msg NICK TEXT`` gives ``*SENDER* TEXT`` to NICK alone, in any room, any case."""
    server = ChatServer()
    a, b, c = connected(server, 3)
    interpret(server, c, "/join dev")
    interpret(server, c, "/nick Carol")
    for p in (a, b, c):
        p.take()
    interpret(server, a, "/msg carol psst, over here")
    assert c.take() == ["*guest1* psst, over here"]
    assert a.take() == [] and b.take() == []


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("/msg nobody hi", "! no such nick: nobody"),
        ("/msg guest2", "! usage: /msg NICK TEXT"),
        ("/msg", "! usage: /msg NICK TEXT"),
        ("/nick", "! usage: /nick NAME"),
        ("/nick guest2", "! nick taken: guest2"),
        ("/nick GUEST2", "! nick taken: GUEST2"),
        ("/nick guest1", "! you are already guest1"),
        ("/nick two words", "! invalid nick: two words (1-32 letters, digits, _ or -)"),
        ("/nick " + "x" * 33, "! invalid nick: " + "x" * 33 + " (1-32 letters, digits, _ or -)"),
        ("/nick a.b", "! invalid nick: a.b (1-32 letters, digits, _ or -)"),
        ("/join", "! usage: /join ROOM"),
        ("/join #lobby", "! you are already in #lobby"),
        ("/join LOBBY", "! you are already in #lobby"),
        (
            "/join #a b",
            "! invalid room name: #a b (1-32 letters, digits, _ or -, after an optional #)",
        ),
        (
            "/join ##x",
            "! invalid room name: ##x (1-32 letters, digits, _ or -, after an optional #)",
        ),
        ("/me", "! usage: /me TEXT"),
        ("/frobnicate now", "! unknown command: /frobnicate (try /help)"),
        ("/", "! unknown command: / (try /help)"),
    ],
)
def test_every_mistake_gets_an_error_line_and_changes_nothing(line: str, error: str) -> None:
    """Each error answers the sender alone with one ``! TEXT`` line; nobody else hears a thing."""
    server = ChatServer()
    a, b = connected(server, 2)
    interpret(server, a, line)
    assert a.take() == [error]
    assert b.take() == []
    assert a.nick == "guest1" and a.room is b.room
    interpret(server, a, "still here")
    assert b.take() == ["<guest1> still here"]


def test_nick_change_reaches_the_room_including_the_changer() -> None:
    """``*** OLD is now known as NEW`` reaches the room, the changer included, and no further."""
    server = ChatServer()
    a, b, c = connected(server, 3)
    interpret(server, c, "/join dev")
    for p in (a, b, c):
        p.take()
    interpret(server, a, "/nick Ålice")
    assert a.take() == b.take() == ["*** guest1 is now known as Ålice"]
    assert c.take() == []
    interpret(server, c, "/msg ÅLICE hi")
    assert a.take() == ["*guest3* hi"]


def test_a_nick_may_change_case_and_frees_the_old_name() -> None:
    """Renaming to another case of one's own nick works; the old nick is free afterwards."""
    server = ChatServer()
    a, b = connected(server, 2)
    interpret(server, a, "/nick alice")
    interpret(server, a, "/nick Alice")
    assert a.nick == "Alice"
    interpret(server, b, "/nick guest1")
    assert b.nick == "guest1"


def test_join_and_part_notices_reach_the_right_rooms() -> None:
    """Moving: the old room hears ``has left``, the new one ``has joined``; the mover sees both."""
    server = ChatServer()
    a, b, c = connected(server, 3)
    interpret(server, c, "/join dev")
    assert a.take() == b.take() == ["*** guest3 has left #lobby"]
    assert c.take() == ["*** guest3 has left #lobby", "*** guest3 has joined #dev"]
    interpret(server, a, "/join DEV")
    assert b.take() == ["*** guest1 has left #lobby"]
    assert c.take() == ["*** guest1 has joined #dev"]
    assert a.take() == ["*** guest1 has left #lobby", "*** guest1 has joined #dev"]


def test_rooms_are_created_on_demand_shown_with_a_hash_and_dropped_when_empty() -> None:
    """``/join x`` and ``/join #x`` are one room, shown as ``#x``; an emptied room disappears."""
    server = ChatServer()
    a, b = connected(server, 2)
    interpret(server, a, "/join Café")
    interpret(server, b, "/join #café")
    assert a.room is b.room and a.room is not None and a.room.label == "#Café"
    assert "lobby" not in server.rooms
    a.take()
    interpret(server, a, "/rooms")
    assert a.take() == ["*** 1 room: #Café (2)"]


def test_quit_tells_the_room_with_the_reason_then_closes() -> None:
    """``/quit REASON``: the others get ``*** NICK has quit (REASON)`` and the quitter is closed."""
    server = ChatServer()
    a, b = connected(server, 2)
    interpret(server, a, "/quit off to bed")
    assert b.take() == ["*** guest1 has quit (off to bed)"]
    assert a.closed and a.room is None
    assert "guest1" not in server.nicks
    server.disconnect(a, "connection closed")  # the connection closing afterwards
    assert b.take() == []


def test_quit_without_reason_and_disconnects_name_a_reason() -> None:
    """Every quit notice carries a reason, even when the client gave none."""
    server = ChatServer()
    a, b, c = connected(server, 3)
    interpret(server, a, "/quit")
    server.disconnect(b, "connection lost")
    assert c.take() == ["*** guest1 has quit (quit)", "*** guest2 has quit (connection lost)"]


def test_who_lists_the_room_in_join_order_and_rooms_lists_counts() -> None:
    """``/who`` and ``/rooms`` answer the asker alone with notices."""
    server = ChatServer()
    a, b, c = connected(server, 3)
    interpret(server, b, "/join zoo")
    a.take(), c.take()
    interpret(server, a, "/who")
    assert a.take() == ["*** 2 in #lobby: guest1, guest3"]
    interpret(server, a, "/rooms")
    assert a.take() == ["*** 2 rooms: #lobby (2), #zoo (1)"]
    assert c.take() == [] and b.take() == [
        "*** guest2 has left #lobby",
        "*** guest2 has joined #zoo",
    ]


def test_long_lists_are_split_into_several_lines() -> None:
    """A room of hundreds is listed over several bounded lines, every nick present once."""
    lines = [
        ln.decode().removesuffix("\r\n")
        for ln in listLines("300 in #big", (f"user{i}" for i in range(300)))
    ]
    assert len(lines) > 1
    assert all(len(ln) < LIST_LINE + 40 for ln in lines)
    assert lines[0].startswith("*** 300 in #big: user0, user1")
    assert lines[1].startswith("*** ... ")
    names = [n for ln in lines for n in ln.split(": ", 1)[-1].removeprefix("*** ... ").split(", ")]
    assert names == [f"user{i}" for i in range(300)]


def test_help_lists_every_command() -> None:
    """``/help`` names every command of PROTOCOL.md section 1."""
    server = ChatServer()
    (a,) = connected(server, 1)
    interpret(server, a, "/HELP")
    text = "\n".join(a.take())
    for name in COMMANDS:
        assert f"/{name}" in text
    assert all(line.startswith("*** ") for line in text.splitlines())


def test_history_is_replayed_to_joiners_marked_as_history() -> None:
    """A joiner first gets the room's last messages as ``*** history: ...``, oldest first."""
    server = ChatServer(historyLength=2)
    a, b = connected(server, 2)
    interpret(server, a, "/join dev")
    interpret(server, a, "one")
    interpret(server, a, "/me two")
    interpret(server, a, "/msg guest2 private")
    interpret(server, a, "three")
    b.take()
    interpret(server, b, "/join dev")
    assert b.take() == [
        "*** guest2 has left #lobby",
        "*** guest2 has joined #dev",
        "*** history: * guest1 two",
        "*** history: <guest1> three",
    ]
    c = Fake()
    server.connect(c)  # into #lobby, which has no history
    assert len(c.take()) == 1


def test_history_is_replayed_after_the_welcome_and_can_be_off() -> None:
    """The welcome comes first, then the lobby's history; with length 0 nothing is kept."""
    server = ChatServer(historyLength=20)
    (a,) = connected(server, 1)
    interpret(server, a, "earlier")
    b = Fake()
    server.connect(b)
    assert b.take()[1:] == ["*** history: <guest1> earlier"]
    quiet = ChatServer(historyLength=0)
    (x,) = connected(quiet, 1)
    interpret(quiet, x, "earlier")
    y = Fake()
    quiet.connect(y)
    assert len(y.take()) == 1


def test_a_room_emptied_loses_its_history() -> None:
    """History belongs to a room, and a room ends when its last member leaves."""
    server = ChatServer()
    a, b = connected(server, 2)
    interpret(server, a, "/join dev")
    interpret(server, a, "secret")
    interpret(server, a, "/join lobby")
    b.take()
    interpret(server, b, "/join dev")
    assert b.take() == ["*** guest2 has left #lobby", "*** guest2 has joined #dev"]


def test_a_participant_dropping_out_during_a_broadcast_does_not_disturb_it() -> None:
    """Delivery iterates a snapshot: a member leaving mid-broadcast does not skip anyone."""
    server = ChatServer()
    a, b, c, d = connected(server, 4)

    def leaveOnDelivery(line: bytes) -> None:
        Fake.deliver(b, line)
        server.disconnect(b, "gone")

    b.deliver = leaveOnDelivery  # type: ignore[method-assign]
    interpret(server, a, "hi")
    assert c.take() == d.take() == ["*** guest2 has quit (gone)", "<guest1> hi"]


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("a", True),
        ("x" * 32, True),
        ("x" * 33, False),
        ("", False),
        ("Zoë", True),
        ("Zoe\u0308", True),  # NFD: e + combining diaeresis, normalised to ë
        ("日本語", True),
        ("a_b-c9", True),
        ("a b", False),
        ("a#b", False),
        ("a.b", False),
        ("a\x00", False),
    ],
)
def test_name_rules(name: str, ok: bool) -> None:
    """1-32 letters (any script), digits, ``_`` or ``-``, after NFC normalisation."""
    assert (normalizeName(name) is not None) is ok


def test_clean_text_keeps_tabs_and_unicode() -> None:
    """Cleaning removes control characters only."""
    assert cleanText(" héllo\t日本\x07 ") == "héllo\t日本"


# -- coalescing: broadcasts of one reactor turn go out together ------------------------


NOTICE_DELAY = 0.01


class Turn:
    """The reactor's clock for a room: ``end()`` ends the turn (what ``callLater(0)``
    scheduled runs), ``wait(s)`` lets ``s`` seconds pass."""

    def __init__(self) -> None:
        self.clock = Clock()

    def end(self) -> None:
        self.clock.advance(0)

    def wait(self, seconds: float) -> None:
        self.clock.advance(seconds)


def coalescing(n: int) -> tuple[ChatServer, Turn, list[Fake]]:
    turn = Turn()
    server = ChatServer(clock=turn.clock, noticeDelay=NOTICE_DELAY)
    people = connected(server, n)
    turn.wait(NOTICE_DELAY)
    for p in people:
        p.take()
        p.raw.clear()
    return server, turn, people


def test_a_turns_broadcasts_reach_each_member_as_one_shared_write() -> None:
    """Lines from one turn are joined once: every member due all of them gets the same single
    bytes object; a sender gets the others' lines only, in order."""
    server, turn, (a, b, c, d) = coalescing(4)
    interpret(server, a, "one")
    interpret(server, b, "two")
    interpret(server, a, "/me three")
    assert c.raw == []
    turn.end()
    assert len(c.raw) == len(d.raw) == 1 and c.raw[0] is d.raw[0]
    assert c.take() == ["<guest1> one", "<guest2> two", "* guest1 three"]
    assert a.take() == ["<guest2> two"]
    assert b.take() == ["<guest1> one", "* guest1 three"]


def test_a_member_joining_mid_turn_gets_only_what_follows_its_join() -> None:
    """A newcomer is not sent lines broadcast before it joined (it gets them as history)."""
    server, turn, (a, b) = coalescing(2)
    interpret(server, a, "before")
    c = Fake()
    server.connect(c)
    interpret(server, a, "after")
    turn.end()
    assert c.take() == [
        "*** Welcome to netproto chat. You are guest3 in #lobby. /help for commands.",
        "*** history: <guest1> before",
        "<guest1> after",
    ]
    assert b.take() == ["<guest1> before", "*** guest3 has joined #lobby", "<guest1> after"]


def test_direct_lines_never_overtake_room_lines_owed_to_the_same_member() -> None:
    """A private message after a room message arrives after it (the room flushes first)."""
    server, turn, (a, b) = coalescing(2)
    interpret(server, a, "public")
    interpret(server, a, "/msg guest2 private")
    assert b.take() == ["<guest1> public", "*guest1* private"]
    turn.end()
    assert b.take() == []


def test_a_member_leaving_mid_turn_gets_nothing_more_and_a_mover_gets_what_it_was_owed() -> None:
    """Disconnected members are skipped at the flush; a member changing rooms first gets the
    old room's pending lines, then its part and join notices."""
    server, turn, (a, b, c) = coalescing(3)
    interpret(server, a, "hello")
    server.disconnect(b, "gone")
    interpret(server, c, "/join dev")
    turn.end()
    assert b.take() == []
    assert c.take() == [
        "<guest1> hello",
        "*** guest2 has quit (gone)",
        "*** guest3 has left #lobby",
        "*** guest3 has joined #dev",
    ]
    assert a.take() == ["*** guest2 has quit (gone)", "*** guest3 has left #lobby"]


def test_quit_delivers_the_notice_before_closing() -> None:
    """``/quit`` flushes the quit notice to the room before the quitter is closed."""
    server, turn, (a, b) = coalescing(2)
    closedAfter: list[list[str]] = []
    a.close = lambda: closedAfter.append(list(b.lines))  # type: ignore[method-assign]
    interpret(server, a, "/quit bye")
    assert closedAfter == [["*** guest1 has quit (bye)"]]


def test_a_quitter_first_gets_what_its_room_owed_it() -> None:
    """Lines broadcast to the room before a ``/quit`` in the same turn still reach the quitter."""
    server, turn, (a, b) = coalescing(2)
    interpret(server, b, "before you go")
    interpret(server, a, "/nick leaver")
    interpret(server, a, "/quit")
    assert a.take() == ["<guest2> before you go", "*** guest1 is now known as leaver"]
    assert b.take() == ["*** guest1 is now known as leaver", "*** leaver has quit (quit)"]


def test_a_burst_of_connections_costs_each_member_one_write() -> None:
    """Joins in one turn go out together: a newcomer's own (excluded) join notice does not
    flush the room, so each earlier member gets all the notices as one write, and each
    newcomer gets its welcome, then only the joins that followed its own."""
    server, turn, (a, b) = coalescing(2)
    newcomers = [Fake() for _ in range(4)]
    for n in newcomers:
        server.connect(n)
    for n in newcomers:
        assert len(n.raw) == 1 and n.take()[0].startswith("*** Welcome")
    turn.wait(NOTICE_DELAY)
    joins = [f"*** guest{i} has joined #lobby" for i in range(3, 7)]
    assert len(a.raw) == len(b.raw) == 1 and a.raw[0] is b.raw[0]
    assert a.take() == joins
    for i, n in enumerate(newcomers):
        assert n.take() == joins[i + 1 :]
        assert len(n.raw) == (2 if i < 3 else 1)


def test_room_notices_wait_for_a_message_and_go_out_with_it() -> None:
    """A join notice is not sent alone on the next turn; a message from the newcomer then
    carries it: the members get both, in order, in one write."""
    server, turn, (a, b) = coalescing(2)
    c = Fake()
    server.connect(c)
    turn.end()
    assert a.raw == []
    interpret(server, c, "hi all")
    turn.end()
    assert len(a.raw) == 1
    assert a.take() == ["*** guest3 has joined #lobby", "<guest3> hi all"]


def test_room_notices_alone_go_out_after_the_notice_delay() -> None:
    """With no message to wait for, notices go out once the notice delay has passed."""
    server, turn, (a, b) = coalescing(2)
    interpret(server, b, "/nick bee")
    turn.wait(NOTICE_DELAY / 2)
    assert a.take() == [] and b.take() == []
    turn.wait(NOTICE_DELAY / 2)
    assert a.take() == b.take() == ["*** guest2 is now known as bee"]


def test_a_direct_line_first_delivers_the_notices_owed_to_its_target() -> None:
    """A private message to a member due a waiting notice arrives after that notice."""
    server, turn, (a, b) = coalescing(2)
    c = Fake()
    server.connect(c)
    interpret(server, c, "/msg guest1 psst")
    assert a.take() == ["*** guest3 has joined #lobby", "*guest3* psst"]
    turn.wait(NOTICE_DELAY)
    assert a.take() == [] and b.take() == ["*** guest3 has joined #lobby"]


def test_the_welcome_and_the_history_are_one_write() -> None:
    """A newcomer's welcome and its room's history arrive together, in that order."""
    server = ChatServer(historyLength=5)
    (a,) = connected(server, 1)
    interpret(server, a, "one")
    interpret(server, a, "two")
    b = Fake()
    server.connect(b)
    assert len(b.raw) == 1
    assert b.take()[1:] == ["*** history: <guest1> one", "*** history: <guest1> two"]
