"""exec on a terminal, in units: what the policy makes of ``"pty"``, the
connection's W and C on fakes, the reaper's hang-up, the terminal calls on
a real pseudo-terminal (no command), and the client's choices (``-t``, ``~.``)."""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.error import ProcessDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from netproto.client.framed import ClientError
from netproto.errors import ProtocolError
from netproto.exec import pty as _pty
from netproto.exec.client import buildRequest, configure
from netproto.exec.reaper import HANGUP, GroupReaper
from netproto.exec.terminal import EscapeFilter, chooseTerminal, terminalRequest
from tests.execkit import Conn, policyFor

TERM = {"term": "xterm-256color", "rows": 30, "cols": 100}


# -- the policy ------------------------------------------------------------------------


def test_pty_sets_TERM_opens_stdin_and_keeps_the_command(tmp_path: Path) -> None:
    """A command with "pty" gets TERM from the request and its stdin open (keys),
    whatever "stdin" says; its window is the one asked for."""
    prepared = policyFor(tmp_path).prepare({"argv": ["cat"], "pty": TERM}, user="a", peer="p")
    assert prepared.env["TERM"] == "xterm-256color"
    assert prepared.stdin and prepared.window == (30, 100) and not prepared.login
    assert prepared.argv == ("cat",)
    assert "on a terminal" in prepared.describe()


def test_a_command_is_described_on_one_line(tmp_path: Path) -> None:
    """A newline, a line separator or an escape in argv cannot split or forge a
    line of the text log: the description shows them escaped."""
    argv = ["echo", "a\n2026-12-01T00:00:00 [netproto] forged", "\u2028", "\x1b[2J"]
    described = policyFor(tmp_path).prepare({"argv": argv}, user="a", peer="p").describe()
    assert described.isprintable()
    assert described == "echo a\\n2026-12-01T00:00:00 [netproto] forged \\u2028 \\x1b[2J"


def test_pty_alone_is_the_login_shell(tmp_path: Path) -> None:
    """pty without argv or shell is the server user's login shell, started as a
    login shell ("-" before its name), SHELL set to it."""
    policy = policyFor(tmp_path)
    prepared = policy.prepare({"pty": {}}, user="a", peer="p")
    assert prepared.login and prepared.shell
    assert prepared.executable == os.path.normpath(policy.loginShell)
    assert prepared.argv == ("-" + os.path.basename(policy.loginShell),)
    assert prepared.env["SHELL"] == prepared.executable
    assert prepared.env["TERM"] == _pty.DEFAULT_TERM
    assert prepared.window == _pty.DEFAULT_WINDOW
    assert prepared.describe().startswith("login shell")


@pytest.mark.parametrize(
    ("options", "request_", "says"),
    [
        ({"exec-no-pty": True}, {"argv": ["true"], "pty": TERM}, "terminals"),
        ({"exec-no-shell": True}, {"pty": TERM}, "login shells"),
        ({"exec-allow": "true"}, {"pty": TERM}, "the shell"),
    ],
)
def test_terminals_and_login_shells_follow_the_options(
    tmp_path: Path, options: dict[str, Any], request_: dict[str, Any], says: str
) -> None:
    """--exec-no-pty refuses terminals, --exec-no-shell the login shell, and an
    --exec-allow list that does not name the login shell refuses it too."""
    with pytest.raises(ProtocolError) as info:
        policyFor(tmp_path, **options).prepare(request_, user="a", peer="p")
    assert info.value.code == "not-allowed" and says in info.value.message


@pytest.mark.parametrize(
    "pty",
    [
        [],
        "xterm",
        {"term": "../../etc/passwd"},
        {"term": "x" * 65},
        {"term": "xterm\n"},
        {"term": 5},
        {"rows": 0},
        {"cols": 10_001},
        {"rows": True},
        {"rows": 2.5},
    ],
)
def test_malformed_pty_requests_are_bad_frames(tmp_path: Path, pty: object) -> None:
    with pytest.raises(ProtocolError) as info:
        policyFor(tmp_path).prepare({"argv": ["true"], "pty": pty}, user="a", peer="p")
    assert info.value.code == "bad-frame"


# -- the connection --------------------------------------------------------------------


def test_W_resizes_a_terminals_command_and_is_checked(tmp_path: Path) -> None:
    """W reaches a terminal's command; a malformed W is a bad-frame (closed)."""
    c = Conn(tmp_path)
    c.send(b"R", {"argv": ["cat"], "pty": TERM})
    _, process, _ = c.factory.started[0]
    c.send(b"W", {"rows": 50, "cols": 132})
    assert ("window", (50, 132)) in process.calls
    c.send(b"W", {"rows": 50})
    frames = c.frames()
    assert frames[-1][0] == b"E" and frames[-1][1]["code"] == "bad-frame"
    assert c.closed


def test_W_for_a_command_on_pipes_is_a_bad_frame_and_a_late_one_is_dropped(
    tmp_path: Path,
) -> None:
    """A W after the command ended is a race (dropped); for pipes, a mistake."""
    c = Conn(tmp_path)
    c.send(b"R", {"argv": ["cat"], "pty": TERM})
    command, _, _ = c.factory.started[0]
    command.processEnded(Failure(ProcessDone(0)))
    c.frames()
    c.send(b"W", {"rows": 5, "cols": 5})
    assert c.frames() == [] and not c.closed
    c.send(b"R", {"argv": ["cat"]})
    c.send(b"W", {"rows": 5, "cols": 5})
    frames = c.frames()
    assert frames[-1][0] == b"E" and frames[-1][1]["code"] == "bad-frame"


