"""The chat cluster's logic on fakes: a scripted link instead of Redis, fake
participants, a fake clock (netproto.chat.cluster, netproto.chat.redisurl)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from netproto.chat import cluster
from netproto.chat.cluster import ClusterChatServer
from netproto.chat.redislink import LinkDown
from netproto.chat.redisurl import RedisAddress, redisURL
from netproto.chat.scripts import PREFIX
from netproto.chat.state import nameKey
from tests.chatkit import Fake


@dataclass
class Call:
    name: str  # a script's name, or a command (INCR, ZRANGE, SUBSCRIBE)
    args: tuple[Any, ...]
    d: Deferred[Any] = field(default_factory=Deferred)


class FakeLink:
    """Records what the cluster asks of Redis; the test answers."""

    def __init__(self) -> None:
        self.listener: Any = None
        self.calls: list[Call] = []
        self.resets = 0
        self.unsubscribed: list[bytes] = []

    def _call(self, name: str, args: tuple[Any, ...]) -> Deferred[Any]:
        call = Call(name, args)
        self.calls.append(call)
        return call.d

    def execute(self, *args: Any) -> Deferred[Any]:
        return self._call(args[0], args[1:])

    def script(self, name: str, keys: Any, args: Any) -> Deferred[Any]:
        assert args[0] == PREFIX
        return self._call(name, tuple(args[1:]))

    def subscribe(self, channel: bytes) -> Deferred[Any]:
        return self._call("SUBSCRIBE", (channel,))

    def unsubscribe(self, channel: bytes) -> None:
        self.unsubscribed.append(channel)

    def reset(self) -> None:
        self.resets += 1

    def stop(self) -> Deferred[None]:
        return succeed(None)

    def names(self) -> list[str]:
        return [c.name for c in self.calls if not c.d.called]

    def answer(self, name: str, value: Any = None) -> tuple[Any, ...]:
        """Fire the oldest unanswered call of ``name`` with ``value``; its args."""
        for call in self.calls:
            if call.name == name and not call.d.called:
                call.d.callback(value)
                return call.args
        raise AssertionError(f"no {name} waiting; waiting: {self.names()}")

    def fail(self) -> None:
        """The connections were lost: what waits fails, the listener hears it."""
        self.listener.linkDown()
        for call in self.calls:
            if not call.d.called:
                call.d.errback(LinkDown())


def make() -> tuple[ClusterChatServer, FakeLink, Clock]:
    link, clock = FakeLink(), Clock()
    return ClusterChatServer(link, 20, clock, serverId="srv"), link, clock


def bringUp(server: ClusterChatServer, link: FakeLink) -> None:
    server.linkUp()
    link.answer("SUBSCRIBE")  # the server's own channel
    while "SUBSCRIBE" in link.names():  # its rooms'
        link.answer("SUBSCRIBE")
    link.answer("heartbeat", [1, 0])
    assert server.linked


def arrive(server: ClusterChatServer, link: FakeLink, p: Fake, number: int) -> None:
    """Answer a new member's connection: the lobby, guest ``number``, its welcome."""
    if "SUBSCRIBE" in link.names():
        link.answer("SUBSCRIBE")
    link.answer("INCR", number)
    args = link.answer("claim", 1)
    member = args[1]
    server.message(
        f"{PREFIX}s:srv".encode(),
        member.encode() + b" hlobby\n*** Welcome, guest" + str(number).encode() + b"\r\n",
    )


def linkedMember(number: int = 1) -> tuple[ClusterChatServer, FakeLink, Clock, Fake]:
    server, link, clock = make()
    bringUp(server, link)
    p = Fake()
    server.connect(p)
    arrive(server, link, p, number)
    assert p.take() == [f"*** Welcome, guest{number}"]
    return server, link, clock, p


def room(name: str = "lobby") -> bytes:
    return f"{PREFIX}r:{name}".encode()


def startJoin(server: ClusterChatServer, link: FakeLink, p: Fake, name: str) -> bytes:
    """``p`` asks to join ``name``; Redis subscribed and ran the join. ``p``'s member id."""
    server.join(p, name)
    link.answer("SUBSCRIBE")
    link.answer("join", 1)
    return server._ids[p].encode()


