"""The web service's site: the chat page at ``/`` and the WebSocket at ``/chat``.

``twistd netproto`` calls :func:`makeSite` with the server context. The page is
three files shipped in the package (``static/``): no build step, nothing fetched
from elsewhere, so it works offline and behind any firewall.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from autobahn.twisted.resource import WebSocketResource
from twisted.internet.interfaces import IAddress
from twisted.logger import LogLevel
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.web.pages import notFound
from twisted.web.resource import IResource
from twisted.web.server import Request, Site
from twisted.web.static import File

from netproto.addresses import CountPerAddress, describeAddress
from netproto.chat.plugin import buildFactory
from netproto.chat.server import ChatFactory, addressKey
from netproto.logsummary import sourceOf
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


class HTTPSlot(ProtocolWrapper):
    """An HTTP connection of the web site, counted against its address
    (:class:`HTTPGate`) until it ends or becomes a WebSocket."""

    key: str | None = None


class HTTPGate(WrappingFactory):
    """The web site's connection caps: the chat's (``--chat-max-clients``,
    ``--chat-max-per-address``) applied to HTTP connections too, so that idle
    connections that never become members cannot take every socket of the server.

    A connection that becomes a WebSocket leaves the gate (:meth:`takeOver`): it is
    a chat member then, counted by the chat's own caps, and no wrapper stays
    between its socket and its member (a direct send on the socket needs the
    socket's own transport).
    """

    protocol = HTTPSlot
    noisy = False

    def __init__(self, site: WebSite) -> None:
        super().__init__(site)
        self.chat = site.chat
        self.perAddress = CountPerAddress()

    def buildProtocol(self, addr: IAddress | None) -> HTTPSlot | None:  # type: ignore[override]
        config = self.chat.config
        key = addressKey(addr)
        if config.maxClients and len(self.protocols) >= config.maxClients:
            self._refuse(addr, f"{len(self.protocols)} HTTP connections")
            return None
        if self.perAddress.full(key, config.maxPerAddress):
            self._refuse(addr, f"{config.maxPerAddress} HTTP connections from {key}")
            return None
        slot = super().buildProtocol(addr)
        assert isinstance(slot, HTTPSlot)
        slot.key = key
        return slot

    def _refuse(self, addr: IAddress | None, why: str) -> None:
        self.chat.logSummary.emit(
            (sourceOf(addr), "web: refused (too many connections)"),
            LogLevel.warn,
            "web: refused {peer}: {why} (--chat-max-clients, --chat-max-per-address)",
            peer=describeAddress(addr),
            why=why,
        )

    def registerProtocol(self, p: ProtocolWrapper) -> None:
        super().registerProtocol(p)
        self.perAddress.take(getattr(p, "key", None))

    def unregisterProtocol(self, p: ProtocolWrapper) -> None:
        if p not in self.protocols:
            return  # taken over already
        super().unregisterProtocol(p)
        self.perAddress.release(getattr(p, "key", None))

    @staticmethod
    def takeOver(channel: Any) -> None:
        """``channel``'s connection is becoming a WebSocket: it leaves the gate, and
        its socket's transport is the channel's again, to be handed over."""
        slot = channel.transport
        if isinstance(slot, HTTPSlot):
            slot.factory.unregisterProtocol(slot)
            transport: Any = slot.transport
            # The slot's place goes to the channel; autobahn gives it to the WebSocket.
            if isinstance(transport, ProtocolWrapper):  # TLS
                transport.wrappedProtocol = slot.wrappedProtocol
            else:
                transport.protocol = slot.wrappedProtocol
            channel.transport = transport


class ChatSocket(WebSocketResource):
    """``/chat``: the request's connection handed over to a :class:`WebChatProtocol`.

    twisted.web's channel registered itself as the connection's producer; it lets
    go here, so that the member's writer can register, and the channel, with its
    request, is freed now (not held by the connection for its life, nor left for
    the garbage collector as a cycle: it is done with this connection).
    """

    def render(self, request: Request) -> bytes | int:
        channel = request.channel
        HTTPGate.takeOver(channel)
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


def makeSite(context: ServerContext) -> HTTPGate:
    """The web service's site behind its connection caps, its members in the chat's
    factory (``--web-origins`` from :mod:`.plugin`)."""
    chat = buildFactory(context)
    options = context.optionsOf(service)
    sockets = WebChatFactory(chat, tuple(options["web-origins"]), context.reactor)
    root = PageFiles(str(STATIC))
    root.putChild(b"chat", ChatSocket(sockets))
    return HTTPGate(WebSite(root, chat, context.reactor))
