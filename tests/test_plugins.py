"""Service plugins: discovery, the conformance check, third-party plugins, the examples."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from netproto.services import INetprotoService, discoverServices
from netproto.testing import checkService
from tests.support import TWISTD, runTwistd, twistdEnv

EXAMPLES = Path(__file__).parent.parent / "docs" / "examples"


def test_builtins_are_discovered_like_any_plugin() -> None:
    """chat, exec, upload and the two examples come from getPlugins, not a hard-coded list."""
    services = discoverServices()
    assert {"chat", "exec", "upload", "echo", "dgram-echo"} <= set(services)
    assert all(INetprotoService.providedBy(s) for s in services.values())
    assert [s for s in services.values() if s.enabledByDefault] == [
        services["chat"],
        services["exec"],
        services["upload"],
    ]
    assert services["dgram-echo"].kind == "datagram"


@pytest.mark.parametrize("name", ["chat", "exec", "upload", "echo", "dgram-echo"])
def test_builtin_services_pass_the_conformance_check(name: str, tmp_path: Path) -> None:
    """Every shipped service passes the check plugin authors run on theirs."""
    checkService(discoverServices()[name], tmp_path)


def test_conformance_check_catches_a_broken_plugin(tmp_path: Path) -> None:
    """The check fails loudly on a plugin that breaks the contract."""
    from netproto.services import LazyService

    broken = LazyService(
        name="Bad Name",
        description="",
        defaultEndpoint="tcp:notaport",
        builder="netproto.examples.echo.makeEchoFactory",
        optParameters=[["unprefixed", None, 1, "x", int]],
    )
    with pytest.raises(AssertionError) as info:
        checkService(broken, tmp_path)
    text = str(info.value)
    for problem in ("name", "description is empty", "default endpoint", "'unprefixed'"):
        assert problem in text


@pytest.fixture
def thirdParty(tmp_path: Path) -> Path:
    """The extending tutorial's plugin, copied into a fresh directory outside netproto."""
    root = tmp_path / "site"
    shutil.copytree(EXAMPLES, root, ignore=shutil.ignore_patterns("test_*", "__pycache__"))
    assert not (root / "netproto" / "__init__.py").exists()
    return root


@pytest.mark.e2e
def test_third_party_plugin_is_listed_and_served(tmp_path: Path, thirdParty: Path) -> None:
    """A module dropped in netproto/plugins/ of a directory on PYTHONPATH: listed, then served."""
    env = twistdEnv(tmp_path, {"PYTHONPATH": str(thirdParty)})
    listed = subprocess.run(
        [TWISTD, "netproto", "--list-services"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "shout" in listed.stdout
    assert "--service shout=ENDPOINT" in listed.stdout
    with runTwistd(
        tmp_path,
        "--service",
        "shout=tcp:0:interface=127.0.0.1",
        services=("shout",),
        env={"PYTHONPATH": str(thirdParty)},
    ) as server:
        with socket.create_connection(("127.0.0.1", server.port("shout")), timeout=10) as s:
            s.sendall(b"make some noise\n")
            assert _readLine(s) == b"MAKE SOME NOISE\r\n"


@pytest.mark.e2e
def test_extending_tutorial_tests_pass(tmp_path: Path) -> None:
    """The tests shown in docs/extending.md run green, as a plugin author would run them."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(EXAMPLES / "test_shout.py"),
        ],
        env=twistdEnv(tmp_path, {"PYTHONPATH": str(EXAMPLES)}),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


@pytest.mark.e2e
def test_echo_and_dgram_echo_over_real_sockets(tmp_path: Path) -> None:
    """The example plugins, asked for with --service, answer over TCP and UDP."""
    with runTwistd(
        tmp_path,
        "--service",
        "echo=tcp:0:interface=127.0.0.1",
        "--service",
        "dgram-echo=udp:0:interface=127.0.0.1",
        services=("echo", "dgram-echo"),
    ) as server:
        with socket.create_connection(("127.0.0.1", server.port("echo")), timeout=10) as s:
            s.sendall(b"one\r\ntwo\n")
            assert _readLine(s) == b"one\r\n"
            assert _readLine(s) == b"two\r\n"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.settimeout(10)
            u.sendto(b"\x00ping\xff", ("127.0.0.1", server.port("dgram-echo")))
            data, _ = u.recvfrom(100)
            assert data == b"\x00ping\xff"


_pending: dict[int, bytes] = {}


def _readLine(s: socket.socket) -> bytes:
    buf = _pending.pop(s.fileno(), b"")
    while b"\n" not in buf:
        chunk = s.recv(4096)
        assert chunk, f"connection closed; got {buf!r}"
        buf += chunk
    line, rest = buf.split(b"\n", 1)
    _pending[s.fileno()] = rest
    return line + b"\n"
