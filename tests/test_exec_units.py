"""exec without processes or sockets: the policy, the ProcessProtocol bridge (its
calls made by hand, time on a Clock) and the connection on a StringTransport."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import pytest
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import alsoProvides

from netproto.errors import ProtocolError
from netproto.exec.client import buildRequest, configure, exitStatus
from netproto.exec.policy import DEFAULT_PATH, ExecPolicy
from netproto.exec.process import CommandProtocol, exitPayload
from netproto.exec.protocol import ClientReading
from netproto.exec.spawn import signalName, signalNumber
from tests.execkit import Conn, FakeProcess, drain, policyFor

# -- policy ------------------------------------------------------------------------


def makeProgram(path: Path) -> Path:
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def refusal(policy: ExecPolicy, request: Mapping[str, Any]) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        policy.prepare(request, user="alice", peer="127.0.0.1:1")
    return info.value


def test_argv_program_is_resolved_on_the_commands_PATH(tmp_path: Path) -> None:
    """A bare name is looked up on the command's PATH before anything starts;
    argv is kept as given, the executable is the file found."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    prog = makeProgram(bin_ / "hello")
    policy = policyFor(tmp_path, **{"exec-path": f"{bin_}:/usr/bin:/bin"})
    prepared = policy.prepare({"argv": ["hello", "x y"]}, user="alice", peer="p")
    assert prepared.executable == str(prog)
    assert prepared.argv == ("hello", "x y")
    assert prepared.cwd == str(tmp_path)
    assert not prepared.stdin and prepared.timeout is None and not prepared.shell


def test_shell_request_runs_bin_sh_dash_c(tmp_path: Path) -> None:
    """{"shell": TEXT} is /bin/sh -c TEXT."""
    prepared = policyFor(tmp_path).prepare({"shell": "echo hi | wc"}, user="a", peer="p")
    assert prepared.argv == ("/bin/sh", "-c", "echo hi | wc")
    assert prepared.executable == "/bin/sh"
    assert prepared.shell


@pytest.mark.parametrize(
    "request_",
    [
        {},
        {"argv": ["ls"], "shell": "ls"},
        {"argv": []},
        {"argv": "ls"},
        {"argv": ["ls", 1]},
        {"argv": [""]},
        {"argv": ["ls\0"]},
        {"shell": ""},
        {"shell": 3},
        {"argv": ["ls"], "stdin": "yes"},
        {"argv": ["ls"], "timeout": 0},
        {"argv": ["ls"], "timeout": -1},
        {"argv": ["ls"], "timeout": True},
        {"argv": ["ls"], "timeout": "5"},
        {"argv": ["ls"], "env": ["A=1"]},
        {"argv": ["ls"], "env": {"A=B": "1"}},
        {"argv": ["ls"], "env": {"A": 1}},
        {"argv": ["ls"], "env": {"": "1"}},
        {"argv": ["ls"], "cwd": ""},
        {"argv": ["ls"], "cwd": 5},
        {"argv": ["x" * 200_000]},
    ],
)
def test_malformed_requests_are_bad_frames(tmp_path: Path, request_: dict[str, Any]) -> None:
    """A request that breaks PROTOCOL.md's shape is bad-frame (fatal), never a crash."""
    error = refusal(policyFor(tmp_path), request_)
    assert error.code == "bad-frame"
    assert error.fatal


def test_missing_program_or_directory_is_not_found(tmp_path: Path) -> None:
    """No such program (by name or by path) and no such cwd: not-found, not fatal."""
    policy = policyFor(tmp_path)
    for request in (
        {"argv": ["no-such-program-here"]},
        {"argv": [str(tmp_path / "missing")]},
        {"argv": ["./missing"]},
        {"argv": ["true"], "cwd": "no/such/dir"},
    ):
        error = refusal(policy, request)
        assert error.code == "not-found", request
        assert not error.fatal


