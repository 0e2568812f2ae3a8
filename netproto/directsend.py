"""Sending on a connection's socket at once when Twisted holds nothing for it.

This is the one place where netproto replaces a default path of Twisted: the
chat's deliveries (:mod:`netproto.chat.protocol`), exec's frames
(:mod:`netproto.exec.output`) and the framed services' control frames
(:meth:`netproto.framing.FramedProtocol.sendFrame`) all send through it.

Why: ``transport.write`` on Twisted's TCP transport only appends to a buffer and
asks the reactor to watch the socket; the bytes leave on the next reactor turn,
after an ``epoll_ctl`` to start watching, the poll, a dispatch through Twisted's
logging context, the ``send``, and an ``epoll_ctl`` to stop watching. Profiles
(py-spy) showed this path as three quarters of the time of a chat line's trip
across a room of 5000 (85 ms, 44 ms once sent at once), an extra reactor turn
per reply in every exec and upload round trip, and a join copy of each large
exec output frame (docs/performance.md).

What: while Twisted holds no byte of a connection's output
(:func:`holdsNothing`), data is sent with one ``send`` on the socket. What the
kernel does not take goes to ``transport.write``; from then on, every write
goes through ``transport.write``, behind what Twisted holds, until Twisted's
buffer is empty again. So bytes leave in exactly the order they were written.
Flow control is unchanged: the kernel's socket buffer fills first, then
Twisted's, and Twisted still pauses a registered producer past its threshold.

Where: only on transports whose write path is known: Twisted's plain TCP and UNIX
stream server connections (exact classes, not subclasses; not once TLS has been
started on them). Anything else (a TLS wrapper, an endpoint wrapper, a test's
``StringTransport``) gets plain ``transport.write``: :func:`directSocket` returns
None for it. This reads four attributes of Twisted's ``FileDescriptor``
(``dataBuffer`` with its ``offset``, and ``_tempDataBuffer`` with its
``_tempDataLen``: its whole output buffer) and takes the
socket from the public ``getHandle()``; it changes nothing of Twisted's and
patches nothing. ``tests/test_chat_direct.py`` holds Twisted to these
assumptions, so an upgrade that breaks them fails there first.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import tcp, unix

#: Transport classes whose buffering is exactly ``dataBuffer`` + ``_tempDataBuffer``
#: and whose handle is the connection's non-blocking stream socket. (UNIX
#: ``Server`` can also queue file descriptors to pass; netproto never passes any.)
DIRECT_TRANSPORTS: frozenset[type] = frozenset({tcp.Server, unix.Server})


def directSocket(transport: Any) -> socket.socket | None:
    """The socket netproto may send on itself, or None for any other transport."""
    if type(transport) in DIRECT_TRANSPORTS and not getattr(transport, "TLS", False):
        handle = transport.getHandle()
        if isinstance(handle, socket.socket):
            return handle
    return None


def holdsNothing(transport: Any) -> bool:
    """Whether Twisted's transport (one :func:`directSocket` accepted) has no unsent byte."""
    return not transport.dataBuffer and not transport._tempDataBuffer


def unsent(transport: Any) -> int:
    """Bytes Twisted's transport (one :func:`directSocket` accepted) holds and has not
    sent yet: the unsent rest of ``dataBuffer`` (from ``offset`` on) and ``_tempDataBuffer``."""
    held: int = len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    return held


def sendNow(transport: Any, data: bytes) -> None:
    """Write ``data`` to ``transport``: at once on the socket when Twisted holds
    nothing for it (and the connection is not closing), else through
    ``transport.write``. Either way the bytes keep their order."""
    sock = directSocket(transport)
    if (
        sock is not None
        and transport.connected
        and not transport.disconnecting
        and holdsNothing(transport)
    ):
        try:
            sent = sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            sent = 0  # broken: the transport finds out and closes as usual
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)
