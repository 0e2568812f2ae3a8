"""Issue 6's targets, checked against runs of the shared harness (its JSON files).

    python -m bench.report bench/results/harness-1.json bench/results/harness-2.json ...

Prints a Markdown table: each target's ratio in every run, the median, and
whether the median meets the target. Ratios are taken within a run, as the
harness's figures are only comparable within one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

Run = dict[str, Any]


def value(run: Run, scenario: str, target: str, key: str) -> float | None:
    try:
        found: float = run["scenarios"][scenario]["targets"][target]["values"][key]
    except KeyError:
        return None
    return found


def best(run: Run, scenario: str, key: str, higher: bool, exclude: tuple[str, ...]) -> float | None:
    targets = run["scenarios"].get(scenario, {}).get("targets", {})
    values = [
        t["values"][key]
        for name, t in targets.items()
        if name not in exclude and key in t.get("values", {})
    ]
    if not values:
        return None
    chosen: float = max(values) if higher else min(values)
    return chosen


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


NP = "netproto"
Check = tuple[str, str, Callable[[Run], float | None], float, bool]

CHECKS: list[Check] = [
    (
        "chat fan-out",
        "/ bare Twisted",
        lambda r: ratio(
            value(r, "chat", NP, "deliveries_s"),
            value(r, "chat", "twisted_chat (bare loop)", "deliveries_s"),
        ),
        0.9,
        True,
    ),
    (
        "chat fan-out",
        "/ threads",
        lambda r: ratio(
            value(r, "chat", NP, "deliveries_s"),
            value(r, "chat", "tutorial_chat (threads)", "deliveries_s"),
        ),
        1.5,
        True,
    ),
    (
        "conn RSS per connection",
        "KiB",
        lambda r: value(r, "conn", NP, "rss_kib_per_conn"),
        3.0,
        False,
    ),
    (
        "conn newest member p50",
        "/ best peer",
        lambda r: ratio(
            value(r, "conn", NP, "rtt_p50_ms"), best(r, "conn", "rtt_p50_ms", False, (NP,))
        ),
        1.0,
        False,
    ),
    (
        "exec `true`/s",
        "/ tutorial",
        lambda r: ratio(
            value(r, "exec", NP, "cmds_s"), value(r, "exec", "tutorial_exec (sh -c)", "cmds_s")
        ),
        1.0,
        True,
    ),
    (
        "exec `true`/s",
        "/ posix_spawn",
        lambda r: ratio(value(r, "exec", NP, "cmds_s"), value(r, "limits", "machine", "spawn_s")),
        0.7,
        True,
    ),
    ("exec `true` p99", "ms", lambda r: value(r, "exec", NP, "p99_ms"), 3.0, False),
    (
        "exec 512 MiB stream",
        "/ best peer",
        lambda r: ratio(
            value(r, "exec", NP, "stream_mb_s"), best(r, "exec", "stream_mb_s", True, (NP,))
        ),
        1.5,
        True,
    ),
    (
        "exec stream peak RSS",
        "MB",
        lambda r: value(r, "exec", NP, "peak_rss_mb"),
        67.1,
        False,
    ),
    (
        "upload 1 GiB",
        "/ raw+fsync",
        lambda r: ratio(
            value(r, "upload", NP, "big_mb_s"), value(r, "upload", "raw_upload+fsync", "big_mb_s")
        ),
        0.9,
        True,
    ),
    (
        "upload 1 GiB",
        "/ scp",
        lambda r: ratio(value(r, "upload", NP, "big_mb_s"), value(r, "upload", "scp", "big_mb_s")),
        2.0,
        True,
    ),
    (
        "upload 4 KiB files",
        "/ raw+fsync",
        lambda r: ratio(
            value(r, "upload", NP, "small_files_s"),
            value(r, "upload", "raw_upload+fsync", "small_files_s"),
        ),
        0.8,
        True,
    ),
]


def table(runs: list[Run]) -> str:
    head = "| target | measure | " + " | ".join(f"run {i}" for i in range(1, len(runs) + 1))
    lines = [head + " | median | goal | met |", "|" + "---|" * (len(runs) + 5)]
    for name, measure, get, goal, higher in CHECKS:
        got = [get(r) for r in runs]
        known = [g for g in got if g is not None]
        med = statistics.median(known) if known else None
        met = (
            "n/a" if med is None else ("yes" if (med >= goal if higher else med <= goal) else "no")
        )
        cells = " | ".join("-" if g is None else f"{g:.2f}" for g in got)
        sign = ">=" if higher else "<="
        median = "-" if med is None else f"{med:.2f}"
        lines.append(f"| {name} | {measure} | {cells} | {median} | {sign} {goal:g} | {met} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+")
    args = parser.parse_args()
    print(table([json.loads(p.read_text()) for p in args.runs]))


if __name__ == "__main__":
    main()
