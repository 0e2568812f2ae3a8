"""The bundled framed client and the upload client's producer, against the real
upload server factory over twisted.test.iosim: no sockets, time on a clock."""

from __future__ import annotations

import argparse
import hashlib
import os
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.test.iosim import IOPump
from zope.interface import implementer

from netproto.client.framed import ClientError, FramedClient, ServerError, connectFramed
from netproto.testing import defaultOptions, makeContext, readToken, serveInMemory
from netproto.upload import plugin
from netproto.upload.client import Job, sendFile
from netproto.upload.server import UploadFactory, makeFactory, uploadDirectory

T = TypeVar("T")


@implementer(IStreamClientEndpoint)
class InMemoryEndpoint:
    """An endpoint whose connections reach ``server`` through iosim, on ``clock``.

    Bytes move only when :meth:`run` (or ``pumps[-1].flush()``) is called, so a
    test decides when the server answers.
    """

    def __init__(self, server: IProtocolFactory, clock: MemoryReactorClock) -> None:
        self.server = server
        self.clock = clock
        self.pumps: list[IOPump] = []

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        client = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4242))
        assert client is not None
        _, connected, pump = serveInMemory(self.server, client, self.clock)  # type: ignore[arg-type]
        self.pumps.append(pump)
        return succeed(connected)

    def run(self, coroutine: Coroutine[Deferred[Any], Any, T]) -> T:
        """Run ``coroutine`` to its end, moving bytes between the ends as it waits."""
        d = ensureDeferred(coroutine)
        results: list[T | Failure] = []
        d.addBoth(results.append)
        for _ in range(10_000):
            if results:
                break
            if self.pumps:
                self.pumps[-1].flush()
            self.clock.advance(0)
        else:
            raise AssertionError("the client is still waiting with both ends quiet")
        (result,) = results
        if isinstance(result, Failure):
            result.raiseException()
        return result


def uploadServer(tmp: Path) -> tuple[InMemoryEndpoint, UploadFactory, str]:
    context = makeContext(tmp, options=defaultOptions(plugin.service))
    factory = makeFactory(context)
    assert isinstance(context.reactor, MemoryReactorClock)
    return InMemoryEndpoint(factory, context.reactor), factory, readToken(context)


def test_connectFramed_reads_the_hello_and_logs_in(tmp_path: Path) -> None:
    """connectFramed checks the service in the hello, sends A and waits for the K."""
    endpoint, factory, token = uploadServer(tmp_path)
    client = endpoint.run(connectFramed(endpoint, "upload", {"token": token}))
    assert client.hello is not None and client.hello.service == "upload"
    assert client.maxFrame == factory.maxFrame
    assert client.connected


def test_connectFramed_refuses_the_wrong_service(tmp_path: Path) -> None:
    """A hello naming another service is a ClientError that says which, not a login."""
    endpoint, _, token = uploadServer(tmp_path)
    with pytest.raises(ClientError, match="serves 'upload', not 'exec'"):
        endpoint.run(connectFramed(endpoint, "exec", {"token": token}))


def test_a_wrong_token_is_a_server_error(tmp_path: Path) -> None:
    """The E auth-failed that comes after the failed-login delay is a ServerError."""
    endpoint, factory, _ = uploadServer(tmp_path)
    d = ensureDeferred(connectFramed(endpoint, "upload", {"token": "wrong"}))
    endpoint.pumps[-1].flush()
    assert not d.called
    endpoint.clock.advance(factory.authFailureDelay)
    endpoint.pumps[-1].flush()
    failure = d.result
    d.addErrback(lambda _: None)
    assert isinstance(failure, Failure) and isinstance(failure.value, ServerError)
    assert failure.value.code == "auth-failed"


def test_an_error_frame_fails_receive(tmp_path: Path) -> None:
    """An E the server sends for a request is a ServerError with its code, and the
    connection stays open when the error is not fatal."""
    endpoint, _, token = uploadServer(tmp_path)
    client = endpoint.run(connectFramed(endpoint, "upload", {"token": token}))
    client.sendJSON(b"P", {"name": "../out", "size": 1})
    with pytest.raises(ServerError) as info:
        endpoint.run(client.receiveJSON(b"K"))
    assert info.value.code == "invalid-name"
    assert client.connected


def test_the_producer_streams_a_file_to_the_upload_server(tmp_path: Path) -> None:
    """sendFile's producer sends a file of several D frames through iosim's pump
    (registered on the fake transport as a streaming producer); the server stores it whole."""
    endpoint, factory, token = uploadServer(tmp_path / "server")
    client = endpoint.run(connectFramed(endpoint, "upload", {"token": token}))
    data = os.urandom(3 * factory.maxFrame + 123)
    local = tmp_path / "local.bin"
    local.write_bytes(data)
    args = argparse.Namespace(overwrite=False, resume=False, quiet=True)
    size, digest = endpoint.run(
        sendFile(endpoint.clock, client, Job(str(local), "sub/file.bin"), args)
    )
    assert (size, digest) == (len(data), hashlib.sha256(data).hexdigest())
    assert (uploadDirectory(factory.context) / "sub" / "file.bin").read_bytes() == data
    assert isinstance(client, FramedClient) and client.connected


def test_a_refused_put_sends_no_data(tmp_path: Path) -> None:
    """An existing name without --overwrite is E exists before any D is sent."""
    endpoint, factory, token = uploadServer(tmp_path / "server")
    client = endpoint.run(connectFramed(endpoint, "upload", {"token": token}))
    local = tmp_path / "local.bin"
    local.write_bytes(b"first")
    args = argparse.Namespace(overwrite=False, resume=False, quiet=True)
    job = Job(str(local), "same")
    endpoint.run(sendFile(endpoint.clock, client, job, args))
    local.write_bytes(b"second")
    with pytest.raises(ServerError) as info:
        endpoint.run(sendFile(endpoint.clock, client, job, args))
    assert info.value.code == "exists"
    assert (uploadDirectory(factory.context) / "same").read_bytes() == b"first"
