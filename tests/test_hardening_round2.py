"""Hardening, second round: transaction control however it is spelt, a deferred
constraint in a group, and the counts the upgrade and downgrade reports give.

Groups are formed deterministically as in test_write_lane.py: an open `transaction()`
block holds the lane while writers queue behind it."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest

from click.testing import CliRunner

import consensus_db
import predecessor
from conftest import stdlib_rows
from test_write_lane import start, wait_queued
from consensus_db.cli import main as cli

SPELLINGS = [";COMMIT", "/**/COMMIT", " ;\n-- note\n rollback", ";SAVEPOINT x", "; release x", ";;END", ";BEGIN",
             "-- x\rCOMMIT", "--\rBEGIN"]


def queue_behind_a_block(db, calls) -> list[dict]:
    """Queues `calls` (callable, *args) in this order behind an open block; their outcomes."""
    started = []
    with db.transaction():
        for n, (fn, *args) in enumerate(calls, 1):
            started.append(start(fn, *args))
            wait_queued(db, n)
    for thread, _ in started:
        thread.join(30)
    return [out for _, out in started]


@pytest.mark.parametrize("statement", [";COMMIT", "/**/COMMIT", ";ROLLBACK", ";SAVEPOINT x"])
def test_transaction_control_in_a_group_stores_no_acknowledged_write_twice(db_path, statement):
    db = consensus_db.connect(db_path, retry=None)
    outcomes = queue_behind_a_block(
        db,
        [
            (db.store_artifact, "S", "plan", "a", {"w": "A"}),
            (db.execute, statement),
            (db.store_artifact, "S", "plan", "b", {"w": "B"}),
        ],
    )
    print(statement, outcomes)
    assert type(outcomes[1].get("error")).__name__ == "TransactionError", outcomes[1]
    assert "cannot run inside a transaction block" in str(outcomes[1]["error"])
    ids = sorted(outcomes[i]["value"] for i in (0, 2))
    db.close()
    rows = stdlib_rows(db_path, "SELECT id, agent_name FROM agent_outputs ORDER BY id")
    assert [r[0] for r in rows] == ids and [r[1] for r in rows] == ["a", "b"], rows


@pytest.mark.parametrize("statement", [*SPELLINGS, "INSERT INTO t VALUES (3); COMMIT"])
def test_transaction_control_in_a_block_is_refused_before_it_runs_on_both(store_target, statement):
    with consensus_db.connect(store_target) as db:
        db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)")
        with pytest.raises(consensus_db.Error) as failed:
            with db.transaction() as tx:
                tx.execute("INSERT INTO t VALUES (1)")
                tx.execute(statement)
        with pytest.raises(consensus_db.Error):  # and outside a block: never run in autocommit
            db.execute(statement)
        with pytest.raises(consensus_db.Error):
            db.query(statement)
        # Nothing of the block persisted, and the pooled connections are in no transaction:
        # a later block's rollback undoes all of it, and a write commits.
        with pytest.raises(RuntimeError):
            with db.transaction() as tx:
                tx.execute("INSERT INTO t VALUES (2)")
                raise RuntimeError("roll back")
        db.execute("INSERT INTO t VALUES (4)")
        assert db.query("SELECT k FROM t ORDER BY k") == [(4,)]
    if "; COMMIT" not in statement:  # PostgreSQL refuses two commands in one statement itself
        assert failed.type.__name__ == "TransactionError", failed.value
        assert "cannot run inside a transaction block" in str(failed.value)


def test_a_write_leaving_a_deferred_violation_fails_alone_and_its_group_commits(db_path):
    db = consensus_db.connect(db_path, retry=None)
    db.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
    db.execute(
        "CREATE TABLE child (id INTEGER PRIMARY KEY, "
        "parent INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)"
    )
    outcomes = queue_behind_a_block(
        db,
        [
            (db.store_artifact, "S", "plan", "a", {"w": "A"}),
            (db.execute, "INSERT INTO child VALUES (1, 999)"),
            (db.store_artifact, "S", "plan", "b", {"w": "B"}),
            (db.execute, "INSERT INTO parent VALUES (7)"),
        ],
    )
    print(outcomes)
    assert isinstance(outcomes[1].get("error"), consensus_db.IntegrityError), outcomes[1]
    assert "FOREIGN KEY" in str(outcomes[1]["error"])
    assert [outcomes[i].get("error") for i in (0, 2, 3)] == [None] * 3, outcomes
    assert db.lane_stats()["sizes"].get(4) == 1, db.lane_stats()
    db.close()
    assert stdlib_rows(db_path, "SELECT agent_name FROM agent_outputs ORDER BY id") == [("a",), ("b",)]
    assert stdlib_rows(db_path, "SELECT count(*) FROM child") == [(0,)]
    assert stdlib_rows(db_path, "SELECT id FROM parent") == [(7,)]


def test_a_straddling_twin_pair_stays_consistent_once_the_store_links_it(tmp_path):
    from test_verify import migrated_file, tamper

    path = migrated_file(tmp_path)
    conn = sqlite3.connect(path)
    legacy_id = conn.execute(
        "INSERT INTO consensus_artifacts (spec_id, stage, agent_name, content_json, created_at)"
        " VALUES ('SPEC-4', 'plan', 'gemini', '{}', '2025-01-01 00:00:01')"
    ).lastrowid
    run = conn.execute(
        "INSERT INTO consensus_runs (spec_id, stage, run_timestamp, consensus_ok) VALUES ('SPEC-4', 'plan', 1735689599800, 1)"
    ).lastrowid
    conn.execute(  # 1.2 s earlier than the legacy copy's second ends: the second before
        "INSERT INTO agent_outputs (run_id, agent_name, content, output_timestamp) VALUES (?, 'gemini', '{}', 1735689599800)",
        (run,),
    )
    conn.commit()
    conn.close()
    with consensus_db.connect(path, migrate=False) as db:
        assert db.verify_schemas()["consistent"]
    with consensus_db.connect(path, write_mode="dual") as db:  # links the predecessor's copies
        report = db.verify_schemas()
    assert stdlib_rows(path, "SELECT count(*) FROM agent_outputs WHERE legacy_artifact_id = ?", (legacy_id,)) == [(1,)]
    print(report["mismatches"])
    assert report["consistent"], report["mismatches"]
    # A linked pair whose times are really apart is still a mismatch.
    tamper(path, f"UPDATE consensus_artifacts SET created_at = '2025-01-02 00:00:01' WHERE id = {legacy_id}")
    with consensus_db.connect(path, migrate=False) as db:
        report = db.verify_schemas()
    assert [(m["problem"], m["fields"]) for m in report["mismatches"]] == [("differs", ["created_at"])]


def _item(spec: str, n: int, run: str) -> dict:
    return {"spec_id": spec, "stage": "plan", "agent_name": "gemini", "content": json.dumps({"n": n}), "run_id": run}


def test_the_upgrade_report_counts_rows_copied_not_the_runs_made_for_them(tmp_path):
    path = tmp_path / "legacy.db"
    predecessor.run(path, "create_legacy")
    predecessor.run(path, "artifacts", build="legacy", items=[_item("S", n, f"run-{n % 10}") for n in range(100)])
    for r in range(3):
        predecessor.run(path, "synthesis", build="legacy", synthesis={
            "spec_id": "S", "stage": "plan", "output_markdown": f"# {r}", "status": "success", "run_id": f"run-{r}"})
    done = CliRunner().invoke(cli, ["upgrade", str(path), "--no-backup"])
    print(done.output)
    assert done.exit_code == 0, done.output
    assert "the backfill copied 103 legacy rows (100 artifacts, 3 syntheses)" in done.output
    report = json.loads(CliRunner().invoke(cli, ["upgrade", str(path), "--no-backup", "--json"]).output)
    assert report["rows_moved"] == dict.fromkeys(
        ["artifacts_backfilled", "syntheses_backfilled", "artifacts_written_back", "syntheses_written_back"], 0)


LEGACY_WRITER = """
import json, sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
n = 0
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    try:
        conn.execute("INSERT INTO consensus_artifacts (spec_id, stage, agent_name, content_json) VALUES ('L', 'plan', 'old', '{}')")
        n += 1
        if n == 1:
            print("writing", flush=True)
        time.sleep(0.001)  # a program writing now and then, not one holding the lock without pause
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):
            break
