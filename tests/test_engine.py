"""The core engine through its Python bindings: pragmas, conversion, transactions,
in-memory sharing, refusal of bad files and arguments, GIL release."""

from __future__ import annotations

import hashlib
import threading
import time

import pytest

import consensus_db
from conftest import make_legacy_db, read_pragmas, stdlib_rows

WANTED = {
    "auto_vacuum": 2,
    "journal_mode": "wal",
    "synchronous": 1,
    "foreign_keys": 1,
    "cache_size": -32000,
    "temp_store": 2,
    "mmap_size": 0,
    "busy_timeout": 5000,
}


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_new_file_persistent_pragmas_read_back_from_an_independent_connection(db_path):
    with consensus_db.connect(db_path) as db:
        db.record_agent_spawn("a1", "S", "plan", "quality_gate", "gemini")
    # Persistent settings live in the file: an independent stdlib connection sees them.
    assert read_pragmas(db_path, "journal_mode", "auto_vacuum", "user_version") == {
        "journal_mode": "wal",
        "auto_vacuum": 2,
        "user_version": consensus_db.LATEST_SCHEMA_VERSION,  # a new file has no legacy tables
    }


def test_every_pooled_connection_has_every_pragma(db_path):
    pool_size = 6
    with consensus_db.connect(db_path, pool_size=pool_size) as db:
        barrier = threading.Barrier(pool_size)
        seen = []

        def check():
            # Hold a transaction while waiting so each thread gets its own connection.
            with db.transaction("deferred") as tx:
                barrier.wait(timeout=10)
                seen.append({name: tx.query(f"PRAGMA {name}")[0][0] for name in WANTED})

        threads = [threading.Thread(target=check) for _ in range(pool_size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert db.pool_state()["connections"] == pool_size
        assert seen == [WANTED] * pool_size
        assert db.pragmas() == WANTED
        db.verify_pragmas()


def test_pragma_overrides_apply_and_verify(db_path):
    with consensus_db.connect(db_path, pragmas={"synchronous": "full", "mmap_size": 1 << 28, "cache_size": None}) as db:
        p = db.pragmas()
        assert p["synchronous"] == 2
        assert p["mmap_size"] == 1 << 28
        assert "cache_size" not in p  # None: left at SQLite's default, not verified


def test_legacy_database_is_converted_to_incremental_auto_vacuum(tmp_path):
    path = tmp_path / "legacy.db"
    made = make_legacy_db(path, bloat_mb=2)
    assert read_pragmas(path, "auto_vacuum", "journal_mode") == {"auto_vacuum": 0, "journal_mode": "delete"}
    before = stdlib_rows(path, "SELECT * FROM consensus_artifacts ORDER BY id")
    with consensus_db.connect(path, migrate=False) as db:
        assert db.open_report["auto_vacuum_converted"] == ("0", "2")
        assert db.pragmas()["auto_vacuum"] == 2
        rows = db.query("SELECT * FROM consensus_artifacts ORDER BY id")
    assert rows == before
    assert len(rows) == len(made["artifacts"])
    assert read_pragmas(path, "auto_vacuum", "journal_mode", "freelist_count") == {
        "auto_vacuum": 2,
        "journal_mode": "wal",
        "freelist_count": 0,
    }


def test_conversion_opt_out_refuses_naming_the_pragma_and_leaves_the_file(tmp_path):
    path = tmp_path / "legacy.db"
    make_legacy_db(path)
    digest = sha(path)
    with pytest.raises(consensus_db.PragmaVerificationError) as err:
        consensus_db.connect(path, convert_auto_vacuum=False)
    message = str(err.value)
    assert "auto_vacuum" in message and "wanted 2" in message and "reports 0" in message
    assert sha(path) == digest


def test_exception_in_transaction_rolls_back(db):
    db.execute("CREATE TABLE t (x INTEGER)")
    with pytest.raises(ZeroDivisionError):
        with db.transaction("immediate") as tx:
            tx.execute("INSERT INTO t VALUES (?)", [1])
            assert tx.query("SELECT count(*) FROM t") == [(1,)]
            1 / 0
    assert db.query("SELECT count(*) FROM t") == [(0,)]
    with db.transaction() as tx:
        tx.execute("INSERT INTO t VALUES (?)", [2])
    assert db.query("SELECT x FROM t") == [(2,)]


def test_nested_savepoints_roll_back_only_their_part(db):
    db.execute("CREATE TABLE t (x INTEGER)")
    with db.transaction() as tx:
        tx.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(RuntimeError):
            with tx.savepoint():
                tx.execute("INSERT INTO t VALUES (2)")
                with tx.savepoint():
                    tx.execute("INSERT INTO t VALUES (3)")
                raise RuntimeError("undo 2 and 3")
        with tx.savepoint():
            tx.execute("INSERT INTO t VALUES (4)")
            with pytest.raises(KeyError):
                with tx.savepoint():
                    tx.execute("INSERT INTO t VALUES (5)")
                    raise KeyError("undo 5 only")
    assert db.query("SELECT x FROM t ORDER BY x") == [(1,), (4,)]


def test_executemany_is_one_transaction(db):
    db.execute("CREATE TABLE t (x INTEGER UNIQUE)")
    with pytest.raises(consensus_db.IntegrityError):
        with db.transaction() as tx:
            tx.executemany("INSERT INTO t VALUES (?)", [[1], [2], [2]])
    assert db.query("SELECT count(*) FROM t") == [(0,)]
    with db.transaction() as tx:
        assert tx.executemany("INSERT INTO t VALUES (?)", ([i] for i in range(100))) == 100
    assert db.query("SELECT count(*), sum(x) FROM t") == [(100, 4950)]


def test_memory_database_is_shared_by_the_whole_pool():
    threads_n = 8
    with consensus_db.connect(":memory:", pool_size=threads_n) as db:
        db.execute("CREATE TABLE t (x TEXT)")
        db.execute("INSERT INTO t VALUES (?)", ["written once"])
        barrier = threading.Barrier(threads_n)
        seen = []

        def read():
            with db.transaction("deferred") as tx:
                barrier.wait(timeout=10)  # all eight hold a connection at once
                seen.append(tx.query("SELECT x FROM t"))

        threads = [threading.Thread(target=read) for _ in range(threads_n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert db.pool_state()["connections"] == threads_n
        assert seen == [[("written once",)]] * threads_n


def test_non_sqlite_file_is_refused_and_left_unmodified(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("these are my notes, not a database\n" * 100)
    digest = sha(path)
    with pytest.raises(consensus_db.CorruptDatabaseError) as err:
        consensus_db.connect(path)
    assert "not a database" in str(err.value) and "notes.txt" in str(err.value)
    assert sha(path) == digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_unknown_behaviour_and_pragma_are_named(db):
    with pytest.raises(consensus_db.InvalidInputError, match="'?\"?sometimes"):
        db.transaction("sometimes")
    with pytest.raises(consensus_db.InvalidInputError, match="jurnal_mode"):
        consensus_db.connect(":memory:", pragmas={"jurnal_mode": "wal"})
    with pytest.raises(consensus_db.InvalidInputError, match="synchronous.*often"):
        consensus_db.connect(":memory:", pragmas={"synchronous": "often"})
    with pytest.raises(consensus_db.InvalidInputError, match="cache_size"):
        consensus_db.connect(":memory:", pragmas={"cache_size": "1; DROP TABLE t"})


def test_read_only_store_refuses_writes(db_path):
    with consensus_db.connect(db_path) as db:
        db.record_agent_spawn("a1", "S", "plan", "quality_gate", "gemini")
    with consensus_db.connect(db_path, read_only=True) as ro:
        assert ro.get_agent_name("a1") == "gemini"
        with pytest.raises(consensus_db.ReadOnlyError):
            ro.record_agent_spawn("a2", "S", "plan", "quality_gate", "claude")
        with pytest.raises(consensus_db.ReadOnlyError):
            with ro.transaction("deferred") as tx:
                tx.execute("DELETE FROM agent_executions")
    with consensus_db.connect(db_path) as db:
        assert db.get_agent_name("a1") == "gemini"
        assert db.get_agent_name("a2") is None


def test_missing_file_with_create_false_is_refused_and_not_created(tmp_path):
    path = tmp_path / "absent.db"
    with pytest.raises(consensus_db.DatabaseError, match="does not exist"):
        consensus_db.connect(path, create=False)
    assert not path.exists()


def test_pool_checkout_timeout_is_a_retryable_library_error(db):
    small = consensus_db.connect(":memory:", pool_size=1, checkout_timeout=0.05, retry=None)
    with small.transaction():
        with pytest.raises(consensus_db.PoolTimeoutError) as err:
            small.get_agent_name("x")
    assert err.value.retryable
    assert small.get_agent_name("x") is None
    small.close()


def test_use_after_close_is_the_closed_error(db_path):
    db = consensus_db.connect(db_path)
    db.close()
    db.close()  # idempotent
    assert db.closed
    with pytest.raises(consensus_db.ClosedError):
        db.get_agent_name("a")
    with pytest.raises(consensus_db.ClosedError):
        with db.transaction():
            pass


def test_the_gil_is_released_while_a_write_waits(db_path):
    """A write waits in the store's write lane until this (main) thread ends its own
    transaction block, which holds the lane. If the waiting call held the GIL, this
    thread could never run Python again and the two would hang."""
    db = consensus_db.connect(db_path, pool_size=2, pragmas={"busy_timeout": 20000}, retry=None)
    db.execute("CREATE TABLE t (x INTEGER)")
    outcome = {}

    def blocked_writer():
        try:
            outcome["changed"] = db.execute("INSERT INTO t VALUES (2)")
        except Exception as exc:  # pragma: no cover - reported below
            outcome["error"] = exc

    with db.transaction("immediate") as tx:
        tx.execute("INSERT INTO t VALUES (1)")
        writer = threading.Thread(target=blocked_writer)
        writer.start()
        # Wait (without sleeping) until the writer has queued in the write lane: from
        # then on it waits for our block to end.
        deadline = time.monotonic() + 15
        while db.lane_stats()["queued"] < 1:
            assert time.monotonic() < deadline, "writer never reached the write lane"
        assert "changed" not in outcome
    writer.join(timeout=30)
    assert outcome == {"changed": 1}
    assert db.query("SELECT x FROM t ORDER BY x") == [(1,), (2,)]
    db.close()


def test_panic_becomes_a_library_error_and_the_store_keeps_working(db):
    with pytest.raises(consensus_db.InternalError, match="panic"):
        consensus_db._core._panic_for_tests()
    db.record_agent_spawn("a1", "S", "plan", "regular_stage", "code")
    assert db.get_agent_spawn_info("a1") == ("regular_stage", "plan")
