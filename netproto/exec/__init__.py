"""exec: remote command execution over framed Int32StringReceiver (PROTOCOL.md section 3)."""
