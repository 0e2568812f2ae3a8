"""The web service at the WebSocket level (PROTOCOL.md section 7), against a real
``twistd netproto`` with a Python WebSocket client: browser members in the telnet
members' rooms, the Origin check, binary and over-long messages, a member that
never reads, the page's files, and TLS."""

from __future__ import annotations

import contextlib
import selectors
import socket
import ssl
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import websocket

from netproto.web.protocol import MAX_STRIKES, OVERLONG_SLACK
from tests.support import Twistd, runTwistd, sendWhilePumping, waitUntil
from tests.webkit import (
    LineMember,
    RawSocketMember,
    closeCode,
    connectSocket,
    handshakeStatus,
    origin,
    receiveUntil,
    upgradeRequest,
    welcomedAs,
)

pytestmark = pytest.mark.e2e

ALLOWED = "https://chat.example.org"
MAX_LINE = 4096


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Twistd]:
    """chat and web of one server; a second page origin allowed."""
    tmp = tmp_path_factory.mktemp("web")
    with runTwistd(tmp, "--web-origins", ALLOWED, services=("chat", "web")) as twistd:
        yield twistd


def test_browser_and_telnet_members_share_a_room(server: Twistd) -> None:
    """A WebSocket member and a telnet member are in one #lobby: each line of one is one
    text message (no CRLF) to the other, and back; nicks and notices are the chat's."""
    ws = connectSocket(server.port("web"))
    tel = LineMember(server.port("chat"))
    try:
        guest = welcomedAs(receiveUntil(ws, r"^\*\*\* Welcome to netproto chat"))
        telGuest = welcomedAs(tel.readUntil(r"Welcome"))
        receiveUntil(ws, rf"^\*\*\* {telGuest} has joined #lobby$")
        ws.send("/nick webby")
        tel.readUntil(rf"^\*\*\* {guest} is now known as webby$")
        receiveUntil(ws, r"is now known as webby$")
        ws.send("hello from the browser")
        assert tel.readUntil(r"browser") == ["<webby> hello from the browser"]
        tel.send("hi from telnet")
        assert receiveUntil(ws, r"telnet") == [f"<{telGuest}> hi from telnet"]
        tel.send("/me waves")
        assert receiveUntil(ws, r"waves") == [f"* {telGuest} waves"]
        ws.send(f"/msg {telGuest} psst")
        assert tel.readUntil(r"psst") == ["*webby* psst"]
        ws.send("/quit gone")
        tel.readUntil(r"^\*\*\* webby has quit \(gone\)$")
        assert closeCode(ws) == 1000
    finally:
        ws.shutdown()
        tel.close()


def test_history_is_replayed_to_a_browser_that_joins(server: Twistd) -> None:
    """A room's history reaches a WebSocket member that joins it, as for telnet."""
    tel = LineMember(server.port("chat"))
    ws = connectSocket(server.port("web"))
    try:
        tel.readUntil(r"Welcome")
        tel.send("/join history")
        tel.readUntil(r"has joined #history")
        tel.send("remember me")
        receiveUntil(ws, r"Welcome")
        ws.send("/join #history")
        lines = receiveUntil(ws, r"remember me")
        assert lines[-1].startswith("*** history: <") and lines[-1].endswith("> remember me")
    finally:
        ws.shutdown()
        tel.close()


@pytest.mark.parametrize(
    ("sent", "allowed"),
    [
        ("own", True),
        (ALLOWED, True),
        (ALLOWED.upper() + ":443", True),  # the same origin, as written by hand
        (None, True),  # not a browser: no cross-site request to refuse
        ("https://evil.example", False),
        ("http://127.0.0.1:1", False),  # the right host, another port
        ("null", False),  # a sandboxed frame or a file: page
    ],
)
def test_the_handshake_is_refused_for_a_foreign_origin(
    server: Twistd, sent: str | None, allowed: bool
) -> None:
    """Origin: the page's own, or listed in --web-origins; anything else gets HTTP 403."""
    port = server.port("web")
    header = "" if sent == "own" else sent
    if allowed:
        ws = connectSocket(port, header)
        try:
            receiveUntil(ws, r"Welcome")
        finally:
            ws.shutdown()
        return
    assert handshakeStatus(port, sent) == 403
    server.waitLog(rf"web: refused .*origin {sent} is not allowed")


def test_a_browser_s_handshake_opens_without_compression(server: Twistd) -> None:
    """Chromium's handshake (it offers permessage-deflate) opens the WebSocket; the
    offer is declined, so every member's frames are the same uncompressed bytes."""
    member = RawSocketMember(
        server.port("web"),
        "User-Agent: Mozilla/5.0",
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits",
    )
    try:
        assert "sec-websocket-extensions" not in member.head.lower()
        assert member.receiveUntil(r"^\*\*\* Welcome to netproto chat")
    finally:
        member.sock.close()