def test_non_executable_file_is_not_allowed(tmp_path: Path) -> None:
    """A file that exists but cannot be executed is refused, not started."""
    data = tmp_path / "data.txt"
    data.write_text("x")
    assert refusal(policyFor(tmp_path), {"argv": ["./data.txt"]}).code == "not-allowed"


def test_relative_program_and_cwd_start_from_the_exec_cwd(tmp_path: Path) -> None:
    """./prog and a relative cwd are taken from --exec-cwd."""
    sub = tmp_path / "sub"
    sub.mkdir()
    prog = makeProgram(sub / "prog")
    policy = policyFor(tmp_path)
    prepared = policy.prepare({"argv": ["./prog"], "cwd": "sub"}, user="a", peer="p")
    assert prepared.executable == str(prog)
    assert prepared.cwd == str(sub)


def test_allow_list_admits_names_and_paths_only(tmp_path: Path) -> None:
    """--exec-allow: a name allows the program found under that name on PATH, a path
    allows that file; anything else, the shell included, is not-allowed."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    makeProgram(bin_ / "good")
    other = makeProgram(bin_ / "other")
    policy = policyFor(
        tmp_path, **{"exec-allow": f"good,{other}", "exec-path": f"{bin_}:/usr/bin:/bin"}
    )
    for ok in (["good"], [str(bin_ / "good")], ["other"], [str(other)]):
        assert policy.prepare({"argv": ok}, user="a", peer="p").executable.startswith(str(bin_))
    assert refusal(policy, {"argv": ["true"]}).code == "not-allowed"
    assert refusal(policy, {"shell": "good"}).code == "not-allowed"


def test_allow_list_does_not_follow_symlinks(tmp_path: Path) -> None:
    """With a multi-call binary (busybox style), allowing `ls` must not allow `sh`,
    although both are symlinks to the same file."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    multi = makeProgram(bin_ / "multi")
    (bin_ / "ls").symlink_to(multi)
    (bin_ / "sh").symlink_to(multi)
    policy = policyFor(tmp_path, **{"exec-allow": "ls", "exec-path": str(bin_)})
    assert policy.prepare({"argv": ["ls"]}, user="a", peer="p").executable == str(bin_ / "ls")
    assert refusal(policy, {"argv": ["sh"]}).code == "not-allowed"
    assert refusal(policy, {"argv": [str(multi)]}).code == "not-allowed"


def test_shell_allowed_when_sh_is_allowed(tmp_path: Path) -> None:
    """A shell request is the program /bin/sh to the allow list."""
    policy = policyFor(tmp_path, **{"exec-allow": "/bin/sh"})
    assert policy.prepare({"shell": "true"}, user="a", peer="p").shell


@pytest.mark.parametrize(
    "request_",
    [
        {"argv": ["true"], "timeout": 10**400},
        {"argv": ["true"], "timeout": 1e300},
        {"argv": ["true"], "timeout": float("inf")},
        {"argv": ["true"], "timeout": float("nan")},
        {"shell": "echo \ud800"},
        {"argv": ["true", "\udfff"]},
        {"argv": ["true"], "env": {"A": "\ud800"}},
        {"argv": ["true"], "env": {"\ud800": "a"}},
        {"argv": ["true"], "cwd": "\ud800"},
    ],
)
def test_absurd_numbers_and_unencodable_strings_are_bad_frames(
    tmp_path: Path, request_: dict[str, Any]
) -> None:
    """The policy refuses, on its own, what the JSON decoder may let through:
    a 400-digit timeout was an OverflowError, a lone surrogate a
    UnicodeEncodeError, both E internal; infinity would never time out."""
    assert refusal(policyFor(tmp_path), request_).code == "bad-frame"


def test_no_shell_refuses_shell_requests(tmp_path: Path) -> None:
    """--exec-no-shell: shell requests are not-allowed, argv requests still run."""
    policy = policyFor(tmp_path, **{"exec-no-shell": True})
    assert refusal(policy, {"shell": "true"}).code == "not-allowed"
    assert policy.prepare({"argv": ["true"]}, user="a", peer="p").argv == ("true",)