def test_a_members_commands_wait_behind_the_one_that_waits_for_redis() -> None:
    """Lines sent while the member's connection waits for Redis go out after its
    welcome, in order, with its cluster-wide nick."""
    server, link, _ = make()
    bringUp(server, link)
    p = Fake()
    server.connect(p)
    server.say(p, "first")
    server.act(p, "second")
    assert "say" not in link.names()
    arrive(server, link, p, 7)
    says = [c.args for c in link.calls if c.name == "say"]
    assert [a[2] for a in says] == [b"<guest7> first\r\n", b"* guest7 second\r\n"]
    assert p.nick == "guest7"
    assert server.nicks[nameKey("guest7")] is p


def test_a_member_past_the_queue_bound_is_told_to_slow_down() -> None:
    """At most MAX_QUEUED commands wait; the next is dropped with ``! slow down``."""
    server, link, _ = make()
    bringUp(server, link)
    p = Fake()
    server.connect(p)
    for i in range(cluster.MAX_QUEUED + 1):
        server.say(p, f"line {i}")
    assert p.take() == ["! slow down"]
    arrive(server, link, p, 1)
    assert len([c for c in link.calls if c.name == "say"]) == cluster.MAX_QUEUED


def test_room_messages_reach_everyone_here_but_their_sender() -> None:
    """'m' goes to every local member of the room but the member it is from, and into
    the room's local history; a remote sender's line goes to all."""
    server, link, _, p = linkedMember(1)
    q = Fake()
    server.connect(q)
    arrive(server, link, q, 2)
    q.take()
    me = server._ids[p].encode()
    server.message(room(), me + b" m<guest1> hi\r\n")
    server.message(room(), b"other:9 m<far> hello\r\n")
    server.rooms["lobby"].flush()
    assert p.take() == ["<far> hello"]
    assert q.take() == ["<guest1> hi", "<far> hello"]
    assert list(server.rooms["lobby"].history or ()) == [b"<guest1> hi\r\n", b"<far> hello\r\n"]


def test_a_join_takes_the_member_out_at_its_part_and_in_at_its_history() -> None:
    """The joiner hears its own part notice, then leaves the room here; it enters the
    new room with its join notice and history ('h'), and is a member from then on."""
    server, link, _, p = linkedMember(1)
    me = startJoin(server, link, p, "dev")
    server.message(room(), me + b" p*** guest1 has left #lobby\r\n")
    assert p.take() == ["*** guest1 has left #lobby"]
    assert "lobby" not in server.rooms
    server.message(room("dev"), b"other:2 m<far> before your join\r\n")
    server.message(
        f"{PREFIX}s:srv".encode(), me + b" hdev\n*** guest1 has joined #dev\r\n*** history: x\r\n"
    )
    server.message(room("dev"), b"other:2 m<far> after your join\r\n")
    server.rooms["dev"].flush()
    assert p.take() == ["*** guest1 has joined #dev", "*** history: x", "<far> after your join"]
    assert p.room is server.rooms["dev"]


def test_a_join_redis_refuses_ends_with_an_error_and_no_wait() -> None:
    """A join the script refuses (the member is not registered: its server was taken
    for dead a moment ago) is answered with an error, and the member's next command
    runs instead of waiting for an arrival that will not come."""
    server, link, _, p = linkedMember(1)
    server.join(p, "dev")
    server.say(p, "next")
    link.answer("SUBSCRIBE")
    link.answer("join", 0)
    assert p.take() == ["! the cluster is busy; try again"]
    assert link.names()[-1] == "say"


def test_a_nick_taken_elsewhere_is_refused_and_one_claimed_is_ours() -> None:
    """The rename script's answer decides: 0 is ``! nick taken``, 1 renames here."""
    server, link, _, p = linkedMember(1)
    server.rename(p, "bob")
    link.answer("rename", 0)
    assert p.take() == ["! nick taken: bob"]
    server.rename(p, "bob")
    link.answer("rename", 1)
    assert p.nick == "bob"
    assert server.nicks["bob"] is p


