"""TLS without a CA (issue 15): the server's certificate made once, the client's pins.

Units first (the certificate files, fingerprints, known_servers, the pin
rules); then one real ``twistd netproto --tls`` and the real client over real
TLS: first contact, pinned, changed certificate refused, wrong fingerprint
refused, exec and upload working.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import ssl
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography import x509
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from netproto.client.framed import HELLO_TIMEOUT, ClientError, connectFramed
from netproto.client.pinning import CertificateRefused, KnownServers, PinningCreator
from netproto.framing import FramedFactory
from netproto.services import INetprotoService, ListeningService, ServerContext
from netproto.tls import (
    CERT_FILE,
    KEY_FILE,
    NO_EXPIRY,
    CertificateError,
    fingerprintOf,
    loadOrCreate,
    parseFingerprint,
)
from tests.support import (
    NETPROTO,
    TWISTD,
    BlockingFramed,
    Twistd,
    makeContext,
    runTwistd,
    twistdEnv,
)

# -- the server's certificate ------------------------------------------------------


def test_the_certificate_is_made_once_with_a_private_key(tmp_path: Path) -> None:
    """The first load makes a key (mode 0600) and a certificate that never
    expires; later loads return the same one, so its fingerprint stays."""
    first = loadOrCreate(tmp_path, hostname="example")
    assert stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode) == 0o600
    again = loadOrCreate(tmp_path)
    assert again.fingerprint == first.fingerprint
    assert (tmp_path / CERT_FILE).read_bytes() == first.certPEM == again.certPEM
    cert = x509.load_pem_x509_certificate(first.certPEM)
    assert cert.not_valid_after_utc == NO_EXPIRY
    assert "example" in cert.subject.rfc4514_string()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_a_certificate_without_its_key_is_refused_not_replaced(tmp_path: Path) -> None:
    """A lost key is an error for the operator: a new certificate would change the
    server's identity behind its clients' backs."""
    made = loadOrCreate(tmp_path)
    (tmp_path / KEY_FILE).unlink()
    with pytest.raises(CertificateError, match="missing"):
        loadOrCreate(tmp_path)
    assert (tmp_path / CERT_FILE).read_bytes() == made.certPEM


def test_a_key_that_does_not_match_the_certificate_is_refused(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        loadOrCreate(tmp_path / name)
    (tmp_path / "a" / KEY_FILE).write_bytes((tmp_path / "b" / KEY_FILE).read_bytes())
    with pytest.raises(CertificateError, match="is not the certificate of the key"):
        loadOrCreate(tmp_path / "a")


def test_a_key_left_without_a_certificate_gets_one(tmp_path: Path) -> None:
    """A start that stopped between writing the key and the certificate: the key is kept."""
    key = loadOrCreate(tmp_path).keyPEM
    (tmp_path / CERT_FILE).unlink()
    assert loadOrCreate(tmp_path).keyPEM == key


def test_fingerprints_read_in_the_forms_users_copy() -> None:
    """What the server logs (ssh's SHA256:base64) and what openssl prints (hex with
    colons) name the same certificate; anything else is refused with a message."""
    der = b"a certificate"
    digest = hashlib.sha256(der).hexdigest()
    logged = fingerprintOf(der)
    assert logged.startswith("SHA256:") and not logged.endswith("=")
    colons = ":".join(digest[i : i + 2] for i in range(0, 64, 2)).upper()
    assert parseFingerprint(logged) == logged
    assert parseFingerprint(f"sha256 Fingerprint={colons}\n") == logged
    assert parseFingerprint(digest) == logged
    for bad in ("SHA256:abc", "MD5:" + digest, digest[:-1], ""):
        with pytest.raises(ValueError, match="not a SHA-256 fingerprint"):
            parseFingerprint(bad)


# -- the client's pins ---------------------------------------------------------------


class Certificate:
    """Stands for a ``cryptography`` certificate: only its DER bytes are read."""

    def __init__(self, der: bytes) -> None:
        self.der = der

    def public_bytes(self, encoding: object) -> bytes:
        return self.der


def creator(
    tmp_path: Path, expected: str | None = None, said: list[str] | None = None
) -> PinningCreator:
    known = KnownServers(tmp_path / "config" / "known_servers")
    return PinningCreator(
        "host:8001", known, expected, "host", None if said is None else said.append
    )


def test_first_contact_pins_and_says_so(tmp_path: Path) -> None:
    said: list[str] = []
    pins = creator(tmp_path, said=said)
    pins.check(Certificate(b"one"))
    assert pins.known.lookup("host:8001") == fingerprintOf(b"one")
    assert len(said) == 1 and fingerprintOf(b"one") in said[0] and "first contact" in said[0]
    assert stat.S_IMODE(pins.known.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(pins.known.path.parent.stat().st_mode) == 0o700
    pins.check(Certificate(b"one"))  # pinned: accepted, nothing said
    assert len(said) == 1


def test_a_changed_certificate_is_refused_as_ssh_does(tmp_path: Path) -> None:
    creator(tmp_path).check(Certificate(b"one"))
    with pytest.raises(CertificateRefused, match="REMOTE HOST IDENTIFICATION HAS CHANGED") as e:
        creator(tmp_path).check(Certificate(b"two"))
    assert fingerprintOf(b"two") in str(e.value) and fingerprintOf(b"one") in str(e.value)
    assert creator(tmp_path).known.lookup("host:8001") == fingerprintOf(b"one")


def test_a_given_fingerprint_is_required_and_replaces_an_old_pin(tmp_path: Path) -> None:
    """--fingerprint: another certificate is refused and nothing is pinned; the given
    one is accepted, and replaces the pin of a server whose certificate was replaced."""
    with pytest.raises(CertificateRefused, match="--fingerprint"):
        creator(tmp_path, fingerprintOf(b"one")).check(Certificate(b"evil"))
    assert creator(tmp_path).known.lookup("host:8001") is None
    creator(tmp_path).check(Certificate(b"old"))
    creator(tmp_path, fingerprintOf(b"new")).check(Certificate(b"new"))
    known = creator(tmp_path).known
    assert known.lookup("host:8001") == fingerprintOf(b"new")
    assert known.path.read_text().count("host:8001") == 1


def test_an_unreadable_known_servers_file_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "known_servers"
    path.mkdir()
    with pytest.raises(ClientError, match="known_servers"):
        KnownServers(path).lookup("host:8001")


# -- over real TLS -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tlsServer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Twistd, Path]]:
    """One ``twistd netproto --tls`` with exec and upload, for the module's real-TLS tests."""
    tmp = tmp_path_factory.mktemp("tls")
    with runTwistd(tmp, "--tls", services=("exec", "upload")) as server:
        yield server, tmp


