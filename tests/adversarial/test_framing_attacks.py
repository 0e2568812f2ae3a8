"""Attacks on the framing and authentication layer shared by exec and upload.

Each test states the attack, the behaviour expected and the measure, taken from
outside the server (:mod:`tests.adversarial.outside`): what each connection
receives, when the server closes it, the server's open descriptors and its log.
The deadlines run on the real option machinery (``--frame-timeout 2``), so the
attacks are cut within seconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack
from typing import Any

import pytest

from netproto.codec import FrameDecoder
from tests.adversarial.outside import ABUSER, HONEST, Target, abuserHost, connectFrom
from tests.support import BlockingFramed, waitUntil

Netproto = Callable[..., AbstractContextManager[Target]]

#: The frame deadline the attacked server runs with: short, to keep the tests fast.
FRAME_TIMEOUT = "2"
#: How long a test waits for what should follow within seconds: generous, for a
#: loaded 2-core machine; the point is that it happens, not how fast.
DEADLINE = 30.0
FRAMED = ("exec", "upload")


def frames(data: bytes) -> list[tuple[bytes, dict[str, Any]]]:
    """The control frames in what a connection received, JSON decoded."""
    decoder = FrameDecoder(1 << 30)
    decoder.feed(data)
    out = []
    while (frame := decoder.next()) is not None:
        out.append((frame[0], json.loads(frame[1]) if frame[1][:1] == b"{" else {}))
    return out


def lastError(data: bytes) -> dict[str, Any]:
    """The ``E`` frame a connection ended with."""
    received = frames(data)
    assert received, "nothing received"
    kind, payload = received[-1]
    assert kind == b"E", received
    return payload


def attacker(target: Target, service: str, source: str, login: bool) -> socket.socket:
    """A connection from ``source`` that has read the hello (and logged in if asked)."""
    client = BlockingFramed(connectFrom(source, target.port(service)))
    if login:
        client.login(target.token, service)
    else:
        client.recvJSON(b"H")
    assert client.buf == b""
    return client.sock


def readNow(sock: socket.socket) -> bytes | None:
    """What a non-blocking ``sock`` has now: ``b""`` once the server closed or
    reset it, ``None`` when there is nothing to read after all."""
    with contextlib.suppress(BlockingIOError):
        try:
            return sock.recv(1 << 16)
        except ConnectionResetError:
            return b""
    return None


def trickle(socks: list[socket.socket], every: float = 0.25) -> dict[socket.socket, bytes]:
    """Send each socket one byte every ``every`` seconds until the server has closed
    them all (the pacing is the attack's rate; the wait is on the closes, with a
    deadline). Returns what each received."""
    received = dict.fromkeys(socks, b"")
    selector = selectors.DefaultSelector()
    for sock in socks:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    alive = set(socks)
    end = time.monotonic() + DEADLINE
    nextByte = 0.0
    while alive:
        now = time.monotonic()
        assert now < end, f"{len(alive)} of {len(socks)} tricklers still connected"
        if now >= nextByte:
            for sock in alive:
                with contextlib.suppress(OSError):  # closed under us: the read sees it
                    sock.send(b"x")
            nextByte = now + every
        for key, _ in selector.select(timeout=max(0.0, min(nextByte, end) - now)):
            ready = key.fileobj
            assert isinstance(ready, socket.socket)
            data = readNow(ready)
            received[ready] += data or b""
            if data == b"":
                alive.discard(ready)
                selector.unregister(ready)
    selector.close()
    return received


def honestExec(target: Target) -> None:
    """An honest client from HONEST logs in and runs ``echo ok`` to its end."""
    client = BlockingFramed(connectFrom(HONEST, target.port("exec"), timeout=DEADLINE))
    try:
        client.login(target.token, "exec")
        client.sendJSON(b"R", {"argv": ["echo", "ok"]})
        client.recvJSON(b"K")
        out = []
        while (frame := client.recv()) is not None and frame[0] != b"X":
            out.append(frame)
        assert frame is not None and json.loads(frame[1])["code"] == 0
        assert out == [(b"1", b"ok\n")]
    finally:
        client.close()


def honestUpload(target: Target, name: str) -> None:
    """An honest client from HONEST logs in and stores a small file."""
    client = BlockingFramed(connectFrom(HONEST, target.port("upload"), timeout=DEADLINE))
    try:
        client.login(target.token, "upload")
        client.sendJSON(b"P", {"name": name, "size": 2})
        assert client.recvJSON(b"K") == {"offset": 0}
        client.send(b"D", b"ok")
        digest = hashlib.sha256(b"ok").hexdigest()
        client.sendJSON(b"F", {"sha256": digest})
        assert client.recvJSON(b"K")["sha256"] == digest
    finally:
        client.close()


@pytest.fixture
def framed(netproto: Netproto) -> Iterator[Target]:
    """exec and upload with a 2 s frame deadline (the other options at their defaults)."""
    with netproto("--frame-timeout", FRAME_TIMEOUT, services=FRAMED) as target:
        yield target


def slowloris(target: Target, count: int, login: bool, start: bytes) -> None:
    """``count`` connections from ABUSER (half exec, half upload; logged in if
    asked) send ``start`` and then trickle, while honest clients are served:
    every trickler must end with ``E timeout`` for its frame, and the server's
    fds come back to what they were."""
    base = target.fds()
    with ExitStack() as stack:
        socks = []
        for n in range(count):
            sock = attacker(target, FRAMED[n % 2], ABUSER, login)
            stack.callback(sock.close)
            sock.sendall(start)
            socks.append(sock)
        with ThreadPoolExecutor(1) as pool:
            attack = pool.submit(trickle, socks)
            honestExec(target)
            honestUpload(target, f"during-slowloris-{login}")
            received = attack.result(timeout=DEADLINE * 2)
    for data in received.values():
        error = lastError(data)
        assert error["code"] == "timeout"
        assert "frame" in error["message"]
    target.waitFds(base)


@pytest.mark.slow
def test_frame_slowloris_before_login_is_cut(framed: Target) -> None:
    """Attack: 16 connections per framed service from ABUSER (the most it may hold
    unauthenticated: ``--max-unauthenticated-per-host``) each announce an ``A``
    frame of 4000 bytes (under the 4 KiB limit) and send one byte every 0.25 s,
    so that bytes keep arriving and the grace period (30 s) is still far.

    Expected: each is cut with ``E timeout`` for its frame (the frame deadline,
    2 s here, not the grace period), and is closed; honest exec and upload
    clients from HONEST are served meanwhile.

    Measure: the ``E`` frame each trickler ends with, the honest sessions
    completing, and the server's open fds back to the baseline."""
    slowloris(framed, 32, login=False, start=struct.pack(">I", 4000) + b"A")


