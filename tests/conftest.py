"""Shared fixtures: real SQLite files in a temporary directory, and legacy databases
built exactly as the field has them (the predecessor's DDL, rollback journal, no auto-vacuum).

The stdlib ``sqlite3`` is used here only to play "an old binary" or "an independent
reader". It never has a file open while consensus-db has the same file open in this
process (two SQLite copies in one process must not share a file: POSIX locks).
"""

from __future__ import annotations

import itertools as _itertools
import os
import sqlite3
import sys
from pathlib import Path
from typing import Iterator, Optional

import pytest

import consensus_db
from consensus_db import _core
from pg_cluster import Cluster, why_unavailable, workdir

LEGACY_SCHEMA_SQL = _core.LEGACY_SCHEMA_SQL
TESTS = Path(__file__).parent


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "consensus.db"


@pytest.fixture
def db(db_path: Path) -> Iterator[consensus_db.Store]:
    store = consensus_db.connect(db_path)
    yield store
    store.close()


def read_pragmas(path: Path, *names: str) -> dict:
    """Reads pragmas through an independent stdlib connection (opened and closed here)."""
    conn = sqlite3.connect(path)
    try:
        return {n: conn.execute(f"PRAGMA {n}").fetchone()[0] for n in names}
    finally:
        conn.close()


def stdlib_rows(path: Path, sql: str, params: tuple = ()) -> list:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def make_legacy_db(
    path: Path,
    *,
    executions: int = 3,
    artifact_groups: Optional[list] = None,
    syntheses: Optional[list] = None,
    bloat_mb: int = 0,
    drop_columns: bool = False,
) -> dict:
    """Builds a legacy (version 0) database with the predecessor's DDL and returns what it holds.

    ``artifact_groups``: list of (spec_id, stage, run_id, n_artifacts).
    ``syntheses``: list of (spec_id, stage, run_id, status, degraded).
    ``bloat_mb``: writes then deletes that many MB, leaving free pages (auto_vacuum off).
    ``drop_columns``: builds the oldest shape, without run_id / extraction_error columns.
    """
    if artifact_groups is None:
        artifact_groups = [("SPEC-1", "plan", "run-a", 3), ("SPEC-1", "plan", None, 2), ("SPEC-2", "tasks", "run-b", 4)]
    if syntheses is None:
        syntheses = [("SPEC-1", "plan", "run-a", "success", 0), ("SPEC-2", "tasks", "run-b", "degraded", 1)]
    ddl = LEGACY_SCHEMA_SQL
    if drop_columns:
        ddl = (
            ddl.replace(", run_id TEXT,\n    created_at", ",\n    created_at")
            .replace("run_id TEXT,\n    spawned_at", "spawned_at")
            .replace(",\n    extraction_error TEXT)", ")")
            .replace("CREATE INDEX idx_agent_executions_run ON agent_executions(run_id);", "")
        )
    conn = sqlite3.connect(path)
    conn.executescript(ddl)
    agents = ["gemini", "claude", "code", "gpt_pro"]
    artifacts = []
    second = 0
    for spec_id, stage, run_id, n in artifact_groups:
        for i in range(n):
            second += 1
            created = f"2025-03-01 10:{second // 60:02d}:{second % 60:02d}"
            content = '{"agent": "%s", "n": %d, "quote": "it\'s \\"ok\\""}' % (agents[i % 4], i)
            if drop_columns:
                cur = conn.execute(
                    "INSERT INTO consensus_artifacts (spec_id, stage, agent_name, content_json, response_text, created_at)"
                    " VALUES (?,?,?,?,?,?)",
                    (spec_id, stage, agents[i % 4], content, f"raw {i}", created),
                )
            else:
                cur = conn.execute(
                    "INSERT INTO consensus_artifacts (spec_id, stage, agent_name, content_json, response_text, run_id, created_at)"
                    " VALUES (?,?,?,?,?,?,?)",
                    (spec_id, stage, agents[i % 4], content, f"raw {i}", run_id, created),
                )
            artifacts.append((cur.lastrowid, spec_id, stage, agents[i % 4], content, f"raw {i}", run_id, created))
    synth = []
    for spec_id, stage, run_id, status, degraded in syntheses:
        second += 1
        created = f"2025-03-01 11:{second // 60:02d}:{second % 60:02d}"
        cols = "spec_id, stage, output_markdown, output_path, status, artifacts_count, agreements, conflicts, degraded, created_at"
        vals = [spec_id, stage, f"# {spec_id} {stage}", f"/out/{spec_id}.md", status, 3, '["a"]', '["c"]', degraded, created]
        if not drop_columns:
            cols += ", run_id"
            vals.append(run_id)
        cur = conn.execute(f"INSERT INTO consensus_synthesis ({cols}) VALUES ({','.join('?' * len(vals))})", vals)
        synth.append((cur.lastrowid, spec_id, stage, run_id, status, degraded, created))
    for i in range(executions):
        if drop_columns:
            conn.execute(
                "INSERT INTO agent_executions (agent_id, spec_id, stage, phase_type, agent_name, spawned_at)"
                " VALUES (?,?,?,?,?,?)",
                (f"agent-{i}", "SPEC-1", "plan", "quality_gate", agents[i % 4], "2025-03-01 09:00:00"),
            )
        else:
            conn.execute(
                "INSERT INTO agent_executions (agent_id, spec_id, stage, phase_type, agent_name, run_id, spawned_at)"
                " VALUES (?,?,?,?,?,?,?)",
                (f"agent-{i}", "SPEC-1", "plan", "quality_gate", agents[i % 4], "run-a", "2025-03-01 09:00:00"),
            )
    if bloat_mb:
        conn.execute("CREATE TABLE bloat (b BLOB)")
        chunk = os.urandom(1 << 20)
        for _ in range(bloat_mb):
            conn.execute("INSERT INTO bloat VALUES (?)", (chunk,))
        conn.commit()
        conn.execute("DROP TABLE bloat")
    conn.commit()
    conn.close()
    return {"artifacts": artifacts, "syntheses": synth, "executions": executions}


