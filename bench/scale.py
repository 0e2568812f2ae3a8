"""How netproto's cost grows with the work: chat fan-out, exec output, upload size.

Starts ``twistd -n netproto`` from this environment and, for each size,
prints what it measured and writes it to a JSON file that ``bench/plot.py``
turns into the plots of docs/performance.md. It asserts nothing about
timings: figures on shared machines are noisy; compare within one run.

    python -m bench.scale [--only chat|exec|upload] [--quick] [--json bench/results/scale.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import selectors
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.server import SHARED_BENCH, Server, netproto, peer

MiB = 1 << 20


# -- framed client -----------------------------------------------------------


class Framed:
    """A blocking framed connection with a reusable receive buffer."""

    def __init__(self, port: int, service: str, token: str | None) -> None:
        """With ``token`` None, a peer speaking the same frames without hello and auth."""
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=120)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray(8 * MiB)
        self.view = memoryview(self.buf)
        self.lo = self.hi = 0
        self.maxFrame = 256 * 1024 + 1
        if token is None:
            return
        hello = self.json(b"H")
        assert hello["service"] == service, hello
        self.maxFrame = int(hello["max_frame"])
        self.send(b"A", json.dumps({"token": token}).encode())
        self.json(b"K")

    def send(self, kind: bytes, payload: bytes | memoryview = b"") -> None:
        self.sock.sendall(struct.pack(">I", len(payload) + 1) + kind)
        if payload:
            self.sock.sendall(payload)

    def _need(self, n: int) -> None:
        while self.hi - self.lo < n:
            if len(self.buf) - self.lo < n:
                k = self.hi - self.lo
                self.buf[:k] = self.buf[self.lo : self.hi]
                self.lo, self.hi = 0, k
            got = self.sock.recv_into(self.view[self.hi :])
            if not got:
                raise ConnectionError("server closed the connection")
            self.hi += got

    def recv(self) -> tuple[bytes, int, memoryview]:
        self._need(4)
        (n,) = struct.unpack_from(">I", self.buf, self.lo)
        self._need(4 + n)
        kind = bytes(self.buf[self.lo + 4 : self.lo + 5])
        payload = self.view[self.lo + 5 : self.lo + 4 + n]
        self.lo += 4 + n
        if kind == b"E":
            raise RuntimeError(f"server error: {bytes(payload).decode()}")
        return kind, n - 1, payload

    def json(self, kind: bytes) -> dict[str, Any]:
        got, _, payload = self.recv()
        assert got == kind, (got, kind, bytes(payload[:200]))
        obj: dict[str, Any] = json.loads(bytes(payload))
        return obj

    def close(self) -> None:
        self.sock.close()


# -- exec ----------------------------------------------------------------------


def execOutput(server: Server, size: int) -> dict[str, float]:
    """``head -c SIZE /dev/zero`` streamed back: MB/s and the server's peak RSS."""
    conn = Framed(server.ports["exec"], "exec", server.token)  # token None: a peer
    server.resetPeak()
    before = server.rssKiB()
    t = time.perf_counter()
    conn.send(b"R", json.dumps({"argv": ["head", "-c", str(size), "/dev/zero"]}).encode())
    got = 0
    while True:
        kind, n, payload = conn.recv()
        if kind == b"1":
            got += n
        elif kind == b"X":
            result = json.loads(bytes(payload))
            break
    elapsed = time.perf_counter() - t
    conn.close()
    assert got == size and result["code"] == 0, (got, size, result)
    return {
        "bytes": size,
        "mb_s": size / elapsed / 1e6,
        "seconds": elapsed,
        "rss_before_mib": before / 1024,
        "peak_rss_mib": server.hwmKiB() / 1024,
    }


# -- upload ----------------------------------------------------------------------


def upload(server: Server, size: int, block: bytes, name: str) -> dict[str, float]:
    """One file of ``size`` bytes (a random block repeated), P/K/D.../F/K: MB/s end to end."""
    conn = Framed(server.ports["upload"], "upload", server.token)
    chunk = conn.maxFrame - 1
    assert len(block) % chunk == 0, "the block must be a whole number of chunks"
    digest = hashlib.sha256()
    t = time.perf_counter()
    conn.send(b"P", json.dumps({"name": name, "size": size}).encode())
    assert conn.json(b"K")["offset"] == 0
    view = memoryview(block)
    sent = 0
    while sent < size:
        n = min(chunk, size - sent)
        start = sent % len(block)  # the block is a whole number of chunks
        piece = view[start : start + n]
        digest.update(piece)
        conn.send(b"D", piece)
        sent += n
    conn.send(b"F", json.dumps({"sha256": digest.hexdigest()}).encode())
    stored = conn.json(b"K")
    elapsed = time.perf_counter() - t
    conn.close()
    assert stored["size"] == size and stored["sha256"] == digest.hexdigest(), stored
    (server.uploadDir / name).unlink()
    return {"bytes": size, "mb_s": size / elapsed / 1e6, "seconds": elapsed}


# -- chat ------------------------------------------------------------------------


