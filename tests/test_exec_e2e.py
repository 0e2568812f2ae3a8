"""exec end to end: ``twistd -n netproto`` subprocesses, the ``netproto exec``
command, a killed client, a 512 MiB stream to a slow reader, a server shutdown."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.support import NETPROTO, BlockingFramed, Twistd, runTwistd, waitUntil

pytestmark = pytest.mark.e2e

MiB = 1 << 20


@dataclass
class Server:
    twistd: Twistd
    home: Path

    @property
    def port(self) -> int:
        return self.twistd.port("exec")

    @property
    def token(self) -> str:
        return (self.home / "token").read_text().strip()

    def env(self) -> dict[str, str]:
        return dict(os.environ, NETPROTO_HOME=str(self.home))

    def cli(self, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        """``netproto exec ARGS`` against this server; stdin is ``input`` (or empty)."""
        return subprocess.run(
            [NETPROTO, "exec", "--server", f"127.0.0.1:{self.port}", *args],
            input=input if input is not None else b"",
            capture_output=True,
            env=self.env(),
            timeout=60,
            check=False,
        )

    def login(self) -> BlockingFramed:
        conn = BlockingFramed.connect(self.port, timeout=30)
        conn.login(self.token, service="exec")
        return conn


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("exec-e2e")
    with runTwistd(tmp, "--exec-kill-grace", "1", services=("exec",)) as twistd:
        yield Server(twistd, tmp / "home")


def session(sid: int) -> list[psutil.Process]:
    """Every process (zombies included) of session ``sid``."""
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == sid:
                found.append(proc)
        except OSError:
            continue
    return found


def zombieChildren(pid: int) -> list[psutil.Process]:
    return [
        child
        for child in psutil.Process(pid).children(recursive=True)
        if child.status() == psutil.STATUS_ZOMBIE
    ]


# -- the process tree ----------------------------------------------------------------


def test_killing_the_client_mid_command_leaves_no_process_and_no_zombie(server: Server) -> None:
    """The client is killed while its command (a shell that started background
    children, one of them orphaned at once, and sleeps) runs: every process of
    the command's session goes, and none is left a zombie."""
    script = "sleep 300 & (sleep 300 &); sh -c 'sleep 300' & echo $$; sleep 300"
    with subprocess.Popen(
        [NETPROTO, "exec", "--server", f"127.0.0.1:{server.port}", "--shell", "--", script],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        env=server.env(),
    ) as cli:
        try:
            assert cli.stdout is not None
            sid = int(cli.stdout.readline())
            waitUntil(lambda: len(session(sid)) >= 5)  # sh, 3 sleeps, sh -c
        finally:
            cli.kill()
    waitUntil(lambda: not session(sid), timeout=15)
    assert not zombieChildren(server.twistd.proc.pid)
    server.twistd.waitLog(rf"command {sid} .* ended by the server")


def test_server_shutdown_ends_commands_and_waits_for_them(tmp_path: Path) -> None:
    """twistd stopping (SIGTERM) ends every command's group, TERM then KILL for
    one that ignores TERM, tells the client how it ended, and exits only after
    the processes are gone."""
    with runTwistd(tmp_path, "--exec-kill-grace", "0.5", services=("exec",)) as twistd:
        srv = Server(twistd, tmp_path / "home")
        conn = srv.login()
        conn.sendJSON(b"R", {"shell": "trap '' TERM; sleep 300 & echo ready; sleep 300"})
        sid = conn.recvJSON(b"K")["pid"]
        assert conn.recv() == (b"1", b"ready\n")
        waitUntil(lambda: len(session(sid)) == 3)  # the shell forks the second sleep after echo
        # twistd 26 ends itself with the signal it was stopped by, after a clean shutdown.
        assert twistd.stop() in (0, -signal.SIGTERM)
        assert conn.recvJSON(b"X") == {"code": None, "signal": "KILL", "timed_out": False}
        conn.close()
    assert not session(sid)
    log = twistd.log
    assert log.index(f"command {sid} of") < log.index("Main loop terminated")
    assert "Traceback" not in log


# -- memory under a fast command and a slow client ------------------------------------


def memory(pid: int, field: str) -> int:
    """``VmRSS`` or ``VmHWM`` (peak RSS) of ``pid``, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field}")


def resetPeak(pid: int) -> bool:
    """Reset ``pid``'s peak RSS to its current RSS (Linux >= 4.0); whether it worked."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def readOutput(conn: BlockingFramed, total: int, slowBytes: int) -> tuple[int, dict[str, Any]]:
    """Read 1 frames up to X: the first ``slowBytes`` 4 KiB at a time, then 64 KiB
    at a time; every payload byte must be zero. Returns (bytes, X payload).

    Starts with what ``conn`` has already read past the frames it returned
    (output that came with the K frame), then reads its socket directly."""
    import json

    sock = conn.sock
    buf = bytearray(conn.buf)
    conn.buf = b""
    got = 0
    while True:
        while len(buf) >= 4:
            (n,) = struct.unpack_from(">I", buf)
            if len(buf) < 4 + n:
                break
            kind = bytes(buf[4:5])
            if kind == b"1":
                assert buf.count(0, 5, 4 + n) == n - 1, "output bytes changed"
                got += n - 1
            elif kind == b"X":
                return got, json.loads(bytes(buf[5 : 4 + n]))
            else:
                raise AssertionError(f"unexpected frame {kind!r}")
            del buf[: 4 + n]
        data = sock.recv(4096 if got < slowBytes else 65536)
        assert data, f"connection closed after {got} of {total} bytes"
        buf += data


