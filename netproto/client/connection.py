"""Where the client connects and how it authenticates: the options all subcommands share."""

from __future__ import annotations

import argparse
import getpass
import os
from pathlib import Path
from typing import Any

from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IStreamClientEndpoint

from netproto.auth import AuthSetupError, readClientToken
from netproto.client.framed import ClientError
from netproto.tap import defaultDataDir


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
    parser.set_defaults(defaultPort=defaultPort)


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


def clientEndpoint(reactor: Any, args: argparse.Namespace) -> IStreamClientEndpoint:
    """The endpoint from ``--endpoint``, else ``--server``, else 127.0.0.1 and the default port."""
    if args.endpoint:
        try:
            return clientFromString(reactor, args.endpoint)  # type: ignore[no-any-return]
        except (ValueError, TypeError, KeyError) as e:
            raise ClientError(f"--endpoint {args.endpoint!r}: {e}") from None
    host, port = parseServer(args.server or "127.0.0.1", args.defaultPort)
    host = host.replace(":", "\\:")  # IPv6 colons are escaped in endpoint strings
    return clientFromString(reactor, f"tcp:host={host}:port={port}")  # type: ignore[no-any-return]


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
