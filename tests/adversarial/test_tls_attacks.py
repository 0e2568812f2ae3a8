"""Attacks over TLS (``twistd netproto --tls``): what the plain-socket fast path does
not cover, since over TLS every write goes through the TLS transport.

Each test states the attack, the behaviour expected and the measure, taken from
outside (:mod:`tests.adversarial.outside`): the server's RSS and the bytes the
command wrote, read with psutil, and what an honest client gets.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import psutil
import pytest

from tests.adversarial.outside import ABUSER, HONEST, Target, closedWithin, connectFrom
from tests.support import BlockingFramed, halfAClientHello, waitUntil

pytestmark = pytest.mark.e2e

Serve = Callable[..., AbstractContextManager[Target]]

#: Most the server's RSS may grow, and a command may write, while its output waits
#: for a client that does not read: a few of Twisted's 64 KiB write thresholds and
#: socket buffers, far below what an unbounded queue would take in the same time.
BOUND = 16 * 1024 * 1024

#: ``--frame-timeout`` here: the deadline of a handshake too.
FRAME_TIMEOUT = 2
#: What a loaded machine may add to a deadline; far less than the login grace (30 s).
MARGIN = 8


@contextmanager
def tlsClient(source: str, port: int) -> Iterator[BlockingFramed]:
    """A framed client over TLS from ``source`` (the certificate is not checked:
    the attacks here are on the server, not on its identity)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with connectFrom(source, port) as raw, context.wrap_socket(raw) as sock:
        yield BlockingFramed(sock)


def written(process: psutil.Process) -> int:
    return int(process.io_counters().write_chars)


def steady(process: psutil.Process) -> int:
    """What ``process`` has written once it stopped writing (three equal readings)."""
    seen: list[int] = []

    def still() -> bool:
        seen.append(written(process))
        return len(seen) >= 3 and len(set(seen[-3:])) == 1

    waitUntil(still, timeout=30, interval=0.2)
    return seen[-1]


@pytest.mark.slow
def test_a_tls_client_that_stops_reading_pauses_the_command(netproto: Serve) -> None:
    """Attack: over TLS, start ``cat /dev/zero`` and never read its output. Expected: the
    command is paused by backpressure (the writer registered as the TLS transport's
    producer), the server does not queue the stream, and the command resumes when the
    client reads; an honest TLS client is served meanwhile. Measure: the server's RSS
    growth and the command's written bytes, both under BOUND, then growing again."""
    with netproto("--tls", services=("exec",)) as target:
        port = target.port("exec")
        rss = target.rss()
        with tlsClient(ABUSER, port) as abuser:
            abuser.login(target.token, "exec")
            abuser.sendJSON(b"R", {"shell": "exec cat /dev/zero"})
            pid = abuser.recvJSON(b"K")["pid"]
            command = psutil.Process(pid)
            stalled = steady(command)
            assert stalled < BOUND
            assert target.rss() - rss < BOUND

            with tlsClient(HONEST, port) as honest:
                honest.login(target.token, "exec")
                honest.sendJSON(b"R", {"argv": ["echo", "served"]})
                honest.recvJSON(b"K")
                assert honest.recv() == (b"1", b"served\n")

            for _ in range(200):  # reading lets the command go on
                frame = abuser.recv()
                assert frame is not None and frame[0] == b"1"
            waitUntil(lambda: written(command) > stalled, timeout=30)
            abuser.sendJSON(b"S", {"signal": "KILL"})


def test_a_handshake_never_finished_is_cut_off_at_the_frame_deadline(netproto: Serve) -> None:
    """Attack: connect to a ``--tls`` server and send nothing, or half a
    ``ClientHello``, to hold a connection (and its descriptor) without ever
    authenticating. Expected: each is cut off once ``--frame-timeout`` (2 s
    here) has passed since it connected, not before; before, both stayed for
    the login grace (30 s) and 10 s more (the ``E timeout`` queued for them
    waited for the handshake). An honest TLS client that finished its handshake
    before them keeps its session past that deadline. Measure: each abuser's
    socket open at 1 s and closed (EOF or reset) within the deadline and a
    margin for a loaded machine; the honest client's command answered after."""
    with netproto("--tls", "--frame-timeout", str(FRAME_TIMEOUT), services=("exec",)) as target:
        port = target.port("exec")
        with tlsClient(HONEST, port) as honest:
            honest.login(target.token, "exec")
            with connectFrom(ABUSER, port) as silent, connectFrom(ABUSER, port) as half:
                half.sendall(halfAClientHello())
                assert not closedWithin(silent, FRAME_TIMEOUT / 2)
                assert closedWithin(silent, FRAME_TIMEOUT + MARGIN)
                assert closedWithin(half, FRAME_TIMEOUT + MARGIN)
            honest.sendJSON(b"R", {"argv": ["echo", "served"]})
            honest.recvJSON(b"K")
            assert honest.recv() == (b"1", b"served\n")
