"""exec over real loopback: an in-process server and the bundled client's
FramedClient, real commands, real process groups.

Every test runs twice (:func:`exitWatch`): with each command's exit watched
through a pidfd, and polled (where there are no pidfds), so that both ways are
covered.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest
import pytest_twisted
from twisted.internet.interfaces import ITCPTransport

from netproto.client.framed import FramedClient, ServerError
from netproto.exec import spawn as _spawn
from netproto.framing import MAX_READ_SIZE
from tests.execkit import buffered, connections, finish, run, serving, stalledAt, started
from tests.support import eventually, waitDeferred

MiB = 1 << 20
PY = sys.executable


@pytest.fixture(autouse=True, params=["pidfd", "polling"])
def exitWatch(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Watch the exit of commands (and of the guardian) one way: pidfds, or none."""
    if request.param == "polling":
        monkeypatch.setattr(_spawn, "pidfdOpen", lambda pid: None)
    else:
        fd = _spawn.pidfdOpen(os.getpid())
        if fd is None:
            pytest.skip("no pidfds here")
        os.close(fd)
    name: str = request.param
    return name


def groupGone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


# -- commands, output, exit --------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_argv_and_shell_commands_run_and_the_connection_serves_on(tmp_path: Path) -> None:
    """An argv command and a shell command run one after the other on one
    connection: K, their output, X with the code."""
    async with serving(tmp_path) as server:
        client = await server.connect()
        first = await run(client, {"argv": ["echo", "hello", "world"]})
        assert first.kinds[-1] == b"X" and first.out == b"hello world\n"
        assert first.exit == {"code": 0, "signal": None, "timed_out": False}
        second = await run(client, {"shell": "echo $((6*7)) | tr 4 X; pwd"})
        assert second.out == f"X2\n{tmp_path}\n".encode()
        assert second.pid != first.pid
        client.close()


@pytest_twisted.ensureDeferred
async def test_stdout_and_stderr_arrive_apart_with_every_byte_value(tmp_path: Path) -> None:
    """A command writing binary (bytes 0-255) alternately to stdout and stderr:
    each stream arrives on its own frames, byte for byte."""
    script = (
        "import os\n"
        "a = bytes(range(256)) * 64\n"
        "b = bytes(reversed(range(256))) * 64\n"
        "for _ in range(100):\n"
        "    os.write(1, a); os.write(2, b)\n"
    )
    async with serving(tmp_path) as server:
        client = await server.connect()
        result = await run(client, {"argv": [PY, "-c", script]})
        assert result.exit["code"] == 0, result.err[-500:]
        assert result.out == bytes(range(256)) * 64 * 100
        assert result.err == bytes(reversed(range(256))) * 64 * 100
        client.close()


@pytest_twisted.ensureDeferred
async def test_exit_codes_and_signals_are_reported(tmp_path: Path) -> None:
    """X carries the exit code, or the name of the signal that ended the command."""
    async with serving(tmp_path) as server:
        client = await server.connect()
        assert (await run(client, {"shell": "exit 42"})).exit["code"] == 42
        killed = await run(client, {"shell": "kill -KILL $$"})
        assert killed.exit == {"code": None, "signal": "KILL", "timed_out": False}
        hup = await run(client, {"argv": ["sh", "-c", "kill -HUP $$"]})
        assert hup.exit["signal"] == "HUP"
        client.close()


@pytest_twisted.ensureDeferred
async def test_stdin_round_trips_through_cat(tmp_path: Path) -> None:
    """Binary stdin sent as 0 frames, closed with C, comes back through cat intact."""
    data = os.urandom(3 * MiB + 17)
    async with serving(tmp_path) as server:
        client = await server.connect()
        result = await run(client, {"argv": ["cat"]}, stdin=data)
        assert result.out == data
        assert result.exit["code"] == 0
        client.close()


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_stdin_of_50_MiB_is_counted_by_wc(tmp_path: Path) -> None:
    """50 MiB of stdin reaches the command whole: wc -c counts every byte."""
    async with serving(tmp_path) as server:
        client = await server.connect()
        result = await run(client, {"argv": ["wc", "-c"]}, stdin=b"\x5a" * (50 * MiB))
        assert result.out.strip() == str(50 * MiB).encode()
        client.close()


@pytest_twisted.ensureDeferred
async def test_a_command_without_stdin_sees_end_of_file(tmp_path: Path) -> None:
    """Without "stdin": true the command's stdin is at its end at once."""
    async with serving(tmp_path) as server:
        client = await server.connect()
        result = await run(client, {"argv": ["wc", "-c"]})
        assert result.out.strip() == b"0"
        client.close()


