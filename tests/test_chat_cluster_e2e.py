"""One chat over three real ``twistd -n netproto --chat-redis`` servers sharing a real
redis-server, driven by real chat clients over TCP (PROTOCOL.md sections 1 and 8).

The three servers and Redis start once for the module; each test uses its own
nicks and rooms, so tests do not see each other's members.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.rediskit import LineClient, Redis, redisServer
from tests.support import Twistd, runTwistd
from tests.webkit import connectSocket, receiveUntil, welcomedAs

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

_names = itertools.count(1)


def unique(prefix: str) -> str:
    return f"{prefix}{next(_names)}"


def startCluster(stack: ExitStack, tmp: Path, redis: Redis, n: int) -> list[Twistd]:
    """``n`` servers on one Redis; the first also serves the browser chat (--web)."""
    servers = []
    for i in range(n):
        home = tmp / f"server{i}"
        home.mkdir()
        web = ("--web", "tcp:0:interface=127.0.0.1") if i == 0 else ("--web", "none")
        served = ("chat", "web") if i == 0 else ("chat",)
        servers.append(
            stack.enter_context(runTwistd(home, "--chat-redis", redis.url, *web, services=served))
        )
    for server in servers:
        server.waitLog(r"cluster: joined as server")
    return servers


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Twistd]]:
    """Three servers linked to one Redis."""
    tmp = tmp_path_factory.mktemp("cluster")
    with redisServer(tmp) as redis, ExitStack() as stack:
        yield startCluster(stack, tmp, redis, 3)


@pytest.fixture
def cluster(servers: list[Twistd]) -> list[int]:
    """The chat ports of the three servers."""
    return [s.port("chat") for s in servers]


@pytest.fixture
def people(cluster: list[int]) -> Iterator[list[LineClient]]:
    """One member on each server, renamed to fresh nicks, together in a fresh room."""
    room = unique("room")
    clients = [LineClient(port) for port in cluster]
    try:
        for c in clients:
            c.rename(unique("p"))
            c.send(f"/join {room}")
            c.expect(f"*** {c.nick} has joined #{room}")
        for c in clients:
            c.sync("ready")
        yield clients
    finally:
        for c in clients:
            c.close()


def test_a_message_reaches_the_room_on_every_server_and_not_its_sender(
    people: list[LineClient],
) -> None:
    """``<NICK> TEXT`` reaches the members on the two other servers; the sender
    does not get its own line back."""
    a, b, c = people
    a.send("hello everyone", "/me waves")
    for other in (b, c):
        assert other.until("*") == [f"<{a.nick}> hello everyone", f"* {a.nick} waves"]
    assert a.sync("s") == []


def test_who_and_rooms_count_members_of_every_server(people: list[LineClient]) -> None:
    """``/who`` lists the room's members on all three servers in join order; ``/rooms``
    counts them."""
    a, b, c = people
    b.send("/who")
    who = b.expect("*** 3 in #")
    assert who.endswith(f": {a.nick}, {b.nick}, {c.nick}")
    room = who.split(" in ", 1)[1].split(":", 1)[0]
    c.send("/rooms")
    assert f"{room} (3)" in c.expect("*** ")


def test_nicks_are_unique_across_servers_and_msg_crosses_them(people: list[LineClient]) -> None:
    """A nick held on one server is taken on the others (case and look-alikes too);
    ``/msg`` reaches a member on another server, and an unknown nick is an error."""
    a, b, c = people
    b.send(f"/nick {a.nick.upper()}")
    assert b.expect("! ") == f"! nick taken: {a.nick.upper()}"
    c.send(f"/msg {a.nick} psst")
    assert a.expect(f"*{c.nick}*") == f"*{c.nick}* psst"
    c.send("/msg nobody-here-at-all hi")
    assert c.expect("! ") == "! no such nick: nobody-here-at-all"


def test_joins_parts_nick_changes_and_quits_are_seen_everywhere(
    people: list[LineClient], cluster: list[int]
) -> None:
    """Each room notice reaches the members on every server in its section-1 form,
    and nothing else comes with it."""
    a, b, c = people
    old = c.nick
    c.rename(unique("renamed"))
    for other in (a, b):
        assert other.until("***") == [f"*** {old} is now known as {c.nick}"]
    b.send("/who")
    target = b.expect("*** 3 in #").split(" in ", 1)[1].split(":", 1)[0]
    d = LineClient(cluster[1])
    try:
        d.send("/join #lobby")  # already there: an error, and no notice anywhere
        assert d.line() == "! you are already in #lobby"
        d.send(f"/join {target}")
        for other in (a, b, c):
            assert other.until("***") == [f"*** {d.nick} has joined {target}"]
        d.send("/join elsewhere-" + d.nick)
        for other in (a, b, c):
            assert other.until("***") == [f"*** {d.nick} has left {target}"]
        d.send(f"/join {target}", "/quit gone fishing")
        for other in (a, b, c):
            assert other.until("***") == [f"*** {d.nick} has joined {target}"]
            assert other.until("***") == [f"*** {d.nick} has quit (gone fishing)"]
        d.expect(f"*** {d.nick} has joined {target}")
        while d.line() is not None:  # the server closes the connection
            pass
    finally:
        d.close()


def test_history_on_join_holds_lines_from_every_server(
    people: list[LineClient], cluster: list[int]
) -> None:
    """A joiner gets the room's last messages, said on any server, marked as history,
    right after its join notice."""
    a, b, c = people
    a.send("from a")
    c.expect(f"<{a.nick}> from a")
    b.send("from b")
    c.expect(f"<{b.nick}> from b")  # both said, in this order, before the joiner comes
    b.send("/who")
    target = b.expect("*** 3 in #").split(" in ", 1)[1].split(":", 1)[0]
    joiner = LineClient(cluster[2])
    try:
        joiner.send(f"/join {target}")
        got = joiner.until(f"*** history: <{b.nick}> from b")
        assert got[-3:] == [
            f"*** {joiner.nick} has joined {target}",
            f"*** history: <{a.nick}> from a",
            f"*** history: <{b.nick}> from b",
        ]
    finally:
        joiner.close()


def test_every_member_sees_each_senders_lines_in_order_once(
    people: list[LineClient], cluster: list[int]
) -> None:
    """Three senders, one per server, each send 30 numbered lines without waiting:
    every member gets every other sender's lines exactly once and in the order sent,
    and two listeners on two servers see all 90 in one and the same order."""
    count = 30
    a = people[0]
    a.send("/who")
    room = a.expect("*** 3 in #").split(" in ", 1)[1].split(":", 1)[0]
    listeners = [LineClient(cluster[0]), LineClient(cluster[2])]
    try:
        for listener in listeners:
            listener.send(f"/join {room}")
            listener.expect(f"*** {listener.nick} has joined {room}")
        for member in people + listeners:
            member.sync("before")
        for sender in people:
            sender.send(*(f"n{i}" for i in range(count)))
        views = {}
        for member in people + listeners:
            senders = [s for s in people if s is not member]
            got: list[str] = []
            waiting = {f"<{s.nick}> n{count - 1}" for s in senders}
            while waiting:
                line = member.line()
                assert line is not None
                got.append(line)
                waiting.discard(line)
            assert member.sync("after") == []  # nothing more: no line twice
            views[member.nick] = got
            assert len(got) == count * len(senders)
            for sender in senders:
                mine = [line for line in got if line.startswith(f"<{sender.nick}> ")]
                assert mine == [f"<{sender.nick}> n{i}" for i in range(count)]
        assert views[listeners[0].nick] == views[listeners[1].nick]
    finally:
        for listener in listeners:
            listener.close()


def test_a_nick_claimed_on_two_servers_at_once_goes_to_exactly_one(
    cluster: list[int],
) -> None:
    """Two members on two servers, each alone in a room, ask for the same nick at the
    same moment, ten times over: each time exactly one gets it and the other is
    told it is taken."""
    a, b = LineClient(cluster[0]), LineClient(cluster[1])
    try:
        for member in (a, b):
            room = unique("solo")
            member.send(f"/join {room}")
            member.expect(f"*** {member.nick} has joined #{room}")
        for _ in range(10):
            nick = unique("contested")
            a.send(f"/nick {nick}")
            b.send(f"/nick {nick}")
            answers = [a.line(), b.line()]
            won = [f"*** {m.nick} is now known as {nick}" for m in (a, b)]
            lost = f"! nick taken: {nick}"
            assert answers in ([won[0], lost], [lost, won[1]])
            winner = a if answers[0] == won[0] else b
            winner.nick = nick
    finally:
        a.close()
        b.close()


def test_a_browser_member_is_in_the_cluster_too(servers: list[Twistd]) -> None:
    """A member over the web service's WebSocket on one server and a telnet member on
    another share the cluster's nicks and rooms: each sees the other's nick change
    and line."""
    ws = connectSocket(servers[0].port("web"))
    telnet = LineClient(servers[2].port("chat"))
    try:
        welcomedAs(receiveUntil(ws, "Welcome"))
        room = unique("web")
        ws.send(f"/join {room}")
        receiveUntil(ws, f"has joined #{room}")
        telnet.send(f"/join {room}")
        telnet.expect(f"*** {telnet.nick} has joined #{room}")
        browser = unique("browser")
        ws.send(f"/nick {browser}")
        assert telnet.until("***")[-1].endswith(f" is now known as {browser}")
        telnet.send("hello browser")
        assert receiveUntil(ws, "hello browser")[-1] == f"<{telnet.nick}> hello browser"
        ws.send("hello telnet")
        assert telnet.expect(f"<{browser}>") == f"<{browser}> hello telnet"
    finally:
        ws.close()
        telnet.close()
