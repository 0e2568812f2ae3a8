"""The services shipped with netproto, registered like any third-party plugin."""

from netproto.chat.plugin import service as chat
from netproto.examples.plugin import dgramEcho, echo
from netproto.exec.plugin import service as exec_
from netproto.upload.plugin import service as upload

__all__ = ["chat", "dgramEcho", "echo", "exec_", "upload"]
