"""``netproto ls`` and ``netproto download`` against ``twistd netproto`` (PROTOCOL.md
section 6): a tree up and back, a 200 MiB file up and back with the client killed in
the middle and resumed, rot on the server's disk, and bad names."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
from pathlib import Path

import pexpect
import pytest

from tests.fileskit import rot
from tests.support import NETPROTO, Twistd, runTwistd, waitUntil

MiB = 1 << 20


def netproto(server: Twistd, home: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """A ``netproto`` files command against ``server``, not on a terminal."""
    return subprocess.run(
        [NETPROTO, *map(str, args), "--server", f"127.0.0.1:{server.port('upload')}"],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, NETPROTO_HOME=str(home)),
        check=False,
    )


def tree(top: Path) -> dict[str, bytes]:
    """Every file below ``top`` by relative name, with its content."""
    return {p.relative_to(top).as_posix(): p.read_bytes() for p in top.rglob("*") if p.is_file()}


def leftovers(top: Path) -> list[Path]:
    return sorted(top.rglob("*.netproto-download"))


@pytest.mark.e2e
def test_a_tree_goes_up_and_comes_back_identical_and_is_listed(tmp_path: Path) -> None:
    src = tmp_path / "proj"
    (src / "docs" / "深").mkdir(parents=True)
    (src / "readme.txt").write_text("hello\n")
    (src / "docs" / "深" / "data.bin").write_bytes(os.urandom(3 * MiB + 7))
    (src / "docs" / "empty").write_bytes(b"")
    home, out = tmp_path / "home", tmp_path / "out"
    with runTwistd(tmp_path, services=("upload",)) as server:
        assert netproto(server, home, "upload", "-q", src).returncode == 0
        ls = netproto(server, home, "ls")
        assert (ls.returncode, ls.stdout) == (0, "proj/\n")
        ls = netproto(server, home, "ls", "proj", "-R")
        assert ls.stdout.splitlines() == [
            "docs/",
            "docs/empty",
            "docs/深/",
            "docs/深/data.bin",
            "readme.txt",
        ]
        long = netproto(server, home, "ls", "-l", "-h", "proj/docs/深").stdout.split()
        digest = hashlib.sha256((src / "docs" / "深" / "data.bin").read_bytes()).hexdigest()
        assert long[0] == "-" and long[1] == "3.0M" and long[4:] == [digest, "data.bin"]
        got = netproto(server, home, "download", "proj", "-o", out)
        assert got.returncode == 0, got.stderr
        assert len(got.stdout.splitlines()) == 3
        assert tree(out / "proj") == tree(src)
        one = netproto(server, home, "download", "-q", "proj/readme.txt", "-o", out / "one")
        assert one.returncode == 0, one.stderr
        assert tree(out / "one") == {"readme.txt": b"hello\n"}
        # On a terminal, a progress bar as for uploads.
        env = dict(os.environ, NETPROTO_HOME=str(home), NETPROTO_PROGRESS_DELAY="0")
        address = f"127.0.0.1:{server.port('upload')}"
        child = pexpect.spawn(
            NETPROTO,
            ["download", "proj/docs/深/data.bin", "-o", str(out / "tty"), "--server", address],
            env=env,
            timeout=60,
        )
        child.expect(r"data\.bin: +\d+%\|")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
        assert (out / "tty" / "data.bin").read_bytes() == (
            src / "docs" / "深" / "data.bin"
        ).read_bytes()
        missing = netproto(server, home, "ls", "nothing")
        assert missing.returncode == 1
        assert "nothing: not-found: " in missing.stderr
        bad = netproto(server, home, "download", "../etc/passwd", "-o", out)
        assert bad.returncode == 1 and "invalid-name" in bad.stderr
        assert "Traceback" not in bad.stderr + missing.stderr
    assert leftovers(out) == []


@pytest.mark.e2e
def test_rot_on_the_servers_disk_fails_the_download_and_leaves_nothing(tmp_path: Path) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(os.urandom(MiB))
    home, out = tmp_path / "home", tmp_path / "out"
    with runTwistd(tmp_path, services=("upload",)) as server:
        assert netproto(server, home, "upload", "-q", src).returncode == 0
        rot(home / "uploads" / "f.bin", at=MiB - 1)
        got = netproto(server, home, "download", "f.bin", "-o", out)
        assert got.returncode == 1
        assert "f.bin: checksum-mismatch: " in got.stderr
        kept = netproto(server, home, "download", "--resume", "f.bin", "-o", out)
        assert kept.returncode == 1
    assert list(out.iterdir()) == []


@pytest.mark.e2e
@pytest.mark.slow
def test_200_MiB_up_and_back_with_the_client_killed_and_resumed(tmp_path: Path) -> None:
    """A 200 MiB random file goes up and comes back byte-identical. The first
    download's client is killed (SIGKILL) in the middle: nothing is under the
    final name, its partial data is kept; --resume continues from there."""
    src = tmp_path / "big.bin"
    with src.open("wb") as f:
        for _ in range(25):
            f.write(os.urandom(8 * MiB))
    home, out = tmp_path / "home", tmp_path / "out"
    out.mkdir()
    part = out / ".big.bin.netproto-download"
    with runTwistd(tmp_path, services=("upload",)) as server:
        assert netproto(server, home, "upload", "-q", src).returncode == 0
        address = f"127.0.0.1:{server.port('upload')}"
        client = subprocess.Popen(
            [NETPROTO, "download", "big.bin", "-o", out, "--resume", "--server", address],
            env=dict(os.environ, NETPROTO_HOME=str(home)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            waitUntil(lambda: part.exists() and part.stat().st_size >= MiB, timeout=60)
            client.send_signal(signal.SIGSTOP)
        finally:
            client.kill()
            client.wait(10)
        assert not (out / "big.bin").exists()
        kept = part.stat().st_size
        assert MiB <= kept < 200 * MiB
        got = netproto(server, home, "download", "big.bin", "-o", out, "--resume")
        assert got.returncode == 0, got.stderr
        server.waitLog(rf"fetches big\.bin \({200 * MiB} bytes from {kept}\)")
    assert hashlib.sha256((out / "big.bin").read_bytes()).digest() == _sha(src)
    assert leftovers(out) == []


def _sha(path: Path) -> bytes:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(8 * MiB):
            h.update(chunk)
    return h.digest()
