"""The upload quota's index (SQLite, ``.netproto-quota.sqlite``) is only ever
read or written in upload's worker threads, never on the reactor thread.

The upload factory is built as ``twistd netproto`` builds it (its own worker
threads, results back with ``callFromThread``), on the real reactor; a
client uploads over an in-memory connection (the real reactor pumps it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as globalReactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.python import threadable
from zope.interface import implementer

from netproto.client.framed import FramedClient, connectFramed
from netproto.testing import serveInMemory
from netproto.upload.quota import Ledger
from netproto.upload.server import UploadFactory, makeFactory
from tests.support import eventually, makeContext, token, waitDeferred


@implementer(IStreamClientEndpoint)
class InMemoryEndpoint:
    """Connects to ``server`` in memory, on the real reactor."""

    def __init__(self, server: IProtocolFactory) -> None:
        self.server = server

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        client = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4242))
        assert client is not None
        serveInMemory(self.server, client, globalReactor)  # type: ignore[arg-type]
        return succeed(client)


@pytest.fixture
def ledgerCalls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool]]:
    """Every call of the index's methods while serving: (name, on the reactor thread)."""
    calls: list[tuple[str, bool]] = []
    for name in ("ownerOf", "replace", "reconcile"):
        method = getattr(Ledger, name)

        def recorded(
            self: Ledger, *args: Any, _name: str = name, _m: Callable[..., Any] = method
        ) -> Any:
            calls.append((_name, threadable.isInIOThread()))
            return _m(self, *args)

        monkeypatch.setattr(Ledger, name, recorded)
    return calls


async def upload(client: FramedClient, name: str, data: bytes, overwrite: bool = False) -> None:
    client.sendJSON(b"P", {"name": name, "size": len(data), "overwrite": overwrite})
    assert await waitDeferred(Deferred.fromCoroutine(client.receiveJSON(b"K"))) == {"offset": 0}
    client.send(b"D", data)
    client.sendJSON(b"F", {"sha256": hashlib.sha256(data).hexdigest()})
    stored = await waitDeferred(Deferred.fromCoroutine(client.receiveJSON(b"K")))
    assert stored["name"] == name


@pytest_twisted.ensureDeferred
async def test_the_quota_index_is_used_only_in_worker_threads(
    tmp_path: Path, ledgerCalls: list[tuple[str, bool]]
) -> None:
    """With a quota set, an upload's admission (the owner of the name it
    overwrites), its charge once stored (the row written) and the reconcile
    of the sweep each read or write the index in a worker thread: the reactor
    never waits on SQLite or on the lstat of every stored file."""
    context = makeContext(tmp_path, reactor=globalReactor, options={"upload-quota-files": 10})
    factory = makeFactory(context)
    assert isinstance(factory, UploadFactory) and factory.quotas.ledger is not None
    factory.doStart()  # the first sweep, with its reconcile, runs now
    try:
        endpoint = InMemoryEndpoint(factory)
        client = await connectFramed(endpoint, "upload", {"token": token(context)})
        await upload(client, "a", b"first")
        await upload(client, "a", b"second", overwrite=True)
        client.close()
        await eventually(lambda: {"ownerOf", "replace", "reconcile"} <= {n for n, _ in ledgerCalls})
    finally:
        factory.doStop()
        await eventually(lambda: factory._sweepLane.idle)
        factory.quotas.ledger.close()
    onReactor = [name for name, inReactor in ledgerCalls if inReactor]
    assert onReactor == []
