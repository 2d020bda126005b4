"""The consensus-db command: output, exit codes, --json, missing files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

import consensus_db
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
