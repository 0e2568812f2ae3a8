"""netproto: a Twisted protocol server for chat, remote exec and verified upload.

Run it with ``twistd -n netproto``; connect with ``telnet 127.0.0.1 8000`` or the
bundled ``netproto`` client. The wire contract lives in ``docs/protocol.md``.
"""

__version__ = "0.1.0"