def test_timeout_is_capped_by_the_server_maximum(tmp_path: Path) -> None:
    """The client's timeout applies up to --exec-timeout, which also applies when
    the client gives none; 0 means no server maximum."""
    capped = policyFor(tmp_path, **{"exec-timeout": 10.0})
    free = policyFor(tmp_path, **{"exec-timeout": 0})

    def timeout(policy: ExecPolicy, request: dict[str, Any]) -> float | None:
        return policy.prepare({"argv": ["true"], **request}, user="a", peer="p").timeout

    assert timeout(capped, {"timeout": 3}) == 3.0
    assert timeout(capped, {"timeout": 30}) == 10.0
    assert timeout(capped, {}) == 10.0
    assert timeout(free, {"timeout": 1000.5}) == 1000.5
    assert timeout(free, {}) is None


def test_environment_is_clean_plus_what_is_passed_and_accepted(tmp_path: Path) -> None:
    """Commands do not inherit the server's environment: they get the documented
    clean set, the --exec-env-pass variables, the client's accepted names and
    NETPROTO_USER/NETPROTO_PEER, which a client cannot set."""
    policy = ExecPolicy.fromOptions(
        {"exec-cwd": str(tmp_path), "exec-env-pass": "TZ"},
        environ={"HOME": "/home/srv", "TZ": "UTC", "SECRET": "s3cret", "LANG": "fr_FR.UTF-8"},
    )
    env = policy.prepare(
        {"argv": ["true"], "env": {"FOO": "bar", "LANG": "C"}}, user="alice", peer="10.0.0.1:5"
    ).env
    assert "SECRET" not in env
    assert env["PATH"] == DEFAULT_PATH
    assert env["HOME"] == "/home/srv"
    assert env["TZ"] == "UTC"
    assert env["FOO"] == "bar"
    assert env["LANG"] == "C"
    assert env["SHELL"] == "/bin/sh"
    assert env["USER"] == env["LOGNAME"]
    assert env["NETPROTO_USER"] == "alice"
    assert env["NETPROTO_PEER"] == "10.0.0.1:5"
    error = refusal(policy, {"argv": ["true"], "env": {"NETPROTO_USER": "root"}})
    assert error.code == "not-allowed"


def test_allow_list_narrows_what_a_client_may_set(tmp_path: Path) -> None:
    """With --exec-allow, by default only LANG, LC_* and TZ may be set: a client
    LD_PRELOAD or PATH would get around the list. --exec-env-accept widens it."""
    restricted = policyFor(tmp_path, **{"exec-allow": "true"})
    assert (
        restricted.prepare(
            {"argv": ["true"], "env": {"LC_ALL": "C", "TZ": "UTC"}}, user="a", peer="p"
        ).env["LC_ALL"]
        == "C"
    )
    for name in ("LD_PRELOAD", "PATH", "FOO"):
        assert refusal(restricted, {"argv": ["true"], "env": {name: "x"}}).code == "not-allowed"
    widened = policyFor(tmp_path, **{"exec-allow": "true", "exec-env-accept": "APP_*"})
    assert widened.prepare({"argv": ["true"], "env": {"APP_X": "1"}}, user="a", peer="p")
    assert refusal(widened, {"argv": ["true"], "env": {"LANG": "C"}}).code == "not-allowed"


def test_operator_mistakes_are_reported_as_such(tmp_path: Path) -> None:
    """Bad --exec-* values are a ValueError with the option's name, not a traceback later."""
    for options, word in (
        ({"exec-cwd": str(tmp_path / "nope")}, "--exec-cwd"),
        ({"exec-cwd": "relative"}, "--exec-cwd"),
        ({"exec-cwd": str(tmp_path), "exec-allow": "bin/ls"}, "--exec-allow"),
        ({"exec-cwd": str(tmp_path), "exec-max-procs": 0}, "--exec-max-procs"),
    ):
        with pytest.raises(ValueError, match=word):
            ExecPolicy.fromOptions(options, environ={})


