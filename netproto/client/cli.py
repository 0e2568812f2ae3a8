"""netproto: the bundled client. One subcommand per service that brings one, plus passwd.

A service brings its subcommand through its plugin declaration
(:class:`netproto.services.ClientCommand`): chat, exec and upload as any
third-party plugin. Only the chosen subcommand's module is imported, so
``netproto --help`` reads nothing but the declarations. Any failure is one
line on stderr and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import getpass
import importlib
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from twisted.internet import defer, task

from netproto import __version__
from netproto.client.connection import usesTLS
from netproto.client.framed import ClientError
from netproto.services import ClientCommand, ServiceError, discoverServices
from netproto.tlsimports import keepOpenSSLOut

#: The subcommand netproto itself brings (no service behind it).
OWN_COMMAND = "passwd"


def clientCommands() -> dict[str, ClientCommand]:
    """The subcommand of every service plugin that declares one, by service name."""
    try:
        services = discoverServices()
    except ServiceError as e:
        raise ClientError(str(e)) from None
    commands = {}
    for name, service in services.items():
        # Both optional in INetprotoService: a plugin may bring no subcommand.
        more = getattr(service, "moreClients", {})
        command = getattr(service, "client", None)
        for named, given in ([(name, command)] if command else []) + list(more.items()):
            if named == OWN_COMMAND or named in commands or (named != name and named in services):
                raise ClientError(f"the service plugin {name!r} takes the name {named!r} twice")
            commands[named] = given
    return commands


def buildParser(
    commands: Mapping[str, ClientCommand], chosen: str | None = None
) -> argparse.ArgumentParser:
    """The parser of every subcommand; only ``chosen``'s module is imported and
    configured (its arguments are the only ones parsed)."""
    parser = argparse.ArgumentParser(prog="netproto", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"netproto {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in commands.items():
        p = sub.add_parser(name, help=command.help, description=command.help)
        if name == chosen:
            module = importlib.import_module(command.module)
            module.configure(p)
            p.set_defaults(module=module)
    p = sub.add_parser(OWN_COMMAND, help="add or change a user in a users file (for --users)")
    p.add_argument("file", type=Path, metavar="FILE")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(module=None)
    return parser


def passwd(args: argparse.Namespace) -> int:
    from netproto.auth import AuthSetupError, writeUser  # passwd's alone: not every command's start

    password = os.environ.get("NETPROTO_PASSWORD")
    if password is None:
        password = getpass.getpass(f"new password for {args.name}: ")
        if password != getpass.getpass("again: "):
            raise ClientError("the passwords differ; nothing changed")
    if not password:
        raise ClientError("empty password; nothing changed")
    try:
        writeUser(args.file, args.name, password)
    except (AuthSetupError, OSError) as e:
        raise ClientError(str(e)) from None
    print(f"{args.file}: {args.name} set", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        commands = clientCommands()
    except ClientError as e:
        print(f"netproto: {e}", file=sys.stderr)
        sys.exit(e.exitCode)
    # The top-level parser takes no option with a value: the first other word names the command.
    chosen = next((word for word in argv if not word.startswith("-")), None)
    args = buildParser(commands, chosen).parse_args(argv)
    try:
        if not usesTLS(args):
            keepOpenSSLOut()  # before the reactor's import: 0.1 s sooner
        if args.module is None:
            code = passwd(args)
        else:
            prepare = getattr(args.module, "prepare", None)
            if prepare is not None:
                prepare(args)  # prompts and checks that must happen before the reactor runs
            code = _react(args)
    except ClientError as e:
        print(f"netproto {args.command}: {e}", file=sys.stderr)
        code = e.exitCode
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


def _react(args: argparse.Namespace) -> int:
    result: list[int] = []
    failure: list[ClientError] = []

    async def run(reactor: Any) -> None:
        try:
            result.append(await args.module.run(reactor, args))
        except ClientError as e:
            failure.append(e)

    def start(reactor: Any) -> defer.Deferred[None]:
        return defer.ensureDeferred(run(reactor))

    try:
        task.react(start)
    except SystemExit as e:
        if failure:
            raise failure[0] from None
        if e.code not in (0, None):
            raise ClientError("internal error (see above)", 255) from None
    if failure:
        raise failure[0]
    return result[0] if result else 0