def test_keys_flow_without_stdin_true_and_after_C(tmp_path: Path) -> None:
    """On a terminal, 0 frames are keys without "stdin": true, and C (the
    terminal's end-of-file) leaves it open for more."""
    c = Conn(tmp_path)
    c.send(b"R", {"argv": ["cat"], "pty": TERM})
    _, process, _ = c.factory.started[0]
    c.send(b"0", b"ab")
    c.send(b"C")
    c.send(b"0", b"cd")
    assert process.calls[-3:] == [("stdin", b"ab"), ("closeStdin", None), ("stdin", b"cd")]
    assert not c.closed


# -- the reaper --------------------------------------------------------------------------


def test_ending_a_terminals_session_hangs_it_up_first() -> None:
    """A terminal's command is ended as a hang-up ends it: HUP (which an
    interactive shell obeys), TERM, CONT (for stopped jobs), then KILL after
    the grace period if anything is left."""
    sent: list[int] = []

    def kill(pgid: int, sig: int) -> bool:
        if sig:
            sent.append(sig)
        return True

    clock = Clock()
    reaper = GroupReaper(
        7, clock, 2.0, pollLeader=lambda: False, kill=kill, reap=lambda _: 0, endSignals=HANGUP
    )
    reaper.terminate()
    assert sent == [signal.SIGHUP, signal.SIGTERM, signal.SIGCONT]
    clock.advance(2.0)
    assert sent[-1] == signal.SIGKILL


# -- the terminal calls ------------------------------------------------------------------


def test_a_new_terminal_has_its_size_and_end_of_file() -> None:
    """openTerminal sets the size before anything runs on it; setWindow
    changes it; the end-of-file character is Ctrl-D on a fresh terminal; a
    terminal nobody runs on has no foreground group."""
    master, slave = _pty.openTerminal(40, 120)
    try:
        assert _pty.getWindow(slave) == (40, 120)
        _pty.setWindow(master, 41, 121)
        assert _pty.getWindow(slave) == (41, 121)
        assert _pty.endOfFile(master) == b"\x04"
        assert _pty.foregroundGroup(master) is None
        assert not os.get_blocking(master) and not os.get_inheritable(slave)
    finally:
        os.close(master)
        os.close(slave)


# -- the client ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "sent", "quit"),
    [
        ([b"ls\r"], b"ls\r", False),
        ([b"~."], b"", True),
        ([b"ab\r~.cd"], b"ab\r", True),
        ([b"ab\r~", b"."], b"ab\r", True),
        ([b"a~.b"], b"a~.b", False),
        ([b"~~.\r"], b"~.\r", False),
        ([b"~x\r"], b"~x\r", False),
        ([b"x\n", b"~", b"~y"], b"x\n~y", False),
    ],
)
def test_tilde_dot_at_a_line_start_disconnects(keys: list[bytes], sent: bytes, quit: bool) -> None:
    """~. at the start of the input or after CR or LF disconnects (what came
    before it is sent); ~~ sends one ~; a ~ before anything else, or not at a
    line's start, is sent as typed; a ~ read alone waits for the next key."""
    escape = EscapeFilter()
    out, stop = b"", False
    for chunk in keys:
        data, stop = escape.feed(chunk)
        out += data
        if stop:
            break
    assert (out, stop) == (sent, quit)


def parsed(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    configure(parser)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize(
    ("argv", "tty", "expected"),
    [
        (["--", "ls"], True, None),
        (["-t", "--", "top"], True, 0),
        ([], True, 0),
        (["-tt", "--", "top"], False, -1),
        (["-tt"], False, -1),
    ],
)
def test_a_terminal_is_asked_for_with_t_or_no_command(
    argv: list[str], tty: bool, expected: int | None
) -> None:
    """-t (or no command: the login shell) runs on a terminal, the local one
    being stdin; -tt forces one without a local terminal."""
    assert chooseTerminal(parsed(*argv), lambda fd: tty) == expected


@pytest.mark.parametrize("argv", [["-t", "--", "top"], []])
def test_t_without_a_local_terminal_is_refused_clearly(argv: list[str]) -> None:
    with pytest.raises(ClientError) as info:
        chooseTerminal(parsed(*argv), lambda fd: False)
    assert info.value.exitCode == 255
    assert "needs a terminal" in str(info.value) and "-tt" in str(info.value)


def test_no_command_is_the_login_shell_only_on_a_terminal() -> None:
    """Without a command the request is empty (pty comes once connected);
    without a terminal (or with --shell), no command is a mistake."""
    args = parsed()
    args.localTerminal = 0
    assert buildRequest(args) == {}
    args.localTerminal = None
    with pytest.raises(ClientError):
        buildRequest(args)


def test_the_pty_request_is_the_local_window_and_a_safe_TERM() -> None:
    master, slave = _pty.openTerminal(33, 99)
    try:
        assert terminalRequest(slave, "xterm-256color") == {
            "term": "xterm-256color",
            "rows": 33,
            "cols": 99,
        }
        assert terminalRequest(None, "bad term\x1b")["term"] == _pty.DEFAULT_TERM
        assert terminalRequest(None, None)["rows"] == _pty.DEFAULT_WINDOW[0]
    finally:
        os.close(master)
        os.close(slave)
