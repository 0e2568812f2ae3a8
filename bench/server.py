"""Start ``twistd netproto`` for a benchmark and watch its memory.

The server runs from the same Python environment as the benchmark, on
ephemeral loopback ports, with a temporary data directory.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
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
    """A running ``twistd -n netproto``: its pid, ports, token and upload dir."""

    def __init__(self, proc: subprocess.Popen[bytes], home: Path) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.home = home
        self.ports: dict[str, int] = {}
        self.token = ""
        self.uploadDir = home / "uploads"

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


@contextmanager
def netproto(*extra: str, timeout: float = 60.0) -> Iterator[Server]:
    """``twistd -n netproto`` with chat, exec and upload on free loopback ports."""
    home = Path(tempfile.mkdtemp(prefix="netproto-bench-"))
    argv = [TWISTD, "-n", "--pidfile=", "--logfile=-", "netproto", "--data-dir", str(home)]
    for name in ("chat", "exec", "upload"):
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
    log: list[str] = []

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
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        reader.join(5)
        if proc.stdout is not None:
            proc.stdout.close()
        shutil.rmtree(home, ignore_errors=True)


def wait(predicate: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark condition not met in time")
        time.sleep(0.01)
