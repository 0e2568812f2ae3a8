"""What exec's hot paths cost the server: a keystroke's round trip and a ``true``.

The shared harness (``../shared/bench/run.py --only pty`` and ``--only exec``)
gives latencies and rates, which move with the machine's load; this gives
what they cost the server in CPU time (``psutil`` on the ``twistd`` process,
user + system, its children excluded), which the load moves much less, beside
the p50 of the same run:

* keystrokes: one byte in a ``0`` frame to a remote ``cat``, waited for until
  its echo is back in ``1`` frames, on a terminal (``"pty"``) and on pipes;
* ``true``: ``R {"argv": ["true"]}`` until its ``X``, one after the other on
  one connection.

``--twistd-arg=--profile=PATH --twistd-arg=--profiler=cprofile`` profiles the
server (its ``twistd`` options, before ``netproto``). The server is the
checkout this module is imported from, or ``PYTHONPATH``'s.

    python -m bench.execpath [--keys 3000] [--trues 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import psutil

from bench.server import TWISTD, Server, stop

HEADER = struct.Struct(">I")


class Framed:
    """A blocking framed client, as small as the shared harness's."""

    def __init__(self, port: int, token: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.recv()  # H
        self.send(b"A", json.dumps({"token": token}).encode())
        kind, _ = self.recv()
        assert kind == b"K", kind

    def send(self, kind: bytes, payload: bytes) -> None:
        self.sock.sendall(HEADER.pack(len(payload) + 1) + kind + payload)

    def recv(self) -> tuple[bytes, bytes]:
        while True:
            if len(self.buf) >= 4:
                (n,) = HEADER.unpack_from(self.buf)
                if len(self.buf) >= 4 + n:
                    frame = bytes(self.buf[4 : 4 + n])
                    del self.buf[: 4 + n]
                    return frame[:1], frame[1:]
            data = self.sock.recv(1 << 16)
            if not data:
                raise ConnectionError("server closed the connection")
            self.buf += data

    def close(self) -> None:
        self.sock.close()


@contextmanager
def server(twistdArgs: Sequence[str], wrap: Sequence[str] = ()) -> Iterator[Server]:
    """``twistd -n netproto`` with exec only, on a free loopback port (run by
    ``wrap``, e.g. ``strace -c -o FILE``, when given)."""
    home = Path(tempfile.mkdtemp(prefix="netproto-execpath-"))
    argv = [*wrap, TWISTD, "-n", "--pidfile=", "--logfile=-", *twistdArgs, "netproto"]
    argv += ["--data-dir", str(home), "--exec", "tcp:0:interface=127.0.0.1"]
    argv += ["--chat", "none", "--upload", "none", "--web", "none"]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1", NETPROTO_HOME=str(home)),
    )
    srv = Server(proc, home)
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace")
            srv.log.append(line)
            m = re.search(r"exec listening on [\d.]+:(\d+)", line)
            if m:
                srv.ports["exec"] = int(m.group(1))
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        if not ready.wait(60):
            raise RuntimeError("netproto did not start:\n" + "".join(srv.log[-20:]))
        srv.token = (home / "token").read_text().strip()
        yield srv
    finally:
        stop(proc, 30)
        reader.join(5)
        shutil.rmtree(home, ignore_errors=True)


def cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


def keystrokes(srv: Server, terminal: bool, n: int) -> dict[str, float]:
    """``n`` keystrokes to ``cat``; p50 in ms and the server's CPU µs per key."""
    assert srv.token is not None
    f = Framed(srv.ports["exec"], srv.token)
    try:
        extra = {"pty": {"term": "xterm", "rows": 24, "cols": 80}} if terminal else {"stdin": True}
        f.send(b"R", json.dumps({"argv": ["cat"], **extra}).encode())
        assert f.recv()[0] == b"K"
        proc = psutil.Process(srv.pid)
        lat: list[float] = []
        start = 0.0
        for i in range(n + 20):
            if i == 20:  # warm-up done
                start = cpu(proc)
            key = b"abcdefghijklmnopqrstuvwxyz"[i % 26 : i % 26 + 1]
            t = time.perf_counter()
            f.send(b"0", key)
            got = b""
            while not got.endswith(key):
                kind, payload = f.recv()
                assert kind in (b"1", b"2"), kind
                got += payload
            if i >= 20:
                lat.append(time.perf_counter() - t)
        used = cpu(proc) - start
    finally:
        f.close()
    return {"p50_ms": statistics.median(lat) * 1e3, "cpu_us": used / n * 1e6}


def trues(srv: Server, n: int) -> dict[str, float]:
    """``n`` ``true`` commands one after the other; per second, p50 ms, CPU µs each."""
    assert srv.token is not None
    f = Framed(srv.ports["exec"], srv.token)
    proc = psutil.Process(srv.pid)
    lat: list[float] = []
    try:
        start = t0 = 0.0
        for i in range(n + 20):
            if i == 20:
                start, t0 = cpu(proc), time.perf_counter()
            t = time.perf_counter()
            f.send(b"R", b'{"argv":["true"]}')
            while f.recv()[0] != b"X":
                pass
            if i >= 20:
                lat.append(time.perf_counter() - t)
        wall = time.perf_counter() - t0
        used = cpu(proc) - start
    finally:
        f.close()
    return {"per_s": n / wall, "p50_ms": statistics.median(lat) * 1e3, "cpu_us": used / n * 1e6}


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=3000)
    ap.add_argument("--trues", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", choices=("pty", "pipes", "true"), action="append")
    ap.add_argument("--twistd-arg", action="append", default=[])
    ap.add_argument("--wrap", default="", help="a command to run twistd with (split at spaces)")
    args = ap.parse_args(argv)
    only = args.only or ["pty", "pipes", "true"]
    print(f"load average {os.getloadavg()[0]:.1f}", file=sys.stderr)
    with server(args.twistd_arg, args.wrap.split()) as srv:
        print(f"server pid {srv.pid}", file=sys.stderr, flush=True)
        for r in range(args.rounds):
            row: dict[str, dict[str, float]] = {}
            if "pty" in only:
                row["pty"] = keystrokes(srv, True, args.keys)
            if "pipes" in only:
                row["pipes"] = keystrokes(srv, False, args.keys)
            if "true" in only:
                row["true"] = trues(srv, args.trues)
            print(
                f"round {r + 1}: "
                + "  ".join(
                    f"{k}: " + " ".join(f"{name} {v:.3g}" for name, v in vals.items())
                    for k, vals in row.items()
                )
            )


if __name__ == "__main__":
    main()