# -- signals, timeouts, ending the tree ------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_S_INT_interrupts_a_running_sleep(tmp_path: Path) -> None:
    """S INT reaches a running command (its whole process group) and X names INT."""
    async with serving(tmp_path) as server:
        client = await server.connect()
        pid = await started(client, {"argv": ["sleep", "60"]})
        client.sendJSON(b"S", {"signal": "INT"})
        result = await finish(client, pid, timeout=10)
        assert result.exit == {"code": None, "signal": "INT", "timed_out": False}
        client.close()


@pytest_twisted.ensureDeferred
async def test_timeout_ends_the_command(tmp_path: Path) -> None:
    """Past its timeout the command gets SIGTERM and X says timed_out; the
    server counts that one as ended by it, and not a command that ended by
    itself (whose end is not logged: a line per command costs)."""
    async with serving(tmp_path) as server:
        client = await server.connect()
        ends: list[object] = []
        for request in ({"argv": ["sleep", "60"], "timeout": 0.2}, {"argv": ["true"]}):
            pid = await started(client, request)
            transport = server.factory.commands[pid]
            ends.append((await finish(client, pid)).exit)
            await waitDeferred(transport.whenGone())
            ends.append(transport.terminating)
        assert ends == [
            {"code": None, "signal": "TERM", "timed_out": True},
            True,
            {"code": 0, "signal": None, "timed_out": False},
            False,
        ]
        client.close()


@pytest_twisted.ensureDeferred
async def test_a_command_ignoring_TERM_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    """TERM first; a group that ignores it gets KILL once --exec-kill-grace passes."""
    async with serving(tmp_path, **{"exec-timeout": 0.2, "exec-kill-grace": 0.3}) as server:
        client = await server.connect()
        result = await run(client, {"shell": "trap '' TERM; sleep 60"})
        assert result.exit == {"code": None, "signal": "KILL", "timed_out": True}
        # X may overtake the reaping of the last killed members by a moment.
        await eventually(lambda: groupGone(result.pid), timeout=5)
        await eventually(lambda: not server.factory.commands, timeout=5)
        client.close()


@pytest_twisted.ensureDeferred
async def test_background_children_end_with_their_command(tmp_path: Path) -> None:
    """A command that leaves a background child behind (its output elsewhere):
    X comes when the command ends, and the child is ended and reaped after it."""
    async with serving(tmp_path) as server:
        client = await server.connect()
        result = await run(client, {"shell": "sleep 60 >/dev/null 2>&1 & echo $!"})
        child = int(result.out)
        assert result.exit["code"] == 0
        await eventually(lambda: not psutil.pid_exists(child), timeout=10)
        await eventually(lambda: not server.factory.commands, timeout=10)
        assert groupGone(result.pid)
        client.close()


@pytest_twisted.ensureDeferred
async def test_disconnect_ends_the_whole_process_group(tmp_path: Path) -> None:
    """The client going away mid-command ends every process of the command's group."""
    async with serving(tmp_path) as server:
        client = await server.connect()
        pid = await started(client, {"shell": "sleep 60 & (sleep 60 &); echo up; wait"})
        kind, payload = await waitDeferred(client.receive())
        assert (kind, payload) == (b"1", b"up\n")
        members = [p for p in psutil.process_iter() if _sid(p.pid) == pid]
        assert len(members) >= 3
        assert client.transport is not None
        ITCPTransport(client.transport).abortConnection()
        await eventually(lambda: groupGone(pid), timeout=10)
        await eventually(lambda: not server.factory.commands, timeout=10)


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


@pytest_twisted.ensureDeferred
async def test_S_KILL_ends_a_command_whose_output_is_held_outside_its_group(
    tmp_path: Path,
) -> None:
    """What a command that escapes its group can do without cgroups: a child
    that calls setsid survives the command's end. S KILL still ends the command
    (X comes) although that child keeps the output pipe open."""
    async with serving(tmp_path, **{"exec-no-cgroups": True}) as server:
        client = await server.connect()
        pid = await started(client, {"shell": "setsid sleep 60 & echo $!; wait"})
        kind, payload = await waitDeferred(client.receive())
        escaped = int(payload)
        try:
            await eventually(lambda: _sid(escaped) == escaped)
            client.sendJSON(b"S", {"signal": "KILL"})
            result = await finish(client, pid, timeout=10)
            assert result.exit["signal"] == "KILL"
            assert psutil.pid_exists(escaped)
        finally:
            os.kill(escaped, signal.SIGKILL)
        # Orphaned to the server (its subreaper), it is reaped once it exits.
        await eventually(lambda: not psutil.pid_exists(escaped), timeout=10)
        client.close()