def test_signal_names_round_trip() -> None:
    """S frame names map to signal numbers and X frame names back."""
    assert signalName(signalNumber("INT")) == "INT"
    assert signalName(signalNumber("KILL")) == "KILL"
    with pytest.raises(ValueError, match="unknown signal"):
        signalNumber("NOPE")


# -- the bridge ----------------------------------------------------------------------


class FakeSink:
    """Records the frames a command sends."""

    def __init__(self) -> None:
        self.frames: list[tuple[bytes, Any]] = []
        self.ended: list[CommandProtocol] = []

    def sendFrame(self, kind: bytes, payload: bytes = b"") -> None:
        # K and X carry JSON; the bridge may encode it itself.
        self.frames.append((kind, json.loads(payload) if kind in (b"K", b"X") else payload))

    def sendJSON(self, kind: bytes, obj: Mapping[str, Any]) -> None:
        self.frames.append((kind, dict(obj)))

    def commandEnded(self, command: CommandProtocol) -> None:
        self.ended.append(command)


def bridge(
    timeout: float | None = None, maxPayload: int = 10
) -> tuple[CommandProtocol, FakeSink, FakeProcess, Clock]:
    sink, process, clock = FakeSink(), FakeProcess(), Clock()
    proto = CommandProtocol(sink, clock, timeout, maxPayload)
    proto.makeConnection(process)
    return proto, sink, process, clock


def test_bridge_sends_K_then_output_on_its_own_stream_then_X() -> None:
    """K with the pid first; stdout as 1 frames and stderr as 2 frames in order;
    X with the exit code once processEnded, and the connection is told."""
    proto, sink, _, _ = bridge()
    proto.outReceived(b"out1")
    proto.errReceived(b"err1")
    proto.outReceived(b"\x00\xff")
    proto.processEnded(Failure(ProcessTerminated(3, None, None)))
    assert sink.frames == [
        (b"K", {"pid": 4242}),
        (b"1", b"out1"),
        (b"2", b"err1"),
        (b"1", b"\x00\xff"),
        (b"X", {"code": 3, "signal": None, "timed_out": False}),
    ]
    assert sink.ended == [proto]


@pytest.mark.parametrize(
    "fields",
    [
        {"code": 0, "signal": None, "timed_out": False},
        {"code": 255, "signal": None, "timed_out": False},
        {"code": None, "signal": "KILL", "timed_out": True},
        {"code": None, "signal": "64", "timed_out": False},
    ],
)
def test_X_payload_is_the_JSON_of_the_exit_fields(fields: dict[str, Any]) -> None:
    """The hand-made X payload is compact JSON that decodes to the exit fields."""
    payload = exitPayload(fields)
    assert json.loads(payload) == fields
    assert payload == json.dumps(fields, separators=(",", ":")).encode()


def test_bridge_splits_chunks_larger_than_a_frame() -> None:
    """No frame payload is longer than the client's max_frame - 1."""
    proto, sink, _, _ = bridge(maxPayload=4)
    proto.outReceived(b"abcdefghij")
    assert sink.frames[1:] == [(b"1", b"abcd"), (b"1", b"efgh"), (b"1", b"ij")]


def test_bridge_reports_success_and_signals() -> None:
    """Exit 0 is code 0; death by a signal is code null and the signal's name."""
    proto, sink, _, _ = bridge()
    proto.processEnded(Failure(ProcessDone(0)))
    assert sink.frames[-1] == (b"X", {"code": 0, "signal": None, "timed_out": False})
    proto, sink, _, _ = bridge()
    proto.processEnded(Failure(ProcessTerminated(None, 9, None)))
    assert sink.frames[-1] == (b"X", {"code": None, "signal": "KILL", "timed_out": False})


