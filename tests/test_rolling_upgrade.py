"""Issue 20: a rolling upgrade and back. An old binary (the predecessor's legacy build:
stdlib sqlite3 in a child process, legacy SQL only) and this store share one file
through every phase — dual writes, read cutover, write cutover, dropping the legacy
tables — and through the rollback of each, and every row stays visible to both."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter

import pytest
from click.testing import CliRunner

import consensus_db
from consensus_db.cli import main as cli

import predecessor

SPECS = [("SPEC-1", "spec-plan"), ("SPEC-2", "spec-tasks")]


def item(spec: str, stage: str, n: int, who: str) -> dict:
    return {"spec_id": spec, "stage": stage, "agent_name": ["gemini", "claude", "code", "gpt_pro"][n % 4],
            "content": json.dumps({"n": n, "by": who}), "run_id": f"run-{spec}"}


def key(a: dict) -> tuple:
    return (a["spec_id"], a["stage"], a["agent_name"], a["content"])


def old_sees(path) -> Counter:
    """What the old binary reads: its own query, per spec/stage."""
    seen: Counter = Counter()
    for spec, stage in SPECS:
        for agent, content in predecessor.run(path, "read_artifacts", spec_id=spec, stage=stage):
            seen[(spec, stage, agent, content)] += 1
    return seen


def new_sees(db: consensus_db.Store) -> Counter:
    return Counter((a.spec_id, a.stage, a.agent_name, a.content_json) for spec, stage in SPECS
                   for a in db.query_artifacts(spec, stage))


def old_writes(path, items: list) -> None:
    predecessor.run(path, "artifacts", build="legacy", items=items)


def new_writes(db: consensus_db.Store, items: list) -> None:
    for a in items:
        db.store_artifact(a["spec_id"], a["stage"], a["agent_name"], a["content"], run_id=a["run_id"],
                          model_version="model-7")


def table(path, sql: str) -> list:
    """Reads with the stdlib's SQLite: only while no store has the file open (two SQLite
    libraries in one process break each other's POSIX locks)."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


PHASES: list[str] = []


def seen_by_both(phase: str, path, db: consensus_db.Store, expected: Counter, old_expected: Counter | None = None,
                 problems: tuple = ()):
    """Both sides see ``expected`` (the old binary ``old_expected``), and the consistency
    check lists exactly ``problems``: rows an old binary wrote since the last backfill
    (``legacy_only``: the reader falls back to them) or written in v1-only mode
    (``v1_only``: the old binary cannot see them)."""
    old, new = old_sees(path), new_sees(db)
    check = db.verify_schemas()
    listed = Counter(m["problem"] for m in check["mismatches"])
    verdict = (("consistent" if check["consistent"] else ", ".join(f"{n} {p}" for p, n in sorted(listed.items())))
               if check["comparable"] else "one schema")
    PHASES.append(f"{phase:<44} written {sum(expected.values()):>3}   old binary sees {sum(old.values()):>3}   "
                  f"store sees {sum(new.values()):>3}   verify: {verdict}")
    assert new == expected
    assert old == (expected if old_expected is None else old_expected)
    assert tuple(sorted(m["problem"] for m in check["mismatches"])) == problems
    assert check["consistent"] == (not problems)


