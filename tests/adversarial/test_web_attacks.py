"""Attacks on the web service (browser chat, PROTOCOL.md section 7) of a running
``twistd netproto``, measured from outside.

Each test states the attack, the behaviour expected and the measure: what an honest
browser member (from :data:`HONEST`) and a telnet member receive, what the abuser
(from :data:`ABUSER`) receives, and the server's open descriptors and log. Every
wait has a condition and a deadline; nothing is timed.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack

from tests.adversarial.outside import ABUSER, Target, connectFrom
from tests.support import waitUntil
from tests.webkit import LineMember, RawSocketMember, handshakeStatus, welcomedAs

Netproto = Callable[..., AbstractContextManager[Target]]


def closedByPeer(sock: socket.socket) -> bool:
    """Whether the server has closed ``sock`` (without waiting or reading anything)."""
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except ConnectionError:
        return True


#: --chat-max-per-address's default: the cap the abuser runs into.
PER_ADDRESS = 64
DEADLINE = 30.0


def test_idle_http_connections_cannot_take_the_web_port(netproto: Netproto) -> None:
    """Attack: one address opens 200 HTTP connections to the web port and sends
    nothing. Expected: past --chat-max-per-address (64) each new one is closed at
    once; an honest browser member still joins and talks with a telnet member.
    Measure: how many of the abuser's connections stay open, the server's
    descriptors, what the honest members receive."""
    with netproto(services=("chat", "web")) as target, ExitStack() as stack:
        port = target.port("web")
        before = target.fds()
        held = [stack.enter_context(connectFrom(ABUSER, port)) for _ in range(200)]
        target.twistd.waitLog(r"web: refused 127\.0\.0\.2:\d+: 64 HTTP connections")
        waitUntil(lambda: sum(map(closedByPeer, held)) == len(held) - PER_ADDRESS, DEADLINE)
        assert not any(map(closedByPeer, held[:PER_ADDRESS]))
        assert target.fds() - before < PER_ADDRESS + 20
        browser = RawSocketMember(port)
        stack.callback(browser.sock.close)
        tel = LineMember(target.port("chat"))
        stack.callback(tel.close)
        tel.readUntil("Welcome")
        browser.receiveUntil(r"^\*\*\* Welcome")
        browser.sock.sendall(b"\x81\x85" + b"\x00" * 4 + b"hello")  # masked with zeros
        assert re.search(r"> hello$", tel.readUntil("hello")[-1])


def test_a_flood_of_foreign_origins_is_refused_and_summarised(netproto: Netproto) -> None:
    """Attack: 300 handshakes from a foreign Origin (a hostile page opening the chat
    WebSocket from its visitors' browsers). Expected: each gets HTTP 403; the log
    holds a few lines for them (RepeatSummary), not one each; the page's own origin
    still joins.
    Measure: the statuses, the log lines about them."""
    with netproto(services=("chat", "web")) as target:
        port = target.port("web")
        statuses = {handshakeStatus(port, "https://evil.example") for _ in range(300)}
        assert statuses == {403}
        member = RawSocketMember(port)
        try:
            nick = welcomedAs(member.receiveUntil(r"^\*\*\* Welcome"))
        finally:
            member.sock.close()
        # Logged after every refusal above: the log read so far holds them all.
        target.twistd.waitLog(rf"connected as {nick}$", DEADLINE)
        refusals = [ln for ln in target.twistd.lines if "evil.example" in ln]
        assert 1 <= len(refusals) <= 10, refusals
