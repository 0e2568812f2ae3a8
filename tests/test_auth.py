"""Authentication: the token file, the users file, and the cred checkers."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import pytest_twisted
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import reactor

from netproto.auth import (
    AuthSetupError,
    IUser,
    TokenChecker,
    TokenCredentials,
    UsersFileChecker,
    hashPassword,
    loadOrCreateToken,
    makePortal,
    readUsersFile,
    verifyPassword,
    writeUser,
)


def test_token_is_created_private_and_kept(tmp_path: Path) -> None:
    """First start makes a 0600 token of >= 128 bits; the next start reads the same one."""
    path = tmp_path / "data" / "token"
    first = loadOrCreateToken(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) >= 22
    assert loadOrCreateToken(path) == first


def test_two_servers_make_different_tokens(tmp_path: Path) -> None:
    """Tokens are random, not derived from anything guessable."""
    assert loadOrCreateToken(tmp_path / "a" / "token") != loadOrCreateToken(
        tmp_path / "b" / "token"
    )


def test_token_readable_by_others_is_refused(tmp_path: Path) -> None:
    """A token others can read is not a secret: the server refuses it and says how to fix it."""
    path = tmp_path / "token"
    loadOrCreateToken(path)
    os.chmod(path, 0o644)
    with pytest.raises(AuthSetupError, match="chmod 600"):
        loadOrCreateToken(path)


def test_token_through_a_symlink_is_refused(tmp_path: Path) -> None:
    """The token path is opened without following symlinks."""
    real = tmp_path / "elsewhere"
    real.write_text("x" * 40)
    os.chmod(real, 0o600)
    (tmp_path / "token").symlink_to(real)
    with pytest.raises(AuthSetupError):
        loadOrCreateToken(tmp_path / "token")


def test_empty_token_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("")
    os.chmod(path, 0o600)
    with pytest.raises(AuthSetupError, match="no usable token"):
        loadOrCreateToken(path)


@pytest_twisted.ensureDeferred
async def test_token_checker_accepts_only_the_token() -> None:
    """The right token maps to the token user; anything else is UnauthorizedLogin."""
    checker = TokenChecker("s3cret-token-value-123456")
    assert await checker.requestAvatarId(TokenCredentials("s3cret-token-value-123456")) == b"token"
    for wrong in ("", "s3cret", "s3cret-token-value-1234567", "\udcff"):
        with pytest.raises(UnauthorizedLogin):
            await checker.requestAvatarId(TokenCredentials(wrong))


def test_password_hash_is_salted_and_verifies() -> None:
    """Same password, different salts, both verify; a wrong password does not."""
    a, b = hashPassword("pw"), hashPassword("pw")
    assert a != b
    assert a.startswith("scrypt$")
    assert verifyPassword("pw", a)
    assert verifyPassword("pw", b)
    assert not verifyPassword("pW", a)
    assert not verifyPassword("pw", "garbage")
    assert not verifyPassword("pw", "md5$1$2$3$4$5")


def test_users_file_round_trip(tmp_path: Path) -> None:
    """writeUser adds and replaces users, keeps the file 0600 and parseable."""
    users = tmp_path / "users"
    writeUser(users, "alice", "one")
    writeUser(users, "bob", "two")
    writeUser(users, "alice", "three")
    parsed = readUsersFile(users)
    assert sorted(parsed) == ["alice", "bob"]
    assert verifyPassword("three", parsed["alice"])
    assert stat.S_IMODE(users.stat().st_mode) == 0o600


def test_users_file_with_garbage_is_reported_with_its_line(tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text("# comment\n\nalice:plaintext\n")
    with pytest.raises(AuthSetupError, match=":3:"):
        readUsersFile(users)


@pytest.mark.parametrize("name", ["", "a:b", "a b"])
def test_bad_user_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(AuthSetupError):
        writeUser(tmp_path / "users", name, "pw")


@pytest_twisted.ensureDeferred
async def test_users_file_checker(tmp_path: Path) -> None:
    """Right password logs in; wrong password and unknown users do not; changes apply live."""
    users = tmp_path / "users"
    writeUser(users, "alice", "wonderland")
    checker = UsersFileChecker(users, reactor)
    assert await checker.requestAvatarId(UsernamePassword(b"alice", b"wonderland")) == b"alice"
    for name, pw in ((b"alice", b"nope"), (b"mallory", b"wonderland")):
        with pytest.raises(UnauthorizedLogin):
            await checker.requestAvatarId(UsernamePassword(name, pw))
    writeUser(users, "bob", "builder")
    os.utime(users, (1, 1))  # a different mtime, even within the clock's resolution
    assert await checker.requestAvatarId(UsernamePassword(b"bob", b"builder")) == b"bob"


@pytest_twisted.ensureDeferred
async def test_portal_offers_token_without_users_file(tmp_path: Path) -> None:
    """No users file: token only, created in the data dir; with one: password only, no token."""
    portal, methods, tokenPath = makePortal(tmp_path, None, reactor)
    assert methods == ("token",)
    assert tokenPath == tmp_path / "token"
    _, avatar, _ = await portal.login(TokenCredentials(tokenPath.read_text().strip()), None, IUser)
    assert avatar.name == "token"  # type: ignore[attr-defined]

    users = tmp_path / "users"
    writeUser(users, "carol", "pw")
    other = tmp_path / "other"
    other.mkdir()
    portal, methods, tokenPath = makePortal(other, users, reactor)
    assert methods == ("password",)
    assert tokenPath is None
    assert not (other / "token").exists()
    _, avatar, _ = await portal.login(UsernamePassword(b"carol", b"pw"), None, IUser)
    assert avatar.name == "carol"  # type: ignore[attr-defined]
