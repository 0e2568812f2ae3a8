"""Service plugins: discovery, the conformance check, third-party plugins, the examples."""

from __future__ import annotations

import dataclasses
import importlib
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

from netproto.chat.config import OPTIONS, ChatConfig
from netproto.exec.policy import ExecPolicy
from netproto.services import INetprotoService, discoverServices
from netproto.testing import checkService, defaultOptions, makeContext
from netproto.upload.server import makeFactory as makeUploadFactory
from tests.support import NETPROTO, TWISTD, Twistd, runTwistd, twistdEnv

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
        services["web"],
    ]
    assert services["dgram-echo"].kind == "datagram"


@pytest.mark.parametrize("name", ["chat", "exec", "upload", "web", "echo", "dgram-echo"])
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
    """The extending tutorial's plugins, copied into a fresh directory outside netproto."""
    root = tmp_path / "site"
    shutil.copytree(EXAMPLES, root, ignore=shutil.ignore_patterns("test_*", "__pycache__"))
    assert not (root / "netproto" / "__init__.py").exists()
    return root


def serving(tmp: Path, site: Path, name: str) -> AbstractContextManager[Twistd]:
    """twistd serving the plugin ``name`` found in ``site`` on a loopback port."""
    return runTwistd(
        tmp,
        "--service",
        f"{name}=tcp:0:interface=127.0.0.1",
        services=(name,),
        env=pythonPath(site),
    )


def pythonPath(*first: Path) -> dict[str, str]:
    """``PYTHONPATH`` with ``first`` before this checkout (which the suite puts first)."""
    return {"PYTHONPATH": os.pathsep.join([*map(str, first), os.environ["PYTHONPATH"]])}


@pytest.mark.e2e
def test_third_party_plugin_is_listed_and_served(tmp_path: Path, thirdParty: Path) -> None:
    """A module dropped in netproto/plugins/ of a directory on PYTHONPATH: listed, then served."""
    env = twistdEnv(tmp_path, pythonPath(thirdParty))
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
    with serving(tmp_path, thirdParty, "shout") as server:
        with socket.create_connection(("127.0.0.1", server.port("shout")), timeout=10) as s:
            s.sendall(b"make some noise\n")
            assert _readLine(s) == b"MAKE SOME NOISE\r\n"


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("tests", "count"), [("test_shout.py", 2), ("test_shout_framed.py", 7), ("test_greet.py", 3)]
)
def test_extending_tutorial_tests_pass(tmp_path: Path, tests: str, count: int) -> None:
    """The tests shown in docs/extending.md run green, as a plugin author would run them."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLES / tests)],
        env=twistdEnv(tmp_path, pythonPath(EXAMPLES)),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{count} passed" in result.stdout


@pytest.mark.e2e
def test_a_plugin_outside_netproto_brings_a_server_and_a_subcommand(
    tmp_path: Path, thirdParty: Path
) -> None:
    """The greet example, dropped on PYTHONPATH: twistd serves it, ``netproto --help``
    lists ``greet``, and ``netproto greet NAME`` talks to the server."""
    env = twistdEnv(tmp_path, pythonPath(thirdParty))
    listed = subprocess.run(
        [NETPROTO, "--help"], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    assert "greet NAME on a greet server" in listed.stdout
    with serving(tmp_path, thirdParty, "greet") as server:
        greeted = subprocess.run(
            [NETPROTO, "greet", "--server", f"127.0.0.1:{server.port('greet')}", "Ada"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
    assert (greeted.returncode, greeted.stdout, greeted.stderr) == (0, "hello, Ada\n", "")


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


# -- each service's defaults are written once --------------------------------------


@pytest.fixture
def reloaded() -> Iterator[Callable[[ModuleType], ModuleType]]:
    """Reloads a plugin module (to see what it reads at import), and reloads it
    again afterwards, once the test's monkeypatches are undone."""
    modules: list[ModuleType] = []

    def reload(module: ModuleType) -> ModuleType:
        modules.append(module)
        return importlib.reload(module)

    yield reload
    for module in modules:
        importlib.reload(module)


def test_chat_option_defaults_are_the_chat_config_s(
    monkeypatch: pytest.MonkeyPatch, reloaded: Callable[[ModuleType], ModuleType]
) -> None:
    """The chat plugin declares ChatConfig's defaults, not copies of them."""
    import netproto.chat.config
    import netproto.chat.plugin

    other = {f.name: getattr(ChatConfig(), f.name) * 2 + 1 for f in dataclasses.fields(ChatConfig)}
    monkeypatch.setattr(netproto.chat.config, "ChatConfig", lambda: SimpleNamespace(**other))
    declared = defaultOptions(reloaded(netproto.chat.plugin).service)
    monkeypatch.undo()
    assert declared.pop("chat-redis") is None  # not a limit: where the cluster's Redis is
    assert declared == {option: other[attr] for attr, (option, _) in OPTIONS.items()}
    assert ChatConfig.fromOptions(declared) == ChatConfig(**{a: other[a] for a in OPTIONS})


def test_exec_option_defaults_are_the_policy_s(
    monkeypatch: pytest.MonkeyPatch, reloaded: Callable[[ModuleType], ModuleType]
) -> None:
    """The exec plugin declares the policy's constants, and the policy made from
    no options uses the same ones."""
    import netproto.exec.plugin
    import netproto.exec.policy

    monkeypatch.setattr(netproto.exec.policy, "DEFAULT_MAX_PROCS", 3)
    monkeypatch.setattr(netproto.exec.policy, "DEFAULT_KILL_GRACE", 0.5)
    declared = defaultOptions(reloaded(netproto.exec.plugin).service)
    assert (declared["exec-max-procs"], declared["exec-kill-grace"]) == (3, 0.5)
    policy = ExecPolicy.fromOptions({})
    assert (policy.maxProcs, policy.killGrace) == (3, 0.5)


def test_upload_reads_its_defaults_from_its_declaration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Options not given take the upload plugin's declared defaults, not copies."""
    import netproto.upload.plugin

    declared = netproto.upload.plugin.service
    changed = {"upload-resume-ttl": 60.0, "upload-min-free": 7, "upload-max-per-user": 2}
    parameters = [[p[0], p[1], changed.get(p[0], p[2]), *p[3:]] for p in declared.optParameters]
    monkeypatch.setattr(
        netproto.upload.plugin, "service", dataclasses.replace(declared, optParameters=parameters)
    )
    factory = makeUploadFactory(makeContext(tmp_path))
    factory.store.close()
    assert (factory.store.resumeTTL, factory.store.minFree, factory.quotas.maxParallel) == (
        60.0,
        7,
        2,
    )
