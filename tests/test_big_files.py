"""Costs that stay flat as the file grows: the routing reads walk a covering index (created
on every shape, the predecessor untouched), and ``health()`` estimates the rows of big
tables instead of counting them, naming the estimates."""

from __future__ import annotations

import sqlite3

import pytest

import consensus_db
from consensus_db.cli import main as cli
from click.testing import CliRunner
from conftest import make_legacy_db, stdlib_rows

ROUTE_INDEX = "idx_agent_executions_route"
MANY = (
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
    " INSERT INTO agent_executions (agent_id, spec_id, stage, phase_type, agent_name, spawned_at)"
    " SELECT 'a-' || i, 'S', 'plan', 'regular_stage', 'gemini', '2026-01-01 00:00:00' FROM n"
)


INDEX_COLUMNS = f"SELECT name FROM pragma_index_info('{ROUTE_INDEX}') ORDER BY seqno"
REVISION = "SELECT value FROM consensus_db_meta WHERE key = 'revision'"


def route_index_columns(path) -> list[str]:
    return [c for (c,) in stdlib_rows(path, INDEX_COLUMNS)]


def test_the_routing_index_is_created_on_a_legacy_file_and_routes_its_rows(tmp_path):
    path = tmp_path / "legacy.db"
    make_legacy_db(path)
    conn = sqlite3.connect(path)
    conn.execute(
        "INSERT INTO agent_executions (agent_id, spec_id, stage, phase_type, agent_name, spawned_at)"
        " VALUES ('old', 'S', 'plan', 'quality_gate', 'gemini', '2026-01-01 00:00:00')"
    )
    conn.commit()
    conn.close()
    assert route_index_columns(path) == []
    with consensus_db.connect(path) as db:
        assert "created the index idx_agent_executions_route" in db.open_report["layout_steps"]
        assert db.get_agent_spawn_info("old") == ("quality_gate", "plan")
        assert db.get_agent_route("old") == ("quality_gate", "plan", None)
    assert route_index_columns(path) == ["agent_id", "phase_type", "stage", "branch_id"]
    # The predecessor's own routing read, as it writes it, is unaffected.
    assert stdlib_rows(path, "SELECT phase_type, stage FROM agent_executions WHERE agent_id = 'old'") == [
        ("quality_gate", "plan")
    ]


def test_a_file_without_the_index_opened_read_only_still_routes(tmp_path):
    path = tmp_path / "f.db"
    with consensus_db.connect(path) as db:
        db.record_agent_spawn("a", "S", "plan", "regular_stage", "gemini")
    conn = sqlite3.connect(path)
    conn.execute(f"DROP INDEX {ROUTE_INDEX}")
    conn.commit()
    conn.close()
    with consensus_db.connect(path, read_only=True) as db:
        assert db.get_agent_spawn_info("a") == ("regular_stage", "plan")
        assert db.get_agent_route("a") == ("regular_stage", "plan", None)
    assert route_index_columns(path) == []  # a read-only opening creates nothing


def test_health_counts_small_tables_and_names_the_estimates_of_big_ones(db_path):
    with consensus_db.connect(db_path) as db:
        h = db.health()
        assert h["rows_estimated"] == [] and h["rows"]["agent_executions"] == 0
        db.execute(MANY, [25_000])
        db.execute("DELETE FROM agent_executions WHERE agent_id IN ('a-100', 'a-200', 'a-300')")
        h = db.health()
        # The rowid span: an upper bound that still counts the three deleted rows.
        assert h["rows_estimated"] == ["agent_executions"]
        assert h["rows"]["agent_executions"] == 25_000
        assert h["rows"]["consensus_runs"] == 0  # small tables are counted
        exact = db.health(exact=True)
        assert exact["rows_estimated"] == [] and exact["rows"]["agent_executions"] == 24_997
        assert set(exact) == set(h)  # the same report shape
        with pytest.raises(consensus_db.InvalidInputError, match="exact"):
            db.health(exact="yes")  # type: ignore[arg-type]


def test_the_cli_marks_estimates_and_counts_with_exact(db_path):
    with consensus_db.connect(db_path) as db:
        db.execute(MANY, [12_000])
        db.execute("DELETE FROM agent_executions WHERE agent_id = 'a-5'")
    estimated = CliRunner().invoke(cli, ["health", str(db_path)])
    assert estimated.exit_code == 0, estimated.output
    assert "agent_executions       ~12000" in estimated.output and "--exact counts every row" in estimated.output
    exact = CliRunner().invoke(cli, ["health", str(db_path), "--exact"])
    assert exact.exit_code == 0, exact.output
    assert "agent_executions       11999" in exact.output and "~" not in exact.output


