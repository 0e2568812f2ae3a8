"""TLS without a certificate authority: the server's own self-signed certificate.

``twistd netproto --tls`` makes, the first time, a key and a self-signed
certificate in ``DATA_DIR`` (the key mode 0600, both written whole or not at
all) and uses them ever after, as sshd uses its host key. What identifies the
server to a client is the certificate's SHA-256 **fingerprint**, logged at
every start and written ``SHA256:`` + unpadded base64, the form of
``ssh-keygen -l``. Clients pin it (:mod:`netproto.client.pinning`).

The certificate never expires (``notAfter`` 9999-12-31, RFC 5280's "no
well-defined expiration date"): a pinned certificate that expired would have
to be replaced, and every client would see a changed identity. Nothing checks
its names either; its subject only says which host made it.

A handshake has a deadline (:class:`HandshakeDeadline`): a client that
connects and sends nothing, or half a ``ClientHello``, is cut off once the
deadline of an unfinished frame (``--frame-timeout``, 30 s) has passed since it
connected, as a frame trickled that slowly would be.

Light on purpose: ``cryptography`` and ``twisted.internet.ssl`` are imported
only when a certificate is made or loaded.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import os
import re
import socket
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, IReactorTime
from zope.interface import implementer

if TYPE_CHECKING:
    from OpenSSL import SSL
    from twisted.protocols.tls import TLSMemoryBIOProtocol

#: Files in ``DATA_DIR``: the private key (0600) and the certificate.
KEY_FILE: Final = "tls-key.pem"
CERT_FILE: Final = "tls-cert.pem"

#: RFC 5280 4.1.2.5: a certificate with no well-defined expiration date.
NO_EXPIRY: Final = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.timezone.utc)

#: The prefix of a fingerprint, as ssh writes it.
FINGERPRINT_PREFIX: Final = "SHA256:"

_HEX: Final = re.compile(r"[0-9a-fA-F]{64}")


class CertificateError(Exception):
    """The server's certificate cannot be made or read; the message is for the operator."""


def fingerprintOf(der: bytes) -> str:
    """The fingerprint of a DER certificate: ``SHA256:`` and the unpadded base64 of its SHA-256."""
    digest = hashlib.sha256(der).digest()
    return FINGERPRINT_PREFIX + base64.b64encode(digest).decode("ascii").rstrip("=")


def parseFingerprint(text: str) -> str:
    """A fingerprint as given by a user, in the form :func:`fingerprintOf` writes.

    Takes ``SHA256:BASE64`` (what the server logs) and also 64 hex digits,
    with or without colons (``openssl x509 -noout -fingerprint -sha256``).

    :raises ValueError: with a message for the user.
    """
    given = text.strip()
    if given.upper().startswith(FINGERPRINT_PREFIX):
        encoded = given[len(FINGERPRINT_PREFIX) :]
        try:
            digest = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except binascii.Error:
            digest = b""
        if len(digest) == hashlib.sha256().digest_size:
            return FINGERPRINT_PREFIX + base64.b64encode(digest).decode("ascii").rstrip("=")
    hexDigits = given.split("=")[-1].replace(":", "")
    if _HEX.fullmatch(hexDigits):
        digest = bytes.fromhex(hexDigits)
        return FINGERPRINT_PREFIX + base64.b64encode(digest).decode("ascii").rstrip("=")
    raise ValueError(
        f"{text!r} is not a SHA-256 fingerprint (SHA256:BASE64 as the server logs it, "
        "or 64 hex digits)"
    )


@dataclass(frozen=True)
class ServerCertificate:
    """The server's key and certificate, as loaded from ``DATA_DIR``.

    :ivar keyPath: the PEM private key (mode 0600).
    :ivar certPath: the PEM certificate.
    :ivar fingerprint: the certificate's, as :func:`fingerprintOf` writes it.
    """

    keyPath: Path
    certPath: Path
    keyPEM: bytes
    certPEM: bytes
    fingerprint: str

    def contextFactory(
        self, handshakeTimeout: float | None = None, reactor: IReactorTime | None = None
    ) -> HandshakeDeadline:
        """Twisted's server TLS options for this certificate: TLS 1.2 at least,
        each handshake within its deadline (:class:`HandshakeDeadline`).

        The value is an ``IOpenSSLServerConnectionCreator`` for
        ``TLSMemoryBIOFactory``.

        :param handshakeTimeout: seconds a handshake may take from the
            connection (0: no deadline); None: the served factory's
            ``frameTimeout`` (``--frame-timeout``), else
            :data:`netproto.framing.DEFAULT_FRAME_TIMEOUT`.
        :param reactor: whose clock the deadlines run on (default: the global reactor).
        """
        from OpenSSL import SSL
        from twisted.internet import ssl

        pair = ssl.PrivateCertificate.loadPEM(self.certPEM + self.keyPEM)
        options = ssl.CertificateOptions(
            privateKey=pair.privateKey.original,
            certificate=pair.original,
            raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        )
        # Twisted's ALPN callback answers a client that offers ALPN (every browser,
        # curl, openssl -alpn) with a fatal "internal error" alert when the served
        # factory names no protocol: it returns b"" where pyOpenSSL expects
        # NO_OVERLAPPING_PROTOCOLS. netproto's services negotiate none (the web
        # page speaks HTTP/1.1 without ALPN), so the handshake goes on without one.
        options.getContext().set_alpn_select_callback(
            lambda connection, offered: SSL.NO_OVERLAPPING_PROTOCOLS
        )
        if reactor is None:
            from twisted.internet import reactor as installed

            reactor = installed
        return HandshakeDeadline(options, reactor, handshakeTimeout)


