"""exec on a terminal (PROTOCOL.md section 5) over real loopback: an in-process
server and the bundled client's FramedClient, real commands on real
pseudo-terminals."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest
import pytest_twisted

from netproto.client.framed import FramedClient, ServerError
from netproto.exec import procs as _procs
from netproto.exec import pty as _pty
from netproto.exec.transport import CommandTransport
from tests.execkit import buffered, connections, finish, serving, stalledAt, started
from tests.support import eventually, waitDeferred

PY = sys.executable
TERM = {"term": "xterm-256color", "rows": 24, "cols": 80}
#: Says "ready", then the terminal's size at each SIGWINCH.
WINCH_SCRIPT = (
    "import os, signal\n"
    "def winch(*_):\n"
    "    os.write(1, b'winch %d %d\\n' % tuple(os.get_terminal_size()))\n"
    "signal.signal(signal.SIGWINCH, winch)\n"
    "os.write(1, b'ready\\n')\n"
    "while True: signal.pause()\n"
)


class Screen:
    """What a terminal command wrote (its ``1`` frames), read until a text shows up."""

    def __init__(self, client: FramedClient) -> None:
        self.client = client
        self.seen = b""
        self.exit: dict[str, Any] | None = None

    async def expect(self, text: bytes, timeout: float = 15) -> bytes:
        """Read ``1`` frames until ``text`` has arrived (since the last expect);
        what came up to its end."""
        while text not in self.seen:
            kind, payload = await waitDeferred(self.client.receive(), timeout)
            if kind == b"X":
                raise AssertionError(
                    f"the command ended ({payload!r}) before {text!r}: {self.seen!r}"
                )
            assert kind == b"1", kind
            self.seen += payload
        end = self.seen.index(text) + len(text)
        before, self.seen = self.seen[:end], self.seen[end:]
        return before

    def type(self, keys: bytes) -> None:
        self.client.send(b"0", keys)


async def onTerminal(client: FramedClient, request: dict[str, Any]) -> Screen:
    await started(client, {"pty": TERM, **request})
    return Screen(client)


def sessionOf(pid: int) -> list[int]:
    return _procs.sessionMembers(pid)


@pytest_twisted.ensureDeferred
async def test_a_command_gets_a_terminal_of_the_asked_size_and_TERM(tmp_path: Path) -> None:
    """The command's stdin, stdout and stderr are a terminal (its controlling
    one), of the rows and columns asked for, with TERM from the request; what it
    writes to stdout and stderr arrives as 1 frames, and X as for pipes."""
    script = (
        "tty; echo TERM=$TERM; stty size; echo to-stderr >&2; "
        ": </dev/tty && echo controlling; exit 7"
    )
    async with serving(tmp_path) as server:
        client = await server.connect()
        assert client.hello is not None and "pty" in client.hello.features
        pid = await started(
            client, {"shell": script, "pty": {"term": "vt100", "rows": 33, "cols": 101}}
        )
        result = await finish(client, pid)
        text = result.out.decode()
        assert set(result.kinds) == {b"1", b"X"}
        assert text.startswith("/dev/pts/")
        for line in ("TERM=vt100", "33 101", "to-stderr", "controlling"):
            assert f"{line}\r\n" in text
        assert result.exit == {"code": 7, "signal": None, "timed_out": False}
        client.close()


@pytest_twisted.ensureDeferred
async def test_W_resizes_the_terminal_and_the_command_gets_SIGWINCH(tmp_path: Path) -> None:
    """A W frame changes the terminal's size; the command is told (SIGWINCH)
    and sees the new size."""
    async with serving(tmp_path) as server:
        client = await server.connect()
        screen = await onTerminal(client, {"argv": [PY, "-c", WINCH_SCRIPT]})
        await screen.expect(b"ready")
        client.sendJSON(b"W", {"rows": 50, "cols": 132})
        await screen.expect(b"winch 132 50")
        client.sendJSON(b"S", {"signal": "TERM"})
        client.close()


def inFront(transport: CommandTransport) -> str | None:
    """The name of the first process of the terminal's foreground job."""
    fd = transport._terminalFd()
    group = _pty.foregroundGroup(fd) if fd is not None else None
    try:
        return None if group is None else psutil.Process(group).name()
    except psutil.NoSuchProcess:
        return None


