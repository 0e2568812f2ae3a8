"""Uploads, many passes on one server: the shared harness's upload figures with their spread.

The harness (``../shared/bench/run.py --only upload``) times one 1 GiB upload
per target and run, so one run says little when a figure is bimodal. This
runs, on one ``twistd netproto`` (:func:`bench.server.netproto`), through the
harness's own client adapters (``load.upload``, same data files):

* ``small``: 1,000 pipelined files of 4 KiB, ``--passes`` times, a new
  connection each, with ``os.sync()`` before each pass (files/s each);
* ``big``: the 1 GiB file, alternating with the harness's
  ``raw_upload --fsync --sha256`` peer (the same-guarantee floor), MB/s each.

    python -m bench.uploads small|big [--passes 8]

It needs the shared harness beside the checkout, or named by
``NETPROTO_SHARED_BENCH`` (:data:`bench.server.SHARED_BENCH`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.server import SHARED_BENCH, Server, netproto, peer

sys.path.insert(0, str(SHARED_BENCH))
from load import upload  # type: ignore[import-not-found]


def small(server: Server, passes: int) -> list[float]:
    """Files/s of each pass of 1,000 pipelined 4 KiB files."""
    _, _, _, files = upload.ensure_data()
    rates = []
    for k in range(passes):
        os.sync()
        start = time.perf_counter()
        adapter = upload.NetprotoUpload(server.ports["upload"], server.token)
        adapter.put_many([(f"p{k}-{n}", b, h) for n, b, h in files], time.monotonic() + 60)
        adapter.close()
        rates.append(len(files) / (time.perf_counter() - start))
    return rates


def bigOnce(make: Callable[[], Any], data: tuple[str, str], name: str, landing: Path) -> float:
    """MB/s of one upload of ``data`` (its path and SHA-256) through ``make()``'s
    adapter; the file is removed after."""
    path, sha = data
    size = os.path.getsize(path)
    os.sync()
    start = time.perf_counter()
    adapter = make()
    adapter.put(name, size, sha, time.monotonic() + 120, path=path)
    adapter.close()
    rate = size / (time.perf_counter() - start) / 1e6
    os.unlink(landing / name)
    os.sync()
    return rate


def big(server: Server, passes: int) -> tuple[list[float], list[float]]:
    """MB/s of each 1 GiB upload to netproto, and to the raw floor, alternating."""
    path, sha, _, _ = upload.ensure_data()
    data = (path, sha)
    landing = Path(server.home) / "raw-landing"
    landing.mkdir()
    floor = ("--dir", str(landing), "--fsync", "--sha256")
    with peer("raw_upload.py", "upload", *floor) as raw:

        def ours() -> Any:
            return upload.NetprotoUpload(server.ports["upload"], server.token)

        def theirs() -> Any:
            return upload.RawUploadSha(raw.ports["upload"])

        mine, floors = [], []
        for k in range(passes):
            mine.append(bigOnce(ours, data, f"b{k}", server.uploadDir))
            floors.append(bigOnce(theirs, data, f"b{k}", landing))
    return mine, floors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["small", "big"])
    parser.add_argument("--passes", type=int, default=8)
    args = parser.parse_args()
    results: dict[str, list[float]] = {}
    with netproto("--web", "none") as server:
        if args.what == "small":
            results["netproto_files_s"] = small(server, args.passes)
        else:
            results["netproto_mb_s"], results["raw_fsync_sha256_mb_s"] = big(server, args.passes)
    summary = {
        key: {"each": [round(v) for v in values], "median": round(statistics.median(values))}
        for key, values in results.items()
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
