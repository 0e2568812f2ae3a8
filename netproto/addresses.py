"""Turning Twisted address objects into the short strings used in logs, and
counting connections per address for the caps that limit one host."""

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


class CountPerAddress(dict[str, int]):
    """How many connections each address holds, for a cap per address (chat's
    and web's ``--chat-max-per-address``, the framed services'
    ``--max-unauthenticated-per-host``). An address with none is not a key, so
    the mapping stays as small as the set of hosts connected. A ``None`` key
    (a peer without an IP address, such as a UNIX socket's) is never counted."""

    def full(self, key: str | None, cap: int) -> bool:
        """Whether ``key`` already holds ``cap`` connections (a cap of 0: never)."""
        return key is not None and cap > 0 and self.get(key, 0) >= cap

    def take(self, key: str | None) -> None:
        """Count one more connection of ``key``."""
        if key is not None:
            self[key] = self.get(key, 0) + 1

    def admit(self, key: str | None, cap: int) -> bool:
        """Count one more connection of ``key`` unless it is :meth:`full`."""
        if self.full(key, cap):
            return False
        self.take(key)
        return True

    def release(self, key: str | None) -> None:
        """One connection counted by :meth:`take` or :meth:`admit` went away."""
        if key is None:
            return
        left = self[key] - 1
        if left:
            self[key] = left
        else:
            del self[key]
