"""The observer itself: what it measures of a running server is real."""

from __future__ import annotations

from tests.adversarial.outside import ABUSER, Target, sockets

#: Descriptors the server may hold for a moment when the test reads its base
#: (the upload service's expiry sweep starts with the server, in a worker
#: thread, and walks the upload directory). A loaded CI run read its base at
#: such a moment: all fifty connections were accepted, and the count never
#: reached base + 50.
STARTUP_TRANSIENT_FDS = 3


def test_fdsFollowConnections(target: Target) -> None:
    """Fifty connections from one abusive address raise the server's fd count by
    about fifty, and closing them brings it back: the fd measure sees the server."""
    base = target.fds()
    with sockets(50, ABUSER, target.port("chat")):
        target.twistd.waitFor(lambda: target.fds() >= base + 50 - STARTUP_TRANSIENT_FDS)
    target.waitFds(base)
    target.chatLatency()  # answers within its deadline
    assert target.rss() > 10 * 1024 * 1024