def test_bridge_timeout_ends_the_command_and_says_so() -> None:
    """When the timeout passes the process tree is ended and X says timed_out."""
    proto, sink, process, clock = bridge(timeout=5)
    clock.advance(4.9)
    assert ("terminate", None) not in process.calls
    clock.advance(0.2)
    assert ("terminate", None) in process.calls
    proto.processEnded(Failure(ProcessTerminated(None, 15, None)))
    assert sink.frames[-1] == (b"X", {"code": None, "signal": "TERM", "timed_out": True})
    assert not clock.getDelayedCalls()


def test_bridge_cancels_its_timeout_when_the_command_ends_first() -> None:
    """A command that ends in time leaves no timer behind and is not timed_out."""
    proto, sink, process, clock = bridge(timeout=5)
    proto.processEnded(Failure(ProcessDone(0)))
    assert not clock.getDelayedCalls()
    assert sink.frames[-1][1]["timed_out"] is False


def test_bridge_is_a_producer_for_the_client_connection() -> None:
    """Pause and resume go to the process transport; the connection going away
    (stopProducing) ends the command and its timer."""
    proto, _, process, clock = bridge(timeout=5)
    proto.pauseProducing()
    proto.resumeProducing()
    proto.stopProducing()
    assert process.calls == [("pause", None), ("resume", None), ("terminate", None)]
    assert not clock.getDelayedCalls()


def test_bridge_forwards_signals_until_the_end() -> None:
    """S reaches the process transport while the command runs, not after its X."""
    proto, _, process, _ = bridge()
    proto.signal("INT")
    proto.processEnded(Failure(ProcessDone(0)))
    proto.signal("KILL")
    assert process.calls == [("signal", "INT")]


# -- the connection on a StringTransport ---------------------------------------------


def test_second_R_while_running_is_busy_and_the_connection_stays(tmp_path: Path) -> None:
    """An R while a command runs gets E busy; after X the next R runs."""
    c = Conn(tmp_path)
    c.send(b"R", {"argv": ["true"]})
    assert c.frames() == [(b"K", {"pid": 1000})]
    c.send(b"R", {"argv": ["true"]})
    frames = c.frames()
    assert frames[0][0] == b"E" and frames[0][1]["code"] == "busy"
    assert not c.closed
    command, _, _ = c.factory.started[0]
    command.processEnded(Failure(ProcessDone(0)))
    c.send(b"R", {"argv": ["true"]})
    assert c.frames()[-1] == (b"K", {"pid": 1001})


def test_refusals_keep_the_connection_open(tmp_path: Path) -> None:
    """not-found and not-allowed are answered and the connection serves on."""
    c = Conn(tmp_path)
    c.send(b"R", {"argv": ["no-such-program-here"]})
    c.send(b"R", {"argv": ["true"], "env": {"NETPROTO_USER": "x"}})
    assert [f[1]["code"] for f in c.frames()] == ["not-found", "not-allowed"]
    assert not c.closed


def test_stdin_frames_reach_the_command_only_when_asked_for(tmp_path: Path) -> None:
    """0 without "stdin": true is a bad-frame (closed); with it, the bytes go on."""
    c = Conn(tmp_path)
    c.send(b"R", {"argv": ["cat"]})
    c.send(b"0", b"data")
    frames = c.frames()
    assert frames[-1][0] == b"E" and frames[-1][1]["code"] == "bad-frame"
    assert c.closed


def test_stale_frames_after_X_are_dropped(tmp_path: Path) -> None:
    """0, C and S sent before the client saw X are not errors."""
    c = Conn(tmp_path)
    c.send(b"R", {"argv": ["cat"], "stdin": True})
    command, _, _ = c.factory.started[0]
    command.processEnded(Failure(ProcessDone(0)))
    c.frames()
    c.send(b"0", b"late")
    c.send(b"C")
    c.send(b"S", {"signal": "INT"})
    assert c.frames() == []
    assert not c.closed


def test_signal_frames_are_checked_and_forwarded(tmp_path: Path) -> None:
    """S INT reaches the command; an unknown signal is a bad-frame."""
    c = Conn(tmp_path)
    c.send(b"R", {"shell": "sleep 9"})
    c.send(b"S", {"signal": "INT"})
    _, process, _ = c.factory.started[0]
    assert ("signal", "INT") in process.calls
    c.send(b"S", {"signal": "STOP"})
    assert c.frames()[-1][1]["code"] == "bad-frame"