def test_binary_and_overlong_messages_get_the_error_line_and_the_socket_stays(
    server: Twistd,
) -> None:
    """A binary message, and a text message past --chat-max-line, each get the section-1
    error; the connection stays open and the next good line is said."""
    ws = connectSocket(server.port("web"))
    tel = LineMember(server.port("chat"))
    try:
        receiveUntil(ws, r"Welcome")
        tel.readUntil(r"Welcome")
        ws.send_binary(b"\x00\x01binary")
        assert receiveUntil(ws, r"^!")[-1] == (
            "! binary messages are not read: send text, one line per message"
        )
        ws.send("x" * (MAX_LINE + 1))
        assert receiveUntil(ws, r"^!")[-1] == f"! line too long (limit {MAX_LINE} bytes)"
        ws.send("y" * MAX_LINE)  # exactly the limit is a line
        ws.send("still here")
        said = tel.readUntil(r"still here")
        assert said[-2].endswith("> " + "y" * MAX_LINE)
    finally:
        ws.shutdown()
        tel.close()


def test_a_peer_that_keeps_sending_refused_messages_is_closed(server: Twistd) -> None:
    """Past MAX_STRIKES refused messages in a row: close 1008 (policy violation)."""
    ws = connectSocket(server.port("web"))
    try:
        receiveUntil(ws, r"Welcome")
        for _ in range(MAX_STRIKES + 1):
            ws.send_binary(b"again")
        assert closeCode(ws) == 1008
    finally:
        ws.shutdown()


def test_a_message_past_the_hard_limit_is_not_buffered(server: Twistd) -> None:
    """A text message longer than --chat-max-line + OVERLONG_SLACK closes the WebSocket
    (1009, too big) instead of being read whole."""
    ws = connectSocket(server.port("web"))
    try:
        receiveUntil(ws, r"Welcome")
        with contextlib.suppress(OSError, websocket.WebSocketException):
            ws.send("z" * (MAX_LINE + 1 + OVERLONG_SLACK + 1))
        assert closeCode(ws) in (1009, None)  # None: dropped while the client still sent
    finally:
        ws.shutdown()


def test_invalid_utf8_is_replaced_not_fatal(server: Twistd) -> None:
    """Section 1: invalid UTF-8 is replaced by U+FFFD; the connection is not failed."""
    ws = connectSocket(server.port("web"))
    tel = LineMember(server.port("chat"))
    try:
        receiveUntil(ws, r"Welcome")
        tel.readUntil(r"Welcome")
        ws.send_frame(websocket.ABNF.create_frame(b"bad \xff byte", websocket.ABNF.OPCODE_TEXT))
        assert tel.readUntil(r"byte")[-1].endswith("> bad \ufffd byte")
    finally:
        ws.shutdown()
        tel.close()


def test_the_page_and_its_files_are_served_with_a_strict_policy(server: Twistd) -> None:
    """/ is the page (its script and style from the server itself, a CSP that allows
    nothing else); a plain GET of /chat is not a WebSocket (426); no directory listing."""
    base = f"http://127.0.0.1:{server.port('web')}"
    with urllib.request.urlopen(base + "/", timeout=10) as page:
        body = page.read().decode()
        assert page.headers["Content-Type"].startswith("text/html")
        assert "script-src 'self'" in page.headers["Content-Security-Policy"]
        assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert '<script src="chat.js"' in body and "http" not in body.split("<body>")[0]
    for name in ("chat.js", "chat.css"):
        with urllib.request.urlopen(f"{base}/{name}", timeout=10) as f:
            assert f.status == 200 and f.read()
    for path, status in (("/chat", 426), ("/static/", 404), ("/nope", 404)):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(base + path, timeout=10)
        e.value.close()
        assert e.value.code == status, path


