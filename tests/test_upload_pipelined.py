"""Pipelined uploads (PROTOCOL.md section 6, feature ``pipeline``), in memory: a client
that sends P, D..., F of many files without waiting, and the server's answers, in order."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest
from twisted.internet.defer import ensureDeferred

from netproto.client.framed import FramedClient, connectFramed
from netproto.codec import encodeFrame, encodeJSON
from netproto.testing import FramedPeer, PausableTransport
from netproto.upload import store
from netproto.upload.client import Job, sendPipelined
from netproto.upload.pipelined import sendAll
from netproto.upload.protocol import MAX_IN_FLIGHT, UploadProtocol
from tests.fileskit import MemoryEndpoint, Served, pipelined, sha
from tests.uploadkit import StepExecutor


def answers(peer: FramedPeer) -> list[tuple[bytes, dict[str, object]]]:
    return [(kind, json.loads(payload)) for kind, payload in peer.take()]


def test_the_hello_offers_pipelining(tmp_path: Path) -> None:
    assert "pipeline" in Served(tmp_path).peer().hello.features


def test_a_tree_sent_without_waiting_is_answered_in_order_and_a_refused_file_skipped(
    tmp_path: Path,
) -> None:
    """Twelve files sent in one go; the fourth has a bad name and the eighth
    exists already: each is answered K ready then K stored, in order, except
    those two, answered with one E each; their data and F are skipped; the
    others are stored."""
    served = Served(tmp_path)
    (served.root / "d").mkdir(parents=True)
    (served.root / "d" / "f7").write_bytes(b"already here")
    files = [(f"d/f{i}", os.urandom(1000 + i)) for i in range(12)]
    files[3] = ("d/../f3", files[3][1])
    peer = served.peer()
    peer.sendRaw(pipelined(files))
    got = answers(peer)
    expected: list[tuple[bytes, object]] = []
    for name, data in files:
        if name == "d/../f3":
            expected.append((b"E", "invalid-name"))
        elif name == "d/f7":
            expected.append((b"E", "exists"))
        else:
            expected += [
                (b"K", {"offset": 0}),
                (b"K", {"name": name, "size": len(data), "sha256": sha(data)}),
            ]
    assert [(k, b["code"] if k == b"E" else b) for k, b in got] == expected
    assert not peer.closed
    for name, data in files:
        if name not in ("d/../f3", "d/f7"):
            assert (served.root / name).read_bytes() == data
    assert (served.root / "d" / "f7").read_bytes() == b"already here"


def test_answers_wait_for_the_files_before_them(tmp_path: Path) -> None:
    """With the disk slow (worker jobs held), nothing is answered out of order:
    the answers come only as the files before them are done."""
    steps = StepExecutor()
    served = Served(tmp_path, steps)
    files = [(f"f{i}", os.urandom(3000)) for i in range(6)]
    peer = served.peer()
    peer.sendRaw(pipelined(files))
    assert peer.take() == []
    steps.runAll()
    got = answers(peer)
    assert [b.get("name") for k, b in got if "sha256" in b] == [n for n, _ in files]
    assert [k for k, _ in got] == [b"K"] * 12


def test_files_finishing_together_are_made_durable_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group commit: the data of files finishing together is flushed to disk
    with one flush of the file system, not one per file, and only then are
    they renamed and answered."""
    flushes: list[list[str]] = []
    realSyncfs = store._syncfs

    def syncfs(fd: int) -> None:
        flushes.append(sorted(p.name for p in served.root.iterdir()))
        realSyncfs(fd)

    monkeypatch.setattr(store, "_syncfs", syncfs)
    steps = StepExecutor()
    served = Served(tmp_path, steps)
    files = [(f"f{i}", os.urandom(100)) for i in range(4)]
    peer = served.peer()
    peer.sendRaw(pipelined(files))
    steps.runAll()
    got = answers(peer)
    assert len([b for _, b in got if "sha256" in b]) == 4
    assert len(flushes) == 1
    # At the flush, no file was under its final name yet.
    assert not any(name.startswith("f") for name in flushes[0])


def test_a_data_error_in_the_middle_ends_only_that_file(tmp_path: Path) -> None:
    """Too many bytes for the second file: E size-mismatch for it, in its
    place (its only answer: its open was still queued with the read's other
    files when the data overflowed, so it never got a K ready); its F is
    skipped; the files after it are stored."""
    served = Served(tmp_path)
    peer = served.peer()
    wire = pipelined([("a", b"aaa")])
    wire += pipelined([("b", b"bbb")], sizes={"b": 2})
    wire += pipelined([("c", b"ccc")])
    peer.sendRaw(wire)
    got = answers(peer)
    assert [(k, b.get("code") or b.get("name") or b.get("offset")) for k, b in got] == [
        (b"K", 0),
        (b"K", "a"),
        (b"E", "size-mismatch"),
        (b"K", 0),
        (b"K", "c"),
    ]
    assert sorted(p.name for p in served.root.iterdir() if not p.name.startswith(".")) == [
        "a",
        "c",
    ]


