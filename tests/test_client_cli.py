"""The bundled client's shared parts: options, credentials, passwd, error reporting."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from netproto.auth import readUsersFile, verifyPassword
from netproto.client.cli import clientCommands, main
from netproto.client.connection import credentials, parseServer
from netproto.client.framed import ClientError
from netproto.services import discoverServices
from tests.support import NETPROTO, runTwistd, twistdEnv


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("example.org", ("example.org", 8001)),
        ("example.org:9", ("example.org", 9)),
        ("[::1]:7", ("::1", 7)),
        ("[::1]", ("::1", 8001)),
        ("::1", ("::1", 8001)),
    ],
)
def test_server_option_forms(text: str, parsed: tuple[str, int]) -> None:
    assert parseServer(text, 8001) == parsed


@pytest.mark.parametrize("text", ["host:port", "host:0", "host:70000", ":80"])
def test_bad_server_option_is_a_clear_error(text: str) -> None:
    with pytest.raises(ClientError, match="--server"):
        parseServer(text, 8001)


def args(**kw: object) -> argparse.Namespace:
    base: dict[str, object] = {"user": None, "token_file": None}
    base.update(kw)
    return argparse.Namespace(**base)


def test_token_comes_from_file_env_or_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--token-file first, then NETPROTO_TOKEN, then DATA_DIR/token."""
    monkeypatch.setenv("NETPROTO_HOME", str(tmp_path))
    monkeypatch.delenv("NETPROTO_TOKEN", raising=False)
    (tmp_path / "token").write_text("from-data-dir\n")
    assert credentials(args()) == {"token": "from-data-dir"}
    monkeypatch.setenv("NETPROTO_TOKEN", "from-env")
    assert credentials(args()) == {"token": "from-env"}
    given = tmp_path / "given"
    given.write_text("from-file")
    assert credentials(args(token_file=given)) == {"token": "from-file"}


def test_missing_token_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NETPROTO_HOME", str(tmp_path / "nothing"))
    monkeypatch.delenv("NETPROTO_TOKEN", raising=False)
    with pytest.raises(ClientError, match="--token-file"):
        credentials(args())


def test_password_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NETPROTO_PASSWORD", "pw")
    assert credentials(args(user="alice")) == {"user": "alice", "password": "pw"}


@pytest.mark.e2e
def test_passwd_writes_a_users_file(tmp_path: Path) -> None:
    """``netproto passwd FILE NAME`` with NETPROTO_PASSWORD: a 0600 file the server accepts."""
    users = tmp_path / "users"
    env = dict(os.environ, NETPROTO_PASSWORD="correct horse")
    result = subprocess.run(
        [NETPROTO, "passwd", str(users), "alice"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert verifyPassword("correct horse", readUsersFile(users)["alice"])
    assert users.stat().st_mode & 0o077 == 0


@pytest.mark.e2e
def test_connection_refused_is_one_line(tmp_path: Path) -> None:
    """No server: one line on stderr, non-zero exit, no traceback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = subprocess.run(
        [NETPROTO, "exec", "--server", f"127.0.0.1:{port}", "--", "true"],
        env=twistdEnv(tmp_path, {"NETPROTO_TOKEN": "x" * 30}),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 255
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1
    assert "cannot connect" in result.stderr


@pytest.mark.e2e
def test_wrong_port_and_wrong_token_are_explained(tmp_path: Path) -> None:
    """The client says which service a port serves, and when the token is refused."""
    with runTwistd(tmp_path, services=("exec", "upload")) as server:
        env = twistdEnv(tmp_path / "home")
        wrong = subprocess.run(
            [NETPROTO, "exec", "--server", f"127.0.0.1:{server.port('upload')}", "--", "true"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert wrong.returncode == 255
        assert "serves 'upload', not 'exec'" in wrong.stderr
        bad = subprocess.run(
            [NETPROTO, "exec", "--server", f"127.0.0.1:{server.port('exec')}", "--", "true"],
            env=dict(env, NETPROTO_TOKEN="not-the-token-at-all-0000"),
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert bad.returncode == 255
        assert "auth-failed" in bad.stderr
        assert "Traceback" not in bad.stderr


@pytest.mark.e2e
def test_an_upload_refused_as_existing_names_overwrite(tmp_path: Path) -> None:
    """A file that exists on the server: the refusal tells the user about --overwrite."""
    source = tmp_path / "notes.txt"
    source.write_text("twice")
    with runTwistd(tmp_path, services=("upload",)) as server:
        command = [NETPROTO, "upload", "-q", "--server", f"127.0.0.1:{server.port('upload')}"]
        env = twistdEnv(tmp_path / "home")
        for expected in (0, 1):
            result = subprocess.run(
                [*command, str(source)],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                stdin=subprocess.DEVNULL,
            )
            assert result.returncode == expected, result.stderr
    assert result.stderr.count("\n") == 1
    assert "exists" in result.stderr
    assert "--overwrite" in result.stderr


def test_netproto_help_reads_only_the_declarations() -> None:
    """``netproto --help`` lists every service's subcommand without importing any
    subcommand's module; running one imports that one only."""
    probe = (
        "import sys\n"
        "from netproto.client import cli\n"
        "try:\n"
        "    cli.main(sys.argv[1:])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in sys.modules if m.endswith('.client') and 'netproto.' in m))\n"
    )
    listing = subprocess.run(
        [sys.executable, "-c", probe, "--help"], capture_output=True, text=True, timeout=60
    )
    assert "chat" in listing.stdout
    assert "upload files and directories" in listing.stdout
    assert listing.stdout.splitlines()[-1] == "['netproto.client']"
    one = subprocess.run(
        [sys.executable, "-c", probe, "upload", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "--overwrite" in one.stdout
    assert one.stdout.splitlines()[-1] == "['netproto.client', 'netproto.upload.client']"


@pytest.mark.parametrize("command", [[], ["chat"], ["exec"], ["upload"], ["passwd"]])
def test_help_is_plain_text(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Help is read in a terminal: no reST markup (double backticks) in it."""
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    out = capsys.readouterr().out
    assert "usage: netproto" in out
    assert "``" not in out


def test_the_services_bring_their_subcommands() -> None:
    """chat, exec and upload declare their subcommands in their plugins, as a
    third-party service would; the client lists none by hand."""
    commands = clientCommands()
    assert list(commands) == ["chat", "exec", "upload", "ls", "download"]
    for name in ("chat", "exec", "upload"):
        assert discoverServices()[name].client is commands[name]
        assert commands[name].module == f"netproto.{name}.client"
    # upload also brings the files commands (PROTOCOL.md section 6)
    for name in ("ls", "download"):
        assert discoverServices()["upload"].moreClients[name] is commands[name]
