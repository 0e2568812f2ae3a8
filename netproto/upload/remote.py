"""What the files commands share: connecting to the upload service, checking
what its hello offers, and reading a listing (PROTOCOL.md section 6)."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Final, NamedTuple

from netproto.client.connection import addAuthArguments, addConnectionArguments, clientEndpoint
from netproto.client.framed import ClientError, FramedClient, connectFramed


def addTransferArguments(parser: argparse.ArgumentParser, what: str, port: int) -> None:
    """``--resume``, ``--quiet``, and the connection and authentication
    options of ``netproto upload`` and ``netproto download``."""
    parser.add_argument(
        "--resume",
        action="store_true",
        help=f"continue interrupted {what}s, and keep their data if interrupted again",
    )
    parser.add_argument(
        "--quiet", "-q", action="store_true", help="no progress bar and no line per file"
    )
    addConnectionArguments(parser, port)
    addAuthArguments(parser)


def complain(command: str, what: str, why: str) -> None:
    """One line on stderr about one thing that failed (the run goes on)."""
    sys.stderr.write(f"netproto {command}: {what}: {why}\n")


def say(line: str) -> None:
    """One line of output on stdout, at once (a long run shows its progress)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Entry(NamedTuple):
    """One file or directory of a listing, as the server gave it (a tuple:
    ``netproto ls -R`` makes 10,000 of them, and a frozen dataclass's
    constructor cost a fifth of the client's work)."""

    name: str
    type: str
    size: int
    mtime: float
    sha256: str | None

    @property
    def isDir(self) -> bool:
        return self.type == "dir"


async def connectFiles(reactor: Any, args: argparse.Namespace, *features: str) -> FramedClient:
    """Connect and log in to the upload service, which must offer ``features``."""
    client = await connectFramed(clientEndpoint(reactor, args), "upload", args.auth)
    assert client.hello is not None
    missing = [f for f in features if f not in client.hello.features]
    if missing:
        client.close()
        raise ClientError(
            f"this server does not offer {', '.join(missing)} "
            "(PROTOCOL.md section 6: an older netproto server?)"
        )
    return client


_KINDS: Final = ("file", "dir")
_NUMBERS: Final = frozenset((int, float))


def _entry(raw: object) -> Entry:
    if not isinstance(raw, dict):
        raise ClientError("protocol error: a listing entry is not an object")
    name, kind, size = raw.get("name"), raw.get("type"), raw.get("size", 0)
    mtime, sha256 = raw.get("mtime", 0), raw.get("sha256")
    if (
        type(name) is not str  # exact types: what JSON decodes to, checked fastest
        or kind not in _KINDS
        or type(size) is not int
        or type(mtime) not in _NUMBERS
        or not (sha256 is None or type(sha256) is str)
    ):
        raise ClientError(f"protocol error: a listing entry is malformed: {raw!r:.200}")
    return Entry(name, kind, size, float(mtime), sha256)


async def listRemote(client: FramedClient, path: str, recursive: bool) -> list[Entry]:
    """Every entry ``L`` gives for ``path`` (a directory's, or a file's own),
    in the order they came.

    :raises ServerError: the server refused (``not-found``, ``invalid-name``...).
    """
    client.sendJSON(b"L", {"path": path, "recursive": recursive})
    entries: list[Entry] = []
    while True:
        kind, payload = await client.receive()
        if kind == b"K":
            break
        if kind != b"I":
            raise ClientError(f"protocol error: expected an 'I' or 'K' frame, got {kind!r}")
        from netproto.codec import decodeJSON

        items = decodeJSON(payload).get("entries")
        if not isinstance(items, list):
            raise ClientError("protocol error: an 'I' frame without entries")
        entries.extend(_entry(item) for item in items)
    return entries
