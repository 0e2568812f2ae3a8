"""Tests of the framed shout service with netproto.testing.FramedPeer: no sockets, no real time."""

from __future__ import annotations

from pathlib import Path

from netproto.codec import encodeFrame
from netproto.testing import FramedPeer, makeContext, readToken


def connect(tmp: Path) -> tuple[FramedPeer, str]:
    """A peer connected to a fresh service, and the token it may log in with."""
    from shout_framed import makeFactory

    context = makeContext(tmp)
    return FramedPeer(makeFactory(context)), readToken(context)


def closesAfter(peer: FramedPeer, seconds: float, code: str) -> None:
    """Nothing happens until ``seconds`` have passed on the clock; then ``E code`` and a close."""
    peer.advance(seconds - 0.5)
    peer.expectNothing()
    assert not peer.closed
    peer.advance(0.5)
    peer.expectError(code)
    peer.expectClosed()


def test_a_shout_comes_back_in_capitals(tmp_path: Path) -> None:
    """The hello names the service; once logged in, S is answered with K in capitals."""
    peer, token = connect(tmp_path)
    assert peer.hello.service == "shout-framed"
    assert peer.login(token) == {"user": "token"}
    peer.sendJSON(b"S", {"text": "hello, wörld"})
    assert peer.expectJSON(b"K") == {"text": "HELLO, WÖRLD"}
    peer.sendJSON(b"S", {"text": "again"})
    assert peer.expectJSON(b"K") == {"text": "AGAIN"}


def test_a_shout_before_login_is_refused(tmp_path: Path) -> None:
    """The framed base refuses every frame but A before a login, and closes."""
    peer, _ = connect(tmp_path)
    peer.sendJSON(b"S", {"text": "hi"})
    peer.expectError("auth-required")
    peer.expectClosed()


def test_a_wrong_token_is_refused_after_a_delay(tmp_path: Path) -> None:
    """A bad token is answered only once the failed-login delay has passed on the clock."""
    peer, _ = connect(tmp_path)
    peer.sendJSON(b"A", {"token": "not the token"})
    closesAfter(peer, 1.0, "auth-failed")


def test_a_bad_frame_is_refused(tmp_path: Path) -> None:
    """A payload that is not the JSON the handler needs is E bad-frame, and a close."""
    peer, token = connect(tmp_path)
    peer.login(token)
    peer.send(b"S", b"not json")
    peer.expectError("bad-frame")
    peer.expectClosed()


def test_a_long_text_is_refused_and_the_connection_stays(tmp_path: Path) -> None:
    """Too long a text is E too-large (not fatal): the next shout is answered."""
    peer, token = connect(tmp_path)
    peer.login(token)
    peer.sendJSON(b"S", {"text": "x" * 1001})
    peer.expectError("too-large")
    peer.sendJSON(b"S", {"text": "ok"})
    assert peer.expectJSON(b"K") == {"text": "OK"}


def test_a_frame_that_never_ends_times_out(tmp_path: Path) -> None:
    """Half a frame: after the frame deadline (30 s by default) E timeout and a close."""
    peer, token = connect(tmp_path)
    peer.login(token)
    peer.sendRaw(encodeFrame(b"S", b'{"text": "hi"}')[:-3])
    closesAfter(peer, 30.0, "timeout")


def test_an_idle_connection_is_closed(tmp_path: Path) -> None:
    """Logged in and silent for the idle deadline (600 s by default): E timeout and a close."""
    peer, token = connect(tmp_path)
    peer.login(token)
    closesAfter(peer, 600.0, "timeout")
