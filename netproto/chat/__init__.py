"""chat: a multi-user line chat for telnet, netcat and ``netproto chat`` (PROTOCOL.md section 1)."""
