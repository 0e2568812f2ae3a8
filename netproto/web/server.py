"""The web service's site: the chat page at ``/`` and the WebSocket at ``/chat``.

``twistd netproto`` calls :func:`makeSite` with the server context. The page is
three files shipped in the package (``static/``): no build step, nothing fetched
from elsewhere, so it works offline and behind any firewall.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from autobahn.twisted.resource import WebSocketResource
from twisted.web.pages import notFound
from twisted.web.resource import IResource
from twisted.web.server import Request, Site
from twisted.web.static import File

from netproto.chat.plugin import buildFactory
from netproto.chat.server import ChatFactory
from netproto.services import ServerContext
from netproto.web.plugin import service
from netproto.web.protocol import WebChatFactory

#: Where the page's files are.
STATIC: Final = Path(__file__).parent / "static"

#: Seconds an HTTP connection may stay idle before it is closed (twisted.web's own
#: default is 12 hours). The page is three small files; a browser that has them
#: opens the WebSocket, which is then the chat's (its idle rule is --chat-idle-timeout).
HTTP_TIMEOUT: Final = 60

#: Sent with every file of the page. The policy lets the page run its own script
#: and talk to its own server only: even a message that got into the page as HTML
#: (the page inserts text as text; this is the second line of defence) could not
#: run a script or load anything. ``nosniff`` keeps a browser from guessing types.
SECURITY_HEADERS: Final = (
    (
        b"Content-Security-Policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    (b"X-Content-Type-Options", b"nosniff"),
    (b"Referrer-Policy", b"no-referrer"),
    (b"Cache-Control", b"no-cache"),
)


class PageFiles(File):
    """The page's files, with :data:`SECURITY_HEADERS`, and no directory listings."""

    def render(self, request: Request) -> bytes | int:
        for name, value in SECURITY_HEADERS:
            request.setHeader(name, value)
        rendered: bytes | int = super().render(request)
        return rendered

    def directoryListing(self) -> IResource:
        resource: IResource = notFound()
        return resource


class ChatSocket(WebSocketResource):
    """``/chat``: the request's connection handed over to a :class:`WebChatProtocol`.

    twisted.web's channel registered itself as the connection's producer; it lets
    go here, so that the member's writer can register, and the channel, with its
    request, is freed now (not held by the connection for its life, nor left for
    the garbage collector as a cycle: it is done with this connection).
    """

    def render(self, request: Request) -> bytes | int:
        channel = request.channel
        transport: Any = channel.transport
        if transport is not None:
            transport.unregisterProducer()
        rendered: bytes | int = super().render(request)
        if channel.transport is None:  # taken over
            channel.requests.clear()
        return rendered


class WebSite(Site):
    """The site; it starts and stops the chat factory it shares, so the chat's idle
    sweep runs when browsers alone are served (``--chat none``)."""

    noisy = False

    def __init__(self, root: IResource, chat: ChatFactory, reactor: Any) -> None:
        super().__init__(root, timeout=HTTP_TIMEOUT, reactor=reactor)
        self.chat = chat

    def startFactory(self) -> None:
        super().startFactory()
        self.chat.doStart()

    def stopFactory(self) -> None:
        self.chat.doStop()
        super().stopFactory()


def makeSite(context: ServerContext) -> WebSite:
    """The web service's site, its members in the chat's factory (``--web-origins``
    from :mod:`.plugin`)."""
    chat = buildFactory(context)
    options = context.optionsOf(service)
    sockets = WebChatFactory(chat, tuple(options["web-origins"]), context.reactor)
    root = PageFiles(str(STATIC))
    root.putChild(b"chat", ChatSocket(sockets))
    return WebSite(root, chat, context.reactor)
