"""Branch-scoped resume (issue 27, items 1 and 5): the predecessor's newest builds
record a branch with every spawn (``agent_executions.branch_id``, index
``idx_agent_executions_branch``), route completions with it and resume a pipeline
from one branch's executions. This store creates the column and the index on every
file shape it opens, records and reads branches on both backends, and a
predecessor-newest-build writer (``predecessor.py`` in a child process, its exact SQL)
works beside it with every row visible both ways.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

import consensus_db
import consensus_db.aio
import predecessor
from conftest import ph, stdlib_rows
from test_field_files import layout_1_file, legacy_file, seed_v1_file, seed_v2_file

STAGE = "spec-implement"


def spawn(db, agent_id: str, branch: str | None, run_id: str | None = None, spec: str = "SPEC-1") -> None:
    db.record_agent_spawn(agent_id, spec, STAGE, "regular_stage", agent_id.split("-")[-1], run_id, branch_id=branch)


def at(db, agent_id: str, spawned_at: str) -> None:
    """Fixes a spawn's time (spawned_at has whole seconds: tests set it, never sleep)."""
    db.execute(ph(db, "UPDATE agent_executions SET spawned_at = ? WHERE agent_id = ?"), (spawned_at, agent_id))


def ids(executions) -> list:
    return [e.agent_id for e in executions]


def branch_schema(path: Path) -> tuple:
    """(has the column, the index's columns) as stdlib sqlite3 sees the file (store closed)."""
    column = bool(stdlib_rows(path, "SELECT 1 FROM pragma_table_info('agent_executions') WHERE name = 'branch_id'"))
    index = [c for (c,) in stdlib_rows(path, "SELECT name FROM pragma_index_info('idx_agent_executions_branch')")]
    return column, index


# ---- the API, both backends ----------------------------------------------------------------------


def test_branches_are_recorded_routed_and_listed_newest_first(store_target):
    with consensus_db.connect(store_target) as db:
        spawn(db, "b1-gemini", "b1", "r1")
        spawn(db, "b1-claude", "b1", "r1")
        spawn(db, "b2-gemini", "b2", "r2")
        spawn(db, "x-code", None)
        for agent, when in [
            ("b1-gemini", "2026-01-01 10:00:00"),
            ("b1-claude", "2026-01-01 10:00:00"),
            ("b2-gemini", "2026-01-01 10:05:00"),
            ("x-code", "2026-01-01 09:00:00"),
        ]:
            at(db, agent, when)
        assert db.get_agent_route("b1-claude") == ("regular_stage", STAGE, "b1")
        assert db.get_agent_route("b1-claude").branch_id == "b1"
        assert db.get_agent_route("x-code") == consensus_db.AgentRoute("regular_stage", STAGE, None)
        assert db.get_agent_route("nobody") is None
        assert db.get_agent_spawn_info("b1-claude") == ("regular_stage", STAGE)  # still the 2-tuple
        # Newest spawn first, ties by agent id (last first); oldest is the exact reverse.
        assert ids(db.query_agent_executions("SPEC-1", STAGE)) == ["b2-gemini", "b1-gemini", "b1-claude", "x-code"]
        assert ids(db.query_agent_executions("SPEC-1", STAGE, order="oldest")) == [
            "x-code",
            "b1-claude",
            "b1-gemini",
            "b2-gemini",
        ]
        assert ids(db.query_agent_executions("SPEC-1", STAGE, "b1")) == ["b1-gemini", "b1-claude"]
        assert ids(db.query_agent_executions("SPEC-1", STAGE, "b1", limit=1)) == ["b1-gemini"]
        assert ids(db.query_agent_executions("SPEC-1", STAGE, "b1", order="oldest", limit=1)) == ["b1-claude"]
        assert db.query_agent_executions("SPEC-1", STAGE, "b3") == []
        assert db.query_agent_executions("SPEC-1", STAGE, limit=0) == []
        e = db.query_agent_executions("SPEC-1", STAGE, "b2")[0]
        assert (
            e.agent_id,
            e.spec_id,
            e.stage,
            e.phase_type,
            e.agent_name,
            e.run_id,
            e.branch_id,
            e.spawned_at,
            e.completed_at,
            e.response_text,
        ) == ("b2-gemini", "SPEC-1", STAGE, "regular_stage", "gemini", "r2", "b2", "2026-01-01 10:05:00", None, None)
        assert isinstance(e, consensus_db.AgentExecution) and e.to_dict()["branch_id"] == "b2"
        # A re-spawn replaces the branch (None included), as INSERT OR REPLACE does.
        spawn(db, "b2-gemini", None)
        assert db.get_agent_route("b2-gemini").branch_id is None


