"""Start ``twistd netproto`` for a benchmark and watch its memory.

The server runs from the same Python environment as the benchmark, on
ephemeral loopback ports, with a temporary data directory.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TWISTD = str(Path(sys.executable).parent / "twistd")


class Server:
    """A running server: ``twistd -n netproto`` (its ports, token and upload
    dir), or a peer from the shared harness (one port, no token)."""

    def __init__(self, proc: subprocess.Popen[bytes], home: Path, name: str = "netproto") -> None:
        self.proc = proc
        self.pid = proc.pid
        self.home = home
        self.name = name
        self.ports: dict[str, int] = {}
        self.token: str | None = None
        self.uploadDir = home / "uploads"
        #: the server's log lines so far (netproto only), appended as they come
        self.log: list[str] = []

    def rssKiB(self) -> int:
        """Resident set size now."""
        return _status(self.pid, "VmRSS")

    def hwmKiB(self) -> int:
        """Peak resident set size since start (or since :meth:`resetPeak`)."""
        return _status(self.pid, "VmHWM")

    def resetPeak(self) -> None:
        """Reset the kernel's peak RSS counter (Linux >= 4.0), so a phase's peak can be read."""
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass


def _status(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def stop(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM to the server's session, SIGKILL if it outlives ``grace`` seconds."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextmanager
def netproto(*extra: str, timeout: float = 60.0) -> Iterator[Server]:
    """``twistd -n netproto`` with chat, exec, upload and web on free loopback
    ports (never a default port, which another server may hold)."""
    home = Path(tempfile.mkdtemp(prefix="netproto-bench-"))
    argv = [TWISTD, "-n", "--pidfile=", "--logfile=-", "netproto", "--data-dir", str(home)]
    for name in ("chat", "exec", "upload", "web"):
        argv += [f"--{name}", "tcp:0:interface=127.0.0.1"]
    proc = subprocess.Popen(
        [*argv, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    server = Server(proc, home)
    ready = threading.Event()
    log = server.log

    def read() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace")
            log.append(line)
            m = re.search(r"netproto: (\w+) listening on [\d.]+:(\d+)", line)
            if m:
                server.ports[m.group(1)] = int(m.group(2))
                if len(server.ports) == 3:
                    ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        if not ready.wait(timeout):
            raise RuntimeError("netproto did not start:\n" + "".join(log[-20:]))
        server.token = (home / "token").read_text().strip()
        yield server
    finally:
        stop(proc, 30)
        reader.join(5)
        if proc.stdout is not None:
            proc.stdout.close()
        shutil.rmtree(home, ignore_errors=True)


#: The shared harness beside the checkout, whose peers (the servers a user
#: might pick instead) bench/scale.py measures too when it is there;
#: ``NETPROTO_SHARED_BENCH`` names it for a checkout elsewhere (a snapshot
#: made with ``git worktree add /tmp/snap-X``).
SHARED_BENCH = Path(
    os.environ.get("NETPROTO_SHARED_BENCH")
    or Path(__file__).resolve().parent.parent.parent / "shared" / "bench"
)
PEERS_PYTHON = Path("/tmp/netproto-bench-venv/bin/python")


def _freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def peer(script: str, service: str, *extra: str, timeout: float = 30.0) -> Iterator[Server]:
    """A peer server of the shared harness (``peers/SCRIPT``), serving ``service`` on a free port.

    It runs with the harness's peers venv (Twisted, uvloop) when it exists.
    """
    python = str(PEERS_PYTHON) if PEERS_PYTHON.exists() else sys.executable
    port = _freePort()
    home = Path(tempfile.mkdtemp(prefix="netproto-bench-peer-"))
    proc = subprocess.Popen(
        [python, str(SHARED_BENCH / "peers" / script), "--port", str(port), *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    server = Server(proc, home, name=script.removesuffix(".py") + "".join(extra))
    server.ports[service] = port
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"peer {script} did not start") from None
                time.sleep(0.05)
        yield server
    finally:
        stop(proc, 10)
        shutil.rmtree(home, ignore_errors=True)
