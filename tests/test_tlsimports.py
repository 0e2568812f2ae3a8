"""pyOpenSSL kept out of processes that do not use TLS (netproto.tlsimports).

The saving is memory and start-up (docs/performance.md); what is tested here
is the promise behind it: kept out exactly when nothing asked for TLS, kept
in otherwise, and Twisted still working either way.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from netproto.client.cli import buildParser, clientCommands
from netproto.client.connection import usesTLS
from netproto.client.pinning import KnownServers
from netproto.services import LazyService
from netproto.tap import Options
from netproto.tls import loadOrCreate, parseFingerprint
from netproto.tlsimports import REASON, plainEndpoint
from tests.support import runTwistd


def fresh(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``code`` in a new interpreter, with this checkout first on its path."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parent.parent,
        check=False,
    )


@pytest.mark.parametrize(
    ("description", "plain"),
    [
        ("tcp:8000:interface=127.0.0.1", True),
        ("TCP6:8000", True),
        ("unix:/run/netproto/chat.sock", True),
        ("systemd:domain=INET:index=0", True),
        ("udp:8007", True),
        ("ssl:8443:privateKey=key.pem", False),
        ("tls:example.org:443", False),
        ("le:/srv/certs:tcp:443", False),
    ],
)
def test_plain_endpoints_are_told_from_the_others(description: str, plain: bool) -> None:
    assert plainEndpoint(description) is plain


def test_kept_out_twisted_runs_without_it_and_refuses_tls_clearly() -> None:
    result = fresh(
        "import sys\n"
        "from netproto.tlsimports import keepOpenSSLOut\n"
        "assert keepOpenSSLOut()\n"
        "from twisted.internet import reactor, endpoints\n"
        "assert 'OpenSSL' not in sys.modules and 'cryptography' not in sys.modules\n"
        "endpoints.serverFromString(reactor, 'tcp:0').listen\n"
        "try:\n"
        "    endpoints.serverFromString(reactor, 'ssl:0:privateKey=k.pem')\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == REASON


def test_too_late_once_twisted_tcp_is_imported() -> None:
    result = fresh(
        "import sys\n"
        "import twisted.internet.tcp\n"
        "from netproto.tlsimports import keepOpenSSLOut\n"
        "print(keepOpenSSLOut(), 'OpenSSL' in sys.modules)\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True"]


def test_the_environment_variable_keeps_it_in() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "from netproto.tlsimports import keepOpenSSLOut as k; print(k())"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"NETPROTO_KEEP_OPENSSL": "1", "PATH": "/usr/bin:/bin"},
        cwd=Path(__file__).parent.parent,
        check=False,
    )
    assert result.stdout.strip() == "False", result.stderr


def serverUses(tmp_path: Path, *argv: str) -> bool:
    """``SSL`` in ``argv`` stands for an ``ssl:`` endpoint with a real certificate."""
    if "SSL" in argv:
        made = loadOrCreate(tmp_path)
        ssl = f"ssl:0:interface=127.0.0.1:privateKey={made.keyPath}:certKey={made.certPath}"
        argv = tuple(ssl if word == "SSL" else word for word in argv)
    options = Options()
    options.parseOptions(["--data-dir", str(tmp_path), *argv])
    return options.usesOpenSSL(options.endpoints)


@pytest.mark.parametrize(
    ("argv", "uses"),
    [
        ((), False),
        (("--metrics", "tcp:0:interface=127.0.0.1", "--service", "echo"), False),
        (("--tls",), True),
        (("--exec", "SSL"), True),
        (("--metrics", "SSL"), True),
        (("--chat-redis", "redis://127.0.0.1:6379"), True),
        # The browser chat builds the same clustered chat, with the telnet chat off.
        (("--chat", "none", "--chat-redis", "redis://127.0.0.1:6379"), True),
    ],
)
def test_the_server_keeps_it_only_when_asked_for_tls(
    tmp_path: Path, argv: tuple[str, ...], uses: bool
) -> None:
    assert serverUses(tmp_path, *argv) is uses


def test_a_service_that_does_not_say_is_assumed_to_use_it(tmp_path: Path) -> None:
    class Mine(Options().__class__):  # type: ignore[misc]
        services = {
            **Options().services,
            "mine": LazyService("mine", "a plugin", "tcp:9999", "mine.build"),
        }

    options = Mine()
    options.parseOptions(["--data-dir", str(tmp_path), "--service", "mine=tcp:0"])
    assert options.usesOpenSSL(options.endpoints)


def clientArgs(tmp_path: Path, *argv: str) -> object:
    known = tmp_path / "known_servers"
    known.touch()
    words = [argv[0], "--known-servers", str(known), *argv[1:]]
    return buildParser(clientCommands(), argv[0]).parse_args(words)


@pytest.mark.parametrize(
    ("argv", "uses"),
    [
        (("ls",), False),
        (("ls", "--server", "example.org:8002"), False),
        (("ls", "--endpoint", "unix:/run/netproto/upload.sock"), False),
        (("ls", "--tls"), True),
        (("ls", "--fingerprint", "ab" * 32), True),
        (("ls", "--endpoint", "tls:example.org:8002"), True),
    ],
)
def test_the_client_keeps_it_only_for_tls(
    tmp_path: Path, argv: tuple[str, ...], uses: bool
) -> None:
    assert usesTLS(clientArgs(tmp_path, *argv)) is uses  # type: ignore[arg-type]


def test_a_pinned_server_is_tls_for_the_client(tmp_path: Path) -> None:
    args = clientArgs(tmp_path, "ls", "--server", "127.0.0.1:8002")
    KnownServers(tmp_path / "known_servers").pin("127.0.0.1:8002", parseFingerprint("ab" * 32))
    assert usesTLS(args)  # type: ignore[arg-type]


def loaded(pid: int, library: str) -> bool:
    return library in Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.slow
def test_twistd_netproto_holds_no_tls_library_unless_asked(tmp_path: Path) -> None:
    """Observed in the running server: cryptography's library mapped, or not."""
    rust = "cryptography/hazmat/bindings/_rust"
    with runTwistd(tmp_path) as server:
        assert not loaded(server.proc.pid, rust), server.log
    with runTwistd(tmp_path, "--tls") as server:
        assert loaded(server.proc.pid, rust), server.log
