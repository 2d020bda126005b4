"""Issue 15, hardening at the boundary: named parameters, bad arguments and files,
exact paths, errors as documented, async close and cancellation. Each test fails on
the code before the fix; races are forced with hooks, never left to timing."""

from __future__ import annotations

import asyncio
import threading

import pytest

import consensus_db
from consensus_db import aio
from consensus_db.retry import RetryPolicy


# ---- 12. async: close and cancellation ---------------------------------------------------


def test_async_calls_after_close_raise_closed_error(db_path):
    async def main():
        db = await aio.connect(db_path)
        await db.close()
        with pytest.raises(consensus_db.ClosedError):
            await db.get_agent_name("a")
        with pytest.raises(consensus_db.ClosedError):
            await db.record_agent_spawn("a", "S", "plan", "quality_gate", "g")
        with pytest.raises(consensus_db.ClosedError):
            await db.close()
        assert db.closed

    asyncio.run(main())


def _blocked_writer(db_path):
    """An async store whose next write is held mid-call: a second store holds the write
    lock, the write gets BusyError at once (busy_timeout 0) and its retry sleeps in a
    hook that signals `started` and waits for `go`."""
    started, go = threading.Event(), threading.Event()

    def sleep(_delay):
        started.set()
        go.wait(30)

    policy = RetryPolicy(max_attempts=3, initial_delay=0.001, jitter=False, sleep=sleep)
    return started, go, policy


def test_a_cancelled_running_write_is_finished_when_the_cancellation_arrives(db_path):
    holder = consensus_db.connect(db_path)
    started, go, policy = _blocked_writer(db_path)

    async def main():
        db = await aio.connect(db_path, retry=policy, pragmas={"busy_timeout": 0})
        lock = holder.transaction("immediate")
        lock.__enter__()
        task = asyncio.ensure_future(db.record_agent_spawn("a1", "S", "plan", "quality_gate", "g"))
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 30)  # the write is running
        task.cancel()
        for _ in range(5):
            await asyncio.sleep(0)
        finished_early = task.done()  # before the write had any outcome
        lock.__exit__(None, None, None)
        go.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The cancellation came through only after the write's outcome: here, a commit.
        written = db.sync.get_agent_name("a1")
        await db.close()
        return finished_early, written

    try:
        finished_early, written = asyncio.run(main())
    finally:
        go.set()
        holder.close()
    assert not finished_early
    assert written == "g"


def test_a_cancelled_queued_write_never_runs(db_path):
    holder = consensus_db.connect(db_path)
    started, go, policy = _blocked_writer(db_path)

    async def main():
        db = await aio.connect(db_path, pool_size=1, retry=policy, pragmas={"busy_timeout": 0})
        lock = holder.transaction("immediate")
        lock.__enter__()
        first = asyncio.ensure_future(db.record_agent_spawn("a1", "S", "plan", "quality_gate", "g"))
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 30)
        queued = asyncio.ensure_future(db.record_agent_spawn("a2", "S", "plan", "quality_gate", "g"))
        await asyncio.sleep(0)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        lock.__exit__(None, None, None)
        go.set()
        await first
        names = (db.sync.get_agent_name("a1"), db.sync.get_agent_name("a2"))
        await db.close()
        return names

    try:
        names = asyncio.run(main())
    finally:
        go.set()
        holder.close()
    assert names == ("g", None)
