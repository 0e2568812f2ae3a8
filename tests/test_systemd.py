"""systemd: the unit files of ``contrib/`` pass ``systemd-analyze verify``, and
``twistd netproto`` serves on sockets passed by socket activation.

Both run without a running systemd (as in a container or CI): ``systemd-analyze
verify`` loads unit files offline, and ``systemd-socket-activate`` (systemd's
own test tool) passes listening sockets as systemd does, with ``LISTEN_FDS``,
``LISTEN_PID`` and ``LISTEN_FDNAMES``.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from tests.support import NETPROTO, TWISTD, Twistd, twistdEnv

pytestmark = pytest.mark.e2e

CONTRIB = Path(__file__).resolve().parent.parent / "contrib"
UNITS = ("netproto.service", "netproto-activated.service", "netproto-activated.socket")
#: Where the units expect netproto's virtualenv; the test points them at this one.
INSTALLED_TWISTD = "/opt/netproto/bin/twistd"


def verify(directory: Path, *names: str) -> str:
    """What ``systemd-analyze verify`` says of the units (empty when all is well)."""
    result = subprocess.run(
        ["systemd-analyze", "verify", *(str(directory / name) for name in names)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    said = (result.stdout + result.stderr).strip()
    return said if said or result.returncode == 0 else f"exit status {result.returncode}"


def installed(tmp_path: Path) -> Path:
    """The units of contrib/ as an installation would have them: twistd exists."""
    for name in UNITS:
        text = (CONTRIB / name).read_text()
        (tmp_path / name).write_text(text.replace(INSTALLED_TWISTD, TWISTD))
    return tmp_path


def test_the_units_verify_and_are_hardened(tmp_path: Path) -> None:
    """Every unit loads without a warning; the services run as a dedicated user with
    the hardening the issue asks for, their state in the StateDirectory."""
    units = installed(tmp_path)
    assert verify(units, *UNITS) == ""
    for name in ("netproto.service", "netproto-activated.service"):
        lines = set((CONTRIB / name).read_text().splitlines())
        for expected in (
            "User=netproto",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "PrivateTmp=yes",
            "StateDirectory=netproto",
            "Environment=NETPROTO_HOME=%S/netproto",
        ):
            assert expected in lines, (name, expected)
        assert (
            f"ExecStart={INSTALLED_TWISTD} --nodaemon --pidfile= --logfile=- netproto \\" in lines
        )


def test_verify_catches_a_mistake_here(tmp_path: Path) -> None:
    """The check above can fail in this environment: a misspelt key and a bad value
    are reported (systemd-analyze exits 0 for them, hence the empty-output rule)."""
    units = installed(tmp_path)
    service = units / "netproto.service"
    text = service.read_text().replace("ProtectSystem=strict", "ProtectSystm=strict")
    service.write_text(text.replace("NoNewPrivileges=yes", "NoNewPrivileges=perhaps"))
    said = verify(units, "netproto.service")
    assert "ProtectSystm" in said and "perhaps" in said


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def readLine(sock: socket.socket, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = sock.recv(4096)
        assert chunk, f"closed before {marker!r}; got {data!r}"
        data += chunk
    return data


@pytest.mark.slow
def test_socket_activation_serves_chat_and_exec_over_tls(tmp_path: Path) -> None:
    """systemd-socket-activate binds two ports and starts twistd at the first
    connection with ``systemd:domain=INET:index=N`` endpoints: chat answers that
    first connection, and exec, wrapped in TLS by --tls, runs a command for the client."""
    chat, execPort = freePort(), freePort()
    home = tmp_path / "home"
    home.mkdir()
    env = twistdEnv(home)
    server = Twistd(
        [
            *("systemd-socket-activate", "--fdname=chat:exec"),
            *(f"-E{name}={env[name]}" for name in ("PYTHONPATH", "NETPROTO_HOME", "PATH")),
            *("-l", f"127.0.0.1:{chat}", "-l", f"127.0.0.1:{execPort}"),
            *(TWISTD, "-n", "--pidfile=", "--logfile=-", "netproto", "--tls"),
            *("--chat", "systemd:domain=INET:index=0", "--exec", "systemd:domain=INET:index=1"),
            *("--upload", "none", "--web", "none"),
        ],
        env,
        tmp_path,
    )
    try:
        server.waitLog(rf"Listening on 127.0.0.1:{execPort} as 4")
        with socket.create_connection(("127.0.0.1", chat), timeout=30) as sock:
            assert b"Welcome" in readLine(sock, b"/help")
        server.waitListening("chat", "exec")
        assert f"exec listening on 127.0.0.1:{execPort} (systemd:domain=INET:index=1, TLS)" in (
            server.log
        )
        result = subprocess.run(
            [NETPROTO, "exec", "--server", f"127.0.0.1:{execPort}", "--tls", "--", "echo", "on"],
            env=twistdEnv(home, {"XDG_CONFIG_HOME": str(tmp_path / "config")}),
            capture_output=True,
            timeout=60,
        )
        assert (result.returncode, result.stdout) == (0, b"on\n"), result.stderr
    finally:
        server.stop()


def test_an_index_beyond_the_passed_sockets_is_one_line(tmp_path: Path) -> None:
    """A systemd endpoint without its socket: a usage error, not a traceback."""
    result = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "--logfile=-", "netproto", "--chat", "none",
         "--web", "none", "--upload", "none", "--exec", "systemd:domain=INET:index=3"],
        env=twistdEnv(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "no such socket passed by systemd" in output and "Traceback" not in output