async def sleepingShell(screen: Screen, transport: CommandTransport) -> None:
    """Have the interactive shell on ``screen`` run ``sleep 30`` in front."""
    screen.type(b"sleep 30\r")
    await eventually(lambda: inFront(transport) == "sleep")


@pytest_twisted.ensureDeferred
async def test_keystrokes_are_interpreted_by_the_terminal_and_S_goes_to_the_job_in_front(
    tmp_path: Path,
) -> None:
    """0 frames are keystrokes: echoed, edited (a backspace rubs out), and
    Ctrl-C interrupts the foreground job of an interactive shell, which
    survives; so does S INT (to the terminal's foreground job, not the shell).
    C is the terminal's end-of-file: the line typed so far goes to the
    program, a second C at a line's start ends cat, and the terminal stays
    open. Ctrl-D ends the shell with its status."""
    async with serving(tmp_path) as server:
        client = await server.connect()
        screen = await onTerminal(client, {"argv": ["sh", "-i"], "env": {"PS1": "$ "}})
        (transport,) = server.factory.commands.values()
        await screen.expect(b"$ ")
        screen.type(b"echo helko\x7f\x7flo\r")
        await screen.expect(b"hello\r\n$ ")
        await sleepingShell(screen, transport)
        screen.type(b"\x03")
        screen.type(b"echo status $?\r")
        await screen.expect(b"status 130\r\n$ ")
        await sleepingShell(screen, transport)
        client.sendJSON(b"S", {"signal": "INT"})
        screen.type(b"echo alive $?\r")
        await screen.expect(b"alive 130\r\n$ ")
        screen.type(b"cat\r")
        await screen.expect(b"cat\r\n")
        screen.type(b"abc")
        client.send(b"C")
        await screen.expect(b"abcabc")
        client.send(b"C")
        await screen.expect(b"$ ")
        screen.type(b"(exit 5)\r")
        await screen.expect(b"$ ")
        screen.type(b"\x04")
        result = await finish(client, 0)
        assert result.exit["code"] == 5
        client.close()


@pytest_twisted.ensureDeferred
async def test_a_disconnect_ends_every_process_of_the_terminals_session(tmp_path: Path) -> None:
    """The client goes away while an interactive shell runs jobs of its own
    (each in its own process group), one ignoring SIGHUP and SIGTERM: every
    process of the terminal's session is ended and reaped."""
    async with serving(tmp_path, **{"exec-kill-grace": 0.5}) as server:
        client = await server.connect()
        screen = await onTerminal(client, {"argv": ["sh", "-i"], "env": {"PS1": "$ "}})
        await screen.expect(b"$ ")
        pid = next(iter(server.factory.commands))
        screen.type(b"sleep 300 & (trap '' HUP TERM; sleep 301) & sleep 302\r")
        await eventually(lambda: len(sessionOf(pid)) >= 4)
        groups = {os.getpgid(p) for p in sessionOf(pid)}
        assert len(groups) >= 3
        client.close()
        await eventually(lambda: not sessionOf(pid) and not server.factory.commands)


@pytest_twisted.ensureDeferred
async def test_the_timeout_ends_a_terminals_command(tmp_path: Path) -> None:
    """A command on a terminal that outlives its timeout is ended, and X says so."""
    async with serving(tmp_path) as server:
        client = await server.connect()
        pid = await started(client, {"argv": ["sh", "-i"], "pty": TERM, "timeout": 0.3})
        result = await finish(client, pid)
        assert result.exit["timed_out"] is True
        assert result.exit["signal"] in {"HUP", "TERM", "KILL"}
        await eventually(lambda: not sessionOf(pid))
        client.close()


