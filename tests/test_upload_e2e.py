"""Upload over real loopback: in-process server and client, ``twistd netproto``
subprocesses that are killed mid-file, the ``netproto upload`` command, a
small full file system, and the progress bar on a terminal."""

from __future__ import annotations

import argparse
import filecmp
import hashlib
import json
import os
import signal
import subprocess
from pathlib import Path

import pexpect
import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint

from netproto.client.framed import connectFramed
from netproto.upload.client import Job, sendFile
from netproto.upload.names import PARTIAL_PREFIX
from netproto.upload.server import makeFactory, uploadDirectory
from tests.support import NETPROTO, BlockingFramed, Twistd, makeContext, runTwistd, token, waitUntil
from tests.uploadkit import smallTmpfs

MiB = 1 << 20


def randomFile(path: Path, size: int) -> str:
    """Write ``size`` random bytes to ``path``; returns their SHA-256."""
    h = hashlib.sha256()
    with path.open("wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(16 * MiB, left))
            h.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return h.hexdigest()


def partials(root: Path) -> list[Path]:
    return sorted(root.rglob(PARTIAL_PREFIX + "*"))


# -- in process, over loopback ----------------------------------------------------


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_200_MiB_random_file_arrives_byte_identical(tmp_path: Path) -> None:
    """A 200 MiB random file crosses loopback through the bundled client's
    sender and arrives byte-identical, with the SHA-256 both sides computed."""
    source = tmp_path / "big.bin"
    digest = randomFile(source, 200 * MiB)
    context = makeContext(tmp_path)
    factory = makeFactory(context)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    try:
        address = port.getHost()
        assert isinstance(address, IPv4Address)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", address.port)
        client = await connectFramed(endpoint, "upload", {"token": token(context)})
        args = argparse.Namespace(overwrite=False, resume=False, quiet=True)
        try:
            size, sent = await sendFile(reactor, client, Job(str(source), "big.bin"), args)
        finally:
            client.close()
    finally:
        await defer.maybeDeferred(port.stopListening)
    assert (size, sent) == (200 * MiB, digest)
    assert filecmp.cmp(source, uploadDirectory(context) / "big.bin", shallow=False)
    assert partials(uploadDirectory(context)) == []


# -- the netproto upload command against twistd ------------------------------------


def upload(
    server: Twistd, home: Path, *paths: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``netproto upload`` against ``server``, not on a terminal."""
    return subprocess.run(
        [NETPROTO, "upload", "--server", f"127.0.0.1:{server.port('upload')}", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, NETPROTO_HOME=str(home), **(env or {})),
        check=False,
    )


@pytest.mark.e2e
def test_directory_tree_is_uploaded_with_relative_names(tmp_path: Path) -> None:
    """A directory goes up recursively under its own name, Unicode names
    included; one line per file with its SHA-256; exit 0. Again without
    --overwrite: exit 1 and the reason for every file."""
    tree = tmp_path / "项目"
    (tree / "文档" / "深").mkdir(parents=True)
    (tree / "readme.txt").write_text("hello\n")
    (tree / "文档" / "报告.txt").write_text("你好 世界\n")
    randomFile(tree / "文档" / "深" / "data.bin", 3 * MiB)
    (tree / "empty").write_bytes(b"")
    files = sorted(p for p in tree.rglob("*") if p.is_file())
    with runTwistd(tmp_path, services=("upload",)) as server:
        home = tmp_path / "home"
        result = upload(server, home, tree)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert len(lines) == len(files)
        for path in files:
            rel = "项目/" + path.relative_to(tree).as_posix()
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            assert f"{digest}  {path.stat().st_size}  {rel}" in lines
            assert (home / "uploads" / rel).read_bytes() == path.read_bytes()
        again = upload(server, home, tree)
        assert again.returncode == 1
        assert again.stderr.count(": exists: ") == len(files)
        assert "Traceback" not in again.stderr
    assert partials(home / "uploads") == []


@pytest.mark.e2e
def test_as_names_the_file_and_overwrite_replaces(tmp_path: Path) -> None:
    """--as gives the name on the server; --overwrite replaces an existing file."""
    one, two = tmp_path / "one", tmp_path / "two"
    one.write_bytes(b"1")
    two.write_bytes(b"22")
    with runTwistd(tmp_path, services=("upload",)) as server:
        home = tmp_path / "home"
        assert upload(server, home, "--as", "x/y", one).returncode == 0
        assert upload(server, home, "--as", "x/y", two).returncode == 1
        assert upload(server, home, "--as", "x/y", "--overwrite", two).returncode == 0
        assert (home / "uploads" / "x" / "y").read_bytes() == b"22"
        bad = upload(server, home, "--as", "../up", one)
        assert bad.returncode == 1
        assert "cannot be named" in bad.stderr


def sendHalf(server: Twistd, home: Path, name: str, data: bytes) -> BlockingFramed:
    """A raw client that asks for resume and sends the first half of ``data``,
    returning once the server has written it."""
    c = BlockingFramed.connect(server.port("upload"))
    c.login((home / "token").read_text().strip(), service="upload")
    c.sendJSON(b"P", {"name": name, "size": len(data), "resume": True})
    assert c.recvJSON(b"K") == {"offset": 0}
    half = len(data) // 2
    for i in range(0, half, 256 * 1024):
        c.send(b"D", data[i : min(i + 256 * 1024, half)])
    root = home / "uploads"
    waitUntil(lambda: [p for p in partials(root) if p.stat().st_size == half])
    return c


@pytest.mark.e2e
@pytest.mark.slow
def test_killed_server_and_dropped_connection_then_resume(tmp_path: Path) -> None:
    """Mid-file, the server is killed (SIGKILL): nothing appears under the
    final name; after a restart, `netproto upload --resume` continues from the
    kept offset and the stored file has the right digest. Likewise after a
    dropped connection."""
    source = tmp_path / "movie.bin"
    digest = randomFile(source, 8 * MiB)
    data = source.read_bytes()
    home = tmp_path / "home"
    root = home / "uploads"
    with runTwistd(tmp_path, services=("upload",)) as server:
        killed = sendHalf(server, home, "movie.bin", data)
        server.stop(signal.SIGKILL)
        killed.close()
    assert not (root / "movie.bin").exists()
    assert [p.stat().st_size for p in partials(root)] == [len(data) // 2]
    with runTwistd(tmp_path, services=("upload",)) as server:
        result = upload(server, home, "--resume", source)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == [digest, str(len(data)), "movie.bin"]
        server.waitLog(rf"resumes movie\.bin \({len(data)} bytes from {len(data) // 2}\)")
        assert (root / "movie.bin").read_bytes() == data

        dropped = sendHalf(server, home, "again.bin", data)
        dropped.close()
        server.waitLog(r"left during again\.bin .*kept for resume")
        assert not (root / "again.bin").exists()
        result = upload(server, home, "--resume", "--as", "again.bin", source)
        assert result.returncode == 0, result.stderr
        server.waitLog(rf"resumes again\.bin \({len(data)} bytes from {len(data) // 2}\)")
        assert hashlib.sha256((root / "again.bin").read_bytes()).hexdigest() == digest
    assert partials(root) == []


# -- a full file system -------------------------------------------------------------


@pytest.mark.e2e
def test_full_file_system_gives_no_space_and_leaves_nothing(tmp_path: Path) -> None:
    """On a 1 MiB tmpfs: a P that cannot fit is refused with no-space; a file that
    fitted at P but meets a full disk while written gets E no-space; either way
    nothing is left behind, and the connection goes on."""
    with (
        smallTmpfs(tmp_path / "small", "1m") as mount,
        runTwistd(
            tmp_path, "--upload-dir", str(mount), "--upload-min-free", "0", services=("upload",)
        ) as server,
    ):
        c = BlockingFramed.connect(server.port("upload"))
        c.login((tmp_path / "home" / "token").read_text().strip())
        c.sendJSON(b"P", {"name": "huge", "size": 2 * MiB})
        assert c.recvJSON(b"E")["code"] == "no-space"
        data = os.urandom(900 * 1024)
        c.sendJSON(b"P", {"name": "f", "size": len(data)})
        assert c.recvJSON(b"K") == {"offset": 0}
        (mount / "filler").write_bytes(b"\0" * (600 * 1024))  # someone else fills the disk
        for i in range(0, len(data), 64 * 1024):
            c.send(b"D", data[i : i + 64 * 1024])
        c.sendJSON(b"F", {"sha256": hashlib.sha256(data).hexdigest()})
        assert c.recvJSON(b"E")["code"] == "no-space"
        waitUntil(lambda: sorted(os.listdir(mount)) == ["filler"])
        (mount / "filler").unlink()
        c.sendJSON(b"P", {"name": "small", "size": 3})
        assert c.recvJSON(b"K") == {"offset": 0}
        c.send(b"D", b"abc")
        c.sendJSON(b"F", {"sha256": hashlib.sha256(b"abc").hexdigest()})
        assert c.recvJSON(b"K")["name"] == "small"
        c.close()
        assert sorted(os.listdir(mount)) == ["small"]


# -- the progress bar ---------------------------------------------------------------------


@pytest.mark.e2e
def test_progress_bar_on_a_terminal_only(tmp_path: Path) -> None:
    """On a terminal the client draws a tqdm bar on stderr; with stderr not a
    terminal there is none, only the summary line on stdout."""
    source = tmp_path / "f.bin"
    randomFile(source, 4 * MiB)
    with runTwistd(tmp_path, services=("upload",)) as server:
        home = tmp_path / "home"
        env = dict(os.environ, NETPROTO_HOME=str(home), NETPROTO_PROGRESS_DELAY="0")
        argv = ["upload", "--server", f"127.0.0.1:{server.port('upload')}"]
        child = pexpect.spawn(
            NETPROTO, [*argv, "--as", "tty.bin", str(source)], env=env, timeout=60
        )
        child.expect(r"tty\.bin: +\d+%\|")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
        piped = subprocess.run(
            [NETPROTO, *argv, "--as", "pipe.bin", str(source)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert piped.returncode == 0
        assert piped.stderr == ""
        assert piped.stdout.endswith("  pipe.bin\n")


@pytest.mark.e2e
def test_wire_refusals_keep_the_connection(tmp_path: Path) -> None:
    """Over a real socket: invalid-name, exists and a checksum mismatch are answered
    with E and the same connection then stores a file."""
    with runTwistd(tmp_path, "--upload-max-size", "10", services=("upload",)) as server:
        c = BlockingFramed.connect(server.port("upload"))
        c.login((tmp_path / "home" / "token").read_text().strip())
        for request, code in [
            ({"name": "../x", "size": 1}, "invalid-name"),
            ({"name": "x", "size": 11}, "too-large"),
        ]:
            c.sendJSON(b"P", request)
            assert c.recvJSON(b"E")["code"] == code
        c.sendJSON(b"P", {"name": "x", "size": 2})
        assert c.recvJSON(b"K") == {"offset": 0}
        c.send(b"D", b"ab")
        c.send(b"F", json.dumps({"sha256": "0" * 64}).encode())
        assert c.recvJSON(b"E")["code"] == "checksum-mismatch"
        c.sendJSON(b"P", {"name": "x", "size": 2})
        assert c.recvJSON(b"K") == {"offset": 0}
        c.send(b"D", b"ab")
        c.sendJSON(b"F", {"sha256": hashlib.sha256(b"ab").hexdigest()})
        assert c.recvJSON(b"K")["size"] == 2
        c.close()
