"""Pages written per write: what each b-tree of a spawn costs, and what the layout
alternatives would cost (the index audit of the write lane's issue).

``python -m benches.write_cost`` prints two tables:

1. consensus-db itself: WAL frames (pages) appended per write, one writer thread and
   8 writer threads (the lane's group commit shares a leaf page among a group's rows).
2. ``agent_executions`` variants on the stdlib ``sqlite3`` (same SQL, WAL, autocheckpoint
   off): the current table (a rowid table, the ``agent_id`` autoindex, the legacy
   ``spec`` and ``run`` indexes, this store's ``spawned_at`` index), without the
   ``spawned_at`` index, and ``WITHOUT ROWID`` keyed on ``agent_id``; pages per spawn and
   per completion (2 KB responses), point reads/s, and the retention ``DELETE`` with
   nothing old to delete (what every maintenance cycle runs while holding the lane).
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

import consensus_db

PAGE = 4096
FRAME = 24 + PAGE
RESPONSE = "x" * 2000
SEED = 20_000


def wal_frames(path: Path) -> int:
    wal = Path(f"{path}-wal")
    return max(0, (wal.stat().st_size - 32) // FRAME) if wal.exists() else 0


def spawn(db, t: int, i: int) -> None:
    db.record_agent_spawn(f"new-{t}-{i}", f"S{i % 50}", "plan", "quality_gate", "claude", f"r{i % 50}")


def complete(db, t: int, i: int) -> None:
    db.record_agent_completion(f"seed-{(t * 997 + i * 37) % 2000:05d}", RESPONSE)


def artifact(db, t: int, i: int) -> None:
    db.store_artifact(f"S{i % 50}", "plan", "gemini", '{"ok": true}', run_id=f"r{t}-{i % 50}")


def store_pages(op, threads: int, per_thread: int) -> tuple:
    """WAL frames appended per write (and the lane's mean group size), with the autocheckpoint off (one pooled
    connection, so the pragma holds for every write): the WAL only grows."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cost.db"
        with consensus_db.connect(path) as db:
            db.store_artifacts([{"spec_id": f"S{i % 50}", "stage": "plan", "agent_name": "gemini",
                                 "content_json": "{}", "run_id": f"seed-{i % 50}"} for i in range(2000)])
            for i in range(2000):
                db.record_agent_spawn(f"seed-{i:05d}", f"S{i % 50}", "plan", "quality_gate", "claude", f"r{i % 50}")
        with consensus_db.connect(path, pool_size=1) as db:
            db.query("PRAGMA wal_autocheckpoint = 0")
            op(db, 99, 0)  # the first write after opening restarts the WAL
            before = wal_frames(path)
            start = threading.Barrier(threads)

            def write(t: int) -> None:
                start.wait()
                for i in range(1, per_thread + 1):
                    op(db, t, i)

            workers = [threading.Thread(target=write, args=(t,)) for t in range(threads)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            lane = db.lane_stats()
            return (wal_frames(path) - before) / (threads * per_thread), lane["members"] / max(1, lane["groups"])


ROUTING = """CREATE TABLE agent_executions (agent_id TEXT PRIMARY KEY, spec_id TEXT NOT NULL, stage TEXT NOT NULL,
 phase_type TEXT NOT NULL, agent_name TEXT NOT NULL, run_id TEXT, spawned_at TEXT NOT NULL, completed_at TEXT,
 response_text TEXT, extraction_error TEXT){without_rowid};
CREATE INDEX idx_agent_executions_spec ON agent_executions(spec_id, stage);
CREATE INDEX idx_agent_executions_run ON agent_executions(run_id);"""
SPAWNED = "CREATE INDEX idx_agent_executions_spawned ON agent_executions(spawned_at);"
UPSERT = """INSERT INTO agent_executions (agent_id, spec_id, stage, phase_type, agent_name, run_id, spawned_at)
 VALUES (?, ?, 'plan', 'quality_gate', 'claude', ?, strftime('%Y-%m-%d %H:%M:%S', 'now'))
 ON CONFLICT(agent_id) DO UPDATE SET spawned_at = excluded.spawned_at, completed_at = NULL, response_text = NULL"""
COMPLETE = "UPDATE agent_executions SET completed_at = strftime('%Y-%m-%d %H:%M:%S', 'now'), response_text = ? " \
           "WHERE agent_id = ?"
RETENTION = "DELETE FROM agent_executions WHERE spawned_at < strftime('%Y-%m-%d %H:%M:%S', 'now', '-30 days')"


def agent_id(prefix: str, i: int) -> str:
    return f"{prefix}-{(i * 2654435761) % 10**9:09d}"  # scattered, like real agent ids


def variant(without_rowid: bool, spawned_index: bool, group: int, writes: int = 400) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "variant.db")
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.executescript(ROUTING.format(without_rowid=" WITHOUT ROWID" if without_rowid else "")
                           + (SPAWNED if spawned_index else ""))
        conn.execute("BEGIN")
        for i in range(SEED):
            conn.execute(UPSERT, (agent_id("agent", i), f"S{i % 200}", f"r{i % 200}"))
            conn.execute(COMPLETE, (RESPONSE, agent_id("agent", i)))
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        out: dict = {}
        for name, sql, args in (("pages/spawn", UPSERT, lambda i: (agent_id("new", i), f"S{i % 200}", f"r{i % 200}")),
                                ("pages/completion", COMPLETE, lambda i: (RESPONSE, agent_id("new", i)))):
            before = os.path.getsize(f"{path}-wal")
            for k in range(writes // group):
                conn.execute("BEGIN IMMEDIATE")
                for i in range(k * group, (k + 1) * group):
                    conn.execute(sql, args(i))
                conn.execute("COMMIT")
            out[name] = (os.path.getsize(f"{path}-wal") - max(before, 32)) / FRAME / writes
        ids = [agent_id("agent", i) for i in range(0, SEED, 3)]
        start = time.perf_counter()
        for a in ids:
            conn.execute("SELECT phase_type, stage FROM agent_executions WHERE agent_id = ?", (a,)).fetchone()
        out["point reads/s"] = len(ids) / (time.perf_counter() - start)
        start = time.perf_counter()
        conn.execute(RETENTION)
        out["retention ms"] = (time.perf_counter() - start) * 1000
        conn.close()
        return out


def main() -> None:
    print("consensus-db: WAL pages appended per write")
    print(f"  {'write':32} {'1 thread':>9} {'8 threads':>10} {'mean group at 8':>16}")
    for name, op in (("record_agent_spawn", spawn), ("record_agent_completion (2 KB)", complete),
                     ("store_artifact", artifact)):
        one, _ = store_pages(op, 1, 400)
        eight, group = store_pages(op, 8, 100)
        print(f"  {name:32} {one:9.2f} {eight:10.2f} {group:16.1f}")
    print(f"\nagent_executions layouts ({SEED:,} completed executions, 2 KB responses; stdlib sqlite3)")
    print(f"  {'layout':44} {'group':>5} {'pages/spawn':>12} {'pages/completion':>17} {'point reads/s':>14}"
          f" {'retention ms':>13}")
    for group in (1, 8):
        for without_rowid, spawned in ((False, True), (False, False), (True, True), (True, False)):
            name = ("WITHOUT ROWID" if without_rowid else "rowid table") + (
                " + spawned_at index" if spawned else ", no spawned_at index")
            v = variant(without_rowid, spawned, group)
            print(f"  {name:44} {group:5} {v['pages/spawn']:12.2f} {v['pages/completion']:17.2f}"
                  f" {v['point reads/s']:14,.0f} {v['retention ms']:13.2f}")


if __name__ == "__main__":
    main()
