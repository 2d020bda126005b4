"""Per-call cost of a point SELECT: consensus-db (`tx.query`, `db.query`, the
`get_agent_spawn_info` hot path) vs stdlib `sqlite3` on the same file and pragmas.

    python benches/point_select.py [N]

The stdlib connection is opened only after the store is closed: two SQLite copies must
never have the same file open in one process.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import tempfile
import time

import consensus_db

SQL = "SELECT phase_type, stage FROM agent_executions WHERE agent_id = ?"
AGENTS = 10_000


def per_call_us(fn, ids) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for agent_id in ids:
            fn(agent_id)
        best = min(best, (time.perf_counter() - start) / len(ids) * 1e6)
    return best


def main(n: int = 100_000) -> None:
    path = os.path.join(tempfile.mkdtemp(), "point.db")
    ids = [f"agent-{(i * 7919) % AGENTS}" for i in range(n)]
    results = {}
    with consensus_db.connect(path) as db:
        with db.transaction() as tx:
            tx.executemany(
                "INSERT INTO agent_executions (agent_id, spec_id, stage, phase_type, agent_name, spawned_at)"
                " VALUES (?, 'S', 'plan', 'quality_gate', 'gemini', '2025-01-01 00:00:00')",
                [[f"agent-{i}"] for i in range(AGENTS)],
            )
        results["consensus-db get_agent_spawn_info (checkout per call)"] = per_call_us(db.get_agent_spawn_info, ids)
        results["consensus-db db.query (checkout per call)"] = per_call_us(lambda i: db.query(SQL, (i,)), ids)
        with db.transaction("deferred") as tx:
            results["consensus-db tx.query (one read transaction)"] = per_call_us(lambda i: tx.query(SQL, (i,)), ids)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    for pragma in ("synchronous=NORMAL", "cache_size=-32000", "temp_store=MEMORY", "mmap_size=0", "busy_timeout=5000"):
        conn.execute(f"PRAGMA {pragma}")
    # Closing the store checkpointed and removed the WAL; with an empty WAL every read
    # transaction also stats the file. One write puts both sides in the same WAL state.
    conn.execute("UPDATE agent_executions SET stage = stage WHERE agent_id = 'agent-0'")
    results["stdlib sqlite3 execute().fetchone()"] = per_call_us(lambda i: conn.execute(SQL, (i,)).fetchone(), ids)
    conn.execute("BEGIN")
    results["stdlib sqlite3 in one read transaction"] = per_call_us(lambda i: conn.execute(SQL, (i,)).fetchone(), ids)
    conn.execute("COMMIT")
    conn.close()
    base = results["stdlib sqlite3 execute().fetchone()"]
    print(f"{'point SELECT by agent_id (10k rows)':58} {'us/call':>8} {'vs stdlib':>10}")
    for name, us in results.items():
        print(f"{name:58} {us:8.2f} {base / us:9.2f}x")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
