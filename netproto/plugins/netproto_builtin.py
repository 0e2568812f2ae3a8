"""The services shipped with netproto, registered like any third-party plugin.

Each declaration lives beside its service, as ``service`` in
``netproto/NAME/plugin.py``; ``getPlugins`` finds a dropin's plugins among its
module attributes, so this dropin names each one for its service.
"""

import netproto.chat.plugin
import netproto.exec.plugin
import netproto.upload.plugin
import netproto.web.plugin
from netproto.examples.plugin import dgramEcho, echo

chatService = netproto.chat.plugin.service
execService = netproto.exec.plugin.service
uploadService = netproto.upload.plugin.service
webService = netproto.web.plugin.service

__all__ = ["chatService", "dgramEcho", "echo", "execService", "uploadService", "webService"]
