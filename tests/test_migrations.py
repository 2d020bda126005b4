"""The legacy upgrade: backfill, crash safety, rolling upgrades, refusals."""

from __future__ import annotations

import hashlib
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
from click.testing import CliRunner

import consensus_db
from consensus_db.cli import main as cli
from conftest import make_legacy_db, read_pragmas, stdlib_rows

import predecessor


def upgraded(tmp_path, **kwargs):
    path = tmp_path / "field.db"
    made = make_legacy_db(path, **kwargs)
    result = CliRunner().invoke(cli, ["upgrade", str(path)])
    assert result.exit_code == 0, result.output
    return path, made, result


def test_bloated_legacy_database_upgrades_small_and_intact(tmp_path):
    path, made, result = upgraded(tmp_path, bloat_mb=30)
    assert "backup:" in result.output and "schema_version" in result.output
    backups = [p for p in tmp_path.iterdir() if ".backup-" in p.name]
    assert len(backups) == 1
    assert stdlib_rows(backups[0], "SELECT count(*) FROM consensus_artifacts") == [(len(made["artifacts"]),)]
    assert read_pragmas(path, "user_version", "journal_mode", "auto_vacuum", "freelist_count") == {
        "user_version": 1, "journal_mode": "wal", "auto_vacuum": 2, "freelist_count": 0}
    assert path.stat().st_size < 1 << 20
    with consensus_db.connect(path) as db:
        for aid, spec, stage, agent, content, response, run_id, created in made["artifacts"]:
            matches = [a for a in db.query_artifacts(spec, stage) if (a.content_json, a.agent_name, a.created_at) == (content, agent, created)]
            assert len(matches) == 1
            a = matches[0]
            assert (a.response_text, a.run_id, a.created_at, a.source) == (response, run_id, created, "v1")
        for sid, spec, stage, run_id, status, degraded, created in made["syntheses"]:
            s = db.query_latest_synthesis(spec, stage)
            assert (s.output_markdown, s.status, s.degraded, s.run_id, s.created_at, s.source) == (
                f"# {spec} {stage}", status, bool(degraded), run_id, created, "v1")
            assert (s.output_path, s.artifacts_count, s.agreements, s.conflicts) == (f"/out/{spec}.md", 3, '["a"]', '["c"]')
        assert db.get_agent_spawn_info("agent-0") == ("quality_gate", "plan")
        assert db.reader_stats()["legacy"] == 0


def test_runs_are_grouped_by_spec_stage_and_run_id(tmp_path):
    path, made, _ = upgraded(tmp_path)
    rows = stdlib_rows(path, "SELECT spec_id, stage, orchestrator_run_id, synthesis_json IS NOT NULL, "
                             "(SELECT count(*) FROM agent_outputs o WHERE o.run_id = r.id) FROM consensus_runs r ORDER BY 1, 2, 3")
    assert rows == [("SPEC-1", "plan", None, 0, 2), ("SPEC-1", "plan", "run-a", 1, 3), ("SPEC-2", "tasks", "run-b", 1, 4)]


