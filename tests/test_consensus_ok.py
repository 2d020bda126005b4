"""``consensus_runs.consensus_ok`` as the predecessor writes it (issue 27, item 2): 1 on
every run — the run of an artifact ("an artifact exists") and the run of a synthesis
("a synthesis exists") — with ``degraded`` from the synthesis. Whether a consensus
succeeded stays the synthesis's status. Runs this store wrote with 0 are corrected by
a migration step that the open report names.
"""

from __future__ import annotations

import sqlite3

import consensus_db
import predecessor
from conftest import ph, stdlib_rows
from test_field_files import layout_1_file, legacy_file, synthesis

# The predecessor's run listing reads the flag as it stored it.
RUNS = "SELECT spec_id, consensus_ok, degraded FROM consensus_runs ORDER BY id"


def flags(db) -> list:
    """(spec_id, consensus_ok, degraded) of every run, as plain ints on both backends."""
    return [(s, int(ok), int(d)) for s, ok, d in db.query(RUNS)]


def test_every_run_this_store_writes_has_consensus_ok_and_success_is_the_status(store_target):
    with consensus_db.connect(store_target) as db:
        db.store_artifact("A", "spec-plan", "gemini", "{}", run_id="r1")  # an artifact's run, no synthesis
        db.store_artifact("F", "spec-plan", "gemini", "{}", run_id="r2")
        db.store_synthesis("F", "spec-plan", "# no consensus", status="failed", degraded=True, run_id="r2")
        db.store_synthesis("S", "spec-plan", "# merged", status="success", run_id="r3")  # a run of its own
        got = flags(db)
        statuses = {s: db.query_latest_synthesis(s, "spec-plan") for s in "FS"}
    print(f"\n[{store_target if isinstance(store_target, str) else 'sqlite'}] runs (spec, consensus_ok, degraded): {got}")
    assert got == [("A", 1, 0), ("F", 1, 1), ("S", 1, 0)]
    assert statuses["F"].status == "failed" and statuses["F"].degraded
    assert statuses["S"].status == "success" and not statuses["S"].degraded


def test_runs_written_with_0_are_corrected_and_the_report_says_so(tmp_path):
    path = tmp_path / "older.db"
    with consensus_db.connect(path) as db:
        db.store_artifact("A", "spec-plan", "gemini", "{}", run_id="r1")
        db.store_synthesis("B", "spec-plan", "# failed", status="failed", run_id="r2")
    conn = sqlite3.connect(path)  # what the previous release wrote: 0 until a successful synthesis
    conn.execute("UPDATE consensus_runs SET consensus_ok = 0")
    conn.commit()
    conn.close()
    with consensus_db.connect(path, read_only=True) as db:  # read-only: nothing changes
        assert db.open_report["layout_steps"] == []
    assert stdlib_rows(path, "SELECT count(*) FROM consensus_runs WHERE consensus_ok = 0") == [(2,)]
    with consensus_db.connect(path) as db:
        steps = db.open_report["layout_steps"]
        assert db.query_latest_synthesis("B", "spec-plan").status == "failed"
    print(f"\nopen_report['layout_steps'] = {steps}")
    assert [s for s in steps if s.startswith("consensus_ok")] == [
        "consensus_ok 0 -> 1 on 2 runs (as the predecessor writes it: the run has an artifact or a synthesis; "
        "success is the synthesis status)"]
    assert stdlib_rows(path, RUNS) == [("A", 1, 0), ("B", 1, 0)]


def test_backfilled_legacy_runs_get_1_whatever_their_synthesis_status(tmp_path):
    """A legacy row becomes a run because an artifact or a synthesis exists — the
    predecessor's own reason for 1 — so a backfilled run gets 1 even when its
    synthesis failed (the failure stays in its status)."""
    path = tmp_path / "legacy.db"
    legacy_file(path)  # SPEC-1 and SPEC-2 artifacts, a successful SPEC-1 synthesis
    predecessor.run(path, "synthesis", build="legacy",
                    synthesis=synthesis("SPEC-7", "spec-plan", "# failed", status="failed", degraded=1))
    with consensus_db.connect(path) as db:
        got = flags(db)
        failed = db.query_latest_synthesis("SPEC-7", "spec-plan")
    assert got and all(ok == 1 for _, ok, _ in got)
    assert ("SPEC-7", 1, 1) in got and failed.status == "failed" and failed.degraded


def test_this_stores_first_layout_is_corrected_when_rebuilt(tmp_path):
    path = tmp_path / "layout1.db"
    layout_1_file(path)  # consensus_ok NULL on both runs
    with consensus_db.connect(path) as db:
        steps = db.open_report["layout_steps"]
    assert any(s.startswith("consensus_ok 0 -> 1 on 2 runs") for s in steps), steps
    assert stdlib_rows(path, "SELECT count(*) FROM consensus_runs WHERE consensus_ok = 1") == [(2,)]


def test_postgresql_runs_written_false_are_corrected_by_revision_2(pg_cluster, pg_url):
    with consensus_db.connect(pg_url) as db:
        db.store_artifact("A", "spec-plan", "gemini", "{}", run_id="r1")
    schema = pg_url.split("search_path%3D")[1]
    # As revision 1 left it: false on the run, the meta row of revision 1 only.
    pg_cluster.psql(f"UPDATE {schema}.consensus_runs SET consensus_ok = false;"
                    f" DELETE FROM {schema}.consensus_db_meta WHERE key = 'pg_revision'")
    with consensus_db.connect(pg_url) as db:
        assert flags(db) == [("A", 1, 0)]
        db.store_synthesis("A", "spec-plan", "# s", status="failed", run_id="r1")
        assert db.query(ph(db, "SELECT consensus_ok FROM consensus_runs WHERE spec_id = ?"), ("A",)) == [(True,)]
