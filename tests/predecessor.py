"""The predecessor program, played from its own statements as files in the field show
them — not from this store's code: its legacy DDL, its own version-1 migration (the
"seed layout"), and the inserts of its three builds, with explicit column
lists as it writes them.

Run as a script in a child process (two SQLite libraries must never have one file open
in one process): ``python predecessor.py PATH COMMAND JSON-ARGS``. It prints a JSON
result; a refusal of a file newer than the build knows exits with status 3.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

LEGACY_DDL = """
CREATE TABLE consensus_artifacts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    spec_id TEXT NOT NULL, stage TEXT NOT NULL, agent_name TEXT NOT NULL,
    content_json TEXT NOT NULL, response_text TEXT, run_id TEXT,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
CREATE INDEX idx_spec_stage ON consensus_artifacts(spec_id, stage);
CREATE TABLE consensus_synthesis (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    spec_id TEXT NOT NULL, stage TEXT NOT NULL, output_markdown TEXT NOT NULL,
    output_path TEXT, status TEXT NOT NULL, artifacts_count INTEGER,
    agreements TEXT, conflicts TEXT, degraded BOOLEAN DEFAULT 0, run_id TEXT,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
CREATE INDEX idx_synthesis_spec_stage ON consensus_synthesis(spec_id, stage);
CREATE TABLE agent_executions (
    agent_id TEXT PRIMARY KEY, spec_id TEXT NOT NULL, stage TEXT NOT NULL,
    phase_type TEXT NOT NULL, agent_name TEXT NOT NULL, run_id TEXT,
    spawned_at TEXT NOT NULL, completed_at TEXT, response_text TEXT,
    extraction_error TEXT);
CREATE INDEX idx_agent_executions_spec ON agent_executions(spec_id, stage);
CREATE INDEX idx_agent_executions_run ON agent_executions(run_id);
"""

# Its version-1 migration: the two tables (IF NOT EXISTS) and the version, in one transaction.
SEED_V1 = """
BEGIN;
CREATE TABLE IF NOT EXISTS consensus_runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    spec_id TEXT NOT NULL,
    stage TEXT NOT NULL,
    run_timestamp INTEGER NOT NULL,
    consensus_ok BOOLEAN NOT NULL,
    degraded BOOLEAN DEFAULT 0,
    synthesis_json TEXT,
    UNIQUE(spec_id, stage, run_timestamp)
);
CREATE INDEX IF NOT EXISTS idx_consensus_spec_stage ON consensus_runs(spec_id, stage);
CREATE INDEX IF NOT EXISTS idx_consensus_timestamp ON consensus_runs(run_timestamp);
CREATE TABLE IF NOT EXISTS agent_outputs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER NOT NULL,
    agent_name TEXT NOT NULL,
    model_version TEXT,
    content TEXT NOT NULL,
    output_timestamp INTEGER NOT NULL,
    FOREIGN KEY (run_id) REFERENCES consensus_runs(id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS idx_agent_outputs_run ON agent_outputs(run_id);
CREATE INDEX IF NOT EXISTS idx_agent_outputs_agent ON agent_outputs(agent_name);
PRAGMA user_version = 1;
COMMIT;
"""

# Its version-2 migration: the legacy artifact and synthesis tables and their indexes go.
SEED_V2 = """
BEGIN;
DROP INDEX IF EXISTS idx_spec_stage;
DROP INDEX IF EXISTS idx_synthesis_spec_stage;
DROP TABLE IF EXISTS consensus_artifacts;
DROP TABLE IF EXISTS consensus_synthesis;
PRAGMA user_version = 2;
COMMIT;
"""

STAGES = ["spec-plan", "spec-tasks", "spec-implement", "spec-validate", "spec-audit"]


def connect(path: str, knows: int) -> sqlite3.Connection:
    """Opens like a build that knows migrations up to ``knows``: refuses newer files,
    runs its own migrations (a v2 build drops the legacy tables of a v1 file). The
    legacy build (``knows`` -1) predates versions: it checks nothing."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=10)
    if knows < 0:
        return conn
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > knows:
        print(json.dumps({"refused": version}))
        sys.exit(3)
    if version < 1 <= knows:
        conn.executescript(SEED_V1)
    if version < 2 <= knows:
        conn.executescript(SEED_V2)
    return conn


def open_branches(conn: sqlite3.Connection) -> dict:
    """What the newest builds ("resume filtering") run on every open: the branch column,
    its error ignored when the column exists, and the index. Returns what happened."""
    try:
        conn.execute("ALTER TABLE agent_executions ADD COLUMN branch_id TEXT")
        alter = "added"
    except sqlite3.OperationalError as e:
        alter = f"failed: {e}"
    before = conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'idx_agent_executions_branch'").fetchone()[0]
    conn.execute("CREATE INDEX IF NOT EXISTS idx_agent_executions_branch ON agent_executions(spec_id, stage, branch_id)")
    return {"alter": alter, "index": "existed" if before else "created"}


def now_text() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())


