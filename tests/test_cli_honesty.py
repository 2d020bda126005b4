"""The command line says what it does: no silent conversion of legacy files, dry runs,
a monitoring exit code, NO_COLOR, progress that claims no percentage, one spelling of
auto_vacuum."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

from click.testing import CliRunner
from conftest import make_legacy_db, read_pragmas

import consensus_db
from consensus_db.cli import NEEDS_VACUUM, Spinner
from consensus_db.cli import main as cli


def run(*args, **kwargs):
    return CliRunner().invoke(cli, [str(a) for a in args], **kwargs)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_vacuum_and_cleanup_refuse_a_legacy_file_and_point_to_upgrade(tmp_path):
    path = tmp_path / "legacy.db"
    make_legacy_db(path, bloat_mb=1)
    before = digest(path)
    for command in (["vacuum"], ["vacuum", "--full"], ["cleanup", "--days", "1"]):
        result = run(command[0], path, *command[1:])
        assert result.exit_code == 1, result.output
        assert "consensus-db upgrade" in result.stderr and "auto_vacuum none" in result.stderr
        assert "schema version 0" in result.stderr and "Nothing was changed" in result.stderr
        assert digest(path) == before
    assert read_pragmas(path, "auto_vacuum", "journal_mode") == {"auto_vacuum": 0, "journal_mode": "delete"}
    upgraded = run("upgrade", path, "--no-backup")
    assert upgraded.exit_code == 0, upgraded.output
    assert run("vacuum", path).exit_code == 0  # once upgraded, it is no longer refused


def test_cleanup_dry_run_counts_and_changes_nothing(tmp_path):
    path = tmp_path / "c.db"
    with consensus_db.connect(path) as db:
        for i in range(3):
            db.record_agent_spawn(f"old{i}", "S", "plan", "quality_gate", "g")
        db.record_agent_spawn("new", "S", "plan", "quality_gate", "g")
        db.execute("UPDATE agent_executions SET spawned_at = '2001-01-01 00:00:00' WHERE agent_id LIKE 'old%'")
    before = digest(path)
    dry = run("cleanup", path, "--days", "30", "--dry-run")
    assert dry.exit_code == 0 and dry.output.startswith("3 executions older than 30 days would be deleted")
    as_json = json.loads(run("cleanup", path, "--days", "30", "--dry-run", "--json").output)
    assert as_json == {"would_delete": 3, "days": 30, "dry_run": True}
    assert digest(path) == before
    done = run("cleanup", path, "--days", "30")
    assert done.exit_code == 0 and done.output.startswith("3 executions older than 30 days deleted")


def test_health_check_exit_code_says_needs_vacuum(tmp_path):
    bloated = tmp_path / "bloated.db"
    make_legacy_db(bloated, bloat_mb=2)
    flagged = run("health", bloated, "--check")
    assert flagged.exit_code == NEEDS_VACUUM == 3 and "needs vacuum    yes" in flagged.output
    assert run("health", bloated, "--check", "--threshold", "1").exit_code == 0
    assert run("health", bloated).exit_code == 0  # without --check, only the report
    fresh = tmp_path / "fresh.db"
    consensus_db.connect(fresh).close()
    assert run("health", fresh, "--check").exit_code == 0


def test_no_color_turns_the_error_colour_off(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_text("not a database at all" * 50)
    coloured = run("health", junk, color=True, env={"NO_COLOR": ""})
    plain = run("health", junk, color=True, env={"NO_COLOR": "1"})
    assert coloured.exit_code == plain.exit_code == 1
    assert "\x1b[" in coloured.stderr and "\x1b[" not in plain.stderr
    assert plain.stderr.startswith("error:") and "not a database" in plain.stderr


def test_spinner_shows_elapsed_time_and_no_percentage():
    out = io.StringIO()
    spinner = Spinner("vacuum", stream=out)
    assert spinner.tick(1) is True and spinner.tick(2) is True  # never interrupts the vacuum
    spinner.done()
    text = out.getvalue()
    assert "vacuum" in text and "s" in text and "%" not in text
    assert text.rstrip().endswith("s") and "done in" in text


def test_full_vacuum_of_a_big_file_shows_progress_on_stderr_only(tmp_path):
    path = tmp_path / "big.db"
    with consensus_db.connect(path) as db:
        db.store_artifacts(
            [{"spec_id": "B", "stage": "s", "agent_name": "a", "content_json": {"x": "y" * 1_000_000}} for _ in range(10)]
        )
        db.delete_spec_artifacts("B")
        db.checkpoint()
    assert path.stat().st_size > 8 << 20
    result = run("vacuum", path, "--full")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("full vacuum:") and "vacuum done in" in result.stderr
    quiet = run("vacuum", path, "--full", "--json")
    assert json.loads(quiet.stdout)["full"] is True and quiet.stderr == ""


def test_upgrade_report_names_auto_vacuum_and_says_why_legacy_tables_stay(tmp_path):
    path = tmp_path / "up.db"
    make_legacy_db(path)
    result = run("upgrade", path, "--no-backup")
    assert result.exit_code == 0, result.output
    auto_line = next(line for line in result.output.splitlines() if line.startswith("auto_vacuum"))
    assert auto_line.split()[1:] == ["none", "incremental"]
    assert "legacy tables kept: consensus_artifacts, consensus_synthesis" in result.output
    assert "--drop-legacy" in result.output
    health = run("health", path)
    assert "auto_vacuum     incremental" in health.output
