"""Tests of the greet example: its service, and the client its subcommand runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from netproto.testing import checkService, makeContext, serveInMemory


def test_greet_conforms(tmp_path: Path) -> None:
    """The conformance check every netproto service plugin must pass."""
    from netproto.plugins.greet_plugin import greet

    checkService(greet, tmp_path)


def test_the_client_is_greeted(tmp_path: Path) -> None:
    """The subcommand's client sends a name and gets the server's greeting."""
    from greet import makeFactory
    from greet_client import GreetClient

    client = GreetClient("Ada")
    _, _, pump = serveInMemory(makeFactory(makeContext(tmp_path)), client)
    pump.flush()
    assert client.answer.result == "hello, Ada"


def test_the_subcommand_takes_a_name_and_a_server() -> None:
    """``netproto greet NAME --server HOST:PORT`` parses, the port defaulting to the plugin's."""
    from greet_client import configure

    parser = argparse.ArgumentParser()
    configure(parser)
    args = parser.parse_args(["Ada", "--server", "example.org:9"])
    assert (args.name, args.server, args.defaultPort) == ("Ada", "example.org:9", 8011)
