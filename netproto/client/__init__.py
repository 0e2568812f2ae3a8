"""The bundled ``netproto`` client, built on Twisted like the server."""