def new_run(conn: sqlite3.Connection, spec_id: str, stage: str, at_ms: int, synthesis: Any = None,
            degraded: int = 0) -> int:
    """One consensus_runs row, upserting on the seed layout's unique key
    (spec_id, stage, run_timestamp), then its id."""
    conn.execute(
        "INSERT INTO consensus_runs (spec_id, stage, run_timestamp, consensus_ok, degraded, synthesis_json)"
        " VALUES (?, ?, ?, 1, ?, ?) ON CONFLICT(spec_id, stage, run_timestamp) DO UPDATE SET"
        " consensus_ok = excluded.consensus_ok, degraded = excluded.degraded,"
        " synthesis_json = COALESCE(excluded.synthesis_json, consensus_runs.synthesis_json)",
        (spec_id, stage, at_ms, degraded, synthesis),
    )
    return conn.execute("SELECT id FROM consensus_runs WHERE spec_id = ? AND stage = ? AND run_timestamp = ?",
                        (spec_id, stage, at_ms)).fetchone()[0]


def new_output(conn: sqlite3.Connection, run: int, agent: str, content: str, at_ms: int) -> int:
    return conn.execute(
        "INSERT INTO agent_outputs (run_id, agent_name, model_version, content, output_timestamp)"
        " VALUES (?, ?, ?, ?, ?)", (run, agent, None, content, at_ms)).lastrowid


def synthesis_json(s: dict) -> str:
    return json.dumps({k: s.get(k) for k in
                       ("output_markdown", "output_path", "status", "artifacts_count", "agreements", "conflicts")})


