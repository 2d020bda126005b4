"""The consensus-db command: output, exit codes, --json, missing files."""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

import consensus_db
from consensus_db.cli import Bar
from consensus_db.cli import main as cli
from conftest import make_legacy_db


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_demo_runs_a_workload_and_prints_health(tmp_path):
    path = tmp_path / "demo.db"
    result = run("demo", "--db", path, "--specs", "2")
    assert result.exit_code == 0, result.output
    for text in ("what it did", "throughput", "health", "extraction failures    1", "journal mode    wal"):
        assert text in result.output
    with consensus_db.connect(path) as db:
        assert db.query("SELECT count(*) FROM consensus_runs WHERE synthesis_json IS NOT NULL") == [(10,)]
        assert len(db.query_extraction_failures("SPEC-001")) + len(db.query_extraction_failures("SPEC-002")) == 1


def test_demo_as_installed_command_on_the_default_database():
    exe = Path(sys.executable).with_name("consensus-db")
    argv = [str(exe), "demo"] if exe.exists() else [sys.executable, "-m", "consensus_db", "demo"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "consensus-db demo on" in done.stdout and "needs vacuum" in done.stdout


def test_health_table_and_json(tmp_path):
    path = tmp_path / "h.db"
    make_legacy_db(path, bloat_mb=2)
    table = run("health", path)
    assert table.exit_code == 0 and "needs vacuum    yes" in table.output and "consensus_artifacts" in table.output
    data = json.loads(run("health", path, "--json").output)
    assert data["schema_version"] == 0 and data["rows"]["consensus_artifacts"] == 9 and data["needs_vacuum"] is True
    assert json.loads(run("health", path, "--json", "--threshold", "1").output)["needs_vacuum"] is False


def test_vacuum_and_cleanup(tmp_path):
    path = tmp_path / "v.db"
    with consensus_db.connect(path) as db:
        db.store_artifacts([{"spec_id": "B", "stage": "s", "agent_name": "a", "content_json": {"x": "y" * 100_000}}
                            for _ in range(30)])
        db.delete_spec_artifacts("B")
        db.record_agent_spawn("old", "S", "plan", "quality_gate", "g")
        db.execute("UPDATE agent_executions SET spawned_at = '2001-01-01 00:00:00'")
    result = run("vacuum", path, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["pages_freed"] > 500 and report["after"]["freelist_count"] == 0
    assert "full vacuum" in run("vacuum", path, "--full").output
    cleaned = run("cleanup", path, "--days", "30")
    assert cleaned.exit_code == 0 and cleaned.output.startswith("1 executions older than 30 days deleted")
    assert json.loads(run("cleanup", path, "--days", "30", "--json").output)["deleted"] == 0


def test_missing_files_are_errors_and_not_created(tmp_path):
    for command in (["health"], ["vacuum"], ["cleanup", "--days", "1"], ["upgrade"]):
        path = tmp_path / "absent.db"
        result = run(*command[:1], path, *command[1:])
        assert result.exit_code == 2 and "does not exist" in result.output
        assert not path.exists()
    assert os.listdir(tmp_path) == []


def test_bad_usage_and_library_errors(tmp_path):
    assert run("cleanup", tmp_path / "x.db").exit_code == 2  # --days is required
    assert run("cleanup", tmp_path / "x.db", "--days", "-1").exit_code == 2
    junk = tmp_path / "junk.db"
    junk.write_text("not a database at all" * 50)
    result = run("health", junk)
    assert result.exit_code == 1 and result.output.startswith("error:") and "not a database" in result.output
    upgraded = run("upgrade", junk, "--no-backup")
    assert upgraded.exit_code == 1 and "error:" in upgraded.output
    assert junk.read_text() == "not a database at all" * 50
    assert run("--version").output.strip().endswith(consensus_db.__version__)


def test_health_vacuum_and_cleanup_take_a_postgresql_url(pg_url):
    with consensus_db.connect(pg_url) as db:
        db.record_agent_spawn("old", "S", "plan", "quality_gate", "g")
        db.execute("UPDATE agent_executions SET spawned_at = '2020-01-01 00:00:00'")
        db.store_artifact("S", "plan", "g", "{}")
    result = run("health", pg_url)
    assert result.exit_code == 0, result.output
    assert "PostgreSQL 15" in result.output and "agent_outputs          1" in result.output
    h = json.loads(run("health", pg_url, "--json").output)
    assert h["backend"] == "postgresql" and h["rows"]["agent_executions"] == 1
    result = run("cleanup", pg_url, "--days", "30")
    assert result.exit_code == 0, result.output
    assert "1 executions older than 30 days deleted; VACUUM (ANALYZE) done" in result.output
    result = run("vacuum", pg_url, "--full")
    assert result.exit_code == 0 and "VACUUM (FULL, ANALYZE) done" in result.output, result.output


BACKDATED = (
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
    " INSERT INTO agent_executions (agent_id, spec_id, stage, phase_type, agent_name, spawned_at, response_text)"
    " SELECT 'old-' || i, 'S', 'plan', 'regular_stage', 'gemini', '2020-01-01 00:00:00', ? FROM n"
)


def backdated_file(path: Path, rows: int) -> Path:
    with consensus_db.connect(path) as db:
        db.execute(BACKDATED, [rows, "r" * 500])
    return path


def test_cleanup_draws_a_progress_bar_of_rows_and_pages_on_stderr_when_asked(tmp_path):
    result = run("cleanup", backdated_file(tmp_path / "bar.db", 20_000), "--days", "30", "--progress")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("20000 executions older than 30 days deleted")
    print(result.stderr.replace("\r", "\n"))
    rows = [line for line in result.stderr.split("\r") if line.startswith("delete [")]
    assert rows[-1].split() == ["delete", "[" + "#" * 24 + "]", "100%", "20,000/20,000", "rows,"] + rows[-1].split()[5:]
    assert "/s, ETA" in rows[-1]
    pages = [line for line in result.stderr.split("\r") if line.startswith("vacuum [")]
    assert pages and " 100% " in pages[-1] and "pages," in pages[-1], result.stderr


def test_cleanup_and_vacuum_draw_no_bar_with_quiet_nor_when_stderr_is_not_a_terminal(tmp_path):
    for extra in (["--quiet"], []):  # CliRunner's stderr is no terminal
        result = run("cleanup", backdated_file(tmp_path / f"q{len(extra)}.db", 5_000), "--days", "30", *extra)
        assert result.exit_code == 0, result.output
        assert result.stderr == "" and result.stdout.startswith("5000 executions"), result.stderr
    result = run("vacuum", tmp_path / "q1.db", "--quiet")
    assert result.exit_code == 0 and result.stderr == "", result.output


def test_the_bar_waits_half_a_second_then_shows_done_of_total_rate_and_time_left():
    now = [0.0]
    out = io.StringIO()
    bar = Bar("delete", "rows", stream=out, clock=lambda: now[0])
    assert bar.update(100, 1000) is True and out.getvalue() == ""  # a short job prints nothing
    now[0] = 1.0
    bar.update(250, 1000)
    assert out.getvalue() == "\rdelete [######------------------]  25% 250/1,000 rows, 250/s, ETA 3s"
    now[0] = 1.05
    bar.update(260, 1000)  # redrawn at most ten times a second
    now[0] = 4.0
    bar.update(1000, 1000)
    bar.done()
    assert out.getvalue().endswith("\rdelete [########################] 100% 1,000/1,000 rows, 250/s, ETA 0s\n")
    assert "260" not in out.getvalue()


def default_sigint() -> None:
    """A shell's background job starts with SIGINT ignored, which its children inherit and
    Python then leaves alone: the child gets the default, as at a terminal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_during_a_cleanup_stops_after_the_chunk_and_keeps_what_it_deleted(tmp_path):
    path = backdated_file(tmp_path / "int.db", 300_000)
    argv = [sys.executable, "-m", "consensus_db", "cleanup", str(path), "--days", "30", "--progress"]
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=default_sigint)
    assert child.stderr is not None
    seen = b""
    while b"delete [" not in seen:  # the bar is drawn: the job is under way
        byte = child.stderr.read(1)
        assert byte, seen
        seen += byte
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=120)
    print(err.decode()[-300:])
    assert child.returncode == 130, (out, err)
    assert b"interrupted: what was deleted and freed so far is committed" in err
    with consensus_db.connect(path) as db:
        [(left,)] = db.query("SELECT count(*) FROM agent_executions")
        assert 0 < left < 300_000, left  # stopped midway; every finished chunk stays deleted
        assert db.integrity_check() == ["ok"]
        assert db.cleanup_old_executions(30) == left


def test_upgrade_and_downgrade_draw_the_copy_between_the_schemas_as_a_progress_bar(tmp_path):
    path = tmp_path / "legacy.db"
    conn = sqlite3.connect(path)  # closed before the command opens the file
    conn.executescript(consensus_db._core.LEGACY_SCHEMA_SQL)
    conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)"
        " INSERT INTO consensus_artifacts (spec_id, stage, agent_name, content_json, run_id)"
        " SELECT 'S' || (i % 50), 'plan', 'g', '{}', 'r' || (i % 200) FROM n"
    )
    conn.commit()
    conn.close()
    result = run("upgrade", str(path), "--no-backup", "--progress")
    assert result.exit_code == 0, result.output
    bars = [line for line in result.stderr.split("\r") if line.startswith("copy [")]
    assert len(bars) >= 2 and "rows," in bars[-1] and "/s, ETA" in bars[-1], result.stderr
    assert json.loads(run("upgrade", str(path), "--no-backup", "--json").output)["after"]["schema_version"] == 1
    result = run("downgrade", str(path), "--no-backup", "--to", "0", "--progress")
    assert result.exit_code == 0, result.output
    assert any(line.startswith("write back [") for line in result.stderr.split("\r")), result.stderr
    quiet = run("upgrade", str(path), "--no-backup", "--quiet")
    assert quiet.exit_code == 0 and quiet.stderr == "", quiet.stderr


def test_demo_shows_a_claim_and_an_idempotent_repeat(tmp_path):
    path = tmp_path / "demo.db"
    result = run("demo", "--db", path, "--specs", "1")
    assert result.exit_code == 0, result.output
    for text in (
        "claims and idempotency keys",
        "wait_for_agents SPEC-001/implement: 2 completed, 1 failed (SPEC-001/implement/gemini), none pending",
        "SPEC-001/plan claimed by demo-orchestrator: token 1",
        "a rival's claim while the lease is live: refused",
        "the rival's synthesis without a claim: refused (StaleClaimError)",
        "(the first write), nothing written",
    ):
        assert text in result.output, text
    with consensus_db.connect(path) as db:
        assert db.query_claims() == []  # every claim released
        assert db.query("SELECT count(*) FROM consensus_runs WHERE synthesis_json IS NOT NULL") == [(5,)]


def test_claims_lists_the_live_claims_of_a_file(tmp_path):
    path = tmp_path / "c.db"
    with consensus_db.connect(path) as db:
        db.claim_stage("SPEC-1", "plan", owner="orch-a", lease_s=60)
        done = db.claim_stage("SPEC-1", "tasks", owner="orch-b", lease_s=60)
        db.release_claim(done)
    table = run("claims", path)
    assert table.exit_code == 0, table.output
    assert "SPEC-1" in table.output and "orch-a" in table.output and "orch-b" not in table.output
    data = json.loads(run("claims", path, "--json").output)
    assert [(c["stage"], c["owner"], c["token"]) for c in data] == [("plan", "orch-a", 1)]
    assert run("claims", path, "--spec", "OTHER").output.strip() == "no live claims"
