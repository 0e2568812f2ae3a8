"""End to end: ``twistd netproto`` and ``twist netproto`` as subprocesses, from anywhere."""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from tests.support import BIN, TWISTD, BlockingFramed, Twistd, runTwistd, twistdEnv

pytestmark = pytest.mark.e2e

#: twistd exits 0 after SIGTERM; Twisted >= 25 re-raises the signal once shut
#: down cleanly, so the status is "killed by SIGTERM".
CLEAN_EXIT = (0, -signal.SIGTERM)


def test_twistd_help_lists_netproto_from_any_directory(tmp_path: Path) -> None:
    """After the install, twistd finds the dropin wherever it is run (here: an empty dir)."""
    result = subprocess.run(
        [TWISTD, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True
    )
    assert "netproto" in result.stdout
    assert "chat, remote exec and verified file upload" in result.stdout


def test_twistd_netproto_help_shows_service_options(tmp_path: Path) -> None:
    result = subprocess.run(
        [TWISTD, "netproto", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    for option in ("--chat=", "--exec=", "--upload=", "--data-dir=", "--users=", "--service="):
        assert option in result.stdout


def twistdOnce(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``twistd -n netproto ARGS`` expected to stop by itself (a refusal); its output."""
    return subprocess.run(
        [TWISTD, "-n", "--pidfile=", "--logfile=-", "netproto", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=twistdEnv(tmp_path),
    )


def test_bad_option_is_one_line_and_exit_1(tmp_path: Path) -> None:
    """A mistake on the command line: a clear message, no traceback, non-zero exit."""
    result = twistdOnce(tmp_path, "--chat", "tcp:notaport")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "chat endpoint 'tcp:notaport'" in output
    assert "Traceback" not in output


def test_port_in_use_fails_startup_cleanly(tmp_path: Path) -> None:
    """A port someone else holds: twistd exits non-zero and says why."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = twistdOnce(
            tmp_path,
            *("--chat", f"tcp:{port}:interface=127.0.0.1", "--exec", "none", "--upload", "none"),
            *("--web", "none"),
        )
    assert result.returncode != 0
    assert "Address already in use" in result.stdout + result.stderr


def test_defaults_serve_all_four_ports(tmp_path: Path) -> None:
    """``twistd -n netproto`` with no options serves chat, exec and upload on 8000-8002
    and the web chat on 8080."""
    server = Twistd(
        [TWISTD, "-n", "--pidfile=", "--logfile=-", "netproto"], twistdEnv(tmp_path), cwd=tmp_path
    )
    try:
        server.waitListening("chat", "exec", "upload", "web")
        assert server.addresses == {
            "chat": "127.0.0.1:8000",
            "exec": "127.0.0.1:8001",
            "upload": "127.0.0.1:8002",
            "web": "127.0.0.1:8080",
        }
        with socket.create_connection(("127.0.0.1", 8000), timeout=10) as s:
            assert b"Welcome to netproto chat" in s.recv(4096)
        for port, service in ((8001, "exec"), (8002, "upload")):
            conn = BlockingFramed.connect(port)
            try:
                assert conn.recvJSON(b"H")["service"] == service
            finally:
                conn.close()
    finally:
        assert server.stop() in CLEAN_EXIT


def test_token_is_made_at_first_start_and_its_value_never_logged(tmp_path: Path) -> None:
    """DATA_DIR/token, mode 0600, its path in the log, its value nowhere in the log."""
    with runTwistd(tmp_path, services=("exec",)) as server:
        path = tmp_path / "home" / "token"
        server.waitLog("token in ")
        assert str(path) in server.log
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        value = path.read_text().strip()
        assert value not in server.log
    with runTwistd(tmp_path, services=("exec",)):
        assert path.read_text().strip() == value


def test_twist_runner_works_too(tmp_path: Path) -> None:
    """The newer ``twist`` runner finds and runs netproto as well."""
    with runTwistd(
        tmp_path, services=("chat",), runner=(str(BIN / "twist"), "--log-format=text")
    ) as server:
        with socket.create_connection(("127.0.0.1", server.port("chat")), timeout=10) as s:
            assert b"Welcome to netproto chat" in s.recv(4096)


def test_shuts_down_cleanly_on_sigterm(tmp_path: Path) -> None:
    with runTwistd(tmp_path, services=("chat", "exec", "upload")) as server:
        code = server.stop()
    assert code in CLEAN_EXIT
    assert "Server Shut Down" in server.log or "Main loop terminated" in server.log
    assert "Traceback" not in server.log


def test_dropin_cache_is_not_committed() -> None:
    root = Path(__file__).parent.parent
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=root, capture_output=True, text=True, check=False
    ).stdout
    assert "dropin.cache" not in tracked
    assert not (root / "twisted" / "plugins" / "__init__.py").exists()
    assert not (root / "twisted" / "__init__.py").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--upload-max-size", "-5"], "'-5' is negative"),
        (["--exec-max-procs", "0"], "'0' is not at least 1"),
        (["--chat-rate", "fast"], "Parameter type enforcement failed"),
        (["--exec-kill-grace", "0"], "cannot serve exec: "),
    ],
)
def test_bad_service_option_values_are_one_line(
    tmp_path: Path, args: list[str], message: str
) -> None:
    """A service option out of range stops twistd with one line, never a traceback."""
    endpoints = (f"--{s}=tcp:0:interface=127.0.0.1" for s in ("chat", "exec", "upload", "web"))
    result = twistdOnce(tmp_path, *endpoints, *args)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert message in output
    assert "Traceback" not in output


