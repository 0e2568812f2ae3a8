"""``netproto ls [PATH] [-l] [-R] [-h]``: what the upload service holds (PROTOCOL.md section 6).

One name per line, sorted, relative to PATH (a directory's with a trailing
``/``); with ``-R`` the whole tree below PATH. ``-l`` adds the type, the
size, the modification time and the SHA-256 when the server knows it
(``-`` otherwise); ``-h`` gives sizes in KiB, MiB... The exit status is 1
when the server refuses (``not-found``, ``invalid-name``, ``not-allowed``).
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
import time
from typing import Any

from netproto.client.connection import addAuthArguments, addConnectionArguments, credentials
from netproto.client.framed import ServerError
from netproto.upload.client import DEFAULT_PORT
from netproto.upload.remote import Entry, complain, connectFiles, listRemote


def configure(parser: argparse.ArgumentParser) -> None:
    # -h is --human-readable, as in ls; --help stays. The parser was made by
    # the netproto command with -h for help: its options group must resolve.
    for container in (parser, parser._optionals):
        container.conflict_handler = "resolve"
    parser.add_argument("path", nargs="?", default="", metavar="PATH", help="(default: the top)")
    parser.add_argument("-l", dest="long", action="store_true", help="size, time and SHA-256")
    parser.add_argument("-R", dest="recursive", action="store_true", help="the whole tree")
    parser.add_argument(
        "-h", "--human-readable", dest="human", action="store_true", help="sizes as 1.5M"
    )
    addConnectionArguments(parser, DEFAULT_PORT)
    addAuthArguments(parser)


def prepare(args: argparse.Namespace) -> None:
    args.auth = credentials(args)


def humanSize(size: int) -> str:
    """``size`` in the largest binary unit that keeps it at least 1, as ``ls -h``."""
    value = float(size)
    for unit in ("", "K", "M", "G", "T", "P"):
        if value < 1024 or unit == "P":
            return f"{size}" if not unit else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


def relativeName(entry: Entry, path: str) -> str:
    """``entry``'s name below the listed ``path`` (a file listed by its own
    name keeps it), a directory's with a trailing ``/``."""
    top = path.strip("/")
    name = entry.name
    if top and name.startswith(top + "/"):
        name = name[len(top) + 1 :]
    return name + "/" if entry.isDir else name


@functools.lru_cache(maxsize=4096)
def _minute(seconds: int) -> str:
    """The local time of ``seconds``, to the minute. Cached: the files of a
    tree written together share their second, and a listing of 10,000 files
    spent a tenth of its client time here."""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds))


def formatEntry(entry: Entry, path: str, long: bool, human: bool) -> str:
    name = relativeName(entry, path)
    if not long:
        return name
    size = humanSize(entry.size) if human else str(entry.size)
    when = _minute(math.floor(entry.mtime))  # as localtime: fractions dropped, rounded down
    kind = "d" if entry.isDir else "-"
    return f"{kind} {size:>12} {when} {entry.sha256 or '-':<64} {name}"


async def run(reactor: Any, args: argparse.Namespace) -> int:
    if not hasattr(args, "auth"):
        prepare(args)
    client = await connectFiles(reactor, args, "list")
    try:
        entries = await listRemote(client, args.path, args.recursive)
    except ServerError as e:
        complain("ls", args.path or "/", f"{e.code}: {e.serverMessage}")
        return 1
    finally:
        client.close()
    entries.sort(key=lambda e: e.name)
    lines = [formatEntry(e, args.path, args.long, args.human) + "\n" for e in entries]
    sys.stdout.write("".join(lines))
    return 0
