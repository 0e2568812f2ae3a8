"""``netproto exec -t`` and the login shell end to end, as a user sees them: a
``twistd -n netproto`` subprocess, and the client run from a local shell on a
real pseudo-terminal (pexpect), whose settings (``stty -g``) must be the same
before and after, whatever ends the session."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pexpect
import psutil
import pytest

from tests.support import NETPROTO, Twistd, runTwistd, waitUntil

pytestmark = pytest.mark.e2e

PROMPT = b"L\\$ "
#: The remote shell's prompt, wherever the login shell's profile would put
#: another (bash may put its bracketed-paste switch before it).
REMOTE = b"R5\\$ "
#: Sets it: computed, so that the local terminal's echo of the line (before
#: the client has made it raw) is not taken for it.
SET_PROMPT = b"PS1='R'$((2+3))'$ '"


#: A full-screen program: curses (terminfo, the alternate screen, keys one by
#: one) shows the terminal's size until q is pressed.
FULL_SCREEN = (
    "import curses\n"
    "def main(screen):\n"
    "    screen.addstr(0, 0, 'full screen %dx%d' % screen.getmaxyx())\n"
    "    screen.refresh()\n"
    "    while screen.getch() != ord('q'):\n"
    "        pass\n"
    "curses.wrapper(main)\n"
    "print('left the full screen')\n"
)


def answered(text: bytes) -> bytes:
    """What the remote shell shows after a command that printed ``text``."""
    return re.escape(text) + b"\r\n(?:\x1b\\[\\?2004[hl])?" + REMOTE


@dataclass
class Server:
    twistd: Twistd
    home: Path

    def argv(self, *args: str) -> list[str]:
        """``netproto exec ARGS`` against this server."""
        return [NETPROTO, "exec", "--server", f"127.0.0.1:{self.twistd.port('exec')}", *args]

    def command(self, *args: str) -> str:
        """The same, as a line for a shell."""
        return shlex.join(self.argv(*args))

    def env(self) -> dict[str, str]:
        return dict(os.environ, NETPROTO_HOME=str(self.home))

    def descendants(self) -> list[psutil.Process]:
        """The server's processes but its guardian (which outlives it on purpose)."""
        return [
            p
            for p in psutil.Process(self.twistd.proc.pid).children(recursive=True)
            if "netproto.exec.guardian" not in p.cmdline()
        ]


def serve(tmp: Path) -> Iterator[Server]:
    with runTwistd(tmp, "--exec-kill-grace", "1", services=("exec",)) as twistd:
        yield Server(twistd, tmp / "home")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serve(tmp_path_factory.mktemp("exec-pty"))


class LocalShell:
    """A local ``sh`` on a pseudo-terminal of its own, as a user's terminal."""

    def __init__(self, server: Server) -> None:
        env = server.env() | {"PS1": "L$ ", "TERM": "xterm"}
        self.child = pexpect.spawn("sh", env=env, dimensions=(24, 80), timeout=20)
        self.child.expect(PROMPT)
        self.settings = self.stty()

    def run(self, line: str) -> bytes:
        """A command line at the local prompt; what it printed."""
        self.child.sendline(line.encode())
        self.child.expect(PROMPT)
        before: bytes = self.child.before
        return before.split(b"\r\n", 1)[1] if b"\r\n" in before else b""

    def stty(self) -> bytes:
        return self.run("stty -g").strip()

    def status(self) -> int:
        return int(self.run("echo $?").strip())

    def expect(self, pattern: bytes) -> re.Match[bytes]:
        self.child.expect(pattern)
        match: re.Match[bytes] = self.child.match
        return match

    def close(self) -> None:
        self.child.close(force=True)


@pytest.fixture
def local(server: Server) -> Iterator[LocalShell]:
    shell = LocalShell(server)
    yield shell
    shell.close()


