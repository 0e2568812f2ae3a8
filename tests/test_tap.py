"""``twistd netproto`` options and the service tree, in process."""

from __future__ import annotations

import resource
from pathlib import Path

import pytest
from twisted.application.service import IServiceCollection
from twisted.python import usage

from netproto.framing import DEFAULT_FRAME_TIMEOUT, DEFAULT_IDLE_TIMEOUT, FramedFactory
from netproto.runtime import raiseFileLimit
from netproto.services import ListeningService, ServiceError, parseDatagramEndpoint
from netproto.tap import Options, ServerOptions, defaultDataDir, makeService


def parse(tmp_path: Path, *args: str) -> ServerOptions:
    options = Options()
    options.parseOptions(["--data-dir", str(tmp_path / "data"), *args])
    return options


def test_defaults_are_the_contract(tmp_path: Path) -> None:
    """With no options: chat 8000, exec 8001, upload 8002, loopback only; examples off."""
    options = parse(tmp_path)
    assert options.endpoints == [
        ("chat", "tcp:8000:interface=127.0.0.1"),
        ("exec", "tcp:8001:interface=127.0.0.1"),
        ("upload", "tcp:8002:interface=127.0.0.1"),
    ]
    assert options.context is not None
    assert options.context.uploadDir == tmp_path / "data" / "uploads"
    assert options.context.authMethods == ("token",)


def test_none_disables_a_service(tmp_path: Path) -> None:
    options = parse(tmp_path, "--chat", "none", "--upload", "none")
    assert [name for name, _ in options.endpoints] == ["exec"]


def test_service_adds_plugins_with_or_without_endpoint(tmp_path: Path) -> None:
    """--service NAME=ENDPOINT, or NAME alone for the plugin's default endpoint; repeatable."""
    options = parse(
        tmp_path, "--exec", "none", "--service", "echo=tcp:0", "--service", "dgram-echo"
    )
    assert ("echo", "tcp:0") in options.endpoints
    assert ("dgram-echo", "udp:8007:interface=127.0.0.1") in options.endpoints


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--service", "nosuch=tcp:0"], "no service named 'nosuch'"),
        (["--chat", "tcp:notaport"], "chat endpoint"),
        (["--exec", "bogus:1"], "exec endpoint"),
        (["--service", "dgram-echo=tcp:9"], "dgram-echo endpoint"),
        (["--users", "/nonexistent/users"], "cannot read users file"),
        (["--frame-timeout", "-1"], "not a finite number"),
        (["--idle-timeout", "soon"], "idle-timeout|soon"),
    ],
)
def test_mistakes_are_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    """A bad option is one clear UsageError (twistd prints it, no traceback)."""
    with pytest.raises(usage.UsageError, match=message):
        parse(tmp_path, *args)


def test_list_services_prints_and_exits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse(tmp_path, "--list-services")
    assert info.value.code == 0
    out = capsys.readouterr().out
    for name in ("chat", "exec", "upload", "echo", "dgram-echo"):
        assert name in out


def test_services_contribute_their_options(tmp_path: Path) -> None:
    """A plugin's optParameters appear as twistd netproto options and reach the context."""
    options = parse(tmp_path, "--echo-max-line", "99")
    assert options.context is not None
    assert options.context.options["echo-max-line"] == 99


def test_frame_and_idle_timeouts_reach_the_framed_services(tmp_path: Path) -> None:
    """--frame-timeout and --idle-timeout are global options every framed factory reads;
    their defaults are the documented ones, and 0 (off) is accepted."""
    options = parse(tmp_path, "--frame-timeout", "2.5", "--idle-timeout", "0")
    assert options.context is not None
    factory = FramedFactory(options.context)
    assert (factory.frameTimeout, factory.idleTimeout) == (2.5, 0.0)
    defaults = parse(tmp_path)
    assert defaults.context is not None
    factory = FramedFactory(defaults.context)
    assert (factory.frameTimeout, factory.idleTimeout) == (
        DEFAULT_FRAME_TIMEOUT,
        DEFAULT_IDLE_TIMEOUT,
    )


def test_makeService_builds_one_listener_per_endpoint(tmp_path: Path) -> None:
    options = parse(tmp_path, "--service", "echo=tcp:0")
    top = makeService(options)
    assert IServiceCollection.providedBy(top)
    children = list(top)
    assert all(isinstance(c, ListeningService) for c in children)
    assert [c.service.name for c in children] == ["chat", "exec", "upload", "echo"]


def test_data_dir_resolution() -> None:
    """$NETPROTO_HOME, then $XDG_DATA_HOME/netproto, then ~/.local/share/netproto."""
    assert defaultDataDir({"NETPROTO_HOME": "/a", "XDG_DATA_HOME": "/b"}) == Path("/a")
    assert defaultDataDir({"XDG_DATA_HOME": "/b"}) == Path("/b/netproto")
    assert defaultDataDir({}) == Path.home() / ".local" / "share" / "netproto"


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("udp:9000", (9000, "")),
        ("udp:0:interface=127.0.0.1", (0, "127.0.0.1")),
        ("udp:port=53", (53, "")),
    ],
)
def test_datagram_endpoints(text: str, parsed: tuple[int, str]) -> None:
    assert parseDatagramEndpoint(text) == parsed


@pytest.mark.parametrize("text", ["tcp:9000", "udp:", "udp:x", "udp:1:backlog=5", "udp:70000"])
def test_bad_datagram_endpoints(text: str) -> None:
    with pytest.raises(ServiceError):
        parseDatagramEndpoint(text)


def test_file_limit_is_raised_to_the_hard_limit() -> None:
    """Every client is a descriptor: the server lifts its soft limit as far as it may."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        limit = raiseFileLimit()
        assert limit == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert hard in (limit, resource.RLIM_INFINITY)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
