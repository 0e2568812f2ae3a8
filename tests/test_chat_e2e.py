"""End to end: ``twistd netproto`` with real telnet and netcat, a client that never reads,
and the bundled ``netproto chat`` client in a pipe and under a pseudo-terminal."""

from __future__ import annotations

import os
import selectors
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pexpect
import psutil
import pytest

from tests.programs import required
from tests.support import NETPROTO, Twistd, runTwistd, sendWhilePumping, waitUntil

pytestmark = pytest.mark.e2e


@pytest.fixture
def chat(tmp_path: Path) -> Iterator[Twistd]:
    with runTwistd(tmp_path, services=("chat",)) as server:
        yield server


class LineSocket:
    """A blocking socket that reads whole lines (CRLF checked) with a deadline."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def say(self, text: str) -> None:
        self.sock.sendall(text.encode() + b"\n")

    def line(self) -> str:
        while b"\n" not in self.buf:
            data = self.sock.recv(65536)
            assert data, "connection closed"
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        assert line.endswith(b"\r"), line
        return line[:-1].decode()

    def until(self, wanted: str) -> list[str]:
        seen = []
        while True:
            seen.append(self.line())
            if seen[-1] == wanted:
                return seen

    def close(self) -> None:
        self.sock.close()


def sendUntilRefused(sock: socket.socket) -> None:
    """Read what is left, then write: a connection the server aborted raises."""
    while sock.recv(1 << 20):
        pass
    for _ in range(2):
        sock.send(b"still there?\n")


@pytest.mark.slow
def test_real_telnet_and_netcat_talk_both_ways(chat: Twistd) -> None:
    """The real ``telnet`` and ``nc`` programs join, rename, talk both ways and quit."""
    port = chat.port("chat")
    telnet = pexpect.spawn(required("telnet", "telnet"), ["127.0.0.1", str(port)], timeout=15)
    nc = pexpect.spawn(required("nc", "netcat-openbsd"), ["127.0.0.1", str(port)], timeout=15)
    try:
        telnet.expect(r"You are (guest\d+) in #lobby")
        nc.expect(r"You are (guest\d+) in #lobby")
        ncGuest = nc.match.group(1).decode()
        telnet.expect(f"\\*\\*\\* {ncGuest} has joined #lobby")
        telnet.sendline("/nick tel")
        nc.expect(r"is now known as tel")
        telnet.sendline("hello from telnet")
        nc.expect(r"<tel> hello from telnet\r")
        nc.sendline("/nick cat")
        telnet.expect(f"{ncGuest} is now known as cat")
        nc.sendline("hi from nc")
        telnet.expect(r"<cat> hi from nc\r")
        nc.sendline("/quit bye now")
        telnet.expect(r"\*\*\* cat has quit \(bye now\)")
        chat.waitLog(r"chat: 127\.0\.0\.1:\d+ \(cat\) disconnected: quit")
        telnet.sendline("/quit")
        chat.waitLog(r"chat: 127\.0\.0\.1:\d+ \(tel\) disconnected: quit")
        telnet.expect(pexpect.EOF)  # telnet exits when the server closes
    finally:
        telnet.close(force=True)
        nc.close(force=True)


@pytest.mark.slow
def test_a_client_that_never_reads_is_cut_off_and_the_others_lose_nothing(tmp_path: Path) -> None:
    """While one member never reads and another sends 40 MB at full speed, the silent one is
    disconnected once its queue passes --chat-max-queue, the two readers get every line in
    order, and the server's memory stays far below what the silent one was sent."""
    lines, size = 10000, 4000
    with runTwistd(tmp_path, "--chat-rate", "0", services=("chat",)) as server:
        port = server.port("chat")
        proc = psutil.Process(server.proc.pid)
        silent = socket.socket()
        silent.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        silent.connect(("127.0.0.1", port))
        socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        sender, readers = socks[0], socks[1:]
        got: dict[socket.socket, bytearray] = {s: bytearray() for s in socks}
        sel = selectors.DefaultSelector()
        for s in socks:
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)

        def pump(timeout: float) -> None:
            for key, _ in sel.select(timeout):
                data = key.fileobj.recv(1 << 20)  # type: ignore[union-attr]
                assert data, "a reader was disconnected"
                got[key.fileobj] += data  # type: ignore[index]

        def welcomed() -> bool:
            pump(0.05)
            return all(b"Welcome" in got[s] for s in socks)

        waitUntil(welcomed)
        baseline = peak = proc.memory_info().rss
        payload = b"".join(b"%06d " % i + b"x" * (size - 9) + b"\n" for i in range(lines))
        last = b"> %06d " % (lines - 1)

        def finished() -> bool:
            return all(last in got[r] and b"too slow reading" in got[r] for r in readers)

        peak = max(peak, sendWhilePumping(sender, payload, pump, finished, proc))
        server.waitLog(r"cut off: more than 262144 bytes of output left unread")
        for r in readers:
            text = bytes(got[r]).decode()
            said = [ln for ln in text.split("\r\n") if ln.startswith("<")]
            assert [ln.split(" ")[1] for ln in said] == [f"{i:06d}" for i in range(lines)]
            assert "has quit (too slow reading)" in text
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            sendUntilRefused(silent)
        assert peak - baseline < 24 * 2**20, f"server RSS grew by {(peak - baseline) >> 20} MiB"
        for s in [silent, *socks]:
            s.close()


