"""One host holding many connections that never log in (the framed services'
``--max-unauthenticated-per-host``), measured from outside the server
(:mod:`tests.adversarial.outside`): what each connection receives and when it
is closed, the server's open descriptors, an honest login, and the log.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack

import pytest

from netproto.framing import DEFAULT_MAX_UNAUTHENTICATED_PER_HOST
from tests.adversarial.outside import ABUSER, HONEST, Target, closedWithin, connectFrom
from tests.support import BlockingFramed

Netproto = Callable[..., AbstractContextManager[Target]]

#: The cap the attacked server runs with: the default.
CAP = DEFAULT_MAX_UNAUTHENTICATED_PER_HOST
#: Connections the abuser opens past the cap, per service.
EXTRA = 100
#: How long a test waits for what should follow within seconds: generous, for a
#: loaded 2-core machine; the point is that it happens, not how fast.
DEADLINE = 30.0
FRAMED = ("exec", "upload")


def heldOpen(stack: ExitStack, port: int) -> socket.socket:
    """A connection from the abuser that read its hello and stays, never logging in."""
    sock = stack.enter_context(connectFrom(ABUSER, port))
    client = BlockingFramed(sock)
    client.recvJSON(b"H")
    return sock


def refusedAtOnce(port: int) -> bool:
    """A connection from the abuser past the cap gets its hello, then E busy,
    and is closed by the server without sending anything."""
    with connectFrom(ABUSER, port) as sock:
        client = BlockingFramed(sock)
        client.recvJSON(b"H")
        error = client.recvJSON(b"E")
        assert error["code"] == "busy", error
        assert "--max-unauthenticated-per-host" in error["message"]
        return closedWithin(sock, DEADLINE)


@pytest.mark.slow
def test_one_host_cannot_hold_more_than_the_cap_of_unauthenticated_connections(
    netproto: Netproto,
) -> None:
    """Attack: the ABUSER address opens the cap's worth of connections to exec
    and to upload and never logs in (each would hold a descriptor for the 30 s
    grace period), then keeps opening EXTRA more to each.

    Expected: the first CAP per service get their hello and stay open; every
    one after gets its hello, ``E busy`` naming the option, and is closed at
    once, without the client doing anything; an honest client (HONEST) logs
    in to both meanwhile; the refusals cost a few log lines and a count per
    interval, not a line each.

    Measure: the frames each connection receives and whether the server
    closes it; the server's open descriptors (at most about CAP per service
    more than before the attack, not CAP + EXTRA); an honest login; the
    server's log."""
    with netproto(services=FRAMED) as target, ExitStack() as stack:
        before = target.fds()
        for service in FRAMED:
            port = target.port(service)
            held = [heldOpen(stack, port) for _ in range(CAP)]
            assert all(s.fileno() >= 0 for s in held)
            refusals = [refusedAtOnce(port) for _ in range(EXTRA)]
            assert all(refusals), f"{refusals.count(False)} refused connections left open"
            honest = BlockingFramed(stack.enter_context(connectFrom(HONEST, port)))
            hello = honest.login(target.token, service)
            assert hello["service"] == service
        # The held connections and the two honest ones, plus slack for the
        # server's own (log, timers): far below the refused ones had they stayed.
        fds = target.waitFds(before + len(FRAMED) * (CAP + 1) + 8, timeout=DEADLINE)
        assert fds - before < EXTRA
        for service in FRAMED:
            summary = target.twistd.waitLog(
                rf"{service}: refused \(busy\) \.\.\. and (\d+) more like this from {ABUSER}",
                timeout=DEADLINE,
            )
            counted = sum(
                int(m.group(1))
                for line in target.twistd.lines
                if (m := re.search(rf"{service}: refused \(busy\) \.\.\. and (\d+) more", line))
            )
            oneByOne = [
                line
                for line in target.twistd.lines
                if re.search(rf"{service}: refused {ABUSER}:\d+: busy", line)
            ]
            assert summary
            assert len(oneByOne) < EXTRA // 4, oneByOne[:10]
            assert len(oneByOne) + counted == EXTRA


def test_the_cap_is_per_address_and_a_login_frees_a_slot(netproto: Netproto) -> None:
    """Attack: the ABUSER address holds the cap's worth of unauthenticated
    upload connections.

    Expected: its next connection is refused with ``E busy``; once one of its
    held connections logs in (with the token: a legitimate user on that
    host), the host may open one more (which can log in), and no second one;
    HONEST is not affected at any time.

    Measure: the frames each connection receives and whether it is closed."""
    with netproto(services=("upload",)) as target, ExitStack() as stack:
        port = target.port("upload")
        held = [heldOpen(stack, port) for _ in range(CAP)]
        assert refusedAtOnce(port)
        honest = BlockingFramed(stack.enter_context(connectFrom(HONEST, port)))
        honest.login(target.token, "upload")
        first = BlockingFramed(held[0])
        first.sendJSON(b"A", {"token": target.token})
        assert first.recvJSON(b"K") == {"user": "token"}
        extra = BlockingFramed(heldOpen(stack, port))
        assert refusedAtOnce(port)
        extra.sendJSON(b"A", {"token": target.token})
        assert extra.recvJSON(b"K") == {"user": "token"}  # it was admitted, not refused
