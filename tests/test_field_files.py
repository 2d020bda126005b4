"""Field files: the four shapes of databases the predecessor program left behind
(legacy, its seed layout v1 and v2, this store's first layout), built by a
predecessor-like writer (``predecessor.py``, stdlib ``sqlite3`` in a child process,
explicit column lists), not by this store's code.

For each shape: every row written before opens readable exactly once through the API;
a predecessor build still running writes beside the open store and its inserts
succeed; the store sees those rows once; the store's own rows land in the tables the
predecessor reads; ``user_version`` never leaves the predecessor's 0..2.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

import consensus_db
import predecessor
from consensus_db.cli import main as cli
from conftest import stdlib_rows

AGENTS = ["gemini", "claude", "code", "gpt_pro"]


def artifact(spec: str, stage: str, i: int, **extra) -> dict:
    return {"spec_id": spec, "stage": stage, "agent_name": AGENTS[i % 4],
            "content": json.dumps({"n": i, "spec": spec, "stage": stage}), "run_id": f"run-{spec}", **extra}


def synthesis(spec: str, stage: str, markdown: str, **extra) -> dict:
    return {"spec_id": spec, "stage": stage, "output_markdown": markdown, "output_path": f"/out/{spec}.md",
            "status": "success", "artifacts_count": 3, "agreements": ["scope", "tests"], "conflicts": [],
            "degraded": 0, "run_id": f"run-{spec}", **extra}


def written(items: list) -> Counter:
    return Counter((a["spec_id"], a["stage"], a["agent_name"], a["content"]) for a in items)


def through_api(db: consensus_db.Store, items: list) -> Counter:
    """Every artifact the API returns for the spec/stages the items name."""
    got: Counter = Counter()
    for spec, stage in {(a["spec_id"], a["stage"]) for a in items}:
        for a in db.query_artifacts(spec, stage):
            got[(a.spec_id, a.stage, a.agent_name, a.content_json)] += 1
    return got


def user_version(path: Path) -> int:
    return stdlib_rows(path, "PRAGMA user_version")[0][0]


def counts(path: Path) -> dict:
    tables = [t for (t,) in stdlib_rows(path, "SELECT name FROM sqlite_master WHERE type = 'table'"
                                              " AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    return {t: stdlib_rows(path, f"SELECT count(*) FROM {t}")[0][0] for t in tables}


def report(shape: str, before: dict, readable: int, beside: int) -> None:
    print(f"\n[{shape}] rows before: {before}; artifacts readable after: {readable}; "
          f"predecessor inserts beside the open store: {beside} succeeded")


# ---- the shapes ----------------------------------------------------------------------------------


def legacy_file(path: Path) -> list:
    predecessor.run(path, "create_legacy")
    items = [artifact("SPEC-1", "spec-plan", i) for i in range(4)] + [artifact("SPEC-2", "spec-tasks", i) for i in range(3)]
    predecessor.run(path, "artifacts", build="legacy", items=items)
    predecessor.run(path, "synthesis", build="legacy", synthesis=synthesis("SPEC-1", "spec-plan", "# legacy"))
    predecessor.run(path, "spawn", build="legacy", agent_id="a-1", spec_id="SPEC-1", stage="spec-plan",
                    phase_type="quality_gate", agent_name="gemini")
    return items


def seed_v1_file(path: Path) -> list:
    """Legacy history, the predecessor's own version-1 migration, then its dual-write
    build: a run row per artifact; some writes to the new tables failed (logged and
    ignored by it), so those rows exist in the legacy tables only."""
    items = legacy_file(path)
    predecessor.run(path, "migrate", knows=1)
    dual = [artifact("SPEC-3", "spec-implement", i) for i in range(4)]
    dual += [artifact("SPEC-3", "spec-implement", 9, new_tables_fail=True),
             artifact("SPEC-4", "spec-validate", 1, new_tables_fail=True, run_id=None)]
    predecessor.run(path, "artifacts", build="dual", items=dual)
    predecessor.run(path, "synthesis", build="dual", synthesis=synthesis("SPEC-3", "spec-implement", "# dual"))
    return items + dual


def seed_v2_file(path: Path) -> list:
    """A predecessor that knows version 2 dropped the legacy tables; its cutover build
    writes the new tables only."""
    predecessor.run(path, "create_legacy")
    predecessor.run(path, "migrate", knows=1)
    items = [artifact("SPEC-5", "spec-plan", i) for i in range(3)]
    predecessor.run(path, "artifacts", build="dual", items=items)
    predecessor.run(path, "migrate", knows=2)
    more = [artifact("SPEC-5", "spec-plan", i) for i in range(3, 6)]
    predecessor.run(path, "artifacts", build="cutover", items=more)
    predecessor.run(path, "synthesis", build="cutover", synthesis=synthesis("SPEC-5", "spec-plan", "# cutover",
                                                                            degraded=1))
    return items + more


# This store's first release laid the new tables out in its own names.
LAYOUT_1 = """
CREATE TABLE agent_executions (agent_id TEXT PRIMARY KEY, spec_id TEXT NOT NULL, stage TEXT NOT NULL,
    phase_type TEXT NOT NULL, agent_name TEXT NOT NULL, run_id TEXT, spawned_at TEXT NOT NULL, completed_at TEXT,
    response_text TEXT, extraction_error TEXT);