@pytest.mark.slow
def test_netproto_chat_in_a_pipe_sends_stdin_and_prints_what_the_server_said(
    chat: Twistd,
) -> None:
    """``printf 'hello\\n/quit\\n' | netproto chat`` sends the line, prints the server's lines
    and exits 0 when the server closes the connection."""
    listener = LineSocket(chat.port("chat"))
    listener.line()
    result = subprocess.run(
        [NETPROTO, "chat", "--server", f"127.0.0.1:{chat.port('chat')}", "--nick", "piper"],
        input=b"hello from a pipe\n/quit\n",
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert out.startswith("*** Welcome to netproto chat. You are guest2 in #lobby.")
    assert "*** guest2 is now known as piper\n" in out
    assert "\r" not in out
    listener.until("<piper> hello from a pipe")
    assert listener.line() == "*** piper has quit (quit)"
    listener.close()


@pytest.mark.slow
def test_netproto_chat_says_when_it_cannot_connect(tmp_path: Path) -> None:
    """A refused connection is one line on stderr and exit status 2, no traceback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = subprocess.run(
        [NETPROTO, "chat", "--server", f"127.0.0.1:{port}"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.decode().startswith("netproto chat: cannot connect:")
    assert "Traceback" not in result.stderr.decode()


@pytest.mark.slow
def test_interactive_client_keeps_the_typed_line_intact(chat: Twistd) -> None:
    """Under a terminal, a line arriving while the user types is printed above the input line,
    and the half-typed text is redrawn and still sent whole."""
    port = chat.port("chat")
    child = pexpect.spawn(
        NETPROTO,
        ["chat", "--server", f"127.0.0.1:{port}", "--nick", "alice"],
        timeout=15,
        dimensions=(24, 120),
        env=dict(os.environ, TERM="xterm"),
    )
    child.expect("is now known as alice")
    bob = LineSocket(port)
    try:
        bob.line()  # welcome
        bob.say("/nick bob")
        child.expect("is now known as bob")
        child.send("hello wor")
        child.expect("hello wor")
        bob.say("incoming while typing")
        # The message row is cleared and written, then the prompt and the typed text come back.
        child.expect(r"\r\x1b\[2K<bob> incoming while typing\r\n> hello wor")
        child.send("ld\r")
        bob.until("<alice> hello world")
        child.send("\x03")  # Ctrl-C quits
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
        assert bob.line() == "*** alice has quit (quit)"
    finally:
        child.close(force=True)
        bob.close()
