"""The chat cluster's failure modes, with real processes (PROTOCOL.md section 8): a
server killed with SIGKILL, and Redis stopped and started again.

Each test has its own redis-server and servers, since it breaks them.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from tests.rediskit import LineClient, Redis, redisServer
from tests.support import Twistd, runTwistd, waitUntil

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

#: A generous bound on the promised 15 s: the test checks the promise's
#: substance (the quit comes, the nick is free), not the machine's speed; the
#: 15 s themselves follow from the presence TTL and heartbeat interval, checked on
#: a fake clock in test_chat_cluster_units.py.
QUIT_DEADLINE = 40.0

#: Reconnecting takes at most the backoff's ceiling (5 s) after Redis is back.
RECONNECT_DEADLINE = 30.0


@contextmanager
def servers(tmp: Path, redis: Redis, n: int) -> Iterator[list[Twistd]]:
    with ExitStack() as stack:
        started = []
        for i in range(n):
            home = tmp / f"server{i}"
            home.mkdir()
            started.append(
                stack.enter_context(
                    runTwistd(home, "--chat-redis", redis.url, "--web", "none", services=("chat",))
                )
            )
        for server in started:
            server.waitLog(r"cluster: joined as server")
        yield started


def test_a_killed_servers_members_quit_as_server_lost_and_free_their_nicks(
    tmp_path: Path,
) -> None:
    """SIGKILL one of two servers: the other's members see each of its members
    quit ``(server lost)``, and may take their nicks."""
    with redisServer(tmp_path) as redis, servers(tmp_path, redis, 2) as (a, b):
        watcher, victim = LineClient(a.port("chat")), LineClient(b.port("chat"))
        try:
            victim.rename("victim")
            watcher.expect("*** ")
            b.stop(signal.SIGKILL)
            line = watcher.expect("*** victim", timeout=QUIT_DEADLINE)
            assert line == "*** victim has quit (server lost)"
            watcher.rename("victim")
            watcher.send("/who")
            assert watcher.expect("*** ") == "*** 1 in #lobby: victim"
        finally:
            watcher.close()
            victim.close()


def test_a_server_stopped_says_its_members_quit_at_once(tmp_path: Path) -> None:
    """SIGTERM one of two servers: before it exits, the other's members see each of
    its members quit ``(server shutting down)``, without waiting for its presence
    to expire."""
    with redisServer(tmp_path) as redis, servers(tmp_path, redis, 2) as (a, b):
        watcher, leaving = LineClient(a.port("chat")), LineClient(b.port("chat"))
        try:
            leaving.rename("leaving")
            watcher.expect("*** ")
            assert b.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
            line = watcher.expect("*** leaving", timeout=5.0)
            assert line == "*** leaving has quit (server shutting down)"
        finally:
            watcher.close()
            leaving.close()


def test_redis_stopped_and_restarted_the_cluster_says_so_and_converges(
    tmp_path: Path,
) -> None:
    """Stop Redis: every member hears ``*** cluster link lost`` and its own server
    still serves it. Start Redis again (empty): every member hears ``*** cluster
    link restored`` without any restart, and rooms, nicks and presence are whole
    again: /who sees both servers' members, a nick is unique again, lines cross."""
    with redisServer(tmp_path) as redis, servers(tmp_path, redis, 2) as (a, b):
        one, two = LineClient(a.port("chat")), LineClient(b.port("chat"))
        near = LineClient(a.port("chat"))
        try:
            one.rename("one")
            two.rename("two")
            near.rename("near")
            redis.stop()
            for member in (one, two, near):
                member.expect("*** cluster link lost", timeout=RECONNECT_DEADLINE)
            one.send("still here")  # its own server still serves it
            assert near.expect("<one>") == "<one> still here"
            redis.start()
            for member in (one, two, near):
                member.expect("*** cluster link restored", timeout=RECONNECT_DEADLINE)

            # Each server registers its members as its link comes back: until both
            # have, /who may list fewer.
            def whoWhenAllThree() -> str:
                two.send("/who")
                answer = two.expect("*** ")
                return answer if answer.startswith("*** 3 in") else ""

            listed = waitUntil(whoWhenAllThree, timeout=RECONNECT_DEADLINE, interval=0.25)
            assert sorted(listed.split(": ", 1)[1].split(", ")) == ["near", "one", "two"]
            two.send("/nick one")
            assert two.expect("! ") == "! nick taken: one"
            two.send("back again")
            for member in (one, near):
                assert member.expect("<two>") == "<two> back again"
        finally:
            for member in (one, two, near):
                member.close()
