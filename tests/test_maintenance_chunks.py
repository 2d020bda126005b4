"""Maintenance in bounded steps: retention and incremental vacuum run in chunks, each its
own transaction and its own turn in the write lane, so writers get in between."""

from __future__ import annotations

import pytest

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


def test_retention_reports_rows_done_of_the_total_after_each_chunk(db_path):
    with consensus_db.connect(db_path) as db:
        db.execute(BACKDATED, [20_000, "r" * 200])
        db.record_agent_spawn("young", "S", "plan", "quality_gate", "gemini")
        seen: list[tuple[int, int]] = []
        assert db.cleanup_old_executions(30, progress=lambda done, total: seen.append((done, total))) == 20_000
    print("progress calls:", seen)
    assert len(seen) >= 3 and seen[-1] == (20_000, 20_000), seen
    assert all(total == 20_000 for _, total in seen)  # counted before the first chunk
    assert [done for done, _ in seen] == sorted({done for done, _ in seen})  # rises with every chunk


def test_a_progress_returning_false_stops_retention_after_that_chunk_and_keeps_it(db_path):
    with consensus_db.connect(db_path) as db:
        db.execute(BACKDATED, [20_000, "r" * 200])
        first = db.cleanup_old_executions(30, progress=lambda done, total: False)
        assert 0 < first < 20_000, first
        assert db.query("SELECT count(*) FROM agent_executions") == [(20_000 - first,)]
        assert db.cleanup_old_executions(30) == 20_000 - first  # the next run deletes the rest


def test_a_progress_that_raises_stops_retention_and_the_exception_reaches_the_caller(db_path):
    calls: list[int] = []

    def progress(done: int, total: int) -> None:
        calls.append(done)
        if len(calls) == 2:
            raise KeyboardInterrupt("stop")

    with consensus_db.connect(db_path) as db:
        db.execute(BACKDATED, [20_000, "r" * 200])
        with pytest.raises(KeyboardInterrupt, match="stop"):
            db.cleanup_old_executions(30, progress=progress)
        assert db.query("SELECT count(*) FROM agent_executions") == [(20_000 - calls[-1],)]  # two chunks committed
        with pytest.raises(consensus_db.InvalidInputError, match="progress"):
            db.cleanup_old_executions(30, progress="not callable")


def test_incremental_vacuum_reports_pages_freed_of_the_free_pages(db_path):
    with consensus_db.connect(db_path) as db:
        db.execute(BACKDATED, [20_000, "r" * 2000])
        db.execute("DELETE FROM agent_executions")
        free = db.stats()["freelist_count"]
        seen: list[tuple[int, int]] = []
        db.vacuum(progress=lambda done, total: seen.append((done, total)))
        assert db.stats()["freelist_count"] == 0
        assert len(seen) >= 2 and seen[-1] == (free, free) and {t for _, t in seen} == {free}, seen
        stopped = db.vacuum(pages=0, progress=lambda done, total: False)
        assert stopped["pages_freed"] == 0


def test_the_checkpoint_after_a_vacuum_cuts_a_big_wal_in_turns_of_the_lane(db_path):
    with consensus_db.connect(db_path) as db:
        db.execute(BACKDATED, [25_000, "r" * 2000])  # one transaction: a WAL of ~100 MB
        wal = db.stats()["wal_size"]
        assert wal > 64 << 20, wal
        holds = db.lane_stats()["holds"]
        report = db.vacuum()
        turns = db.lane_stats()["holds"] - holds
        print(f"WAL {wal >> 20} MB cut in {turns} turns of the lane")
        # 16 MB a turn: the file is never truncated in one piece while writers wait.
        assert turns >= wal // (16 << 20), turns
        assert report["wal_bytes_after"] == 0 and report["checkpoint"]["mode"] == "truncate", report
        assert report["checkpoint_blocked"] is None
