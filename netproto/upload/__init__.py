"""upload: verified, atomic, resumable file upload (PROTOCOL.md section 4)."""
