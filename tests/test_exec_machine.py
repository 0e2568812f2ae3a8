"""exec's connection as a state machine, driven by Hypothesis: any sequence of
R, 0, C, S, W and garbage frames, command output, exits and time, in any state.

In memory (a FramedPeer, a Clock, fake processes: see
``tests/execkit.py``). The promises checked after every step: no
``E internal`` (nor a logged error: ``tests/conftest.py``), at most one
command running per connection, and the frames of a command come between its
``K`` and its ``X``, ``X`` last.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.python.failure import Failure

from netproto.exec.process import CommandProtocol
from tests.execkit import Conn

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=8,
)
VALID_RUNS = st.fixed_dictionaries(
    {"argv": st.sampled_from([["true"], ["cat"], ["sleep", "9"]])},
    optional={
        "stdin": st.booleans(),
        "timeout": st.one_of(st.floats(0.001, 100), st.integers(-5, 10**30)),
        "env": st.dictionaries(st.sampled_from(["A", "B", "LANG"]), st.text(max_size=4)),
        "cwd": st.sampled_from([".", "/", "no-such-dir"]),
    },
)
#: What a client could put in a control frame: valid requests, any JSON object,
#: any JSON at all, and bytes that are not JSON.
PAYLOADS = st.one_of(
    VALID_RUNS.map(lambda r: json.dumps(r).encode()),
    st.dictionaries(st.sampled_from(["argv", "shell", "stdin", "timeout", "env", "cwd"]), JSON).map(
        lambda r: json.dumps(r).encode()
    ),
    JSON.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=16),
    st.sampled_from([b'{"shell": "\\ud800"}', b'{"argv": ["x"], "timeout": ' + b"9" * 400 + b"}"]),
)
SIGNALS = st.one_of(
    st.sampled_from(["INT", "TERM", "KILL", "HUP", "STOP", ""]).map(
        lambda name: json.dumps({"signal": name}).encode()
    ),
    PAYLOADS,
)


class ExecMachine(RuleBasedStateMachine):
    """One logged-in exec connection and the commands it starts."""

    base: ClassVar[Path]

    def __init__(self) -> None:
        super().__init__()
        self.c = Conn(self.base)
        #: Whether the client has seen a K and not yet the X after it.
        self.inCommand = False

    @property
    def open(self) -> bool:
        return not self.c.closed

    def running(self) -> list[CommandProtocol]:
        return [command for command, _, _ in self.c.factory.started if command.exitFields is None]

    # -- the client -----------------------------------------------------------------

    @precondition(lambda self: self.open)
    @rule(request=VALID_RUNS)
    def run(self, request: dict[str, Any]) -> None:
        self.c.send(b"R", request)

    @precondition(lambda self: self.open)
    @rule(request=VALID_RUNS)
    def runWithStdin(self, request: dict[str, Any]) -> None:
        self.c.send(b"R", {**request, "stdin": True})

    @precondition(lambda self: self.open)
    @rule(payload=PAYLOADS)
    def runAnything(self, payload: bytes) -> None:
        self.c.send(b"R", payload)

    @precondition(lambda self: self.open)
    @rule(data=st.binary(max_size=8))
    def stdin(self, data: bytes) -> None:
        self.c.send(b"0", data)

    @precondition(lambda self: self.open)
    @rule(payload=st.sampled_from([b"", b"x"]))
    def closeStdin(self, payload: bytes) -> None:
        self.c.send(b"C", payload)

    @precondition(lambda self: self.open)
    @rule(payload=SIGNALS)
    def signal(self, payload: bytes) -> None:
        self.c.send(b"S", payload)

    @precondition(lambda self: self.open)
    @rule(kind=st.binary(min_size=1, max_size=1), payload=PAYLOADS)
    def anyFrame(self, kind: bytes, payload: bytes) -> None:
        self.c.send(kind, payload)

    @precondition(lambda self: self.open)
    @rule(data=st.binary(min_size=1, max_size=12))
    def rawBytes(self, data: bytes) -> None:
        """Bytes that need not make whole frames (a length, half a header...)."""
        self.c.sendRaw(data)

    @precondition(lambda self: self.open)
    @rule()
    def disconnect(self) -> None:
        self.c.drop()

    # -- the command and time ---------------------------------------------------------

    @precondition(lambda self: bool(self.running()))
    @rule(stream=st.sampled_from([1, 2]), data=st.binary(min_size=1, max_size=8))
    def output(self, stream: int, data: bytes) -> None:
        self.running()[-1].childDataReceived(stream, data)

    @precondition(lambda self: bool(self.running()))
    @rule(
        how=st.one_of(
            st.just(ProcessDone(0)),
            st.integers(1, 255).map(lambda code: ProcessTerminated(code, None, None)),
            st.sampled_from([2, 9, 15, 64]).map(lambda sig: ProcessTerminated(None, sig, None)),
        )
    )
    def exit(self, how: Exception) -> None:
        self.running()[-1].processEnded(Failure(how))

    @rule(seconds=st.sampled_from([0.001, 0.5, 5, 100, 1000]))
    def time(self, seconds: float) -> None:
        self.c.clock.advance(seconds)

    # -- the promises ------------------------------------------------------------------

    @invariant()
    def framesAreInOrderAndNeverInternal(self) -> None:
        for kind, payload in self.c.frames():
            assert kind != b"E" or payload["code"] != "internal", payload
            if kind == b"K":
                assert not self.inCommand, "K while a command runs"
                assert isinstance(payload.get("pid"), int)
                self.inCommand = True
            elif kind in (b"1", b"2", b"X"):
                assert self.inCommand, f"{kind!r} outside a command"
                self.inCommand = kind != b"X"

    @invariant()
    def atMostOneCommandRuns(self) -> None:
        assert len(self.running()) <= 1


@pytest.mark.slow
def test_any_frames_in_any_state_keep_the_promises(tmp_path: Path) -> None:
    """No sequence of frames, output, exits and time makes the server answer
    ``internal`` or log an error; one command at a time; X ends each command."""
    ExecMachine.base = tmp_path
    run_state_machine_as_test(
        ExecMachine, settings=settings(max_examples=150, stateful_step_count=30)
    )