@pytest.fixture
def legacy_db(tmp_path: Path) -> tuple:
    path = tmp_path / "legacy.db"
    return path, make_legacy_db(path)


def python_child(code: str) -> list:
    """argv for running ``code`` in a fresh interpreter with this package importable."""
    return [sys.executable, "-c", code]


# ---- both backends ----------------------------------------------------------------------
# Tests of the public API take `store_target` (a path or a postgresql:// URL, one per
# backend) or a module's own `db` built on it: one suite, run against SQLite and a real
# PostgreSQL started here. Without server binaries the PostgreSQL cases skip, saying
# why; under CI=true that is a failure (CI installs postgresql-15).

BACKENDS = ["sqlite", "postgresql"]
_schema_numbers = _itertools.count()


def _pg_unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL is part of CI and cannot run here: {reason}")
    pytest.skip(f"PostgreSQL backend not tested: {reason}")


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """One PostgreSQL 15 server for the session, on a free loopback port."""
    reason = why_unavailable()
    if reason:
        _pg_unavailable(reason)
    root = workdir()
    cluster = Cluster(root, "main").init()
    try:
        cluster.start()
    except Exception as e:  # noqa: BLE001 - reported as the skip/failure reason
        _pg_unavailable(f"the server did not start: {e}; log: {cluster.log}")
    yield cluster
    cluster.stop("immediate")
    import shutil

    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_url(pg_cluster: Cluster) -> str:
    """A URL whose search_path is a schema of its own: each test starts empty."""
    schema = f"t{next(_schema_numbers)}_{os.getpid()}"
    pg_cluster.psql(f"CREATE SCHEMA {schema}")
    return pg_cluster.url(options=f"-csearch_path%3D{schema}")


@pytest.fixture(params=BACKENDS)
def store_target(request, tmp_path: Path):
    """Where a store lives: a file for "sqlite", a fresh schema's URL for "postgresql"."""
    if request.param == "sqlite":
        return tmp_path / "consensus.db"
    return request.getfixturevalue("pg_url")


def ph(db, sql: str) -> str:
    """Raw SQL takes each backend's own placeholders: ``?`` for SQLite, ``$n`` for PostgreSQL."""
    if db.backend != "postgresql":
        return sql
    n = _itertools.count(1)
    return "".join(f"${next(n)}" if c == "?" else c for c in sql)
