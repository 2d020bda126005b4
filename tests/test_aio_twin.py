"""The async twin's shape (aiosqlite's): `async with aio.connect()` without `await`, a
coroutine for every sync operation, async transactions, ClosedError after close."""

from __future__ import annotations

import asyncio
import inspect

import pytest

import consensus_db
from consensus_db import aio


def test_connect_works_as_async_with_await_and_asyncio_run(db_path):
    async def entered():
        async with aio.connect(db_path) as db:
            await db.record_agent_spawn("a1", "S", "plan", "quality_gate", "gemini")
            return db, await db.get_agent_spawn_info("a1")

    db, info = asyncio.run(entered())
    assert info == ("quality_gate", "plan") and info.stage == "plan"
    assert db.closed and db.sync.closed  # the block closed it

    async def awaited():
        store = await aio.connect(db_path)
        try:
            return await store.get_agent_name("a1")
        finally:
            await store.close()

    assert asyncio.run(awaited()) == "gemini"
    store = asyncio.run(aio.connect(db_path))  # a coroutine: asyncio.run takes it too
    try:
        assert isinstance(store, aio.AsyncStore) and not store.closed
    finally:
        store.sync.close()


def test_every_sync_operation_has_a_coroutine_twin():
    public = {n for n, _ in inspect.getmembers(consensus_db.Store) if not n.startswith("_")}
    methods = {n for n in public if callable(getattr(consensus_db.Store, n))}
    for name in sorted(methods - set(aio.NOT_MIRRORED)):
        twin = getattr(aio.AsyncStore, name, None)
        assert twin is not None, f"AsyncStore lacks {name}"
        assert inspect.iscoroutinefunction(twin), f"AsyncStore.{name} is not a coroutine function"
        assert twin.__name__ == name and name in (twin.__doc__ or "")
        sync_params = inspect.signature(getattr(consensus_db.Store, name)).parameters
        twin_params = inspect.signature(twin).parameters
        assert list(twin_params)[1:] == list(sync_params)[1:], name  # help() shows the real parameters
        assert [p.default for p in twin_params.values()][1:] == [p.default for p in sync_params.values()][1:]
    for name in aio.NOT_MIRRORED:
        assert name in public, f"NOT_MIRRORED names {name}, which Store does not have"
    for name in sorted(public - methods - set(aio.NOT_MIRRORED)):  # attributes that do no I/O
        assert isinstance(getattr(aio.AsyncStore, name, None), property), f"AsyncStore lacks the property {name}"
    assert not inspect.iscoroutinefunction(aio.AsyncStore.transaction)  # an async context manager


def test_async_transaction_commits_rolls_back_and_nests(db_path):
    async def main():
        async with aio.connect(db_path) as db:
            async with db.transaction() as tx:
                await tx.execute(
                    "INSERT INTO agent_executions (agent_id, spec_id, stage, phase_type, agent_name, spawned_at) "
                    "VALUES (?, 'S', 'plan', 'quality_gate', 'g', '2026-01-01 00:00:00')",
                    ["kept"],
                )
                first_rowid = tx.lastrowid
                async with tx.savepoint():
                    await tx.execute("DELETE FROM agent_executions")
                    inside = await tx.query("SELECT count(*) AS n FROM agent_executions")
                rows = await tx.query("SELECT agent_id FROM agent_executions")
            with pytest.raises(ZeroDivisionError):
                async with db.transaction("exclusive") as tx:
                    await tx.execute("DELETE FROM agent_executions")
                    1 / 0  # noqa: B018
            after = await db.query("SELECT agent_id AS id FROM agent_executions")
            return first_rowid, inside, rows, after

    first_rowid, inside, rows, after = asyncio.run(main())
    assert first_rowid > 0 and inside == [(0,)] and inside.columns == ("n",)
    assert rows == [] and after == []  # the savepoint was released: its delete stands


