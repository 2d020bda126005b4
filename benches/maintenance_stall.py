"""What a writer waits while maintenance runs beside it: one thread records spawns in a
loop while another deletes N back-dated executions (2 KB responses) with
`cleanup_old_executions`, then reclaims the space with the default `vacuum()`; with
`--legacy N`, also while a legacy file of N artifacts (2 KB each) is backfilled
(`migrate(1)`) and written back again (`migrate(0)`). Prints the job's time, the
writer's writes and its p50 / p99 / max latency, and any error.

    python -m benches.maintenance_stall [--rows 200000] [--legacy 200000]
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import consensus_db

BACKDATED = (
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
    " INSERT INTO agent_executions (agent_id, spec_id, stage, phase_type, agent_name, spawned_at, response_text)"
    " SELECT 'old-' || i, 'S', 'plan', 'regular_stage', 'gemini', '2020-01-01 00:00:00', ? FROM n"
)


def beside(db: consensus_db.Store, job: Callable[[], object], tag: str) -> dict[str, Any]:
    """Runs `job` while a writer thread records spawns; prints and returns the figures."""
    latencies: list[float] = []
    errors: list[str] = []
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            started = time.perf_counter()
            try:
                db.record_agent_spawn(f"{tag}-{i}", "S", "plan", "quality_gate", "gemini")
            except consensus_db.Error as exc:
                errors.append(type(exc).__name__)
            latencies.append(time.perf_counter() - started)
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    started = time.perf_counter()
    job()
    took = time.perf_counter() - started
    stop.set()
    thread.join()
    ms = sorted(x * 1000 for x in latencies)
    figures = {
        "job": tag,
        "took_s": took,
        "writes": len(ms),
        "p50_ms": statistics.median(ms),
        "p99_ms": ms[min(len(ms) - 1, int(len(ms) * 0.99))],
        "max_ms": ms[-1],
        "errors": sorted(set(errors)),
    }
    print(
        f"{tag:10} {took:7.2f} s   writer: {len(ms):6} writes, p50 {figures['p50_ms']:6.2f} ms, "
        f"p99 {figures['p99_ms']:7.2f} ms, max {ms[-1]:8.2f} ms, errors {figures['errors'] or 'none'}",
        flush=True,
    )
    return figures


LEGACY_ARTIFACTS = (
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
    " INSERT INTO consensus_artifacts (spec_id, stage, agent_name, content_json, run_id, created_at)"
    " SELECT 'SPEC-' || (i % 500), 'plan', 'gemini', json_object('n', i, 'pad', ?), 'run-' || (i % 3000),"
    " '2025-01-01 00:00:00' FROM n"
)


def migrations(path: Path, artifacts: int) -> None:
    """The writer beside the backfill of a legacy file and the write-back that undoes it."""
    conn = sqlite3.connect(path)  # closed before the store opens the file
    conn.executescript(consensus_db._core.LEGACY_SCHEMA_SQL)
    conn.execute(LEGACY_ARTIFACTS, [artifacts, "c" * 2000])
    conn.commit()
    conn.close()
    with consensus_db.connect(path, migrate=False) as db:
        print(f"{artifacts:,} legacy artifacts, file {path.stat().st_size / 1e6:.0f} MB")
        beside(db, lambda: db.migrate(1), "backfill")
        beside(db, lambda: db.migrate(0, force=True), "write-back")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--legacy", type=int, default=0, help="also the migrations of a legacy file of N artifacts")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.rows:
            with consensus_db.connect(Path(tmp) / "stall.db") as db:
                db.execute(BACKDATED, [args.rows, "r" * 2000])
                print(f"{args.rows:,} back-dated executions, file {db.stats()['file_size'] / 1e6:.0f} MB")
                beside(db, lambda: db.cleanup_old_executions(30), "retention")
                beside(db, db.vacuum, "vacuum")
        if args.legacy:
            migrations(Path(tmp) / "legacy.db", args.legacy)


if __name__ == "__main__":
    main()