@pytest_twisted.ensureDeferred
async def test_pty_alone_opens_the_login_shell(tmp_path: Path) -> None:
    """R with pty and no command runs the server user's login shell as a login
    shell (a - before its name), TERM set; --exec-no-shell refuses it."""
    async with serving(tmp_path) as server:
        client = await server.connect()
        screen = await onTerminal(client, {})
        screen.type(b'echo "zero=$0 term=$TERM"; exit 3\r')
        await screen.expect(b"zero=-")
        tail = await screen.expect(b"term=xterm-256color")
        assert b"zero=-" not in tail
        result = await finish(client, 0)
        assert result.exit["code"] == 3
        client.close()
    async with serving(tmp_path, **{"exec-no-shell": True}) as server:
        client = await server.connect()
        client.sendJSON(b"R", {"pty": TERM})
        with pytest.raises(ServerError) as info:
            await waitDeferred(client.receive())
        assert info.value.code == "not-allowed"
        assert "login shells" in info.value.serverMessage
        client.close()


@pytest_twisted.ensureDeferred
async def test_no_pty_refuses_terminals_and_says_so_in_the_hello(tmp_path: Path) -> None:
    """With --exec-no-pty the hello offers no "pty" and R with "pty" is not-allowed;
    the connection serves on."""
    async with serving(tmp_path, **{"exec-no-pty": True}) as server:
        client = await server.connect()
        assert client.hello is not None and "pty" not in client.hello.features
        client.sendJSON(b"R", {"argv": ["true"], "pty": TERM})
        with pytest.raises(ServerError) as info:
            await waitDeferred(client.receive())
        assert info.value.code == "not-allowed"
        pid = await started(client, {"argv": ["true"]})
        assert (await finish(client, pid)).exit["code"] == 0
        client.close()


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_a_client_that_stops_reading_stops_the_command_on_its_terminal(
    tmp_path: Path,
) -> None:
    """Output backpressure on a terminal, as on pipes: while the client reads
    nothing, the server holds at most about one send buffer and the command
    blocks on its terminal; nothing is lost once the client reads again."""
    total = 32 << 20
    async with serving(tmp_path) as server:
        client = await server.connect()
        pid = await started(client, {"argv": ["head", "-c", str(total), "/dev/zero"], "pty": TERM})
        written = await stalledAt(pid)
        (conn,) = connections(server.factory)
        assert buffered(conn.transport) <= 2 * server.factory.maxFrame
        assert written < total
        result = await finish(client, pid, timeout=60)
        assert result.out == bytes(total) and result.exit["code"] == 0
        client.close()


@pytest_twisted.ensureDeferred
async def test_the_command_ends_with_its_shell_and_the_terminal_is_hung_up(
    tmp_path: Path,
) -> None:
    """The shell exits leaving a job that ignores SIGHUP and holds the terminal:
    as with ssh, the terminal is hung up (the job ended, by SIGKILL after the
    grace period at worst) and X comes with the shell's status, not when the
    job would have ended."""
    async with serving(tmp_path, **{"exec-kill-grace": 0.5}) as server:
        client = await server.connect()
        # The job says when its traps are set: the kernel's SIGHUP at the
        # shell's exit must not reach it before.
        script = (
            "(trap '' HUP TERM; touch ready; exec sleep 300) & "
            "while [ ! -e ready ]; do sleep 0.01; done; echo started; exit 3"
        )
        pid = await started(client, {"shell": script, "pty": TERM})
        result = await finish(client, pid, timeout=15)
        assert b"started" in result.out and result.exit["code"] == 3
        await eventually(lambda: not sessionOf(pid))
        client.close()


@pytest_twisted.ensureDeferred
async def test_the_servers_shutdown_ends_every_process_of_a_terminal(tmp_path: Path) -> None:
    """At the server's shutdown (the factory ending every command), an
    interactive shell and a job of its own that ignores SIGHUP and SIGTERM are
    ended and reaped; the client gets X."""
    async with serving(tmp_path, **{"exec-kill-grace": 0.5}) as server:
        client = await server.connect()
        screen = await onTerminal(client, {"argv": ["sh", "-i"], "env": {"PS1": "$ "}})
        await screen.expect(b"$ ")
        (pid,) = server.factory.commands
        screen.type(b"(trap '' HUP TERM; exec sleep 300) &\r")
        await eventually(lambda: len(sessionOf(pid)) >= 2)
        await waitDeferred(server.factory.endAll(), 15)
        assert not sessionOf(pid)
        result = await finish(client, pid)
        assert result.exit["signal"] in {"HUP", "TERM", "KILL"}
        client.close()
