"""``--log-format json``: one JSON object a line, whatever a client sends.

Units on :func:`netproto.jsonlog.prepared` and the observer, then a real
``twistd -n netproto --log-format json`` fed hostile input: every line of its
log must parse as JSON, and every event of a connection name its peer and
service.
"""

from __future__ import annotations

import hashlib
import io
import json
import socket
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from twisted.application.service import Application, MultiService
from twisted.logger import ILogObserver, Logger, LogLevel, eventFromJSON, formatEvent
from twisted.python import usage
from twisted.python.logfile import LogFile

from netproto.jsonlog import (
    MAX_FIELD,
    checkTwistdOptions,
    destination,
    jsonLogged,
    jsonLogObserver,
)
from netproto.tap import Options
from tests.adversarial.outside import readUntil
from tests.support import BlockingFramed, runTwistd

HOSTILE = "line one\nfake: 2026-01-01 [netproto#critical] forged\r\x1b[2J\u2028\u2029\x00end"


def logged(**fields: Any) -> list[str]:
    """What the JSON observer writes for one event with ``fields``, split in lines."""
    out = io.StringIO()
    log = Logger(
        namespace="netproto.exec.protocol.ExecProtocol", observer=jsonLogObserver(out, {"exec"})
    )
    log.emit(LogLevel.info, "exec: {peer} ({user}) started {pid}: {command}", **fields)
    return out.getvalue().splitlines()


def test_a_hostile_field_stays_on_one_line_and_reads_back_unchanged() -> None:
    """Newlines, carriage returns, escapes, U+2028/2029 and NUL in a field: one line,
    whose JSON gives back exactly what was logged."""
    lines = logged(peer="127.0.0.1:1", user="u", pid=1, command=HOSTILE)
    assert len(lines) == 1
    assert "\u2028" not in lines[0] and "\x1b" not in lines[0]
    record = json.loads(lines[0])
    assert record["command"] == HOSTILE
    assert record["text"] == f"exec: 127.0.0.1:1 (u) started 1: {HOSTILE}"
    assert record["level"] == "info"
    assert formatEvent(eventFromJSON(lines[0])) == record["text"]


def test_long_fields_are_cut_with_the_count_of_what_was_cut() -> None:
    lines = logged(peer="p", user="u", pid=1, command="x" * 100_000)
    record = json.loads(lines[0])
    assert record["command"] == "x" * MAX_FIELD + f"... ({100_000 - MAX_FIELD} more characters)"
    assert len(lines[0]) < 6 * MAX_FIELD + 2000  # the field, its flattened copies, the text


def test_events_without_a_service_are_named_from_their_namespace() -> None:
    """exec's own lines (and chat's, upload's) carry no service field; the JSON
    record names it from the logger's namespace; other namespaces get none."""
    assert json.loads(logged(peer="p", user="u", pid=1, command="c")[0])["service"] == "exec"
    out = io.StringIO()
    Logger(namespace="twisted.internet.base", observer=jsonLogObserver(out, {"exec"})).info("x")
    assert "service" not in json.loads(out.getvalue())


def test_json_logs_become_the_application_observer_as_in_a_tac_file() -> None:
    """twistd starts logging to the application's ILogObserver component: the
    service tree sets it when twistd puts it under its application."""
    assert ILogObserver.providedBy(jsonLogObserver(io.StringIO(), ()))  # not wrapped as legacy
    application = Application("netproto")
    tree = jsonLogged(MultiService(), {"logfile": "-", "nodaemon": 1}, {"chat"})
    tree.setServiceParent(application)
    assert application.getComponent(ILogObserver) is tree.observer


def test_the_json_log_goes_where_twistd_would_have_written_the_text(tmp_path: Path) -> None:
    """--logfile=- or --nodaemon without --logfile: standard output; --logfile
    FILE: that file, rotated by size as twistd rotates its own."""
    assert destination({"logfile": "-", "nodaemon": 1}) is sys.stdout
    assert destination({"logfile": None, "nodaemon": 1}) is sys.stdout
    logFile = destination({"logfile": str(tmp_path / "netproto.jsonl"), "nodaemon": 0})
    try:
        assert isinstance(logFile, LogFile) and logFile.rotateLength == 1_000_000
        assert logFile.path == str(tmp_path / "netproto.jsonl")
    finally:
        logFile.close()


