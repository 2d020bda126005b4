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
import subprocess
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


# ---- one suite, both backends, beyond the public API ------------------------------------
# The retry, concurrency and crash suites need more than a target: a short wait on
# another's lock that fails as BusyError, a lock held by another process, and a check
# that the store's data is intact. `backend` gives each in its backend's own terms.

HOLD_SQLITE_LOCK = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""

# EXCLUSIVE mode: the store's writers wait, its readers do not (as beside SQLite's WAL).
HOLD_PG_LOCK = """
import sys, time, consensus_db
with consensus_db.connect(sys.argv[1]) as db, db.transaction() as tx:
    tables = [t for (t,) in tx.query("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")]
    tx.execute(f"LOCK TABLE {', '.join(tables)} IN EXCLUSIVE MODE")
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""

# amcheck's checks of the store's schema: each table's heap (a row per problem found)
# and each B-tree index against its table (a problem found raises, naming it).
PG_HEAP_CHECK = """
SELECT c.relname || ': ' || v.msg FROM pg_class c, public.verify_heapam(c.oid) v
 WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'r'
"""
PG_INDEX_CHECK = """
SELECT count(public.bt_index_check(c.oid, true)) FROM pg_class c JOIN pg_am am ON am.oid = c.relam
 WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'i' AND am.amname = 'btree'
"""


class Backend:
    """Where a suite's store lives (``target``: a file or a fresh schema's URL) and what
    the suite needs of it in that backend's terms."""

    def __init__(self, name: str, target):
        self.name = name
        self.target = target

    def busy(self, wait_ms: int) -> tuple:
        """(target, connect kwargs) of a store that waits ``wait_ms`` for another's lock,
        then fails with BusyError: SQLite's busy_timeout, PostgreSQL's lock_timeout."""
        if self.name == "sqlite":
            return self.target, {"pragmas": {"busy_timeout": wait_ms}}
        return f"{self.target}%20-clock_timeout%3D{wait_ms}", {}

    def connect(self, *, busy_ms: Optional[int] = None, **kwargs) -> consensus_db.Store:
        if busy_ms is None:
            return consensus_db.connect(self.target, **kwargs)
        target, busy = self.busy(busy_ms)
        return consensus_db.connect(target, **busy, **kwargs)

    def hold_lock(self, seconds: float) -> "subprocess.Popen[str]":
        """Another process holding a lock every write of the store waits for, ``seconds``
        long from when this returns; ``wait()`` on it."""
        code = HOLD_SQLITE_LOCK if self.name == "sqlite" else HOLD_PG_LOCK
        proc = subprocess.Popen(python_child(code) + [str(self.target), str(seconds)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        return proc

    def integrity_check(self, db: consensus_db.Store) -> list:
        """``["ok"]`` or the problems found: SQLite's integrity_check, amcheck's on PostgreSQL."""
        if self.name == "sqlite":
            return db.integrity_check()
        problems = [problem for (problem,) in db.query(PG_HEAP_CHECK)]
        try:
            [(checked,)] = db.query(PG_INDEX_CHECK)
        except consensus_db.Error as e:
            problems.append(str(e))
        else:
            assert checked > 0, "the schema has no index to check"
        return problems or ["ok"]


@pytest.fixture(scope="session")
def pg_amcheck(pg_cluster: Cluster) -> None:
    pg_cluster.psql("CREATE EXTENSION IF NOT EXISTS amcheck SCHEMA public")


@pytest.fixture(params=BACKENDS)
def backend(request, tmp_path: Path) -> Backend:
    """The backend a suite runs on, once per backend (see `Backend`)."""
    if request.param == "sqlite":
        return Backend("sqlite", tmp_path / "consensus.db")
    request.getfixturevalue("pg_amcheck")
    return Backend("postgresql", request.getfixturevalue("pg_url"))
