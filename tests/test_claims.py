"""Claims: exactly-once consensus with fenced claims (issue 32 item 2), on both backends.

A claim on (spec_id, stage, branch_id) carries a fencing token that only grows; while
its lease is live no other owner can claim the stage, and a synthesis of the stage is
accepted only under its newest live claim. Leases run on the database's clock, which
the tests shift with the store's hidden hook (``_set_clock_offset``) instead of
sleeping for a lease. The race and the SIGKILL run real orchestrator processes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys

import pytest

import consensus_db
from consensus_db import aio

from conftest import ph

LEASE_S = 30.0


def syntheses(db, spec_id: str, stage: str) -> int:
    """Runs of a stage that hold a synthesis, read with SQL (not through the store's reader)."""
    sql = "SELECT count(*) FROM consensus_runs WHERE spec_id = ? AND stage = ? AND synthesis_json IS NOT NULL"
    return int(db.query(ph(db, sql), (spec_id, stage))[0][0])


def test_a_claims_token_only_grows_per_stage_and_another_owner_waits_out_the_lease(store_target):
    with consensus_db.connect(store_target) as db:
        a = db.claim_stage("S", "plan", "run-1", owner="orch-a", lease_s=LEASE_S)
        assert a is not None and (a.token, a.owner, a.run_id, a.took_over_from) == (1, "orch-a", "run-1", None)
        assert a.expires_at_ms - a.claimed_at_ms == 30_000 and a.lease_s == LEASE_S
        assert db.claim_stage("S", "plan", "run-1", owner="orch-b", lease_s=LEASE_S) is None
        assert db.query_claims("S") == [a]
        # Another stage, or another branch of the same stage, is a claim of its own.
        assert db.claim_stage("S", "tasks", owner="orch-b", lease_s=LEASE_S).token == 1
        assert db.claim_stage("S", "plan", owner="orch-b", lease_s=LEASE_S, branch_id="b1").token == 1
        # Released: claimable at once, with the next token (never a reused one).
        assert db.release_claim(a) is True and db.release_claim(a) is False
        b = db.claim_stage("S", "plan", owner="orch-b", lease_s=LEASE_S)
        assert (b.token, b.took_over_from) == (2, None)
        # Expired: taken over after the lease, by the database's clock.
        db._set_clock_offset(LEASE_S + 1)
        c = db.claim_stage("S", "plan", owner="orch-c", lease_s=LEASE_S)
        assert (c.token, c.took_over_from) == (3, "orch-b")
        # The same owner claiming again while its lease is live gets a new token.
        again = db.claim_stage("S", "plan", owner="orch-c", lease_s=LEASE_S)
        assert (again.token, again.took_over_from) == (4, "orch-c")
        with pytest.raises(consensus_db.StaleClaimError) as stale:
            db.renew_claim(c)
        assert (stale.value.token, stale.value.newest_token) == (3, 4)


def test_a_synthesis_is_refused_under_a_stale_claim_and_without_one_on_a_claimed_stage(store_target):
    with consensus_db.connect(store_target) as db:
        old = db.claim_stage("S", "plan", "run-1", owner="orch-a", lease_s=LEASE_S)
        with pytest.raises(consensus_db.StaleClaimError, match=r"live claim \(token 1, owner \"orch-a\"\)") as e:
            db.store_synthesis("S", "plan", "# merged", run_id="run-1")
        assert (e.value.stage, e.value.token, e.value.newest_token) == ("plan", None, 1)
        db._set_clock_offset(LEASE_S + 1)
        new = db.claim_stage("S", "plan", "run-1", owner="orch-b", lease_s=LEASE_S)
        with pytest.raises(consensus_db.StaleClaimError, match='token 1 on spec "S" stage "plan" is stale') as e:
            db.store_synthesis("S", "plan", "# late", run_id="run-1", claim=old)
        assert (e.value.spec_id, e.value.stage, e.value.token, e.value.newest_token) == ("S", "plan", 1, 2)
        assert syntheses(db, "S", "plan") == 0, "a refused write wrote nothing"
        db.store_synthesis("S", "plan", "# merged", run_id="run-1", claim=new)
        assert db.query_latest_synthesis("S", "plan").output_markdown == "# merged"
        # A claim of another stage is bad input, named.
        with pytest.raises(consensus_db.InvalidInputError, match="claim"):
            db.store_synthesis("S", "tasks", "# x", claim=new)
        with pytest.raises(consensus_db.InvalidInputError, match="claim"):
            db.store_synthesis("S", "plan", "# x", claim="token-2")  # type: ignore[arg-type]
        # Past its lease, the holder's own claim no longer writes either (it survives nothing but its lease).
        db._set_clock_offset(2 * LEASE_S + 2)
        with pytest.raises(consensus_db.StaleClaimError, match="lease expired"):
            db.store_synthesis("S", "plan", "# again", claim=new)
        with pytest.raises(consensus_db.StaleClaimError, match="lease expired"):
            db.renew_claim(new)
        assert syntheses(db, "S", "plan") == 1
        # With no live claim left, a synthesis without one is accepted again.
        db.store_synthesis("S", "plan", "# unclaimed")


def test_a_renewed_claim_outlives_its_first_lease(store_target):
    with consensus_db.connect(store_target) as db:
        claim = db.claim_stage("S", "plan", owner="orch-a", lease_s=LEASE_S)
        db._set_clock_offset(LEASE_S - 1)
        renewed = db.renew_claim(claim, lease_s=60)
        assert renewed.token == claim.token and renewed.lease_ms == 60_000
        db._set_clock_offset(LEASE_S + 30)  # past the first lease, inside the renewed one
        assert db.claim_stage("S", "plan", owner="orch-b", lease_s=LEASE_S) is None
        db.store_synthesis("S", "plan", "# merged", claim=renewed)
        with pytest.raises(consensus_db.InvalidInputError, match="lease_s"):
            db.claim_stage("S", "plan", owner="orch-b", lease_s=0)
        with pytest.raises(consensus_db.InvalidInputError, match="owner"):
            db.claim_stage("S", "plan", owner=" ", lease_s=1)


def test_claims_are_kept_in_the_file_and_a_hand_made_claim_grants_nothing(tmp_path):
    path = tmp_path / "c.db"
    with consensus_db.connect(path) as db:
        claim = db.claim_stage("S", "plan", owner="orch-a", lease_s=LEASE_S)
    with consensus_db.connect(path) as db:  # another store (another process, after a restart) sees it
        assert db.query_claims() == [claim]
        forged = consensus_db.Claim("S", "plan", "orch-b", claim.token)
        with pytest.raises(consensus_db.StaleClaimError, match="taken over"):
            db.store_synthesis("S", "plan", "# forged", claim=forged)
        import pickle

        assert pickle.loads(pickle.dumps(claim)) == claim
        db.store_synthesis("S", "plan", "# merged", claim=pickle.loads(pickle.dumps(claim)))


def test_the_async_twins_claim_renew_and_release(store_target):
    async def main() -> None:
        async with aio.connect(store_target) as db:
            claim = await db.claim_stage("S", "plan", owner="orch-a", lease_s=LEASE_S)
            assert await db.claim_stage("S", "plan", owner="orch-b", lease_s=LEASE_S) is None
            claim = await db.renew_claim(claim)
            await db.store_synthesis("S", "plan", "# merged", claim=claim)
            assert await db.query_claims() == [claim]
            assert await db.release_claim(claim)
            assert await db.query_claims() == []

    asyncio.run(main())


# ---- real processes ----------------------------------------------------------------------

#: An orchestrator process: reads commands on stdin, one per line, answers one JSON line each.
ORCHESTRATOR = r"""
import json, sys
import consensus_db
db = consensus_db.connect(sys.argv[1])
owner = sys.argv[2]
held = {}
print(json.dumps({"ready": owner}), flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    stage, op = cmd["stage"], cmd["op"]
    out = {"owner": owner, "stage": stage}
    try:
        if op == "race":  # claim, and unless told to stall, synthesize under the claim at once
            db._set_clock_offset(0)
            claim = db.claim_stage("S", stage, "run", owner=owner, lease_s=cmd["lease_s"])
            out["won"] = claim is not None
            if claim is None:  # a loser that synthesizes anyway, without a claim, is refused
                try:
                    db.store_synthesis("S", stage, "# loser", run_id="run")
                    out["loser_wrote"] = True
                except consensus_db.StaleClaimError:
                    out["loser_refused"] = True
            else:
                out["token"] = claim.token
                held[stage] = claim
                if not cmd["stall"]:
                    db.store_synthesis("S", stage, f"# {owner}", run_id="run", claim=claim,
                                       idempotency_key=f"synth:{stage}:{claim.token}")
                    out["wrote"] = True
        elif op == "take_over":  # the lease has passed on this orchestrator's clock
            db._set_clock_offset(cmd["lease_s"] + 1)
            claim = db.claim_stage("S", stage, "run", owner=owner, lease_s=cmd["lease_s"])
            out["token"], out["took_over_from"] = claim.token, claim.took_over_from
            db.store_synthesis("S", stage, f"# {owner}", run_id="run", claim=claim)
            out["wrote"] = True
        elif op == "late_write":  # the stalled holder wakes up and writes under its old claim
            try:
                db.store_synthesis("S", stage, f"# late {owner}", run_id="run", claim=held[stage])
                out["wrote"] = True
            except consensus_db.StaleClaimError as e:
                out["refused"], out["newest_token"] = True, e.newest_token
        elif op == "hold":  # claim, say so, then stay mid-stage until killed
            claim = db.claim_stage("S", stage, "run", owner=owner, lease_s=cmd["lease_s"])
            out["claim"] = None if claim is None else claim.to_dict()
    except Exception as e:
        out["error"] = f"{type(e).__name__}: {e}"
    print(json.dumps(out), flush=True)
"""


class Orchestrator:
    def __init__(self, target, owner: str) -> None:
        self.owner = owner
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ORCHESTRATOR, str(target), owner],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert json.loads(self.readline()) == {"ready": owner}

    def readline(self) -> str:
        line = self.proc.stdout.readline()
        assert line, f"{self.owner} exited: {self.proc.poll()}"
        return line

    def send(self, **cmd) -> None:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def answer(self) -> dict:
        out = json.loads(self.readline())
        assert "error" not in out, out
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


