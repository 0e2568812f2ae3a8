"""Finding 11 of the hardening issue: a peer cannot flood the log.

Each refused connection, failed login or bad frame used to write a line: one
client reached about 12,000 refusals a second, about 95 MiB of log a minute.
Now the first few events of a kind from one source in an interval are logged
as they are and the rest as one summary line with a count
(:mod:`netproto.logsummary`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import AbstractContextManager

import pytest

from netproto.logsummary import DEFAULT_BURST
from tests.adversarial.outside import ABUSER, HONEST, Target, closedWithin, connectFrom, readUntil
from tests.support import BlockingFramed

REFUSALS = 2000
#: At once from one address: at most --max-unauthenticated-per-host (16), past it E busy.
GUESSES = 16


def refusedLines(target: Target) -> list[str]:
    return [ln for ln in target.twistd.lines if "chat: refused" in ln]


@pytest.mark.slow
def test_refusals_from_one_address_cost_a_few_lines(
    netproto: Callable[..., AbstractContextManager[Target]],
) -> None:
    """Attack: 2,000 connections from one address past ``--chat-max-per-address 1``,
    each refused with ``! server full``. Expected: the burst is logged one by one,
    the rest as one summary with the exact count, at the interval's end (10 s);
    an honest client from another address is still welcomed and logged.
    Measure: the server's log lines about refusals."""
    with netproto("--chat-max-per-address", "1", services=("chat",)) as target:
        port = target.port("chat")
        with connectFrom(ABUSER, port) as holder:
            readUntil(holder, b"/help")
            for _ in range(REFUSALS):
                with connectFrom(ABUSER, port) as sock:
                    assert readUntil(sock, b"server full")
                    assert closedWithin(sock, 10)
            with connectFrom(HONEST, port) as honest:
                readUntil(honest, b"/help")
            target.twistd.waitLog(r"more like this from 127\.0\.0\.2")
        lines = refusedLines(target)
        assert len(lines) == DEFAULT_BURST + 1, lines
        summary = re.search(r"and (\d+) more like this from 127\.0\.0\.2", lines[-1])
        assert summary is not None and int(summary.group(1)) == REFUSALS - DEFAULT_BURST
        assert any("127.0.0.1" in ln and "connected as" in ln for ln in target.twistd.lines)


@pytest.mark.slow
def test_failed_logins_from_one_address_cost_a_few_lines(
    netproto: Callable[..., AbstractContextManager[Target]],
) -> None:
    """Attack: 16 wrong tokens from one address at once, one connection each. Expected:
    each gets ``E auth-failed`` (one guess per connection); the log has the burst
    of failures (and of the refusals that answer them) one by one, then one
    summary line each counting the rest. Measure: the log lines about them."""
    with netproto(services=("exec",)) as target:
        port = target.port("exec")
        peers = [BlockingFramed(connectFrom(ABUSER, port)) for _ in range(GUESSES)]
        for i, peer in enumerate(peers):
            peer.recvJSON(b"H")
            peer.sendJSON(b"A", {"token": f"guess-{i}"})
        for peer in peers:
            assert peer.recvJSON(b"E")["code"] == "auth-failed"
            assert peer.closedByPeer()
            peer.close()
        target.twistd.waitLog(r"authentication failed \.\.\. and \d+ more like this")
        target.twistd.waitLog(r"refused \(auth-failed\) \.\.\. and \d+ more like this")
        for kind in ("exec: authentication failed", "exec: refused"):
            lines = [ln for ln in target.twistd.lines if kind in ln]
            assert len(lines) == DEFAULT_BURST + 1, lines
            assert f"and {GUESSES - DEFAULT_BURST} more like this" in lines[-1]