#: A Twisted endpoint plugin for the test below: ``later:REASON`` listens on
#: nothing and fails a moment after startup, as an endpoint that first resolves
#: a name or asks a system service would.
LATE_ENDPOINT = """
from twisted.internet import defer, error, reactor
from twisted.internet.interfaces import IStreamServerEndpointStringParser
from twisted.plugin import IPlugin
from zope.interface import implementer


class Later:
    def __init__(self, reason):
        self.reason = reason

    def listen(self, factory):
        d = defer.Deferred()
        reactor.callLater(0.2, d.errback, error.CannotListenError("later", 0, self.reason))
        return d


@implementer(IPlugin, IStreamServerEndpointStringParser)
class LaterParser:
    prefix = "later"

    def parseStreamServer(self, reactor, reason):
        return Later(reason)


later = LaterParser()
"""


def test_a_listen_failure_after_startup_is_one_line_and_exit_1(tmp_path: Path) -> None:
    """An endpoint whose listen fails once the reactor runs: twistd logs the reason in
    one line, stops, and exits with status 1 (as for a failure at startup)."""
    plugins = tmp_path / "site" / "twisted" / "plugins"
    plugins.mkdir(parents=True)
    (plugins / "later_endpoint.py").write_text(LATE_ENDPOINT)
    result = subprocess.run(
        [
            *(TWISTD, "-n", "--pidfile=", "--logfile=-", "netproto"),
            *("--chat", "later:no such socket", "--exec", "none", "--upload", "none"),
            *("--web", "none"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=twistdEnv(tmp_path, {"PYTHONPATH": f"{tmp_path / 'site'}:{os.environ['PYTHONPATH']}"}),
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    reasons = [line for line in output.splitlines() if "cannot serve chat" in line]
    assert len(reasons) == 1, output
    assert reasons[0].endswith(
        "netproto: cannot serve chat on later:no such socket: "
        + ("Couldn't listen on later:0: no such socket.")
    ), reasons[0]
    assert "Traceback" not in output


def test_the_lint_configuration_points_at_files_in_the_repository() -> None:
    """Every file ruff.toml names as a reason is one a reader of the checkout can open."""
    root = Path(__file__).parent.parent
    comments = [line.partition("#")[2] for line in (root / "ruff.toml").read_text().splitlines()]
    named = re.findall(r"[\w./-]+\.(?:md|py)\b", "\n".join(comments))
    assert named
    assert [name for name in named if not (root / name).exists()] == []
