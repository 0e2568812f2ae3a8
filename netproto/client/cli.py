"""``netproto``: the bundled client. One subcommand per service, plus ``passwd``.

Each service's subcommand lives beside its server, in ``netproto/SERVICE/client.py``,
which provides ``configure(parser)`` and ``async run(reactor, args) -> int``.
Any failure is one line on stderr and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import getpass
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twisted.internet import defer, task

from netproto import __version__
from netproto.auth import AuthSetupError, writeUser
from netproto.client.framed import ClientError

#: subcommand -> (module, one-line help)
SUBCOMMANDS = {
    "chat": ("netproto.chat.client", "join the chat (interactive, or lines from stdin)"),
    "exec": ("netproto.exec.client", "run a command on the server, like ssh HOST CMD"),
    "upload": ("netproto.upload.client", "upload files and directories, verified"),
}


def buildParser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="netproto", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"netproto {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (moduleName, helpText) in SUBCOMMANDS.items():
        module = importlib.import_module(moduleName)
        p = sub.add_parser(name, help=helpText, description=helpText)
        module.configure(p)
        p.set_defaults(module=module)
    p = sub.add_parser("passwd", help="add or change a user in a users file (for --users)")
    p.add_argument("file", type=Path, metavar="FILE")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(module=None)
    return parser


def passwd(args: argparse.Namespace) -> int:
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
    parser = buildParser()
    args = parser.parse_args(argv)
    try:
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