@pytest_twisted.ensureDeferred
async def test_server_stop_waits_until_every_command_is_gone(tmp_path: Path) -> None:
    """endAll (what shutdown waits for) fires only once every group is gone and reaped."""
    async with serving(tmp_path, **{"exec-kill-grace": 0.3}) as server:
        client = await server.connect()
        pid = await started(client, {"shell": "trap '' TERM; sleep 60 & echo ready; sleep 60"})
        assert await waitDeferred(client.receive()) == (b"1", b"ready\n")
        await waitDeferred(server.factory.endAll(), 10)
        assert groupGone(pid)
        assert not server.factory.commands
        result = await finish(client, pid)
        assert result.exit["signal"] == "KILL"
        client.close()


# -- refusals and limits -----------------------------------------------------------


async def refused(client: FramedClient, request: dict[str, Any]) -> str:
    client.sendJSON(b"R", request)
    with pytest.raises(ServerError) as info:
        await waitDeferred(client.receive())
    return info.value.code


@pytest_twisted.ensureDeferred
async def test_busy_not_found_not_allowed_leave_the_connection_usable(tmp_path: Path) -> None:
    """E busy for an R while one runs, E not-found for no such program, E
    not-allowed for the policy; each time the connection runs the next command."""
    async with serving(tmp_path, **{"exec-allow": "echo,sleep"}) as server:
        client = await server.connect()
        pid = await started(client, {"argv": ["sleep", "60"]})
        assert await refused(client, {"argv": ["echo"]}) == "busy"
        client.sendJSON(b"S", {"signal": "TERM"})
        assert (await finish(client, pid)).exit["signal"] == "TERM"
        assert await refused(client, {"argv": ["no-such-program-here"]}) == "not-found"
        assert await refused(client, {"argv": ["cat"]}) == "not-allowed"
        assert await refused(client, {"shell": "echo hi"}) == "not-allowed"
        assert (await run(client, {"argv": ["echo", "still", "here"]})).out == b"still here\n"
        client.close()


@pytest_twisted.ensureDeferred
async def test_process_limits_per_user_and_in_total(tmp_path: Path) -> None:
    """Past --exec-max-procs-per-user (and --exec-max-procs) an R gets E busy;
    once a command is gone its slot is free again."""
    async with serving(tmp_path, **{"exec-max-procs-per-user": 1}) as server:
        one, two = await server.connect(), await server.connect()
        pid = await started(one, {"argv": ["sleep", "60"]})
        assert await refused(two, {"argv": ["true"]}) == "busy"
        one.sendJSON(b"S", {"signal": "KILL"})
        await finish(one, pid)
        await eventually(lambda: not server.factory.commands)
        assert (await run(two, {"argv": ["true"]})).exit["code"] == 0
        one.close()
        two.close()
    async with serving(tmp_path, **{"exec-max-procs": 1}) as server:
        one, two = await server.connect(), await server.connect()
        pid = await started(one, {"argv": ["sleep", "60"]})
        assert await refused(two, {"argv": ["true"]}) == "busy"
        one.close()
        two.close()


# -- backpressure ----------------------------------------------------------------------


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_a_client_that_stops_reading_stops_the_command(tmp_path: Path) -> None:
    """Output backpressure: while the client reads nothing, the server holds at
    most about one send buffer and the command blocks on its pipe; nothing is
    lost once the client reads again."""
    async with serving(tmp_path) as server:
        client = await server.connect()
        total = 1 << 30
        pid = await started(client, {"argv": ["head", "-c", str(total), "/dev/zero"]})
        written = await stalledAt(pid)
        (conn,) = list(connections(server.factory))
        assert buffered(conn.transport) <= 2 * server.factory.maxFrame
        assert written < 256 * MiB  # the client's queue, socket and pipe buffers
        result = await finish(client, pid, timeout=60)
        assert len(result.out) == total and result.exit["code"] == 0
        client.close()


