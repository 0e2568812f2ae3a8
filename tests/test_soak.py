"""bench/soak.py runs: a few seconds of it against a real server, its results read back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHECKOUT = Path(__file__).resolve().parents[1]


def test_aShortSoakServesHonestTrafficThroughTheAttacks(tmp_path: Path) -> None:
    """Five seconds of the soak: honest chat, exec, upload and probes all succeed,
    no attack gets a file accepted or written outside the upload directory, the
    server logs no error, and the last sample (after the attacks) is back to the
    first one's connections and delayed calls."""
    argv = [sys.executable, "-m", "bench.soak", "--seconds", "5", "--sample", "1", "--seed", "3"]
    done = subprocess.run(
        [*argv, "--out", str(tmp_path), "--no-plot"],
        cwd=CHECKOUT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "soak.json").read_text())
    summary, samples = result["summary"], result["samples"]
    assert (tmp_path / "soak.txt").read_text().startswith("soak: 5 s")
    honest = summary["honest"]
    for name in ("exec ok", "upload ok", "probe ok", "chat heard"):
        assert honest.get(name, 0) > 0, honest
    assert not [k for k in honest if k.endswith("errors")], summary["honest_errors"]
    assert honest["chat heard"] == honest["chat sent"]
    assert sum(summary["attacks"].values()) > 5
    assert not [k for k in summary["attacks"] if "ACCEPTED" in k]
    assert summary["files_outside_upload_dir"] == []
    first, last = samples[0], samples[-1]
    assert (first.get("label"), last.get("label")) == ("start", "after")
    assert last["connections"] == 0
    assert last["delayed_calls"] <= first["delayed_calls"]
    assert last["log_errors"] == 0
