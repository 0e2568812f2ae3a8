"""The framed services' shared contract on a raw socket, against a real twistd netproto."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import BlockingFramed, Twistd, runTwistd

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Twistd]:
    with runTwistd(tmp_path_factory.mktemp("wire"), services=("exec", "upload")) as s:
        yield s


def tokenOf(server: Twistd) -> str:
    for line in server.lines:
        if "token in " in line:
            path = line.split("token in ", 1)[1].split(" ")[0]
            return Path(path).read_text().strip()
    raise AssertionError("no token path in the log")


def expectErrorAndClose(conn: BlockingFramed, code: str) -> None:
    frame = conn.recv()
    assert frame is not None, "closed without an E frame"
    kind, payload = frame
    assert kind == b"E", frame
    error = json.loads(payload)
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert conn.closedByPeer()


@pytest.mark.parametrize("service", ["exec", "upload"])
def test_hello_comes_first(server: Twistd, service: str) -> None:
    conn = BlockingFramed.connect(server.port(service))
    try:
        hello = conn.recvJSON(b"H")
        assert hello["service"] == service
        assert hello["protocol"] == 1
        assert hello["auth"] == ["token"]
        assert hello["max_frame"] == 256 * 1024 + 1
        # PROTOCOL.md section 2: the optional parts offered (sections 5, 6).
        assert isinstance(hello["features"], list)
    finally:
        conn.close()


@pytest.mark.parametrize("service", ["exec", "upload"])
@pytest.mark.parametrize(
    ("send", "code"),
    [
        (lambda c: c.sendJSON(b"R", {"argv": ["true"]}), "auth-required"),
        (lambda c: c.sendJSON(b"A", {"token": "wrong"}), "auth-failed"),
        (lambda c: c.send(b"A", b"{not json"), "bad-frame"),
        (lambda c: c.sock.sendall(struct.pack(">I", 2**31)), "frame-too-large"),
        (lambda c: c.sock.sendall(struct.pack(">I", 0)), "bad-frame"),
    ],
    ids=["no-auth", "bad-token", "malformed", "2^31", "zero-length"],
)
def test_bad_peers_get_their_code_and_are_closed(
    server: Twistd, service: str, send: object, code: str
) -> None:
    """Each mistake gets its PROTOCOL.md code, the connection closes, others are served."""
    bystander = BlockingFramed.connect(server.port(service))
    bystander.login(tokenOf(server), service)
    conn = BlockingFramed.connect(server.port(service))
    try:
        conn.recvJSON(b"H")
        send(conn)  # type: ignore[operator]
        expectErrorAndClose(conn, code)
    finally:
        conn.close()
    fresh = BlockingFramed.connect(server.port(service))
    try:
        fresh.login(tokenOf(server), service)
    finally:
        fresh.close()
        bystander.close()


def test_refusals_are_logged_with_the_peer(server: Twistd) -> None:
    conn = BlockingFramed.connect(server.port("exec"))
    conn.recvJSON(b"H")
    conn.sendJSON(b"A", {"token": "wrong"})
    expectErrorAndClose(conn, "auth-failed")
    port = conn.sock.getsockname()[1]
    conn.close()
    server.waitLog(rf"authentication failed from 127\.0\.0\.1:{port}")