def test_a_listing_after_pipelined_files_waits_for_their_answers(tmp_path: Path) -> None:
    """L sent right behind pipelined files is answered after them, and sees them."""
    steps = StepExecutor()
    served = Served(tmp_path, steps)
    peer = served.peer()
    peer.sendRaw(
        pipelined([("x", b"1"), ("y", b"2")]) + encodeFrame(b"L", encodeJSON({"path": ""}))
    )
    steps.runAll()
    got = peer.take()
    assert [k for k, _ in got] == [b"K", b"K", b"K", b"K", b"I", b"K"]
    names = {e["name"] for e in json.loads(got[4][1])["entries"]}
    assert {"x", "y"} <= names


def test_the_connection_lost_in_a_batch_leaves_nothing_unanswered_in_place(
    tmp_path: Path,
) -> None:
    """The client goes away with files sent but not answered: none of them
    appears under its name (none was answered), no partial file stays."""
    steps = StepExecutor()
    served = Served(tmp_path, steps)
    peer = served.peer()
    peer.sendRaw(pipelined([(f"f{i}", os.urandom(5000)) for i in range(4)]))
    peer.close()
    steps.runAll()
    assert [p.name for p in served.root.iterdir() if not p.name.startswith(".netproto-quota")] == []


def test_the_bundled_client_sends_every_file_before_any_answer(tmp_path: Path) -> None:
    """``netproto upload DIR`` pipelines where the hello offers it: with the
    server's disk held (no answer can come), the server has already received
    every file's P, data and F (up to MAX_IN_FLIGHT in flight, the rest
    waiting in its backlog); once the disk goes on, every file is stored
    and reported, in order."""
    steps = StepExecutor()
    served = Served(tmp_path, steps)
    endpoint = MemoryEndpoint(served)
    connecting = ensureDeferred(connectFramed(endpoint, "upload", {"token": served.token}))
    endpoint.flush()
    client = connecting.result
    assert isinstance(client, FramedClient)
    local = tmp_path / "local"
    local.mkdir()
    jobs = []
    for i in range(12):
        (local / f"f{i:02d}").write_bytes(os.urandom(2000 + i))
        jobs.append(Job(str(local / f"f{i:02d}"), f"up/f{i:02d}"))
    stored: list[str] = []
    args = argparse.Namespace(overwrite=False, quiet=True)
    sending = ensureDeferred(
        sendAll(
            served.context.reactor,
            client,
            jobs,
            args,
            sendOne=sendPipelined,
            stored=lambda job, size, digest: stored.append(job.name),
            failed=lambda job, e: pytest.fail(f"{job.name}: {e}"),
        )
    )
    endpoint.flush()
    server = endpoint.servers[0]
    assert isinstance(server, UploadProtocol)
    assert len(server.flight) == MAX_IN_FLIGHT
    waiting = [k for k, _ in server.backlog]
    assert waiting.count(b"P") == waiting.count(b"F") == 12 - MAX_IN_FLIGHT
    assert stored == []
    for _ in range(100):
        if sending.called:
            break
        steps.runAll()
        endpoint.flush()
    assert sending.called and stored == [job.name for job in jobs]
    for job in jobs:
        assert (served.root / job.name).read_bytes() == Path(job.path).read_bytes()


def test_files_past_the_in_flight_limit_wait_with_reading_stopped(tmp_path: Path) -> None:
    """MAX_IN_FLIGHT + 3 files sent in one go, the disk held: MAX_IN_FLIGHT
    are in flight, the rest wait in the backlog and the server reads no more
    (what a connection holds stays bounded); once the disk goes on, every
    file is stored, answered in order."""
    steps = StepExecutor()
    served = Served(tmp_path, steps)
    files = [(f"f{i:03d}", os.urandom(500)) for i in range(MAX_IN_FLIGHT + 3)]
    peer = served.peer()
    peer.sendRaw(pipelined(files))
    server = peer.server
    assert isinstance(server, UploadProtocol)
    assert len(server.flight) == MAX_IN_FLIGHT
    waiting = [kind for kind, _ in server.backlog]
    assert waiting.count(b"P") == waiting.count(b"F") == 3
    assert isinstance(server.transport, PausableTransport) and server.transport.paused
    assert peer.take() == []
    for _ in range(100):
        if not server.flight and not server.backlog:
            break
        steps.runAll()
        peer.flush()
    got = answers(peer)
    assert [b.get("name") for _, b in got if "sha256" in b] == [name for name, _ in files]
    assert not server.transport.paused
    for name, data in files:
        assert (served.root / name).read_bytes() == data