def test_the_login_shell_on_a_terminal(server: Server, local: LocalShell) -> None:
    """netproto exec with no command opens the login shell on a terminal: a
    command typed and its output, stty size following a resize of the local
    terminal, Ctrl-C interrupting a sleep with the shell surviving, a
    full-screen program (curses) opened and quit, Ctrl-D ending the shell with its
    status, which is the client's; the local terminal is as it was."""
    local.child.sendline(server.command().encode())
    local.child.sendline(SET_PROMPT)
    local.expect(REMOTE)
    local.child.sendline(b"echo hi$((6*7))")
    local.expect(answered(b"hi42"))
    local.child.setwinsize(40, 100)
    local.child.sendline(b"stty size")
    local.expect(answered(b"40 100"))
    local.child.sendline(b"sleep 30")
    local.expect(b"sleep 30\r\n")
    waitUntil(lambda: any(p.name() == "sleep" for p in server.descendants()))
    local.child.send(b"\x03")
    local.expect(REMOTE)
    local.child.sendline(b"echo alive $?")
    local.expect(answered(b"alive 130"))
    local.child.sendline(f"{shlex.quote(sys.executable)} -c {shlex.quote(FULL_SCREEN)}".encode())
    local.expect(b"full screen 40x100")
    local.child.send(b"q")
    local.expect(answered(b"left the full screen"))
    local.child.sendline(b"(exit 7)")
    local.expect(REMOTE)
    local.child.send(b"\x04")
    local.expect(PROMPT)
    assert local.status() == 7
    assert local.stty() == local.settings


def test_tilde_dot_disconnects_and_the_remote_tree_is_ended(
    server: Server, local: LocalShell
) -> None:
    """~. at a line's start disconnects (status 255, as ssh); the server then
    ends every process of the terminal's session; the local terminal is as it
    was. A ~ elsewhere, or doubled, is sent."""
    local.child.sendline(server.command("-t", "--", "sh", "-i").encode())
    local.child.sendline(SET_PROMPT)
    local.expect(REMOTE)
    local.child.sendline(b"echo a~b")
    local.expect(answered(b"a~b"))
    local.child.sendline(b"~~ 2>/dev/null; echo ok")
    local.expect(re.escape(b"~ 2>/dev/null; echo ok\r\n"))
    local.expect(answered(b"ok"))
    local.child.sendline(b"sleep 300 & sleep 301")
    waitUntil(lambda: len([p for p in server.descendants() if p.name() == "sleep"]) == 2)
    local.child.send(b"\r~.")
    local.expect(PROMPT)
    assert b"disconnected (~.)" in local.child.before
    assert local.status() == 255
    assert local.stty() == local.settings
    waitUntil(lambda: not server.descendants(), timeout=15)


def test_a_signal_to_the_client_ends_the_session_and_restores_the_terminal(
    server: Server, local: LocalShell
) -> None:
    """SIGHUP (the local terminal closing, or kill) to the client ends the
    session: it exits 128+1 with a line saying so, the server ends the remote
    command, and the local terminal is as it was."""
    local.child.sendline(
        server.command("-t", "--", "sh", "-c", "echo R$((1+1)); sleep 300").encode()
    )
    local.expect(b"R2")
    (client,) = [p for p in psutil.Process(local.child.pid).children() if "exec" in p.cmdline()]
    client.send_signal(signal.SIGHUP)
    local.expect(PROMPT)
    assert b"ended by SIGHUP" in local.child.before
    assert local.status() == 128 + signal.SIGHUP
    assert local.stty() == local.settings
    waitUntil(lambda: not server.descendants(), timeout=15)


def test_t_needs_a_local_terminal_and_tt_forces_one(server: Server) -> None:
    """-t without a local terminal is refused with a clear message (255); -tt
    runs the command on a terminal all the same, and exits with its status."""
    refused = subprocess.run(
        server.argv("-t", "--", "tty"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=server.env(),
        timeout=60,
    )
    assert refused.returncode == 255
    assert b"needs a terminal" in refused.stderr and b"-tt" in refused.stderr
    forced = subprocess.run(
        server.argv("-tt", "--", "sh", "-c", "tty; read x; echo got $x; exit 3"),
        input=b"it\n",
        capture_output=True,
        env=server.env(),
        timeout=60,
    )
    assert forced.returncode == 3, forced.stderr
    # The remote terminal echoes the input (sent ahead) as it arrives.
    assert re.search(rb"^/dev/pts/\d+\r$", forced.stdout, re.M), forced.stdout
    assert b"got it\r\n" in forced.stdout


@pytest.mark.slow
def test_the_local_terminal_is_restored_when_the_server_is_killed(tmp_path: Path) -> None:
    """The server is killed (SIGKILL) mid-session: the client says so and
    exits 255, and the local terminal's settings are as they were."""
    for server in serve(tmp_path):
        local = LocalShell(server)
        try:
            local.child.sendline(server.command("-t", "--", "sh", "-i").encode())
            local.child.sendline(SET_PROMPT)
            local.expect(REMOTE)
            server.twistd.stop(signal.SIGKILL)
            local.expect(PROMPT)
            assert b"the server closed the connection" in local.child.before
            assert local.status() == 255
            assert local.stty() == local.settings
        finally:
            local.close()
