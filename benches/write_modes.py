"""What the rolling upgrade's modes cost, in one run: ``python -m benches.write_modes``.

A file at schema version 1 (legacy and new tables), opened with each mode in turn:

1. ``store_artifact`` from one thread, ``write_mode="v1"`` against ``"dual"`` (every row
   also in the legacy table, linked): writes/s and WAL pages per write, rounds
   interleaved so both modes see the same machine;
2. ``query_artifacts`` (20 rows a spec/stage) with ``read_mode`` ``"dual"``, ``"v1"`` and
   ``"legacy"``: reads/s.
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import consensus_db

from .write_cost import wal_frames

ROUNDS = 5
WRITES = 2_000
READS = 5_000
SPECS = 50


def legacy_v1_file(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(consensus_db._core.LEGACY_SCHEMA_SQL)
    conn.executemany(
        "INSERT INTO consensus_artifacts (spec_id, stage, agent_name, content_json, run_id) VALUES (?, ?, ?, ?, ?)",
        ((f"S{i % SPECS}", "plan", "gemini", json.dumps({"n": i}), f"r{i % SPECS}") for i in range(SPECS * 20)),
    )
    conn.commit()
    conn.close()
    consensus_db.connect(path).close()  # version 1: the new tables, backfilled


def write_round(path: Path, mode: str, round_: int) -> tuple[float, float]:
    # One pooled connection, so the autocheckpoint stays off for every write: the WAL only grows.
    with consensus_db.connect(path, write_mode=mode, pool_size=1) as db:
        db.query("PRAGMA wal_autocheckpoint = 0")
        db.store_artifact("W", "plan", "claude", "{}")  # the first write after opening restarts the WAL
        start, frames = time.perf_counter(), wal_frames(path)
        for i in range(WRITES):
            db.store_artifact(f"W{i % SPECS}", "plan", "claude", '{"ok": true}', run_id=f"{mode}-{round_}")
        elapsed = time.perf_counter() - start
        return WRITES / elapsed, (wal_frames(path) - frames) / WRITES


def read_rate(path: Path, mode: str) -> float:
    with consensus_db.connect(path, read_mode=mode) as db:
        start = time.perf_counter()
        for i in range(READS):
            db.query_artifacts(f"S{i % SPECS}", "plan")
        return READS / (time.perf_counter() - start)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "modes.db"
        legacy_v1_file(path)
        writes: dict[str, list[tuple[float, float]]] = {"v1": [], "dual": []}
        for r in range(ROUNDS):
            for mode in writes:
                writes[mode].append(write_round(path, mode, r))
        reads: dict[str, list[float]] = {"dual": [], "v1": [], "legacy": []}
        for _ in range(ROUNDS):
            for mode in reads:
                reads[mode].append(read_rate(path, mode))
    print(f"store_artifact, one thread ({ROUNDS} rounds of {WRITES}, median, min-max):")
    base = statistics.median(w for w, _ in writes["v1"])
    for mode, rows in writes.items():
        rates = [w for w, _ in rows]
        pages = statistics.median(p for _, p in rows)
        print(f"  write_mode={mode:<5} {statistics.median(rates):>9,.0f}/s ({min(rates):,.0f}-{max(rates):,.0f})"
              f"  x{statistics.median(rates) / base:.2f}  {pages:.2f} WAL pages/write")
    print(f"query_artifacts, 20 rows ({ROUNDS} rounds of {READS}):")
    base = statistics.median(reads["dual"])
    for mode, rates in reads.items():
        print(f"  read_mode={mode:<7} {statistics.median(rates):>9,.0f}/s ({min(rates):,.0f}-{max(rates):,.0f})"
              f"  x{statistics.median(rates) / base:.2f}")


if __name__ == "__main__":
    main()
