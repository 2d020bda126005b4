"""The typed Python surface: results (pickling, SpawnInfo, Rows, datetimes, list
helpers), defaults defined once, the error mapping, and the type-checked example."""

from __future__ import annotations

import datetime as dt
import inspect
import multiprocessing
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest

import consensus_db
from consensus_db import _core, errors
from consensus_db.results import Rows, SpawnInfo
from consensus_db.retry import RetryPolicy, retry

ROOT = Path(__file__).resolve().parent.parent


def _filled(db: consensus_db.Store) -> None:
    db.record_agent_spawn("a1", "S", "plan", "quality_gate", "gemini", run_id="r1")
    db.store_artifact("S", "plan", "gemini", {"verdict": "ok"}, response_text="raw", run_id="r1", model_version="m")
    db.store_synthesis("S", "plan", "# S", agreements=["scope", "tests"], conflicts={"who": "gpt"}, run_id="r1")
    db.record_extraction_failure("a1", "```json {", "Expecting value")


def test_results_pickle_round_trip_and_compare_equal(db):
    _filled(db)
    artifact = db.query_artifacts("S", "plan")[0]
    synthesis = db.query_latest_synthesis("S", "plan")
    failure = db.query_extraction_failures("S")[0]
    for value in (artifact, synthesis, failure):
        copy = pickle.loads(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
        assert copy == value and type(copy) is type(value)
        assert copy.to_dict() == value.to_dict()
    assert pickle.loads(pickle.dumps(artifact)).source == "v1"


def _verdicts(artifacts: list) -> list:  # runs in a child process
    return sorted(a.content()["verdict"] for a in artifacts)


def test_results_cross_a_process_pool(db):
    """A multiprocessing orchestrator hands results to worker processes (pickled)."""
    for verdict in ("yes", "no", "maybe"):
        db.store_artifact("S", "plan", f"agent-{verdict}", {"verdict": verdict})
    artifacts = db.query_artifacts("S", "plan")
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        assert pool.apply(_verdicts, (artifacts,)) == ["maybe", "no", "yes"]


def test_constructors_build_what_the_store_returns_and_refuse_a_bad_source():
    a = consensus_db.Artifact(1, "S", "plan", "g", "{}", created_at_ms=1_700_000_000_123, source="legacy")
    assert (a.source, a.created_at, a.response_text) == ("legacy", "2023-11-14 22:13:20", None)
    s = consensus_db.Synthesis(2, "S", "plan", "# md")
    assert (s.status, s.degraded, s.agreement_list()) == ("success", False, [])
    with pytest.raises(consensus_db.InvalidInputError, match="source.*v2"):
        consensus_db.Artifact(1, "S", "plan", "g", "{}", source="v2")


def test_spawn_info_is_a_named_tuple_in_argument_order(db):
    db.record_agent_spawn("a1", "S", "implement", "regular_stage", "claude")
    info = db.get_agent_spawn_info("a1")
    assert isinstance(info, SpawnInfo) and isinstance(info, tuple)
    assert (info.phase_type, info.stage) == ("regular_stage", "implement")
    assert info == ("regular_stage", "implement")
    phase_type, stage = info
    assert (phase_type, stage) == info
    assert db.get_agent_spawn_info("nobody") is None


def test_query_rows_carry_column_names_and_still_index_by_position(db):
    _filled(db)
    rows = db.query("SELECT agent_id, stage AS st, 1 + 1 FROM agent_executions")
    assert isinstance(rows, Rows) and isinstance(rows, list)
    assert rows == [("a1", "plan", 2)] and rows[0][1] == "plan"
    assert rows.columns == ("agent_id", "st", "1 + 1")
    assert rows.dicts() == [{"agent_id": "a1", "st": "plan", "1 + 1": 2}]
    empty = db.query("SELECT agent_id FROM agent_executions WHERE 0")
    assert empty == [] and empty.columns == ("agent_id",)
    copy = pickle.loads(pickle.dumps(rows))
    assert copy == rows and copy.columns == rows.columns
    with db.transaction() as tx:
        in_tx = tx.query("SELECT count(*) AS n FROM agent_executions WHERE spec_id = :s", {"s": "S"})
    assert in_tx == [(1,)] and in_tx.columns == ("n",)


def test_datetime_accessors_are_aware_utc_and_match_the_text(db):
    _filled(db)
    artifact = db.query_artifacts("S", "plan")[0]
    synthesis = db.query_latest_synthesis("S", "plan")
    failure = db.query_extraction_failures("S")[0]
    for row in (artifact, synthesis):
        when = row.created_at_datetime
        assert when.tzinfo is dt.timezone.utc
        assert round(when.timestamp() * 1000) == row.created_at_ms
        assert when.strftime("%Y-%m-%d %H:%M:%S") == row.created_at
    spawned = failure.spawned_at_datetime
    assert spawned.utcoffset() == dt.timedelta(0) and spawned.strftime("%Y-%m-%d %H:%M:%S") == failure.spawned_at
    assert failure.completed_at is not None and failure.completed_at_datetime is not None
    assert abs(dt.datetime.now(dt.timezone.utc) - spawned) < dt.timedelta(minutes=5)


def test_agreement_and_conflict_lists(db):
    _filled(db)
    synthesis = db.query_latest_synthesis("S", "plan")
    assert synthesis.agreement_list() == ["scope", "tests"]
    assert synthesis.conflict_list() == [{"who": "gpt"}]  # a JSON value that is no list: one item
    legacy = consensus_db.Synthesis(1, "S", "plan", "#", agreements="all agreed on scope", source="legacy")
    assert legacy.agreement_list() == ["all agreed on scope"] and legacy.conflict_list() == []


def test_defaults_are_defined_once_and_every_signature_shows_them():
    d = _core.DEFAULTS
    assert (d["pool_size"], d["retention_days"], d["vacuum_pages"], d["vacuum_threshold"]) == (10, 30, 1000, 0.5)
    engine = inspect.signature(_core.Database).parameters
    connect = inspect.signature(consensus_db.connect).parameters
    for name in ("pool_size", "min_idle", "checkout_timeout", "read_only", "create", "convert_auto_vacuum", "uri",
                 "replicated"):
        assert engine[name].default == d[name] == connect[name].default, name
    start = inspect.signature(_core.Database.start_maintenance).parameters
    store_start = inspect.signature(consensus_db.Store.start_maintenance).parameters
    for name, key in (("interval_s", "maintenance_interval_s"), ("retention_days", "retention_days"),
                      ("vacuum_pages", "vacuum_pages"), ("checkpoint", "checkpoint")):
        assert start[name].default == d[key] == store_start[name].default, name
    assert inspect.signature(_core.Database.health).parameters["threshold"].default == d["vacuum_threshold"]


def test_every_rust_error_variant_maps_to_an_importable_class_with_the_right_retryable():
    enum = (ROOT / "src" / "error.rs").read_text()
    body = enum[enum.index("pub enum Error {"):]
    body = body[: body.index("\n}\n")]
    variants = set(re.findall(r"^    ([A-Z]\w*)\b", body, re.M))
    # The variants the engine retries: `Error::is_retryable`'s `matches!` arms.
    retryable_fn = enum[enum.index("pub fn is_retryable"):]
    retryable = set(re.findall(r"Error::(\w+)", retryable_fn[: retryable_fn.index("\n    }")]))
    assert {"Busy", "PoolTimeout"} <= retryable
    mapping = (ROOT / "src" / "python" / "errors.rs").read_text()
    arms: dict = {}
    for left, cls in re.findall(r"([^\n]*)=> py::(\w+)::new_err", mapping):  # `A(_) | B { .. } => py::X`
        for variant in re.findall(r"Error::(\w+)", left):
            arms[variant] = cls
    assert variants and variants <= set(arms), f"variants without a Python class: {variants - set(arms)}"
    for variant, cls_name in arms.items():
        cls = getattr(consensus_db, cls_name)
        assert issubclass(cls, errors.Error) and cls_name in errors.__all__
        assert cls.retryable is (variant in retryable), variant


def test_retry_decorator_keeps_the_signature_and_refuses_a_bad_policy():
    @retry(RetryPolicy(max_attempts=2, sleep=lambda _d: None))
    def add(x: int, y: int = 1) -> int:
        return x + y

    assert add(2, y=3) == 5 and add.__name__ == "add"
    assert inspect.signature(add) == inspect.signature(add.__wrapped__)
    with pytest.raises(consensus_db.InvalidInputError, match="policy.*str"):
        retry("three")  # type: ignore[call-overload]


def test_the_example_orchestrator_runs(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "orchestrator.py"), str(tmp_path / "o.db")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "3 stages merged" in done.stdout and "gemini on plan: phase quality_gate, stage plan" in done.stdout
    with consensus_db.connect(tmp_path / "o.db") as db:
        assert len(db.query_artifacts("SPEC-042", "plan")) == 3


def test_the_example_and_the_package_type_check_strictly(tmp_path):
    pytest.importorskip("mypy", reason="mypy comes with the `lint` extra (tests/run_all.sh installs it)")
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache"),
         str(ROOT / "examples" / "orchestrator.py")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success: no issues found" in done.stdout


def test_the_api_reference_is_generated_from_current_docstrings():
    done = subprocess.run([sys.executable, str(ROOT / "docs" / "gen_api.py"), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr  # names any public function without a docstring
    assert "up to date, every public function documented" in done.stdout
