"""The async twin: concurrent coroutines, a responsive loop, typed errors."""

from __future__ import annotations

import asyncio

import pytest

import consensus_db
from consensus_db import aio


def test_fifty_concurrent_writes_read_back(db_path):
    async def main():
        async with await aio.connect(db_path) as db:
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


def test_errors_keep_their_types_and_close_closes(db_path):
    async def main():
        db = await aio.connect(db_path)
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