def test_disconnect_ends_the_running_command(tmp_path: Path) -> None:
    """The client going away ends the command's process tree."""
    c = Conn(tmp_path)
    c.send(b"R", {"argv": ["sleep", "9"]})
    _, process, _ = c.factory.started[0]
    c.drop()
    assert ("terminate", None) in process.calls


def test_a_quiet_command_keeps_its_connection_from_the_idle_timeout(tmp_path: Path) -> None:
    """A command that runs without output for longer than the idle timeout
    keeps its connection (the connection is busy); once its X is sent, the
    client has at least a whole idle period (the base notices the end at its
    next look, within one more period) before it is closed."""
    c = Conn(tmp_path, {"idle-timeout": 10})
    c.send(b"R", {"argv": ["sleep", "60"]})
    c.clock.pump([1] * 30)
    assert not c.closed
    command, _, _ = c.factory.started[0]
    command.processEnded(Failure(ProcessDone(0)))
    c.clock.pump([1] * 9)
    assert not c.closed
    c.clock.pump([1] * 12)
    assert c.closed
    assert c.frames()[-1][1]["code"] == "timeout"


def test_a_full_stdin_pipe_says_reading_is_paused(tmp_path: Path) -> None:
    """While the command's stdin pipe is full the client is not read, and the
    framed base is told so (its frame deadline must not run out meanwhile)."""
    c = Conn(tmp_path)
    # iosim's FakeTransport has the producer methods (no-ops: it does not model a
    # paused read) without declaring IPushProducer; what is checked here is the
    # bookkeeping the framed base reads, not the bytes.
    alsoProvides(c.transport, IPushProducer)
    reading = ClientReading(c.proto, c.clock)
    c.proto.reading = reading
    assert not c.proto.readingPaused()
    reading.pauseProducing()
    assert c.proto.readingPaused()
    reading.resumeProducing()
    assert not c.proto.readingPaused()


# -- the client's pieces ---------------------------------------------------------------


def parseClient(*argv: str) -> Any:
    import argparse

    parser = argparse.ArgumentParser()
    configure(parser)
    return parser.parse_args(argv)


def test_client_builds_argv_and_shell_requests() -> None:
    """`--` is optional; --shell joins the words; options become request fields."""
    assert buildRequest(parseClient("--", "ls", "-l")) == {"argv": ["ls", "-l"]}
    assert buildRequest(parseClient("ls", "-l")) == {"argv": ["ls", "-l"]}
    assert buildRequest(
        parseClient(
            "--shell", "--timeout", "2", "--env", "A=1", "--cwd", "/tmp", "--", "ls", "|", "wc"
        )
    ) == {"shell": "ls | wc", "timeout": 2.0, "env": {"A": "1"}, "cwd": "/tmp"}


def test_client_exit_status_follows_ssh() -> None:
    """The code itself; 128+N for signal N; 255 when X says nothing usable."""
    assert exitStatus({"code": 0, "signal": None}) == 0
    assert exitStatus({"code": 42, "signal": None}) == 42
    assert exitStatus({"code": None, "signal": "KILL"}) == 137
    assert exitStatus({"code": None, "signal": "INT"}) == 130
    assert exitStatus({"code": None, "signal": "NOPE"}) == 255
    assert exitStatus({}) == 255


# -- the log of started commands -------------------------------------------------------


