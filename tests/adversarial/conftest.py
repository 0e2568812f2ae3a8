"""The adversarial suite: attacks over real loopback sockets against a running server.

Each test states in its docstring the attack, the behaviour expected and what is
measured (from outside: see :mod:`tests.adversarial.outside`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from tests.adversarial.outside import Target, serving


@pytest.fixture
def netproto(tmp_path: Path) -> Callable[..., AbstractContextManager[Target]]:
    """``with netproto("--chat-idle-timeout", "5") as target:`` starts the server."""

    def start(
        *args: str, services: tuple[str, ...] = ("chat", "exec", "upload")
    ) -> AbstractContextManager[Target]:
        return serving(tmp_path, *args, services=services)

    return start


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Target]:
    """A server with its defaults (chat, exec and upload on ephemeral loopback ports)."""
    with serving(tmp_path) as running:
        yield running
