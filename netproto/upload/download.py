"""``netproto download NAME... [-o DIR] [--resume]``: files and trees back from the upload service.

The promises (PROTOCOL.md section 6):

* **Verified.** Each file is hashed as it arrives; its SHA-256 must be the
  one the server's ``F`` gives for the whole file (an ``E
  checksum-mismatch`` instead says the server's copy rotted on disk).
* **Nothing under the final name on any error.** Data goes to a temporary
  file beside the destination (``.NAME.netproto-download``), which is
  flushed to disk (``fsync``) and renamed into place only once verified,
  then its directory flushed. An existing file of that name is replaced, as
  ``scp`` does.
* **Resume.** With ``--resume`` a temporary file kept from an interrupted
  download (the client killed, the connection lost) is continued from its
  length, and kept again if this run is interrupted too; without it, any
  such file is started over, and removed on error.
* **Confined.** A name the server lists inside a tree must be a valid name
  below that tree (:func:`~netproto.upload.names.splitName`): a hostile
  server cannot make the client write outside ``-o DIR``.

Output: one line per file on stdout (``SHA256  SIZE  PATH``), a progress bar
on stderr on a terminal, one line per failed file on stderr; the exit status
is 1 if any file failed.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
from typing import Any, Final

from twisted.internet import threads

from netproto.client.connection import credentials
from netproto.client.framed import ClientError, ConnectionClosed, FramedClient, ServerError
from netproto.codec import decodeJSON
from netproto.errors import ProtocolError
from netproto.upload import digests
from netproto.upload.client import DEFAULT_PORT, progressBar
from netproto.upload.names import splitName
from netproto.upload.remote import (
    Entry,
    addTransferArguments,
    complain,
    connectFiles,
    listRemote,
    say,
)

#: Suffix of the temporary file a download lands in (hidden: a leading dot).
PART_SUFFIX: Final = ".netproto-download"
_PART_FLAGS: Final = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="+", metavar="NAME", help="files and directories")
    parser.add_argument(
        "-o", "--output", metavar="DIR", default=".", help="where they land (default: here)"
    )
    addTransferArguments(parser, "download", DEFAULT_PORT)


def prepare(args: argparse.Namespace) -> None:
    args.auth = credentials(args)


def partPath(dest: str) -> str:
    head, tail = os.path.split(dest)
    return os.path.join(head, f".{tail}{PART_SUFFIX}")


async def plan(client: FramedClient, name: str, output: str) -> list[tuple[Entry, str]]:
    """The files behind ``name`` (itself, or the files of its tree) and where
    each lands: ``OUTPUT/BASENAME`` for a file, ``OUTPUT/TOP/...`` for a tree.
    Directories of the tree are created (empty ones too)."""
    name = name.strip("/")
    entries = await listRemote(client, name, True)
    parent = name.rpartition("/")[0]
    jobs = []
    for entry in entries:
        if entry.name != name and not entry.name.startswith(name + "/" if name else ""):
            raise ClientError(f"protocol error: {entry.name!r} listed under {name!r}")
        try:
            segments = splitName(entry.name)
        except ProtocolError:
            raise ClientError(f"protocol error: the server listed {entry.name!r}") from None
        relative = [s.decode() for s in segments[len(parent.split("/")) if parent else 0 :]]
        local = os.path.join(output, *relative)
        if entry.isDir:
            os.makedirs(local, exist_ok=True)
        else:
            jobs.append((entry, local))
    jobs.sort(key=lambda job: job[0].name)
    return jobs


def _hashPrefix(fd: int, length: int, hasher: Any) -> None:
    if digests.hashPrefix(fd, length, hasher) < length:
        raise ClientError("the kept partial download got shorter")


def _writeAll(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


async def fetchFile(
    reactor: Any, client: FramedClient, entry: Entry, dest: str, args: argparse.Namespace
) -> tuple[int, str]:
    """Download one file to ``dest``, verified; its size and SHA-256.

    :raises ServerError: the server refused or failed this file.
    """
    part = partPath(dest)
    os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
    fd = os.open(part, _PART_FLAGS, 0o644)
    keep = False
    try:
        hasher = hashlib.sha256()
        offset = os.fstat(fd).st_size if args.resume else 0
        if offset > entry.size:
            offset = 0  # not a prefix of this file: start over
        os.ftruncate(fd, offset)
        os.lseek(fd, offset, os.SEEK_SET)  # the data goes after what is kept
        if offset:
            await threads.deferToThreadPool(
                reactor, reactor.getThreadPool(), _hashPrefix, fd, offset, hasher
            )
        client.sendJSON(b"G", {"name": entry.name, "offset": offset})
        sending = await client.receiveJSON(b"K")
        size = sending.get("size")
        if sending.get("offset") != offset or not isinstance(size, int) or size < offset:
            raise ClientError(f"protocol error: unexpected answer to G: {sending}")
        # From here, an interruption keeps what arrived (with --resume).
        keep = args.resume
        digest = await _receive(
            client, fd, hasher, offset=offset, size=size, name=entry.name, quiet=args.quiet
        )
        keep = False
        os.fsync(fd)
        os.rename(part, dest)
    except BaseException as e:
        if not (keep and isinstance(e, ConnectionClosed | KeyboardInterrupt)):
            with contextlib.suppress(OSError):
                os.unlink(part)
        raise
    finally:
        os.close(fd)
    _syncDirectory(os.path.dirname(dest) or ".")
    return size, digest


async def _receive(
    client: FramedClient, fd: int, hasher: Any, *, offset: int, size: int, name: str, quiet: bool
) -> str:
    """The ``D`` frames into ``fd`` (hashed), until ``F``: the checked digest."""
    received = offset
    progress = progressBar(name, size, offset, quiet)
    try:
        while True:
            kind, payload = await client.receive()
            if kind == b"D":
                received += len(payload)
                if received > size:
                    raise ClientError(f"protocol error: more than {size} bytes sent")
                hasher.update(payload)
                _writeAll(fd, payload)
                progress.update(len(payload))
            elif kind == b"F":
                break
            else:
                raise ClientError(f"protocol error: unexpected {kind!r} frame during a download")
    finally:
        progress.close()
    try:
        sent = decodeJSON(payload).get("sha256")
    except ProtocolError:
        raise ClientError("protocol error: the 'F' payload is not JSON") from None
    digest: str = hasher.hexdigest()
    if received != size:
        raise ClientError(f"{received} bytes received, {size} announced")
    if sent != digest:
        raise ClientError(f"the data received does not match the server's SHA-256 ({sent})")
    return digest


def _syncDirectory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def run(reactor: Any, args: argparse.Namespace) -> int:
    if not hasattr(args, "auth"):
        prepare(args)
    client = await connectFiles(reactor, args, "list", "get")
    failed = 0
    try:
        for name in args.names:
            try:
                jobs = await plan(client, name, args.output)
            except ServerError as e:
                failed += 1
                complain("download", name, f"{e.code}: {e.serverMessage}")
                continue
            except OSError as e:
                failed += 1
                complain("download", str(e.filename), str(e.strerror))
                continue
            for entry, dest in jobs:
                try:
                    size, digest = await fetchFile(reactor, client, entry, dest, args)
                except ServerError as e:
                    failed += 1
                    complain("download", entry.name, f"{e.code}: {e.serverMessage}")
                    continue
                except OSError as e:
                    failed += 1
                    complain("download", dest, str(e.strerror))
                    continue
                if not args.quiet:
                    say(f"{digest}  {size}  {dest}")
    finally:
        client.close()
    return 1 if failed else 0