def test_link_lost_members_are_told_and_served_alone() -> None:
    """When the link goes, every member hears ``*** cluster link lost``; a join that
    waited completes on this server alone, and lines go from member to member here."""
    server, link, _, p = linkedMember(1)
    q = Fake()
    server.connect(q)
    arrive(server, link, q, 2)
    q.take()
    server.join(q, "dev")
    link.answer("SUBSCRIBE")
    link.fail()
    assert p.take() == ["*** cluster link lost"]
    assert q.take() == [
        "*** cluster link lost",
        "*** guest2 has left #lobby",
        "*** guest2 has joined #dev",
    ]
    calls = len(link.calls)
    server.join(p, "dev")
    server.say(p, "alone together")
    server.rooms["dev"].flush()
    assert q.take() == ["*** guest1 has joined #dev", "<guest1> alone together"]
    assert len(link.calls) == calls  # nothing asked of Redis


def test_link_back_members_are_registered_again_and_told() -> None:
    """When the link is back, each member is registered as it now is; a nick taken
    meanwhile becomes a fresh guest nick its room hears of; then everyone hears
    ``*** cluster link restored``."""
    server, link, _, p = linkedMember(1)
    link.fail()
    server.rename(p, "keeper")  # while alone: unchecked, until the link is back
    server.rooms["lobby"].flush()
    p.take()
    bringUp(server, link)
    args = link.answer("claim", 0)
    assert args[3:7] == ("keeper", "lobby", "lobby", "r")
    link.answer("INCR", 42)
    args = link.answer("claim", 1)
    assert args[3] == "guest42"
    server.rooms["lobby"].flush()
    assert p.take() == ["*** cluster link restored", "*** keeper is now known as guest42"]
    assert p.nick == "guest42"


def test_heartbeats_keep_presence_and_reap_only_after_a_full_ttl() -> None:
    """A heartbeat every HEARTBEAT_INTERVAL s; it may reap only once this server has
    been linked for PRESENCE_TTL s (every live server has had time to say so);
    a killed server's members quit within the promised 15 s."""
    server, link, clock, _ = linkedMember(1)
    reaps = []
    for _ in range(6):
        clock.advance(cluster.HEARTBEAT_INTERVAL)
        args = link.answer("heartbeat", [0, 0])
        assert args[1] == str(int(cluster.PRESENCE_TTL * 1000))
        reaps.append(args[2])
    assert reaps == ["0", "0", "0", "1", "1", "1"]
    assert cluster.PRESENCE_TTL + cluster.HEARTBEAT_INTERVAL <= 15


def test_a_heartbeat_without_reply_drops_the_link() -> None:
    """A Redis that stops answering (a vanished host) is taken as gone after
    REPLY_TIMEOUT s: the link is reset, and reconnects."""
    server, link, clock, _ = linkedMember(1)
    clock.advance(cluster.HEARTBEAT_INTERVAL)
    assert link.resets == 0
    clock.advance(cluster.REPLY_TIMEOUT)
    assert link.resets == 1


def test_a_server_taken_for_dead_registers_its_members_again() -> None:
    """A heartbeat that finds this server unregistered (reaped after a long pause)
    registers every member again."""
    server, link, clock, _ = linkedMember(1)
    clock.advance(cluster.HEARTBEAT_INTERVAL)
    link.answer("heartbeat", [1, 0])
    assert link.answer("claim", 1)[6] == "r"


def test_rooms_nobody_here_uses_are_unsubscribed() -> None:
    """A room's channel is dropped at the next heartbeat once no member here is in it."""
    server, link, clock, p = linkedMember(1)
    me = startJoin(server, link, p, "dev")
    server.message(room(), me + b" p*** left\r\n")
    server.message(f"{PREFIX}s:srv".encode(), me + b" hdev\n*** joined\r\n")
    clock.advance(cluster.HEARTBEAT_INTERVAL)
    assert link.unsubscribed == [room()]