def fingerprintLogged(server: Twistd) -> str:
    line = server.waitLog(r"TLS certificate .* fingerprint SHA256:")
    found = re.search(r"fingerprint (SHA256:\S+)", line)
    assert found is not None
    return found.group(1)


def client(
    tmp: Path, config: Path, *args: str, stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    """The real ``netproto`` client, with its own known_servers under ``config``."""
    return subprocess.run(
        [NETPROTO, *args],
        env=twistdEnv(tmp / "home", {"XDG_CONFIG_HOME": str(config)}),
        cwd=tmp,
        capture_output=True,
        timeout=60,
        input=stdin,
    )


@pytest.mark.e2e
@pytest.mark.slow
def test_first_contact_then_pinned_over_real_tls(
    tlsServer: tuple[Twistd, Path], tmp_path: Path
) -> None:
    """The first --tls connection pins the fingerprint the server logged; the next one,
    without --tls, goes over TLS because the server is pinned, and says nothing."""
    server, tmp = tlsServer
    port = server.port("exec")
    first = client(
        tmp, tmp_path, "exec", "--server", f"127.0.0.1:{port}", "--tls", "--", "id", "-u"
    )
    assert (first.returncode, first.stdout) == (0, f"{os.getuid()}\n".encode()), first.stderr
    assert b"first contact" in first.stderr
    known = (tmp_path / "netproto" / "known_servers").read_text()
    assert known == f"127.0.0.1:{port} {fingerprintLogged(server)}\n"
    again = client(tmp, tmp_path, "exec", "--server", f"127.0.0.1:{port}", "--", "echo", "again")
    assert (again.returncode, again.stdout, again.stderr) == (0, b"again\n", b"")


@pytest.mark.e2e
@pytest.mark.slow
def test_a_changed_certificate_and_a_wrong_fingerprint_are_refused_before_login(
    tlsServer: tuple[Twistd, Path], tmp_path: Path
) -> None:
    """A pin that does not match, or a --fingerprint that does not: the client refuses
    with a clear message, runs nothing, and the server sees no login attempt."""
    server, tmp = tlsServer
    port = server.port("exec")
    pinned = tmp_path / "netproto" / "known_servers"
    pinned.parent.mkdir()
    pinned.write_text(f"127.0.0.1:{port} {fingerprintOf(b'another server')}\n")

    def count(what: str) -> int:
        return sum(what in line for line in server.lines)

    before = (count("disconnected (unauthenticated)"), count("disconnected (token)"))
    changed = client(tmp, tmp_path, "exec", "--server", f"127.0.0.1:{port}", "--", "touch", "x")
    assert changed.returncode != 0
    assert b"REMOTE HOST IDENTIFICATION HAS CHANGED" in changed.stderr
    assert fingerprintLogged(server).encode() in changed.stderr
    assert pinned.read_text() == f"127.0.0.1:{port} {fingerprintOf(b'another server')}\n"
    wrong = client(
        tmp,
        tmp_path / "other",
        *("exec", "--server", f"127.0.0.1:{port}"),
        *("--fingerprint", fingerprintOf(b"another server"), "--", "touch", "x"),
    )
    assert wrong.returncode != 0
    assert b"(--fingerprint): refused" in wrong.stderr
    assert not (tmp_path / "other" / "netproto" / "known_servers").exists()
    for result in (changed, wrong):
        assert b"Traceback" not in result.stderr
    assert not (tmp / "x").exists() and not (tmp / "home" / "x").exists()
    # Both connections end unauthenticated: no credential crossed them.
    server.waitFor(lambda: count("disconnected (unauthenticated)") == before[0] + 2)
    assert count("disconnected (token)") == before[1]
    assert not any("auth-failed" in line for line in server.lines)


@pytest.mark.e2e
@pytest.mark.slow
def test_exec_and_upload_work_over_tls(tlsServer: tuple[Twistd, Path], tmp_path: Path) -> None:
    """With the right --fingerprint: a command's stdin and 8 MB of output cross TLS intact
    (the writer's transport.write path, under backpressure), and an upload of 3 MB is
    stored whole."""
    server, tmp = tlsServer
    fingerprint = ("--fingerprint", fingerprintLogged(server))
    execAt = ("--server", f"127.0.0.1:{server.port('exec')}")
    data = os.urandom(3_000_000)
    result = client(
        tmp, tmp_path, "exec", *execAt, *fingerprint, "--stdin", "--", "sh", "-c",
        "sha256sum; head -c 8000000 /dev/zero", stdin=data,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    digest = hashlib.sha256(data).hexdigest().encode()
    assert result.stdout.startswith(digest) and result.stdout.endswith(b"\0" * 1000)
    assert len(result.stdout) == len(digest) + len(b"  -\n") + 8_000_000
    source = tmp_path / "sent.bin"
    source.write_bytes(data)
    uploadAt = ("--server", f"127.0.0.1:{server.port('upload')}")
    stored = client(tmp, tmp_path, "upload", *uploadAt, *fingerprint, str(source))
    assert stored.returncode == 0, stored.stderr
    assert (tmp / "home" / "uploads" / "sent.bin").read_bytes() == data


@pytest.mark.e2e
@pytest.mark.slow
def test_a_tls_client_at_a_plain_server_is_told_why(tmp_path: Path) -> None:
    """--tls against a server without --tls: one clear line, no traceback, nothing run."""
    with runTwistd(tmp_path, services=("exec",)) as server:
        port = server.port("exec")
        result = client(tmp_path, tmp_path / "config", "exec", "--server", f"127.0.0.1:{port}",
                        "--tls", "--", "touch", "ran")  # fmt: skip
    assert result.returncode != 0
    assert b"does not speak TLS" in result.stderr and b"Traceback" not in result.stderr
    assert not (tmp_path / "ran").exists()


# -- the plaintext guard ---------------------------------------------------------------


@dataclass(frozen=True)
class Declared:
    """A stream service whose factory is the framed base (it takes the token), or
    a plain one: all the guard looks at."""

    framed: bool
    name: str = "framed"
    kind: str = "stream"
    tls: bool | None = None

    def build(self, context: ServerContext) -> Factory:
        return FramedFactory(context) if self.framed else Factory.forProtocol(Protocol)


def listening(
    tmp_path: Path, declared: Declared, description: str, **options: Any
) -> ListeningService:
    tls = options.pop("tls", False)
    context = makeContext(tmp_path, options=options)
    if tls:
        context.tls = loadOrCreate(context.dataDir).contextFactory()
    service = ListeningService(cast(INetprotoService, declared), description, context)
    service.startService()
    return service


def test_a_framed_service_off_loopback_in_plaintext_is_refused(tmp_path: Path) -> None:
    """On 0.0.0.0 without TLS the framed service does not start: one line for twistd,
    and its port is closed at once; a plain (non-framed) service may listen there."""
    with pytest.raises(SystemExit) as refused:
        listening(tmp_path, Declared(framed=True), "tcp:0:interface=0.0.0.0")
    assert str(refused.value).startswith("netproto: refusing to serve framed on 0.0.0.0:")
    assert "--tls" in str(refused.value) and "--allow-plaintext" in str(refused.value)
    chat = listening(tmp_path, Declared(framed=False), "tcp:0:interface=0.0.0.0")
    assert chat.port is not None
    chat.stopService()


@pytest.mark.parametrize(
    ("description", "options", "tls"),
    [
        ("tcp:0:interface=127.0.0.1", {}, False),
        ("tcp:0:interface=0.0.0.0", {"tls": True}, True),
        ("tcp:0:interface=0.0.0.0", {"allow-plaintext": 1}, False),
    ],
)
def test_a_framed_service_listens_on_loopback_with_tls_or_when_allowed(
    tmp_path: Path, description: str, options: dict[str, Any], tls: bool
) -> None:
    """Loopback, --tls (the factory is wrapped in TLS) or --allow-plaintext: it starts."""
    service = listening(tmp_path, Declared(framed=True), description, **options)
    assert service.port is not None
    assert isinstance(getattr(service.port, "factory", None), TLSMemoryBIOFactory) == tls
    assert service.wrapped == tls
    service.stopService()


def test_a_declaration_may_ask_for_tls_or_refuse_it(tmp_path: Path) -> None:
    """``tls = True`` wraps a service that is not framed (a web page); ``tls = False``
    keeps a framed one plain (then only the guard decides where it may listen)."""
    web = listening(tmp_path, Declared(framed=False, tls=True), "tcp:0:interface=127.0.0.1", tls=1)
    own = listening(tmp_path, Declared(framed=True, tls=False), "tcp:0:interface=127.0.0.1", tls=1)
    assert (web.wrapped, own.wrapped) == (True, False)
    web.stopService()
    own.stopService()


@pytest.mark.e2e
def test_twistd_refuses_plaintext_off_loopback_in_one_line_with_status_1(tmp_path: Path) -> None:
    """The operator's view: exit status 1, one line saying why and what to do, no traceback."""
    result = subprocess.run(
        [*(TWISTD, "-n", "--pidfile=", "--logfile=-", "netproto"),
         *("--chat", "none", "--web", "none", "--upload", "none"),
         *("--exec", "tcp:0:interface=0.0.0.0")],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, env=twistdEnv(tmp_path),
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    reasons = [line for line in output.splitlines() if "refusing to serve exec" in line]
    assert len(reasons) == 1 and "Traceback" not in output, output


@pytest.mark.e2e
@pytest.mark.slow
def test_a_client_offering_alpn_completes_the_handshake(tlsServer: tuple[Twistd, Path]) -> None:
    """Browsers, curl and ``openssl s_client -alpn`` offer ALPN; netproto's services
    negotiate none, and the handshake goes on (Twisted's own callback answered
    them with a fatal alert): the server's hello arrives over TLS."""
    server, _ = tlsServer
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", server.port("exec")), timeout=30) as raw:
        with context.wrap_socket(raw) as sock:
            assert sock.selected_alpn_protocol() is None
            assert BlockingFramed(sock).recvJSON(b"H")["service"] == "exec"


@implementer(IStreamClientEndpoint)
class Silent:
    """An endpoint to a server that never speaks first, as a TLS server waiting for
    the client's handshake does."""

    def __init__(self) -> None:
        self.transport = StringTransport()

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 8001))
        assert protocol is not None
        protocol.makeConnection(self.transport)
        return succeed(protocol)


def test_a_plaintext_client_at_a_tls_server_is_told_about_tls() -> None:
    """No hello within HELLO_TIMEOUT: the client gives up with a message naming --tls,
    and closes, instead of waiting out the server's login grace to say "closed"."""
    clock, endpoint = Clock(), Silent()
    d = ensureDeferred(connectFramed(endpoint, "exec", {"token": "t"}, clock))
    clock.advance(HELLO_TIMEOUT - 0.1)
    assert not d.called
    clock.advance(0.1)
    failure = d.result
    d.addErrback(lambda _: None)
    assert isinstance(failure, Failure) and isinstance(failure.value, ClientError)
    assert "no hello from the server" in str(failure.value) and "--tls" in str(failure.value)
    assert endpoint.transport.disconnecting