def chatFanout(
    server: Server, receivers: int, senders: int = 100, lines: int = 20
) -> dict[str, float]:
    """``senders`` members each send ``lines`` lines to a room of ``receivers`` + senders:
    deliveries/s until every member has every line from the others, and server RSS."""
    port = server.ports["chat"]
    sel = selectors.DefaultSelector()
    members = []
    for i in range(receivers + senders):
        s = socket.socket()
        s.bind((f"127.2.{i // 250}.{i % 250 + 1}", 0))
        s.connect(("127.0.0.1", port))
        s.setblocking(False)
        members.append(s)
        sel.register(s, selectors.EVENT_READ, [0, b""])
    mark = os.urandom(4).hex().encode()
    total = senders * lines
    need = [total] * receivers + [total - lines] * senders

    def pump(timeout: float) -> None:
        for key, _ in sel.select(timeout):
            try:
                data = key.fileobj.recv(1 << 18)  # type: ignore[union-attr]
            except BlockingIOError:
                continue
            state = key.data
            buf = state[1] + data
            cut = buf.rfind(b"\n") + 1
            state[0] += buf[:cut].count(mark)
            state[1] = buf[cut:]

    # Let every welcome arrive and every join settle before timing.
    settle = time.monotonic() + 2 + (receivers + senders) / 1000
    while time.monotonic() < settle:
        pump(0.05)
    for m in members:
        sel.get_key(m).data[0] = 0
    rssBefore = server.rssKiB()
    t = time.perf_counter()
    for i, s in enumerate(members[receivers:]):
        payload = b"".join(mark + b" %d %d ".ljust(58, b"x") % (i, j) + b"\n" for j in range(lines))
        s.setblocking(True)
        s.sendall(payload)
        s.setblocking(False)
    deadline = time.monotonic() + 120
    while any(sel.get_key(m).data[0] < n for m, n in zip(members, need, strict=True)):
        if time.monotonic() > deadline:
            raise TimeoutError("not every line arrived")
        pump(0.05)
    elapsed = time.perf_counter() - t
    rss = server.rssKiB()
    for m in members:
        sel.unregister(m)
        m.close()
    sel.close()
    return {
        "receivers": receivers,
        "deliveries": sum(need),
        "deliveries_s": sum(need) / elapsed,
        "seconds": elapsed,
        "rss_mib": rss / 1024,
        "rss_kib_per_conn": (rss - rssBefore) / max(1, receivers + senders),
    }


CHAT_PEERS = [
    ("tutorial_chat.py",),
    ("twisted_chat.py",),
    ("asyncio_chat.py",),
    ("asyncio_chat.py", "--uvloop"),
]
EXEC_PEERS = [("twisted_exec.py",), ("asyncio_exec.py",), ("asyncio_exec.py", "--uvloop")]


def servers(service: str, peers: list[tuple[str, ...]], withPeers: bool) -> Iterator[Any]:
    """netproto, then each peer of the shared harness (when it is there and wanted)."""
    yield netproto()
    if withPeers and SHARED_BENCH.is_dir():
        for script, *extra in peers:
            yield peer(script, service, *extra)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=["chat", "exec", "upload"])
    parser.add_argument("--quick", action="store_true", help="small sizes only (a smoke run)")
    parser.add_argument("--no-peers", action="store_true", help="netproto only")
    parser.add_argument("--json", type=Path, default=Path("bench/results/scale.json"))
    args = parser.parse_args()
    only = set(args.only or ["chat", "exec", "upload"])
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    if "chat" in only:
        results["chat"] = {}
        for start in servers("chat", CHAT_PEERS, not args.no_peers):
            with start as server:
                rows = results["chat"].setdefault(server.name, [])
                for n in [50, 200] if args.quick else [50, 200, 1000, 2000]:
                    r = chatFanout(server, n)
                    rows.append(r)
                    print(
                        f"chat   {server.name:22} {n:5} receivers + 100 senders:"
                        f" {r['deliveries_s']:>12,.0f} deliveries/s"
                        f"  RSS {r['rss_mib']:.1f} MiB"
                    )
    if "exec" in only:
        results["exec"] = {}
        sizes = [1, 16] if args.quick else [1, 16, 64, 256, 1024]
        for start in servers("exec", EXEC_PEERS, not args.no_peers):
            with start as server:
                rows = results["exec"].setdefault(server.name, [])
                for mib in sizes:
                    r = execOutput(server, mib * MiB)
                    rows.append(r)
                    print(
                        f"exec   {server.name:22} {mib:5} MiB of output: {r['mb_s']:>8,.0f} MB/s"
                        f"  peak RSS {r['peak_rss_mib']:.1f} MiB"
                    )
    if "upload" in only:
        block = os.urandom(64 * MiB)
        sizes = [1, 16] if args.quick else [1, 16, 64, 256, 1024, 2048]
        with netproto() as server:
            rows = results.setdefault("upload", {}).setdefault(server.name, [])
            for mib in sizes:
                r = upload(server, mib * MiB, block, f"scale-{mib}")
                rows.append(r)
                line = f"{mib:5} MiB: {r['mb_s']:>8,.0f} MB/s  {r['seconds']:.2f} s"
                print(f"upload {server.name:22} {line}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    existing = json.loads(args.json.read_text()) if args.json.exists() else {}
    existing.update(results)
    args.json.write_text(json.dumps(existing, indent=1))
    print(f"written to {args.json}")


if __name__ == "__main__":
    main()
