"""The high-level store: each operation's behaviour, ordering, validation, hostile input.
Every test runs on both backends (`db` is built on conftest's `store_target`)."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone

import pytest

import consensus_db
from conftest import ph

UTC_TEXT = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")


def utc_ago(**delta) -> str:
    return (datetime.now(timezone.utc) - timedelta(**delta)).strftime("%Y-%m-%d %H:%M:%S")


@pytest.fixture
def db(store_target):
    store = consensus_db.connect(store_target)
    yield store
    store.close()


def count(db, table: str) -> int:
    return db.query(f"SELECT count(*) FROM {table}")[0][0]


# ---- executions ------------------------------------------------------------------------


def test_spawn_info_name_and_not_found(db):
    db.record_agent_spawn("a1", "SPEC-1", "plan", "quality_gate", "gemini", run_id="r1")
    db.record_agent_spawn("a2", "SPEC-1", "tasks", "regular_stage", "claude")
    assert db.get_agent_spawn_info("a1") == ("quality_gate", "plan")
    assert db.get_agent_spawn_info("a2") == ("regular_stage", "tasks")
    assert db.get_agent_name("a2") == "claude"
    assert db.get_agent_spawn_info("nobody") is None
    assert db.get_agent_name("nobody") is None
    assert db.record_agent_completion("nobody", "x") is False
    assert db.record_extraction_failure("nobody", "x", "bad") is False
    assert count(db, "agent_executions") == 2


def test_completion_and_respawn(db):
    db.record_agent_spawn("a1", "S", "plan", "quality_gate", "gemini")
    assert db.record_agent_completion("a1", "the answer") is True
    row = db.query("SELECT completed_at, response_text FROM agent_executions WHERE agent_id = 'a1'")[0]
    assert UTC_TEXT.match(row[0]) and row[1] == "the answer"
    db.record_agent_spawn("a1", "S", "validate", "regular_stage", "code")
    assert db.get_agent_spawn_info("a1") == ("regular_stage", "validate")
    assert db.query("SELECT completed_at, response_text FROM agent_executions WHERE agent_id = 'a1'") == [(None, None)]


def test_extraction_failures_are_ordered_by_spawn_then_agent(db):
    for agent_id, age_h in [("b", 3), ("a", 3), ("c", 1), ("ok", 2)]:
        db.record_agent_spawn(agent_id, "S", "plan", "quality_gate", "gemini")
        db.execute(ph(db, "UPDATE agent_executions SET spawned_at = ? WHERE agent_id = ?"), [utc_ago(hours=age_h), agent_id])
    for agent_id in ("c", "a", "b"):
        db.record_extraction_failure(agent_id, f"raw {agent_id}", f"error {agent_id}")
    db.record_agent_completion("ok", "fine")
    failures = db.query_extraction_failures("S", order="oldest")
    assert [f.agent_id for f in failures] == ["a", "b", "c"]
    assert failures[0].extraction_error == "error a" and failures[0].response_text == "raw a"
    assert failures[0].to_dict()["phase_type"] == "quality_gate"
    assert "ExtractionFailure(agent_id='a'" in repr(failures[0])
    assert db.query_extraction_failures("other", order="oldest") == []


def test_cleanup_deletes_exactly_the_rows_older_than_n_days(db):
    ages = {"old-1": timedelta(days=31), "old-2": timedelta(days=90), "young-1": timedelta(days=29),
            "young-2": timedelta(hours=1)}
    for agent_id, age in ages.items():
        db.record_agent_spawn(agent_id, "S", "plan", "quality_gate", "gemini")
        db.execute(ph(db, "UPDATE agent_executions SET spawned_at = ? WHERE agent_id = ?"),
                   [(datetime.now(timezone.utc) - age).strftime("%Y-%m-%d %H:%M:%S"), agent_id])
    assert db.cleanup_old_executions(30) == 2
    assert sorted(r[0] for r in db.query("SELECT agent_id FROM agent_executions")) == ["young-1", "young-2"]
    assert db.cleanup_old_executions(30) == 0
    assert db.cleanup_old_executions(0) == 2
    assert db.cleanup_old_executions(10**12) == 0


# ---- artifacts ---------------------------------------------------------------------------


def test_artifacts_round_trip_in_order(db):
    ids = [db.store_artifact("S", "plan", agent, {"agent": agent}, response_text=f"raw {agent}", run_id="r1",
                             model_version="m1") for agent in ("gemini", "claude", "code")]
    db.store_artifact("S", "tasks", "gemini", "[1, 2]")
    got = db.query_artifacts("S", "plan", order="oldest")
    assert [a.id for a in got] == ids  # oldest first, ties by id
    first = got[0]
    assert (first.spec_id, first.stage, first.agent_name, first.run_id, first.model_version, first.source) == (
        "S", "plan", "gemini", "r1", "m1", "v1")
    assert json.loads(first.content_json) == {"agent": "gemini"} and first.content() == {"agent": "gemini"}
    assert first.response_text == "raw gemini"
    assert UTC_TEXT.match(first.created_at)
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    assert abs(datetime.strptime(first.created_at, "%Y-%m-%d %H:%M:%S") - now) < timedelta(minutes=1)
    as_text = datetime.fromtimestamp(first.created_at_ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    assert as_text == first.created_at == first.to_dict()["created_at"]
    assert first == db.query_artifacts("S", "plan", order="oldest")[0] and first != got[1]
    assert first.to_dict()["content_json"] == first.content_json
    assert repr(first).startswith("Artifact(id=")
    assert db.query_artifacts("S", "nothing", order="oldest") == []


def test_store_artifacts_is_one_transaction(db):
    batch = [{"spec_id": "S", "stage": "plan", "agent_name": f"a{i}", "content_json": {"i": i}} for i in range(5)]
    ids = db.store_artifacts(batch)
    assert len(ids) == 5 == len(set(ids))
    bad = batch + [{"spec_id": "S", "stage": "plan", "agent_name": "x", "content_json": "{not json"}]
    with pytest.raises(consensus_db.InvalidInputError, match=r"artifacts\[5\]\.content_json"):
        db.store_artifacts(bad)
    with pytest.raises(consensus_db.InvalidInputError, match=r"artifacts\[0\]\.agent_name.*missing"):
        db.store_artifacts([{"spec_id": "S", "stage": "plan", "content_json": "{}"}])
    assert count(db, "agent_outputs") == 5



def test_store_artifacts_returns_each_rows_id_in_input_order(db):
    """A batch goes in as multi-row INSERTs (chunks of 50); every returned id must be
    the row made from the item at the same position, across chunk and group borders."""
    items = [{"spec_id": f"S{i % 3}", "stage": "plan", "agent_name": f"a{i}", "content_json": {"i": i},
              "run_id": f"r{i % 7}"} for i in range(123)]
    ids = db.store_artifacts(items)
    assert ids == sorted(ids) and len(set(ids)) == 123
    by_id = {row[0]: (row[1], json.loads(row[2])["i"]) for row in db.query("SELECT id, agent_name, content FROM agent_outputs")}
    assert [by_id[i] for i in ids] == [(f"a{i}", i) for i in range(123)]
    assert db.store_artifacts([]) == []


def test_store_artifacts_near_the_top_of_the_id_range(db_path):
    """agent_outputs ids are AUTOINCREMENT (the seed layout): never reused, so with the
    largest id at 2**63 - 3 a batch of 5 cannot get ids. It fails whole, with a typed
    error that says so, and writes nothing; a batch that fits still goes in."""
    # SQLite only: AUTOINCREMENT's rule; PostgreSQL ids come from an identity sequence.
    db = consensus_db.connect(db_path)
    top = 2**63 - 3
    db.store_artifact("S", "plan", "seed", "{}")
    db.execute(ph(db, "UPDATE agent_outputs SET id = ?"), [top])
    items = [{"spec_id": "S", "stage": "plan", "agent_name": f"a{i}", "content_json": {"i": i}} for i in range(5)]
    with pytest.raises(consensus_db.DiskFullError, match=r"agent_outputs ids.*9223372036854775805"):
        db.store_artifacts(items)
    assert db.query("SELECT count(*) FROM agent_outputs") == [(1,)]
    assert db.store_artifacts(items[:2]) == [top + 1, top + 2]
    db.close()


def test_store_artifacts_reads_any_mapping_the_same_way(db):
    """Plain dicts take a fast path; other mappings go through __getitem__. Same result,
    same errors, whichever path an item takes."""
    from collections import UserDict
    from types import MappingProxyType

    class Defaulting(dict):  # a dict subclass with __missing__ is read as a mapping
        def __missing__(self, key):
            return "from-missing" if key == "agent_name" else None

    fields = {"spec_id": "S", "stage": "plan", "agent_name": "gemini", "content_json": "{}", "run_id": "r1"}
    items = [fields, MappingProxyType(fields), UserDict(fields), Defaulting({k: v for k, v in fields.items()
                                                                            if k != "agent_name"})]
    db.store_artifacts(items)
    got = db.query_artifacts("S", "plan", order="oldest")
    assert [a.agent_name for a in got] == ["gemini"] * 3 + ["from-missing"]
    assert {a.run_id for a in got} == {"r1"}
    for bad in ({**fields, "stage": 7}, UserDict({**fields, "stage": 7})):
        with pytest.raises(consensus_db.InvalidInputError, match=r"artifacts\[1\]\.stage.*must be a str, got int"):
            db.store_artifacts([fields, bad])
    with pytest.raises(consensus_db.InvalidInputError, match=r"artifacts\[0\]\.response_text.*must be a str"):
        db.store_artifacts([{**fields, "response_text": b"bytes"}])
    with pytest.raises(consensus_db.InvalidInputError, match=r"artifacts\[0\]: must be a mapping, got list"):
        db.store_artifacts([["S", "plan"]])
    assert len(db.query_artifacts("S", "plan", order="oldest")) == 4  # nothing written by the failed calls

def test_delete_spec_and_stage(db):
    for stage in ("plan", "tasks"):
        for agent in ("gemini", "claude"):
            db.store_artifact("S1", stage, agent, "{}")
    db.store_artifact("S2", "plan", "gemini", "{}")
    assert db.delete_stage_artifacts("S1", "plan") == 2
    assert db.query_artifacts("S1", "plan") == []
    assert len(db.query_artifacts("S1", "tasks")) == 2
    assert db.delete_spec_artifacts("S1") == 2
    assert db.delete_spec_artifacts("S1") == 0
    assert len(db.query_artifacts("S2", "plan")) == 1


def test_synthesis_round_trip_and_latest(db):
    assert db.query_latest_synthesis("S", "plan") is None
    db.store_artifact("S", "plan", "gemini", "{}", run_id="r1")
    first = db.store_synthesis("S", "plan", "# one", run_id="r1", agreements=["scope"], conflicts={"x": 1},
                               artifacts_count=1, output_path="/out/one.md")
    second = db.store_synthesis("S", "plan", "# two", status="failed", degraded=True)
    latest = db.query_latest_synthesis("S", "plan")
    assert latest.id == second != first
    assert (latest.output_markdown, latest.status, latest.degraded, latest.source) == ("# two", "failed", True, "v1")
    db.execute(ph(db, "UPDATE consensus_runs SET synthesized_at = synthesized_at - 60000 WHERE id = ?"), [second])
    older_second = db.query_latest_synthesis("S", "plan")
    assert older_second.id == first
    assert json.loads(older_second.agreements) == ["scope"] and json.loads(older_second.conflicts) == {"x": 1}
    assert (older_second.artifacts_count, older_second.output_path, older_second.run_id) == (1, "/out/one.md", "r1")
    assert older_second.to_dict()["degraded"] is False


# ---- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, argument",
    [
        (lambda db: db.record_agent_spawn("", "S", "plan", "quality_gate", "g"), "agent_id"),
        (lambda db: db.record_agent_spawn("a", "  ", "plan", "quality_gate", "g"), "spec_id"),
        (lambda db: db.record_agent_spawn(7, "S", "plan", "quality_gate", "g"), "agent_id"),
        (lambda db: db.record_agent_spawn("a", None, "plan", "quality_gate", "g"), "spec_id"),
        (lambda db: db.record_agent_spawn("a", "S", b"plan", "quality_gate", "g"), "stage"),
        (lambda db: db.record_agent_spawn("a", "S", "plan", "gate", "g"), "phase_type"),
        (lambda db: db.record_agent_spawn("a\ud800", "S", "plan", "quality_gate", "g"), "agent_id"),
        (lambda db: db.cleanup_old_executions(-1), "days"),
        (lambda db: db.cleanup_old_executions(True), "days"),
        (lambda db: db.cleanup_old_executions(1.5), "days"),
        (lambda db: db.store_artifact("S", "plan", "g", "{bad"), "content_json"),
        (lambda db: db.store_artifact("S", "plan", "g", ""), "content_json"),
        (lambda db: db.store_artifact("S", "plan", "g", {"x": float("nan")}), "content_json"),
        (lambda db: db.store_artifact("S", "plan", "g", {"x": object()}), "content_json"),
        (lambda db: db.store_artifact("S", "plan", "", "{}"), "agent_name"),
        (lambda db: db.store_artifact("S", "plan", "g", "{}", run_id=5), "run_id"),
        (lambda db: db.store_synthesis("S", "", "# md"), "stage"),
        (lambda db: db.store_synthesis("S", "plan", "# md", artifacts_count=-1), "artifacts_count"),
    ],
)
def test_bad_input_is_rejected_naming_the_argument_and_writes_nothing(db, call, argument):
    with pytest.raises(consensus_db.InvalidInputError) as err:
        call(db)
    assert argument in str(err.value)
    assert isinstance(err.value, consensus_db.Error)
    assert count(db, "agent_executions") == count(db, "agent_outputs") == count(db, "consensus_runs") == 0


HOSTILE = [
    "it's \"quoted\"",
    "'); DROP TABLE agent_executions; --",
    "nul\x00inside\x00",
    "emoji 🤖🧠✅ and RTL עברית مرحبا",
    "\\u0000 not an escape, \n newlines \t tabs",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_strings_round_trip_literally(db, text):
    if db.backend == "postgresql" and "\x00" in text:
        # PostgreSQL text cannot hold NUL: refused before anything is written, naming the argument.
        with pytest.raises(consensus_db.InvalidInputError, match="agent_id.*NUL"):
            db.record_agent_spawn(text, text, text, "quality_gate", text)
        with pytest.raises(consensus_db.InvalidInputError, match="spec_id.*NUL"):
            db.store_artifact(text, "plan", "g", {"value": 1})
        with pytest.raises(consensus_db.InvalidInputError, match="content_json.*NUL"):
            db.store_artifact("S", "plan", "g", {"value": text})
        assert count(db, "agent_executions") == count(db, "agent_outputs") == 0
        return
    db.record_agent_spawn(text, text, text, "quality_gate", text)
    assert db.get_agent_spawn_info(text) == ("quality_gate", text)
    assert db.record_agent_completion(text, text)
    db.store_artifact(text, text, text, {"value": text}, response_text=text, run_id=text)
    [artifact] = db.query_artifacts(text, text)
    assert json.loads(artifact.content_json) == {"value": text}
    assert (artifact.response_text, artifact.run_id, artifact.agent_name) == (text, text, text)
    assert count(db, "agent_executions") == 1


def test_multi_megabyte_and_deeply_nested_payloads(db):
    big = "x" * (5 << 20)
    db.store_artifact("S", "plan", "g", {"blob": big})
    nested = "[" * 100 + "]" * 100
    db.store_artifact("S", "plan", "g", nested)
    got = db.query_artifacts("S", "plan", order="oldest")
    assert json.loads(got[0].content_json)["blob"] == big
    assert got[1].content_json == nested


def test_closed_store_raises_closed_error(store_target):
    db = consensus_db.connect(store_target)
    db.close()
    for call in (lambda: db.get_agent_spawn_info("a"), lambda: db.store_artifact("S", "p", "g", "{}"),
                 lambda: db.query_artifacts("S", "p"), lambda: db.health()):
        with pytest.raises(consensus_db.ClosedError):
            call()