def test_async_savepoint_rolls_back_only_its_part(db_path):
    async def main():
        async with aio.connect(db_path) as db:
            await db.record_agent_spawn("a1", "S", "plan", "quality_gate", "g")
            async with db.transaction() as tx:
                with pytest.raises(KeyError):
                    async with tx.savepoint():
                        await tx.execute("DELETE FROM agent_executions")
                        raise KeyError("undo the delete")
                await tx.execute("UPDATE agent_executions SET agent_name = 'h'")
            rows = await db.query("SELECT agent_id, agent_name FROM agent_executions")
            return rows

    rows = asyncio.run(main())
    assert rows == [("a1", "h")] and rows.dicts() == [{"agent_id": "a1", "agent_name": "h"}]


def test_stats_pool_state_execute_and_maintenance_are_coroutines(db_path):
    cycles: list = []

    async def main():
        async with aio.connect(db_path, pool_size=2) as db:
            changed = await db.execute(
                "INSERT INTO agent_executions (agent_id, spec_id, stage, phase_type, agent_name, spawned_at) "
                "VALUES ('old', 'S', 'plan', 'quality_gate', 'g', '2001-01-01 00:00:00')"
            )
            stats = await db.stats()
            state = await db.pool_state()
            await db.start_maintenance(0.05, retention_days=30, on_cycle=cycles.append)
            while not cycles:
                await asyncio.sleep(0.01)
            await db.stop_maintenance()
            report = await db.checkpoint()
            left = await db.query("SELECT count(*) FROM agent_executions")
            return changed, stats, state, report, left

    changed, stats, state, report, left = asyncio.run(main())
    assert changed == 1 and stats["page_size"] > 0 and state["max_size"] == 2
    assert set(report) == {"mode", "busy", "log_frames", "checkpointed_frames", "blocked"} and report["mode"] == "truncate"
    assert report["blocked"] is None
    assert cycles[0]["executions_deleted"] == 1 and left == [(0,)]


def test_closed_error_after_close_for_generated_and_handwritten_calls(db_path):
    async def main():
        db = await aio.connect(db_path)
        await db.close()
        failures = []
        for call in (db.health(), db.query("SELECT 1"), db.store_artifact("S", "p", "g", {}), db.close()):
            with pytest.raises(consensus_db.ClosedError):
                await call
            failures.append(call)
        with pytest.raises(consensus_db.ClosedError):
            db.transaction()
        return len(failures)

    assert asyncio.run(main()) == 4


def test_a_bad_pool_size_is_refused_when_connect_is_called(db_path):
    with pytest.raises(consensus_db.InvalidInputError, match="pool_size.*0"):
        aio.connect(db_path, pool_size=0)
    assert not db_path.exists()


def test_a_transaction_cancelled_while_waiting_for_the_lane_does_not_keep_it(db_path):
    import threading
    import time

    async def main():
        async with aio.connect(db_path) as db:
            held = threading.Event()
            release = threading.Event()

            def hold() -> None:  # another thread's write transaction holds the lane
                with db.sync.transaction():
                    held.set()
                    release.wait(10)

            holder = threading.Thread(target=hold)
            holder.start()
            held.wait(10)

            async def enter() -> None:
                async with db.transaction():
                    raise AssertionError("the block never runs: the task was cancelled in BEGIN")

            task = asyncio.ensure_future(enter())
            await asyncio.sleep(0.1)  # BEGIN is waiting for the lane on the transaction's thread
            task.cancel()
            await asyncio.sleep(0.05)
            release.set()  # the waiting BEGIN now goes through, then is rolled back
            with pytest.raises(asyncio.CancelledError):
                await task
            holder.join(10)
            started = time.monotonic()
            await asyncio.wait_for(db.record_agent_spawn("after", "S", "plan", "quality_gate", "g"), 5)
            return time.monotonic() - started, db.lane_stats()["queued"], await db.get_agent_name("after")

    elapsed, queued, name = asyncio.run(main())
    assert name == "g" and queued == 0 and elapsed < 5
