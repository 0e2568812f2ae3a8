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


def plotScale(scale: dict[str, dict[str, list[dict[str, float]]]], out: Path) -> list[Path]:
    """Throughput (and memory) against the size of the work, one line per server."""
    made = []
    if "chat" in scale:
        fig, ax = plt.subplots(figsize=(6.5, 3.8))
        for name, rows in scale["chat"].items():
            ax.plot(
                [r["receivers"] for r in rows],
                [r["deliveries_s"] / 1e6 for r in rows],
                "o-",
                label=name,
                linewidth=2.5 if name == "netproto" else 1,
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("receivers in the room (plus 100 senders)")
        ax.set_ylabel("deliveries/s (millions)")
        ax.set_title("chat fan-out against room size")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        made.append(_save(fig, out / "perf-chat-fanout.png"))
    if "exec" in scale:
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
        for name, rows in scale["exec"].items():
            sizes = [r["bytes"] / MiB for r in rows]
            width = 2.5 if name == "netproto" else 1
            ax.plot(sizes, [r["mb_s"] for r in rows], "o-", label=name, linewidth=width)
            ax2.plot(sizes, [r["peak_rss_mib"] for r in rows], "s-", label=name, linewidth=width)
        for a in (ax, ax2):
            a.set_xscale("log")
            a.set_xlabel("command output (MiB)")
            a.grid(alpha=0.3)
        ax.set_ylabel("MB/s")
        ax.set_title("exec: output throughput")
        ax2.set_ylabel("server peak RSS (MiB)")
        ax2.set_ylim(bottom=0)
        ax2.set_title("exec: server memory while streaming")
        ax.legend(fontsize=8)
        made.append(_save(fig, out / "perf-exec-output.png"))
    if "upload" in scale:
        fig, ax = plt.subplots(figsize=(6.5, 3.8))
        for name, rows in scale["upload"].items():
            sizes = [r["bytes"] / MiB for r in rows]
            ax.plot(sizes, [r["seconds"] for r in rows], "o-", label=f"{name}: seconds")
            ax.plot(sizes, [s / 1000 for s in sizes], ":", color="gray", label="1 GB/s, linear")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("file size (MiB)")
        ax.set_ylabel("seconds end to end (hash, fsync, rename)")
        ax.set_title("upload: time against file size")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
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
