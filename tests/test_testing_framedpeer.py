"""netproto.testing.FramedPeer against a real service's factory (upload), in memory."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from twisted.cred.checkers import ICredentialsChecker, InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import IUsernamePassword
from twisted.internet.defer import Deferred
from zope.interface import implementer

from netproto.codec import HEADER, PRE_AUTH_MAX_FRAME
from netproto.framing import FramedFactory
from netproto.testing import (
    FramedPeer,
    PausableTransport,
    defaultOptions,
    makeContext,
    readToken,
)
from netproto.upload import plugin
from netproto.upload.server import makeFactory, uploadDirectory


def uploadPeer(tmp: Path) -> tuple[FramedPeer, FramedFactory, str]:
    """A FramedPeer connected to the upload service as ``twistd netproto`` builds it."""
    context = makeContext(tmp, options=defaultOptions(plugin.service))
    factory = makeFactory(context)
    return FramedPeer(factory), factory, readToken(context)


def test_the_hello_is_read(tmp_path: Path) -> None:
    """The peer decodes the server's H: the service, its auth methods and frame limit."""
    peer, factory, _ = uploadPeer(tmp_path)
    assert peer.hello.service == "upload"
    assert peer.hello.auth == ("token",)
    assert peer.hello.maxFrame == factory.maxFrame
    peer.expectNothing()


def test_a_file_is_put_and_stored(tmp_path: Path) -> None:
    """P, K ready, D, F, K stored: the file is on disk with the sha256 the server reports."""
    peer, factory, token = uploadPeer(tmp_path)
    assert peer.login(token) == {"user": "token"}
    data = b"netproto " * 1000
    digest = hashlib.sha256(data).hexdigest()
    peer.sendJSON(b"P", {"name": "dir/a.txt", "size": len(data)})
    assert peer.expectJSON(b"K") == {"offset": 0}
    peer.send(b"D", data)
    peer.sendJSON(b"F", {"sha256": digest})
    assert peer.expectJSON(b"K") == {"name": "dir/a.txt", "size": len(data), "sha256": digest}
    stored = uploadDirectory(factory.context) / "dir" / "a.txt"
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == digest
    assert not peer.closed


def test_a_bad_name_is_refused_and_the_connection_stays(tmp_path: Path) -> None:
    """A refused name is E invalid-name, nothing is written, and the next P works."""
    peer, factory, token = uploadPeer(tmp_path)
    peer.login(token)
    peer.sendJSON(b"P", {"name": "../escape", "size": 1})
    peer.expectError("invalid-name")
    assert not peer.closed
    assert list(uploadDirectory(factory.context).iterdir()) == []
    peer.sendJSON(b"P", {"name": "ok", "size": 0})
    assert peer.expectJSON(b"K") == {"offset": 0}


def test_frames_before_login_are_refused(tmp_path: Path) -> None:
    """Anything but A first is E auth-required and a close, which the peer sees."""
    peer, _, _ = uploadPeer(tmp_path)
    peer.sendJSON(b"P", {"name": "a", "size": 1})
    peer.expectError("auth-required")
    peer.expectClosed()


def test_an_oversized_length_is_refused(tmp_path: Path) -> None:
    """sendRaw lets a test send what no well-behaved client would: a length over the limit."""
    peer, _, _ = uploadPeer(tmp_path)
    peer.sendRaw(HEADER.pack(PRE_AUTH_MAX_FRAME + 1))
    peer.expectError("frame-too-large")
    peer.expectClosed()


def test_a_wrong_password_is_answered_after_the_delay(tmp_path: Path) -> None:
    """The failed-login delay runs on the clock: nothing until advance(), then E auth-failed."""
    context = makeContext(tmp_path, options=defaultOptions(plugin.service))
    context.portal.registerChecker(InMemoryUsernamePasswordDatabaseDontUse(ada=b"right"))
    context.authMethods = ("token", "password")
    factory = makeFactory(context)
    peer = FramedPeer(factory)
    assert peer.login(user="ada", password="right") == {"user": "ada"}
    other = FramedPeer(factory)
    other.sendJSON(b"A", {"user": "ada", "password": "wrong"})
    other.expectNothing()
    assert not other.closed
    other.advance(factory.authFailureDelay)
    other.expectError("auth-failed")
    other.expectClosed()


@implementer(ICredentialsChecker)
class SlowChecker:
    """A password checker whose answers the test gives (as a thread pool would, later)."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self) -> None:
        self.pending: list[Deferred[bytes | tuple[()]]] = []

    def requestAvatarId(self, credentials: object) -> Deferred[bytes | tuple[()]]:
        d: Deferred[bytes | tuple[()]] = Deferred()
        self.pending.append(d)
        return d


def test_what_is_sent_while_a_password_is_checked_waits_unread(tmp_path: Path) -> None:
    """The framed base pauses reading while a password is checked: the peer's next
    frame stays in the transport, unread, and is answered after the K."""
    context = makeContext(tmp_path, options=defaultOptions(plugin.service))
    checker = SlowChecker()
    context.portal.registerChecker(checker)
    context.authMethods = ("token", "password")
    peer = FramedPeer(makeFactory(context))
    transport = getattr(peer.server, "transport", None)
    assert isinstance(transport, PausableTransport)
    peer.sendJSON(b"A", {"user": "ada", "password": "pw"})
    peer.sendJSON(b"P", {"name": "a", "size": 0})
    assert transport.paused
    assert len(transport.held) == 1
    checker.pending.pop().callback(b"ada")
    peer.flush()
    assert not transport.paused and not transport.held
    assert peer.expectJSON(b"K") == {"user": "ada"}
    assert peer.expectJSON(b"K") == {"offset": 0}


def test_the_grace_period_runs_on_the_clock(tmp_path: Path) -> None:
    """A peer that never logs in is closed with E timeout once the grace period has passed."""
    peer, factory, _ = uploadPeer(tmp_path)
    peer.advance(factory.graceTimeout - 1)
    assert not peer.closed
    peer.advance(1)
    peer.expectError("timeout")
    peer.expectClosed()


def test_expect_names_what_came_instead(tmp_path: Path) -> None:
    """A failed expectation says which frame arrived, so a test's failure reads clearly;
    the frame stays for the next expectation."""
    peer, _, token = uploadPeer(tmp_path)
    peer.sendJSON(b"A", {"token": token})
    with pytest.raises(AssertionError, match="expected a b'E' frame, got b'K'"):
        peer.expectError("auth-failed")
    assert peer.expectJSON(b"K") == {"user": "token"}  # a failed expectation keeps the frame
    with pytest.raises(AssertionError, match="none came"):
        peer.expect(b"K")


def test_take_returns_every_waiting_frame_and_counts_them_expected(tmp_path: Path) -> None:
    """take() hands over all frames not yet expected, oldest first, and leaves none."""
    peer, _, token = uploadPeer(tmp_path)
    peer.login(token)
    peer.sendJSON(b"P", {"name": "../escape", "size": 1})
    peer.sendJSON(b"P", {"name": "ok", "size": 0})
    taken = peer.take()
    assert [kind for kind, _ in taken] == [b"E", b"K"]
    assert b"invalid-name" in taken[0][1]
    assert peer.take() == []
    peer.expectNothing()