@pytest.mark.slow
def test_a_browser_that_never_reads_is_cut_off_and_the_others_lose_nothing(
    tmp_path: Path,
) -> None:
    """A WebSocket member that never reads while a telnet member sends 40 MB at full
    speed: it is cut off (``too slow reading``) once its queue passes --chat-max-queue,
    a WebSocket reader and a telnet reader get every line in order, and the server's
    memory stays far below what the silent one was sent."""
    lines, size = 10000, 4000
    with runTwistd(tmp_path, "--chat-rate", "0", services=("chat", "web")) as server:
        proc = psutil.Process(server.proc.pid)
        silent = connectSocket(
            server.port("web"), sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),)
        )
        wsReader = RawSocketMember(server.port("web"))
        socks = [socket.create_connection(("127.0.0.1", server.port("chat"))) for _ in range(2)]
        sender, telReader = socks
        got = bytearray()
        messages: list[str] = []
        sel = selectors.DefaultSelector()
        for s in (telReader, wsReader.sock):
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)

        def pump(timeout: float) -> None:
            for key, _ in sel.select(timeout):
                data = key.fileobj.recv(1 << 20)  # type: ignore[union-attr]
                assert data, "a reader was disconnected"
                if key.fileobj is telReader:
                    got.extend(data)
                else:
                    messages.extend(wsReader.feed(data))

        def welcomed() -> bool:
            pump(0.05)
            return b"Welcome" in got and any("Welcome" in m for m in messages)

        waitUntil(welcomed)
        baseline = proc.memory_info().rss
        payload = b"".join(b"%06d " % i + b"x" * (size - 9) + b"\n" for i in range(lines))
        last = f"> {lines - 1:06d} "

        def finished() -> bool:
            return (
                any("too slow reading" in m for m in messages)
                and any(last in m for m in messages[-3:])
                and last.encode() in got
                and b"too slow reading" in got
            )

        peak = sendWhilePumping(sender, payload, pump, finished, proc)
        server.waitLog(r"cut off: more than 262144 bytes of output left unread")
        said = [m for m in messages if m.startswith("<")]
        assert [m.split(" ")[1] for m in said] == [f"{i:06d}" for i in range(lines)]
        text = bytes(got).decode()
        said = [ln for ln in text.split("\r\n") if ln.startswith("<")]
        assert [ln.split(" ")[1] for ln in said] == [f"{i:06d}" for i in range(lines)]
        assert peak - baseline < 24 * 2**20, f"server RSS grew by {(peak - baseline) >> 20} MiB"
        assert closeCode(silent) is None  # aborted: no close handshake with a non-reader
        for s in (*socks, wsReader.sock):
            s.close()
        silent.shutdown()


def test_an_ssl_endpoint_serves_https_and_wss(tmp_path: Path) -> None:
    """docs/web.md's self-signed example: the page over https, the chat over wss, and
    the page's own origin is the https one (an http page of the same host is foreign)."""
    key, cert = tmp_path / "web-key.pem", tmp_path / "web-cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", key, "-out", cert, "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    web = f"ssl:0:privateKey={key}:certKey={cert}:interface=127.0.0.1"
    with runTwistd(tmp_path, "--web", web, services=("chat",)) as server:
        server.waitListening("web")
        port = server.port("web")
        context = ssl.create_default_context(cafile=str(cert))
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/", context=context) as page:
            assert b'<script src="chat.js"' in page.read()
        ws = websocket.create_connection(
            f"wss://127.0.0.1:{port}/chat",
            origin=f"https://127.0.0.1:{port}",
            sslopt={"ca_certs": str(cert)},
            timeout=20,
        )
        try:
            receiveUntil(ws, r"^\*\*\* Welcome to netproto chat")
            ws.send("/nick secure")
            assert receiveUntil(ws, "known as")[-1] == "*** guest1 is now known as secure"
        finally:
            ws.shutdown()
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            websocket.create_connection(
                f"wss://127.0.0.1:{port}/chat",
                origin=f"http://127.0.0.1:{port}",
                sslopt={"ca_certs": str(cert)},
                timeout=20,
            )
        assert refused.value.status_code == 403


def test_http_connections_count_against_the_chat_s_caps(tmp_path: Path) -> None:
    """--chat-max-per-address caps HTTP connections too (idle ones that never become
    members cannot take every socket); one that becomes a WebSocket leaves that count
    for the chat's, where browser and telnet members share the cap."""
    with runTwistd(tmp_path, "--chat-max-per-address", "3", services=("chat", "web")) as server:
        port = server.port("web")
        with contextlib.ExitStack() as stack:
            idle = [
                stack.enter_context(socket.create_connection(("127.0.0.1", port))) for _ in range(3)
            ]
            refused = stack.enter_context(socket.create_connection(("127.0.0.1", port)))
            refused.settimeout(20)
            assert refused.recv(1) == b"", "the fourth HTTP connection is closed at once"
            server.waitLog(r"web: refused 127\.0\.0\.1:\d+: 3 HTTP connections from 127\.0\.0\.1")
            idle[0].sendall(upgradeRequest(port, origin(port)))
            assert idle[0].recv(4096).startswith(b"HTTP/1.1 101")
            for _ in range(2):  # each an HTTP slot, then a member
                member = RawSocketMember(port)
                stack.callback(member.sock.close)
                member.receiveUntil(r"^\*\*\* Welcome")
            full = RawSocketMember(port)
            stack.callback(full.sock.close)
            assert full.receiveUntil(r"^!")[-1] == "! server full"


def test_browser_members_are_swept_by_the_chat_s_idle_timeout(tmp_path: Path) -> None:
    """A browser member is a chat member: --chat-idle-timeout dismisses a quiet one as
    it does a telnet member (the error line, then the close), logged as such."""
    with runTwistd(tmp_path, "--chat-idle-timeout", "1", services=("chat", "web")) as server:
        ws = connectSocket(server.port("web"))
        try:
            quiet = welcomedAs(receiveUntil(ws, r"Welcome"))
            assert receiveUntil(ws, r"^! idle")[-1] == "! idle for 1 s; disconnecting"
            assert closeCode(ws) == 1000
            server.waitLog(rf"\({quiet}\) disconnected: idle timeout")
        finally:
            ws.shutdown()