def test_health_on_postgresql_estimates_big_tables_from_the_planner(pg_url):
    with consensus_db.connect(pg_url) as db:
        assert db.health()["rows_estimated"] == []
        db.execute(
            "INSERT INTO agent_executions (agent_id, spec_id, stage, phase_type, agent_name, spawned_at)"
            " SELECT 'a-' || i, 'S', 'plan', 'regular_stage', 'gemini', '2026-01-01 00:00:00'"
            " FROM generate_series(1, 20000) i"
        )
        assert db.health()["rows"]["agent_executions"] == 20_000  # not analysed yet: counted
        db.execute("ANALYZE agent_executions")
        h = db.health()
        assert h["rows_estimated"] == ["agent_executions"]
        assert abs(h["rows"]["agent_executions"] - 20_000) <= 200  # the planner's figure
        exact = db.health(exact=True)
        assert exact["rows_estimated"] == [] and exact["rows"]["agent_executions"] == 20_000


MANY_OUTPUTS = (
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
    " INSERT INTO agent_outputs (run_id, agent_name, content, output_timestamp)"
    " SELECT (SELECT max(id) FROM consensus_runs), 'gemini', '{}', 1700000000000 + i FROM n"
)
PAGE_INDEXES = ("idx_agent_outputs_run_time", "idx_agent_outputs_time")


def test_opening_leaves_a_big_files_read_indexes_to_an_upgrade_and_says_so(tmp_path):
    """Building an index over a big table holds the write lock for seconds (6.9 s for the
    routing index at 1M executions with 2 KB responses): every other writer of the file
    would wait it out at the first opening of a new release. Opening says what it left;
    an upgrade builds it."""
    path = tmp_path / "big.db"
    with consensus_db.connect(path) as db:
        db.execute(MANY, [100_001])
        db.store_artifact("S", "plan", "gemini", {"first": True})
        db.execute(MANY_OUTPUTS, [100_001])
    conn = sqlite3.connect(path)  # as a revision-3 release left it
    conn.executescript(
        f"DROP INDEX {ROUTE_INDEX}; DROP INDEX {PAGE_INDEXES[0]}; DROP INDEX {PAGE_INDEXES[1]};"
        " UPDATE consensus_db_meta SET value = 3 WHERE key = 'revision';"
    )
    conn.close()
    with consensus_db.connect(path) as db:
        route, pages = db.open_report["layout_steps"]
        assert route.startswith("left the index idx_agent_executions_route for `consensus-db upgrade`"), route
        assert "~100001 rows of agent_executions" in route
        assert pages.startswith(
            "left the indexes idx_agent_outputs_run_time and idx_agent_outputs_time for `consensus-db upgrade`"
        ), pages
        assert db.count_artifacts("S", "plan") == 100_002
        assert len(db.query_artifacts("S", "plan", limit=10)) == 10
        assert db.get_agent_spawn_info("a-7") == ("regular_stage", "plan")  # through the primary key meanwhile
        # (Read through the store: another copy of SQLite in this process would break its locks.)
        assert db.query(INDEX_COLUMNS) == [] and db.query(REVISION) == [(3,)]
        db.migrate()  # what `consensus-db upgrade` runs
        assert db.query(INDEX_COLUMNS) == [("agent_id",), ("phase_type",), ("stage",), ("branch_id",)]
        assert db.query("SELECT count(*) FROM sqlite_master WHERE name IN (?, ?)", list(PAGE_INDEXES)) == [(2,)]
        assert db.query(REVISION) == [(5,)]
        assert db.get_agent_route("a-7") == ("regular_stage", "plan", None)
    with consensus_db.connect(path) as db:
        assert db.open_report["layout_steps"] == []


def test_the_cli_upgrade_builds_the_routing_index_opening_left(tmp_path):
    path = tmp_path / "big.db"
    with consensus_db.connect(path) as db:
        db.execute(MANY, [100_001])
    conn = sqlite3.connect(path)
    conn.execute(f"DROP INDEX {ROUTE_INDEX}")
    conn.commit()
    conn.close()
    result = CliRunner().invoke(cli, ["upgrade", str(path), "--no-backup"])
    assert result.exit_code == 0, result.output
    assert route_index_columns(path) == ["agent_id", "phase_type", "stage", "branch_id"]
