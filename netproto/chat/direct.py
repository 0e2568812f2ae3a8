"""Writing chat output straight to the socket when Twisted holds nothing for it.

Why: ``transport.write`` on Twisted's TCP transport only appends to a buffer and
asks the reactor to watch the socket for writability; the bytes leave on the next
reactor turn, after an ``epoll_ctl`` to start watching, the poll, a dispatch
through Twisted's logging context, the ``send``, and another ``epoll_ctl`` to stop
watching. For one line to each of 5000 members that is two extra system calls and
most of the Python per member: profiles of the chat's idle-room benchmark showed
three quarters of the time in that path and a quarter in ``send`` itself.

What: :func:`deliverNow` sends at once, with one ``send``, when (and only when)
Twisted's transport holds no unsent byte for the connection; whatever the kernel
does not take (a reader that fell behind) goes to ``transport.write`` as before.
So the bytes leave in exactly the order they were given:

- Twisted holds something: everything goes behind it through ``transport.write``;
- Twisted holds nothing: the ``send`` goes first, its rest (if any) is then the
  first thing Twisted holds, and later calls take the first branch.

Flow control is unchanged: the kernel's socket buffer fills first, then Twisted's;
Twisted still calls the producer's ``pauseProducing`` when its buffer passes its
threshold, which is what the slow-reader cut-off counts from
(:class:`netproto.chat.protocol.ChatProtocol`).

Where: only on transports whose write path is known: Twisted's plain TCP and UNIX
stream server connections (exact classes, not subclasses; not once TLS has been
started on them). Anything else (a TLS wrapper, an endpoint wrapper, a test's
``StringTransport``) gets plain ``transport.write``: :func:`directCapable` says
which. This reads three attributes of Twisted's ``FileDescriptor`` (``dataBuffer``,
``_tempDataBuffer``, ``disconnecting``) and its ``socket``; it changes nothing of
Twisted's and patches nothing. ``tests/test_chat_direct.py`` holds Twisted to
these assumptions, so an upgrade that changes them fails there first.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp, unix

#: Transport classes whose buffering is exactly ``dataBuffer`` + ``_tempDataBuffer``
#: and whose ``socket`` is the connection's non-blocking stream socket. (UNIX
#: ``Server`` can also queue file descriptors to pass; the chat never passes any.)
DIRECT_TRANSPORTS: frozenset[type] = frozenset({tcp.Server, unix.Server})


def directCapable(transport: object) -> bool:
    """Whether :func:`deliverNow` may send on ``transport``'s socket itself."""
    return type(transport) in DIRECT_TRANSPORTS and not getattr(transport, "TLS", False)


def deliverNow(transport: Any, data: bytes) -> None:
    """Send ``data`` now if Twisted holds nothing unsent for ``transport``, else queue it.

    ``transport`` must be :func:`directCapable`. Errors of the socket (reset,
    broken pipe) are not handled here: the bytes go to ``transport.write`` and
    Twisted finds the error and closes the connection as it always does.
    """
    if not transport.dataBuffer and not transport._tempDataBuffer and not transport.disconnecting:
        try:
            sent = transport.socket.send(data)
        except OSError:  # EAGAIN, ENOBUFS, or a dead connection: Twisted deals with it
            sent = 0
        if sent == len(data):
            return
        if sent:
            data = data[sent:]
    transport.write(data)