def test_drop_legacy_keeps_every_row(tmp_path):
    path = tmp_path / "field.db"
    made = make_legacy_db(path)
    result = CliRunner().invoke(cli, ["upgrade", str(path), "--drop-legacy", "--no-backup"])
    assert result.exit_code == 0, result.output
    assert not [p for p in tmp_path.iterdir() if ".backup-" in p.name]
    tables = {r[0] for r in stdlib_rows(path, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "consensus_artifacts" not in tables and "consensus_synthesis" not in tables
    with consensus_db.connect(path) as db:
        assert db.schema_version == 2
        total = sum(len(db.query_artifacts(s, st)) for s, st in {(a[1], a[2]) for a in made["artifacts"]})
        assert total == len(made["artifacts"])
        assert db.migrate(1) == 1  # down: recreates empty legacy tables, loses nothing
        assert sum(len(db.query_artifacts(s, st)) for s, st in {(a[1], a[2]) for a in made["artifacts"]}) == total


def test_old_databases_without_later_columns_open_and_migrate(tmp_path):
    path = tmp_path / "oldest.db"
    make_legacy_db(path, drop_columns=True)
    with consensus_db.connect(path) as db:
        assert db.schema_version == 1
        got = db.query_artifacts("SPEC-1", "plan")
        assert len(got) == 5 and all(a.run_id is None for a in got)
        db.record_extraction_failure("agent-0", "raw", "broken json")
        assert [f.agent_id for f in db.query_extraction_failures("SPEC-1")] == ["agent-0"]


def test_old_databases_without_later_columns_are_readable_unmigrated(tmp_path):
    """migrate=False (or read-only) on the oldest shape: the legacy reader reads the
    missing columns as NULL instead of failing, and no column is added behind the
    caller's back."""
    path = tmp_path / "oldest.db"
    make_legacy_db(path, drop_columns=True)

    def columns() -> set:
        return {(t, c) for t in ("consensus_artifacts", "consensus_synthesis", "agent_executions")
                for (c,) in stdlib_rows(path, f"SELECT name FROM pragma_table_info('{t}')")}

    before = columns()
    assert ("consensus_artifacts", "run_id") not in before
    for options in ({"migrate": False}, {"read_only": True, "migrate": False}):
        with consensus_db.connect(path, **options) as db:
            assert db.schema_version == 0
            got = db.query_artifacts("SPEC-1", "plan")
            assert len(got) == 5 and {a.source for a in got} == {"legacy"} and all(a.run_id is None for a in got)
            latest = db.query_latest_synthesis("SPEC-1", "plan")
            assert latest is not None and latest.run_id is None and latest.source == "legacy"
            assert db.query_extraction_failures("SPEC-1") == []
            assert db.get_agent_spawn_info("agent-0") == ("quality_gate", "plan")
    assert columns() == before
    with consensus_db.connect(path, migrate=False, retry=None) as db:
        # Writes that need a missing column say so instead of failing deep inside SQLite.
        with pytest.raises(consensus_db.MigrationError, match=r"agent_executions\.run_id.*migrate\(\)"):
            db.record_agent_spawn("new", "SPEC-1", "plan", "quality_gate", "gemini")
        with pytest.raises(consensus_db.MigrationError, match=r"agent_executions\.extraction_error"):
            db.record_extraction_failure("agent-0", "raw", "broken json")
    assert columns() == before  # (read with the stdlib only while no store has the file open)
    with consensus_db.connect(path, migrate=False) as db:
        db.migrate()  # and once migrated, the columns are real
        db.record_extraction_failure("agent-0", "raw", "broken json")
        assert [f.agent_id for f in db.query_extraction_failures("SPEC-1")] == ["agent-0"]
        assert len(db.query_artifacts("SPEC-1", "plan")) == 5


def test_rolling_upgrade_old_binary_rows_are_read_once(tmp_path):
    path = tmp_path / "rolling.db"
    make_legacy_db(path)
    consensus_db.connect(path).close()
    old_binary = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1])
conn.execute("INSERT INTO consensus_artifacts (spec_id, stage, agent_name, content_json, run_id, created_at)"
             " VALUES ('SPEC-1', 'plan', 'late', '{\\"late\\": true}', 'run-a', '2030-01-01 00:00:00')")
conn.execute("INSERT INTO consensus_synthesis (spec_id, stage, output_markdown, status, run_id, created_at)"
             " VALUES ('SPEC-1', 'plan', '# written by an old binary', 'success', 'run-z', '2030-01-01 00:00:01')")
