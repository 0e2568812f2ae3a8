"""The framed "shout" service: ``S {"text": ...}`` is answered with ``K {"text": TEXT}``
in capitals.

It shows what the framed base (:mod:`netproto.framing`) gives a service for
free: the hello, authentication with the server's token or passwords, the
frame limits, the grace, frame and idle deadlines, and an ``E`` frame for
every mistake of the peer. The service itself is one handler. It is a
stand-alone module: nothing in netproto knows about it (serve it with the
builder ``shout_framed.makeFactory`` in a declaration like ``shout``'s).
"""

from __future__ import annotations

from typing import Final

from netproto.codec import decodeJSON
from netproto.errors import ProtocolError
from netproto.framing import FramedFactory, FramedProtocol
from netproto.services import ServerContext

#: Longest text shouted back, in characters: an answer is never much larger
#: than the frame that asked for it (which ``max_frame`` already bounds), and
#: this keeps a shout a line, not a document.
MAX_TEXT: Final = 1000


class FramedShout(FramedProtocol):
    """Answers ``S {"text": ...}`` with ``K {"text": ...}`` in upper case."""

    serviceName = "shout-framed"

    def shoutReceived(self, payload: bytes) -> None:
        # decodeJSON refuses what is not a sane JSON object with E bad-frame;
        # a ProtocolError raised here becomes an E frame (fatal or not, by code).
        text = decodeJSON(payload).get("text")
        if not isinstance(text, str):
            raise ProtocolError("bad-frame", 'S needs {"text": STRING}')
        if len(text) > MAX_TEXT:
            raise ProtocolError("too-large", f"text over {MAX_TEXT} characters")
        self.sendJSON(b"K", {"text": text.upper()})

    frameHandlers = {b"S": shoutReceived}


class FramedShoutFactory(FramedFactory):
    protocol = FramedShout


def makeFactory(context: ServerContext) -> FramedShoutFactory:
    """Called by netproto with the server context when the service starts."""
    return FramedShoutFactory(context, maxFrame=4 * 1024)
