"""The async twin: concurrent coroutines, a responsive loop, typed errors. Tests taking
`store_target` run on both backends (SQLite writes go through the lane, PostgreSQL calls
through the executor)."""

from __future__ import annotations

import asyncio

import pytest

import consensus_db
from consensus_db import aio


def test_fifty_concurrent_writes_read_back(store_target):
    async def main():
        async with await aio.connect(store_target) as db:
            ticks = 0
            done = False

            async def ticker():
                nonlocal ticks
                while not done:
                    ticks += 1
                    await asyncio.sleep(0)

            tick_task = asyncio.ensure_future(ticker())
            writes = [db.store_artifact("S", "plan", f"agent-{i}", {"i": i}) for i in range(25)]
            writes += [db.record_agent_spawn(f"a{i}", "S", "plan", "quality_gate", "gemini") for i in range(25)]
            results = await asyncio.gather(*writes)
            done = True
            await tick_task
            artifacts = await db.query_artifacts("S", "plan")
            infos = await asyncio.gather(*[db.get_agent_spawn_info(f"a{i}") for i in range(25)])
            return results, artifacts, infos, ticks

    results, artifacts, infos, ticks = asyncio.run(main())
    ids = results[:25]
    assert len(set(ids)) == 25 and results[25:] == [None] * 25
    assert sorted(a.content()["i"] for a in artifacts) == list(range(25))
    assert infos == [("quality_gate", "plan")] * 25
    assert ticks > 1  # the loop kept running while the writes were in flight


def test_errors_keep_their_types_and_close_closes(store_target):
    async def main():
        db = await aio.connect(store_target)
        with pytest.raises(consensus_db.InvalidInputError, match="content_json"):
            await db.store_artifact("S", "plan", "g", "{nope")
        assert await db.get_schema_version() == consensus_db.LATEST_SCHEMA_VERSION  # a new file
        health = await db.health()
        await db.close()
        return db, health

    db, health = asyncio.run(main())
    assert health["rows"]["agent_outputs"] == 0
    assert db.sync.closed
    with pytest.raises(consensus_db.ClosedError):
        db.sync.get_agent_name("x")


def _threads() -> int:
    """Every thread of the process, Rust ones included."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("Threads:"))


# SQLite only: the write lane's groups; PostgreSQL calls run on the executor's threads.
def test_a_gather_of_many_writes_holds_no_thread_per_write_and_groups(db_path):
    async def main():
        async with await aio.connect(db_path, pool_size=4) as db:
            before = _threads()
            peak = before
            pending = [asyncio.ensure_future(db.store_artifact("S", "plan", f"g{i}", {"i": i})) for i in range(200)]
            pending += [
                asyncio.ensure_future(db.record_agent_spawn(f"a{i}", "S", "plan", "quality_gate", "g")) for i in range(100)
            ]
            while not all(t.done() for t in pending):
                peak = max(peak, _threads())
                await asyncio.sleep(0)
            ids = [t.result() for t in pending[:200]]
            done = await asyncio.gather(
                *[db.record_agent_completion(f"a{i}", "ok") for i in range(100)], db.record_agent_completion("nobody", "x")
            )
            return before, peak, ids, done, db.lane_stats(), db.sync.query_artifacts("S", "plan")

    before, peak, ids, done, stats, artifacts = asyncio.run(main())
    assert len(set(ids)) == 200 and len(artifacts) == 200
    assert done == [True] * 100 + [False]
    assert peak <= before + 2  # 300 writes in flight, at most one lane thread more
    assert stats["members"] >= 401 and max(stats["sizes"]) > 1


def test_async_write_errors_keep_their_types(store_target):
    async def main():
        async with await aio.connect(store_target) as db:
            with pytest.raises(consensus_db.InvalidInputError, match="phase_type"):
                await db.record_agent_spawn("a", "S", "plan", "nope", "g")
            with pytest.raises(consensus_db.InvalidInputError, match="agent_id"):
                await db.record_agent_completion("", "x")
            results = await asyncio.gather(
                db.store_artifact("S", "plan", "g", {"ok": 1}), db.store_artifact("S", "plan", "g", "{bad"),
                return_exceptions=True,
            )
            return results

    results = asyncio.run(main())
    assert isinstance(results[0], int) and isinstance(results[1], consensus_db.InvalidInputError)


# SQLite only: a write submitted to the lane cannot be recalled; on PostgreSQL a queued call never runs.
def test_a_cancelled_submitted_write_has_a_known_outcome(db_path):
    async def main():
        async with await aio.connect(db_path) as db:
            tasks = [asyncio.ensure_future(db.store_artifact("S", "plan", f"g{i}", {"i": i})) for i in range(50)]
            await asyncio.sleep(0)  # every write submitted
            for t in tasks:
                t.cancel()
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            stored = len(db.sync.query_artifacts("S", "plan"))
            return outcomes, stored

    outcomes, stored = asyncio.run(main())
    # Submitted writes cannot be recalled: each was waited for, so when the
    # cancellation arrived its write had committed.
    assert all(isinstance(o, asyncio.CancelledError) for o in outcomes)
    assert stored == 50


def test_writes_racing_close_commit_or_raise_closed_error(store_target):
    async def main():
        db = await aio.connect(store_target)
        writes = [asyncio.ensure_future(db.record_agent_spawn(f"a{i}", "S", "plan", "quality_gate", "g")) for i in range(50)]
        await asyncio.sleep(0)
        await db.close()
        outcomes = await asyncio.gather(*writes, return_exceptions=True)
        with pytest.raises(consensus_db.ClosedError):
            await db.store_artifact("S", "plan", "g", {})
        return outcomes

    outcomes = asyncio.run(main())
    assert all(o is None or isinstance(o, consensus_db.ClosedError) for o in outcomes)
    with consensus_db.connect(store_target) as db:
        committed = sum(db.get_agent_name(f"a{i}") == "g" for i in range(50))
    assert committed == sum(o is None for o in outcomes)


def test_a_submitted_write_that_meets_another_process_lock_is_retried_by_policy(backend):
    import time

    from consensus_db.retry import RetryPolicy

    backend.connect().close()
    target, busy = backend.busy(50)
    slept = []

    def sleeper(delay):  # the other process must let go: wait for real, briefly
        slept.append(delay)
        time.sleep(delay)

    policy = RetryPolicy(max_attempts=20, initial_delay=0.1, max_delay=0.3, jitter=False, sleep=sleeper)

    async def main():
        async with await aio.connect(target, **busy, retry=policy) as db:
            holder = backend.hold_lock(1.0)
            try:
                artifact_id = await db.store_artifact("S", "plan", "gemini", {"ok": True})
            finally:
                holder.wait(timeout=30)
            return artifact_id, [a.id for a in await db.query_artifacts("S", "plan")], db.sync.retry_count

    artifact_id, ids, retries = asyncio.run(main())
    assert ids == [artifact_id]
    assert slept and retries == len(slept), "the busy write (SQLite: the lane's BEGIN) should have been retried by the engine's policy"