conn.commit()
"""
    subprocess.run([sys.executable, "-c", old_binary, str(path)], check=True, timeout=60)
    with consensus_db.connect(path) as db:
        got = db.query_artifacts("SPEC-1", "plan", order="oldest")
        assert len(got) == 6
        assert [a.source for a in got].count("legacy") == 1
        late = got[-1]
        assert (late.agent_name, late.source, late.created_at) == ("late", "legacy", "2030-01-01 00:00:00")
        latest = db.query_latest_synthesis("SPEC-1", "plan")
        assert (latest.output_markdown, latest.source) == ("# written by an old binary", "legacy")
        assert db.reader_stats()["legacy"] == 2
        # Dropping the legacy tables first copies what the old binary wrote.
        db.migrate(2)
        again = db.query_artifacts("SPEC-1", "plan", order="oldest")
        assert len(again) == 6 and {a.source for a in again} == {"v1"}


def test_future_version_is_refused_and_the_file_untouched(tmp_path):
    path = tmp_path / "future.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (x)")
    conn.execute("PRAGMA user_version = 99")
    conn.commit()
    conn.close()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(consensus_db.SchemaVersionError, match=r"99.*latest known: 2"):
        consensus_db.connect(path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["future.db"]
    result = CliRunner().invoke(cli, ["upgrade", str(path), "--no-backup"])
    assert result.exit_code == 1 and "newer" in result.output


def test_down_migration_writes_new_rows_back_instead_of_losing_them(tmp_path):
    path = tmp_path / "new.db"
    with consensus_db.connect(path) as db:
        db.store_artifact("S", "plan", "g", "{}", model_version="m-1")
        assert db.migrate(0) == 0  # issue 20: a rollback loses no row
        assert db.schema_version == 0
        [a] = db.query_artifacts("S", "plan")
        assert (a.source, a.agent_name, a.model_version) == ("legacy", "g", "m-1")


def big_legacy(path, artifacts=150_000):
    conn = sqlite3.connect(path)
    conn.executescript(consensus_db._core.LEGACY_SCHEMA_SQL)
    conn.executemany(
        "INSERT INTO consensus_artifacts (spec_id, stage, agent_name, content_json, run_id, created_at) VALUES (?,?,?,?,?,?)",
        ((f"SPEC-{i % 500}", "plan", "gemini", '{"n": %d}' % i, f"run-{i % 3000}", "2025-01-01 00:00:00")
         for i in range(artifacts)),
    )
    conn.executemany(
        "INSERT INTO consensus_synthesis (spec_id, stage, output_markdown, status, run_id) VALUES (?,?,?,?,?)",
        ((f"SPEC-{i % 500}", "plan", "# s", "success", f"run-{i}") for i in range(3000)),
    )
    conn.commit()
    conn.close()
    return artifacts


MIGRATE_CHILD = """
import sys, consensus_db
print("opening", flush=True)
consensus_db.connect(sys.argv[1]).close()
print("done", flush=True)
"""


def copy_state(path):
    """(user_version, legacy artifacts, copies in the new tables or None) of a killed
    migration's file, checking that every copy is linked to one legacy row of its own."""
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        legacy = conn.execute("SELECT count(*) FROM consensus_artifacts").fetchone()[0]
        if not conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'agent_outputs'").fetchone()[0]:
            return version, legacy, None
        copies, linked, orphans = conn.execute(
            "SELECT count(*), count(DISTINCT legacy_artifact_id),"
            " sum(NOT EXISTS (SELECT 1 FROM consensus_artifacts a WHERE a.id = o.legacy_artifact_id))"
            " FROM agent_outputs o"
        ).fetchone()
        assert linked == copies and not orphans  # no copy twice, none without its original
        return version, legacy, copies
    finally:
        conn.close()


