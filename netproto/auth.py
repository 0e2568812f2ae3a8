"""Who may use the framed services: twisted.cred checkers, realm and secrets.

Two ways in, as PROTOCOL.md section 2 says:

* the **token**: with no users file, a random 256-bit token is created in
  ``DATA_DIR/token`` (mode 0600) at first start and kept across restarts. Its
  path is logged, its value never. Anyone who can read that file (the user
  running the server, root) can use exec and upload.
* a **users file** (``--users FILE``): lines ``NAME:HASH``, the hash written by
  ``netproto passwd FILE NAME`` with :func:`hashPassword` (scrypt, a random
  salt per user). With a users file, the token is not offered.

Secrets are compared with :func:`hmac.compare_digest`. scrypt is deliberately
slow (tens of milliseconds), so password checks run in the reactor's thread
pool, never on the reactor thread.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
import secrets
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ICredentials, IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet import threads
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import Attribute, Interface, implementer

#: The avatar name of a client that authenticated with the token.
TOKEN_USER: Final = "token"  # noqa: S105 - a user name, not a secret

# scrypt cost: n=2**15, r=8, p=1 takes ~50-100 ms and 32 MiB per check.
SCRYPT_N: Final = 2**15
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
_SCRYPT_MAXMEM: Final = 64 * 1024 * 1024
_SCHEME: Final = "scrypt"


class AuthSetupError(Exception):
    """The token or users file cannot be used; the message says why and what to do."""


class IUser(Interface):
    """The avatar of an authenticated framed connection."""

    name = Attribute("str: the user name, as sent back in ``K {'user': NAME}``")


@implementer(IUser)
@dataclass(frozen=True)
class User:
    name: str


class ITokenCredentials(ICredentials):
    """Credentials that carry the server token."""

    token = Attribute("str: the token as the client sent it")


@implementer(ITokenCredentials)
@dataclass(frozen=True)
class TokenCredentials:
    token: str


@implementer(ICredentialsChecker)
class TokenChecker:
    """Accepts exactly one token, compared in constant time."""

    credentialInterfaces = (ITokenCredentials,)

    def __init__(self, token: str) -> None:
        self._token = token.encode("utf-8")

    def requestAvatarId(self, credentials: ITokenCredentials) -> Deferred[bytes | tuple[()]]:
        offered = credentials.token.encode("utf-8", "replace")
        if hmac.compare_digest(offered, self._token):
            return succeed(TOKEN_USER.encode())
        return fail(UnauthorizedLogin("wrong token"))


def hashPassword(password: str, *, salt: bytes | None = None) -> str:
    """``scrypt$N$r$p$SALT$HASH`` (base64) for a users file line."""
    salt = os.urandom(16) if salt is None else salt
    digest = hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=SCRYPT_N,
        r=SCRYPT_R,
        p=SCRYPT_P,
        maxmem=_SCRYPT_MAXMEM,
    )
    b64 = base64.b64encode
    return f"{_SCHEME}${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def verifyPassword(password: str, encoded: str) -> bool:
    """Whether ``password`` matches a hash made by :func:`hashPassword`."""
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != _SCHEME:
            return False
        expected = base64.b64decode(digest, validate=True)
        got = hashlib.scrypt(
            password.encode("utf-8"),
            salt=base64.b64decode(salt, validate=True),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=_SCRYPT_MAXMEM,
            dklen=len(expected),
        )
    except ValueError:
        return False
    return hmac.compare_digest(got, expected)


@functools.cache
def _dummyHash() -> str:
    """The hash checked when the user does not exist, so that an unknown name
    costs as much time as a wrong password. Made once, by the first
    :class:`UsersFileChecker` (not at import: it is a whole scrypt, about
    0.1 s, that the ``netproto`` client and a token-only server never need)."""
    return hashPassword("netproto-dummy", salt=b"\0" * 16)


def readUsersFile(path: Path) -> dict[str, str]:
    """``{name: hash}`` from a users file; blank lines and ``#`` comments are skipped."""
    users: dict[str, str] = {}
    try:
        text = path.read_text("utf-8")
    except OSError as e:
        raise AuthSetupError(f"cannot read users file {path}: {e.strerror}") from None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, encoded = line.partition(":")
        if not sep or not name or not encoded.startswith(_SCHEME + "$"):
            raise AuthSetupError(f"{path}:{number}: expected NAME:HASH from `netproto passwd`")
        users[name] = encoded
    return users


