"""What the two backends share and where they differ, through the public API: backend
selection, transactions and savepoints, health and vacuum, errors of the same classes,
the exact JSON text, migrations, asyncio; and, on PostgreSQL, the SQLite-only surfaces
refused with NotSupportedError, reconnection and outcome-unknown writes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
from pathlib import Path

import pytest

import consensus_db
import consensus_db.aio
from conftest import ph


@pytest.fixture
def db(store_target):
    store = consensus_db.connect(store_target)
    yield store
    store.close()


# ---- selection ---------------------------------------------------------------------------------


def test_only_a_str_url_selects_postgresql(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "postgresql:" / "nowhere").mkdir(parents=True)
    # A path object or bytes spelling a URL is a file name, always.
    for target, file in [(Path("postgresql://nowhere/a.db"), "a.db"), (b"postgresql://nowhere/b.db", "b.db")]:
        store = consensus_db.connect(target)
        assert store.backend == "sqlite"
        store.close()
        assert (tmp_path / "postgresql:" / "nowhere" / file).is_file()


def test_backend_name_and_path(db, store_target):
    assert db.backend == ("sqlite" if isinstance(store_target, Path) else "postgresql")
    assert db.schema_version == consensus_db.LATEST_SCHEMA_VERSION or db.backend == "sqlite"
    assert str(db.path) == str(store_target)


# ---- same behaviour on both ----------------------------------------------------------------------


def test_content_json_comes_back_as_given(db):
    text = '{"b": 1,   "a": [2, 1], "é": "\\u00e9"}'
    db.store_artifact("S", "plan", "g", text)
    [a] = db.query_artifacts("S", "plan")
    assert a.content_json == text
    assert a.content() == {"b": 1, "a": [2, 1], "é": "é"}


def test_json_naming_a_lone_surrogate_is_refused_on_both_naming_the_argument(db):
    """``"\\ud800"`` names half a UTF-16 pair: no character, no UTF-8, and PostgreSQL's
    JSONB cannot hold it. Both backends refuse it before writing, as they refuse the
    same value given as a dict (whose text would hold the bare surrogate)."""
    for text in ['{"a": "\\ud800"}', json.dumps(["x", "\udc00"]), '"\\ud83d\\u0041"']:
        with pytest.raises(consensus_db.InvalidInputError, match=r"invalid content_json: holds the escape \\ud"):
            db.store_artifact("S", "plan", "g", text)
        with pytest.raises(consensus_db.InvalidInputError, match=r"invalid artifacts\[1\]\.content_json"):
            db.store_artifacts([dict(spec_id="S", stage="plan", agent_name="g", content_json=c) for c in ("{}", text)])
    with pytest.raises(consensus_db.InvalidInputError, match="content_json"):
        db.store_artifact("S", "plan", "g", {"a": "\ud800"})
    assert db.count_artifacts("S", "plan") == 0
    pair = json.dumps({"a": "\U0001f600"})  # an escaped pair is a character
    db.store_artifact("S", "plan", "g", pair)
    assert [a.content() for a in db.query_artifacts("S", "plan")] == [{"a": "\U0001f600"}]


def test_results_come_newest_first_unless_oldest_is_asked_and_count_agrees(db):
    ids = [db.store_artifact("S", "plan", f"agent-{i}", "{}") for i in range(4)]
    # Same-millisecond rows are ordered by id: the sequence is strictly increasing either way.
    assert [a.id for a in db.query_artifacts("S", "plan")] == ids[::-1]
    assert [a.id for a in db.query_artifacts("S", "plan", order="newest")] == ids[::-1]
    assert [a.id for a in db.query_artifacts("S", "plan", order="oldest")] == ids
    assert db.count_artifacts("S", "plan") == 4
    assert db.count_artifacts("S", "other") == 0
    assert db.count_artifacts("T", "plan") == 0
    agents = [f"fail-{i}" for i in range(3)]
    for agent in agents:
        db.record_agent_spawn(agent, "S", "plan", "regular_stage", "gemini")
        assert db.record_extraction_failure(agent, "not json", "no JSON object")
    assert [f.agent_id for f in db.query_extraction_failures("S")] == agents[::-1]
    assert [f.agent_id for f in db.query_extraction_failures("S", order="oldest")] == agents
    for bad in ("NEWEST", "latest", ""):
        with pytest.raises(consensus_db.InvalidInputError, match="order") as err:
            db.query_artifacts("S", "plan", order=bad)
        assert repr(bad) in str(err.value) or f'"{bad}"' in str(err.value)
        with pytest.raises(consensus_db.InvalidInputError, match="order"):
            db.query_extraction_failures("S", order=bad)
    with pytest.raises(consensus_db.InvalidInputError, match="order"):
        db.query_artifacts("S", "plan", order=1)


def test_aio_counts_and_orders_like_the_sync_store(store_target):
    async def main():
        async with consensus_db.aio.connect(store_target) as adb:
            first = await adb.store_artifact("S", "plan", "a", "{}")
            second = await adb.store_artifact("S", "plan", "b", "{}")
            assert await adb.count_artifacts("S", "plan") == 2
            assert [a.id for a in await adb.query_artifacts("S", "plan")] == [second, first]
            assert [a.id for a in await adb.query_artifacts("S", "plan", order="oldest")] == [first, second]

    asyncio.run(main())


def test_transaction_commits_rolls_back_and_nests_savepoints(db):
    insert = ph(db, "INSERT INTO agent_executions (agent_id, spec_id, stage, phase_type, agent_name, spawned_at) "
                    "VALUES (?, 'S', 'plan', 'quality_gate', 'g', '2026-01-01 00:00:00')")
    with db.transaction() as tx:
        tx.execute(insert, ["kept"])
        with tx.savepoint():
            tx.execute(insert, ["kept-too"])
        with pytest.raises(RuntimeError):
            with tx.savepoint():
                tx.execute(insert, ["undone"])
                raise RuntimeError("undo the savepoint only")
        assert sorted(r[0] for r in tx.query("SELECT agent_id FROM agent_executions")) == ["kept", "kept-too"]
        assert tx.executemany(insert, [["many-1"], ["many-2"]]) == 2
        tx.execute(ph(db, "DELETE FROM agent_executions WHERE agent_id LIKE ?"), ["many-%"])
    with pytest.raises(ValueError):
        with db.transaction() as tx:
            tx.execute(insert, ["rolled-back"])
            raise ValueError("roll the whole block back")
    assert sorted(r[0] for r in db.query("SELECT agent_id FROM agent_executions")) == ["kept", "kept-too"]
    with db.transaction("deferred") as tx:
        assert tx.query(ph(db, "SELECT agent_name FROM agent_executions WHERE agent_id = ?"), ["kept"]) == [("g",)]
        with pytest.raises(consensus_db.TransactionError):
            tx.execute("COMMIT")


def test_raw_statements_are_reprepared_after_a_schema_change(pg):
    """PostgreSQL: raw SQL is prepared once per connection; a cached plan whose result
    type changed fails once and is dropped from the cache. (SQLite's cached `SELECT *`
    still returns the old columns after ALTER TABLE ADD COLUMN: reported separately.)"""
    db = pg
    db.execute("CREATE TABLE scratch (a INTEGER)")
    db.execute("INSERT INTO scratch VALUES (1)")
    assert db.query("SELECT * FROM scratch") == [(1,)]
    db.execute("ALTER TABLE scratch ADD COLUMN b TEXT")
    rows = None
    for _ in range(2):  # a cached plan whose result changed fails once, then is prepared again
        try:
            rows = db.query("SELECT * FROM scratch")
            break
        except consensus_db.DatabaseError as e:
            assert "cached plan" in str(e)
    assert rows == [(1, None)]


def test_constraint_violation_is_integrity_error_on_both(db):
    db.record_agent_spawn("a1", "S", "plan", "quality_gate", "g")
    with pytest.raises(consensus_db.IntegrityError):
        db.execute(ph(db, "INSERT INTO agent_executions (agent_id, spec_id, stage, phase_type, agent_name, spawned_at) "
                          "VALUES (?, 'S', 'plan', 'quality_gate', 'g', 'now')"), ["a1"])
    with pytest.raises(consensus_db.DatabaseError):
        db.query("SELECT * FROM no_such_table")
    assert db.get_agent_name("a1") == "g"


def test_health_and_vacuum(db):
    db.record_agent_spawn("a1", "S", "plan", "quality_gate", "g")
    db.store_artifacts([{"spec_id": "S", "stage": "plan", "agent_name": f"a{i}", "content_json": {"i": i}} for i in range(3)])
    h = db.health()
    assert h["rows"]["agent_executions"] == 1 and h["rows"]["agent_outputs"] == 3 and h["rows"]["consensus_runs"] == 1
    assert h["needs_vacuum"] is False
    assert db.vacuum()["full"] is False
    assert db.vacuum(full=True)["full"] is True
    assert len(db.query_artifacts("S", "plan")) == 3


def test_read_only_store_refuses_writes(store_target):
    consensus_db.connect(store_target).close()  # creates it
    ro = consensus_db.connect(store_target, read_only=True)
    try:
        with pytest.raises(consensus_db.ReadOnlyError):
            ro.record_agent_spawn("a", "S", "plan", "quality_gate", "g")
        assert ro.get_agent_name("a") is None
        if ro.backend == "postgresql":
            # The server refuses raw writes too.
            with pytest.raises(consensus_db.ReadOnlyError, match="25006"):
                ro.query("INSERT INTO agent_executions (agent_id, spec_id, stage, phase_type, agent_name, spawned_at) "
                         "VALUES ('a', 'S', 'plan', 'quality_gate', 'g', 'x') RETURNING agent_id")
    finally:
        ro.close()


def test_aio_connect_selects_the_same_backend(store_target):
    async def main():
        async with await consensus_db.aio.connect(store_target) as db:
            await db.record_agent_spawn("a1", "S", "plan", "quality_gate", "g")
            ids = await asyncio.gather(*(db.store_artifact("S", "plan", f"a{i}", {"i": i}) for i in range(10)))
            assert await db.record_agent_completion("a1", "done") is True
            assert await db.get_agent_spawn_info("a1") == ("quality_gate", "plan")
            assert sorted(a.id for a in await db.query_artifacts("S", "plan")) == sorted(ids)
            return db.sync.backend

    backend = asyncio.run(main())
    assert backend == ("sqlite" if isinstance(store_target, Path) else "postgresql")


# ---- PostgreSQL only ---------------------------------------------------------------------------------


@pytest.fixture
def pg(pg_url):
    store = consensus_db.connect(pg_url)
    yield store
    store.close()


@pytest.mark.parametrize(
    "call, named",
    [
        (lambda db: db.pragmas(), "pragmas()"),
        (lambda db: db.verify_pragmas(), "verify_pragmas()"),
        (lambda db: db.transaction("immediate").__enter__(), "immediate"),
        (lambda db: db.transaction("exclusive").__enter__(), "exclusive"),
        (lambda db: db.checkpoint(), "checkpoint()"),
        (lambda db: db.backup(), "backup()"),
        (lambda db: db.vacuum(pages=10), "pages=10"),
        (lambda db: db.stats(), "stats()"),
        (lambda db: db.lane_stats(), "lane_stats()"),
        (lambda db: db.migrate(1), "migrate(target)"),
        (lambda db: db.integrity_check(), "integrity_check()"),
        (lambda db: db.reader_stats(), "reader_stats()"),
        (lambda db: db.verify_schemas(), "verify_schemas()"),
        (lambda db: db.open_report, "open_report"),
    ],
)
def test_sqlite_only_surfaces_say_they_do_not_apply(pg, call, named):
    with pytest.raises(consensus_db.NotSupportedError, match="PostgreSQL") as err:
        call(pg)
    assert named in str(err.value)
    assert not err.value.retryable


def test_migrate_pool_state_and_legacy_problems(pg):
    assert pg.migrate() == consensus_db.LATEST_SCHEMA_VERSION == pg.schema_version
    assert pg.legacy_row_problems() == []
    state = pg.pool_state()
    assert state["max_size"] == 10 and 1 <= state["connections"] <= 10 and state["idle"] <= state["connections"]


def test_modes_of_the_legacy_tables_are_refused_on_a_url(pg_url):
    for kwargs in ({"write_mode": "dual"}, {"read_mode": "legacy"}):
        with pytest.raises(consensus_db.NotSupportedError, match="no legacy tables"):
            consensus_db.connect(pg_url, **kwargs)


def test_sqlite_options_are_refused_on_a_url(pg_url):
    with pytest.raises(consensus_db.NotSupportedError, match="journal_mode"):
        consensus_db.connect(pg_url, pragmas={"journal_mode": "wal"})


def test_migrations_under_advisory_lock_from_many_hosts_at_once(pg_cluster, pg_url):
    stores, errors = [], []

    def open_one():
        try:
            stores.append(consensus_db.connect(pg_url, pool_size=2))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=open_one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(stores) == 8
    schema = pg_url.split("search_path%3D")[1]
    # pg_layout is the minimum reader layout (revisions 2 and 3 only add: the previous release still opens it).
    assert pg_cluster.psql(f"SELECT value FROM {schema}.consensus_db_meta WHERE key = 'pg_layout'") == "1"
    assert pg_cluster.psql(f"SELECT value FROM {schema}.consensus_db_meta WHERE key = 'pg_revision'") == "3"
    assert stores[0].health()["layout_revision"] == 3
    for s in stores:
        s.close()
    # Identity keys, JSONB, integer-millisecond timestamps.
    types = pg_cluster.psql(
        "SELECT column_name || ':' || data_type || ':' || coalesce(is_identity, '') FROM information_schema.columns "
        f"WHERE table_schema = '{schema}' AND table_name = 'agent_outputs' "
        "AND column_name IN ('id', 'content', 'output_timestamp') ORDER BY column_name"
    ).split()
    assert types == ["content:jsonb:NO", "id:bigint:YES", "output_timestamp:bigint:NO"]


def test_a_newer_layout_is_refused(pg_cluster, pg_url):
    consensus_db.connect(pg_url).close()
    schema = pg_url.split("search_path%3D")[1]
    pg_cluster.psql(f"UPDATE {schema}.consensus_db_meta SET value = 99 WHERE key = 'pg_layout'")
    with pytest.raises(consensus_db.SchemaVersionError, match="99"):
        consensus_db.connect(pg_url)


def test_timestamps_are_the_same_kinds_as_on_sqlite(pg):
    before = int(time.time() * 1000)
    pg.store_artifact("S", "plan", "g", "{}")
    pg.record_agent_spawn("a1", "S", "plan", "quality_gate", "g")
    [a] = pg.query_artifacts("S", "plan")
    after = int(time.time() * 1000)
    assert before - 1000 <= a.created_at_ms <= after + 1000
    [(spawned,)] = pg.query("SELECT spawned_at FROM agent_executions")
    assert len(spawned) == 19 and spawned[10] == " "


def _terminate_others(cluster, pg_url, like: str = "%") -> int:
    # The store's connections: application_name consensus-db (tests run one at a time,
    # so these are the store under test's).
    return int(cluster.psql(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        f"WHERE application_name = 'consensus-db' AND pid <> pg_backend_pid() AND query LIKE '{like}'"
    ) or 0)


def test_a_dropped_connection_reconnects(pg_cluster, pg_url, pg):
    pg.record_agent_spawn("a1", "S", "plan", "quality_gate", "g")
    pg.store_artifact("S", "plan", "g", "{}")
    assert _terminate_others(pg_cluster, pg_url) >= 1
    # Reads and idempotent writes go on over a new connection.
    assert pg.get_agent_name("a1") == "g"
    assert _terminate_others(pg_cluster, pg_url) >= 1
    pg.store_artifact("S", "plan", "g2", "{}")
    assert [a.agent_name for a in pg.query_artifacts("S", "plan", order="oldest")] == ["g", "g2"]
    # A statement that must not run twice finds its connection dead before sending it:
    # it reconnects instead of reporting an unknown outcome.
    assert _terminate_others(pg_cluster, pg_url) >= 1
    assert pg.cleanup_old_executions(30) == 0
    assert _terminate_others(pg_cluster, pg_url) >= 1
    assert pg.query("SELECT count(*) FROM agent_outputs") == [(2,)]
    assert pg.retry_count >= 1


def test_a_write_whose_outcome_is_unknown_is_not_repeated(pg_cluster, pg_url, pg):
    pg.get_agent_name("warm-up")
    failure = []

    def slow_write():
        try:
            pg.execute(
                "INSERT INTO agent_executions (agent_id, spec_id, stage, phase_type, agent_name, spawned_at) "
                "SELECT 'a1', 'S', 'plan', 'quality_gate', 'g', 'x' FROM pg_sleep(3)"
            )
        except consensus_db.Error as e:
            failure.append(e)

    t = threading.Thread(target=slow_write)
    t.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _terminate_others(pg_cluster, pg_url, like="%pg_sleep%") == 0:
        time.sleep(0.05)
    t.join()
    assert len(failure) == 1 and isinstance(failure[0], consensus_db.OutcomeUnknownError), failure
    assert not failure[0].retryable and not consensus_db.retry.is_retryable(failure[0])
    assert "not repeated" in str(failure[0])
    # Not repeated: the row is not there (the server rolled it back), and the store goes on.
    assert pg.get_agent_name("a1") is None
    pg.record_agent_spawn("a2", "S", "plan", "quality_gate", "g")
    assert pg.get_agent_name("a2") == "g"


def _two_transactions_collide(pg, first_sql, second_sql, setup=None):
    """Runs two transaction blocks that meet at a barrier; returns what each raised."""
    barrier = threading.Barrier(2, timeout=10)
    raised = [None, None]

    def block(i, statements):
        try:
            with pg.transaction() as tx:
                if setup:
                    tx.execute(setup)
                tx.execute(statements[0])
                barrier.wait()
                tx.execute(statements[1])
        except consensus_db.Error as e:
            raised[i] = e

    threads = [threading.Thread(target=block, args=(0, first_sql)), threading.Thread(target=block, args=(1, second_sql))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return raised


def test_deadlocks_and_serialization_failures_are_retryable(pg):
    for agent in ("x", "y"):
        pg.record_agent_spawn(agent, "S", "plan", "quality_gate", "g")
    upd = "UPDATE agent_executions SET response_text = '{}' WHERE agent_id = '{}'"
    # 40P01: each block locks one row, then wants the other's.
    raised = _two_transactions_collide(pg, [upd.format(1, "x"), upd.format(1, "y")], [upd.format(2, "y"), upd.format(2, "x")])
    [deadlock] = [e for e in raised if e is not None]
    assert isinstance(deadlock, consensus_db.BusyError) and "40P01" in str(deadlock)
    assert deadlock.retryable and consensus_db.retry.is_retryable(deadlock)
    # 40001: two SERIALIZABLE blocks read, then write the same row.
    read = "SELECT count(*) FROM agent_executions"
    raised = _two_transactions_collide(
        pg, [read, upd.format(3, "x")], [read, upd.format(4, "x")], setup="SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"
    )
    [conflict] = [e for e in raised if e is not None]
    assert isinstance(conflict, consensus_db.BusyError) and "40001" in str(conflict) and conflict.retryable


def test_maintenance_applies_retention_on_both(db):
    db.record_agent_spawn("old", "S", "plan", "quality_gate", "g")
    db.record_agent_spawn("young", "S", "plan", "quality_gate", "g")
    db.execute(ph(db, "UPDATE agent_executions SET spawned_at = ? WHERE agent_id = ?"), ["2020-01-01 00:00:00", "old"])
    cycles = []
    done = threading.Event()

    def on_cycle(report):
        cycles.append(report)
        done.set()

    db.start_maintenance(0.05, retention_days=30, on_cycle=on_cycle)
    assert done.wait(20), "no maintenance cycle ran"
    db.stop_maintenance()
    assert db.maintenance_cycles is None
    assert cycles[0]["error"] is None and cycles[0]["executions_deleted"] == 1
    assert [r[0] for r in db.query("SELECT agent_id FROM agent_executions")] == ["young"]
    with pytest.raises(consensus_db.InvalidInputError, match="interval_s"):
        db.start_maintenance(0)


def test_an_artifact_write_cut_off_mid_call_is_repeated_once(pg_cluster, pg_url, pg):
    """The write token: the same call arriving twice (a repetition after a lost
    connection) returns the first row; and a store_artifact whose connection is cut
    while it waits is repeated by the store and lands once."""
    call = "SELECT consensus_db_store_artifact('S', 'plan', 'g', '{}', NULL, NULL, NULL, 'token-1')"
    [(first,)] = pg.query(call)
    assert pg.query(call) == [(first,)]
    assert len(pg.query_artifacts("S", "plan")) == 1
    # Hold the group's lock from another session so the store's call waits inside the server.
    holder = subprocess.Popen(
        [str(pg_cluster.bin / "psql"), "-X", "-q", "-h", "127.0.0.1", "-p", str(pg_cluster.port), "-U", "cdb",
         "-d", "postgres", "-c",
         "BEGIN; SELECT pg_advisory_xact_lock(hashtextextended('T' || chr(1) || 'plan' || chr(1) || chr(2), 17)); "
         "SELECT pg_sleep(1.5); COMMIT;"],
        stdout=subprocess.DEVNULL,
    )
    time.sleep(0.3)
    ids = []
    writer = threading.Thread(target=lambda: ids.append(pg.store_artifact("T", "plan", "g", '{"n": 1}')))
    writer.start()
    deadline = time.monotonic() + 5
    while _terminate_others(pg_cluster, pg_url, like="%consensus_db_store_artifact%") == 0:
        assert time.monotonic() < deadline, "the store's call never waited on the lock"
        time.sleep(0.02)
    writer.join()
    holder.wait(timeout=10)
    [artifact] = pg.query_artifacts("T", "plan")
    assert ids == [artifact.id]
    assert pg.retry_count >= 1


def test_retention_reports_its_progress_on_both(db):
    insert = ph(db, "INSERT INTO agent_executions (agent_id, spec_id, stage, phase_type, agent_name, spawned_at) "
                    "VALUES (?, 'S', 'plan', 'quality_gate', 'g', '2020-01-01 00:00:00')")
    for i in range(3):
        db.execute(insert, [f"old-{i}"])
    db.record_agent_spawn("young", "S", "plan", "quality_gate", "g")
    seen: list = []
    assert db.cleanup_old_executions(30, progress=lambda done, total: seen.append((done, total))) == 3
    assert seen and seen[-1] == (3, 3), seen  # PostgreSQL deletes in one statement: told once, at the end
    assert db.get_agent_name("young") == "g"