@pytest.mark.parametrize(
    "twistdOptions", [{"syslog": 1}, {"logger": "mylogging.observer"}], ids=["syslog", "logger"]
)
def test_json_with_another_observer_is_refused_in_one_line(twistdOptions: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="--log-format json"):
        checkTwistdOptions(twistdOptions)


def test_log_format_takes_text_or_json() -> None:
    assert Options()["log-format"] == "text"
    with pytest.raises(usage.UsageError, match="'xml' is not one of text, json"):
        Options().parseOptions(["--log-format", "xml"])


# -- a real server -------------------------------------------------------------------------


def run(conn: BlockingFramed, argv: list[str]) -> None:
    conn.sendJSON(b"R", {"argv": argv})
    while (frame := conn.recv()) is not None and frame[0] != b"X":
        pass


@pytest.mark.slow
@pytest.mark.e2e
def test_every_line_of_a_json_log_parses_whatever_clients_send(tmp_path: Path) -> None:
    """Hostile clients: a command line with newlines, escapes and 100 KB of
    arguments; a 100 KB program name (its refusal quotes it); a forged token
    full of newlines; an upload name with U+2028, 4,000 bytes long; chat lines
    too long and with escapes. Every line of the log is one JSON object; every
    event that names a peer names its service too; the refusal is cut."""
    with runTwistd(tmp_path, "--log-format", "json") as server:
        token = (tmp_path / "home" / "token").read_text().strip()
        with socket.create_connection(("127.0.0.1", server.port("chat")), timeout=10) as chat:
            readUntil(chat, b"/help")
            chat.sendall(f"/nick {HOSTILE}\r\n{HOSTILE}\r\n".encode() + b"y" * 100_000 + b"\r\n")
            readUntil(chat, b"line too long")
        with closing(BlockingFramed.connect(server.port("exec"))) as conn:
            conn.login(token, service="exec")
            run(conn, ["printf", "%s", HOSTILE.replace("\x00", ""), "z" * 100_000])
            conn.sendJSON(b"R", {"argv": ["/no/such/" + "q" * 100_000]})
            assert conn.recvJSON(b"E")["code"] == "not-found"  # quoting all 100 KB
        with closing(BlockingFramed.connect(server.port("exec"))) as conn:
            conn.recvJSON(b"H")
            conn.sendJSON(b"A", {"token": HOSTILE * 100})
            assert conn.recvJSON(b"E")["code"] in ("auth-failed", "frame-too-large")
        name = "/".join(["\u2028" + "n" * 240] * 16)
        with closing(BlockingFramed.connect(server.port("upload"))) as conn:
            conn.login(token, service="upload")
            conn.sendJSON(b"P", {"name": name, "size": 1})
            assert conn.recvJSON(b"K") == {"offset": 0}
            conn.send(b"D", b"!")
            conn.sendJSON(b"F", {"sha256": hashlib.sha256(b"!").hexdigest()})
            conn.recvJSON(b"K")
        server.waitLog(r"stored \\u2028")
        server.waitLog(r'"text": "exec: \S+ disconnected')
        lines = list(server.lines)

    records = [json.loads(line) for line in lines]  # every line, or this raises
    assert all(isinstance(r, dict) and "log_time" in r and "text" in r for r in records)
    commands = [r["command"] for r in records if "command" in r]
    # The command arrives whole, its control characters escaped by exec itself
    # (so the text log stays one line a record too).
    assert any(c.startswith("printf %s line one\\nfake:") and "\\u2028" in c for c in commands), (
        commands
    )
    stored = [
        r for r in records if r.get("log_format", "").startswith("upload: {peer} ({user}) stored")
    ]
    assert len(stored) == 1 and stored[0]["name"] == name  # 4,000 bytes: whole
    (refusal,) = [r for r in records if r.get("code") == "not-found"]
    assert refusal["message"].startswith("no such program: /no/such/qqq")
    assert refusal["message"].endswith(" more characters)")
    for record in records:
        if "peer" in record:
            assert record.get("service") in ("chat", "exec", "upload"), record
        assert all(len(v) <= MAX_FIELD + 40 for v in record.values() if isinstance(v, str)), record
