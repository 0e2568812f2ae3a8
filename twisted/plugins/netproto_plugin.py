"""The ``twistd netproto`` dropin: one lazy line, so ``twistd --help`` stays light."""

from twisted.application.service import ServiceMaker

netproto = ServiceMaker(
    "netproto",
    "netproto.tap",
    "chat, remote exec and verified file upload (netproto)",
    "netproto",
)
