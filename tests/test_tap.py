"""``twistd netproto`` options and the service tree, in process."""

from __future__ import annotations

import dataclasses
import resource
from pathlib import Path

import pytest
from twisted.application.service import IServiceCollection
from twisted.internet import endpoints
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.python import usage

from netproto.framing import DEFAULT_FRAME_TIMEOUT, DEFAULT_IDLE_TIMEOUT, FramedFactory
from netproto.options import defaultDataDir
from netproto.runtime import raiseFileLimit
from netproto.services import (
    ListeningService,
    ServerContext,
    ServiceError,
    discoverServices,
    parseDatagramEndpoint,
)
from netproto.tap import Options, ServerOptions, makeService
from netproto.testing import makeContext
from netproto.upload.server import makeFactory as makeUploadFactory


def parse(tmp_path: Path, *args: str) -> ServerOptions:
    options = Options()
    options.parseOptions(["--data-dir", str(tmp_path / "data"), *args])
    return options


def test_defaults_are_the_contract(tmp_path: Path) -> None:
    """With no options: chat 8000, exec 8001, upload 8002, web 8080, loopback only; examples off."""
    options = parse(tmp_path)
    assert options.endpoints == [
        ("chat", "tcp:8000:interface=127.0.0.1"),
        ("exec", "tcp:8001:interface=127.0.0.1"),
        ("upload", "tcp:8002:interface=127.0.0.1"),
        ("web", "tcp:8080:interface=127.0.0.1"),
    ]
    assert options.context is not None
    assert options.context.authMethods == ("token",)


def test_none_disables_a_service(tmp_path: Path) -> None:
    options = parse(tmp_path, "--chat", "none", "--upload", "none", "--web", "none")
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
    assert [c.service.name for c in children] == ["chat", "exec", "upload", "web", "echo"]


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


def test_the_upload_directory_is_upload_s_own_option(tmp_path: Path) -> None:
    """--upload-dir is declared by the upload plugin, not twistd netproto, and the
    server context carries nothing of one service's."""
    assert "uploadDir" not in {f.name for f in dataclasses.fields(ServerContext)}
    declared = [p[0] for p in discoverServices()["upload"].optParameters]
    assert "upload-dir" in declared
    assert "upload-dir=" not in ServerOptions().longOpt
    for args, where in (
        (["--upload-dir", str(tmp_path / "elsewhere")], tmp_path / "elsewhere"),
        ([], tmp_path / "data" / "uploads"),
    ):
        context = parse(tmp_path, *args).context
        assert context is not None
        makeUploadFactory(context).store.close()
        assert where.is_dir()


class LateEndpoint:
    """A server endpoint whose ``listen`` answers when the test says; the
    started service listening on it, and the late failures it reported."""

    def __init__(self, tmp: Path) -> None:
        self.waiting: Deferred[object] = Deferred()
        self.reasons: list[str] = []
        self.listener = ListeningService(
            discoverServices()["echo"], "later:", makeContext(tmp), fatal=self.reasons.append
        )

    def listen(self, factory: object) -> Deferred[object]:
        return self.waiting


@pytest.fixture
def late(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LateEndpoint:
    endpoint = LateEndpoint(tmp_path)
    monkeypatch.setattr(endpoints, "serverFromString", lambda reactor, description: endpoint)
    endpoint.listener.startService()
    return endpoint


def test_a_late_listen_failure_is_reported_not_dropped(late: LateEndpoint) -> None:
    """A listen Deferred that fails after startup reaches ``fatal`` as one line."""
    assert late.reasons == []
    late.waiting.errback(CannotListenError("host", 7, OSError("gone")))
    assert late.reasons == [
        "netproto: cannot serve echo on later:: Couldn't listen on host:7: gone."
    ]
    late.listener.stopService()


def test_stopping_while_listening_is_pending_is_no_failure(late: LateEndpoint) -> None:
    """Stopped before its endpoint answered, the service cancels the listen quietly."""
    late.listener.stopService()
    assert late.waiting.called
    assert late.reasons == []