def test_a_rolling_upgrade_and_back_keeps_every_row_visible_to_both(tmp_path, capsys):
    path = tmp_path / "fleet.db"
    predecessor.run(path, "create_legacy")
    written: Counter = Counter()

    # Phase 0: the old binary alone.
    first = [item(s, st, i, "old") for s, st in SPECS for i in range(3)]
    old_writes(path, first)
    predecessor.run(path, "synthesis", build="legacy", synthesis={
        "spec_id": "SPEC-1", "stage": "spec-plan", "output_markdown": "# old", "status": "success"})
    written.update(key(a) for a in first)
    assert old_sees(path) == written
    PHASES.append(f"{'0 old binary alone (version 0)':<44} written {sum(written.values()):>3}   old binary sees "
                  f"{sum(written.values()):>3}")

    # Phase 1: new hosts join in dual-write mode; old hosts keep writing.
    with consensus_db.connect(path, write_mode="dual") as db:
        assert (db.schema_version, db.write_mode, db.read_mode) == (1, "dual", "dual")
        mine = [item(s, st, i, "new-1") for s, st in SPECS for i in range(3, 5)]
        new_writes(db, mine)
        theirs = [item("SPEC-1", "spec-plan", 9, "old-1")]
        old_writes(path, theirs)
        written.update(key(a) for a in mine + theirs)
        db.store_synthesis("SPEC-1", "spec-plan", "# dual", run_id="run-SPEC-1")
        seen_by_both("1 dual write (old hosts still writing)", path, db, written, problems=("legacy_only",))
        # The old binary's newest synthesis is the store's.
        assert predecessor.run(path, "read_syntheses", spec_id="SPEC-1", stage="spec-plan")[0] == ["# dual"]
        assert db.query_latest_synthesis("SPEC-1", "spec-plan").output_markdown == "# dual"

    # Phase 2: every host runs the store; reads cut over (no legacy fallback). The old
    # binary's last rows are copied into the new tables as the switch is made.
    with consensus_db.connect(path, write_mode="dual", read_mode="v1") as db:
        assert db.query("SELECT count(*) FROM consensus_artifacts a WHERE NOT EXISTS"
                        " (SELECT 1 FROM agent_outputs o WHERE o.legacy_artifact_id = a.id)")[0] == (0,)
        more = [item("SPEC-2", "spec-tasks", 11, "new-2")]
        new_writes(db, more)
        written.update(key(a) for a in more)
        seen_by_both("2 read cutover (dual write, v1 reads)", path, db, written)
        assert db.reader_stats()["legacy"] == 0

    # Phase 3: writes cut over. By design the old binary no longer sees new rows...
    before_cutover = Counter(written)
    with consensus_db.connect(path, read_mode="v1") as db:
        cut = [item(s, st, 20, "new-3") for s, st in SPECS]
        new_writes(db, cut)
        written.update(key(a) for a in cut)
        seen_by_both("3 write cutover (v1 only)", path, db, written, old_expected=before_cutover,
                     problems=("v1_only", "v1_only"))

    # ... until the rollback of that phase: dual mode writes them back, nothing lost.
    with consensus_db.connect(path, write_mode="dual") as db:
        seen_by_both("3 rolled back (dual write again)", path, db, written)
        again = [item("SPEC-1", "spec-plan", 21, "old-3")]
        old_writes(path, again)
        written.update(key(a) for a in again)
        seen_by_both("3 rolled back, old hosts writing again", path, db, written, problems=("legacy_only",))

    # Phase 4: drop the legacy tables; refused while an agent is running.
    with consensus_db.connect(path, read_mode="v1") as db:
        db.record_agent_spawn("agent-1", "SPEC-1", "spec-plan", "regular_stage", "gemini")
        with pytest.raises(consensus_db.ExecutionsInFlightError, match="1 agent executions are in flight"):
            db.migrate(2)
        assert db.schema_version == 1
        db.record_agent_completion("agent-1", "done")
        assert db.migrate(2) == 2
        late = [item(s, st, 30, "new-4") for s, st in SPECS]
        new_writes(db, late)
        written.update(key(a) for a in late)
        assert new_sees(db) == written
    # The old binaries refuse version 2 (the one that knows versions) or fail on it.
    assert predecessor.run(path, "read_artifacts", build="dual", spec_id="SPEC-1", stage="spec-plan") == {"refused": 2}
    PHASES.append(f"{'4 legacy tables dropped':<44} written {sum(written.values()):>3}   old binary refuses v2"
                  f"          store sees {sum(written.values()):>3}")

    # Rollback of phase 4 to version 1, then to 0: every row back in the legacy tables.
    done = CliRunner().invoke(cli, ["downgrade", str(path), "--to", "1", "--no-backup", "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["after"]["schema_version"] == 1
    with consensus_db.connect(path, migrate=False) as db:
        seen_by_both("4 rolled back to version 1", path, db, written)
    done = CliRunner().invoke(cli, ["downgrade", str(path), "--no-backup"])
    assert done.exit_code == 0, done.output
    assert "schema version 1 -> 0" in done.output
    assert table(path, "PRAGMA user_version") == [(0,)]
    assert table(path, "SELECT count(*) FROM sqlite_master WHERE name IN ('consensus_runs', 'agent_outputs')") == [(0,)]
    with consensus_db.connect(path, migrate=False) as db:
        seen_by_both("rolled back to version 0 (legacy only)", path, db, written)
    # And up again: what the legacy format cannot hold came back whole.
    with consensus_db.connect(path) as db:
        seen_by_both("upgraded again to version 1", path, db, written)
        by_new = [a for a in db.query_artifacts("SPEC-1", "spec-plan") if '"new-' in a.content_json]
        assert by_new and all(a.model_version == "model-7" for a in by_new)
        assert all(a.model_version is None for a in db.query_artifacts("SPEC-1", "spec-plan")
                   if '"old' in a.content_json)

    with capsys.disabled():
        print("\nrolling upgrade and back (artifacts per side):")
        for line in PHASES:
            print("  " + line)


def legacy_v1_file(tmp_path):
    path = tmp_path / "v1.db"
    predecessor.run(path, "create_legacy")
    old_writes(path, [item("SPEC-1", "spec-plan", 0, "old")])
    consensus_db.connect(path).close()
    return path


def test_dual_write_mode_writes_each_row_to_both_schemas_once_linked(tmp_path):
    path = legacy_v1_file(tmp_path)
    with consensus_db.connect(path, write_mode="dual") as db:
        one = db.store_artifact("SPEC-1", "spec-plan", "claude", {"x": 1}, response_text="raw", model_version="m")
        batch = db.store_artifacts([{"spec_id": "SPEC-1", "stage": "spec-plan", "agent_name": f"a{i}",
                                     "content_json": "[]", "run_id": "r"} for i in range(3)])
        run = db.store_synthesis("SPEC-1", "spec-plan", "# both", run_id="r", agreements="yes")
        got = db.query_artifacts("SPEC-1", "spec-plan")
        # The old binary's row was backfilled at the migration: every row is read once, from v1.
        assert [a.source for a in got] == ["v1"] * 5 and {one, *batch} < {a.id for a in got}
        assert db.query_latest_synthesis("SPEC-1", "spec-plan").source == "v1"
    links = table(path, "SELECT o.id, a.agent_name, a.content_json, a.response_text, a.model_version,"
                        " a.created_at_ms = o.output_timestamp, a.created_at = strftime('%Y-%m-%d %H:%M:%S',"
                        " o.output_timestamp / 1000, 'unixepoch')"
                        " FROM agent_outputs o JOIN consensus_artifacts a ON a.id = o.legacy_artifact_id"
                        f" WHERE o.id IN ({one}, {', '.join(map(str, batch))}) ORDER BY o.id")
    assert links[0] == (one, "claude", '{"x": 1}', "raw", "m", 1, 1)
    assert [row[1] for row in links[1:]] == ["a0", "a1", "a2"]
    assert table(path, "SELECT s.output_markdown, s.agreements, s.run_id FROM consensus_runs r"
                       f" JOIN consensus_synthesis s ON s.id = r.legacy_synthesis_id WHERE r.id = {run}") == [
        ("# both", "yes", "r")]


def test_dual_write_through_asyncio_lands_in_both_schemas(tmp_path):
    import asyncio

    from consensus_db import aio

    path = legacy_v1_file(tmp_path)

    async def main() -> int:
        async with aio.connect(path, write_mode="dual") as db:
            ids = await asyncio.gather(*(db.store_artifact("S", "plan", "g", {"n": i}) for i in range(5)))
            return len(set(ids))

    assert asyncio.run(main()) == 5
    assert table(path, "SELECT count(*) FROM agent_outputs o JOIN consensus_artifacts a ON a.id = o.legacy_artifact_id"
                       " WHERE a.spec_id = 'S'") == [(5,)]


def test_turning_dual_mode_on_writes_back_what_v1_mode_wrote(tmp_path):
    path = legacy_v1_file(tmp_path)
    with consensus_db.connect(path) as db:  # v1 only
        db.store_artifact("SPEC-1", "spec-plan", "claude", {"v1": True})
        db.store_synthesis("SPEC-1", "spec-plan", "# v1 only")
    assert len(predecessor.run(path, "read_artifacts", spec_id="SPEC-1", stage="spec-plan")) == 1
    consensus_db.connect(path, write_mode="dual").close()
    assert len(predecessor.run(path, "read_artifacts", spec_id="SPEC-1", stage="spec-plan")) == 2
    assert predecessor.run(path, "read_syntheses", spec_id="SPEC-1", stage="spec-plan") == [["# v1 only"]]


def test_modes_that_need_the_legacy_tables_are_refused_without_them(tmp_path):
    fresh = tmp_path / "fresh.db"
    for kwargs in ({"write_mode": "dual"}, {"read_mode": "legacy"}):
        with pytest.raises(consensus_db.InvalidInputError, match="legacy tables.*has none"):
            consensus_db.connect(fresh, **kwargs)
    with pytest.raises(consensus_db.InvalidInputError, match="write_mode: must be 'v1' or 'dual', got \"both\""):
        consensus_db.connect(fresh, write_mode="both")
    with pytest.raises(consensus_db.InvalidInputError, match="read_mode"):
        consensus_db.connect(fresh, read_mode="new")
    path = legacy_v1_file(tmp_path)
    with consensus_db.connect(path, write_mode="dual") as db:
        with pytest.raises(consensus_db.MigrationError, match="write_mode='dual'"):
            db.migrate(2, force=True)
        assert db.schema_version == 1


def test_read_modes_choose_the_schemas_read(tmp_path):
    path = legacy_v1_file(tmp_path)
    with consensus_db.connect(path) as db:
        db.store_artifact("SPEC-1", "spec-plan", "claude", {"v1": True})
    old_writes(path, [item("SPEC-1", "spec-plan", 5, "old-late")])  # legacy only, no copy yet
    with consensus_db.connect(path, read_mode="legacy") as db:
        got = db.query_artifacts("SPEC-1", "spec-plan")
        assert sorted(a.source for a in got) == ["legacy", "legacy"]  # the backfilled row and the late one
    with consensus_db.connect(path, read_only=True, read_mode="dual") as db:
        assert len(db.query_artifacts("SPEC-1", "spec-plan")) == 3
    with pytest.raises(consensus_db.InvalidInputError, match="would hide 1 legacy rows"):
        consensus_db.connect(path, read_only=True, read_mode="v1")
    with consensus_db.connect(path, read_mode="v1") as db:  # copies the late row first
        got = db.query_artifacts("SPEC-1", "spec-plan")
        assert [a.source for a in got] == ["v1"] * 3


def test_a_downgrade_refuses_while_agents_are_in_flight_unless_forced(tmp_path):
    path = tmp_path / "busy.db"
    with consensus_db.connect(path) as db:
        db.store_artifact("S", "plan", "g", "{}")
        db.record_agent_spawn("a1", "S", "plan", "regular_stage", "g")
        db.record_agent_spawn("a2", "S", "plan", "regular_stage", "g")
    result = CliRunner().invoke(cli, ["downgrade", str(path), "--no-backup"])
    assert result.exit_code == 1
    assert "2 agent executions are in flight" in result.output and "is still at schema version 2" in result.output
    assert table(path, "PRAGMA user_version") == [(2,)]
    result = CliRunner().invoke(cli, ["downgrade", str(path), "--no-backup", "--in-flight-age", "0.5"])
    assert result.exit_code == 1  # spawned just now: younger than half a second too
    with consensus_db.connect(path) as db:
        with pytest.raises(consensus_db.InvalidInputError, match="in_flight_age.*got -1"):
            db.migrate(0, in_flight_age=-1)
        with pytest.raises(consensus_db.ExecutionsInFlightError, match="2 agent executions"):
            db.migrate(0, in_flight_age=1e9)  # 31 years: older spawns too
    result = CliRunner().invoke(cli, ["downgrade", str(path), "--no-backup", "--force", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (report["after"]["schema_version"], report["written_back"]) == (0, 1)
    result = CliRunner().invoke(cli, ["downgrade", str(path), "--no-backup"])
    assert result.exit_code == 0 and "already" in result.output


def test_a_refused_downgrade_or_drop_legacy_takes_no_backup(tmp_path):
    """The refusals the library would make (agents in flight, an in_flight_age it does
    not take, nothing to do) are checked before the backup: only a move that goes ahead
    leaves one. --in-flight-age takes what in_flight_age= takes."""
    path = tmp_path / "busy.db"
    with consensus_db.connect(path) as db:
        db.store_artifact("S", "plan", "g", "{}")
        db.record_agent_spawn("a1", "S", "plan", "regular_stage", "g")
        with pytest.raises(consensus_db.InvalidInputError, match="in_flight_age.*got 1000000000000"):
            db.migrate(0, in_flight_age=1e12)
    with consensus_db.connect(path, read_only=True) as db:  # what the CLI checks before its backup
        with pytest.raises(consensus_db.ExecutionsInFlightError, match="1 agent executions are in flight"):
            db.migrate(0, dry_run=True)
        with pytest.raises(consensus_db.InvalidInputError, match="in_flight_age.*got 1000000000000"):
            db.migrate(0, in_flight_age=1e12, dry_run=True)
        with pytest.raises(consensus_db.InvalidInputError, match="invalid target: a dry run needs a target"):
            db.migrate(dry_run=True)
        assert db.migrate(0, force=True, dry_run=True) == 0 and db.schema_version == 2

    def backups() -> list:
        return sorted(p.name for p in tmp_path.iterdir() if ".backup-" in p.name)

    def refused(*args: str, said: str) -> None:
        result = CliRunner().invoke(cli, [args[0], str(path), *args[1:]])
        assert result.exit_code == 1 and said in result.output, result.output
        assert backups() == [], f"{args}: refused, yet backed up"
        assert "is still at schema version" in result.output and "no backup" in result.output, result.output

    refused("downgrade", said="1 agent executions are in flight")
    for age in ("1e12", "0", "-1", "nan"):
        refused("downgrade", "--in-flight-age", age, said="invalid in_flight_age")
        refused("upgrade", "--in-flight-age", age, said="invalid in_flight_age")
    with consensus_db.connect(path) as db:
        db.migrate(1, force=True)
    refused("upgrade", "--drop-legacy", said="1 agent executions are in flight")
    result = CliRunner().invoke(cli, ["downgrade", str(path), "--to", "1"])
    assert result.exit_code == 0 and "already" in result.output and backups() == []
    assert table(path, "PRAGMA user_version") == [(1,)]
    result = CliRunner().invoke(cli, ["downgrade", str(path), "--force", "--in-flight-age", "1e9"])
    assert result.exit_code == 0, result.output
    assert len(backups()) == 1 and table(path, "PRAGMA user_version") == [(0,)]


def test_a_downgrade_links_the_predecessors_dual_written_copies_instead_of_copying_them(tmp_path):
    path = legacy_v1_file(tmp_path)
    late = [item("SPEC-1", "spec-plan", i, "dual-build") for i in range(20, 23)]
    assert all(None not in ids for ids in predecessor.run(path, "artifacts", build="dual", items=late))
    predecessor.run(path, "synthesis", build="dual", synthesis={
        "spec_id": "SPEC-1", "stage": "spec-plan", "output_markdown": "# pair", "status": "success"})
    with consensus_db.connect(path) as db:
        db.store_artifact("SPEC-1", "spec-plan", "claude", {"v1": "only"})
        assert len(db.query_artifacts("SPEC-1", "spec-plan")) == 5
        db.migrate(0)
    # 1 old row + 3 pairs, linked not copied, + the one v1-only row written back.
    assert table(path, "SELECT count(*) FROM consensus_artifacts") == [(5,)]
    assert table(path, "SELECT count(*) FROM consensus_synthesis") == [(1,)]
    assert old_sees(path) == Counter({key(a): 1 for a in [item("SPEC-1", "spec-plan", 0, "old"), *late]}) + Counter(
        {("SPEC-1", "spec-plan", "claude", '{"v1": "only"}'): 1})


def test_reader_stats_count_reads_per_path_with_latency_percentiles(tmp_path):
    path = legacy_v1_file(tmp_path)  # SPEC-1/spec-plan backfilled into v1
    old_writes(path, [item("SPEC-9", "spec-plan", 1, "old-late")])  # legacy only: the fallback serves it
    with consensus_db.connect(path) as db:
        for _ in range(30):
            assert db.query_artifacts("SPEC-1", "spec-plan")[0].source == "v1"
        for _ in range(10):
            assert db.query_artifacts("SPEC-9", "spec-plan")[0].source == "legacy"
        for _ in range(5):
            assert db.query_latest_synthesis("NONE", "plan") is None
        stats = db.reader_stats()
        assert (stats["v1"], stats["legacy"], stats["empty"], stats["reads"]) == (30, 10, 5, 45)
        assert stats["fallback_rate"] == pytest.approx(10 / 45)
        for path_name, count in (("v1", 30), ("legacy", 10), ("empty", 5)):
            latency = stats["latency_us"][path_name]
            assert latency["count"] == count
            assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"] < 1e6
        health = db.health()
        assert health["reader"]["reads"] == 45 and health["reader"]["latency_us"]["v1"]["count"] == 30
    done = CliRunner().invoke(cli, ["health", str(path), "--json"])
    assert done.exit_code == 0 and json.loads(done.output)["reader"]["reads"] == 0  # a new store: nothing read yet


def test_a_downgrade_keeps_rows_when_an_old_binary_recreated_the_legacy_tables_at_version_2(tmp_path):
    path = legacy_v1_file(tmp_path)
    with consensus_db.connect(path, write_mode="dual") as db:
        db.store_artifact("S", "plan", "new", "{}")  # linked to a legacy row whose id a recreated table reuses
    with consensus_db.connect(path) as db:
        db.migrate(2)
    conn = sqlite3.connect(path)  # an old binary still on the file: recreates its table, inserts
    conn.executescript(predecessor.LEGACY_DDL.replace("CREATE TABLE ", "CREATE TABLE IF NOT EXISTS ")
                       .replace("CREATE INDEX ", "CREATE INDEX IF NOT EXISTS "))
    conn.execute("INSERT INTO consensus_artifacts (spec_id, stage, agent_name, content_json) VALUES ('S', 'plan', 'old', '{}')")
    conn.commit()
    conn.close()
    with consensus_db.connect(path) as db:
        assert sorted(a.agent_name for a in db.query_artifacts("S", "plan")) == ["new", "old"]
        db.migrate(1)
        assert db.verify_schemas()["consistent"]
        db.migrate(0)
    assert sorted(table(path, "SELECT agent_name FROM consensus_artifacts WHERE spec_id = 'S'")) == [("new",), ("old",)]



@pytest.mark.parametrize("target", [2, 0], ids=["drop-legacy-1-to-2", "drop-new-1-to-0"])
def test_a_dual_build_writing_during_a_chunked_move_leaves_one_copy(tmp_path, target):
    """1 -> 2 and 1 -> 0 in chunks, every row linked as they begin (no twins to pair, so
    far): the predecessor's dual-write build, still running mid-rollout, writes an
    artifact to both schemas between two chunks. Its two copies are one artifact: the
    move pairs them instead of copying one beside its twin."""
    path = tmp_path / "rolling.db"
    conn = sqlite3.connect(path)
    conn.executescript(consensus_db._core.LEGACY_SCHEMA_SQL)
    conn.executemany(
        "INSERT INTO consensus_artifacts (spec_id, stage, agent_name, content_json, run_id, created_at)"
        " VALUES (?, 'spec-plan', 'gemini', ?, 'run-old', '2025-01-01 00:00:00')",
        ((f"SPEC-{i % 50}", json.dumps({"n": i})) for i in range(5_000)))
    conn.commit()
    conn.close()
    with consensus_db.connect(path) as db:  # 0 -> 1: every copy linked
        assert db.schema_version == 1
    late = item("SPEC-LATE", "spec-plan", 0, "dual-build")
    written = []

    def progress(done, total):
        if not written:  # between the first chunk and the second
            written.append(predecessor.run(path, "artifacts", build="dual", items=[late]))
        return True

    with consensus_db.connect(path, migrate=False) as db:
        db.migrate(target, force=True, progress=progress)
        assert written and None not in written[0][0]
    if target == 2:
        assert table(path, "SELECT agent_name, content FROM agent_outputs WHERE content LIKE '%dual-build%'") == [
            (late["agent_name"], late["content"])]
        assert table(path, "SELECT count(*) FROM agent_outputs") == [(5_001,)]
    else:
        assert table(path, "SELECT agent_name, content_json FROM consensus_artifacts WHERE spec_id = 'SPEC-LATE'") == [
            (late["agent_name"], late["content"])]
        assert table(path, "SELECT count(*) FROM consensus_artifacts") == [(5_001,)]
