"""``netproto upload``: the client side of the upload service."""

from __future__ import annotations

import argparse
from typing import Any

from netproto.client.connection import addConnectionArguments
from netproto.client.framed import ClientError

DEFAULT_PORT = 8002


def configure(parser: argparse.ArgumentParser) -> None:
    addConnectionArguments(parser, DEFAULT_PORT)


async def run(reactor: Any, args: argparse.Namespace) -> int:
    raise ClientError("not implemented yet")