def writeUser(path: Path, name: str, password: str) -> None:
    """Add or replace ``name`` in the users file, atomically, mode 0600."""
    if not name or ":" in name or any(c.isspace() for c in name):
        raise AuthSetupError(f"invalid user name {name!r}: no ':' or spaces")
    lines: list[str] = []
    if path.exists():
        readUsersFile(path)  # refuse to rewrite a file we cannot parse
        lines = [
            ln
            for ln in path.read_text("utf-8").splitlines()
            if ln.partition(":")[0].strip() != name
        ]
    lines.append(f"{name}:{hashPassword(password)}")
    from netproto.tls import writePrivate

    writePrivate(path, ("\n".join(lines) + "\n").encode("utf-8"))


@implementer(ICredentialsChecker)
class UsersFileChecker:
    """Checks user names and passwords against a users file.

    The file is re-read when its modification time changes, so
    ``netproto passwd`` takes effect without a restart. The scrypt check runs
    in the reactor's thread pool.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, path: Path, reactor: Any) -> None:
        self.path = path
        self._reactor = reactor
        self._mtime: float | None = None
        self._users: dict[str, str] = {}
        self._load()
        _dummyHash()  # made now, so that the first unknown name costs no more than the others

    def _load(self) -> dict[str, str]:
        try:
            mtime = self.path.stat().st_mtime
        except OSError as e:
            raise AuthSetupError(f"cannot read users file {self.path}: {e.strerror}") from None
        if mtime != self._mtime:
            self._users = readUsersFile(self.path)
            self._mtime = mtime
        return self._users

    def requestAvatarId(self, credentials: IUsernamePassword) -> Deferred[bytes | tuple[()]]:
        try:
            users = self._load()
        except (AuthSetupError, OSError) as e:
            return fail(UnauthorizedLogin(f"users file unusable: {e}"))
        name = credentials.username.decode("utf-8", "replace")
        encoded = users[name] if name in users else _dummyHash()
        password = credentials.password.decode("utf-8", "replace")
        d: Deferred[bool] = threads.deferToThreadPool(
            self._reactor,
            self._reactor.getThreadPool(),
            verifyPassword,
            password,
            encoded,
        )

        def decide(ok: bool) -> bytes | tuple[()]:
            if ok and name in users:
                return name.encode("utf-8")
            raise UnauthorizedLogin("unknown user or wrong password")

        return d.addCallback(decide)


@implementer(IRealm)
class NetprotoRealm:
    """Gives every authenticated id a :class:`User` avatar."""

    def requestAvatar(
        self, avatarId: bytes | tuple[()], mind: object, *interfaces: Any
    ) -> tuple[Any, User, Callable[[], None]]:
        if IUser not in interfaces or not isinstance(avatarId, bytes):
            raise NotImplementedError("netproto only hands out IUser avatars for named ids")
        return IUser, User(avatarId.decode("utf-8")), lambda: None


def loadOrCreateToken(path: Path) -> str:
    """The server token from ``path``; created (256 random bits, mode 0600) if absent.

    :raises AuthSetupError: when the file is readable by others or unusable.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return _readToken(path)
    except OSError as e:
        raise AuthSetupError(f"cannot create token file {path}: {e.strerror}") from None
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(token + "\n")
        f.flush()
        os.fsync(f.fileno())
    return token


def _readToken(path: Path) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as e:
        raise AuthSetupError(f"cannot read token file {path}: {e.strerror}") from None
    with os.fdopen(fd, encoding="ascii", errors="replace") as f:
        mode = os.fstat(f.fileno()).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise AuthSetupError(
                f"token file {path} is accessible to other users "
                f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {path}"
            )
        token = f.read(1024).strip()
    if len(token) < 22:  # 128 bits in URL-safe base64
        raise AuthSetupError(
            f"token file {path} holds no usable token; delete it to make a new one"
        )
    return token


def readClientToken(path: Path) -> str:
    """The token as a client reads it (no permission check: it is the user's own file)."""
    try:
        return path.read_text("ascii", errors="replace").strip()
    except OSError as e:
        raise AuthSetupError(f"cannot read token file {path}: {e.strerror}") from None


def makePortal(
    dataDir: Path, usersFile: Path | None, reactor: Any
) -> tuple[Portal, tuple[str, ...], Path | None]:
    """The portal for the framed services, the auth methods it offers, and the token path.

    With ``usersFile`` only passwords are accepted; without it, only the token.
    """
    realm = NetprotoRealm()
    if usersFile is not None:
        checker = UsersFileChecker(usersFile, reactor)
        return Portal(realm, [checker]), ("password",), None
    tokenPath = dataDir / "token"
    return Portal(realm, [TokenChecker(loadOrCreateToken(tokenPath))]), ("token",), tokenPath
