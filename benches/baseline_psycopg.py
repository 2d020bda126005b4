"""The PostgreSQL baseline: the same operations written in Python on psycopg 3 with
psycopg_pool, as a performance-minded user would (a pool, prepared statements by
psycopg's automatic preparation, the binary C extension). It runs against the schema
consensus-db creates and calls the same server-side functions for artifacts, so both
sides do the same server work and the difference is the client. `PsycopgStore` is the
sync client (ConnectionPool, for threads and processes), `AsyncPsycopgStore` its asyncio
twin (AsyncConnectionPool), on the same SQL."""

from __future__ import annotations

import json
from typing import Iterable, Mapping, Optional

import psycopg  # noqa: F401  (psycopg_pool needs it; a missing one fails here, by name)
from psycopg_pool import AsyncConnectionPool, ConnectionPool

SPAWN = (
    "INSERT INTO agent_executions (agent_id, spec_id, stage, phase_type, agent_name, run_id, spawned_at) "
    "VALUES (%s, %s, %s, %s, %s, %s, consensus_db_now_text()) ON CONFLICT (agent_id) DO UPDATE SET "
    "spec_id = excluded.spec_id, stage = excluded.stage, phase_type = excluded.phase_type, "
    "agent_name = excluded.agent_name, run_id = excluded.run_id, spawned_at = excluded.spawned_at, "
    "completed_at = NULL, response_text = NULL, extraction_error = NULL"
)
SPAWN_INFO = "SELECT phase_type, stage FROM agent_executions WHERE agent_id = %s"
STORE_ARTIFACT = "SELECT consensus_db_store_artifact(%s, %s, %s, %s, %s, %s, %s, NULL)"
# Autocommit (each call its own transaction, as the store's) and every statement prepared.
CONNECTION = {"autocommit": True, "prepare_threshold": 0}


def artifact_params(spec_id, stage, agent_name, content_json, response_text, run_id, model_version) -> tuple:
    if not isinstance(content_json, str):
        content_json = json.dumps(content_json)
    return (spec_id, stage, agent_name, content_json, response_text, run_id, model_version)


class PsycopgStore:
    def __init__(self, url: str, pool_size: int = 10):
        self.pool = ConnectionPool(url, min_size=1, max_size=pool_size, open=True, kwargs=CONNECTION)

    def close(self) -> None:
        self.pool.close()

    def record_agent_spawn(self, agent_id, spec_id, stage, phase_type, agent_name, run_id=None) -> None:
        with self.pool.connection() as c:
            c.execute(SPAWN, (agent_id, spec_id, stage, phase_type, agent_name, run_id))

    def get_agent_spawn_info(self, agent_id) -> Optional[tuple]:
        with self.pool.connection() as c:
            return c.execute(SPAWN_INFO, (agent_id,)).fetchone()

    def record_agent_completion(self, agent_id, response_text) -> bool:
        with self.pool.connection() as c:
            cur = c.execute("UPDATE agent_executions SET completed_at = consensus_db_now_text(), response_text = %s "
                            "WHERE agent_id = %s", (response_text, agent_id))
            return cur.rowcount > 0

    def store_artifact(self, spec_id, stage, agent_name, content_json, *, response_text=None, run_id=None,
                       model_version=None) -> int:
        params = artifact_params(spec_id, stage, agent_name, content_json, response_text, run_id, model_version)
        with self.pool.connection() as c:
            return c.execute(STORE_ARTIFACT, params).fetchone()[0]

    def store_artifacts(self, artifacts: Iterable[Mapping]) -> list:
        items = [dict(a) for a in artifacts]
        with self.pool.connection() as c, c.transaction():
            runs = {}
            run_of = []
            for a in items:
                key = (a["spec_id"], a["stage"], a.get("run_id"))
                if key not in runs:
                    runs[key] = c.execute("SELECT consensus_db_open_run(%s, %s, %s)", key).fetchone()[0]
                run_of.append(runs[key])
            contents = [a["content_json"] if isinstance(a["content_json"], str) else json.dumps(a["content_json"])
                        for a in items]
            rows = c.execute(
                "INSERT INTO agent_outputs (run_id, agent_name, model_version, content, content_text, output_timestamp,"
                " response_text) SELECT u.run, u.agent, u.model, u.content::jsonb, u.content, consensus_db_now_ms(),"
                " u.response FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[], %s::text[])"
                " WITH ORDINALITY AS u(run, agent, model, content, response, ord) ORDER BY u.ord RETURNING id",
                (run_of, [a["agent_name"] for a in items], [a.get("model_version") for a in items], contents,
                 [a.get("response_text") for a in items]),
            ).fetchall()
            return sorted(r[0] for r in rows)

    def query_artifacts(self, spec_id, stage) -> list:
        with self.pool.connection() as c:
            return c.execute(
                "SELECT o.id, o.agent_name, o.content_text, o.response_text, r.orchestrator_run_id, o.output_timestamp,"
                " o.model_version FROM consensus_runs r JOIN agent_outputs o ON o.run_id = r.id"
                " WHERE r.spec_id = %s AND r.stage = %s ORDER BY o.output_timestamp, o.id", (spec_id, stage)
            ).fetchall()


class AsyncPsycopgStore:
    """`PsycopgStore`'s calls as coroutines on an AsyncConnectionPool; open with `await open()`."""

    def __init__(self, url: str, pool_size: int = 10):
        self.pool = AsyncConnectionPool(url, min_size=1, max_size=pool_size, open=False, kwargs=CONNECTION)

    async def open(self) -> "AsyncPsycopgStore":
        await self.pool.open()
        return self

    async def close(self) -> None:
        await self.pool.close()

    async def record_agent_spawn(self, agent_id, spec_id, stage, phase_type, agent_name, run_id=None) -> None:
        async with self.pool.connection() as c:
            await c.execute(SPAWN, (agent_id, spec_id, stage, phase_type, agent_name, run_id))

    async def get_agent_spawn_info(self, agent_id) -> Optional[tuple]:
        async with self.pool.connection() as c:
            return await (await c.execute(SPAWN_INFO, (agent_id,))).fetchone()

    async def store_artifact(self, spec_id, stage, agent_name, content_json, *, response_text=None, run_id=None,
                             model_version=None) -> int:
        params = artifact_params(spec_id, stage, agent_name, content_json, response_text, run_id, model_version)
        async with self.pool.connection() as c:
            row = await (await c.execute(STORE_ARTIFACT, params)).fetchone()
            assert row is not None
            return row[0]
