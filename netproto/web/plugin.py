"""The web service's plugin declaration: ``--web ENDPOINT`` and ``--web-origins``.

Imported whenever plugins are discovered (``twistd --help``), so it imports nothing
but the plugin API: the site is built by :func:`netproto.web.server.makeSite`.
Browser members are chat members: their limits are the ``--chat-*`` options
(line size, flood, slow readers, connection caps), not options of their own.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from netproto.chat.plugin import usesRedis
from netproto.services import LazyService

#: ``--web-origins`` value that lets a page from anywhere open the chat WebSocket.
ANY_ORIGIN = "*"


def normalizeOrigin(origin: str) -> str:
    """``origin`` as browsers send it in the ``Origin`` header: lower case, no
    trailing slash, and no port where it is the scheme's default."""
    origin = origin.strip().rstrip("/").lower()
    for scheme, port in (("http://", ":80"), ("https://", ":443")):
        if origin.startswith(scheme) and origin.endswith(port):
            return origin[: -len(port)]
    return origin


def origins(text: str) -> tuple[str, ...]:
    """``--web-origins``: comma-separated ``scheme://host[:port]`` origins, or ``*``."""
    found: list[str] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        if item != ANY_ORIGIN:
            parts = urlsplit(item)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in "/":
                raise ValueError(f"{item!r} is not an origin such as https://chat.example.org")
        found.append(normalizeOrigin(item))
    return tuple(found)


origins.coerceDoc = (  # type: ignore[attr-defined]
    "Must be comma-separated origins such as https://chat.example.org:8443, or *."
)

service = LazyService(
    name="web",
    description="browser chat: the page at / and a WebSocket at /chat, in the chat's rooms",
    defaultEndpoint="tcp:8080:interface=127.0.0.1",
    builder="netproto.web.server.makeSite",
    enabledByDefault=True,
    usesOpenSSL=usesRedis,  # the chat's own factory, clustered with --chat-redis
    tls=True,  # twistd netproto --tls serves the page and the WebSocket over TLS (https, wss)
    optParameters=[
        [
            "web-origins",
            None,
            "",
            "Comma-separated origins (https://host[:port]) whose pages may open the chat "
            "WebSocket besides the page's own; '*' allows any. Others get HTTP 403.",
            origins,
        ],
    ],
)
