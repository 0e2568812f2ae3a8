"""Files back from the upload service (PROTOCOL.md section 6), end to end with the bundled client.

* ``netproto ls -R -l`` of a tree of 10,000 files (100 directories of 100,
  each with its digest kept as an upload keeps it): wall time of the whole
  command (process start included), and the server's RSS growth after
  each listing;
* the bundled client uploading 1,000 files of 4 KiB (``netproto upload DIR``,
  pipelined where the server offers it), then ``netproto upload --sync`` of
  the same, unchanged tree: files/s and the ratio.

Each timing is the median of ``--passes`` runs. The server is ``twistd -n
netproto`` from this environment (:func:`bench.server.netproto`). The
``netproto`` package run is compiled to bytecode first, as an installed one
is: run from a checkout with ``PYTHONDONTWRITEBYTECODE`` set (as here), each
client process would otherwise compile its modules from source again (about
0.05 s of every start). ``twisted_start_s`` is the floor of any Twisted
client here: a bare Python importing the reactor and endpoints.

    python -m bench.files [--files 10000] [--tree 1000] [--passes 3]
"""

from __future__ import annotations

import argparse
import compileall
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import netproto as package
from bench.server import Server, netproto
from netproto.upload import digests

NETPROTO = str(Path(sys.executable).parent / "netproto")


def command(server: Server, *args: str) -> float:
    """Run ``netproto ARGS`` against ``server``; its wall time in seconds."""
    start = time.perf_counter()
    result = subprocess.run(
        [NETPROTO, *args, "--server", f"127.0.0.1:{server.ports['upload']}"],
        env=dict(os.environ, NETPROTO_HOME=str(server.home)),
        capture_output=True,
        check=False,
    )
    elapsed = time.perf_counter() - start
    if result.returncode:
        raise SystemExit(f"netproto {' '.join(args)} failed: {result.stderr.decode()[-500:]}")
    return elapsed


#: What any Twisted client imports before it can connect.
TWISTED_START = "from twisted.internet import reactor, endpoints, defer, task"


def _timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True)
    return time.perf_counter() - start


def plantTree(root: Path, count: int) -> None:
    """``count`` small files in directories of 100, each with its digest kept
    as an upload keeps it (untimed)."""
    for i in range(count):
        path = root / "big-tree" / f"d{i // 100:03d}" / f"f{i:05d}"
        path.parent.mkdir(parents=True, exist_ok=True)
        data = b"%d" % i
        path.write_bytes(data)
        fd = os.open(path, os.O_RDONLY)
        try:
            digests.record(fd, hashlib.sha256(data).hexdigest())
        finally:
            os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--tree", type=int, default=1_000)
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, float | list[int]] = {}
    compileall.compile_dir(Path(package.__file__).parent, quiet=1)
    local = Path(tempfile.mkdtemp(prefix="netproto-bench-files-"))
    try:
        with netproto("--web", "none") as server:
            plantTree(server.uploadDir, args.files)
            command(server, "ls", "big-tree")  # warm the server (imports, first connection)
            rssBefore = server.rssKiB()
            times, rss = [], []
            for _ in range(args.passes):
                times.append(command(server, "ls", "-R", "-l", "big-tree"))
                rss.append(server.rssKiB() - rssBefore)
            results["ls_R_s"] = statistics.median(times)
            results["ls_rss_growth_kib"] = rss[-1]
            # after each listing: growth that stops after the first few is
            # the allocator's pools filling, growth in every one a leak
            results["ls_rss_growth_each_kib"] = rss
            results["python_start_s"] = statistics.median(
                command(server, "ls", "--help") for _ in range(args.passes)
            )
            results["twisted_start_s"] = statistics.median(
                _timed([sys.executable, "-c", TWISTED_START]) for _ in range(args.passes)
            )
            tree = local / "tree"
            for i in range(args.tree):
                path = tree / f"d{i // 100:02d}" / f"f{i:04d}"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(os.urandom(4096))
            uploads, syncs = [], []
            for _ in range(args.passes):
                shutil.rmtree(server.uploadDir / "tree", ignore_errors=True)
                os.sync()
                uploads.append(command(server, "upload", "-q", str(tree)))
                syncs.append(command(server, "upload", "-q", "--sync", str(tree)))
            results["upload_files_s"] = args.tree / statistics.median(uploads)
            results["sync_unchanged_files_s"] = args.tree / statistics.median(syncs)
            results["sync_speedup"] = statistics.median(uploads) / statistics.median(syncs)
    finally:
        shutil.rmtree(local, ignore_errors=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
