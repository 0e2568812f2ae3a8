"""Registers the greet service, and its ``netproto greet`` subcommand, with netproto.

Like ``shout_plugin.py``, this file sits in a ``netproto/plugins/`` folder with
NO ``__init__.py``. It imports nothing but the declarations: ``netproto
--help`` and ``twistd --help`` read it.
"""

from netproto.services import ClientCommand, LazyService

#: The service's port unless told otherwise; the client reads it from here.
PORT = 8011

greet = LazyService(
    name="greet",
    description="greets whoever sends a name (the client-subcommand example)",
    defaultEndpoint=f"tcp:{PORT}:interface=127.0.0.1",
    builder="greet.makeFactory",
    client=ClientCommand("greet_client", "greet NAME on a greet server (an example plugin)"),
)
