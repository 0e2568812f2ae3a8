"""``--chat-redis URL``: where the chat cluster's Redis is.

Light on purpose: the chat plugin's declaration imports it to check the option
when it is parsed (``twistd netproto --chat-redis ...``), before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

if TYPE_CHECKING:
    from twisted.internet.interfaces import IStreamClientEndpoint

#: Seconds a connection attempt to Redis may take before it counts as failed.
CONNECT_TIMEOUT = 5.0


@dataclass(frozen=True)
class RedisAddress:
    """Where Redis is, from a ``redis://`` or ``rediss://`` URL.

    ``redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]``; ``rediss://`` is the same over TLS:
    the server's certificate is checked against HOST, with the system's CAs or, given
    ``?ssl_ca_certs=PATH`` (the name redis-py gives it), the CA certificates in that
    PEM file.
    """

    host: str
    port: int
    db: int
    tls: bool
    username: str | None
    password: str | None
    caCerts: str | None = None

    @classmethod
    def fromURL(cls, url: str) -> RedisAddress:
        """Parse ``url``; a ValueError says what is wrong with it, for the operator."""
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(f"{url!r}: expected redis://HOST:PORT/DB or rediss://...")
        if not parts.hostname:
            raise ValueError(f"{url!r}: no host")
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise ValueError(f"{url!r}: the database must be a number, not {path!r}")
        try:
            port = parts.port or 6379
        except ValueError:
            raise ValueError(f"{url!r}: bad port") from None
        query = parse_qs(parts.query)
        unknown = set(query) - {"ssl_ca_certs"}
        if unknown:
            raise ValueError(f"{url!r}: unknown parameter {sorted(unknown)[0]!r}")
        caCerts = query.get("ssl_ca_certs", [None])[-1]
        if caCerts is not None and parts.scheme != "rediss":
            raise ValueError(f"{url!r}: ssl_ca_certs is for rediss:// (TLS)")
        return cls(
            host=parts.hostname,
            port=port,
            db=int(path or 0),
            tls=parts.scheme == "rediss",
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password is not None else None,
            caCerts=caCerts,
        )

    def endpoint(self, reactor: Any) -> IStreamClientEndpoint:
        """Where to connect: TCP (IPv4 or IPv6, whichever the name resolves to), with
        TLS for ``rediss://``."""
        from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
        from twisted.internet.ssl import Certificate, optionsForClientTLS, trustRootFromCertificates

        plain = HostnameEndpoint(reactor, self.host, self.port, timeout=CONNECT_TIMEOUT)
        if not self.tls:
            return plain
        trust = None
        if self.caCerts is not None:
            with open(self.caCerts, "rb") as f:
                trust = trustRootFromCertificates([Certificate.loadPEM(f.read())])
        return wrapClientTLS(optionsForClientTLS(self.host, trustRoot=trust), plain)


def redisURL(text: str) -> str:
    """The ``--chat-redis`` option's check: ``text`` if it is a Redis URL we can use."""
    RedisAddress.fromURL(text)
    return text


redisURL.coerceDoc = (  # type: ignore[attr-defined]
    "Must be redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] or rediss://...[?ssl_ca_certs=PEM]."
)