@pytest.mark.slow
def test_frame_slowloris_after_login_is_cut(framed: Target) -> None:
    """Attack: 10 authenticated connections per framed service from ABUSER each
    announce a 200 KiB frame, send 64 KiB of it at once (the server buffers it),
    then one byte every 0.25 s, forever.

    Expected: each is cut with ``E timeout`` for its frame about 2 s after its
    first byte (before issue 9 it was held forever, buffer and all), and is
    closed; honest exec and upload clients from HONEST are served meanwhile.

    Measure: the ``E`` frame each trickler ends with, the honest sessions
    completing, and the server's open fds back to the baseline."""
    slowloris(framed, 20, login=True, start=struct.pack(">I", 200 * 1024) + b"P" + b" " * 65536)


def test_idle_authenticated_connections_are_closed(netproto: Netproto) -> None:
    """Attack: authenticated exec and upload connections from ABUSER that then send
    nothing at all (a forgotten client, or one whose machine vanished).

    Expected: with ``--idle-timeout 2`` each gets ``E timeout`` for being idle
    and is closed (before issue 9, authenticated connections were never timed
    out).

    Measure: the ``E`` frame each receives before the server closes it, and the
    server's open fds back to the baseline."""
    with netproto("--idle-timeout", "2", services=FRAMED) as target:
        base = target.fds()
        idle = [BlockingFramed(connectFrom(ABUSER, target.port(s))) for s in FRAMED * 3]
        try:
            for client, service in zip(idle, FRAMED * 3, strict=True):
                client.login(target.token, service)
            for client in idle:
                client.sock.settimeout(DEADLINE)
                error = client.recvJSON(b"E")
                assert (error["code"], "idle" in error["message"]) == ("timeout", True)
                assert client.closedByPeer()
        finally:
            for client in idle:
                client.close()
        target.waitFds(base)


@pytest.mark.slow
def test_running_command_outlives_the_idle_timeout(netproto: Netproto) -> None:
    """The honest side of the idle timeout: with ``--idle-timeout 1`` a client from
    HONEST runs ``sleep 3`` and sends nothing while it runs.

    Expected: the command runs to its end and its ``X`` arrives (a connection
    whose command runs is busy, not idle); once the connection then stays
    quiet, it gets ``E timeout`` for being idle and is closed.

    Measure: the frames the client receives, in order, and the close."""
    with netproto("--idle-timeout", "1", services=("exec",)) as target:
        client = BlockingFramed(connectFrom(HONEST, target.port("exec"), timeout=DEADLINE))
        try:
            client.login(target.token, "exec")
            client.sendJSON(b"R", {"argv": ["sleep", "3"]})
            client.recvJSON(b"K")
            assert client.recvJSON(b"X")["code"] == 0
            error = client.recvJSON(b"E")
            assert (error["code"], "idle" in error["message"]) == ("timeout", True)
            assert client.closedByPeer()
        finally:
            client.close()