def test_a_member_gone_before_its_claim_claims_nothing() -> None:
    """A connection that closes while its guest number is on its way is never
    registered; its leave goes out at once."""
    server, link, _ = make()
    bringUp(server, link)
    p = Fake()
    server.connect(p)
    link.answer("SUBSCRIBE")
    server.disconnect(p, "connection lost")
    assert link.names()[-1] == "leave"
    link.answer("INCR", 3)
    assert "claim" not in link.names()


def test_redis_urls() -> None:
    """``--chat-redis`` takes redis:// and rediss:// URLs with a password and a database,
    and refuses anything else with a reason."""
    a = RedisAddress.fromURL("rediss://user:p%40ss@redis.example:6380/2")
    assert (a.host, a.port, a.db, a.tls, a.username, a.password) == (
        "redis.example", 6380, 2, True, "user", "p@ss",
    )  # fmt: skip
    b = RedisAddress.fromURL("redis://localhost")
    assert (b.port, b.db, b.tls, b.password) == (6379, 0, False, None)
    c = RedisAddress.fromURL("rediss://h?ssl_ca_certs=/etc/ca.pem")
    assert (c.tls, c.caCerts) == (True, "/etc/ca.pem")
    for bad in (
        "http://x", "redis://", "redis://h/db", "redis://h:99999",
        "redis://h?ssl_ca_certs=/ca.pem", "rediss://h?timeout=3",
    ):  # fmt: skip
        with pytest.raises(ValueError, match="redis"):
            redisURL(bad)


def test_without_the_option_no_cluster_code_is_loaded() -> None:
    """Without --chat-redis the chat is a plain ChatServer, and nothing of the cluster
    (nor txredisapi) is imported."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from tests.support import makeContext\n"
        "from netproto.chat.server import makeFactory\n"
        "import tempfile\n"
        "f = makeFactory(makeContext(Path(tempfile.mkdtemp())))\n"
        "print(type(f.server).__name__, sorted(m for m in sys.modules if 'redis' in m or "
        "m == 'netproto.chat.cluster'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert out.split() == ["ChatServer", "[]"]


def test_fire_and_forget_scripts_swallow_only_a_lost_link() -> None:
    """A message's script failing because the link went is expected; anything else is
    logged as a warning, never as an unhandled error."""
    server, link, _, p = linkedMember(1)
    link.script = lambda *a: fail(LinkDown())  # type: ignore[method-assign]
    server.say(p, "lost in the gap")
    assert p.take() == []


def test_a_room_made_while_joining_the_cluster_is_subscribed_at_registration() -> None:
    """A member who moved to a new room while the server was still joining the
    cluster (after the rooms were subscribed) is registered in that room, and the
    server subscribes to it first, so it hears the room's other servers."""
    server, link, _, p = linkedMember(1)
    link.fail()
    server.linkUp()
    link.answer("SUBSCRIBE")  # the server's channel; the lobby's is on its way
    server.join(p, "late")  # still alone: done here at once
    link.answer("SUBSCRIBE")
    link.answer("heartbeat", [1, 0])
    assert link.answer("SUBSCRIBE") == (room("late"),)
    assert link.answer("claim", 1)[4:6] == ("late", "late")


def test_a_redis_unreachable_from_the_start_is_a_lost_link() -> None:
    """A server that is not in the cluster STARTUP_GRACE s after starting tells its
    members ``*** cluster link lost`` (and those who come later, after their welcome),
    and ``*** cluster link restored`` once it is in."""
    server, link, clock = make()
    early = Fake()
    server.connect(early)
    assert early.take()[0].startswith("*** Welcome")
    clock.advance(cluster.STARTUP_GRACE)
    assert early.take() == ["*** cluster link lost"]
    late = Fake()
    server.connect(late)
    assert late.take()[1:] == ["*** cluster link lost"]
    clock.advance(0)
    assert early.take() == [f"*** {late.nick} has joined #lobby"]
    bringUp(server, link)
    assert early.take() == ["*** cluster link restored"]
