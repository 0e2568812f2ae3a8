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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

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

    def contextFactory(self) -> Any:
        """Twisted's server TLS options for this certificate: TLS 1.2 at least.

        The value is a :class:`twisted.internet.ssl.CertificateOptions`
        (an ``IOpenSSLServerConnectionCreator``) for ``TLSMemoryBIOFactory``.
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
        return options


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