@implementer(IOpenSSLServerConnectionCreator)
class HandshakeDeadline:
    """Server TLS options whose handshakes end within a deadline from the connection.

    Why: a client that connects and sends nothing, or part of a
    ``ClientHello``, held its connection until the framed protocol's grace
    period (30 s) ended, and then 10 s more (``CLOSE_GRACE``): the ``E timeout``
    it was to be told waited for a handshake that never came. The web page's
    connections waited for twisted.web's 60 s. An unfinished handshake is an
    unfinished frame of the transport's own, so it gets the frame deadline
    (``--frame-timeout``): past it the connection is aborted (no ``E`` can be
    sent without TLS). A handshake that completes, however late its
    application data, is not touched.

    :param options: the certificate's ``CertificateOptions``.
    :param reactor: whose ``callLater`` runs the deadlines.
    :param timeout: see :meth:`ServerCertificate.contextFactory`.
    """

    def __init__(self, options: Any, reactor: IReactorTime, timeout: float | None = None) -> None:
        self.options = options
        self.reactor = reactor
        self.timeout = timeout

    def getContext(self) -> SSL.Context:
        """The OpenSSL context of every connection (``IOpenSSLContextFactory``)."""
        context: SSL.Context = self.options.getContext()
        return context

    def deadlineFor(self, protocol: TLSMemoryBIOProtocol) -> float:
        """Seconds ``protocol``'s handshake may take: :attr:`timeout` if given,
        else the served factory's frame deadline."""
        if self.timeout is not None:
            return self.timeout
        from netproto.framing import DEFAULT_FRAME_TIMEOUT

        served = getattr(getattr(protocol, "factory", None), "wrappedFactory", None)
        return float(getattr(served, "frameTimeout", DEFAULT_FRAME_TIMEOUT))

    def serverConnectionForTLS(self, protocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        """The OpenSSL connection of a new TLS connection, its deadline armed."""
        from OpenSSL import SSL

        connection: SSL.Connection = self.options.serverConnectionForTLS(protocol)
        timeout = self.deadlineFor(protocol)
        if timeout <= 0:
            return connection
        # Weakly: a connection gone before its deadline is not kept alive by it.
        expired = self.reactor.callLater(timeout, _handshakeExpired, weakref.ref(protocol))

        def handshakeDone(connection: SSL.Connection, where: int, ret: int) -> None:
            if where & SSL.SSL_CB_HANDSHAKE_DONE and expired.active():
                expired.cancel()

        connection.set_info_callback(handshakeDone)
        return connection


def _handshakeExpired(reference: weakref.ref[TLSMemoryBIOProtocol]) -> None:
    """A handshake's deadline passed: abort its connection unless it finished."""
    protocol = reference()
    if protocol is None or not protocol.connected:
        return
    connection = protocol.getHandle()
    if connection is not None and connection.get_peer_finished() is None:
        protocol.abortConnection()


def loadOrCreate(dataDir: Path, hostname: str | None = None) -> ServerCertificate:
    """The certificate in ``dataDir``, made first if there is none.

    A key without a certificate (a start that stopped between the two) gets a
    certificate; a certificate without its key is an error, as is a key that
    does not match, since making a new one would change the server's identity
    behind its clients' backs.

    :param hostname: the name in the certificate's subject (default: this host's).
    :raises CertificateError: with a message for the operator.
    """
    keyPath, certPath = dataDir / KEY_FILE, dataDir / CERT_FILE
    if certPath.exists() and not keyPath.exists():
        raise CertificateError(
            f"{keyPath}: missing, but {certPath} exists (restore the key, or remove "
            "both to make a new certificate: every client will then see a changed one)"
        )
    try:
        if not certPath.exists():
            keyPEM = keyPath.read_bytes() if keyPath.exists() else writePrivate(keyPath, _newKey())
            writePrivate(certPath, _selfSigned(keyPEM, hostname or socket.gethostname()))
        keyPEM, certPEM = keyPath.read_bytes(), certPath.read_bytes()
    except OSError as e:
        raise CertificateError(f"{e.filename or keyPath}: {e.strerror}") from None
    return _check(keyPath, certPath, keyPEM, certPEM)


def _check(keyPath: Path, certPath: Path, keyPEM: bytes, certPEM: bytes) -> ServerCertificate:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        cert = x509.load_pem_x509_certificate(certPEM)
        key = serialization.load_pem_private_key(keyPEM, password=None)
    except ValueError as e:
        raise CertificateError(f"{certPath} or {keyPath}: unreadable: {e}") from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if cert.public_key().public_bytes(der, spki) != key.public_key().public_bytes(der, spki):
        raise CertificateError(f"{certPath} is not the certificate of the key {keyPath}")
    fingerprint = fingerprintOf(cert.public_bytes(serialization.Encoding.DER))
    return ServerCertificate(keyPath, certPath, keyPEM, certPEM, fingerprint)


def _newKey() -> bytes:
    """A new ECDSA P-256 key in PEM: what every TLS client (browsers included) takes."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _selfSigned(keyPEM: bytes, hostname: str) -> bytes:
    """A self-signed certificate for ``keyPEM``, naming ``hostname``, that never expires."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = serialization.load_pem_private_key(keyPEM, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError("the key is not an ECDSA key")
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"netproto on {hostname}"[:64])])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))  # clocks a little behind
        .not_valid_after(NO_EXPIRY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def writePrivate(path: Path, data: bytes) -> bytes:
    """Write ``data`` to ``path`` (mode 0600) whole or not at all: through a
    temporary file renamed over it, so a crash leaves no half-written key or
    list of pins. Returns ``data``."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return data
