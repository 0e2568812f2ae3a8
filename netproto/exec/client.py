"""``netproto exec``: the client side of the exec service."""

from __future__ import annotations

import argparse
from typing import Any

from netproto.client.connection import addConnectionArguments
from netproto.client.framed import ClientError

DEFAULT_PORT = 8001


def configure(parser: argparse.ArgumentParser) -> None:
    addConnectionArguments(parser, DEFAULT_PORT)


async def run(reactor: Any, args: argparse.Namespace) -> int:
    raise ClientError("not implemented yet")
