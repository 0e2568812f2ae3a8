"""Attacks on exec's terminals (PROTOCOL.md section 5): terminals opened and
abandoned with jobs that hide from their shell's group, and a flood of resizes.

Each test states the attack, the behaviour expected and the measure, taken from
outside (:mod:`tests.adversarial.outside`): the processes below the server, its
open descriptors and memory, and what an honest client gets.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from collections.abc import Callable
from contextlib import AbstractContextManager

import pytest

from tests.adversarial.outside import ABUSER, HONEST, Target
from tests.adversarial.probes import framedClient, runCommand
from tests.support import BlockingFramed, waitUntil

pytestmark = pytest.mark.e2e

Serve = Callable[..., AbstractContextManager[Target]]

TERM = {"term": "xterm", "rows": 24, "cols": 80}
#: Typed into each abandoned terminal's interactive shell: a job of its own
#: (a process group apart from the shell's) that ignores hang-up and SIGTERM,
#: and one in front.
JOBS = b"(trap '' HUP TERM; sleep 300) & sleep 301\r"
#: SO_LINGER on, 0 s: closing sends a reset, as a client that vanishes.
RESET = struct.pack("ii", 1, 0)


def terminalEnds(target: Target) -> int:
    """How many descriptors of the server are terminals' master ends."""
    fds = f"/proc/{target.process.pid}/fd"
    ends = 0
    for fd in os.listdir(fds):
        with contextlib.suppress(OSError):
            ends += os.readlink(f"{fds}/{fd}") == "/dev/ptmx"
    return ends


def shown(client: BlockingFramed, text: bytes) -> bytes:
    """Read a terminal's ``1`` frames until ``text`` has been shown."""
    out = b""
    while text not in out:
        frame = client.recv()
        assert frame is not None and frame[0] == b"1", frame
        out += frame[1]
    return out


def test_abandoned_terminals_leave_no_process_and_no_descriptor(netproto: Serve) -> None:
    """Attack: an abuser opens 8 terminals, each an interactive shell running a
    job in a process group of its own that ignores SIGHUP and SIGTERM, then
    vanishes without a word (its sockets reset).
    Expected: every process of every terminal's session is ended (the job by
    SIGKILL after the grace period), and the server closes both descriptors of
    each terminal's master end; an honest client's command runs meanwhile.
    Measure: the server's live descendants (but its guardian), its descriptors
    that are terminals' master ends (``/dev/ptmx``), the honest command's output."""
    with netproto("--exec-kill-grace", "1", services=("exec",)) as target:
        abusers = [framedClient(target, "exec", ABUSER) for _ in range(8)]
        for client in abusers:
            client.sendJSON(b"R", {"argv": ["sh", "-i"], "pty": TERM})
            client.recvJSON(b"K")
            client.send(b"0", JOBS)
        waitUntil(lambda: sum(p.name() == "sleep" for p in target.descendants()) == 16, timeout=30)
        assert terminalEnds(target) == 16  # two descriptors of each master end
        for client in abusers:
            client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
            client.sock.close()
        honest = framedClient(target, "exec", HONEST)
        assert runCommand(honest, ["echo", "served"]) == (
            b"served\n",
            {"code": 0, "signal": None, "timed_out": False},
        )
        honest.close()
        waitUntil(lambda: not target.descendants(), timeout=30)
        waitUntil(lambda: terminalEnds(target) == 0, timeout=10)


def test_a_flood_of_resizes_costs_the_server_nothing_lasting(netproto: Serve) -> None:
    """Attack: an abuser sends 20,000 W frames as fast as it can to a terminal
    whose command (a shell) ignores them.
    Expected: each is applied (an ioctl) and forgotten: the server's memory does
    not grow with them, and an honest client's command is served meanwhile.
    Measure: the server's RSS before and after (within 2 MiB), the honest
    command's output."""
    with netproto(services=("exec",)) as target:
        abuser = framedClient(target, "exec", ABUSER)
        abuser.sendJSON(b"R", {"argv": ["sh", "-i"], "pty": TERM})
        abuser.recvJSON(b"K")
        before = target.rss()
        for i in range(20_000):
            abuser.sendJSON(b"W", {"rows": 10 + i % 50, "cols": 40 + i % 100})
        honest = framedClient(target, "exec", HONEST)
        out, end = runCommand(honest, ["echo", "served"])
        assert (out, end["code"]) == (b"served\n", 0)
        abuser.send(b"0", b"echo do$((0))ne\r")
        shown(abuser, b"do0ne")  # every W before it was taken
        assert target.rss() - before < 2 << 20
        honest.close()
        abuser.close()