def test_a_migration_killed_part_way_resumes_without_losing_or_doubling_a_row(tmp_path):
    """The backfill runs in chunks, each its own transaction: a kill leaves the legacy rows
    whole and a part of them copied, each copy linked to its original, which is a file
    the dual-schema rule reads once each; the next opening copies the rest and only it."""
    template = tmp_path / "template.db"
    n = big_legacy(template)
    outcomes = []
    for delay in (0.05, 0.2, 0.4, 0.8, 1.5):
        path = tmp_path / f"kill-{delay}.db"
        path.write_bytes(template.read_bytes())
        child = subprocess.Popen([sys.executable, "-c", MIGRATE_CHILD, str(path)], stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "opening"
        time.sleep(delay)  # the point: kill at different moments of a real migration
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
        version, legacy, copies = copy_state(path)
        assert legacy == n
        assert version in (0, 1)
        if version == 1:
            assert copies == n
        with consensus_db.connect(path, read_only=True) as before_resuming:
            assert before_resuming.count_artifacts("SPEC-0", "plan") == n // 500
        with consensus_db.connect(path) as db:
            assert db.schema_version == 1
            assert db.query("SELECT count(*) FROM agent_outputs") == [(n,)]
            assert db.query("SELECT count(DISTINCT legacy_artifact_id) FROM agent_outputs") == [(n,)]
            assert db.query("SELECT count(*) FROM consensus_runs WHERE synthesis_json IS NOT NULL") == [(3000,)]
            if version == 0:
                assert db.rows_moved["artifacts_backfilled"] == n - (copies or 0)  # the rest, and only it
            assert db.count_artifacts("SPEC-0", "plan") == n // 500
        outcomes.append((version, copies))
    assert any(v == 0 and copies and copies < n for v, copies in outcomes), outcomes  # a kill landed mid-copy
    print(f"migration kill rounds: (user_version, rows copied of {n}) after SIGKILL = {outcomes}")


def test_a_store_open_while_another_drops_the_legacy_tables_keeps_reading(tmp_path):
    path = tmp_path / "rolling.db"
    make_legacy_db(path)
    with consensus_db.connect(path) as reader, consensus_db.connect(path) as upgrader:
        assert len(reader.query_artifacts("SPEC-1", "plan")) == 5
        upgrader.migrate(2)
        got = reader.query_artifacts("SPEC-1", "plan")
        assert len(got) == 5 and {a.source for a in got} == {"v1"}
        assert reader.query_latest_synthesis("SPEC-1", "plan").source == "v1"
        assert len(reader.query_artifacts("SPEC-2", "tasks")) == 4


def test_a_store_open_while_another_drops_the_legacy_tables_keeps_deleting(tmp_path):
    path = tmp_path / "rolling.db"
    make_legacy_db(path)
    with consensus_db.connect(path) as writer, consensus_db.connect(path) as upgrader:
        assert len(writer.query_artifacts("SPEC-1", "plan")) == 5  # the store has seen the legacy tables
        upgrader.migrate(2)
        assert writer.delete_stage_artifacts("SPEC-2", "tasks") == 4
        assert writer.query_artifacts("SPEC-2", "tasks") == []
        assert writer.delete_runs("SPEC-1") == 1  # run-a (its synthesis); the open run went with its outputs
        assert writer.query_artifacts("SPEC-1", "plan") == [] and writer.query_latest_synthesis("SPEC-1", "plan") is None


def test_a_long_copy_reports_its_chunks_lets_writers_in_between_and_stops_when_told(tmp_path):
    path = tmp_path / "legacy.db"
    n = big_legacy(path, artifacts=20_000)
    calls = []
    written_between = []

    def progress(done, total):
        calls.append((done, total))
        if len(calls) == 2:  # the lane is free between chunks: another thread's write gets in now
            writer = threading.Thread(target=db.record_agent_spawn, args=("between", "S", "plan", "regular_stage", "g"))
            writer.start()
            writer.join(timeout=30)
            written_between.append(not writer.is_alive())
        return len(calls) < 4

    with consensus_db.connect(path, migrate=False) as db:
        assert db.migrate(1, progress=progress) == 0  # stopped after the fourth chunk: still version 0
        assert written_between == [True]
        assert [d for d, _ in calls] == sorted(d for d, _ in calls) and calls[-1][0] < calls[-1][1]
        copied = db.query("SELECT count(*), count(DISTINCT legacy_artifact_id) FROM agent_outputs")[0]
        assert 0 < copied[0] < n and copied[0] == copied[1]
        assert db.count_artifacts("SPEC-0", "plan") == n // 500  # each row once, copied or not
        assert db.migrate(1) == 1
        assert db.rows_moved["artifacts_backfilled"] == n - copied[0]
        assert db.query("SELECT count(*) FROM agent_outputs") == [(n,)]
        assert db.get_agent_spawn_info("between") is not None


WRITE_BACK_CHILD = """
import sys, consensus_db
with consensus_db.connect(sys.argv[1], migrate=False) as db:
    print("moving", flush=True)
    db.migrate(int(sys.argv[2]), force=True)
print("done", flush=True)
"""


def table_rows(conn, table):
    exists = conn.execute("SELECT count(*) FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
    return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] if exists else None


@pytest.mark.parametrize(
    "start, target, moving",
    [(2, 1, "consensus_artifacts"), (1, 0, "agent_outputs"), (1, 2, "consensus_artifacts")],
    ids=["write-back-2-to-1", "drop-new-tables-1-to-0", "drop-legacy-tables-1-to-2"],
)
def test_a_move_killed_part_way_resumes_without_losing_or_doubling_a_row(tmp_path, start, target, moving):
    """2 -> 1 writes every row back into recreated legacy tables; 1 -> 0 empties the new
    tables (each row's legacy copy in place) before dropping them, 1 -> 2 the legacy ones
    (each row's copy in place). Killed at any moment, each row is in the file once (a
    legacy row and its linked copy being one) and the move finishes on the next try."""
    template = tmp_path / "template.db"
    n = big_legacy(template, artifacts=60_000)
    with consensus_db.connect(template) as db:
        db.migrate(start, force=True)
    outcomes = []
    for delay in (0.05, 0.15, 0.3, 0.6, 1.0):
        path = tmp_path / f"kill-{delay}.db"
        path.write_bytes(template.read_bytes())
        child = subprocess.Popen(
            [sys.executable, "-c", WRITE_BACK_CHILD, str(path), str(target)], stdout=subprocess.PIPE, text=True
        )
        assert child.stdout.readline().strip() == "moving"
        time.sleep(delay)  # the point: kill at different moments of a real move
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
        conn = sqlite3.connect(path)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            assert (table_rows(conn, "consensus_artifacts") or 0) <= n  # never a row written back twice
            if version == start and table_rows(conn, "agent_outputs") is not None:
                # every row once: in the new tables, or only in the legacy ones
                only_legacy = conn.execute(
                    "SELECT count(*) FROM consensus_artifacts a"
                    " WHERE NOT EXISTS (SELECT 1 FROM agent_outputs o WHERE o.legacy_artifact_id = a.id)"
                ).fetchone()[0] if table_rows(conn, "consensus_artifacts") is not None else 0
                assert table_rows(conn, "agent_outputs") + only_legacy == n
            outcomes.append((version, table_rows(conn, moving)))
        finally:
            conn.close()
        with consensus_db.connect(path, read_only=True) as before_resuming:
            assert before_resuming.count_artifacts("SPEC-0", "plan") == n // 500
        with consensus_db.connect(path, migrate=False) as db:
            assert db.migrate(target, force=True) == target
            if target < 2:
                assert db.query("SELECT count(*) FROM consensus_artifacts") == [(n,)]
                assert db.query("SELECT count(*) FROM consensus_synthesis") == [(3000,)]
            else:
                assert db.query("SELECT count(*) FROM agent_outputs") == [(n,)]
            assert db.count_artifacts("SPEC-0", "plan") == n // 500
    assert any(v == start and rows and 0 < rows < n for v, rows in outcomes), outcomes  # a kill landed mid-move
    print(f"{start} -> {target} kill rounds: (user_version, {moving} rows of {n}) = {outcomes}")


STORE_WRITES = """
import sys, consensus_db
with consensus_db.connect(sys.argv[1]) as db:
    db.store_artifact("X", "plan", "new", {})
"""


def test_rows_written_after_a_tables_chunks_are_the_ends_not_a_failed_check(tmp_path):
    """0 -> 1: an old binary's artifact written once the artifacts' chunks are done (the
    syntheses' are running) is copied by the move's end; 2 -> 1: a store's artifact
    written once the write-back of the artifacts is done is written back by the end.
    The check between the chunks and the end verifies the chunks' rows, not these."""
    path = tmp_path / "legacy.db"
    n = 20_000
    conn = sqlite3.connect(path)
    conn.executescript(consensus_db._core.LEGACY_SCHEMA_SQL)
    conn.executemany(
        "INSERT INTO consensus_artifacts (spec_id, stage, agent_name, content_json, run_id, created_at)"
        " VALUES (?, 'plan', 'g', ?, ?, '2025-01-01 00:00:00')",
        ((f"S{i % 50}", '{"n": %d}' % i, f"r{i}") for i in range(n)),
    )
    conn.executemany(
        "INSERT INTO consensus_synthesis (spec_id, stage, output_markdown, status, run_id, created_at)"
        " VALUES (?, 'plan', '# s', 'success', ?, '2025-01-01 00:00:01')",
        ((f"S{i % 50}", f"r{i}") for i in range(n)),
    )
    conn.commit()
    conn.close()
    written = []

    def old_binary_writes(done, total):
        if done > n + 1_000 and not written:  # into the syntheses' chunks
            item = {"spec_id": "X", "stage": "plan", "agent_name": "old", "content": "{}"}
            written.append(predecessor.run(path, "artifacts", build="legacy", items=[item]) and "old")
        return True

    with consensus_db.connect(path, migrate=False) as db:
        assert db.migrate(1, progress=old_binary_writes) == 1
        assert written == ["old"]
        assert [a.agent_name for a in db.query_artifacts("X", "plan")] == ["old"]
        assert db.query(
            "SELECT count(*) FROM agent_outputs o JOIN consensus_artifacts a ON a.id = o.legacy_artifact_id"
            " WHERE a.spec_id = 'X'"
        ) == [(1,)]
        assert db.migrate(2, force=True) == 2
        written.clear()

        def store_writes(done, total):
            if done > n + 1_000 and not written:  # the outputs are written back: into the syntheses'
                subprocess.run([sys.executable, "-c", STORE_WRITES, str(path)], check=True, timeout=60)
                written.append("new")
            return True

        assert db.migrate(1, force=True, progress=store_writes) == 1
        assert written == ["new"]
        assert sorted(a.agent_name for a in db.query_artifacts("X", "plan")) == ["new", "old"]
        assert db.query("SELECT agent_name FROM consensus_artifacts WHERE spec_id = 'X' ORDER BY agent_name") == [
            ("new",),
            ("old",),
        ]


OLD_BINARY = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], timeout=30)
if sys.argv[2] == "spawn":  # an agent the old binary runs, in flight
    conn.execute("INSERT INTO agent_executions (agent_id, spec_id, stage, phase_type, agent_name, spawned_at)"
                 " VALUES ('old-agent', 'S', 'plan', 'regular_stage', 'g', datetime('now'))")
    conn.commit()
