"""netproto.status: ``kill -USR1`` makes a running twistd log what it holds inside."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from netproto.status import PREFIX
from tests.adversarial.outside import (
    ABUSER,
    askStatus,
    connectFrom,
    readUntil,
    serving,
    sockets,
)
from tests.support import TWISTD, BlockingFramed, Twistd, twistdEnv, waitUntil

pytestmark = pytest.mark.e2e


def test_statusLineCountsConnectionsPerServiceAndTimers(tmp_path: Path) -> None:
    """Three chat and two exec connections show as conn_chat=3 and conn_exec=2, with
    the exec connections' grace timers among the delayed calls; once they are gone
    the counts drop back, and the server goes on serving after the signal."""
    with serving(tmp_path) as target:
        idle = askStatus(target)
        assert idle["conn_chat"] == idle["conn_exec"] == idle["conn_upload"] == 0
        with sockets(3, ABUSER, target.port("chat")) as chats:
            for sock in chats:
                readUntil(sock, b"/help")
            framed = [BlockingFramed(connectFrom(ABUSER, target.port("exec"))) for _ in range(2)]
            for client in framed:
                client.recvJSON(b"H")
            busy = askStatus(target)
            assert (busy["conn_chat"], busy["conn_exec"], busy["conn_upload"]) == (3, 2, 0)
            assert busy["delayed_calls"] >= idle["delayed_calls"] + 2
            for client in framed:
                client.close()

        def closed() -> dict[str, int]:
            # Other timers come and go meanwhile (the log summary's, twisted.web's),
            # so the exec connections' two grace timers are waited for, not sampled.
            fields = askStatus(target)
            gone = fields["conn_chat"] == fields["conn_exec"] == 0
            released = fields["delayed_calls"] <= busy["delayed_calls"] - 2
            return fields if gone and released else {}

        after = waitUntil(closed, 20)
        assert set(after) == {
            *("delayed_calls", "threads", "pool_threads", "pool_busy", "pool_queued"),
            *("conn_chat", "conn_exec", "conn_upload"),
        }
        target.chatLatency()


def test_statusKeepsTwistdsLogRotation(tmp_path: Path) -> None:
    """With ``--logfile=FILE`` twistd rotates FILE on SIGUSR1; the status handler
    keeps that: one signal rotates the log and writes the status line in the new
    file, instead of taking the signal for itself."""
    home = tmp_path / "home"
    home.mkdir()
    logfile = tmp_path / "netproto.log"
    endpoints = ["--chat", "tcp:0:interface=127.0.0.1", "--exec", "none", "--upload", "none"]
    endpoints += ["--web", "none"]
    argv = [TWISTD, "-n", "--pidfile=", f"--logfile={logfile}", "netproto", *endpoints]
    server = Twistd(argv, twistdEnv(home), cwd=tmp_path)
    try:
        waitUntil(lambda: logfile.exists() and "netproto: ready" in logfile.read_text(), 30)
        os.kill(server.proc.pid, signal.SIGUSR1)
        rotated = tmp_path / "netproto.log.1"
        waitUntil(lambda: rotated.exists() and PREFIX in logfile.read_text(), 20)
        assert "netproto: ready" in rotated.read_text()
        assert PREFIX not in rotated.read_text()
    finally:
        assert server.stop() in (0, -signal.SIGTERM)  # Twisted >= 23 exits by the signal
