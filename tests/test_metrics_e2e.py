"""``twistd -n netproto --metrics``: a real server, real traffic, a real scrape.

The scrape is checked twice: by ``promtool check metrics`` (Prometheus's own
linter, as an operator's CI would) and against what the test did.
"""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import urllib.error
import urllib.request
from contextlib import closing
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.adversarial.outside import readUntil
from tests.programs import required
from tests.support import BlockingFramed, Twistd, runTwistd, waitUntil

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(server: Twistd, accept: str = "text/plain") -> str:
    url = f"http://127.0.0.1:{server.port('metrics')}/metrics"
    request = urllib.request.Request(url, headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith(accept)
        text: str = response.read().decode()
        return text


def samples(text: str) -> Samples:
    """Every sample, by (name, sorted labels)."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def run(conn: BlockingFramed, argv: list[str]) -> dict[str, object]:
    """Run ``argv`` on an exec connection; its ``X`` payload."""
    conn.sendJSON(b"R", {"argv": argv})
    while True:
        frame = conn.recv()
        assert frame is not None, "exec closed the connection"
        if frame[0] == b"X":
            result: dict[str, object] = json.loads(frame[1])
            return result
        assert frame[0] in b"K12", frame


def put(conn: BlockingFramed, name: str, data: bytes) -> None:
    conn.sendJSON(b"P", {"name": name, "size": len(data)})
    assert conn.recvJSON(b"K") == {"offset": 0}
    conn.send(b"D", data)
    conn.sendJSON(b"F", {"sha256": hashlib.sha256(data).hexdigest()})
    assert conn.recvJSON(b"K")["size"] == len(data)


def get(conn: BlockingFramed, name: str, offset: int) -> bytes:
    """Download ``name`` from ``offset`` (PROTOCOL.md section 6)."""
    conn.sendJSON(b"G", {"name": name, "offset": offset})
    assert conn.recvJSON(b"K")["offset"] == offset
    data = b""
    while (frame := conn.recv()) is not None and frame[0] == b"D":
        data += frame[1]
    assert frame is not None and frame[0] == b"F", frame
    return data


def test_a_scrape_during_traffic_passes_promtool_and_counts_what_happened(
    tmp_path: Path,
) -> None:
    """Chat lines, two commands (one fails), two uploads (one refused), a
    download, a failed login: each appears in the scrape with the right value, labelled by service,
    while a chat member is still connected; promtool accepts the exposition."""
    with runTwistd(tmp_path, "--metrics", "tcp:0:interface=127.0.0.1") as server:
        assert "metrics" in server.addresses
        token = (tmp_path / "home" / "token").read_text().strip()
        lines = [b"hello", b"/nick alice", b"/join #ops", b"a message for the room"]
        with socket.create_connection(("127.0.0.1", server.port("chat")), timeout=10) as chat:
            readUntil(chat, b"/help")
            chat.sendall(b"".join(line + b"\r\n" for line in lines))
            readUntil(chat, b"joined #ops")

            with closing(BlockingFramed.connect(server.port("exec"))) as exec_:
                exec_.login(token, service="exec")
                assert run(exec_, ["true"])["code"] == 0
                assert run(exec_, ["false"])["code"] == 1
            with closing(BlockingFramed.connect(server.port("upload"))) as upload:
                upload.login(token, service="upload")
                put(upload, "one.txt", b"x" * 1000)
                put(upload, "two.bin", b"y" * 2345)
                upload.sendJSON(b"P", {"name": "../escape", "size": 1})
                assert upload.recvJSON(b"E")["code"] == "invalid-name"
                assert get(upload, "two.bin", 345) == b"y" * 2000
            with closing(BlockingFramed.connect(server.port("exec"))) as intruder:
                intruder.recvJSON(b"H")
                intruder.sendJSON(b"A", {"token": "not the token"})
                assert intruder.recvJSON(b"E")["code"] == "auth-failed"

            def settled() -> Samples | None:
                # The authenticated sessions' ends are logged as their sockets close.
                found = samples(scrape(server))
                closed = value(found, "netproto_connections_open", service="exec") == 0
                read = value(found, "netproto_chat_lines_total", service="chat") == len(lines)
                return found if closed and read else None

            found = waitUntil(settled, timeout=20)
            assert found is not None
            text = scrape(server)
            # Prometheus asks for OpenMetrics when it can: the same numbers, its ending.
            assert scrape(server, "application/openmetrics-text").endswith("# EOF\n")
            with pytest.raises(urllib.error.HTTPError, match="404"):
                urllib.request.urlopen(f"http://127.0.0.1:{server.port('metrics')}/", timeout=10)

        checked = subprocess.run(
            [required("promtool", "prometheus"), "check", "metrics"],
            input=text.encode(),
            capture_output=True,
            timeout=30,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr

    assert value(found, "netproto_connections_total", service="chat") == 1
    assert value(found, "netproto_connections_open", service="chat") == 1
    assert value(found, "netproto_chat_members", service="chat") == 1
    assert value(found, "netproto_chat_rooms", service="chat") == 1  # #lobby emptied
    assert value(found, "netproto_chat_lines_total", service="chat") == len(lines)
    assert value(found, "netproto_chat_line_bytes_total", service="chat") == sum(map(len, lines))
    assert value(found, "netproto_connections_total", service="exec") == 2
    assert value(found, "netproto_exec_commands_started_total", service="exec") == 2
    assert value(found, "netproto_exec_commands_running", service="exec") == 0
    exits = "netproto_exec_command_exits_total"
    assert value(found, exits, service="exec", outcome="success") == 1
    assert value(found, exits, service="exec", outcome="failure") == 1
    assert value(found, "netproto_auth_failures_total", service="exec") == 1
    assert value(found, "netproto_refusals_total", service="exec", code="auth-failed") == 1
    assert value(found, "netproto_connections_total", service="upload") == 1
    assert value(found, "netproto_uploads_total", service="upload") == 2
    assert value(found, "netproto_upload_bytes_total", service="upload") == 1000 + 2345
    assert value(found, "netproto_downloads_total", service="upload") == 1
    assert value(found, "netproto_download_bytes_total", service="upload") == 2000
    failures = "netproto_upload_failures_total"
    assert value(found, failures, service="upload", reason="invalid-name") == 1
    assert value(found, "netproto_build_info", version=__import__("netproto").__version__) == 1
    assert value(found, "process_open_fds") > 0  # the server's own, from /proc
    # No label a client chooses: no peer, user, nick or file name anywhere.
    for text_ in ("alice", "127.0.0.1", "one.txt", "../escape"):
        assert text_ not in text
