"""Where the client connects and how it authenticates: the options all subcommands share.

TLS: the client talks TLS to a server run with ``twistd netproto --tls`` when
told to (``--tls``, or ``--fingerprint``), or when ``known_servers`` already
pins the server: once pinned, a server is always reached over TLS and its
certificate checked (:mod:`netproto.client.pinning`), so a server that
suddenly speaks plaintext is not trusted with the token. The client cannot
tell a TLS server from a plain one before sending anything: a framed server
speaks first in plaintext, a TLS one waits for the client's handshake.
"""

from __future__ import annotations

import argparse
import getpass
import ipaddress
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IStreamClientEndpoint

from netproto.auth import AuthSetupError, readClientToken
from netproto.client.framed import ClientError
from netproto.options import defaultDataDir
from netproto.tls import parseFingerprint
from netproto.tlsimports import plainEndpoint

if TYPE_CHECKING:
    from netproto.client.pinning import KnownServers


def addConnectionArguments(parser: argparse.ArgumentParser, defaultPort: int) -> None:
    """``--server``, ``--endpoint``; ``defaultPort`` is the service's default port."""
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--server",
        metavar="HOST[:PORT]",
        default=None,
        help=f"server to connect to (default 127.0.0.1:{defaultPort})",
    )
    group.add_argument(
        "--endpoint",
        metavar="DESC",
        default=None,
        help="any Twisted client endpoint, e.g. tls:host=example.org:port=8001:trustRoots=DIR "
        "or unix:path=/run/netproto/exec.sock (instead of --server)",
    )
    tls = parser.add_argument_group("TLS (servers run with twistd netproto --tls)")
    tls.add_argument(
        "--tls",
        action="store_true",
        help="connect over TLS and check the server's certificate against known_servers "
        "(pinned at first contact); implied by --fingerprint and by a pinned server",
    )
    tls.add_argument(
        "--fingerprint",
        metavar="SHA256:...",
        type=_fingerprint,
        default=None,
        help="the server certificate's fingerprint, as the server logs it: anything else is "
        "refused; it is pinned (replacing an old pin) once seen",
    )
    tls.add_argument(
        "--known-servers",
        metavar="PATH",
        type=Path,
        default=None,
        help="the pinned servers (default: $XDG_CONFIG_HOME/netproto/known_servers, "
        "else ~/.config/netproto/known_servers)",
    )
    parser.set_defaults(defaultPort=defaultPort)


def _fingerprint(text: str) -> str:
    try:
        return parseFingerprint(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def addAuthArguments(parser: argparse.ArgumentParser) -> None:
    """``--token-file`` and ``--user`` for the framed services."""
    group = parser.add_argument_group("authentication")
    group.add_argument(
        "--token-file",
        metavar="PATH",
        type=Path,
        default=None,
        help="the server token (default: $NETPROTO_TOKEN, else DATA_DIR/token of this machine)",
    )
    group.add_argument(
        "--user",
        metavar="NAME",
        default=None,
        help="log in with a password instead (from $NETPROTO_PASSWORD, else a prompt)",
    )


def parseServer(server: str, defaultPort: int) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT``, ``[V6]:PORT`` or ``V6`` as ``(host, port)``."""
    host, port = server, defaultPort
    if server.startswith("["):
        host, _, rest = server[1:].partition("]")
        if rest.startswith(":"):
            port = _port(rest[1:], server)
    elif server.count(":") == 1:
        host, _, portText = server.partition(":")
        port = _port(portText, server)
    if not host:
        raise ClientError(f"--server {server!r}: no host")
    return host, port


def _port(text: str, server: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ClientError(f"--server {server!r}: {text!r} is not a port number")
    return int(text)


def _target(args: argparse.Namespace) -> tuple[str, str | None, str]:
    """Where ``args`` connect: the name the server is pinned under, the host
    name for SNI (None with ``--endpoint``) and the client endpoint description."""
    if args.endpoint:
        return args.endpoint, None, args.endpoint
    host, port = parseServer(args.server or "127.0.0.1", args.defaultPort)
    escaped = host.replace(":", "\\:")  # IPv6 colons are escaped in endpoint strings
    server = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return server, host, f"tcp:host={escaped}:port={port}"


def usesTLS(args: argparse.Namespace) -> bool:
    """Whether the connection ``args`` ask for may be TLS: ``--tls``,
    ``--fingerprint``, a server pinned in known_servers, or an ``--endpoint``
    of another type than plain TCP or UNIX. False for a command that does not
    connect. The client keeps pyOpenSSL out otherwise (:mod:`netproto.tlsimports`)."""
    if not hasattr(args, "endpoint"):
        return False
    server, _, description = _target(args)
    return not plainEndpoint(description) or _pinnedTLS(server, args) is not None


def _pinnedTLS(server: str, args: argparse.Namespace) -> KnownServers | None:
    """The known_servers file when the connection to ``server`` is TLS checked against a pin."""
    from netproto.client.pinning import KnownServers, defaultKnownServers

    known = KnownServers(getattr(args, "known_servers", None) or defaultKnownServers())
    if getattr(args, "tls", False) or getattr(args, "fingerprint", None) or known.lookup(server):
        return known
    return None


def clientEndpoint(reactor: Any, args: argparse.Namespace) -> IStreamClientEndpoint:
    """The endpoint from ``--endpoint``, else ``--server``, else 127.0.0.1 and the
    default port; over TLS with a pinned certificate when asked or pinned."""
    # Here, not above: endpoints imports pyOpenSSL when it can (netproto.tlsimports).
    from twisted.internet.endpoints import clientFromString, wrapClientTLS

    server, host, description = _target(args)
    try:
        endpoint: IStreamClientEndpoint = clientFromString(reactor, description)
    except (ValueError, TypeError, KeyError) as e:
        raise ClientError(f"--endpoint {args.endpoint!r}: {e}") from None
    known = _pinnedTLS(server, args)
    if known is None:
        return endpoint
    if args.endpoint and args.endpoint.split(":", 1)[0] in ("tls", "ssl"):
        raise ClientError(
            f"--endpoint {args.endpoint!r} is TLS checked against a CA already; "
            "--tls, --fingerprint and known_servers are for a server run with --tls"
        )
    from netproto.client.pinning import PinningCreator

    creator = PinningCreator(server, known, getattr(args, "fingerprint", None), _nameOnly(host))
    return wrapClientTLS(creator, endpoint)


def _nameOnly(host: str | None) -> str | None:
    """``host`` if it is a name (SNI carries names, never addresses), else None."""
    try:
        ipaddress.ip_address(host or "")
    except ValueError:
        return host or None
    return None


def credentials(args: argparse.Namespace) -> dict[str, str]:
    """The ``A`` payload: a password login with ``--user``, else the token.

    Called before the reactor runs, since it may prompt.
    """
    if args.user:
        password = os.environ.get("NETPROTO_PASSWORD")
        if password is None:
            try:
                password = getpass.getpass(f"password for {args.user}: ")
            except (EOFError, KeyboardInterrupt):
                raise ClientError("no password given") from None
        return {"user": args.user, "password": password}
    if args.token_file is None and os.environ.get("NETPROTO_TOKEN"):
        return {"token": os.environ["NETPROTO_TOKEN"].strip()}
    path = args.token_file or defaultDataDir() / "token"
    try:
        return {"token": readClientToken(path)}
    except AuthSetupError as e:
        raise ClientError(f"{e} (give --token-file, NETPROTO_TOKEN or --user)") from None
