"""`python -m benches --quick` never writes over the committed results; the chart shows
ratios against the pure-Python baseline, labelled with the run's mode."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "benches" / "results"


def digests() -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(COMMITTED.iterdir()) if p.is_file()}


def test_quick_goes_to_a_temporary_directory_and_refuses_the_committed_one():
    before = digests()
    refused = subprocess.run([sys.executable, "-m", "benches", "--quick", "--out", str(COMMITTED)],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "never writes over the committed results" in refused.stderr
    done = subprocess.run([sys.executable, "-m", "benches", "--quick", "--only", "harness", "--no-chart"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = Path(re.search(r"--quick: results go to (\S+)", done.stdout).group(1))
    assert out.resolve() != COMMITTED.resolve()
    report = json.loads((out / "results.json").read_text())
    assert report["mode"] == "quick" and report["ratios"]["get_agent_spawn_info"]["vs_pure_python"] > 0
    assert digests() == before


def test_chart_is_ratios_with_the_baseline_line_targets_and_labels(tmp_path):
    pytest.importorskip("matplotlib", reason="the chart needs the `bench` extra")
    from benches.harness import TARGETS, draw

    names = list(TARGETS) + ["open"]
    report = {
        "machine": {"date": "2026-11-28 04:00 UTC", "cpus": 2, "platform": "Linux-test"},
        "mode": "quick",
        "ratios": {n: {"vs_pure_python": 2.0, "vs_legacy": 4.0} for n in names},
    }
    path = draw(report, tmp_path / "chart.png")
    assert path is not None and path.stat().st_size > 10_000
