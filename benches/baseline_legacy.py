"""Baseline 2: the predecessor's design — one stdlib connection behind a lock, default
pragmas (rollback journal, no auto-vacuum), the legacy schema, commit after each write."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any, Iterable, Mapping

LEGACY_SQL = (Path(__file__).resolve().parent.parent / "src" / "sqlite" / "sql" / "legacy_v0.sql").read_text()
NOW = "strftime('%Y-%m-%d %H:%M:%S', 'now')"


def _json(value: Any) -> str:
    if isinstance(value, str):
        json.loads(value)
        return value
    return json.dumps(value)


class LegacyStore:
    def __init__(self, path: str) -> None:
        self._conn = sqlite3.connect(str(path), check_same_thread=False)
        self._lock = threading.Lock()
        if not self._conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'agent_executions'").fetchone():
            self._conn.executescript(LEGACY_SQL)

    def close(self) -> None:
        self._conn.close()

    def _write(self, sql: str, params: tuple) -> sqlite3.Cursor:
        with self._lock:
            cur = self._conn.execute(sql, params)
            self._conn.commit()
            return cur

    def _read(self, sql: str, params: tuple) -> list:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def record_agent_spawn(self, agent_id, spec_id, stage, phase_type, agent_name, run_id=None) -> None:
        self._write("INSERT OR REPLACE INTO agent_executions (agent_id, spec_id, stage, phase_type, agent_name,"
                    f" run_id, spawned_at) VALUES (?, ?, ?, ?, ?, ?, {NOW})",
                    (agent_id, spec_id, stage, phase_type, agent_name, run_id))

    def get_agent_spawn_info(self, agent_id):
        rows = self._read("SELECT phase_type, stage FROM agent_executions WHERE agent_id = ?", (agent_id,))
        return rows[0] if rows else None

    def get_agent_name(self, agent_id):
        rows = self._read("SELECT agent_name FROM agent_executions WHERE agent_id = ?", (agent_id,))
        return rows[0][0] if rows else None

    def record_agent_completion(self, agent_id, response_text) -> bool:
        return self._write(f"UPDATE agent_executions SET completed_at = {NOW}, response_text = ? WHERE agent_id = ?",
                           (response_text, agent_id)).rowcount > 0

    def store_artifact(self, spec_id, stage, agent_name, content_json, *, response_text=None, run_id=None,
                       model_version=None) -> int:
        return self._write("INSERT INTO consensus_artifacts (spec_id, stage, agent_name, content_json, response_text,"
                           " run_id) VALUES (?, ?, ?, ?, ?, ?)",
                           (spec_id, stage, agent_name, _json(content_json), response_text, run_id)).lastrowid

    def store_artifacts(self, artifacts: Iterable[Mapping[str, Any]]) -> list:
        with self._lock:
            ids = [self._conn.execute(
                "INSERT INTO consensus_artifacts (spec_id, stage, agent_name, content_json, response_text, run_id)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (a["spec_id"], a["stage"], a["agent_name"], _json(a["content_json"]), a.get("response_text"),
                 a.get("run_id"))).lastrowid for a in artifacts]
            self._conn.commit()
            return ids

    def query_artifacts(self, spec_id, stage) -> list:
        return self._read("SELECT id, spec_id, stage, agent_name, content_json, response_text, run_id, created_at"
                          " FROM consensus_artifacts WHERE spec_id = ? AND stage = ? ORDER BY created_at, id",
                          (spec_id, stage))

    def store_synthesis(self, spec_id, stage, output_markdown, *, output_path=None, status="success",
                        artifacts_count=None, agreements=None, conflicts=None, degraded=False, run_id=None) -> int:
        return self._write("INSERT INTO consensus_synthesis (spec_id, stage, output_markdown, output_path, status,"
                           " artifacts_count, agreements, conflicts, degraded, run_id) VALUES (?,?,?,?,?,?,?,?,?,?)",
                           (spec_id, stage, output_markdown, output_path, status, artifacts_count, agreements,
                            conflicts, int(degraded), run_id)).lastrowid

    def query_latest_synthesis(self, spec_id, stage):
        rows = self._read("SELECT * FROM consensus_synthesis WHERE spec_id = ? AND stage = ?"
                          " ORDER BY created_at DESC, id DESC LIMIT 1", (spec_id, stage))
        return rows[0] if rows else None
