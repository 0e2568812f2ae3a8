"""The digest kept in a stored file's extended attribute is trusted only when it is ours."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from netproto.upload import digests


@pytest.mark.parametrize(
    ("sha256", "trusted"),
    [
        (hashlib.sha256(b"data").hexdigest(), True),
        (hashlib.sha256(b"data").hexdigest().upper(), False),
        ("g" * 64, False),
        ("0" * 63 + " ", False),
        ("é" * 32, False),
    ],
)
def test_only_lowercase_hex_digests_are_given(tmp_path: Path, sha256: str, trusted: bool) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"data")
    info = path.stat()
    value = f"1 {sha256} {info.st_size} {info.st_mtime_ns} {info.st_ino}".encode()
    os.setxattr(path, digests.XATTR, value)
    expected = sha256 if trusted else None
    fd, dirFD = os.open(path, os.O_RDONLY), os.open(tmp_path, os.O_RDONLY)
    try:
        assert digests.known(fd, os.fstat(fd)) == expected
        assert digests.knownAt(dirFD, "f", info) == expected
    finally:
        os.close(fd)
        os.close(dirFD)
