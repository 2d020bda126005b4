"""Keeping the file small: needs_vacuum, vacuum, background maintenance, and its shutdown."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

import consensus_db

MB = 1 << 20


def bloat(db, n_mb=30):
    blob = "x" * MB
    db.store_artifacts([{"spec_id": "BIG", "stage": "plan", "agent_name": f"a{i}", "content_json": {"blob": blob}}
                        for i in range(n_mb)])
    db.store_artifact("KEEP", "plan", "gemini", {"keep": True})
    assert db.delete_spec_artifacts("BIG") == n_mb
    db.checkpoint()


def test_deleting_tens_of_mb_needs_a_vacuum_and_vacuum_reclaims_it(db_path):
    with consensus_db.connect(db_path) as db:
        bloat(db)
        h = db.health()
        assert h["needs_vacuum"] is True and h["free_fraction"] > 0.9 and h["file_size"] > 25 * MB
        r = db.vacuum()
        assert r["full"] is False and r["pages_freed"] > 7000
        h = db.health()
        assert h["needs_vacuum"] is False and h["freelist_count"] == 0
        assert db_path.stat().st_size < 2 * MB
        assert [a.content() for a in db.query_artifacts("KEEP", "plan")] == [{"keep": True}]
        assert db.integrity_check() == ["ok"]


def test_full_vacuum_reports_progress_and_what_it_freed(db_path):
    with consensus_db.connect(db_path) as db:
        bloat(db, 10)
        db.store_artifacts([{"spec_id": "KEEP", "stage": "s", "agent_name": "g", "content_json": [i] * 50}
                            for i in range(2000)])
        calls = []
        r = db.vacuum(full=True, progress=lambda n: calls.append(n) or True)
        assert r["full"] is True and r["pages_freed"] > 2000 and r["bytes_reclaimed"] > 8 * MB
        assert calls and calls == sorted(calls)
        assert db.health()["freelist_count"] == 0


def test_threshold_is_configurable(db_path):
    with consensus_db.connect(db_path) as db:
        bloat(db, 4)
        free = db.health()["free_fraction"]
        assert db.health(threshold=min(free + 0.01, 1.0))["needs_vacuum"] is False
        assert db.health(threshold=free - 0.01)["needs_vacuum"] is True
        with pytest.raises(consensus_db.InvalidInputError, match="threshold"):
            db.health(threshold=1.5)


def wait_for(predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)  # waiting on a real background thread; nothing to inject


def test_maintenance_reclaims_bloat_and_applies_retention_by_itself(db_path):
    reports = []
    with consensus_db.connect(db_path) as db:
        db.record_agent_spawn("old", "S", "plan", "quality_gate", "gemini")
        db.record_agent_spawn("new", "S", "plan", "quality_gate", "claude")
        db.execute("UPDATE agent_executions SET spawned_at = '2000-01-01 00:00:00' WHERE agent_id = 'old'")
        bloat(db, 20)
        assert db.health()["needs_vacuum"]
        db.start_maintenance(interval_s=0.05, vacuum_pages=None, on_cycle=reports.append)
        wait_for(lambda: not db.health()["needs_vacuum"] and db.get_agent_name("old") is None)
        wait_for(lambda: len(reports) >= 1)  # the report follows the cycle's effects
        assert db.get_agent_name("new") == "claude"
        assert db.maintenance_cycles >= 1
        assert any(r["executions_deleted"] == 1 for r in reports)
        assert any(r["pages_freed"] > 0 for r in reports) and all(r["error"] is None for r in reports)
        db.stop_maintenance()
        assert db.maintenance_cycles is None
        stopped_at = len(reports)
        time.sleep(0.2)  # would be several intervals: nothing may run any more
        assert len(reports) == stopped_at
    assert db_path.stat().st_size < 2 * MB


def test_close_stops_maintenance(db_path):
    db = consensus_db.connect(db_path)
    reports = []
    db.start_maintenance(interval_s=0.02, on_cycle=reports.append)
    wait_for(lambda: len(reports) >= 2)
    db.close()
    after_close = len(reports)
    time.sleep(0.1)
    assert len(reports) == after_close
    with pytest.raises(consensus_db.ClosedError):
        db.start_maintenance(interval_s=1)


def test_interpreter_exit_with_maintenance_running_is_clean(tmp_path):
    code = f"""
import consensus_db
db = consensus_db.connect({str(tmp_path / 'exit.db')!r})
db.start_maintenance(interval_s=0.01)
db.record_agent_spawn("a", "S", "plan", "quality_gate", "gemini")
print("bye")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, "bye", "")


def test_invalid_maintenance_arguments(db):
    with pytest.raises(consensus_db.InvalidInputError, match="interval_s"):
        db.start_maintenance(interval_s=0)
    with pytest.raises(consensus_db.InvalidInputError, match="retention_days"):
        db.start_maintenance(interval_s=1, retention_days=-3)
    assert db.maintenance_cycles is None
