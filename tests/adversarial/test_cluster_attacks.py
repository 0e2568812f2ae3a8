"""Attacks on a chat cluster (two ``twistd netproto --chat-redis`` servers sharing a
real redis-server), measured from outside: what Redis holds (its keys, its pub/sub
channels), the servers' memory, and what honest members on the other server get.

Flood control is off (``--chat-rate 0``) on the servers: the worst case, one client
sending as fast as its socket takes. Times are printed for the record, never asserted.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from tests.adversarial.outside import ABUSER, HONEST, Target, connectFrom, readUntil, serving
from tests.rediskit import Redis, command, redisServer
from tests.support import waitUntil

pytestmark = [pytest.mark.slow]

DEADLINE = 30.0


@contextmanager
def cluster(tmp: Path) -> Iterator[tuple[Redis, Target, Target]]:
    """A redis-server and two chat servers linked to it, flood control off."""
    with redisServer(tmp) as redis, ExitStack() as stack:
        targets = []
        for name in ("a", "b"):
            home = tmp / name
            home.mkdir()
            target = stack.enter_context(
                serving(home, "--chat-redis", redis.url, "--chat-rate", "0", "--web", "none",
                        services=("chat",))
            )  # fmt: skip
            target.twistd.waitLog(r"cluster: joined as server")
            targets.append(target)
        yield redis, targets[0], targets[1]


def keys(redis: Redis) -> set[bytes]:
    return set(command(redis.port, "KEYS", "*"))


def roomChannels(redis: Redis) -> set[bytes]:
    return set(command(redis.port, "PUBSUB", "CHANNELS", "netproto:chat:r:*"))


def test_room_churn_leaves_nothing_behind_in_redis(tmp_path: Path) -> None:
    """Attack: one member joins 300 rooms one after the other (as fast as its commands
    are answered), saying a line in each
    (each room gets its sorted set, its name, its history stream, a channel), then
    quits. Expected: every room is dropped with its history as its last member
    leaves, and the servers unsubscribe from rooms none of their members is in, so
    Redis ends with exactly the keys and channels it had before; an honest member on
    the other server is unaffected. Measure: Redis's KEYS and PUBSUB CHANNELS, and
    the honest member's lines."""
    with cluster(tmp_path) as (redis, a, b):
        honest = connectFrom(HONEST, b.port("chat"))
        readUntil(honest, b"*** Welcome")
        before, channelsBefore = keys(redis), roomChannels(redis)
        abuser = connectFrom(ABUSER, a.port("chat"))
        readUntil(abuser, b"*** Welcome")
        started = time.monotonic()
        for first in range(0, 300, 25):  # 50 lines at a time: inside the member's queue
            rooms = range(first, first + 25)
            abuser.sendall(b"".join(b"/join churn%d\nhere I was\n" % i for i in rooms))
            readUntil(abuser, b"has joined #churn%d\r\n" % rooms[-1], timeout=DEADLINE)
        assert len(keys(redis) - before) >= 3  # the last room: set, name in rooms, history
        abuser.sendall(b"/quit\n")
        waitUntil(lambda: keys(redis) == before, timeout=DEADLINE)
        waitUntil(lambda: roomChannels(redis) == channelsBefore, timeout=DEADLINE)
        print(f"300 rooms made and dropped in {time.monotonic() - started:.1f} s")
        honest.sendall(b"/who\n")
        assert b"*** 1 in #lobby" in readUntil(honest, b"in #lobby")
        honest.close()
        abuser.close()


def test_a_command_flood_waits_in_a_bounded_queue(tmp_path: Path) -> None:
    """Attack: one member sends 20,000 ``/who`` at once, each of which waits for Redis.
    Expected: at most MAX_QUEUED (64) wait behind the one in flight; the rest are
    answered ``! slow down`` and dropped, so the server's memory does not grow with
    the flood, and members of the other server still get their lines. Measure: the
    abuser's answers, server A's RSS before and after, an honest line from A to B."""
    with cluster(tmp_path) as (_, a, b):
        listener = connectFrom(HONEST, b.port("chat"))
        readUntil(listener, b"*** Welcome")
        speaker = connectFrom(HONEST, a.port("chat"))
        readUntil(speaker, b"*** Welcome")
        abuser = connectFrom(ABUSER, a.port("chat"))
        readUntil(abuser, b"*** Welcome")
        rss = a.rss()
        abuser.sendall(b"/who\n" * 20000)
        readUntil(abuser, b"! slow down", timeout=DEADLINE)
        speaker.sendall(b"still heard\n")
        readUntil(listener, b"> still heard", timeout=DEADLINE)
        grown = a.rss() - rss
        print(f"server A's RSS grew by {grown / 1024:.0f} KiB during the flood")
        assert grown < 8 * 1024 * 1024
        for s in (listener, speaker, abuser):
            s.close()