else:
    print(conn.execute("SELECT count(*) FROM consensus_artifacts").fetchone()[0])
"""


def old_binary(path, action):
    done = subprocess.run([sys.executable, "-c", OLD_BINARY, str(path), action], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_drop_of_the_legacy_tables_refused_midway_puts_the_emptied_rows_back(tmp_path):
    """1 -> 2 empties the legacy tables in chunks before it drops them; an agent an old
    binary spawns meanwhile makes the in-flight guard refuse the move, and the old binary
    then reads every legacy row again, as before the move began."""
    path = tmp_path / "legacy.db"
    n = big_legacy(path, artifacts=20_000)
    calls = []

    def progress(done, total):
        # The chunks go through the backfill's rows (20,000 artifacts, 3,000 syntheses),
        # then the emptying's: the first call past them follows a chunk that emptied.
        if done > n + 3000 and not calls:
            calls.append(done)
            old_binary(path, "spawn")
        return True

    with consensus_db.connect(path) as db:
        assert db.schema_version == 1
        with pytest.raises(consensus_db.ExecutionsInFlightError):
            db.migrate(2, progress=progress)
        assert calls, "the emptying never began"
        assert db.schema_version == 1
        assert db.count_artifacts("SPEC-0", "plan") == n // 500
    assert int(old_binary(path, "read")) == n


SYNTHESIZER = """
import sys, consensus_db
with consensus_db.connect(sys.argv[1]) as db:
    db.store_synthesis("S", "plan", "# merged while the move ran", run_id="r-0")
