"""Each report is declared once, in Rust (``report!``): its dict's keys come from that
declaration, and the ``TypedDict`` that types it in ``results.py`` must list the same
keys in the same order (``_core._report_fields()`` exposes every declaration's)."""

from __future__ import annotations

import threading
import typing

import pytest

import consensus_db
from consensus_db import _core, results

RUST = _core._report_fields()


def typed_dicts() -> dict[str, type]:
    return {
        name: obj
        for name in results.__all__
        if isinstance(obj := getattr(results, name), type) and typing.is_typeddict(obj)
    }


def test_every_typeddict_lists_its_rust_reports_keys_in_order():
    drift = [
        f"{name}: results.py {list(cls.__annotations__)} != Rust {RUST[name]}"
        for name, cls in typed_dicts().items()
        if name in RUST and list(cls.__annotations__) != RUST[name]
    ]
    assert not drift, "\n".join(drift)


def test_every_rust_report_has_its_typeddict():
    typed = typed_dicts()
    assert sorted(set(RUST) - set(typed)) == [], "Rust reports without a TypedDict in results.py"
    assert sorted(set(typed) - set(RUST)) == [], "TypedDicts in results.py without a Rust report"


def keys(report: dict) -> list[str]:
    return list(report)


def test_sqlite_reports_have_their_declared_keys(db):
    db.record_agent_spawn("a1", "S", "plan", "quality_gate", "g")
    db.store_artifact("S", "plan", "g", '{"a": 1}')
    health = db.health()
    vacuum = db.vacuum()
    assert keys(db.stats()) == RUST["Stats"]
    assert keys(health) == RUST["HealthReport"]
    assert keys(health["reader"]) == keys(db.reader_stats()) == RUST["ReaderStats"]
    assert keys(health["reader"]["latency_us"]) == RUST["ReadPathLatency"]
    assert keys(health["reader"]["latency_us"]["v1"]) == RUST["PathLatency"]
    assert keys(vacuum) == RUST["VacuumReport"]
    assert keys(vacuum["before"]) == RUST["Stats"]
    assert keys(vacuum["checkpoint"]) == keys(db.checkpoint()) == RUST["CheckpointReport"]
    assert keys(db.open_report) == RUST["OpenReport"]
    assert keys(db.open_report["rows_moved"]) == keys(db.rows_moved) == RUST["RowsMoved"]
    assert keys(db.lane_stats()) == RUST["LaneStats"]
    assert keys(db.pool_state()) == RUST["PoolState"]
    assert keys(db.verify_schemas()) == RUST["SchemaReport"]
    assert keys(db.wait_for_agents("S", "plan", agent_ids=["a1"], timeout=0)) == RUST["WaitResult"]


def test_a_maintenance_cycle_report_has_its_declared_keys(db):
    cycles: list[dict] = []
    done = threading.Event()

    def on_cycle(report: dict) -> None:
        cycles.append(report)
        done.set()

    db.start_maintenance(0.05, on_cycle=on_cycle)
    try:
        assert done.wait(30), "no maintenance cycle ran"
    finally:
        db.stop_maintenance()
    assert keys(cycles[0]) == RUST["CycleReport"]


def test_postgresql_reports_have_their_declared_keys(pg_url):
    with consensus_db.connect(pg_url) as db:
        assert keys(db.health()) == RUST["PostgresHealthReport"]
        assert keys(db.vacuum()) == RUST["PostgresVacuumReport"]
        assert keys(db.pool_state()) == RUST["PoolState"]


@pytest.mark.parametrize("name", sorted(RUST))
def test_each_report_declares_its_keys_once(name):
    assert len(RUST[name]) == len(set(RUST[name])), name
