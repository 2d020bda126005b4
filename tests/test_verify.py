"""Issue 20: `verify_schemas()` and `consensus-db verify` — the legacy tables against
the new ones, on real files an old binary wrote (stdlib sqlite3 in a child process) and
then tampered with."""

from __future__ import annotations

import json
import sqlite3

from click.testing import CliRunner

import consensus_db
from consensus_db.cli import main as cli

import predecessor


def item(spec: str, stage: str, n: int) -> dict:
    return {"spec_id": spec, "stage": stage, "agent_name": ["gemini", "claude", "code"][n % 3],
            "content": json.dumps({"n": n}), "run_id": f"run-{spec}", "response_text": f"raw {n}"}


def migrated_file(tmp_path):
    path = tmp_path / "v.db"
    predecessor.run(path, "create_legacy")
    predecessor.run(path, "artifacts", build="legacy",
                    items=[item("SPEC-1", "plan", n) for n in range(3)] + [item("SPEC-2", "tasks", n) for n in range(2)])
    predecessor.run(path, "synthesis", build="legacy", synthesis={
        "spec_id": "SPEC-1", "stage": "plan", "output_markdown": "# m", "status": "success",
        "agreements": ["a", "b"], "run_id": "run-SPEC-1"})
    with consensus_db.connect(path, write_mode="dual") as db:  # migrates to version 1, backfilled
        db.store_artifact("SPEC-2", "tasks", "gpt_pro", {"new": 1}, model_version="m-3")
    return path


def tamper(path, sql: str) -> None:
    conn = sqlite3.connect(path)
    conn.execute(sql)
    conn.commit()
    conn.close()


def verify(path) -> tuple[int, dict]:
    done = CliRunner().invoke(cli, ["verify", str(path), "--json"])
    return done.exit_code, json.loads(done.output)


def test_a_clean_file_is_consistent_group_by_group(tmp_path):
    path = migrated_file(tmp_path)
    with consensus_db.connect(path) as db:
        report = db.verify_schemas()
    assert report["comparable"] and report["consistent"] and report["mismatches"] == []
    groups = {(g["kind"], g["spec_id"], g["stage"]): g for g in report["groups"]}
    assert set(groups) == {("artifacts", "SPEC-1", "plan"), ("artifacts", "SPEC-2", "tasks"),
                           ("syntheses", "SPEC-1", "plan")}
    assert (groups["artifacts", "SPEC-2", "tasks"]["legacy_count"], groups["artifacts", "SPEC-2", "tasks"]["v1_count"]) == (3, 3)
    assert all(g["matches"] and g["legacy_hash"] == g["v1_hash"] and len(g["v1_hash"]) == 64 for g in groups.values())
    code, cli_report = verify(path)
    assert code == 0 and cli_report == report
    done = CliRunner().invoke(cli, ["verify", str(path)])
    assert done.exit_code == 0 and "3 groups, 14 rows compared: consistent" in done.output


def test_tampering_on_either_side_is_listed_with_ids_and_fields(tmp_path):
    path = migrated_file(tmp_path)
    tamper(path, "UPDATE consensus_artifacts SET content_json = '{\"n\": 99}' WHERE id = 2")
    tamper(path, "DELETE FROM agent_outputs WHERE legacy_artifact_id = 4")
    tamper(path, "INSERT INTO consensus_artifacts (spec_id, stage, agent_name, content_json) VALUES ('SPEC-1', 'plan', 'x', '{}')")
    tamper(path, "UPDATE consensus_runs SET synthesis_json = json_set(synthesis_json, '$.status', 'failed')"
                 " WHERE synthesis_json IS NOT NULL")
    code, report = verify(path)
    assert code == 1 and report["consistent"] is False
    problems = sorted((m["kind"], m["problem"], m["legacy_id"], m["v1_id"] is not None, tuple(m["fields"]))
                      for m in report["mismatches"])
    assert problems == [
        ("artifacts", "differs", 2, True, ("content_json",)),
        ("artifacts", "legacy_only", 4, False, ()),
        ("artifacts", "legacy_only", 7, False, ()),
        ("syntheses", "differs", 1, True, ("status",)),
    ]
    assert not any(g["matches"] for g in report["groups"] if g["spec_id"] == "SPEC-1")
    done = CliRunner().invoke(cli, ["verify", str(path)])
    assert done.exit_code == 1
    assert "legacy_only artifacts SPEC-2 / tasks, legacy id 4" in done.output
    assert "differs     syntheses SPEC-1 / plan, legacy id 1, v1 id" in done.output and ": status" in done.output
    assert "4 mismatches" in done.output


def test_rows_written_in_v1_mode_show_until_dual_mode_writes_them_back(tmp_path):
    path = migrated_file(tmp_path)
    with consensus_db.connect(path) as db:
        new = db.store_artifact("SPEC-1", "plan", "claude", {"v1": "only"})
        report = db.verify_schemas()
        assert [(m["problem"], m["v1_id"]) for m in report["mismatches"]] == [("v1_only", new)]
    with consensus_db.connect(path, write_mode="dual") as db:
        assert db.verify_schemas()["consistent"]


def test_the_predecessors_unlinked_copies_pair_as_the_reader_pairs_them(tmp_path):
    path = migrated_file(tmp_path)
    pairs = predecessor.run(path, "artifacts", build="dual", items=[item("SPEC-3", "plan", n) for n in range(2)])
    assert all(None not in p for p in pairs)  # one legacy row and one unlinked new-schema row each
    with consensus_db.connect(path) as db:
        report = db.verify_schemas()
    assert report["consistent"], report["mismatches"]


def test_a_file_with_one_schema_has_nothing_to_compare(tmp_path):
    fresh = tmp_path / "fresh.db"
    consensus_db.connect(fresh).close()
    code, report = verify(fresh)
    assert code == 0 and report["comparable"] is False and "no legacy tables" in report["reason"]
    legacy = tmp_path / "legacy.db"
    predecessor.run(legacy, "create_legacy")
    done = CliRunner().invoke(cli, ["verify", str(legacy)])
    assert done.exit_code == 0 and "no new tables (schema version 0)" in done.output
    assert sqlite3.connect(legacy).execute("PRAGMA user_version").fetchone() == (0,)  # verify migrated nothing
    missing = CliRunner().invoke(cli, ["verify", str(tmp_path / "nope.db")])
    assert missing.exit_code != 0 and "nope.db" in missing.output


def test_twins_written_a_moment_apart_across_a_second_still_match(tmp_path):
    path = migrated_file(tmp_path)
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO consensus_artifacts (spec_id, stage, agent_name, content_json, created_at)"
                 " VALUES ('SPEC-4', 'plan', 'gemini', '{}', '2025-01-01 00:00:00')")
    run = conn.execute("INSERT INTO consensus_runs (spec_id, stage, run_timestamp, consensus_ok)"
                       " VALUES ('SPEC-4', 'plan', 1735689599900, 1)").lastrowid
    conn.execute("INSERT INTO agent_outputs (run_id, agent_name, content, output_timestamp)"
                 " VALUES (?, 'gemini', '{}', 1735689599900)", (run,))  # 100 ms earlier, the second before
    conn.commit()
    conn.close()
    with consensus_db.connect(path, migrate=False) as db:
        report = db.verify_schemas()
        assert report["consistent"], report["mismatches"]
        assert len(db.query_artifacts("SPEC-4", "plan")) == 1  # the reader reads the pair once too