def test_bad_branch_arguments_are_refused_by_name_and_nothing_is_written(store_target):
    with consensus_db.connect(store_target) as db:
        with pytest.raises(consensus_db.InvalidInputError, match="branch_id"):
            spawn(db, "a-gemini", "  ")
        with pytest.raises(consensus_db.InvalidInputError, match="branch_id"):
            db.record_agent_spawn("a-gemini", "S", STAGE, "regular_stage", "gemini", branch_id=7)
        assert db.get_agent_route("a-gemini") is None
        with pytest.raises(consensus_db.InvalidInputError, match="order"):
            db.query_agent_executions("S", STAGE, order="sideways")
        with pytest.raises(consensus_db.InvalidInputError, match="limit"):
            db.query_agent_executions("S", STAGE, limit=-1)


async def _aio_round(target) -> tuple:
    async with consensus_db.aio.connect(target) as db:
        await db.record_agent_spawn("a-gemini", "S", STAGE, "quality_gate", "gemini", branch_id="b1")
        return await db.get_agent_route("a-gemini"), ids(await db.query_agent_executions("S", STAGE, "b1", limit=5))


def test_aio_records_and_reads_branches(store_target):
    import asyncio

    route, listed = asyncio.run(_aio_round(store_target))
    assert route == ("quality_gate", STAGE, "b1") and listed == ["a-gemini"]


# ---- every file shape ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [legacy_file, seed_v1_file, seed_v2_file, layout_1_file, None],
    ids=["legacy", "seed-v1", "seed-v2", "layout-1", "fresh"],
)
def test_every_shape_gets_the_predecessors_column_and_index(tmp_path, make):
    path = tmp_path / "f.db"
    if make:
        make(path)
        assert branch_schema(path) == (False, [])
    with consensus_db.connect(path) as db:
        steps = db.open_report["layout_steps"]
        spawn(db, "a-gemini", "b1")
    print(f"\n[{make.__name__ if make else 'fresh'}] open_report['layout_steps'] = {steps}")
    assert branch_schema(path) == (True, ["spec_id", "stage", "branch_id"])
    if make:
        assert "added the column agent_executions.branch_id" in steps
        assert "created the index idx_agent_executions_branch" in steps
    assert stdlib_rows(path, "SELECT branch_id FROM agent_executions WHERE agent_id = 'a-gemini'") == [("b1",)]
    # The predecessor's newest build then opens it: its ALTER fails harmlessly, its CREATE INDEX is a no-op.
    opened = predecessor.run(path, "open", build="cutover" if make is not legacy_file else "legacy", branches=True)
    assert opened["alter"].startswith("failed: duplicate column name") and opened["index"] == "existed"
    with consensus_db.connect(path) as db:  # and a second opening has nothing left to do
        assert db.open_report["layout_steps"] == []