"""


def test_the_downgrade_counts_the_rows_it_wrote_back_not_a_concurrent_writers(tmp_path):
    path = tmp_path / "v1.db"
    with consensus_db.connect(path) as db:  # a new file: every row is in the new tables only
        db.store_artifacts([{"spec_id": "S", "stage": "plan", "agent_name": "a", "content_json": f'{{"n": {n}}}'}
                            for n in range(3000)])
        db.store_synthesis("S", "plan", "# m")
        db.migrate(1, force=True)  # recreates the legacy tables and writes every row back
        assert db.rows_moved == {"artifacts_backfilled": 0, "syntheses_backfilled": 0,
                                 "artifacts_written_back": 3000, "syntheses_written_back": 1}
        db.store_artifacts([{"spec_id": "S", "stage": "tasks", "agent_name": "b", "content_json": f'{{"n": {n}}}'}
                            for n in range(2000)])  # v1-only again: these are what the downgrade writes back
    writer = subprocess.Popen([sys.executable, "-c", LEGACY_WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline() == "writing\n"
        done = subprocess.run([sys.executable, "-m", "consensus_db", "downgrade", str(path), "--to", "0", "--force",
                               "--no-backup", "--json"], capture_output=True, text=True, timeout=120)
    finally:
        writer.kill()
        writer.wait()
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    print(report["written_back"], report["rows_moved"])
    legacy_rows = report["after"]["rows"]["consensus_artifacts"] - report["before"]["rows"]["consensus_artifacts"]
    print("legacy table growth", legacy_rows)
    assert report["rows_moved"]["artifacts_written_back"] == 2000
    assert report["written_back"] == 2000


def test_a_members_defer_foreign_keys_pragma_does_not_carry_over_to_the_next_member(db_path):
    db = consensus_db.connect(db_path, retry=None)
    db.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
    db.execute("CREATE TABLE child (id INTEGER PRIMARY KEY, parent INTEGER REFERENCES parent(id))")
    outcomes = queue_behind_a_block(
        db, [(db.execute, "PRAGMA defer_foreign_keys = ON"), (db.execute, "INSERT INTO child VALUES (1, 999)")]
    )
    db.close()
    assert "error" not in outcomes[0], outcomes
    error = outcomes[1].get("error")
    assert isinstance(error, consensus_db.IntegrityError) and "deferred" not in str(error), outcomes
