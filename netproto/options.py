"""Coerce functions for the services' ``twistd netproto`` options, and the
default data directory the server and the client share.

A value that does not fit is refused when the options are parsed, with
twistd's one-line "Parameter type enforcement failed" message, instead of
when the service starts. Light on purpose: plugin declarations and the
client import it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


def count(text: str) -> int:
    """A whole number >= 0 (0 turns a limit or feature off where its doc says so)."""
    value = int(text)
    if value < 0:
        raise ValueError(f"{text!r} is negative")
    return value


def positive(text: str) -> int:
    """A whole number >= 1."""
    value = int(text)
    if value < 1:
        raise ValueError(f"{text!r} is not at least 1")
    return value


def seconds(text: str) -> float:
    """A duration or rate >= 0 (0 turns the feature off where its doc says so)."""
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"{text!r} is not a finite number >= 0")
    return value


def streamEndpoint(text: str) -> str:
    """``none``, or a Twisted server endpoint description (``tcp:9100``, ``unix:...``)."""
    if text != "none":
        from twisted.internet import reactor
        from twisted.internet.endpoints import serverFromString

        try:
            serverFromString(reactor, text)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"endpoint {text!r}: {e}") from None
    return text


count.coerceDoc = "Must be a whole number >= 0."  # type: ignore[attr-defined]
positive.coerceDoc = "Must be a whole number >= 1."  # type: ignore[attr-defined]
seconds.coerceDoc = "Must be a number >= 0."  # type: ignore[attr-defined]
streamEndpoint.coerceDoc = "Must be 'none' or a server endpoint (tcp:9100:interface=127.0.0.1)."  # type: ignore[attr-defined]


def defaultDataDir(environ: Mapping[str, str] = os.environ) -> Path:
    """``$NETPROTO_HOME``, else ``$XDG_DATA_HOME/netproto``, else ``~/.local/share/netproto``."""
    if environ.get("NETPROTO_HOME"):
        return Path(environ["NETPROTO_HOME"])
    if environ.get("XDG_DATA_HOME"):
        return Path(environ["XDG_DATA_HOME"]) / "netproto"
    return Path.home() / ".local" / "share" / "netproto"
