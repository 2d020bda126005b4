"""The benchmark harness runs (tiny sizes): a smoke run, not a timing test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_benchmark_writes_a_report(tmp_path):
    done = subprocess.run([sys.executable, "-m", "benches", "--quick", "--no-chart", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "results.json").read_text())
    assert set(report["ops_per_s"]) == {"consensus-db", "pure-python", "legacy"}
    assert all(v > 0 for per in report["ops_per_s"].values() for v in per.values())
    assert "get_agent_spawn_info" in report["ratios"] and report["checks"]
    assert "targets" in done.stdout
    table = (tmp_path / "results.md").read_text()
    assert "| get_agent_spawn_info |" in table and "| never slower than the pure-python baseline |" in table


def test_quick_writers_benchmark_writes_a_report(tmp_path):
    done = subprocess.run([sys.executable, "-m", "benches.writers", "--quick", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "writers.json").read_text())
    assert {"consensus-db", "pure-python"} <= set(report["ops_per_s"])
    rows = report["ops_per_s"]["consensus-db"]
    assert {"store_artifact, 8 threads", "record_agent_spawn, 16 threads", "store_artifact, 100 asyncio tasks",
            "store_artifact, 4 processes", "store_artifact, 8 threads beside 2 readers"} <= set(rows)
    assert all(cell["median"] > 0 for per in report["ops_per_s"].values() for cell in per.values())
    assert report["checks"] and all({"check", "value", "ok"} <= set(c) for c in report["checks"])
    assert sum(report["group_sizes_8_threads"].values()) > 0
    table = (tmp_path / "writers.md").read_text()
    assert "| store_artifact, 8 threads vs pure-python >= 3.0x |" in table and "| group size |" in table


def test_quick_processes_benchmark_writes_a_report(tmp_path):
    done = subprocess.run([sys.executable, "-m", "benches.processes", "--quick", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "processes.json").read_text())
    assert {"consensus-db", "pure-python"} <= set(report["impls"])
    rows = report["table"]
    assert {"store_artifact, 2 processes × 4 threads", "record_agent_spawn, 2 processes × 1 thread"} <= set(rows)
    for per in rows.values():
        for cell in per.values():
            assert cell["writes_per_s"] > 0 and cell["p99_ms"] > 0
            assert 0 < cell["slowest_over_mean"] <= 1 <= cell["fastest_over_mean"]
    assert report["checks"]
    assert "| store_artifact, 2 processes × 4 threads | consensus-db |" in (tmp_path / "processes.md").read_text()


def test_quick_wait_benchmark_writes_a_report(tmp_path):
    done = subprocess.run([sys.executable, "-m", "benches.wait", "--quick", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "wait.json").read_text())
    sqlite = report["backends"]["SQLite"]
    assert sqlite["in-process"]["p99_ms"] >= 0 and sqlite["cross-process"]["p50_ms"] > 0
    assert sqlite["idle_async"]["threads_added"] >= 1  # the watcher
    assert "| SQLite | cross-process |" in (tmp_path / "wait.md").read_text()