def test_the_previous_release_keeps_opening_the_file(tmp_path):
    """Revisions 3 to 5 only add: the key the previous release checks (``layout``,
    the minimum reader layout) stays 2, and a file that release wrote (no ``revision``
    key, no branch column, no routing index, no table of expected agents) is brought
    forward saying so."""
    path = tmp_path / "f.db"
    consensus_db.connect(path).close()
    assert stdlib_rows(path, "SELECT key, value FROM consensus_db_meta ORDER BY key") == [
        ("layout", 2),
        ("revision", 5),
    ]
    conn = sqlite3.connect(path)  # the file as the previous release left it
    conn.executescript(
        "DROP INDEX idx_agent_executions_route; DROP INDEX idx_agent_executions_branch;"
        " ALTER TABLE agent_executions DROP COLUMN branch_id; DELETE FROM consensus_db_meta WHERE key = 'revision';"
        " DROP TABLE consensus_expected_agents;"
    )
    conn.close()
    with consensus_db.connect(path) as db:
        steps = db.open_report["layout_steps"]
    assert steps == [
        "added the column agent_executions.branch_id",
        "created the index idx_agent_executions_branch",
        "created the table consensus_expected_agents",
        "created the index idx_agent_executions_route",
        "layout revision 2 -> 5 (minimum reader layout 2)",
    ]
    assert stdlib_rows(path, "SELECT value FROM consensus_db_meta WHERE key = 'layout'") == [(2,)]
    # A minimum reader layout above this build's revision is refused, by name.
    conn = sqlite3.connect(path)
    conn.execute("UPDATE consensus_db_meta SET value = 6 WHERE key = 'layout'")
    conn.commit()
    conn.close()
    with pytest.raises(consensus_db.SchemaVersionError, match="6"):
        consensus_db.connect(path)


def test_branch_values_a_predecessor_wrote_survive_every_migration_both_ways(tmp_path):
    path = tmp_path / "legacy.db"
    legacy_file(path)
    predecessor.run(
        path,
        "spawn",
        build="legacy",
        branches=True,
        agent_id="p-gemini",
        spec_id="SPEC-1",
        stage=STAGE,
        phase_type="regular_stage",
        agent_name="gemini",
        branch_id="feature-x",
    )
    seen = []
    with consensus_db.connect(path, migrate=False) as db:
        for target in (1, 2, 1, 0, 2, 0):
            db.migrate(target, force=True)
            seen.append((target, db.get_agent_route("p-gemini").branch_id))
        assert db.verify_schemas()["ok"] if db.schema_version == 1 else True
    assert seen == [(t, "feature-x") for t in (1, 2, 1, 0, 2, 0)]
    assert stdlib_rows(path, "SELECT branch_id FROM agent_executions WHERE agent_id = 'p-gemini'") == [("feature-x",)]
    assert branch_schema(path)[0]


def test_a_file_without_the_column_read_only_or_unmigrated(tmp_path):
    path = tmp_path / "legacy.db"
    legacy_file(path)  # a-1 spawned by the legacy build, no branch column
    with consensus_db.connect(path, read_only=True) as db:
        assert db.get_agent_route("a-1") == ("quality_gate", "spec-plan", None)
        assert [e.branch_id for e in db.query_agent_executions("SPEC-1", "spec-plan")] == [None]
        assert db.query_agent_executions("SPEC-1", "spec-plan", "b1") == []
        with pytest.raises(consensus_db.ReadOnlyError, match="agent_executions.branch_id"):
            db.record_agent_spawn("a-2", "SPEC-1", "spec-plan", "regular_stage", "gemini", branch_id="b1")
    with consensus_db.connect(path, migrate=False) as db:
        with pytest.raises(consensus_db.MigrationError, match="agent_executions.branch_id"):
            db.record_agent_spawn("a-2", "SPEC-1", "spec-plan", "regular_stage", "gemini", branch_id="b1")
        db.record_agent_spawn("a-3", "SPEC-1", "spec-plan", "regular_stage", "gemini")  # no branch: fine
        assert db.get_agent_route("a-2") is None and db.get_agent_route("a-3").branch_id is None
    assert branch_schema(path) == (False, [])


# ---- the predecessor's newest build beside the store ---------------------------------------------


