"""Attacks on exec: fork bombs, many commands at once, and the server killed under them.

Each test states the attack, the behaviour expected and the measure, taken from
outside (:mod:`tests.adversarial.outside`): the processes below the server and
their sessions, read with psutil, and what honest clients get.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path

import psutil
import pytest

from netproto.auth import writeUser
from tests.adversarial.outside import ABUSER, HONEST, Target, connectFrom, isGuardian
from tests.adversarial.probes import alive, framedClient, runCommand
from tests.support import BlockingFramed, waitUntil

pytestmark = pytest.mark.e2e

Serve = Callable[..., AbstractContextManager[Target]]

#: The script of the commands the kill tests leave running: a shell, two
#: background children and, where the server can follow it, one that left the
#: command's process group for a session of its own.
TREE = "sleep 300 & sleep 300 & {escape}wait"
ESCAPE = "setsid sleep 300 >/dev/null 2>&1 & "


def guardianOf(target: Target) -> psutil.Process:
    """The server's guardian process (a child of the server)."""
    found = [p for p in target.process.children() if isGuardian(p)]
    assert len(found) == 1, f"expected one guardian, found {found}"
    return found[0]


def inSession(sid: int) -> list[psutil.Process]:
    """The live processes of session ``sid`` (a command's, wherever they were reparented)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (OSError, psutil.NoSuchProcess):
            continue
    return found


def usesCgroups(target: Target) -> bool:
    return "a pids cgroup per command" in target.twistd.waitLog("exec: commands run in")


@pytest.fixture(params=["cgroup", "no-cgroup"])
def confinement(request: pytest.FixtureRequest) -> tuple[str, ...]:
    """The server's options: a pids cgroup per command where the machine offers
    it, or, with ``--exec-no-cgroups``, recorded process groups only."""
    return () if request.param == "cgroup" else ("--exec-no-cgroups",)


def startTrees(
    target: Target, count: int, escape: bool
) -> tuple[list[BlockingFramed], list[psutil.Process]]:
    """``count`` honest clients each running :data:`TREE`; the clients and every
    process of the commands once all have started."""
    script = TREE.format(escape=ESCAPE if escape else "")
    clients = []
    for _ in range(count):
        client = framedClient(target, "exec")
        client.sendJSON(b"R", {"shell": script})
        client.recvJSON(b"K")
        clients.append(client)
    perCommand = 4 if escape else 3
    waitUntil(lambda: len(target.descendants()) >= count * perCommand, timeout=30)
    return clients, target.descendants()


def killServer(target: Target) -> None:
    """``SIGKILL`` to twistd alone. Not ``Twistd.stop``: its log reader waits for
    end of file on twistd's output, which the guardian (its stderr) holds
    until it has done its work, or forever if it is suspended."""
    os.kill(target.twistd.proc.pid, signal.SIGKILL)
    assert target.twistd.proc.wait(30) == -signal.SIGKILL


def waitAllGone(procs: list[psutil.Process], timeout: float = 30) -> None:
    waitUntil(lambda: not any(alive(p) for p in procs), timeout=timeout)


@pytest.fixture
def leftovers() -> Iterator[list[psutil.Process]]:
    """Processes a test started through the server: killed at the end if a
    failing test left them (by process, not by pid)."""
    procs: list[psutil.Process] = []
    yield procs
    for proc in procs:
        if alive(proc):
            proc.kill()


# -- the server killed with commands running ---------------------------------------------


@pytest.mark.slow
def test_sigkill_of_the_server_ends_every_command(
    netproto: Serve, confinement: tuple[str, ...], leftovers: list[psutil.Process]
) -> None:
    """Attack: ``SIGKILL`` of twistd (a crash, the OOM killer) while three
    commands run, each a shell with background children (and, with cgroups,
    one child that left for a session of its own with ``setsid``).

    Expected: every one of those processes is ended, without a restart: the
    guardian sees the server gone and ends them (TERM, then KILL after the
    grace). Before, they all kept running, orphaned.

    Measure: each process (by psutil handle, so a reused pid does not count),
    until none is alive."""
    with netproto("--exec-kill-grace", "1", *confinement) as target:
        escape = usesCgroups(target)
        if confinement == () and not escape:
            pytest.skip("no writable cgroup v1 pids hierarchy on this machine")
        guardians = [p for p in target.process.children() if isGuardian(p)]
        clients, procs = startTrees(target, 3, escape)
        leftovers.extend(procs)
        killServer(target)
        waitAllGone(procs)
        waitUntil(lambda: not any(alive(g) for g in guardians), timeout=10)
        for client in clients:
            client.close()


@pytest.mark.slow
def test_sigterm_of_the_server_ends_every_command(
    netproto: Serve, leftovers: list[psutil.Process]
) -> None:
    """Attack (or an operator): ``SIGTERM`` of twistd with commands running.

    Expected: a clean shutdown ends every command's processes before the server
    exits, and the guardian exits too, with nothing left to end.

    Measure: the command processes and the guardian, by psutil handle."""
    with netproto("--exec-kill-grace", "1") as target:
        guardian = guardianOf(target)
        clients, procs = startTrees(target, 3, escape=False)
        leftovers.extend(procs)
        assert target.twistd.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
        assert not any(alive(p) for p in procs)
        waitUntil(lambda: not alive(guardian), timeout=10)
        for client in clients:
            client.close()


@pytest.mark.slow
def test_a_restart_ends_what_a_killed_server_and_guardian_left(
    netproto: Serve, confinement: tuple[str, ...], leftovers: list[psutil.Process]
) -> None:
    """Attack: the server and its guardian both killed (``SIGKILL`` to both, as
    a machine-wide kill would), commands running; then the server started
    again on the same data directory.

    Expected: the new server (its guardian) finds what the dead one left (its
    cgroup directory, or its record of process groups in ``DATA_DIR``) and ends
    it; a process with a reused pid would be spared (see the unit tests).

    Measure: the old commands' processes, until none is alive; the new server
    still runs commands."""
    with netproto("--exec-kill-grace", "1", *confinement) as target:
        clients, procs = startTrees(target, 2, escape=False)
        leftovers.extend(procs)
        guardian = guardianOf(target)
        leftovers.append(guardian)
        guardian.suspend()  # so that it cannot act on the server's death
        killServer(target)
        guardian.kill()
        waitUntil(lambda: not alive(guardian))
        assert all(alive(p) for p in procs)
        for client in clients:
            client.close()
    with netproto("--exec-kill-grace", "1", *confinement) as target:
        waitAllGone(procs)
        client = framedClient(target, "exec")
        assert runCommand(client, ["echo", "again"])[0] == b"again\n"
        client.close()


# -- one command forking without end ------------------------------------------------------

#: The bound the fork-bomb test gives the server (``--exec-max-tasks``).
BOMB_BOUND = 40
#: The bomb: an inner shell forks 1,000 sleeps (a non-interactive shell exits at
#: its first failed fork), then the command says ``done`` and stays, without a
#: fork of its own, until its client goes.
BOMB = "sh -c 'for i in $(seq 1000); do sleep 30 >/dev/null 2>&1 & done'; echo done; exec sleep 30"


@pytest.mark.slow
def test_a_fork_bomb_is_bounded(netproto: Serve, leftovers: list[psutil.Process]) -> None:
    """Attack: from the abuser's address, one command forks 1,000 sleeps
    (:data:`BOMB`), says ``done`` once every fork has been tried, and waits.

    Expected: with ``--exec-max-tasks 40`` the command never has more than 40
    processes: the shell's forks past the bound fail ("Cannot fork" on its
    stderr); an honest client's command meanwhile runs as usual; when the
    abuser goes, nothing of the bomb is left. Before, all 1,000 ran.

    Measure: the processes of the bomb's session once it says ``done`` (the
    sleeps outlive the loop, so that is its peak), the bomb's stderr, the
    honest command's output, and the session empty after."""
    with netproto("--exec-max-tasks", str(BOMB_BOUND)) as target:
        if "no bound" in target.twistd.waitLog("exec: commands run in"):
            pytest.skip("this machine offers root no per-command bound (no pids cgroup)")
        bomb = BlockingFramed(connectFrom(ABUSER, target.port("exec"), timeout=60))
        with ExitStack() as stack:
            stack.callback(bomb.close)
            bomb.login(target.token, "exec")
            bomb.sendJSON(b"R", {"shell": BOMB})
            sid = bomb.recvJSON(b"K")["pid"]
            stderr = b""
            while (frame := bomb.recv()) != (b"1", b"done\n"):
                assert frame is not None and frame[0] == b"2", frame
                stderr += frame[1]
            members = inSession(sid)
            leftovers.extend(members)
            honest = framedClient(target, "exec", HONEST)
            stack.callback(honest.close)
            assert runCommand(honest, ["echo", "still here"])[0] == b"still here\n"
        assert 1 < len(members) <= BOMB_BOUND
        assert b"fork" in stderr.lower()
        waitUntil(lambda: not inSession(sid), timeout=30)


