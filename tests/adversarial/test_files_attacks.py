"""Attacks on the upload service's downloads (PROTOCOL.md section 6).

Each test states the attack, the behaviour expected and the measure, taken from
outside the server (:mod:`tests.adversarial.outside`).
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack

import pytest

from netproto.framing import CLOSE_GRACE
from tests.adversarial.outside import ABUSER, HONEST, Target, closedWithin, connectFrom
from tests.support import BlockingFramed

Netproto = Callable[..., AbstractContextManager[Target]]

MiB = 1 << 20
#: The file every client asks for: sparse, so it costs no disk, and far
#: larger than what the server may hold for a client that does not read.
SIZE = 256 * MiB
ABUSERS = 4
#: What the server may grow by while the abusers hold their downloads: a batch
#: of frames and one held write each (outflow.BATCH_FRAMES), with room for the
#: allocator's arenas; without backpressure it is the whole file, each.
GROWTH = 48 * MiB
IDLE = 2.0


def stalledDownload(target: Target) -> BlockingFramed:
    """A client that asks for the file and then never reads (a tiny receive buffer)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.bind((ABUSER, 0))
    sock.settimeout(10)
    sock.connect(("127.0.0.1", target.port("upload")))
    client = BlockingFramed(sock)
    client.login(target.token, service="upload")
    client.sendJSON(b"G", {"name": "big", "offset": 0})
    return client


@pytest.mark.slow
def test_clients_that_stop_reading_hold_the_servers_memory_flat(netproto: Netproto) -> None:
    """Attack: several clients ask for a 256 MiB file and never read a byte.
    Expected: the server reads the file only as fast as each client takes it,
    so it holds a batch or two per client, not the file; an honest client
    downloads the whole file meanwhile, verified; the stalled connections are
    closed by the idle timeout (their downloads made no progress), and the
    server's descriptors go back to what they were. Measure: the server's
    RSS before and after, the honest client's data, the abusers' sockets, the
    server's descriptors."""
    with netproto("--idle-timeout", str(IDLE), services=("upload",)) as target:
        with open(target.uploadDir / "big", "wb") as f:
            f.truncate(SIZE)
        baseFds = target.fds()
        baseRss = target.rss()
        with ExitStack() as stack:
            abusers = [stalledDownload(target) for _ in range(ABUSERS)]
            for abuser in abusers:
                stack.callback(abuser.close)
            honest = BlockingFramed(connectFrom(HONEST, target.port("upload")))
            stack.callback(honest.close)
            honest.login(target.token, service="upload")
            honest.sendJSON(b"G", {"name": "big", "offset": 0})
            assert honest.recvJSON(b"K") == {"size": SIZE, "offset": 0}
            h, got = hashlib.sha256(), 0
            while (frame := honest.recv()) is not None and frame[0] == b"D":
                h.update(frame[1])
                got += len(frame[1])
            assert frame is not None and frame[0] == b"F", frame
            assert got == SIZE
            assert frame[1] == b'{"sha256":"%s"}' % hashlib.sha256(bytes(SIZE)).hexdigest().encode()
            assert target.rss() - baseRss < GROWTH
            honest.close()
            # Closed by the server (idle, then the close grace for what they
            # never read) while they still hold their ends open.
            target.waitFds(baseFds, timeout=IDLE * 2 + CLOSE_GRACE + 30)
            for abuser in abusers:
                assert closedWithin(abuser.sock, 10)