CREATE TABLE consensus_runs (id INTEGER PRIMARY KEY, spec_id TEXT NOT NULL, stage TEXT NOT NULL, run_id TEXT,
    run_at_ms INTEGER NOT NULL, consensus_ok INTEGER, degraded INTEGER NOT NULL DEFAULT 0, synthesis TEXT,
    synthesis_status TEXT, output_path TEXT, artifacts_count INTEGER, agreements TEXT, conflicts TEXT,
    synthesized_at_ms INTEGER, legacy_synthesis_id INTEGER);
CREATE INDEX idx_runs_spec_stage ON consensus_runs(spec_id, stage, run_id);
CREATE TABLE agent_outputs (id INTEGER PRIMARY KEY,
    run_pk INTEGER NOT NULL REFERENCES consensus_runs(id) ON DELETE CASCADE, agent_name TEXT NOT NULL,
    model_version TEXT, content TEXT NOT NULL, response_text TEXT, output_at_ms INTEGER NOT NULL,
    legacy_artifact_id INTEGER);
CREATE INDEX idx_outputs_run ON agent_outputs(run_pk);
PRAGMA user_version = 2;
"""


def layout_1_file(path: Path) -> list:
    conn = sqlite3.connect(path)
    conn.executescript(LAYOUT_1)
    # Two runs that started in the same millisecond: the seed layout's UNIQUE key forbids that.
    conn.executemany("INSERT INTO consensus_runs (id, spec_id, stage, run_id, run_at_ms, synthesis, synthesis_status,"
                     " agreements, synthesized_at_ms) VALUES (?, 'SPEC-6', 'plan', ?, 1700000000000, ?, ?, ?, ?)",
                     [(1, "r1", "# one", "success", '["a"]', 1700000000500), (2, "r2", None, None, None, None)])
    items = [artifact("SPEC-6", "plan", i, run_id="r1" if i < 2 else "r2") for i in range(4)]
    conn.executemany("INSERT INTO agent_outputs (run_pk, agent_name, content, response_text, output_at_ms)"
                     " VALUES (?, ?, ?, ?, 1700000000000)",
                     [(1 if i < 2 else 2, a["agent_name"], a["content"], f"raw {i}") for i, a in enumerate(items)])
    conn.commit()
    conn.close()
    return items


# ---- the tests -----------------------------------------------------------------------------------


def test_legacy_file_opens_and_a_legacy_build_keeps_writing_beside_the_store(tmp_path):
    path = tmp_path / "legacy.db"
    items = legacy_file(path)
    before = counts(path)
    with consensus_db.connect(path) as db:
        assert through_api(db, items) == written(items)
        late = [artifact("SPEC-1", "spec-plan", 7)]
        predecessor.run(path, "artifacts", build="legacy", items=late)  # the store is open
        predecessor.run(path, "spawn", build="legacy", agent_id="a-2", spec_id="SPEC-1", stage="spec-plan",
                        phase_type="regular_stage", agent_name="claude")
        assert through_api(db, items + late) == written(items + late)
        assert db.get_agent_spawn_info("a-2") == ("regular_stage", "spec-plan")
        got = db.query_artifacts("SPEC-1", "spec-plan")
        assert [a.source for a in got].count("legacy") == 1
        assert all(len(a.created_at) == 19 for a in got)  # one-second resolution, the same format
        latest = db.query_latest_synthesis("SPEC-1", "spec-plan")
        assert (latest.output_markdown, latest.agreements, latest.source) == ("# legacy", '["scope", "tests"]', "v1")
        db.store_artifact("SPEC-1", "spec-plan", "claude", {"mine": True})
        readable = sum(through_api(db, items + late).values())
    assert user_version(path) == 1
    # The legacy build still reads its own table (the store added to the new tables).
    assert len(predecessor.run(path, "read_artifacts", build="legacy", spec_id="SPEC-1", stage="spec-plan")) == 5
    report("legacy", before, readable, 2)


def test_seed_v1_file_pairs_dual_writes_and_backfills_exactly_the_rest(tmp_path):
    path = tmp_path / "seed-v1.db"
    items = seed_v1_file(path)
    before = counts(path)
    assert (user_version(path), before["consensus_artifacts"], before["agent_outputs"]) == (1, 13, 4)
    result = CliRunner().invoke(cli, ["upgrade", str(path), "--no-backup"])
    assert result.exit_code == 0, result.output
    assert "shape found: predecessor seed v1" in result.output
    after = counts(path)
    # 4 dual-written pairs are linked, not copied; the other 9 legacy rows are copied once.
    assert after["agent_outputs"] == 4 + 9 and after["consensus_artifacts"] == 13
    assert stdlib_rows(path, "SELECT count(*) FROM agent_outputs WHERE legacy_artifact_id IS NULL") == [(0,)]
    assert user_version(path) == 1
    with consensus_db.connect(path) as db:
        assert through_api(db, items) == written(items)
        dual = db.query_artifacts("SPEC-3", "spec-implement")
        assert {a.run_id for a in dual} == {"run-SPEC-3"}  # the legacy copy's run id found its home
        latest = db.query_latest_synthesis("SPEC-3", "spec-implement")
        assert (latest.output_markdown, latest.run_id, latest.agreements) == ("# dual", "run-SPEC-3", '["scope","tests"]')
        # The dual-write build keeps running beside the store: its copies are read once.
        late = [artifact("SPEC-3", "spec-implement", i) for i in range(20, 23)]
        assert all(None not in ids for ids in predecessor.run(path, "artifacts", build="dual", items=late))
        assert through_api(db, items + late) == written(items + late)
        assert db.reader_stats()["legacy"] == 0  # each late pair came back as its new-schema copy
        db.store_synthesis("SPEC-3", "spec-implement", "# mine", run_id="run-SPEC-3")
        # force: the fixture's spawns are recent and never completed (no agent really runs).
        db.migrate(2, force=True)  # the final backfill links the late pairs instead of copying them
        assert through_api(db, items + late) == written(items + late)
        readable = sum(through_api(db, items + late).values())
    assert stdlib_rows(path, "SELECT count(*) FROM agent_outputs") == [(13 + 3,)]
    report("seed v1", before, readable, 3)


def test_seed_v1_file_opened_directly_reads_every_row_once(tmp_path):
    path = tmp_path / "seed-v1.db"
    items = seed_v1_file(path)
    with consensus_db.connect(path, migrate=False) as db:  # unmigrated: read-time pairing only
        assert through_api(db, items) == written(items)
        with pytest.raises(consensus_db.MigrationError, match="seed layout"):
            db.store_artifact("SPEC-3", "spec-implement", "g", "{}")
    with consensus_db.connect(path, read_only=True) as db:
        assert through_api(db, items) == written(items)


def test_seed_v2_file_and_a_cutover_build_beside_the_store(tmp_path):
    path = tmp_path / "seed-v2.db"
    items = seed_v2_file(path)
    before = counts(path)
    assert "consensus_artifacts" not in before and user_version(path) == 2
    with consensus_db.connect(path) as db:
        assert db.open_report["shape"] == "predecessor seed v2 (legacy tables dropped)"
        assert through_api(db, items) == written(items)
        latest = db.query_latest_synthesis("SPEC-5", "spec-plan")
        assert (latest.output_markdown, latest.status, latest.degraded, latest.artifacts_count) == (
            "# cutover", "success", True, 3)
        mine = db.store_artifact("SPEC-5", "spec-plan", "claude", {"mine": 1}, response_text="raw", run_id="r-9")
        late = [artifact("SPEC-5", "spec-plan", i) for i in range(10, 13)]
        assert all(ids[1] for ids in predecessor.run(path, "artifacts", build="cutover", items=late))
        assert through_api(db, items + late) == written(items + late) + Counter(
            {("SPEC-5", "spec-plan", "claude", '{"mine": 1}'): 1})
        ours = next(a for a in db.query_artifacts("SPEC-5", "spec-plan") if a.id == mine)
        assert (ours.response_text, ours.run_id) == ("raw", "r-9")
        readable = len(db.query_artifacts("SPEC-5", "spec-plan"))
    assert user_version(path) == 2
    # What the predecessor sees of the store's row, by its own column names: consensus_ok as it writes it
    # (issue 27: 1 on every run; it used to be 0 until a successful synthesis).
    assert stdlib_rows(path, "SELECT o.agent_name, r.consensus_ok, o.output_timestamp > 0 FROM agent_outputs o"
                             " JOIN consensus_runs r ON r.id = o.run_id WHERE o.id = ?", (mine,)) == [("claude", 1, 1)]
    report("seed v2", before, readable, 3)


def test_this_stores_first_layout_is_rebuilt_keeping_every_row_and_id(tmp_path):
    path = tmp_path / "layout1.db"
    items = layout_1_file(path)
    before = counts(path)
    with consensus_db.connect(path, migrate=False) as db:
        with pytest.raises(consensus_db.MigrationError, match="first layout"):
            db.query_artifacts("SPEC-6", "plan")
    with consensus_db.connect(path) as db:
        assert db.open_report["layout_updated"] is True
        got = db.query_artifacts("SPEC-6", "plan")
        assert through_api(db, items) == written(items)
        assert sorted(a.id for a in got) == [1, 2, 3, 4]
        assert {(a.agent_name, a.run_id, a.response_text) for a in got} == {
            (a["agent_name"], a["run_id"], f"raw {i}") for i, a in enumerate(items)}
        latest = db.query_latest_synthesis("SPEC-6", "plan")
        assert (latest.output_markdown, latest.agreements, latest.created_at) == ("# one", '["a"]', "2023-11-14 22:13:20")
        late = [artifact("SPEC-6", "plan", 8)]
        assert predecessor.run(path, "artifacts", build="cutover", items=late)[0][1]
        assert through_api(db, items + late) == written(items + late)
        readable = len(db.query_artifacts("SPEC-6", "plan"))
    assert stdlib_rows(path, "SELECT run_timestamp FROM consensus_runs ORDER BY id")[:2] == [(1700000000000,),
                                                                                            (1700000000001,)]
    report("consensus-db layout 1", before, readable, 1)


def test_same_millisecond_runs_take_the_next_free_millisecond_both_ways(tmp_path):
    path = tmp_path / "collide.db"
    seed_v2_file(path)
    with consensus_db.connect(path) as db:
        # The predecessor took every millisecond of the next minute for this spec/stage.
        start = int(time.time() * 1000)
        taken = [artifact("SPEC-7", "spec-plan", i, at_ms=start + i) for i in range(60_000)]
        predecessor.run(path, "artifacts", build="cutover", items=taken[:1])
        conn_rows = [(a["spec_id"], a["stage"], a["at_ms"]) for a in taken[1:]]
        with db.transaction() as tx:
            tx.executemany("INSERT INTO consensus_runs (spec_id, stage, run_timestamp, consensus_ok) VALUES (?, ?, ?, 1)",
                           conn_rows)
        ids = db.store_artifacts([{"spec_id": "SPEC-7", "stage": "spec-plan", "agent_name": f"a{i}",
                                   "content_json": "{}", "run_id": f"r{i}"} for i in range(3)])
        runs = db.query("SELECT r.run_timestamp FROM agent_outputs o JOIN consensus_runs r ON r.id = o.run_id"
                        " WHERE o.id IN (?, ?, ?) ORDER BY 1", ids)
        assert [t for (t,) in runs] == [start + 60_000 + i for i in range(3)]
        # And the predecessor's upsert landing on the store's own run's millisecond succeeds.
        (mine,) = runs[0]
        out = predecessor.run(path, "artifacts", build="cutover", items=[artifact("SPEC-7", "spec-plan", 1, at_ms=mine)])
        assert out[0][1] is not None
        assert len([a for a in db.query_artifacts("SPEC-7", "spec-plan") if a.agent_name == "a0"]) == 1
    assert user_version(path) == 2


def test_user_version_keeps_the_predecessors_meaning(tmp_path):
    path = tmp_path / "v.db"
    legacy_file(path)
    with consensus_db.connect(path) as db:
        assert db.schema_version == 1
    # A build that knows version 1 still opens the file and writes both schemas.
    assert predecessor.run(path, "artifacts", build="dual", items=[artifact("SPEC-1", "spec-plan", 11)])[0][1]
    with consensus_db.connect(path) as db:
        db.migrate(2, force=True)  # the fixture's recent spawns never complete (no agent really runs)
        assert db.schema_version == 2
    assert predecessor.run(path, "artifacts", build="dual", items=[artifact("SPEC-1", "spec-plan", 12)]) == {"refused": 2}
    assert predecessor.run(path, "artifacts", build="cutover", items=[artifact("SPEC-1", "spec-plan", 12)])[0][1]
    fresh = tmp_path / "fresh.db"
    consensus_db.connect(fresh).close()
    assert user_version(fresh) == 2
    assert stdlib_rows(fresh, "SELECT value FROM consensus_db_meta WHERE key = 'layout'") == [(2,)]
    assert predecessor.run(fresh, "artifacts", build="cutover", items=[artifact("S", "spec-plan", 1)])[0][1]


def test_deleting_counts_a_dual_written_pair_once(tmp_path):
    path = tmp_path / "seed-v1.db"
    seed_v1_file(path)
    with consensus_db.connect(path) as db:
        late = [artifact("SPEC-8", "spec-plan", i) for i in range(3)]
        predecessor.run(path, "artifacts", build="dual", items=late)  # 3 pairs, no links
        predecessor.run(path, "synthesis", build="dual", synthesis=synthesis("SPEC-8", "spec-plan", "# pair"))
        assert len(db.query_artifacts("SPEC-8", "spec-plan")) == 3
        assert db.delete_stage_artifacts("SPEC-8", "spec-plan") == 3
        assert db.query_artifacts("SPEC-8", "spec-plan") == []
        assert db.delete_runs("SPEC-8") == 1
        assert db.query_latest_synthesis("SPEC-8", "spec-plan") is None
    assert stdlib_rows(path, "SELECT count(*) FROM consensus_artifacts WHERE spec_id = 'SPEC-8'") == [(0,)]
