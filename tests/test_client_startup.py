"""The ``netproto`` client starts without doing work its subcommand does not need."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from twisted.internet.task import Clock

from netproto import auth

# Counts scrypt runs during what the client does before it connects for ``netproto ls``.
_PROBE = """
import hashlib
calls = []
real = hashlib.scrypt
hashlib.scrypt = lambda *a, **k: calls.append(1) or real(*a, **k)
import netproto.upload.download
from netproto.client.cli import buildParser, clientCommands
buildParser(clientCommands(), "ls").parse_args(["ls"])
print(len(calls))
"""


def test_client_start_runs_no_scrypt() -> None:
    """Importing the client, its commands and netproto.auth hashes no password
    (the dummy hash for unknown users was a whole scrypt, 0.1 s, made at import)."""
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "0", out.stderr


def test_users_file_checker_makes_dummy_hash(tmp_path: Path) -> None:
    """A server with a users file makes the dummy hash when it builds its
    checker, so that the first unknown name costs no more than later ones."""
    users = tmp_path / "users"
    users.write_text(f"alice:{auth.hashPassword('pw', salt=b'1' * 16)}\n")
    auth._dummyHash.cache_clear()
    auth.UsersFileChecker(users, Clock())
    assert auth._dummyHash.cache_info().currsize == 1
    assert auth.verifyPassword("netproto-dummy", auth._dummyHash())
