"""Registers the shout service with netproto.

This file sits in a ``netproto/plugins/`` folder with NO ``__init__.py``,
anywhere on ``sys.path``: netproto's plugin package picks it up from there.
"""

from netproto.services import LazyService

shout = LazyService(
    name="shout",
    description="answers every line in capitals (the extending tutorial's example)",
    defaultEndpoint="tcp:8010:interface=127.0.0.1",
    builder="shout.makeFactory",
)
