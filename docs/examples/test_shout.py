"""Tests of the shout service, as a plugin author writes them with netproto.testing."""

from __future__ import annotations

from pathlib import Path

from twisted.internet.protocol import Protocol

from netproto.testing import checkService, makeContext, serveInMemory


class Collector(Protocol):
    def __init__(self) -> None:
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data


def test_shout_conforms(tmp_path: Path) -> None:
    """The conformance check every netproto service plugin must pass."""
    from netproto.plugins.shout_plugin import shout

    checkService(shout, tmp_path)


def test_shout_answers_in_capitals(tmp_path: Path) -> None:
    """A line goes in, the same line in capitals comes back, CRLF-terminated."""
    from shout import makeFactory

    factory = makeFactory(makeContext(tmp_path))
    client = Collector()
    _, _, pump = serveInMemory(factory, client)
    assert client.transport is not None
    client.transport.write("hello, wörld\n".encode())
    pump.flush()
    assert client.received == "HELLO, WÖRLD\r\n".encode()
