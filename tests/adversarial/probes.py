"""Honest probes shared by the attack modules: a logged-in framed client, a command run
to its end over it, and whether a process (the very one) still runs."""

from __future__ import annotations

import json
from typing import Any

import psutil

from tests.adversarial.outside import (
    HONEST,
    Target,
    connectFrom,
)
from tests.support import BlockingFramed


def framedClient(target: Target, service: str, source: str = HONEST) -> BlockingFramed:
    """A logged-in exec or upload connection."""
    client = BlockingFramed(connectFrom(source, target.port(service)))
    client.login(target.token, service)
    return client


def runCommand(client: BlockingFramed, argv: list[str]) -> tuple[bytes, dict[str, Any]]:
    """Run ``argv`` to its end: its stdout and its ``X`` payload."""
    client.sendJSON(b"R", {"argv": argv})
    client.recvJSON(b"K")
    out = b""
    while True:
        frame = client.recv()
        assert frame is not None, "the server closed the connection during a command"
        kind, payload = frame
        if kind == b"X":
            end: dict[str, Any] = json.loads(payload)
            return out, end
        assert kind in (b"1", b"2"), frame
        if kind == b"1":
            out += payload


def alive(proc: psutil.Process) -> bool:
    """Whether ``proc`` (the very process, not a later one with its pid) still runs."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