def test_three_orchestrator_processes_race_for_each_stage_and_exactly_one_synthesizes(store_target):
    """Every round three processes claim the same stage at once; the winner synthesizes
    under its claim, the losers' unclaimed syntheses are refused. Every fifth round the
    winner stalls past its lease: a loser takes the stage over, and the stalled winner's
    late write is refused. Each stage ends with exactly one synthesis."""
    rounds = 40
    consensus_db.connect(store_target).close()  # migrated once, before the race
    procs = [Orchestrator(store_target, f"orch-{i}") for i in range(3)]
    takeovers = refused_stale = refused_unclaimed = 0
    try:
        for r in range(rounds):
            stage, stall = f"stage-{r:03d}", r % 5 == 4
            for p in procs:  # all three at once: the race is the database's
                p.send(op="race", stage=stage, lease_s=LEASE_S, stall=stall)
            answers = [p.answer() for p in procs]
            winners = [a for a in answers if a["won"]]
            assert len(winners) == 1, (stage, answers)
            assert all(a.get("loser_refused") for a in answers if not a["won"]), answers
            refused_unclaimed += 2
            if stall:
                winner = next(p for p in procs if p.owner == winners[0]["owner"])
                other = next(p for p in procs if p is not winner)
                other.send(op="take_over", stage=stage, lease_s=LEASE_S)
                took = other.answer()
                assert took["took_over_from"] == winner.owner and took["token"] == winners[0]["token"] + 1
                takeovers += 1
                winner.send(op="late_write", stage=stage)
                late = winner.answer()
                assert late.get("refused") and late["newest_token"] == took["token"], late
                refused_stale += 1
    finally:
        for p in procs:
            p.close()
    with consensus_db.connect(store_target) as db:
        per_stage = {f"stage-{r:03d}": syntheses(db, "S", f"stage-{r:03d}") for r in range(rounds)}
    print(
        f"\n[{'postgresql' if str(store_target).startswith('postgresql://') else 'sqlite'}] race: "
        f"rounds={rounds}, processes=3, syntheses per stage: min={min(per_stage.values())} "
        f"max={max(per_stage.values())} total={sum(per_stage.values())}, takeovers={takeovers}, "
        f"refused stale writes={refused_stale}, refused unclaimed writes={refused_unclaimed}"
    )
    assert set(per_stage.values()) == {1}, per_stage
    assert (takeovers, refused_stale) == (rounds // 5, rounds // 5)


def test_a_sigkilled_claim_holder_is_taken_over_after_its_lease_and_its_late_write_is_refused(store_target):
    consensus_db.connect(store_target).close()
    holder = Orchestrator(store_target, "orch-killed")
    holder.send(op="hold", stage="plan", lease_s=LEASE_S)
    held = holder.answer()["claim"]
    assert held["token"] == 1
    os.kill(holder.proc.pid, signal.SIGKILL)  # mid-stage: claimed, nothing synthesized
    assert holder.proc.wait(timeout=30) == -signal.SIGKILL
    with consensus_db.connect(store_target) as db:
        # The claim survives the crash for its lease, and only for its lease.
        assert db.claim_stage("S", "plan", "run", owner="orch-next", lease_s=LEASE_S) is None
        db._set_clock_offset(LEASE_S + 1)
        new = db.claim_stage("S", "plan", "run", owner="orch-next", lease_s=LEASE_S)
        assert (new.token, new.took_over_from) == (2, "orch-killed")
        # The killed owner's late write, under the claim it held.
        stale = consensus_db.Claim(
            held["spec_id"],
            held["stage"],
            held["owner"],
            held["token"],
            run_id=held["run_id"],
            lease_ms=held["lease_ms"],
            claimed_at_ms=held["claimed_at_ms"],
            expires_at_ms=held["expires_at_ms"],
        )
        with pytest.raises(consensus_db.StaleClaimError) as refused:
            db.store_synthesis("S", "plan", "# late", run_id="run", claim=stale)
        print(f"\nrefused: {refused.value}")
        assert (refused.value.token, refused.value.newest_token) == (1, 2)
        db.store_synthesis("S", "plan", "# merged", run_id="run", claim=new)
        assert syntheses(db, "S", "plan") == 1
        assert db.query_latest_synthesis("S", "plan").output_markdown == "# merged"


def test_backups_keep_claims_and_keys_a_downgrade_to_1_keeps_them_and_one_to_0_drops_them(tmp_path):
    """The coordination tables are the store's own: a backup copies them, a downgrade to
    version 1 (ids kept) keeps them, a downgrade to 0 (the predecessor's legacy shape,
    whose ids they would name wrongly) drops them, and an upgrade makes them again,
    tokens from 1."""
    path = tmp_path / "c.db"
    with consensus_db.connect(path) as db:
        claim = db.claim_stage("S", "plan", owner="orch-a", lease_s=LEASE_S)
        first = db.store_artifact("S", "plan", "gemini", "{}", idempotency_key="k")
        copy = db.backup(tmp_path / "copy.db")
    with consensus_db.connect(copy) as db:
        assert db.query_claims() == [claim]
        assert db.store_artifact("S", "plan", "gemini", "{}", idempotency_key="k") == first
    with consensus_db.connect(path, migrate=1) as db:
        db.migrate(1, force=True)
        assert db.schema_version == 1 and db.query_claims() == [claim]
        assert db.store_artifact("S", "plan", "gemini", "{}", idempotency_key="k") == first
        db.migrate(0, force=True)
        tables = {t for (t,) in db.query("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert not tables & {"consensus_claims", "consensus_idempotency"}, tables
    with consensus_db.connect(path) as db:
        assert "created the tables consensus_claims and consensus_idempotency" in db.open_report["layout_steps"]
        assert db.claim_stage("S", "plan", owner="orch-b", lease_s=LEASE_S).token == 1


def test_a_store_opened_before_the_claims_table_existed_still_respects_a_claim(tmp_path):
    """A store opened without migrating on a file of the previous layout has no claims
    table at first; once another store has added it and claimed the stage, the first
    store's unclaimed synthesis is refused all the same."""
    import sqlite3

    path = tmp_path / "old.db"
    consensus_db.connect(path).close()
    conn = sqlite3.connect(path)  # the file as layout revision 4 left it
    conn.executescript(
        "DROP TABLE consensus_claims; DROP TABLE consensus_idempotency;"
        " UPDATE consensus_db_meta SET value = 4 WHERE key = 'revision';"
    )
    conn.close()
    with consensus_db.connect(path, migrate=False) as old:
        with pytest.raises(consensus_db.MigrationError, match="consensus_claims"):
            old.claim_stage("S", "plan", owner="orch-old", lease_s=LEASE_S)
        with consensus_db.connect(path) as new:  # adds the tables, and claims the stage
            assert new.claim_stage("S", "plan", owner="orch-new", lease_s=LEASE_S).token == 1
        with pytest.raises(consensus_db.StaleClaimError, match="live claim"):
            old.store_synthesis("S", "plan", "# unclaimed")
        assert syntheses(old, "S", "plan") == 0
        # And it takes claims and keys now that the tables exist.
        assert [c.owner for c in old.query_claims()] == ["orch-new"]
        assert old.claim_stage("S", "tasks", owner="orch-old", lease_s=LEASE_S).token == 1
        first = old.store_artifact("S", "plan", "g", "{}", idempotency_key="k")
        assert old.store_artifact("S", "plan", "g", "{}", idempotency_key="k") == first


def test_a_postgresql_store_opened_before_revision_3_still_respects_a_claim(pg_cluster, pg_url):
    """As on SQLite: a store opened without migrating on a database of revision 2 looks
    for the claims table again, finds it once another host migrated, and is fenced."""
    consensus_db.connect(pg_url).close()
    schema = pg_url.split("search_path%3D")[1]
    pg_cluster.psql(  # the database as revision 2 (the previous release) left it
        f"DROP TABLE {schema}.consensus_claims; DROP TABLE {schema}.consensus_idempotency;"
        f" UPDATE {schema}.consensus_db_meta SET value = 2 WHERE key = 'pg_revision'"
    )
    with consensus_db.connect(pg_url, migrate=False) as old:
        with pytest.raises(consensus_db.MigrationError, match="consensus_claims"):
            old.claim_stage("S", "plan", owner="orch-old", lease_s=LEASE_S)
        with consensus_db.connect(pg_url) as new:  # migrates to revision 3, and claims the stage
            assert new.claim_stage("S", "plan", owner="orch-new", lease_s=LEASE_S).token == 1
        with pytest.raises(consensus_db.StaleClaimError, match="live claim"):
            old.store_synthesis("S", "plan", "# unclaimed")
        assert syntheses(old, "S", "plan") == 0
        # And it takes claims and keys now that the tables exist.
        assert [c.owner for c in old.query_claims()] == ["orch-new"]
        assert old.claim_stage("S", "tasks", owner="orch-old", lease_s=LEASE_S).token == 1
        first = old.store_artifact("S", "plan", "g", "{}", idempotency_key="k")
        assert old.store_artifact("S", "plan", "g", "{}", idempotency_key="k") == first
