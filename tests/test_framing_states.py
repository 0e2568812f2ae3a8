"""The framed base's authentication state machine: one table, and the code follows it."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock, StringTransport

from netproto.auth import IUser, User
from netproto.codec import encodeFrame
from netproto.framing import TRANSITIONS, Event, FramedFactory, FramedProtocol, State
from tests.support import makeContext, token


def connect(tmp_path: Path) -> tuple[FramedProtocol, FramedFactory, MemoryReactorClock]:
    clock = MemoryReactorClock()
    factory = FramedFactory(makeContext(tmp_path, reactor=clock))
    proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4242))
    assert isinstance(proto, FramedProtocol)
    proto.makeConnection(StringTransport())
    return proto, factory, clock


def stateOf(proto: FramedProtocol) -> State:
    """The state now (a call, so that mypy does not keep an earlier check's narrowing)."""
    return proto.state


def test_every_state_can_close_and_every_state_is_reached() -> None:
    """The table is whole: any state goes to CLOSED, and every state is reachable
    from UNAUTHENTICATED."""
    assert all(TRANSITIONS[state][Event.CLOSE] is State.CLOSED for state in State)
    reached, todo = {State.UNAUTHENTICATED}, [State.UNAUTHENTICATED]
    while todo:
        for target in TRANSITIONS[todo.pop()].values():
            if target not in reached:
                reached.add(target)
                todo.append(target)
    assert reached == set(State)


def test_a_failed_login_waits_in_its_own_state(tmp_path: Path) -> None:
    """A wrong token moves the connection to FAILED (not back to AUTHENTICATING)
    for the delay, and to CLOSED once ``E auth-failed`` is sent."""
    proto, factory, clock = connect(tmp_path)
    proto.dataReceived(encodeFrame(b"A", b'{"token": "wrong"}'))
    assert proto.state is State.FAILED
    clock.advance(factory.authFailureDelay)
    assert stateOf(proto) is State.CLOSED


def test_frames_in_the_failed_state_are_not_read(tmp_path: Path) -> None:
    """What a peer sends during the failed-login delay is never read: a good
    token sent after a bad one does not log it in."""
    proto, factory, clock = connect(tmp_path)
    proto.dataReceived(encodeFrame(b"A", b'{"token": "wrong"}'))
    proto.dataReceived(encodeFrame(b"A", f'{{"token": "{token(factory.context)}"}}'.encode()))
    assert proto.state is State.FAILED
    assert proto.avatar is None


def test_a_transition_not_in_the_table_is_a_bug(tmp_path: Path) -> None:
    """The state only changes as the table says: anything else raises."""
    proto, _, _ = connect(tmp_path)
    with pytest.raises(RuntimeError, match="no transition"):
        proto._advance(Event.ACCEPTED)
    assert proto.state is State.UNAUTHENTICATED


def test_nothing_is_buffered_during_the_failed_login_delay(tmp_path: Path) -> None:
    """A peer that floods during the failed-login delay is not buffered: the
    server's receive buffer stays empty whatever it sends (it grew without
    bound before)."""
    proto, factory, clock = connect(tmp_path)
    proto.dataReceived(encodeFrame(b"A", b'{"token": "wrong"}'))
    for _ in range(64):
        proto.dataReceived(b"\0" * 65536)
    assert len(proto._decoder) == 0
    clock.advance(factory.authFailureDelay)
    assert stateOf(proto) is State.CLOSED


def test_reading_pauses_while_a_password_is_checked(tmp_path: Path) -> None:
    """A login answered later (a password checked off the reactor thread) pauses
    reading, so what the peer pipelines waits in the kernel; reading resumes once
    it is logged in, and the pipelined frame is then read."""
    proto, factory, clock = connect(tmp_path)
    transport = proto.transport
    assert isinstance(transport, StringTransport)
    answer: Deferred[IUser] = Deferred()
    factory.context.login = lambda credentials: answer
    proto.dataReceived(encodeFrame(b"A", b'{"token": "checked later"}'))
    assert proto.state is State.AUTHENTICATING
    assert transport.producerState == "paused"
    answer.callback(User("alice"))
    assert stateOf(proto) is State.READY
    assert transport.producerState == "producing"