def test_started_commands_are_all_logged_in_few_lines() -> None:
    """The first command is logged at once; those within the next second are
    logged together when it ends, or once 100 wait; closing logs the rest."""
    from twisted.logger import ILogObserver, Logger

    from netproto.exec.audit import StartLog

    events: list[dict[str, Any]] = []
    clock = Clock()
    log = StartLog(
        Logger(observer=cast(ILogObserver, events.append)), clock, "127.0.0.1:9", "alice"
    )
    log.started(1, "true")
    assert len(events) == 1 and events[0]["pid"] == 1 and events[0]["peer"] == "127.0.0.1:9"
    for pid in range(2, 5):
        log.started(pid, "echo hi")
    assert len(events) == 1
    clock.advance(1.0)
    assert len(events) == 2 and events[1]["count"] == 3
    assert events[1]["commands"] == "2 'echo hi', 3 'echo hi', 4 'echo hi'"
    for pid in range(5, 5 + StartLog.batch):
        log.started(pid, "true")
    assert len(events) == 3 and events[2]["count"] == StartLog.batch
    log.started(999, "last")
    log.close()
    assert events[-1]["commands"] == "999 'last'"
    assert not clock.getDelayedCalls()


# -- starting processes ----------------------------------------------------------------


def test_spawn_starts_a_session_with_its_cwd_env_and_fds(tmp_path: Path) -> None:
    """A command gets its own session, the cwd, only the given environment, stdin
    from /dev/null, no other open descriptor of ours, and SIGPIPE at its default;
    a missing program or cwd is an OSError."""
    import signal as signals

    from netproto.exec.spawn import spawn

    devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        script = (
            'echo "$$ $(ps -o sid= -p $$) $(pwd) $NAME ${SECRET:-none}"; '
            "ls /proc/$$/fd | tr '\\n' ' '; echo; grep SigIgn /proc/$$/status; cat"
        )
        child = spawn(
            "/bin/sh",
            ["sh", "-c", script],
            env={"PATH": "/usr/bin:/bin", "NAME": "value"},
            cwd=str(tmp_path),
            stdin=False,
            devnull=devnull,
        )
        out = drain(child)
        first, fds, sigign = out.decode().splitlines()
        pid, sid, cwd, name, secret = first.split()
        assert int(pid) == int(sid) == child.pid
        assert (cwd, name, secret) == (str(tmp_path), "value", "none")
        assert set(fds.split()) <= {"0", "1", "2", "3"}  # 3: ls's own directory
        assert int(sigign.split()[1], 16) & (1 << (signals.SIGPIPE - 1)) == 0
        assert child.returncode == 0
        for bad in ({"executable": "/no/such/program"}, {"cwd": str(tmp_path / "nope")}):
            args: dict[str, Any] = {"executable": "/bin/true", "cwd": str(tmp_path)} | bad
            with pytest.raises(FileNotFoundError) as info:
                spawn(
                    args["executable"],
                    ["x"],
                    env={},
                    cwd=args["cwd"],
                    stdin=False,
                    devnull=devnull,
                )
            assert info.value.errno == errno.ENOENT
    finally:
        os.close(devnull)


def test_stdin_is_written_at_once_while_nothing_waits_and_in_order_after() -> None:
    """A write to a command's stdin with nothing buffered goes into the pipe at
    once, without a reactor turn (a keystroke's round trip); once the pipe is
    full the rest is buffered, and later writes queue behind it, in order."""
    from twisted.internet.testing import MemoryReactor

    from netproto.exec.transport import PipeWriter

    readEnd, writeEnd = os.pipe()
    os.set_blocking(readEnd, False)
    os.set_blocking(writeEnd, False)
    reactor = MemoryReactor()
    writer = PipeWriter(reactor, writeEnd, lambda: None)
    try:
        writer.write(b"key")
        assert os.read(readEnd, 10) == b"key"
        assert writer not in reactor.getWriters()
        big = os.urandom(1 << 20)
        writer.write(big)
        writer.write(b"after")
        assert writer in reactor.getWriters()
        received = b""
        while writer in reactor.getWriters() or received[-5:] != b"after":
            try:
                received += os.read(readEnd, 1 << 20)
            except BlockingIOError:
                writer.doWrite()
        assert received == big + b"after"
        writer.write(b"again")
        assert os.read(readEnd, 10) == b"again"
    finally:
        writer.abort()
        os.close(readEnd)
