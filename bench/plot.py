"""Plots for docs/performance.md from bench/scale.py's JSON and the shared harness's JSON.

    python -m bench.plot [--scale bench/results/scale.json]
                         [--harness bench/results/harness-1.json ...] [--out docs/_static]

Each figure is written as a PNG; the numbers behind it are in the JSON files.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

MiB = 1 << 20


def plotScale(scale: dict[str, list[dict[str, float]]], out: Path) -> list[Path]:
    made = []
    if "chat" in scale:
        rows = scale["chat"]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([r["receivers"] for r in rows], [r["deliveries_s"] / 1e3 for r in rows], "o-")
        ax.set_xscale("log")
        ax.set_xlabel("receivers in the room (plus 100 senders)")
        ax.set_ylabel("deliveries/s (thousands)")
        ax.set_title("chat fan-out: throughput against room size")
        ax.grid(alpha=0.3)
        made.append(_save(fig, out / "perf-chat-fanout.png"))
    if "exec" in scale:
        rows = scale["exec"]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        sizes = [r["bytes"] / MiB for r in rows]
        ax.plot(sizes, [r["mb_s"] for r in rows], "o-", label="MB/s")
        ax.set_xscale("log")
        ax.set_xlabel("command output (MiB)")
        ax.set_ylabel("MB/s")
        ax2 = ax.twinx()
        ax2.plot(sizes, [r["peak_rss_mib"] for r in rows], "s--", color="tab:red", label="peak RSS")
        ax2.set_ylabel("server peak RSS (MiB)", color="tab:red")
        ax2.set_ylim(bottom=0)
        ax.set_title("exec: output throughput and server memory against output size")
        ax.grid(alpha=0.3)
        made.append(_save(fig, out / "perf-exec-output.png"))
    if "upload" in scale:
        rows = scale["upload"]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        sizes = [r["bytes"] / MiB for r in rows]
        ax.plot(sizes, [r["seconds"] for r in rows], "o-", label="seconds")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("file size (MiB)")
        ax.set_ylabel("seconds, end to end (hash, fsync, rename)")
        ax.set_title("upload: time against file size (a line of slope 1 is linear)")
        ax.grid(alpha=0.3)
        made.append(_save(fig, out / "perf-upload-size.png"))
    return made


def plotHarness(runs: list[dict[str, Any]], out: Path) -> list[Path]:
    """One bar chart per scenario figure: the median over runs of each target's value."""
    made = []
    for scenario in ("chat", "conn", "exec", "upload"):
        present = [r["scenarios"][scenario] for r in runs if scenario in r.get("scenarios", {})]
        if not present:
            continue
        figures = present[0]["figures"]
        for figure in figures:
            key = figure["key"]
            values: dict[str, list[float]] = {}
            for scen in present:
                for name, target in scen["targets"].items():
                    if key in target["values"]:
                        values.setdefault(name, []).append(target["values"][key])
            if not values:
                continue
            names = list(values)
            medians = [statistics.median(values[n]) for n in names]
            fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(names) + 1.2))
            colors = ["tab:green" if n == "netproto" else "tab:gray" for n in names]
            ax.barh(names, medians, color=colors)
            ax.invert_yaxis()
            better = "higher is better" if figure["better"] == "up" else "lower is better"
            ax.set_title(
                f"{scenario}: {figure['label']} ({better}; median of {len(present)})", fontsize=9
            )
            for i, v in enumerate(medians):
                ax.text(v, i, f" {v:,.1f}", va="center", fontsize=8)
            ax.margins(x=0.25)
            made.append(_save(fig, out / f"perf-harness-{scenario}-{key}.png"))
    return made


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=Path, default=Path("bench/results/scale.json"))
    parser.add_argument("--harness", type=Path, nargs="*", default=[])
    parser.add_argument("--out", type=Path, default=Path("docs/_static"))
    args = parser.parse_args()
    made: list[Path] = []
    if args.scale.exists():
        made += plotScale(json.loads(args.scale.read_text()), args.out)
    runs = [json.loads(p.read_text()) for p in args.harness]
    if runs:
        made += plotHarness(runs, args.out)
    for path in made:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
