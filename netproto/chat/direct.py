"""Sending chat output on the socket at once when Twisted holds nothing for it.

Why: ``transport.write`` on Twisted's TCP transport only appends to a buffer and
asks the reactor to watch the socket; the bytes leave on the next reactor turn,
after an ``epoll_ctl`` to start watching, the poll, a dispatch through Twisted's
logging context, the ``send``, and an ``epoll_ctl`` to stop watching. For one line
to each of 5000 members, a profile (py-spy) of the shared harness's idle-room
scenario showed three quarters of the time in that path and a quarter in ``send``
itself; sending at once cut a line's trip across the room from about 85 ms to 44 ms
(docs/chat.md, "How it is built").

What: :class:`netproto.chat.protocol.ChatProtocol` keeps one state per connection,
``_DIRECT``, meaning "Twisted holds no byte of this connection's output". In that
state a delivery is one ``send`` on the socket and nothing else; what the kernel
does not take (a reader that fell behind) goes to ``transport.write``, and the
state becomes "Twisted may hold data": from then on every delivery goes through
``transport.write``, behind what Twisted holds, until :func:`holdsNothing` (checked
on the next delivery) or the producer's ``resumeProducing`` (Twisted's buffer
drained after a pause) says Twisted's buffer is empty again. So the bytes leave in
exactly the order they were delivered. Every write of the protocol goes through
that one method; nothing else writes to a chat connection.

Flow control is unchanged: the kernel's socket buffer fills first, then Twisted's;
Twisted still calls ``pauseProducing`` when its buffer passes its threshold, which
is where the slow-reader cut-off starts counting.

Where: only on transports whose write path is known: Twisted's plain TCP and UNIX
stream server connections (exact classes, not subclasses; not once TLS has been
started on them). Anything else (a TLS wrapper, an endpoint wrapper, a test's
``StringTransport``) gets plain ``transport.write``: :func:`directSocket` returns
None for it. This reads two attributes of Twisted's ``FileDescriptor``
(``dataBuffer`` and ``_tempDataBuffer``: its whole output buffer) and takes the
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
#: ``Server`` can also queue file descriptors to pass; the chat never passes any.)
DIRECT_TRANSPORTS: frozenset[type] = frozenset({tcp.Server, unix.Server})


def directSocket(transport: Any) -> socket.socket | None:
    """The socket a chat connection may send on itself, or None for any other transport."""
    if type(transport) in DIRECT_TRANSPORTS and not getattr(transport, "TLS", False):
        handle = transport.getHandle()
        if isinstance(handle, socket.socket):
            return handle
    return None


def holdsNothing(transport: Any) -> bool:
    """Whether Twisted's transport (one :func:`directSocket` accepted) has no unsent byte."""
    return not transport.dataBuffer and not transport._tempDataBuffer
