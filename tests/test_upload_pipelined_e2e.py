"""Pipelined uploads against ``twistd netproto``: the bundled client's ``upload DIR``
(pipelined where offered) with a refused file in the middle, ``upload --sync`` sending
nothing the second time, and the server killed (SIGKILL) in the middle of a batch."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from netproto.upload.names import RESERVED_PREFIX
from tests.fileskit import pipelined
from tests.support import NETPROTO, BlockingFramed, Twistd, runTwistd


def upload(server: Twistd, home: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [NETPROTO, "upload", *map(str, args), "--server", f"127.0.0.1:{server.port('upload')}"],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, NETPROTO_HOME=str(home)),
        check=False,
    )


def makeTree(top: Path, count: int) -> dict[str, bytes]:
    files = {f"t/{i // 50:02d}/f{i:04d}": os.urandom(512 + i) for i in range(count)}
    for name, data in files.items():
        path = top / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


@pytest.mark.e2e
def test_a_tree_goes_up_pipelined_with_a_refused_file_and_sync_sends_nothing_again(
    tmp_path: Path,
) -> None:
    """300 files; one already exists on the server: it alone fails (exists),
    the others are stored, one line each, in order. Then --sync sends nothing
    but what differs, and says what it skipped; after one local change it
    sends that file only."""
    files = makeTree(tmp_path, 300)
    home = tmp_path / "home"
    with runTwistd(tmp_path, services=("upload",)) as server:
        blocker = home / "uploads" / "t" / "03" / "f0170"
        blocker.parent.mkdir(parents=True)
        blocker.write_bytes(b"server's own")
        first = upload(server, home, tmp_path / "t")
        assert first.returncode == 1
        assert first.stderr.count(": exists: ") == 1 and "f0170: exists" in first.stderr
        lines = first.stdout.splitlines()
        assert [line.split()[2] for line in lines] == sorted(set(files) - {"t/03/f0170"})
        for name, data in files.items():
            if name != "t/03/f0170":
                assert (home / "uploads" / name).read_bytes() == data
        assert blocker.read_bytes() == b"server's own"
        # --sync: the file that differs (the server's own f0170) is replaced,
        # the 299 others are skipped; a second --sync sends nothing at all.
        second = upload(server, home, "--sync", tmp_path / "t")
        assert second.returncode == 0, second.stderr
        assert second.stdout.split()[2:] == ["t/03/f0170"]
        assert second.stderr.count("unchanged on the server, skipped") == 299
        assert blocker.read_bytes() == files["t/03/f0170"]
        server.waitLog(r"stored t/03/f0170 ")
        storedBefore = server.log.count(" stored ")
        again = upload(server, home, "--sync", tmp_path / "t")
        assert (again.returncode, again.stdout) == (0, "")
        assert again.stderr.count("unchanged on the server, skipped") == 300
        (tmp_path / "t" / "00" / "f0001").write_bytes(b"changed")
        third = upload(server, home, "--sync", tmp_path / "t")
        assert third.returncode == 0, third.stderr
        assert third.stdout.split()[2:] == ["t/00/f0001"]
        assert (home / "uploads" / "t" / "00" / "f0001").read_bytes() == b"changed"
        server.waitLog(r"stored t/00/f0001 ")
        assert server.log.count(" stored ") == storedBefore + 1


@pytest.mark.e2e
def test_the_server_killed_in_a_pipelined_batch_keeps_every_stored_file_whole(
    tmp_path: Path,
) -> None:
    """A client pipelines 400 files; once 50 were answered K stored the server
    is killed (SIGKILL). Every file answered K stored is whole under its name,
    and every file under a final name is whole: the rest is at most partial
    data under the server's own names."""
    files = [(f"b/f{i:04d}", os.urandom(4096)) for i in range(400)]
    home = tmp_path / "home"
    storedNames: list[str] = []
    with runTwistd(tmp_path, services=("upload",)) as server:
        client = BlockingFramed.connect(server.port("upload"))
        client.login((home / "token").read_text().strip(), service="upload")
        wire = pipelined(files)
        sender = threading.Thread(target=_sendQuietly, args=(client, wire), daemon=True)
        sender.start()
        while len(storedNames) < 50:
            frame = client.recv()
            assert frame is not None and frame[0] == b"K", frame
            answer = json.loads(frame[1])
            if "sha256" in answer:
                storedNames.append(answer["name"])
        server.stop(signal.SIGKILL)
        client.close()
        sender.join(10)
    root = home / "uploads"
    expected = dict(files)
    assert storedNames == [name for name, _ in files[:50]]
    for name in storedNames:
        assert (root / name).read_bytes() == expected[name]
    for path in root.rglob("*"):
        if path.is_file() and not path.name.startswith(RESERVED_PREFIX):
            rel = path.relative_to(root).as_posix()
            assert (
                hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(expected[rel]).digest()
            )


def _sendQuietly(client: BlockingFramed, wire: bytes) -> None:
    with contextlib.suppress(OSError):  # the server is killed meanwhile
        client.sock.sendall(wire)