@pytest_twisted.ensureDeferred
async def test_a_command_that_does_not_read_stdin_stops_reading_the_client(
    tmp_path: Path,
) -> None:
    """Stdin backpressure: when the command's stdin pipe is full the server stops
    reading the client, so its buffer stays bounded whatever the client sends."""
    async with serving(tmp_path) as server:
        client = await server.connect()
        await started(client, {"argv": ["sleep", "60"], "stdin": True})
        chunk = b"\0" * (client.maxFrame - 1)
        for _ in range(80):  # 20 MiB
            client.send(b"0", chunk)
        (transport,) = server.factory.commands.values()
        writer = transport.stdinWriter
        assert writer is not None
        await eventually(lambda: writer.producerPaused, timeout=10)
        assert client.transport is not None
        await eventually(lambda: buffered(client.transport) > 10 * MiB, timeout=10)
        # What the writer may hold: its threshold, plus the rest of the one read that
        # crossed it (a read grows to MAX_READ_SIZE on a streaming connection, and all
        # of its frames are handed on), plus one frame split across reads.
        assert buffered(writer) <= writer.bufferSize + MAX_READ_SIZE + server.factory.maxFrame
        ITCPTransport(client.transport).abortConnection()
        await eventually(lambda: not server.factory.commands, timeout=10)


@pytest_twisted.ensureDeferred
async def test_a_command_that_closes_its_output_early_gets_its_X_when_it_exits(
    tmp_path: Path, exitWatch: str
) -> None:
    """Once both output pipes close, the exit is watched (through a pidfd opened
    only then, else by polling): a command that closes them and runs on still
    gets its own code in X, after it exits, and its group is gone. Its exit is
    watched the way this run of the module says."""
    async with serving(tmp_path) as server:
        client = await server.connect()
        pid = await started(client, {"shell": "exec >&- 2>&-; read x; exit 7", "stdin": True})
        transport = server.factory.commands[pid]
        await eventually(lambda: transport._watcher is not None or transport._exitTimer, 10)
        assert (transport._watcher is not None) is (exitWatch == "pidfd")
        client.send(b"0", b"go\n")
        result = await finish(client, pid)
        assert result.exit == {"code": 7, "signal": None, "timed_out": False}
        assert result.out == b"" and result.err == b""
        await eventually(lambda: groupGone(result.pid), 10)
        again = await run(client, {"argv": ["true"]})
        assert again.exit["code"] == 0
        client.close()


@pytest_twisted.ensureDeferred
async def test_the_shutdown_trigger_is_let_go_once_the_factory_has_stopped(
    tmp_path: Path,
) -> None:
    """The factory keeps its 'before shutdown' trigger between commands (cheaper
    than once per command), and drops it when it stops with nothing running."""
    async with serving(tmp_path) as server:
        client = await server.connect()
        await run(client, {"argv": ["true"]})
        assert server.factory._trigger is not None
        client.close()
    await eventually(lambda: server.factory._trigger is None, 5)


# -- the guardian ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_guardian_that_dies_is_replaced_and_one_let_go_is_reaped(tmp_path: Path) -> None:
    """The guardian (what ends the commands if the server is killed) is started
    with the service; killed while the server runs, another takes its place;
    when the service stops it exits and is reaped: no process is left."""
    async with serving(tmp_path) as server:
        guardian = server.factory.guardian
        assert guardian is not None
        first = guardian.pid
        assert first is not None and psutil.Process(first).ppid() == os.getpid()
        os.kill(first, signal.SIGKILL)
        await eventually(lambda: guardian.pid not in (None, first), timeout=10)
        second = guardian.pid
        assert second is not None
        # Its command line shows once its exec has set it up (posix_spawn
        # returns as the exec begins).
        await eventually(lambda: "netproto.exec.guardian" in psutil.Process(second).cmdline())
    await eventually(lambda: not psutil.pid_exists(second), timeout=10)
    assert not psutil.pid_exists(first)


@pytest_twisted.ensureDeferred
async def test_with_a_cgroup_what_left_the_group_ends_with_its_command(tmp_path: Path) -> None:
    """With a pids cgroup per command, a child that left the command's group
    (setsid, TERM ignored) does not outlive the command: once the group is gone
    it gets TERM, then KILL after the grace period."""
    async with serving(tmp_path) as server:
        if server.factory.confinement.cgroups is None:
            pytest.skip("no writable cgroup v1 pids hierarchy on this machine")
        client = await server.connect()
        script = "setsid sh -c 'trap \"\" TERM; exec sleep 60' >/dev/null 2>&1 & echo $!"
        result = await run(client, {"shell": script})
        escaped = psutil.Process(int(result.out))
        assert result.exit["code"] == 0
        await eventually(lambda: not escaped.is_running() or escaped.status() == "zombie", 15)
        client.close()
