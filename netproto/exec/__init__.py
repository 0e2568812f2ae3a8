"""exec: remote command execution over length-prefixed frames (PROTOCOL.md section 3)."""
