"""The upload protocol's state machine under any sequence of frames (Hypothesis).

In memory: connections driven by FramedPeers, a fake clock, and worker jobs held
until a rule runs them, so frames also arrive while a file is being opened or
finished. Any frame in any state (P, D, F with good, bad and malformed
payloads, garbage types), dropped connections, clock ticks past the
deadlines, the expiry sweep, and objects planted at partial-file names.

What must hold after every step:

* no ``E internal`` and no error logged: every input has its answer;
* nothing under a final name but what a ``K stored`` announced, with that
  SHA-256;
* a file outside the upload directory, linked from inside, never changes;
* once the workers are idle, at most one partial file is open, and none
  while the live connection is between files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections import deque
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher

from netproto.errors import ProtocolError
from netproto.upload.names import RESERVED_PREFIX, partialName
from netproto.upload.protocol import PHASES, Phase, Step, UploadProtocol
from tests.uploadkit import Connection, Harness, StepExecutor

NAMES = ["a", "b", "d/a", "d/e/f", "d", "é/ü", "../x", "", ".netproto-x", "a/", "a//b"]
OPTIONS = {
    "upload-quota-files": 4,
    "upload-quota-bytes": 6000,
    "upload-max-per-user": 2,
    "idle-timeout": 60,
    "frame-timeout": 30,
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=6,
)
#: Whether the workers catch up at once (mostly) or are left behind.
settles = st.sampled_from([True, True, True, False])
goodNames = st.sampled_from(NAMES[:6])
#: Sizes that often meet again (for resumes and busy partial files), and any other.
sizes = st.sampled_from([0, 1, 1000, 2500]) | st.integers(0, 3000)
put_payloads = st.fixed_dictionaries(
    {"name": st.sampled_from(NAMES), "size": sizes},
    optional={"overwrite": st.booleans(), "resume": st.booleans()},
)


def _asked(payload: bytes) -> tuple[str, int] | None:
    """The name and size a P payload asks for, if it could be a valid one."""
    try:
        request = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(request, dict):
        return None
    name, size = request.get("name"), request.get("size")
    return (name, size) if isinstance(name, str) and isinstance(size, int) else None


class UploadMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="upload-machine-"))
        self.steps = StepExecutor()
        self.h = Harness(self.tmp, executor=self.steps, options=OPTIONS)
        self.outside = self.tmp / "outside"
        self.outside.write_bytes(b"precious")
        self.errors: list[str] = []
        self._observer = cast(ILogObserver, self._observe)
        globalLogPublisher.addObserver(self._observer)
        #: every connection made, dropped ones too (their workers may still answer)
        self.connections: list[Connection] = []
        self.live = self._connect()
        #: final name -> SHA-256 of the last K stored for it
        self.stored: dict[str, str] = {}
        #: the live connection's files waiting for answers, in the order of their P
        #: (the server answers pipelined files in order): [(name, size) or None
        #: for a P the model cannot read, whether K ready came]
        self.waiting: deque[list[Any]] = deque()
        #: the file being received: (name, size, bytes so far, kept ones included)
        self.current: tuple[str, int, bytearray] | None = None

    def _observe(self, event: dict[str, Any]) -> None:
        if event.get("log_level") in (LogLevel.error, LogLevel.critical) or "log_failure" in event:
            self.errors.append(formatEvent(event))

    def _connect(self) -> Connection:
        conn = self.h.connect()
        self.connections.append(conn)
        return conn

    def teardown(self) -> None:
        globalLogPublisher.removeObserver(self._observer)
        for conn in self.connections:
            conn.drop()
        self.steps.runAll()
        self.h.store.close()
        if self.h.factory.quotas.ledger is not None:
            self.h.factory.quotas.ledger.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- reading what the server said ---------------------------------------------

    def _read(self) -> None:
        for conn in self.connections:
            frames = conn.frames()
            for kind, body in frames:
                assert not (kind == b"E" and body["code"] == "internal"), body
                if conn is self.live and not conn.closed:
                    self._follow(kind, body)
                elif kind == b"K" and "sha256" in body:
                    self.stored[body["name"]] = body["sha256"]
        if self.live.closed:
            self.live.drop()
            self.current = None
            self.waiting.clear()
            self.live = self._connect()

    def _follow(self, kind: bytes, body: dict[str, Any]) -> None:
        if kind == b"K" and "offset" in body:
            assert self.waiting and not self.waiting[0][1]
            self.waiting[0][1] = True
            assert self.waiting[0][0] is not None
            name, size = self.waiting[0][0]
            kept = bytearray()
            if body["offset"]:
                leaf = name.rsplit("/", 1)[-1].encode()
                part = self.h.root / os.path.dirname(name) / partialName(leaf, size).decode()
                kept += part.read_bytes()[: body["offset"]]
            if len(self.waiting) == 1:  # the file the client is sending
                self.current = (name, size, kept)
        elif kind == b"K" and "sha256" in body:
            self.stored[body["name"]] = body["sha256"]
            assert self.waiting and self.waiting[0][1]
            self.waiting.popleft()
            if not self.waiting:
                self.current = None
        elif kind == b"E":
            if self.waiting:
                self.waiting.popleft()
            if not self.waiting:
                self.current = None

    def _send(self, kind: bytes, payload: bytes, settle: bool) -> None:
        """Send a frame; with ``settle``, let the workers do all they were asked
        (a fast disk), else leave their jobs waiting (a slow one)."""
        self.live.send(kind, payload)
        if settle:
            self.steps.runAll()
        self._read()

    # -- rules ----------------------------------------------------------------------

    @rule(request=put_payloads, settle=settles)
    def put(self, request: dict[str, Any], settle: bool) -> None:
        self.waiting.append([(request["name"], request["size"]), False])
        self.current = None
        self._send(b"P", json.dumps(request).encode(), settle)

    @rule(data=st.binary(max_size=1500), settle=settles)
    def data(self, data: bytes, settle: bool) -> None:
        if self.current is not None and self.live.proto.phase is Phase.RECEIVING:
            self.current[2].extend(data)
        self._send(b"D", data, settle)

    @rule(settle=settles)
    def dataToTheEnd(self, settle: bool) -> None:
        """The rest of the current file, so that files do get stored."""
        if self.current is None:
            return
        _, size, body = self.current
        rest = os.urandom(max(0, size - len(body)))
        body.extend(rest)
        self._send(b"D", rest, settle)

    @rule(name=goodNames, size=sizes, overwrite=st.booleans(), resume=st.booleans())
    def wholeFile(self, name: str, size: int, overwrite: bool, resume: bool) -> None:
        """P, then (once K ready came) the rest of the data and the right F."""
        self.put({"name": name, "size": size, "overwrite": overwrite, "resume": resume}, True)
        if self.current is not None:
            self.dataToTheEnd(True)
            self.finish(right=True, settle=True)

    @rule(name=goodNames, size=sizes, cut=st.integers(0, 3000))
    def interrupted(self, name: str, size: int, cut: int) -> None:
        """P with resume, part of the data, and the connection drops: kept for a resume."""
        self.put({"name": name, "size": size, "resume": True}, True)
        if self.current is not None:
            self.data(os.urandom(min(cut, size - len(self.current[2]))), True)
        self.drop()

    @rule(right=st.booleans(), settle=settles)
    def finish(self, right: bool, settle: bool) -> None:
        body = self.current[2] if self.current is not None else b""
        digest = hashlib.sha256(body if right else b"wrong" + body).hexdigest()
        self._send(b"F", json.dumps({"sha256": digest}).encode(), settle)

    @rule(
        kind=st.sampled_from([b"P", b"D", b"F", b"A", b"K", b"E", b"X", b"\x00"]),
        payload=st.binary(max_size=64) | json_values.map(lambda v: json.dumps(v).encode()),
    )
    def garbage(self, kind: bytes, payload: bytes) -> None:
        if kind == b"P":
            self.waiting.append([_asked(payload), False])
            self.current = None
        self._send(kind, payload, settle=True)

    @rule()
    def runWorkers(self) -> None:
        self.steps.runAll()
        self._read()

    @rule()
    def drop(self) -> None:
        self.live.drop()
        self.current = None
        self.waiting.clear()
        self.live = self._connect()
        self._read()

    @rule(seconds=st.sampled_from([1.0, 1.0, 29.0, 31.0, 61.0]))
    def tick(self, seconds: float) -> None:
        self.h.clock.advance(seconds)
        self._read()

    @rule()
    def sweep(self) -> None:
        self.h.factory.startFactory()
        self.h.factory.stopFactory()
        self._read()

    @rule(name=st.sampled_from(["a", "b", "d/a"]), size=sizes, hard=st.booleans())
    def plant(self, name: str, size: int, hard: bool) -> None:
        """A local user links the outside file at a partial name."""
        directory, _, leaf = name.rpartition("/")
        part = self.h.root / directory / partialName(leaf.encode(), size).decode()
        if part.parent.is_dir() and not os.path.lexists(part):
            if hard:
                os.link(self.outside, part)
            else:
                part.symlink_to(self.outside)

    @rule(name=goodNames)
    def operatorRemoves(self, name: str) -> None:
        """The operator deletes a stored file (the next sweep gives its quota back)."""
        path = self.h.root / name
        if path.is_file() and not path.is_symlink():
            path.unlink()
            del self.stored[name]

    # -- invariants ----------------------------------------------------------------

    @invariant()
    def nothingWasLoggedAsAnError(self) -> None:
        assert not self.errors, self.errors

    @invariant()
    def onlyStoredFilesUnderFinalNames(self) -> None:
        for path in self.h.root.rglob("*"):
            rel = path.relative_to(self.h.root).as_posix()
            if path.name.startswith(RESERVED_PREFIX) or path.is_dir():
                continue
            assert rel in self.stored, f"{rel} is there, but was never stored"
            assert hashlib.sha256(path.read_bytes()).hexdigest() == self.stored[rel], rel

    @invariant()
    def theOutsideFileNeverChanges(self) -> None:
        assert self.outside.read_bytes() == b"precious"

    @invariant()
    def atMostOnePartialOpenOnceTheWorkersAreIdle(self) -> None:
        if self.steps.calls:
            return
        fdDir = "/proc/self/fd"
        partials = 0
        for fd in os.listdir(fdDir):
            try:
                target = os.readlink(f"{fdDir}/{fd}")
            except OSError:
                continue
            if target.startswith(str(self.h.root)) and "/.netproto-part-" in target:
                partials += 1
        phase = self.live.proto.phase
        # (a file whose F came is finished in the background: done once the workers are)
        assert partials <= (1 if phase is Phase.RECEIVING else 0)


UploadMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=40,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    deadline=None,
)
test_upload_state_machine = pytest.mark.slow(UploadMachine.TestCase)


# -- the table itself ----------------------------------------------------------------


def test_the_phase_table_is_whole() -> None:
    """Every phase is reachable from IDLE, and a lost connection ends the file
    in any phase."""
    assert all(PHASES[phase][Step.LOST] is Phase.IDLE for phase in Phase)
    reached, todo = {Phase.IDLE}, [Phase.IDLE]
    while todo:
        for target in PHASES[todo.pop()].values():
            if target not in reached:
                reached.add(target)
                todo.append(target)
    assert reached == set(Phase)


@pytest.mark.parametrize("phase", list(Phase))
@pytest.mark.parametrize("kind", [b"P", b"D", b"F"])
def test_the_table_decides_which_frames_are_valid(phase: Phase, kind: bytes) -> None:
    """A frame the table lists for a phase moves to the phase it names; any
    other is ``bad-frame`` and leaves the phase alone."""
    proto = UploadProtocol()
    proto.phase = phase
    expected = PHASES[phase].get(kind)
    if expected is None:
        with pytest.raises(ProtocolError) as caught:
            proto._nextPhase(kind)
        assert caught.value.code == "bad-frame"
        assert proto.phase is phase
    else:
        proto._nextPhase(kind)
        assert proto.phase is expected


def test_a_step_the_table_does_not_list_is_a_bug() -> None:
    """The phase only changes as the table says: a step it does not list raises."""
    proto = UploadProtocol()
    with pytest.raises(RuntimeError, match="no upload phase change"):
        proto._nextPhase(Step.OPENED)
    assert proto.phase is Phase.IDLE
