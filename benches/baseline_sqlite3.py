"""Baseline 1: the same API in pure Python on the stdlib ``sqlite3``, written the way a
good Python engineer would: thread-local connections, the same pragmas, the same v1
schema and run semantics, ``BEGIN IMMEDIATE`` for writes, sqlite3's statement cache."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple, Optional

SQL_DIR = Path(__file__).resolve().parent.parent / "src" / "sqlite" / "sql"
# The store's current layout: the routing table, the predecessor's seed tables, this store's columns.
V1_SQL = "".join((SQL_DIR / f).read_text() for f in ("routing_table.sql", "branch_index.sql", "seed_tables.sql", "store_columns.sql"))
PRAGMAS = ("synchronous=NORMAL", "foreign_keys=ON", "cache_size=-32000", "temp_store=MEMORY",
           "mmap_size=0", "busy_timeout=5000")
NOW = "strftime('%Y-%m-%d %H:%M:%S', 'now')"


class Artifact(NamedTuple):
    id: int
    spec_id: str
    stage: str
    agent_name: str
    content_json: str
    response_text: Optional[str]
    run_id: Optional[str]
    created_at: str
    model_version: Optional[str]
    source: str


class Synthesis(NamedTuple):
    id: int
    spec_id: str
    stage: str
    output_markdown: str
    output_path: Optional[str]
    status: str
    artifacts_count: Optional[int]
    agreements: Optional[str]
    conflicts: Optional[str]
    degraded: bool
    run_id: Optional[str]
    created_at: str
    source: str


@lru_cache(maxsize=4096)
def _utc_seconds(seconds: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))


def _utc(ms: int) -> str:
    return _utc_seconds(ms // 1000)


def _json(value: Any) -> str:
    if isinstance(value, str):
        json.loads(value)
        return value
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


class PurePythonStore:
    def __init__(self, path: str) -> None:
        self.path = str(path)
        self._local = threading.local()
        self._all: list = []
        self._lock = threading.Lock()
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        conn.execute("PRAGMA journal_mode=WAL")
        if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
            conn.executescript(V1_SQL + "PRAGMA user_version = 2;")
        conn.close()

    @property
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, cached_statements=256)
            for pragma in PRAGMAS:
                conn.execute(f"PRAGMA {pragma}")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def _write(self, fn, *args):
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn, *args)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()

    # executions
    def record_agent_spawn(self, agent_id, spec_id, stage, phase_type, agent_name, run_id=None) -> None:
        self._write(lambda c: c.execute(
            f"INSERT INTO agent_executions (agent_id, spec_id, stage, phase_type, agent_name, run_id, spawned_at)"
            f" VALUES (?, ?, ?, ?, ?, ?, {NOW}) ON CONFLICT(agent_id) DO UPDATE SET spec_id = excluded.spec_id,"
            " stage = excluded.stage, phase_type = excluded.phase_type, agent_name = excluded.agent_name,"
            " run_id = excluded.run_id, spawned_at = excluded.spawned_at, completed_at = NULL,"
            " response_text = NULL, extraction_error = NULL",
            (agent_id, spec_id, stage, phase_type, agent_name, run_id)))

    def get_agent_spawn_info(self, agent_id):
        return self._conn.execute("SELECT phase_type, stage FROM agent_executions WHERE agent_id = ?",
                                  (agent_id,)).fetchone()

    def get_agent_name(self, agent_id):
        row = self._conn.execute("SELECT agent_name FROM agent_executions WHERE agent_id = ?", (agent_id,)).fetchone()
        return row[0] if row else None

    def record_agent_completion(self, agent_id, response_text) -> bool:
        return self._write(lambda c: c.execute(
            f"UPDATE agent_executions SET completed_at = {NOW}, response_text = ? WHERE agent_id = ?",
            (response_text, agent_id)).rowcount > 0)

    def cleanup_old_executions(self, days: int) -> int:
        return self._write(lambda c: c.execute(
            "DELETE FROM agent_executions WHERE spawned_at < strftime('%Y-%m-%d %H:%M:%S', 'now', ?)",
            (f"-{days} days",)).rowcount)

    # artifacts
    @staticmethod
    def _open_run(c, spec_id, stage, run_id, now) -> int:
        row = c.execute("SELECT id FROM consensus_runs WHERE spec_id = ? AND stage = ? AND orchestrator_run_id IS ?"
                        " AND synthesis_json IS NULL ORDER BY id DESC LIMIT 1", (spec_id, stage, run_id)).fetchone()
        if row:
            return row[0]
        while True:  # UNIQUE(spec_id, stage, run_timestamp): the next free millisecond
            cur = c.execute("INSERT INTO consensus_runs (spec_id, stage, orchestrator_run_id, run_timestamp, consensus_ok,"
                            " degraded) VALUES (?, ?, ?, ?, 0, 0) ON CONFLICT (spec_id, stage, run_timestamp) DO NOTHING",
                            (spec_id, stage, run_id, now))
            if cur.rowcount == 1:
                return cur.lastrowid
            now += 1

    def _insert(self, c, a: Mapping[str, Any], now: int, runs: dict) -> int:
        key = (a["spec_id"], a["stage"], a.get("run_id"))
        run = runs.get(key)
        if run is None:
            run = runs[key] = self._open_run(c, *key, now)
        return c.execute(
            "INSERT INTO agent_outputs (run_id, agent_name, model_version, content, response_text, output_timestamp)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (run, a["agent_name"], a.get("model_version"), _json(a["content_json"]), a.get("response_text"), now),
        ).lastrowid

    def store_artifact(self, spec_id, stage, agent_name, content_json, *, response_text=None, run_id=None,
                       model_version=None) -> int:
        item = {"spec_id": spec_id, "stage": stage, "agent_name": agent_name, "content_json": _json(content_json),
                "response_text": response_text, "run_id": run_id, "model_version": model_version}
        return self._write(lambda c: self._insert(c, item, int(time.time() * 1000), {}))

    def store_artifacts(self, artifacts: Iterable[Mapping[str, Any]]) -> list:
        items = [dict(a, content_json=_json(a["content_json"])) for a in artifacts]
        now = int(time.time() * 1000)
        return self._write(lambda c: [self._insert(c, a, now, runs) for runs in [{}] for a in items])

    def query_artifacts(self, spec_id, stage) -> list:
        rows = self._conn.execute(
            "SELECT o.id, o.agent_name, o.content, o.response_text, r.orchestrator_run_id, o.output_timestamp,"
            " o.model_version FROM consensus_runs r JOIN agent_outputs o ON o.run_id = r.id"
            " WHERE r.spec_id = ? AND r.stage = ? ORDER BY o.output_timestamp, o.id", (spec_id, stage)).fetchall()
        return [Artifact(i, spec_id, stage, name, content, resp, run, _utc(ms), model, "v1")
                for i, name, content, resp, run, ms, model in rows]

    def delete_spec_artifacts(self, spec_id) -> int:
        def delete(c):
            n = c.execute("DELETE FROM agent_outputs WHERE run_id IN (SELECT id FROM consensus_runs WHERE spec_id = ?)",
                          (spec_id,)).rowcount
            c.execute("DELETE FROM consensus_runs WHERE spec_id = ? AND synthesis_json IS NULL AND NOT EXISTS"
                      " (SELECT 1 FROM agent_outputs o WHERE o.run_id = consensus_runs.id)", (spec_id,))
            return n
        return self._write(delete)

    def store_synthesis(self, spec_id, stage, output_markdown, *, output_path=None, status="success",
                        artifacts_count=None, agreements=None, conflicts=None, degraded=False, run_id=None) -> int:
        now = int(time.time() * 1000)

        def store(c):
            run = self._open_run(c, spec_id, stage, run_id, now)
            c.execute("UPDATE consensus_runs SET synthesis_json = json_object('output_markdown', ?, 'output_path', ?,"
                      " 'status', ?, 'artifacts_count', ?, 'agreements', ?, 'conflicts', ?),"
                      " consensus_ok = (? = 'success'), degraded = ?, synthesized_at = ? WHERE id = ?",
                      (output_markdown, output_path, status, artifacts_count, agreements, conflicts, status,
                       int(degraded), now, run))
            return run
        return self._write(store)

    def query_latest_synthesis(self, spec_id, stage):
        row = self._conn.execute(
            "SELECT id, synthesis_json, degraded, orchestrator_run_id, COALESCE(synthesized_at, run_timestamp) AS at"
            " FROM consensus_runs WHERE spec_id = ? AND stage = ? AND synthesis_json IS NOT NULL"
            " ORDER BY at DESC, id DESC LIMIT 1", (spec_id, stage)).fetchone()
        if row is None:
            return None
        i, synthesis, degraded, run, ms = row
        s = json.loads(synthesis)
        md, path, status, count = s["output_markdown"], s["output_path"], s["status"], s["artifacts_count"]
        agree, conflict = s["agreements"], s["conflicts"]
        return Synthesis(i, spec_id, stage, md, path, status, count, agree, conflict, bool(degraded), run, _utc(ms), "v1")
