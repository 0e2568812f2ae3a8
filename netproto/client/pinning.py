"""The client's side of TLS without a CA: servers pinned by fingerprint, as ssh pins host keys.

``netproto`` talks TLS to a server run with ``twistd netproto --tls`` and
checks its certificate against ``known_servers``
(``$XDG_CONFIG_HOME/netproto/known_servers``, else
``~/.config/netproto/known_servers``): one ``SERVER FINGERPRINT`` line per
server, ``SERVER`` being ``HOST:PORT`` (``[V6]:PORT``) or the ``--endpoint``
description.

* First contact (no line for the server): the certificate is accepted and
  pinned, and the client says so on stderr with the fingerprint, to compare
  with the one the server logs (ssh's ``accept-new``). ``--fingerprint`` makes
  first contact safe: the certificate must then have that fingerprint.
* Later: the certificate must be the pinned one. Any other is refused before
  a byte of the session (the token, a password) is sent, with ssh's warning.
* ``--fingerprint`` given for a server pinned to another certificate (the
  server's was replaced, and its new fingerprint came by a trusted way):
  the certificate must have the given fingerprint, and it replaces the pin.

The check runs when the TLS handshake completes (the server has then proved
it holds the certificate's key) and fails the connection through Twisted's
``failVerification``, as Twisted's own host name check does.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.python.failure import Failure
from zope.interface import implementer

from netproto.client.framed import ClientError
from netproto.tls import fingerprintOf, writePrivate

if TYPE_CHECKING:
    from OpenSSL import SSL

#: ssh's words, so that nobody reads past it.
CHANGED_BANNER: Final = (
    "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n"
    "@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n"
    "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n"
)

#: A known_servers file larger than this is not a list of servers (read whole, each run).
MAX_KNOWN_SERVERS_SIZE: Final = 1024 * 1024


class CertificateRefused(ClientError):
    """The server's certificate is not the one expected: nothing was sent to it."""


