"""Turning Twisted address objects into the short strings used in logs."""

from __future__ import annotations

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress, ITransport


def describeAddress(address: IAddress | None) -> str:
    """``127.0.0.1:5050``, ``[::1]:5050``, ``unix:/run/x.sock`` or the repr of anything else."""
    if isinstance(address, IPv4Address):
        return f"{address.host}:{address.port}"
    if isinstance(address, IPv6Address):
        return f"[{address.host}]:{address.port}"
    if isinstance(address, UNIXAddress):
        name = address.name
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        return f"unix:{name or '(unnamed)'}"
    return repr(address)


def describePeer(transport: ITransport | None) -> str:
    """The peer of a connection, for log lines; ``?`` once there is no transport."""
    if transport is None:
        return "?"
    try:
        return describeAddress(transport.getPeer())
    except Exception:  # a transport that cannot say who it talks to
        return "?"