"""


def test_a_synthesis_closing_an_early_run_during_a_write_back_is_written_back(tmp_path):
    """2 -> 1 writes the runs' syntheses back in chunks; another process closing a run the
    chunks have passed (its artifacts were stored before the move) still gets its
    synthesis into the legacy tables: the end writes back every run's."""
    path = tmp_path / "new.db"
    with consensus_db.connect(path) as db:
        db.store_artifact("S", "plan", "g", {"n": 0}, run_id="r-0")  # run 1, open
        db.store_artifacts(
            [{"spec_id": "S", "stage": "plan", "agent_name": "g", "content_json": "{}", "run_id": f"r-{i}"}
             for i in range(1, 6000)]
        )
    fired = []

    def progress(done, total):
        if done > 6000 and not fired:  # past the artifacts: the runs' chunks have begun
            fired.append(done)
            done_ = subprocess.run([sys.executable, "-c", SYNTHESIZER, str(path)], capture_output=True, text=True)
            assert done_.returncode == 0, done_.stderr
        return True

    with consensus_db.connect(path, migrate=False) as db:
        assert db.migrate(1, force=True, progress=progress) == 1
        assert fired
        assert db.query(
            "SELECT count(*) FROM consensus_synthesis WHERE output_markdown = '# merged while the move ran'"
        ) == [(1,)]
