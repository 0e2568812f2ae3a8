"""Browser chat: a page and a WebSocket whose members join the chat service's rooms
(PROTOCOL.md section 7).

:mod:`netproto.web.plugin` declares the ``web`` service and its options,
:mod:`netproto.web.server` builds its twisted.web site (the page's files and the
WebSocket at ``/chat``), :mod:`netproto.web.protocol` is the WebSocket side of one
browser member, and ``static/`` holds the page (plain HTML, CSS and JavaScript,
no build step). See ``docs/web.md``.
"""