def run_command(path: str, command: str, args: dict) -> Any:
    if command == "create_legacy":
        conn = sqlite3.connect(path, isolation_level=None)
        conn.executescript(LEGACY_DDL)
        return "created"
    if command == "migrate":  # what a build that knows ``knows`` does on open
        connect(path, args["knows"]).close()
        return "migrated"
    build = args.get("build", "legacy")
    knows = args.get("knows", {"legacy": -1, "dual": 1, "cutover": 2}[build])
    conn = connect(path, knows)
    opened = open_branches(conn) if args.get("branches") else None
    if command == "open":
        return opened
    if command == "spawn":  # every build: INSERT OR REPLACE on agent_id, datetime('now')
        if args.get("branches"):  # the newest builds record the branch with every spawn
            conn.execute(
                "INSERT OR REPLACE INTO agent_executions (agent_id, spec_id, stage, phase_type, agent_name, run_id,"
                " branch_id, spawned_at) VALUES (?, ?, ?, ?, ?, ?, ?, datetime('now'))",
                (args["agent_id"], args["spec_id"], args["stage"], args["phase_type"], args["agent_name"],
                 args.get("run_id"), args.get("branch_id")))
            return "spawned"
        conn.execute(
            "INSERT OR REPLACE INTO agent_executions (agent_id, spec_id, stage, phase_type, agent_name, run_id,"
            " spawned_at) VALUES (?, ?, ?, ?, ?, ?, datetime('now'))",
            (args["agent_id"], args["spec_id"], args["stage"], args["phase_type"], args["agent_name"], args.get("run_id")))
        return "spawned"
    if command == "route":  # the newest builds' completion routing
        row = conn.execute("SELECT phase_type, stage, branch_id FROM agent_executions WHERE agent_id = ?",
                           (args["agent_id"],)).fetchone()
        return list(row) if row else None
    if command == "branch_executions":  # the newest builds' resume: a branch's executions, newest spawn first
        return [list(r) for r in conn.execute(
            "SELECT agent_id, spec_id, stage, phase_type, agent_name, run_id, branch_id, spawned_at, completed_at,"
            " response_text FROM agent_executions WHERE spec_id = ? AND stage = ? AND branch_id = ?"
            " ORDER BY spawned_at DESC", (args["spec_id"], args["stage"], args["branch_id"]))]
    if command == "complete":  # every build
        conn.execute("UPDATE agent_executions SET completed_at = datetime('now'), response_text = ? WHERE agent_id = ?",
                     (args["response_text"], args["agent_id"]))
        return "completed"
    if command == "artifacts":
        ids = []
        for a in args["items"]:
            legacy_id = None
            if build in ("legacy", "dual"):
                if build == "legacy":  # created_at from the column default
                    cur = conn.execute(
                        "INSERT INTO consensus_artifacts (spec_id, stage, agent_name, content_json, response_text, run_id)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        (a["spec_id"], a["stage"], a["agent_name"], a["content"], a.get("response_text"), a.get("run_id")))
                else:  # the dual-write build gives created_at explicitly
                    cur = conn.execute(
                        "INSERT INTO consensus_artifacts (spec_id, stage, agent_name, content_json, response_text, run_id,"
                        " created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (a["spec_id"], a["stage"], a["agent_name"], a["content"], a.get("response_text"), a.get("run_id"),
                         now_text()))
                legacy_id = cur.lastrowid
            new_id = None
            if build in ("dual", "cutover") and not a.get("new_tables_fail"):
                other = sqlite3.connect(path, isolation_level=None, timeout=10)  # another connection, own commits
                at = a.get("at_ms") or int(time.time() * 1000)
                run = new_run(other, a["spec_id"], a["stage"], at)
                new_id = new_output(other, run, a["agent_name"], a["content"], at)
                other.close()
            ids.append([legacy_id, new_id])
        return ids
    if command == "synthesis":
        s = args["synthesis"]
        legacy_id = new_id = None
        if build in ("legacy", "dual"):
            cols = ["spec_id", "stage", "output_markdown", "output_path", "status", "artifacts_count", "agreements",
                    "conflicts", "degraded", "run_id"]
            values = [json.dumps(v) if isinstance(v, list) else v for v in (s.get(c) for c in cols)]
            if build == "dual":
                cols.append("created_at")
                values.append(now_text())
            legacy_id = conn.execute(f"INSERT INTO consensus_synthesis ({', '.join(cols)}) VALUES"
                                     f" ({', '.join('?' * len(cols))})", values).lastrowid
        if build in ("dual", "cutover"):
            other = sqlite3.connect(path, isolation_level=None, timeout=10)
            new_id = new_run(other, s["spec_id"], s["stage"], s.get("at_ms") or int(time.time() * 1000),
                             synthesis_json(s), int(bool(s.get("degraded"))))
            other.close()
        return [legacy_id, new_id]
    if command == "read_artifacts":  # the legacy build's read: newest first, no tie-breaker
        return conn.execute("SELECT agent_name, content_json FROM consensus_artifacts WHERE spec_id = ? AND stage = ?"
                            " ORDER BY created_at DESC", (args["spec_id"], args["stage"])).fetchall()
    if command == "read_syntheses":  # the legacy build's read of a stage's syntheses, newest first
        return conn.execute("SELECT output_markdown FROM consensus_synthesis WHERE spec_id = ? AND stage = ?"
                            " ORDER BY created_at DESC, id DESC", (args["spec_id"], args["stage"])).fetchall()
    raise SystemExit(f"unknown command {command!r}")


def run(path: Path, command: str, **args: Any) -> Any:
    """Runs one predecessor command in a child process; returns its JSON result."""
    done = subprocess.run([sys.executable, __file__, str(path), command, json.dumps(args)],
                          capture_output=True, text=True, timeout=120)
    if done.returncode == 3:
        return {"refused": json.loads(done.stdout)["refused"]}
    if done.returncode != 0:
        raise AssertionError(f"predecessor {command} failed ({done.returncode}): {done.stderr}")
    return json.loads(done.stdout)


if __name__ == "__main__":
    print(json.dumps(run_command(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]))))