#: Malformed control payloads, each sent by its own abusive address. Each was
#: ``E internal`` with a traceback in the log (RecursionError, OverflowError in
#: exec, UnicodeEncodeError) or a number no service can use.
MALFORMED: list[tuple[str, str, bool, bytes, bytes]] = [
    ("deep A before login", "exec", False, b"A", b'{"token": ' + b"[" * 4000),
    ("deep A before login", "upload", False, b"A", b"[" * 4000),
    ("lone surrogate in A", "exec", False, b"A", b'{"user": "\\ud800", "password": "x"}'),
    ("deep R", "exec", True, b"R", b'{"argv": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    (
        "400-digit timeout",
        "exec",
        True,
        b"R",
        b'{"argv": ["true"], "timeout": 1' + b"0" * 400 + b"}",
    ),
    ("infinite timeout", "exec", True, b"R", b'{"argv": ["true"], "timeout": 1e400}'),
    ("NaN timeout", "exec", True, b"R", b'{"argv": ["true"], "timeout": NaN}'),
    ("lone surrogate in argv", "exec", True, b"R", b'{"argv": ["echo", "\\udc00"]}'),
    ("huge size", "upload", True, b"P", b'{"name": "a", "size": 9' + b"9" * 400 + b"}"),
    ("deep P", "upload", True, b"P", b'{"name": ' + b'{"a":' * 40_000 + b"1" + b"}" * 40_001),
]


def test_deep_and_huge_json_is_one_bad_frame(netproto: Netproto) -> None:
    """Attack: control payloads built to break a JSON decoder or what uses its
    result: nesting thousands deep (before and after login), 400-digit and
    non-finite numbers, lone surrogates, each from its own abusive address.

    Expected: each gets ``E bad-frame`` and is closed; the server logs one line
    for it and no traceback (before issue 9: ``E internal`` and a critical
    traceback each, so anyone could flood the log with them); honest exec and
    upload clients are served afterwards.

    Measure: the ``E`` frame and the close each attacker sees, the server's log
    (lines naming each attacker's address and ``bad-frame``; tracebacks,
    ``internal``), the honest sessions."""
    with netproto(services=FRAMED) as target:
        for n, (what, service, login, kind, payload) in enumerate(MALFORMED):
            client = BlockingFramed(attacker(target, service, abuserHost(n), login))
            try:
                client.send(kind, payload)
                client.sock.settimeout(DEADLINE)
                assert client.recvJSON(b"E")["code"] == "bad-frame", what
                assert client.closedByPeer(), what
            finally:
                client.close()
        for n, (what, *_) in enumerate(MALFORMED):
            peer = abuserHost(n).replace(".", r"\.")
            target.twistd.waitLog(rf"{peer}:\d+: bad-frame")
            lines = [ln for ln in target.twistd.lines if f"{abuserHost(n)}:" in ln]
            assert sum("bad-frame" in ln for ln in lines) == 1, (what, lines)
        log = target.twistd.log
        assert "Traceback" not in log
        assert "internal" not in log
        honestExec(target)
        honestUpload(target, "after-malformed")


@pytest.mark.slow
def test_brute_force_gets_one_guess_per_connection(netproto: Netproto) -> None:
    """Attack: from ABUSER, 16 threads guess tokens as fast as the server lets them,
    each guess on a new connection, for as long as honest clients are tested;
    every connection also sends the real token right after its wrong guess, as a
    second guess.

    Expected: each connection gets exactly one ``E auth-failed`` (after the
    failure delay) and is closed: its second guess is never honoured, so the
    guess rate is bounded by connections, each held for the delay. Meanwhile
    honest clients from HONEST log in with the right token and are served
    within their deadline.

    Measure: what each guessing connection receives before its close, the
    honest sessions completing, and the server's open fds back to the baseline."""
    with netproto(services=FRAMED) as target:
        base = target.fds()
        stop = threading.Event()
        token = target.token
        outcomes: list[list[tuple[bytes, dict[str, Any]]]] = []

        def guess(n: int) -> None:
            while not stop.is_set():
                service = FRAMED[n % 2]
                with connectFrom(ABUSER, target.port(service), timeout=DEADLINE) as sock:
                    client = BlockingFramed(sock)
                    client.recvJSON(b"H")
                    client.sendJSON(b"A", {"token": f"guess-{n}-{time.monotonic_ns()}"})
                    client.sendJSON(b"A", {"token": token})
                    assert client.closedByPeer()
                    outcomes.append(frames(client.buf))

        with ThreadPoolExecutor(16) as pool:
            guessing = [pool.submit(guess, n) for n in range(16)]
            try:
                waitUntil(lambda: len(outcomes) >= 16, timeout=DEADLINE)
                for n in range(3):
                    honestExec(target)
                    honestUpload(target, f"during-brute-force-{n}")
            finally:
                stop.set()
            for future in guessing:
                future.result(timeout=DEADLINE)
        assert len(outcomes) >= 16
        for received in outcomes:
            assert [(kind, body.get("code")) for kind, body in received] == [(b"E", "auth-failed")]
        target.waitFds(base)