def test_a_predecessor_newest_build_writes_and_reads_branches_beside_the_store(tmp_path):
    path = tmp_path / "seed-v2.db"
    seed_v2_file(path)
    newest = {"build": "cutover", "branches": True}
    with consensus_db.connect(path) as db:
        # Its open (ALTER, CREATE INDEX) while the store has the file open.
        opened = predecessor.run(path, "open", **newest)
        theirs = [("p-gemini", "b1"), ("p-claude", "b2"), ("p-code", None)]
        results = [
            predecessor.run(
                path,
                "spawn",
                agent_id=a,
                spec_id="SPEC-9",
                stage=STAGE,
                phase_type="regular_stage",
                agent_name=a[2:],
                run_id="r9",
                branch_id=b,
                **newest,
            )
            for a, b in theirs
        ]
        spawn(db, "s-gemini", "b1", "r9", spec="SPEC-9")
        spawn(db, "s-claude", "b2", "r9", spec="SPEC-9")
        db.record_agent_completion("p-gemini", "theirs, completed by the store")
        predecessor.run(path, "complete", agent_id="s-gemini", response_text="ours, completed by them", **newest)
        # Theirs through the store's API.
        store_routes = {a: db.get_agent_route(a) for a in ["p-gemini", "p-claude", "p-code", "s-gemini", "s-claude"]}
        store_b1 = {
            (e.agent_id, e.branch_id, e.response_text) for e in db.query_agent_executions("SPEC-9", STAGE, "b1")
        }
        # Ours through their reads.
        their_routes = {a: predecessor.run(path, "route", agent_id=a, **newest) for a in store_routes}
        their_b1 = {
            (r[0], r[6], r[9])
            for r in predecessor.run(path, "branch_executions", spec_id="SPEC-9", stage=STAGE, branch_id="b1", **newest)
        }
        their_b2 = sorted(
            r[0]
            for r in predecessor.run(path, "branch_executions", spec_id="SPEC-9", stage=STAGE, branch_id="b2", **newest)
        )
    print(f"\npredecessor open beside the store: {opened}; its spawns: {results}")
    print(f"routes through the store: {store_routes}")
    print(f"routes through the predecessor: {their_routes}")
    assert opened == {"alter": "failed: duplicate column name: branch_id", "index": "existed"}
    assert results == ["spawned"] * 3
    assert {a: tuple(r) for a, r in their_routes.items()} == {a: tuple(r) for a, r in store_routes.items()}
    assert store_routes["p-claude"] == ("regular_stage", STAGE, "b2") and store_routes["p-code"].branch_id is None
    expected_b1 = {("p-gemini", "b1", "theirs, completed by the store"), ("s-gemini", "b1", "ours, completed by them")}
    assert store_b1 == their_b1 == expected_b1
    assert their_b2 == ["p-claude", "s-claude"]


def test_resume_two_branches_and_an_abandoned_run(tmp_path):
    """A pipeline runs stage spec-implement on branch "main", forks "retry" from it, and
    abandons a run on "retry" (its agents answer late). Resuming "main" and the later
    "retry" run by branch leaves the abandoned responses out; the all-branches view
    (branch_id=None) sees everything."""
    path = tmp_path / "resume.db"

    def per_branch(db) -> dict:
        return {
            b or "(all)": [
                (e.agent_id, e.run_id, e.completed_at is not None)
                for e in db.query_agent_executions("SPEC-1", STAGE, b)
            ]
            for b in ("main", "retry", None)
        }

    with consensus_db.connect(path) as db:
        for agent, run, branch, when in [
            ("m-gemini", "run-1", "main", "2026-01-01 10:00:00"),
            ("m-claude", "run-1", "main", "2026-01-01 10:00:01"),
            ("r-gemini", "run-2", "retry", "2026-01-01 10:10:00"),
        ]:
            spawn(db, agent, branch, run)
            at(db, agent, when)
            db.record_agent_completion(agent, f"{agent} answered")
        before = per_branch(db)
        # The abandoned run on "retry": spawned, then the orchestrator moved on; answers arrive late.
        for agent, when in [("x-gemini", "2026-01-01 10:20:00"), ("x-claude", "2026-01-01 10:20:00")]:
            spawn(db, agent, "abandoned-run-3", "run-3")
            at(db, agent, when)
        db.record_agent_completion("x-gemini", "late answer of an abandoned run")
        # The resumed run on "retry".
        spawn(db, "r-claude", "retry", "run-4")
        at(db, "r-claude", "2026-01-01 10:30:00")
        db.record_agent_completion("r-claude", "r-claude answered")
        after = per_branch(db)
        late = [e.response_text for e in db.query_agent_executions("SPEC-1", STAGE, "retry")]
    print("\nexecutions per branch before the abandoned run:")
    for b, rows in before.items():
        print(f"  {b:8} {rows}")
    print("after the abandoned run and the resumed one:")
    for b, rows in after.items():
        print(f"  {b:8} {rows}")
    assert before["main"] == after["main"] == [("m-claude", "run-1", True), ("m-gemini", "run-1", True)]
    assert before["retry"] == [("r-gemini", "run-2", True)]
    assert after["retry"] == [("r-claude", "run-4", True), ("r-gemini", "run-2", True)]
    assert "late answer of an abandoned run" not in late
    assert [a for a, _, _ in after["(all)"]] == ["r-claude", "x-gemini", "x-claude", "r-gemini", "m-claude", "m-gemini"]


