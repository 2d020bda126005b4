"""Maintenance in bounded steps: retention and incremental vacuum run in chunks, each its
own transaction and its own turn in the write lane, so writers get in between."""

from __future__ import annotations

import consensus_db
from conftest import stdlib_rows
from test_write_lane import start, wait_queued

BACKDATED = (
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
    " INSERT INTO agent_executions (agent_id, spec_id, stage, phase_type, agent_name, spawned_at, response_text)"
    " SELECT 'old-' || i, 'S', 'plan', 'regular_stage', 'gemini', '2020-01-01 00:00:00', ? FROM n"
)


def test_retention_deletes_in_chunks_each_a_turn_of_the_lane(db_path):
    with consensus_db.connect(db_path) as db:
        db.execute(BACKDATED, [20_000, "r" * 200])
        db.record_agent_spawn("young", "S", "plan", "quality_gate", "gemini")
        holds = db.lane_stats()["holds"]
        assert db.cleanup_old_executions(30) == 20_000
        chunks = db.lane_stats()["holds"] - holds
        assert chunks >= 3, chunks  # at most 16,384 rows a chunk: never the whole job in one hold
        assert db.get_agent_spawn_info("young") == ("quality_gate", "plan")
    assert stdlib_rows(db_path, "SELECT count(*) FROM agent_executions") == [(1,)]


def test_a_writer_queued_behind_a_retention_gets_its_turn_before_the_retention_ends(db_path):
    with consensus_db.connect(db_path) as db:
        db.execute(BACKDATED, [60_000, "r" * 200])
        with db.transaction():  # holds the lane: the retention, then the writer, queue behind it in order
            retention, cleaned = start(db.cleanup_old_executions, 30)
            wait_queued(db, 1)
            writer, wrote = start(db.record_agent_spawn, "new", "S", "plan", "quality_gate", "gemini")
            wait_queued(db, 2)
        writer.join(30)
        old_left = db.query("SELECT count(*) FROM agent_executions WHERE agent_id LIKE 'old-%'")[0][0]
        retention.join(60)
        print("old executions left when the writer's spawn returned:", old_left)
        assert wrote == {"value": None} and cleaned == {"value": 60_000}, (wrote, cleaned)
        assert old_left > 0  # the writer ran between chunks; one DELETE would have held the lane throughout


def test_incremental_vacuum_frees_in_chunks_and_a_page_limit_holds(db_path):
    with consensus_db.connect(db_path) as db:
        db.execute(BACKDATED, [20_000, "r" * 2000])
        db.execute("DELETE FROM agent_executions")
        free = db.stats()["freelist_count"]
        assert free > 10_000, free
        holds = db.lane_stats()["holds"]
        first = db.vacuum(pages=600)
        assert first["pages_freed"] >= 600 and db.stats()["freelist_count"] == free - 600, first
        report = db.vacuum()
        assert db.lane_stats()["holds"] - holds >= 4  # chunks of at most 16,384 pages, plus the checkpoints
        assert db.stats()["freelist_count"] == 0, report
