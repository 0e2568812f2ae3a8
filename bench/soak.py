"""A soak: ``twistd netproto`` under honest traffic and a random stream of attacks.

For ``--seconds`` (default 5 minutes) honest clients chat, run commands and
store files, while abusers from other loopback addresses attack at random:
chat never-readers, floods and over-long lines, connection churn, slowloris
frames before and after login, malformed and deeply nested JSON, huge
integers, wrong tokens, oversized frames, silent connections, abandoned
uploads and upload names that try to leave the upload directory (one
through a symlink planted in it, as a local user could). Every ``--sample``
seconds it records the server's RSS, open fds, threads, child processes,
leftover partial uploads, log volume and, from its ``SIGUSR1`` status line
(:mod:`netproto.status`), pending delayed calls and open connections, with
the worst chat latency an honest probe saw.

At the end the attacks stop, their connections close, and one more sample
shows what the server kept. It prints a summary (first, last and max of each
series, the honest traffic's successes and errors, each attack's outcomes),
writes ``soak.json`` and ``soak.txt`` under ``--out`` and plots every series
over time to ``--plot``. It asserts nothing: the curves are to be read.

    python -m bench.soak [--seconds 300] [--sample 5] [--seed 1]
                         [--out bench/results] [--plot docs/_static/soak.png]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import resource
import signal
import socket
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil

from bench.server import Server, netproto
from netproto.codec import encodeFrame

MiB = 1 << 20
#: Where honest clients connect from; abusers use 127.0.1.1 and up.
HONEST = "127.0.0.1"
#: Seconds any one exchange of an honest client may take before it counts as an error.
HONEST_DEADLINE = 30.0
#: Most attacks in progress at once (each holds a connection or two).
MAX_ATTACKS = 150
#: The checkout this file belongs to: the server runs its code, not an installed copy.
CHECKOUT = Path(__file__).resolve().parent.parent
STATUS_PREFIX = "netproto: status:"


def abuser(n: int) -> str:
    """The n-th abusive source address (127.0.1.1, 127.0.1.2, ...)."""
    return f"127.0.{1 + n // 250 % 250}.{1 + n % 250}"


def jsonFrame(kind: bytes, obj: dict[str, Any]) -> bytes:
    return encodeFrame(kind, json.dumps(obj).encode())


async def readFrame(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """The next frame from ``reader``: its type byte and payload."""
    length = int.from_bytes(await reader.readexactly(4), "big")
    data = await reader.readexactly(length)
    return data[:1], data[1:]


async def expectFrame(reader: asyncio.StreamReader, kind: bytes) -> dict[str, Any]:
    """The next frame, which must be ``kind``; an ``E`` raises with its code."""
    got, payload = await readFrame(reader)
    if got == b"E":
        raise RefusedError(json.loads(payload)["code"])
    if got != kind:
        raise RefusedError(f"unexpected {got!r}")
    obj: dict[str, Any] = json.loads(payload) if payload else {}
    return obj


async def outcome(reader: asyncio.StreamReader, timeout: float = 15.0) -> str:
    """What the server answered last before it closed: ``E CODE``, ``closed`` or
    ``open`` if it did neither within ``timeout``."""
    said = "closed"
    deadline = time.monotonic() + timeout
    try:
        while True:
            kind, payload = await asyncio.wait_for(readFrame(reader), deadline - time.monotonic())
            if kind == b"E":
                said = "E " + json.loads(payload)["code"]
    except asyncio.IncompleteReadError:
        return said
    except TimeoutError:  # before OSError, of which it is a subclass
        return "open"
    except OSError:
        return said + " (reset)"


class RefusedError(Exception):
    """The server answered with an error frame (or something unexpected)."""


class Soak:
    """One soak run against ``server``."""

    def __init__(self, server: Server, seconds: float, sample: float, seed: int) -> None:
        self.server = server
        self.seconds = seconds
        self.sampleEvery = sample
        self.rng = random.Random(seed)
        self.process = psutil.Process(server.pid)
        self.token = server.token or ""
        self.honest: Counter[str] = Counter()
        self.honestErrors: Counter[str] = Counter()
        self.attacks: Counter[str] = Counter()
        self.samples: list[dict[str, Any]] = []
        self.latencies: list[float] = []
        self.stopping = asyncio.Event()
        self.started = time.monotonic()
        self.logBytes = 0
        self.lastLogBytes = 0
        self.lastSample = time.monotonic()
        self.logErrors = 0
        #: the server's last log lines, shown if it dies
        self.logTail: deque[str] = deque(maxlen=40)
        self.outside = server.home / "outside"
        self.attackTasks: set[asyncio.Task[None]] = set()
        self.died = False
        #: the honest exec and upload clients' logged-in connections
        self.connections: dict[str, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}

    # -- connections ----------------------------------------------------------------

    def port(self, service: str) -> int:
        return self.server.ports[service]

    async def connect(
        self, service: str, source: str = HONEST
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(
            "127.0.0.1", self.port(service), local_addr=(source, 0)
        )

    async def login(
        self, service: str, source: str = HONEST
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await self.connect(service, source)
        await expectFrame(reader, b"H")
        writer.write(jsonFrame(b"A", {"token": self.token}))
        await expectFrame(reader, b"K")
        return reader, writer

    # -- honest traffic -----------------------------------------------------------------

    async def honestLoop(self, name: str, step: Callable[[int], Awaitable[None]]) -> None:
        """Call ``step(n)`` about once a second until the end, counting successes
        and errors under ``name``; a step that fails is retried with a new connection."""
        n = 0
        while not self.stopping.is_set():
            try:
                await asyncio.wait_for(step(n), HONEST_DEADLINE)
                self.honest[f"{name} ok"] += 1
            except (OSError, RefusedError, TimeoutError, asyncio.IncompleteReadError) as e:
                self.honest[f"{name} errors"] += 1
                self.honestErrors[f"{name}: {type(e).__name__}: {e}"[:120]] += 1
                await self.dropConnection(name)
            n += 1
            await self.pause(0.5 + self.rng.random())

    async def pause(self, seconds: float) -> None:
        """Sleep, but wake at once when the soak stops."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)

    async def connection(self, name: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """The honest client ``name``'s logged-in connection, made on first use."""
        if name not in self.connections:
            self.connections[name] = await self.login(name)
        return self.connections[name]

    async def dropConnection(self, name: str) -> None:
        pair = self.connections.pop(name, None)
        if pair is not None:
            pair[1].transport.abort()

    async def execStep(self, n: int) -> None:
        reader, writer = await self.connection("exec")
        lines = 1 + n % 500
        writer.write(jsonFrame(b"R", {"argv": ["seq", str(lines)]}))
        await expectFrame(reader, b"K")
        out = b""
        while True:
            kind, payload = await readFrame(reader)
            if kind == b"X":
                end = json.loads(payload)
                break
            if kind == b"1":
                out += payload
        expected = "".join(f"{i}\n" for i in range(1, lines + 1)).encode()
        if end.get("code") != 0 or out != expected:
            raise RefusedError(f"exec: {end} with {len(out)} bytes of output")

    async def uploadStep(self, n: int) -> None:
        reader, writer = await self.connection("upload")
        data = self.rng.randbytes(self.rng.randrange(1, 256 * 1024))
        name = f"honest/{n}.bin"
        writer.write(jsonFrame(b"P", {"name": name, "size": len(data)}))
        await expectFrame(reader, b"K")
        digest = hashlib.sha256(data).hexdigest()
        writer.write(encodeFrame(b"D", data) + jsonFrame(b"F", {"sha256": digest}))
        stored = await expectFrame(reader, b"K")
        if stored.get("sha256") != digest:
            raise RefusedError(f"upload: stored {stored}")

    async def probeStep(self, n: int) -> None:
        """An honest chat user's wait: connect, welcome, ``/who`` answered."""
        started = time.monotonic()
        reader, writer = await self.connect("chat")
        try:
            await reader.readuntil(b"/help")
            writer.write(b"/who\r\n")
            await reader.readuntil(b"***")
        finally:
            writer.transport.abort()
        self.latencies.append(time.monotonic() - started)

    async def chatPair(self) -> None:
        """Two honest members: one says a line a second, the other must hear each."""
        while not self.stopping.is_set():
            try:
                await self.chatRound()
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
                self.honest["chat errors"] += 1
                self.honestErrors[f"chat: {type(e).__name__}: {e}"[:120]] += 1
                await self.pause(1.0)

    async def chatRound(self) -> None:
        speaker, speakerOut = await self.connect("chat")
        listener, listenerOut = await self.connect("chat")
        heard: set[int] = set()
        everyLine = asyncio.Event()
        said = [1 << 62]  # lines said, once the round is over

        async def drain(reader: asyncio.StreamReader, keep: bool) -> None:
            while line := await reader.readline():
                if keep and b"> honest " in line:
                    heard.add(int(line.rsplit(b" ", 1)[1]))
                    if len(heard) >= said[0]:
                        everyLine.set()

        readers = [
            asyncio.create_task(drain(speaker, False)),
            asyncio.create_task(drain(listener, True)),
        ]
        try:
            n = 0
            while not self.stopping.is_set() and not any(t.done() for t in readers):
                speakerOut.write(f"honest {n}\r\n".encode())
                self.honest["chat sent"] += 1
                n += 1
                await self.pause(1.0)
            said[0] = n
            if len(heard) >= n:
                everyLine.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(everyLine.wait(), 5)
            self.honest["chat heard"] += len(heard)
            for task in readers:
                failed = task.exception() if task.done() else None
                if failed is not None:
                    raise failed
        finally:
            for task in readers:
                task.cancel()
            speakerOut.transport.abort()
            listenerOut.transport.abort()

    # -- attacks ------------------------------------------------------------------------

    async def neverReader(self, n: int) -> str:
        """A chat member that never reads, held until cut off or for up to 30 s."""
        _, writer = await self.connect("chat", abuser(n))
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        writer.write(b"/join #lobby\r\n")
        await self.pause(self.rng.uniform(5, 30))
        writer.transport.abort()
        return "held"

    async def chatFlood(self, n: int) -> str:
        reader, writer = await self.connect("chat", abuser(n))
        writer.write(b"".join(b"flood %d\r\n" % i for i in range(300)))
        try:
            data = await asyncio.wait_for(reader.readuntil(b"slow down"), 10)
            return "slowed" if data else "?"
        finally:
            writer.transport.abort()

    async def hugeLine(self, n: int) -> str:
        reader, writer = await self.connect("chat", abuser(n))
        writer.write(b"x" * (256 * 1024) + b"\r\nafter\r\n")
        try:
            await asyncio.wait_for(reader.readuntil(b"too long"), 10)
            return "line too long"
        finally:
            writer.transport.abort()

    async def churn(self, n: int) -> str:
        for i in range(30):
            service = ("chat", "exec", "upload")[i % 3]
            reader, writer = await self.connect(service, abuser(n + i))
            if i % 2:
                await reader.read(1)
            writer.transport.abort()
        return "30 connections"

    async def slowloris(self, n: int, loggedIn: bool) -> str:
        """A frame announced and then sent a byte a second."""
        service = ("exec", "upload")[n % 2]
        if loggedIn:
            reader, writer = await self.login(service, abuser(n))
            size = 200 * 1024
        else:
            reader, writer = await self.connect(service, abuser(n))
            size = 1000
        writer.write(size.to_bytes(4, "big") + b"A")
        try:
            for _ in range(60):
                if self.stopping.is_set():
                    return "stopped"
                writer.write(b"x")
                try:
                    return await asyncio.wait_for(outcome(reader), 1.0)
                except TimeoutError:
                    continue
            return "held 60 s"
        finally:
            writer.transport.abort()

    async def sendFrame(self, n: int, data: bytes, service: str = "", login: bool = False) -> str:
        """Send ``data`` (already framed) and report how the server answered."""
        service = service or ("exec", "upload")[n % 2]
        if login:
            reader, writer = await self.login(service, abuser(n))
        else:
            reader, writer = await self.connect(service, abuser(n))
            await expectFrame(reader, b"H")
        writer.write(data)
        try:
            return await outcome(reader)
        finally:
            writer.transport.abort()

    async def silent(self, n: int) -> str:
        reader, writer = await self.connect(("exec", "upload")[n % 2], abuser(n))
        try:
            return await outcome(reader, self.rng.uniform(5, 40))
        finally:
            writer.transport.abort()

    async def plantedName(self, n: int) -> str:
        names = ["../escape", "/abs/path", ".netproto-part-x", "a/../../b", "evil-link/pwned"]
        name = names[n % len(names)]
        reader, writer = await self.login("upload", abuser(n))
        try:
            writer.write(jsonFrame(b"P", {"name": name, "size": 10}))
            try:
                await expectFrame(reader, b"K")
            except RefusedError as e:
                return f"E {e}"
            writer.write(encodeFrame(b"D", b"0123456789"))
            writer.write(jsonFrame(b"F", {"sha256": hashlib.sha256(b"0123456789").hexdigest()}))
            return f"ACCEPTED {name}"
        finally:
            writer.transport.abort()

    async def abandonedUpload(self, n: int) -> str:
        reader, writer = await self.login("upload", abuser(n))
        writer.write(jsonFrame(b"P", {"name": f"abandoned/{n}.bin", "size": MiB}))
        try:
            await expectFrame(reader, b"K")
            writer.write(encodeFrame(b"D", b"z" * (100 * 1024)))
            await writer.drain()
            return "abandoned"
        finally:
            writer.transport.abort()

    def attackTable(self) -> dict[str, Callable[[int], Awaitable[str]]]:
        deep = b'{"token": ' + b"[" * 2000 + b"]" * 2000 + b"}"
        big = b'{"argv": ["true"], "timeout": ' + b"9" * 400 + b"}"
        return {
            "chat never-reader": self.neverReader,
            "chat flood": self.chatFlood,
            "chat huge line": self.hugeLine,
            "connection churn": self.churn,
            "slowloris before login": lambda n: self.slowloris(n, False),
            "slowloris after login": lambda n: self.slowloris(n, True),
            "deep JSON in A": lambda n: self.sendFrame(n, encodeFrame(b"A", deep)),
            "bad JSON in A": lambda n: self.sendFrame(n, encodeFrame(b"A", b"{not json")),
            "huge integer": lambda n: self.sendFrame(n, encodeFrame(b"R", big), "exec", True),
            "wrong token": lambda n: self.sendFrame(n, jsonFrame(b"A", {"token": "x" * 43})),
            "oversized frame": lambda n: self.sendFrame(n, b"\x7f\xff\xff\xffA"),
            "silent connection": self.silent,
            "planted name": self.plantedName,
            "abandoned upload": self.abandonedUpload,
        }

    async def attackStream(self) -> None:
        table = self.attackTable()
        names = list(table)
        gate = asyncio.Semaphore(MAX_ATTACKS)
        n = 0
        while not self.stopping.is_set():
            await gate.acquire()
            name = self.rng.choice(names)
            task = asyncio.create_task(self.attack(name, table[name], n, gate))
            self.attackTasks.add(task)
            task.add_done_callback(self.attackTasks.discard)
            n += 31  # a new run of abuser addresses (churn uses 30)
            await self.pause(self.rng.expovariate(8.0))

    async def attack(
        self, name: str, run: Callable[[int], Awaitable[str]], n: int, gate: asyncio.Semaphore
    ) -> None:
        try:
            result = await asyncio.wait_for(run(n), 90)
        except RefusedError as e:
            result = f"E {e}"
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
            result = type(e).__name__
        except TimeoutError:
            result = "no answer in 90 s"
        finally:
            gate.release()
        self.attacks[f"{name}: {result}"] += 1

    # -- observing ------------------------------------------------------------------------

    def readLog(self) -> list[dict[str, int]]:
        """Account for the server's new log lines; the status lines among them."""
        log = self.server.log
        end = len(log)
        found = []
        self.logTail.extend(log[:end])
        for line in log[:end]:
            self.logBytes += len(line)
            if "#error]" in line or "#critical]" in line or "Traceback" in line:
                self.logErrors += 1
            if STATUS_PREFIX in line:
                rest = line.split(STATUS_PREFIX, 1)[1]
                found.append(
                    {k: int(v) for k, v in (p.split("=") for p in rest.split() if "=" in p)}
                )
        del log[:end]  # only appended to meanwhile: the first `end` lines are the ones read
        return found

    async def status(self) -> dict[str, int]:
        """Ask the server for its status line and wait for it (5 s at most)."""
        self.readLog()
        os.kill(self.server.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            found = self.readLog()
            if found:
                return found[-1]
        return {}

    def partials(self) -> tuple[int, int]:
        """Files in the upload directory: under the server's reserved prefix (partial
        uploads) and under final names."""
        partial = final = 0
        for _, _, files in os.walk(self.server.uploadDir):
            for name in files:
                if name.startswith(".netproto"):
                    partial += 1
                else:
                    final += 1
        return partial, final

    async def sample(self, label: str = "") -> dict[str, Any]:
        status = await self.status()
        children = 0
        for child in self.process.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                children += child.status() != psutil.STATUS_ZOMBIE
        partial, final = self.partials()
        latencies, self.latencies = self.latencies, []
        now = time.monotonic()
        logRate = (self.logBytes - self.lastLogBytes) / 1024 / max(now - self.lastSample, 1e-3)
        self.lastLogBytes, self.lastSample = self.logBytes, now
        row: dict[str, Any] = {
            "t": round(time.monotonic() - self.started, 1),
            "rss_mib": round(self.process.memory_info().rss / MiB, 1),
            "fds": self.process.num_fds(),
            "threads": self.process.num_threads(),
            "children": children,
            "partial_files": partial,
            "stored_files": final,
            "delayed_calls": status.get("delayed_calls"),
            "connections": sum(v for k, v in status.items() if k.startswith("conn_")),
            "log_mib": round(self.logBytes / MiB, 2),
            "log_kib_s": round(logRate, 1),
            "log_errors": self.logErrors,
            "probe_max_ms": round(max(latencies) * 1000) if latencies else None,
            "attacks_running": len(self.attackTasks),
        }
        if label:
            row["label"] = label
        self.samples.append(row)
        print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
        return row

    async def sampler(self) -> None:
        while not self.stopping.is_set():
            await self.sample()
            if self.server.proc.poll() is not None:
                self.readLog()
                print("the server died; its last log lines:\n" + "".join(self.logTail))
                self.died = True
                self.stopping.set()
                return
            await self.pause(self.sampleEvery)

    # -- the run ----------------------------------------------------------------------------

    async def run(self) -> None:
        # SIGUSR1 ends a server that has not yet installed its handler (it does
        # once the reactor runs, then logs "ready").
        deadline = time.monotonic() + 60
        while not any("netproto: ready" in line for line in self.server.log):
            if time.monotonic() > deadline:
                raise SystemExit("soak: the server did not log 'netproto: ready'")
            await asyncio.sleep(0.05)
        self.outside.mkdir()
        self.server.uploadDir.mkdir(parents=True, exist_ok=True)
        (self.server.uploadDir / "evil-link").symlink_to(self.outside)
        baseline = await self.sample("start")
        tasks = [
            asyncio.create_task(self.sampler()),
            asyncio.create_task(self.attackStream()),
            asyncio.create_task(self.chatPair()),
            asyncio.create_task(self.honestLoop("exec", self.execStep)),
            asyncio.create_task(self.honestLoop("upload", self.uploadStep)),
            asyncio.create_task(self.honestLoop("probe", self.probeStep)),
        ]
        await self.pause(self.seconds)
        self.stopping.set()
        await asyncio.gather(*tasks)
        if self.died:
            return
        for task in list(self.attackTasks):
            task.cancel()
        await asyncio.gather(*self.attackTasks, return_exceptions=True)
        for name in list(self.connections):
            await self.dropConnection(name)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            settled = (await self.status()).get("delayed_calls", 1 << 30)
            if self.process.num_fds() <= baseline["fds"] and settled <= (
                baseline["delayed_calls"] or 0
            ):
                break
            await asyncio.sleep(1)
        await self.sample("after")

    def summary(self) -> dict[str, Any]:
        series = [k for k in self.samples[0] if k not in ("t", "label")]
        table = {}
        for key in series:
            values = [s[key] for s in self.samples if s.get(key) is not None]
            if values:
                table[key] = {"first": values[0], "last": values[-1], "max": max(values)}
        outside = sorted(str(p) for p in self.outside.rglob("*"))
        return {
            "seconds": self.seconds,
            "server_died": self.died,
            "series": table,
            "honest": dict(sorted(self.honest.items())),
            "honest_errors": dict(self.honestErrors.most_common(20)),
            "attacks": dict(sorted(self.attacks.items())),
            "files_outside_upload_dir": outside,
        }


def report(summary: dict[str, Any]) -> str:
    lines = [
        f"soak: {summary['seconds']:g} s",
        "",
        f"{'series':16} {'first':>8} {'last':>8} {'max':>8}",
    ]
    for key, row in summary["series"].items():
        lines.append(f"{key:16} {row['first']:>8} {row['last']:>8} {row['max']:>8}")
    lines += ["", "honest traffic:"]
    lines += [f"  {k:20} {v}" for k, v in summary["honest"].items()]
    lines += [f"  error: {k} (x{v})" for k, v in summary["honest_errors"].items()]
    lines += ["", "attacks (outcome: count):"]
    lines += [f"  {k:60} {v}" for k, v in summary["attacks"].items()]
    outside = summary["files_outside_upload_dir"]
    lines += ["", f"files written outside the upload directory: {len(outside)} {outside}"]
    return "\n".join(lines)


def plot(samples: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [
        ("rss_mib", "RSS (MiB)"),
        ("fds", "open fds"),
        ("connections", "open connections"),
        ("delayed_calls", "delayed calls"),
        ("threads", "threads"),
        ("children", "child processes"),
        ("partial_files", "partial uploads on disk"),
        ("log_kib_s", "log written (KiB/s)"),
        ("probe_max_ms", "worst honest chat probe (ms)"),
    ]
    fig, axes = plt.subplots(3, 3, figsize=(12, 8), sharex=True)
    for ax, (key, title) in zip(axes.flat, keys, strict=True):
        points = [(s["t"], s[key]) for s in samples if s.get(key) is not None]
        if points:
            ax.plot(*zip(*points, strict=True), "o-", markersize=2)
        ax.set_title(title, fontsize=9)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("seconds")
    fig.suptitle("netproto soak: honest traffic and a random stream of attacks")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--plot", type=Path, default=Path("docs/_static/soak.png"))
    parser.add_argument("--no-plot", action="store_true", help="no plot (needs matplotlib)")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(CHECKOUT), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    with netproto() as server:
        soak = Soak(server, args.seconds, args.sample, args.seed)
        asyncio.run(soak.run())
    summary = soak.summary()
    if soak.died:
        raise SystemExit("soak: the server died (its log is above)")
    text = report(summary)
    print("\n" + text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(
        json.dumps({"summary": summary, "samples": soak.samples}, indent=1) + "\n"
    )
    (args.out / "soak.txt").write_text(text + "\n")
    if not args.no_plot:
        plot(soak.samples, args.plot)


if __name__ == "__main__":
    main()
