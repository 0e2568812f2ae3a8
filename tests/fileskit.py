"""Helpers of the files tests (PROTOCOL.md section 6: L, I, G and pipelined uploads):
an upload service in memory driven by :class:`~netproto.testing.FramedPeer`, whose
worker jobs run at once or when the test says, and the exchanges the tests repeat."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from zope.interface import implementer

from netproto.codec import encodeFrame, encodeJSON
from netproto.testing import FramedPeer, makeContext, readToken, serveInMemory
from netproto.upload.quota import Quotas
from netproto.upload.server import UploadFactory, uploadDirectory
from netproto.upload.store import UploadStore
from netproto.upload.workers import callNow


@implementer(IStreamClientEndpoint)
class MemoryEndpoint:
    """Where a bundled client connects to a :class:`Served` service, in memory
    (bytes move when :meth:`flush` is called, timers run on the service's clock)."""

    def __init__(self, served: Served) -> None:
        self.served = served
        self.pumps: list[Any] = []
        #: the server-side protocol of each connection made
        self.servers: list[IProtocol] = []

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        client = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4242))
        assert client is not None
        reactor = self.served.context.reactor
        server, connected, pump = serveInMemory(self.served.factory, client, reactor)  # type: ignore[arg-type]
        self.servers.append(server)
        self.pumps.append(pump)
        return succeed(connected)

    def flush(self, turns: int = 50) -> None:
        """Move bytes and run due timers until both ends are quiet (or ``turns`` passed)."""
        for _ in range(turns):
            for pump in self.pumps:
                pump.flush()
            self.served.context.reactor.advance(0)


class Served:
    """An upload service over ``tmp/data/uploads``, in memory.

    :param executor: runs worker jobs (at once by default; a test's stepper
        holds them to look at what happens meanwhile).
    """

    def __init__(self, tmp: Path, executor: Callable[..., object] = callNow) -> None:
        self.context = makeContext(tmp)
        self.root = uploadDirectory(self.context)
        self.store = UploadStore(self.root, resumeTTL=3600.0)
        self.factory = UploadFactory(self.context, self.store, executor, quotas=Quotas())
        self.token = readToken(self.context)

    def peer(self) -> FramedPeer:
        """A new connection, logged in with the token."""
        peer = FramedPeer(self.factory)
        peer.login(self.token)
        return peer


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def put(peer: FramedPeer, name: str, data: bytes, chunk: int = 200_000) -> dict[str, Any]:
    """Upload ``data`` as ``name`` one step at a time; the ``K stored`` payload."""
    peer.sendJSON(b"P", {"name": name, "size": len(data)})
    assert peer.expectJSON(b"K") == {"offset": 0}
    for i in range(0, len(data), chunk):
        peer.send(b"D", data[i : i + chunk])
    peer.sendJSON(b"F", {"sha256": sha(data)})
    return peer.expectJSON(b"K")


def pipelined(
    files: list[tuple[str, bytes]], sizes: dict[str, int] | None = None, chunk: int = 65536
) -> bytes:
    """The bytes a pipelining client sends for ``files``: each one's P, D
    frames and F, with no wait (``sizes`` announces other sizes than the data's)."""
    wire = bytearray()
    for name, data in files:
        size = (sizes or {}).get(name, len(data))
        wire += encodeFrame(b"P", encodeJSON({"name": name, "size": size}))
        for i in range(0, len(data), chunk):
            wire += encodeFrame(b"D", data[i : i + chunk])
        wire += encodeFrame(b"F", encodeJSON({"sha256": sha(data)}))
    return bytes(wire)


def listing(
    peer: FramedPeer, path: str = "", recursive: bool = False
) -> tuple[dict[str, dict[str, Any]], list[bytes]]:
    """``L``: the entries by name, and each ``I`` payload as it came; the
    ``K listed`` count must be the number of entries."""
    peer.sendJSON(b"L", {"path": path, "recursive": recursive})
    frames = peer.take()
    assert frames, "no answer to L"
    kind, last = frames[-1]
    assert kind == b"K", frames[-1]
    payloads = [p for k, p in frames[:-1]]
    assert all(k == b"I" for k, _ in frames[:-1]), [k for k, _ in frames]
    entries = [e for p in payloads for e in json.loads(p)["entries"]]
    assert json.loads(last) == {"count": len(entries)}
    byName = {e["name"]: e for e in entries}
    assert len(byName) == len(entries), "an entry was listed twice"
    return byName, payloads


def fetch(peer: FramedPeer, name: str, offset: int = 0) -> tuple[bytes, tuple[bytes, Any]]:
    """``G``: the data of the ``D`` frames, and the last frame (``F`` or ``E``) decoded.
    The ``K sending`` must say the offset asked for."""
    peer.sendJSON(b"G", {"name": name, "offset": offset})
    frames = peer.take()
    first = json.loads(frames[0][1])
    if frames[0][0] == b"E":
        return b"", (b"E", first)
    assert frames[0][0] == b"K" and first["offset"] == offset, frames[0]
    data = b"".join(p for k, p in frames[1:-1] if k == b"D")
    assert all(k == b"D" for k, _ in frames[1:-1])
    kind, payload = frames[-1]
    return data, (kind, json.loads(payload))


def refusal(peer: FramedPeer, frame: bytes, request: dict[str, Any]) -> str:
    """The code of the ``E`` that answers ``request`` at once (connection still open)."""
    peer.sendJSON(frame, request)
    frames = peer.take()
    assert len(frames) == 1 and frames[0][0] == b"E", frames
    assert not peer.closed
    return str(json.loads(frames[0][1])["code"])


def rot(path: Path, at: int = 0) -> None:
    """Flip one byte of ``path`` in place and give it back its modification
    time, as data rotting on disk does (size, time and inode unchanged)."""
    info = path.stat()
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))