def defaultKnownServers(environ: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_CONFIG_HOME/netproto/known_servers``, else ``~/.config/netproto/known_servers``."""
    base = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "netproto" / "known_servers"


class KnownServers:
    """The ``known_servers`` file: fingerprints by server, read and appended."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _lines(self) -> list[str]:
        try:
            with self.path.open("rb") as f:
                data = f.read(MAX_KNOWN_SERVERS_SIZE + 1)
        except FileNotFoundError:
            return []
        except OSError as e:
            raise ClientError(f"{self.path}: {e.strerror}") from None
        if len(data) > MAX_KNOWN_SERVERS_SIZE:
            raise ClientError(f"{self.path}: larger than {MAX_KNOWN_SERVERS_SIZE} bytes")
        return data.decode("utf-8", "replace").splitlines()

    def lookup(self, server: str) -> str | None:
        """The fingerprint pinned for ``server``, or None (the last line for it counts)."""
        found = None
        for line in self._lines():
            fields = line.split()
            if len(fields) >= 2 and fields[0] == server and not line.startswith("#"):
                found = fields[1]
        return found

    def pin(self, server: str, fingerprint: str) -> None:
        """Pin ``server`` to ``fingerprint``, replacing any line it had.

        The file and its directory are created private (0600, 0700); the new
        content replaces the old at once (a temporary file renamed over it).
        """
        kept = [line for line in self._lines() if line.split()[:1] != [server]]
        kept.append(f"{server} {fingerprint}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            writePrivate(self.path, "".join(f"{line}\n" for line in kept).encode("utf-8"))
        except OSError as e:
            raise ClientError(f"{self.path}: cannot pin {server}: {e.strerror}") from None


def changedMessage(server: str, fingerprint: str, pinned: str, known: Path) -> str:
    """What the user reads when ``server`` shows another certificate than its pinned one."""
    return (
        f"{CHANGED_BANNER}"
        "IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!\n"
        "Someone could be eavesdropping on you right now (man-in-the-middle attack)!\n"
        "It is also possible that the server's certificate has just been replaced.\n"
        f"The certificate of {server} has the fingerprint {fingerprint};\n"
        f"{known} pins {pinned}.\n"
        "Nothing was sent to it. If the change is expected, check the new fingerprint with "
        "the server's operator (twistd netproto logs it at start) and connect once with "
        f"--fingerprint {fingerprint}, which replaces the pin."
    )


@implementer(IOpenSSLClientConnectionCreator)
class PinningCreator:
    """Client TLS connections that accept exactly the expected server certificate.

    OpenSSL's own chain check is off (the certificate is self-signed and
    trusted by its fingerprint alone); the fingerprint is checked once the
    handshake is done, before the connection is handed to the protocol.

    :param server: the name the server is pinned under.
    :param known: the known_servers file.
    :param expected: the fingerprint from ``--fingerprint``, or None.
    :param hostname: the name sent in SNI (None for an address).
    :param say: where the notice of a first contact goes (default: stderr).
    """

    def __init__(
        self,
        server: str,
        known: KnownServers,
        expected: str | None = None,
        hostname: str | None = None,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.server = server
        self.known = known
        self.expected = expected
        self.hostname = hostname
        self.say = say if say is not None else _stderr
        #: The fingerprint the server presented, once checked.
        self.seen: str | None = None
        from OpenSSL import SSL  # here, not above: KnownServers is used without TLS

        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.set_min_proto_version(SSL.TLS1_2_VERSION)
        # Trust comes from the fingerprint, checked below, not from a CA.
        context.set_verify(SSL.VERIFY_PEER, lambda *_: True)
        context.set_info_callback(self._info)
        self._context = context

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        from OpenSSL import SSL

        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        if self.hostname:
            connection.set_tlsext_host_name(self.hostname.encode("idna"))
        return connection

    def _info(self, connection: SSL.Connection, where: int, ret: int) -> None:
        from OpenSSL import SSL

        failed = ret == 0 or connection.get_state_string() == b"error"  # -1 alone: waiting
        if where & SSL.SSL_CB_EXIT and failed and self.seen is None:
            connection.get_app_data().failVerification(Failure(ClientError(self._noTLS())))
            return
        if not where & SSL.SSL_CB_HANDSHAKE_DONE:
            return
        try:
            self.check(connection.get_peer_certificate(as_cryptography=True))
        except ClientError as e:
            connection.get_app_data().failVerification(Failure(e))
        except Exception:  # a bug here must not pass a connection unchecked
            connection.get_app_data().failVerification(Failure())

    def _noTLS(self) -> str:
        return (
            f"{self.server} does not speak TLS: is it run with twistd netproto --tls? If not, "
            "leave out --tls and --fingerprint, and remove its line from "
            f"{self.known.path} (a pinned server is always reached over TLS)"
        )

    def check(self, certificate: Any) -> None:
        """Accept ``certificate`` (a ``cryptography`` certificate) or raise
        :class:`CertificateRefused`; pin it on first contact or with ``--fingerprint``."""
        from cryptography.hazmat.primitives.serialization import Encoding

        if certificate is None:
            raise CertificateRefused(f"{self.server} sent no certificate")
        fingerprint = fingerprintOf(certificate.public_bytes(Encoding.DER))
        pinned = self.known.lookup(self.server)
        if self.expected is not None:
            if fingerprint != self.expected:
                raise CertificateRefused(
                    f"the certificate of {self.server} has the fingerprint {fingerprint}, "
                    f"not {self.expected} (--fingerprint): refused, nothing was sent to it"
                )
            if pinned != fingerprint:
                self.known.pin(self.server, fingerprint)
                self.say(
                    f"{self.server}: certificate {fingerprint} pinned in {self.known.path}"
                    + (f" (replacing {pinned})" if pinned else "")
                )
        elif pinned is None:
            self.known.pin(self.server, fingerprint)
            self.say(
                f"first contact with {self.server}: its certificate {fingerprint} is now "
                f"pinned in {self.known.path} (compare it with the one the server logs)"
            )
        elif pinned != fingerprint:
            raise CertificateRefused(
                changedMessage(self.server, fingerprint, pinned, self.known.path)
            )
        self.seen = fingerprint


def _stderr(text: str) -> None:
    print(f"netproto: {text}", file=sys.stderr)