@pytest.mark.slow
def test_512_MiB_to_a_slow_reader_keeps_server_memory_bounded(server: Server) -> None:
    """`head -c 512M /dev/zero` to a client that first reads nothing, then reads
    4 KiB at a time, then the rest: all 512 MiB arrive, and the server's peak
    RSS stays within a bound far below the output's size (backpressure)."""
    total = 512 * MiB
    pid = server.twistd.proc.pid
    conn = server.login()
    before = memory(pid, "VmRSS")
    # Without a reset, the peak is the server's whole life (start-up included).
    bound = 64 * MiB if resetPeak(pid) else 96 * MiB
    conn.sendJSON(b"R", {"argv": ["head", "-c", str(total), "/dev/zero"]})
    head = psutil.Process(conn.recvJSON(b"K")["pid"])
    written: list[int] = []

    def stalled() -> bool:
        written.append(head.io_counters().write_chars)
        return len(written) > 5 and written[-1] == written[-6]

    waitUntil(stalled, timeout=20, interval=0.05)
    assert written[-1] < 64 * MiB  # pipe, server and socket buffers: no more
    got, exit = readOutput(conn, total, slowBytes=16 * MiB)
    conn.close()
    assert got == total
    assert exit == {"code": 0, "signal": None, "timed_out": False}
    peak = memory(pid, "VmHWM")
    report = f"server RSS {before / MiB:.1f} MiB before, peak {peak / MiB:.1f} MiB"
    print(report)  # shown with pytest -s
    assert peak < bound, report
    assert peak - before < 32 * MiB, report


# -- the netproto exec command ----------------------------------------------------------


def test_cli_exit_status_is_the_commands(server: Server) -> None:
    """netproto exec exits with the remote code, 128+N for signal N, 127 for no
    such program, and 255 (one line, no traceback) for its own failures."""
    assert server.cli("--", "sh", "-c", "exit 3").returncode == 3
    assert server.cli("--shell", "--", "kill -TERM $$").returncode == 128 + signal.SIGTERM
    missing = server.cli("--", "no-such-program-here")
    assert missing.returncode == 127
    assert b"not-found" in missing.stderr and b"Traceback" not in missing.stderr
    timedOut = server.cli("--timeout", "0.2", "--", "sleep", "30")
    assert timedOut.returncode == 128 + signal.SIGTERM
    assert b"timed out" in timedOut.stderr
    nowhere = subprocess.run(
        [NETPROTO, "exec", "--server", "127.0.0.1:1", "--", "true"],
        input=b"",
        capture_output=True,
        env=server.env(),
        timeout=30,
        check=False,
    )
    assert nowhere.returncode == 255
    assert len(nowhere.stderr.splitlines()) == 1 and b"Traceback" not in nowhere.stderr


def test_cli_keeps_stdout_and_stderr_apart(server: Server) -> None:
    """Remote stdout goes to local stdout, remote stderr to local stderr."""
    result = server.cli("--", "sh", "-c", "echo out; echo err >&2; echo out2")
    assert result.returncode == 0
    assert result.stdout == b"out\nout2\n"
    assert result.stderr == b"err\n"


def test_cli_pipes_stdin_through(server: Server) -> None:
    """Piped stdin is forwarded byte for byte (cat round trip, wc -c); -n keeps it back."""
    data = os.urandom(5 * MiB + 3)
    assert server.cli("--", "cat", input=data).stdout == data
    assert server.cli("--", "wc", "-c", input=data).stdout.strip() == str(len(data)).encode()
    assert server.cli("-n", "--", "wc", "-c", input=data).stdout.strip() == b"0"


def test_cli_ctrl_c_interrupts_the_remote_command(server: Server) -> None:
    """SIGINT to netproto exec becomes S INT: the remote command ends by SIGINT
    and the client exits 130."""
    argv = [NETPROTO, "exec", "--server", f"127.0.0.1:{server.port}", "--shell", "--"]
    with subprocess.Popen(
        [*argv, "echo ready; exec sleep 60"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=server.env(),
    ) as cli:
        try:
            assert cli.stdout is not None
            assert cli.stdout.readline() == b"ready\n"
            cli.send_signal(signal.SIGINT)
            assert cli.wait(timeout=20) == 128 + signal.SIGINT
        finally:
            if cli.poll() is None:
                cli.kill()
