"""A small multi-agent orchestrator on consensus-db, sync and async.

    python examples/orchestrator.py [DB_PATH]

It fans one spec's stages out to several (simulated) LLM agents with asyncio, records
every spawn and completion, stores each agent's JSON, merges a synthesis, then reports
with the sync API. The tests run it and type-check it with ``mypy --strict``.

No bookkeeping lives in memory: the agents a stage waits for are declared in the store
and waited for there (``expect_agents``, ``wait_for_agents``: woken by commits, no polling;
docs/coordination.md); who synthesizes a stage is a claim in the store (a second
orchestrator on the same file finds the stage claimed and leaves it alone; a crashed one
is taken over after its lease, and its late write is refused), and every write carries an
idempotency key, so an orchestrator restarted mid-stage repeats its writes without
storing anything twice (docs/claims.md).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import tempfile
import uuid
from pathlib import Path

import consensus_db
from consensus_db import aio
from consensus_db.results import PhaseType
from consensus_db.retry import RetryPolicy, retry

AGENTS = ("gemini", "claude", "code")
STAGES = ("plan", "tasks", "implement")
OWNER = f"orchestrator-{os.getpid()}"  # unique per orchestrator process
LEASE_S = 60.0
# This orchestration's id: its executions, runs and keys are named by it, so running the
# example again on the same file is a new orchestration, not a repeat of this one's writes.
ORCHESTRATION = uuid.uuid4().hex[:8]


class FlakyModelError(Exception):
    """A rate-limited model call (HTTP 429): worth retrying."""

    status_code = 429


# A policy that does not really sleep, so the example runs at once; the decorated
# coroutine keeps its signature for type checkers (ParamSpec).
async def _no_sleep(_delay: float) -> None:
    await asyncio.sleep(0)


@retry(RetryPolicy(max_attempts=4, sleep=_no_sleep, jitter=False))
async def call_model(agent: str, spec_id: str, stage: str, rng: random.Random) -> str:
    """A stand-in for an LLM call: fails now and then, then answers with JSON."""
    await asyncio.sleep(0)
    if rng.random() < 0.3:
        raise FlakyModelError(f"{agent}: rate limited")
    verdict = "approve" if rng.random() < 0.8 else "revise"
    return json.dumps({"agent": agent, "spec": spec_id, "stage": stage, "verdict": verdict})


async def run_agent(db: aio.AsyncStore, spec_id: str, stage: str, agent: str, rng: random.Random) -> int | None:
    agent_id = f"{spec_id}/{stage}/{agent}@{ORCHESTRATION}"
    phase: PhaseType = "quality_gate" if stage == "plan" else "regular_stage"
    await db.record_agent_spawn(agent_id, spec_id, stage, phase, agent, run_id=f"{spec_id}-{stage}-{ORCHESTRATION}")
    response = await call_model(agent, spec_id, stage, rng)
    await db.record_agent_completion(agent_id, response)
    try:
        content = json.loads(response)
    except ValueError as exc:
        await db.record_extraction_failure(agent_id, response, str(exc))
        return None
    # Keyed by the execution: a restarted orchestrator repeating it stores nothing twice.
    return await db.store_artifact(
        spec_id,
        stage,
        agent,
        content,
        response_text=response,
        run_id=f"{spec_id}-{stage}-{ORCHESTRATION}",
        model_version="sim-1",
        idempotency_key=f"artifact:{agent_id}",
    )


async def run_stage(db: aio.AsyncStore, spec_id: str, stage: str, rng: random.Random) -> consensus_db.Synthesis | None:
    run_id = f"{spec_id}-{stage}-{ORCHESTRATION}"
    claim = await db.claim_stage(spec_id, stage, run_id, owner=OWNER, lease_s=LEASE_S)
    if claim is None:  # another orchestrator holds the stage: it synthesizes it, not us
        print(f"{stage}: claimed by another orchestrator, skipped")
        return None
    try:
        # The run's expected agents live in the store, so any process can wait for them and
        # a wait begun before every agent is spawned does not end early.
        await db.expect_agents(spec_id, stage, run_id, [f"{spec_id}/{stage}/{a}@{ORCHESTRATION}" for a in AGENTS])
        agents = [asyncio.create_task(run_agent(db, spec_id, stage, agent, rng)) for agent in AGENTS]
        done = await db.wait_for_agents(spec_id, stage, run_id=run_id, timeout=60)  # woken by their commits
        await asyncio.gather(*agents)
        print(f"{stage}: {len(done['completed'])} agents completed, {len(done['failed'])} failed")
        claim = await db.renew_claim(claim)  # still ours: the agents took a while
        artifacts = await db.query_artifacts(spec_id, stage)
        verdicts = [a.content()["verdict"] for a in artifacts]
        agreements = sorted({v for v in verdicts if verdicts.count(v) > 1})
        conflicts = sorted({v for v in verdicts if verdicts.count(v) == 1})
        # Under the claim: refused (StaleClaimError) if another orchestrator took the stage over.
        await db.store_synthesis(
            spec_id,
            stage,
            f"# {spec_id} {stage}\n\n{len(artifacts)} agents answered.",
            artifacts_count=len(artifacts),
            agreements=agreements,
            conflicts=conflicts,
            degraded=len(artifacts) < len(AGENTS),
            run_id=run_id,
            claim=claim,
            idempotency_key=f"synthesis:{run_id}",
        )
        print(f"{stage}: synthesized under claim token {claim.token}")
    finally:
        await db.release_claim(claim)
    return await db.query_latest_synthesis(spec_id, stage)


async def orchestrate(path: Path, spec_id: str) -> list[consensus_db.Synthesis]:
    rng = random.Random(7)
    async with aio.connect(path, pool_size=4) as db:
        # A rival orchestrator (another owner) holds the last stage for a moment: this one skips it.
        rival = await db.claim_stage(spec_id, STAGES[-1], owner="orchestrator-rival", lease_s=LEASE_S)
        results = [s for stage in STAGES[:-1] if (s := await run_stage(db, spec_id, stage, rng)) is not None]
        skipped = await run_stage(db, spec_id, STAGES[-1], rng)
        assert skipped is None and rival is not None
        await db.release_claim(rival)  # released: the stage is free again, and this one takes it
        last = await run_stage(db, spec_id, STAGES[-1], rng)
        assert last is not None
        results.append(last)
        async with db.transaction() as tx:
            rows = await tx.query("SELECT count(*) AS n FROM agent_executions WHERE spec_id = ?", [spec_id])
            print(f"{rows.columns[0]} executions recorded: {rows[0][0]}")
        return results


def report(path: Path, spec_id: str) -> None:
    with consensus_db.connect(path) as db:
        info = db.get_agent_spawn_info(f"{spec_id}/plan/gemini@{ORCHESTRATION}")
        if info is not None:
            print(f"gemini on plan: phase {info.phase_type}, stage {info.stage}")
        for stage in STAGES:
            latest = db.query_latest_synthesis(spec_id, stage)
            if latest is None:
                continue
            when = latest.created_at_datetime.isoformat(timespec="seconds")
            print(f"{stage:10} {latest.status:8} agreements={latest.agreement_list()} at {when}")
        health = db.health()
        state = db.pool_state()
        print(
            f"{health['rows']['agent_outputs']} outputs, {state['connections']} pooled connections, "
            f"needs vacuum: {health['needs_vacuum']}"
        )


def main(argv: list[str]) -> int:
    path = Path(argv[1]) if len(argv) > 1 else Path(tempfile.mkdtemp(prefix="orchestrator-")) / "consensus.db"
    spec_id = "SPEC-042"
    syntheses = asyncio.run(orchestrate(path, spec_id))
    print(f"{len(syntheses)} stages merged into {path}")
    report(path, spec_id)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
