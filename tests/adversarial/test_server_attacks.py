"""Attacks on the whole server rather than one service: descriptors, signals, churn.

Each test states the attack, the behaviour expected and the measure, taken
from outside (:mod:`tests.adversarial.outside`) and, for what only the server
knows (its pending timers), from its ``SIGUSR1`` status line
(:mod:`netproto.status`).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import shutil
import signal
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path

import psutil
import pytest

from bench.soak import jsonFrame, readFrame
from netproto.codec import encodeFrame
from netproto.logsummary import DEFAULT_BURST
from netproto.upload.names import RESERVED_PREFIX
from tests.adversarial.outside import (
    ABUSER,
    HONEST,
    Target,
    abuserHost,
    askStatus,
    closedWithin,
    connectFrom,
    raiseOwnFileLimit,
    readUntil,
    serving,
)
from tests.adversarial.probes import alive, framedClient, runCommand
from tests.support import TWISTD, BlockingFramed, runTwistd, waitUntil

pytestmark = pytest.mark.e2e

MiB = 1 << 20


# -- honest clients -----------------------------------------------------------------


def startUpload(client: BlockingFramed, name: str, size: int) -> None:
    """``P`` for a new file, waited for ``K ready`` (offset 0)."""
    client.sendJSON(b"P", {"name": name, "size": size})
    assert client.recvJSON(b"K") == {"offset": 0}


def storeFile(client: BlockingFramed, name: str, data: bytes) -> str:
    """Upload ``data`` as ``name`` and wait until it is stored; its SHA-256."""
    startUpload(client, name, len(data))
    client.send(b"D", data)
    digest = hashlib.sha256(data).hexdigest()
    client.sendJSON(b"F", {"sha256": digest})
    stored = client.recvJSON(b"K")
    assert stored["sha256"] == digest, stored
    return digest


def finalNames(uploadDir: Path) -> dict[str, str]:
    """Every file under a final name in the upload directory (the server's own
    ``.netproto*`` files left out), with its SHA-256."""
    found = {}
    for path in uploadDir.rglob("*"):
        rel = path.relative_to(uploadDir)
        if path.is_file() and not any(p.startswith(RESERVED_PREFIX) for p in rel.parts):
            found[rel.as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


# -- descriptors ----------------------------------------------------------------------

#: The open-file limit the server runs under in the exhaustion test: small, so the
#: test reaches it with few connections.
FD_LIMIT = 256


def test_fdExhaustionFromManyAddressesIsSurvived(tmp_path: Path) -> None:
    """Attack: with the server under ``prlimit --nofile=256:256``, abusers from 50
    addresses open connections to chat, exec and upload until the server cannot
    accept any more (``EMFILE``).

    Expected: netproto cannot raise its own limit past the hard limit; at the limit
    a new connection is closed at once (Twisted's reserved descriptor) rather than
    left hanging, the server neither crashes nor spins, and once the abusers go
    it serves honest chat, exec and upload clients again.

    Measure: the server's fd limit and count, whether it is alive, its CPU time
    while held at the limit, a probe's fate, the lines it logs about refused
    connections (summarised), and fds back to the baseline."""
    prlimit = shutil.which("prlimit")
    assert prlimit, "prlimit (util-linux) is needed"
    raiseOwnFileLimit()
    runner = (prlimit, f"--nofile={FD_LIMIT}:{FD_LIMIT}", TWISTD, "-n", "--pidfile=", "--logfile=-")
    with runTwistd(tmp_path, runner=runner) as twistd:
        target = Target(twistd, tmp_path / "home")
        assert target.process.rlimit(psutil.RLIMIT_NOFILE) == (FD_LIMIT, FD_LIMIT)
        base = target.fds()
        services = ("chat", "exec", "upload")
        with ExitStack() as held:
            for n in range(FD_LIMIT + 30):
                sock = connectFrom(abuserHost(n % 50), target.port(services[n % 3]))
                held.callback(sock.close)
            twistd.waitLog(r"EMFILE")
            assert target.fds() <= FD_LIMIT
            probe = connectFrom(HONEST, target.port("chat"))
            assert closedWithin(probe, 10), "a connection past the limit was left hanging"
            probe.close()
            cpuBefore = sum(target.process.cpu_times()[:2])
            wallBefore = time.monotonic()
            for n in range(20):
                with connectFrom(ABUSER, target.port(services[n % 3])) as extra:
                    closedWithin(extra, 10)
            time.sleep(1.0)  # a window to measure CPU in, not a synchronisation
            cpu = sum(target.process.cpu_times()[:2]) - cpuBefore
            assert cpu < 0.5 * (time.monotonic() - wallBefore), f"spinning: {cpu:.2f} s of CPU"
            assert twistd.proc.poll() is None
            # Twisted logs three lines for each connection it refuses at the limit
            # (more than 50 here): summarised, at most a burst of each per port.
            emfile = [line for line in twistd.lines if "EMFILE" in line]
            assert 0 < len(emfile) <= 3 * DEFAULT_BURST * len(services), twistd.log
        target.waitFds(base, timeout=30)
        target.chatLatency()
        execClient = framedClient(target, "exec")
        out, end = runCommand(execClient, ["echo", "back"])
        execClient.close()
        assert (out, end["code"]) == (b"back\n", 0)
        uploader = framedClient(target, "upload")
        storeFile(uploader, "after-exhaustion", b"x" * 1000)
        uploader.close()
        assert finalNames(target.uploadDir) == {
            "after-exhaustion": hashlib.sha256(b"x" * 1000).hexdigest()
        }


# -- signals under load ---------------------------------------------------------------


class MixedLoad:
    """Honest traffic on every service at once, as a server has it when a signal comes.

    Held open: chat members, commands that run (one with children of its own, one
    stopped by the backpressure of a client that does not read), and an upload
    sent halfway. Running: a thread that talks in the chat, runs commands and
    stores small files until the server goes away.
    """

    #: The name of the upload that never finishes.
    HALF = "half/upload.bin"

    def __init__(self, target: Target, stack: ExitStack) -> None:
        self.target = target
        #: name -> SHA-256 of every upload begun: what may appear under a final name
        self.intended: dict[str, str] = {}
        #: names the server answered K stored for: what must be there
        self.stored: set[str] = set()
        self.rounds = 0
        self._stop = False
        self.chats = [connectFrom(HONEST, target.port("chat")) for _ in range(5)]
        for sock in self.chats:
            stack.callback(sock.close)
            readUntil(sock, b"/help")
        self._clients: list[BlockingFramed] = []
        for argv in (
            ["sleep", "60"],
            ["sh", "-c", "sleep 60 & sleep 60 & wait"],
            ["yes", "never read"],
        ):
            client = self._client("exec")
            client.sendJSON(b"R", {"argv": argv})
            client.recvJSON(b"K")
        waitUntil(lambda: len(target.descendants()) >= 5)
        self.commands = target.descendants()
        stack.callback(self._endCommands)
        half = self._client("upload")
        big = random.randbytes(8 * MiB)
        self.intended[self.HALF] = hashlib.sha256(big).hexdigest()
        startUpload(half, self.HALF, len(big))
        half.send(b"D", big[: 1 * MiB])
        self._thread = threading.Thread(target=self._talk, daemon=True)
        self._thread.start()
        stack.callback(self.stop)
        waitUntil(lambda: self.rounds >= 3, timeout=30)

    def _client(self, service: str) -> BlockingFramed:
        client = framedClient(self.target, service)
        self._clients.append(client)
        return client

    def _talk(self) -> None:
        try:
            talker = self.chats[0]
            runner, uploader = self._client("exec"), self._client("upload")
            while not self._stop:
                n = self.rounds
                talker.sendall(f"round {n}\r\n".encode())
                out, _ = runCommand(runner, ["echo", str(n)])
                assert out == f"{n}\n".encode()
                data = random.randbytes(random.randrange(1, 64 * 1024))
                name = f"small/{n}.bin"
                self.intended[name] = hashlib.sha256(data).hexdigest()
                storeFile(uploader, name, data)
                self.stored.add(name)
                self.rounds = n + 1
        except (OSError, AssertionError):
            return  # the server went away, as it was meant to

    def stop(self) -> None:
        self._stop = True
        self._thread.join(30)
        assert not self._thread.is_alive()
        for client in self._clients:
            client.close()

    def _endCommands(self) -> None:
        """Kill what is left of the commands this test started (by process, not by pid)."""
        for proc in self.commands:
            if alive(proc):
                proc.kill()

    def checkUploads(self, uploadDir: Path, extra: dict[str, str] | None = None) -> None:
        """Every file under a final name is whole and verified (the content sent for
        that name), every ``K stored`` one is there, and the half upload is not."""
        found = finalNames(uploadDir)
        expected = {**self.intended, **(extra or {})}
        assert self.HALF not in found
        assert {name: expected.get(name) for name in found} == found
        assert self.stored <= found.keys()


@pytest.mark.slow
def test_sigtermUnderMixedLoadExitsCleanly(tmp_path: Path) -> None:
    """Attack (or an operator): SIGTERM while chat members talk, commands run (with
    children, and one blocked on a client that does not read), small files are
    being stored and a large upload is half sent.

    Expected: twistd shuts down cleanly (exits 0, or by SIGTERM itself as Twisted
    >= 23 does after its clean shutdown), closes every chat member, ends every
    command with its children, and leaves under a final name only files stored
    whole and verified; the half-sent upload appears nowhere under its name.

    Measure: the exit status and log, the chat sockets, the command processes,
    and the files in the upload directory."""
    with ExitStack() as stack:
        target = stack.enter_context(serving(tmp_path))
        load = MixedLoad(target, stack)
        status = target.twistd.stop(signal.SIGTERM, timeout=30)
        assert status in (0, -signal.SIGTERM), status
        assert "Server Shut Down." in target.twistd.log
        assert all(closedWithin(sock, 10) for sock in load.chats)
        waitUntil(lambda: not any(alive(p) for p in load.commands), timeout=20)
        load.stop()
        assert load.rounds >= 3
        load.checkUploads(target.uploadDir)


def test_sigkillUnderMixedLoadThenRestart(tmp_path: Path) -> None:
    """Attack: SIGKILL (a crash, the OOM killer) under the same mixed load, then a
    restart on the same data directory.

    Expected: the restarted server serves chat, exec and upload again; no
    half-written file appears under a final name, neither the half-sent upload
    nor any other, and every file the killed server answered ``K stored`` for is
    there, whole. (What becomes of the killed server's commands is exec's own
    test.)

    Measure: the restarted server's answers, and the files in the upload
    directory."""
    with ExitStack() as stack:
        killed = stack.enter_context(serving(tmp_path))
        load = MixedLoad(killed, stack)
        assert killed.twistd.stop(signal.SIGKILL) == -signal.SIGKILL
        load.stop()
        with serving(tmp_path) as target:
            target.chatLatency()
            runner = framedClient(target, "exec")
            assert runCommand(runner, ["echo", "again"])[0] == b"again\n"
            runner.close()
            uploader = framedClient(target, "upload")
            digest = storeFile(uploader, "after-restart", b"y" * 5000)
            uploader.close()
            load.checkUploads(target.uploadDir, {"after-restart": digest})


# -- churn ----------------------------------------------------------------------------

#: Connections the churn test opens and closes, and how many at once.
LIFECYCLES = 10_000
AT_ONCE = 64
#: RSS the server may keep after the churn beyond what it had after a warm-up of
#: the same traffic: allocator slack and interned strings, not a per-connection leak
#: (10,000 leaked connections of even 2 KiB each would be 20 MiB).
RSS_SLACK = 12 * MiB


async def lifecycle(n: int, ports: dict[str, int], token: str) -> None:
    """Connection ``n`` of the churn: a service, an abuser address and a way to
    behave, all chosen by ``n``; then closed, half the time with a reset."""
    service = ("chat", "exec", "upload")[n % 3]
    how = n // 3 % 4
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", ports[service], local_addr=(abuserHost(n % 200), 0)
    )
    try:
        if service == "chat" and how:
            await reader.readuntil(b"/help")
            writer.write(b"hello from the churn\r\n" if how == 2 else b"/who\r\n")
            if how == 3:
                await reader.readuntil(b"***")
        elif how:
            await readFrame(reader)  # H
            if how == 2:
                writer.write(jsonFrame(b"A", {"token": token}))
                assert (await readFrame(reader))[0] == b"K"
            elif how == 3:
                writer.write(encodeFrame(b"A", b"{not json"))
                assert (await readFrame(reader))[0] == b"E"
    finally:
        if n % 2:
            writer.transport.abort()
        else:
            writer.close()


async def churn(first: int, count: int, ports: dict[str, int], token: str) -> None:
    """Lifecycles ``first`` .. ``first + count - 1``, :data:`AT_ONCE` at a time."""
    gate = asyncio.Semaphore(AT_ONCE)

    async def one(n: int) -> None:
        async with gate:
            await asyncio.wait_for(lifecycle(n, ports, token), 30)

    await asyncio.gather(*(one(n) for n in range(first, first + count)))


@pytest.mark.slow
def test_tenThousandLifecyclesLeaveNothingBehind(
    netproto: Callable[..., AbstractContextManager[Target]],
) -> None:
    """Attack: 10,000 connections opened and closed, 64 at once, from 200 abuser
    addresses, over chat, exec and upload: some closed at once, some after the
    greeting, some after a chat line, ``/who``, a login or a malformed frame,
    half of them with a reset.

    Expected: the server ends where it started: every connection's descriptor,
    timer and buffer is released.

    Measure: open fds and (from the SIGUSR1 status line) pending delayed calls
    back to their baseline after a warm-up of the same traffic; RSS growth
    under :data:`RSS_SLACK`; an honest chat probe answers afterwards."""
    raiseOwnFileLimit()
    with netproto() as target:
        ports = {name: target.port(name) for name in ("chat", "exec", "upload")}
        base = target.fds()
        asyncio.run(churn(0, 600, ports, target.token))
        target.waitFds(base)
        idle = statusWhen(target, lambda s: s["conn_chat"] == s["conn_exec"] == 0)
        rss = target.rss()
        started = time.monotonic()
        asyncio.run(churn(600, LIFECYCLES, ports, target.token))
        took = time.monotonic() - started
        fds = target.waitFds(base, timeout=30)
        after = statusWhen(target, lambda s: s["delayed_calls"] <= idle["delayed_calls"])
        grown = target.rss() - rss
        print(
            f"\n{LIFECYCLES} lifecycles in {took:.1f} s; fds {base} -> {fds}; delayed calls"
            f" {idle['delayed_calls']} -> {after['delayed_calls']}; RSS {rss / MiB:.1f} MiB,"
            f" {grown / MiB:+.1f} MiB"
        )
        assert after["conn_chat"] == after["conn_exec"] == after["conn_upload"] == 0
        assert grown < RSS_SLACK
        target.chatLatency()


def statusWhen(
    target: Target, predicate: Callable[[dict[str, int]], bool], timeout: float = 15.0
) -> dict[str, int]:
    """The first status line whose fields satisfy ``predicate``. The default
    deadline is longer than the log summaries' interval (10 s) and shorter than
    the grace period of a framed connection (30 s): a timer leaked per
    connection cannot expire on its own before it."""

    def ask() -> dict[str, int]:
        fields = askStatus(target)
        return fields if predicate(fields) else {}

    return waitUntil(ask, timeout)