# ---- PostgreSQL: the same column and rules ------------------------------------------------------


def test_postgresql_revision_1_database_reads_no_branch_and_refuses_one(pg_cluster, pg_url):
    consensus_db.connect(pg_url).close()
    schema = pg_url.split("search_path%3D")[1]
    assert (
        pg_cluster.psql(
            f"SELECT count(*) FROM pg_indexes WHERE schemaname = '{schema}'"
            " AND indexname = 'idx_agent_executions_branch'"
        )
        == "1"
    )
    # The database as revision 1 (the previous release) left it.
    pg_cluster.psql(
        f"DROP INDEX {schema}.idx_agent_executions_branch;"
        f" ALTER TABLE {schema}.agent_executions DROP COLUMN branch_id;"
        f" DELETE FROM {schema}.consensus_db_meta WHERE key = 'pg_revision'"
    )
    with consensus_db.connect(pg_url, migrate=False) as db:
        db.record_agent_spawn("a-1", "S", STAGE, "regular_stage", "gemini")
        with pytest.raises(consensus_db.MigrationError, match="agent_executions.branch_id"):
            db.record_agent_spawn("a-2", "S", STAGE, "regular_stage", "gemini", branch_id="b1")
    with consensus_db.connect(pg_url, read_only=True) as db:
        assert db.get_agent_route("a-1") == ("regular_stage", STAGE, None)
        assert db.query_agent_executions("S", STAGE, "b1") == []
        assert [e.branch_id for e in db.query_agent_executions("S", STAGE)] == [None]
        with pytest.raises(consensus_db.ReadOnlyError, match="agent_executions.branch_id"):
            db.record_agent_spawn("a-2", "S", STAGE, "regular_stage", "gemini", branch_id="b1")
    with consensus_db.connect(pg_url) as db:  # migrating brings the column back
        db.record_agent_spawn("a-2", "S", STAGE, "regular_stage", "gemini", branch_id="b1")
        assert db.get_agent_route("a-2").branch_id == "b1"
    assert pg_cluster.psql(f"SELECT value FROM {schema}.consensus_db_meta WHERE key = 'pg_revision'") == "3"
    assert pg_cluster.psql(f"SELECT value FROM {schema}.consensus_db_meta WHERE key = 'pg_layout'") == "1"


def test_a_branchs_executions_are_read_through_the_partial_branch_index(tmp_path):
    """The index holds only spawns with a branch (a spawn without one writes no entry), and
    the predecessor's resume read (`branch_id = ?`) still uses it."""
    path = tmp_path / "b.db"
    with consensus_db.connect(path) as db:
        db.record_agent_spawn("a1", "S", "plan", "quality_gate", "gemini", branch_id="b1")
        db.record_agent_spawn("a2", "S", "plan", "quality_gate", "gemini")
        plan = db.query(
            "EXPLAIN QUERY PLAN SELECT agent_id FROM agent_executions"
            " WHERE spec_id = ? AND stage = ? AND branch_id = ? ORDER BY spawned_at DESC",
            ["S", "plan", "b1"],
        )
        assert any("idx_agent_executions_branch" in str(row[-1]) for row in plan), plan
        assert [e.agent_id for e in db.query_agent_executions("S", "plan", "b1")] == ["a1"]
    assert stdlib_rows(
        path, "SELECT count(*) FROM agent_executions INDEXED BY idx_agent_executions_branch WHERE branch_id IS NOT NULL"
    ) == [(1,)]