# -- many commands at once ------------------------------------------------------------------

#: ``--exec-max-procs-per-user`` in the test: a small cap reached with few connections.
PER_USER = 4


def passwordClient(target: Target, source: str, user: str) -> BlockingFramed:
    client = BlockingFramed(connectFrom(source, target.port("exec")))
    client.recvJSON(b"H")
    client.sendJSON(b"A", {"user": user, "password": f"{user}-secret"})
    assert client.recvJSON(b"K") == {"user": user}
    return client


@pytest.mark.slow
def test_an_abusers_many_commands_stop_at_the_per_user_cap_and_others_run(
    netproto: Serve, tmp_path: Path, leftovers: list[psutil.Process]
) -> None:
    """Attack: one user, from the abuser's address, starts commands on eight
    connections at once (``--exec-max-procs-per-user 4``).

    Expected: four run, the other four get ``E busy`` and their connections
    stay open; another user still runs a command at once; when the abuser's
    connections close, their commands end.

    Measure: the answers, the processes below the server (at most the cap of
    the abuser's plus the honest one's), and none of them left after."""
    users = tmp_path / "users"
    for name in ("mallory", "alice"):
        writeUser(users, name, f"{name}-secret")
    with netproto("--users", str(users), "--exec-max-procs-per-user", str(PER_USER)) as target:
        with ExitStack() as stack:
            answers = []
            for _ in range(2 * PER_USER):
                client = passwordClient(target, ABUSER, "mallory")
                stack.callback(client.close)
                client.sendJSON(b"R", {"argv": ["sleep", "300"]})
                frame = client.recv()
                assert frame is not None
                answers.append((frame[0], json.loads(frame[1])))
            assert sorted(kind for kind, _ in answers) == [b"E"] * PER_USER + [b"K"] * PER_USER
            assert {body["code"] for kind, body in answers if kind == b"E"} == {"busy"}
            running = target.descendants()
            leftovers.extend(running)
            assert len(running) == PER_USER
            honest = passwordClient(target, HONEST, "alice")
            stack.callback(honest.close)
            assert runCommand(honest, ["echo", "alice"])[0] == b"alice\n"
        waitAllGone(running)
