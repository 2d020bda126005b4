"""Baseline 3: the same API on ``apsw``, the thin C binding a performance-minded Python
user would pick. Written as that user would: thread-local connections, the same pragmas
and schema as the stdlib baseline (``baseline_sqlite3``), ``BEGIN IMMEDIATE`` writes,
apsw's own statement cache, its native ``last_insert_rowid``/``changes``.

Only the operations the benchmarks drive are here; their SQL is the stdlib baseline's.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Iterable, Mapping

import apsw

from .baseline_sqlite3 import NOW, PRAGMAS, V1_SQL, Artifact, _json, _utc


class ApswStore:
    def __init__(self, path: str) -> None:
        self.path = str(path)
        self._local = threading.local()
        self._all: list = []
        self._lock = threading.Lock()
        conn = apsw.Connection(self.path)
        conn.set_busy_timeout(5000)  # as the stdlib's default timeout does for the other baseline
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        conn.execute("PRAGMA journal_mode=WAL")
        if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
            conn.execute(V1_SQL + "PRAGMA user_version = 2;")
        conn.close()

    @property
    def _conn(self) -> apsw.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = apsw.Connection(self.path, statementcachesize=256)
            # Like sqlite3.connect's default timeout: the pragmas below already read the
            # schema, and may meet a writer of another thread.
            conn.set_busy_timeout(5000)
            for pragma in PRAGMAS:
                conn.execute(f"PRAGMA {pragma}")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def _write(self, fn):
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn)
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

    def record_agent_completion(self, agent_id, response_text) -> bool:
        def complete(c) -> bool:
            c.execute(f"UPDATE agent_executions SET completed_at = {NOW}, response_text = ? WHERE agent_id = ?",
                      (response_text, agent_id))
            return c.changes() > 0
        return self._write(complete)

    # artifacts
    @staticmethod
    def _open_run(c, spec_id, stage, run_id, now) -> int:
        row = c.execute("SELECT id FROM consensus_runs WHERE spec_id = ? AND stage = ? AND orchestrator_run_id IS ?"
                        " AND synthesis_json IS NULL ORDER BY id DESC LIMIT 1", (spec_id, stage, run_id)).fetchone()
        if row:
            return row[0]
        while True:  # UNIQUE(spec_id, stage, run_timestamp): the next free millisecond
            c.execute("INSERT INTO consensus_runs (spec_id, stage, orchestrator_run_id, run_timestamp, consensus_ok,"
                      " degraded) VALUES (?, ?, ?, ?, 0, 0) ON CONFLICT (spec_id, stage, run_timestamp) DO NOTHING",
                      (spec_id, stage, run_id, now))
            if c.changes() == 1:
                return c.last_insert_rowid()
            now += 1

    def _insert(self, c, a: Mapping[str, Any], now: int, runs: dict) -> int:
        key = (a["spec_id"], a["stage"], a.get("run_id"))
        run = runs.get(key)
        if run is None:
            run = runs[key] = self._open_run(c, *key, now)
        c.execute(
            "INSERT INTO agent_outputs (run_id, agent_name, model_version, content, response_text, output_timestamp)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (run, a["agent_name"], a.get("model_version"), _json(a["content_json"]), a.get("response_text"), now))
        return c.last_insert_rowid()

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
