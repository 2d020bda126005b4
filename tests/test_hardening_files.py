"""Issue 15, items 4-6: the upgrade backup, messages that tell the truth about a file's
state, and transaction blocks that stay atomic when SQLite ends the transaction.

Real files and real processes throughout; a full disk is a child process with a
file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored). The stdlib ``sqlite3`` only ever
touches a file here while consensus-db does not have it open (see conftest).
"""

from __future__ import annotations

import sqlite3

import pytest

import consensus_db
from conftest import stdlib_rows


# ---- 6. transaction atomicity --------------------------------------------------------------


def test_insert_or_rollback_ends_the_block_and_nothing_after_it_persists(db_path):
    with consensus_db.connect(db_path) as db:
        db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
        db.execute("INSERT INTO t VALUES (1, 'committed before')")
        reached = []
        with pytest.raises(consensus_db.Error) as failed:
            with db.transaction() as tx:
                tx.execute("INSERT INTO t VALUES (2, 'in the block')")
                with pytest.raises(consensus_db.IntegrityError):
                    tx.execute("INSERT OR ROLLBACK INTO t VALUES (1, 'conflict')")
                # SQLite rolled the whole transaction back: this must not run in autocommit.
                tx.execute("INSERT INTO t VALUES (3, 'after the rollback')")
                reached.append("after")
    assert stdlib_rows(db_path, "SELECT k, v FROM t ORDER BY k") == [(1, "committed before")]
    assert reached == []  # the block failed at the first statement after the rollback
    assert failed.type.__name__ == "TransactionError"
    assert "OR ROLLBACK" in str(failed.value) and "nothing more runs" in str(failed.value)


def test_a_swallowed_sqlite_rollback_fails_the_commit(db_path):
    with consensus_db.connect(db_path) as db:
        db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)")
        db.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(consensus_db.Error, match="rolled the transaction back") as failed:
            with db.transaction() as tx:
                tx.execute("INSERT INTO t VALUES (2)")
                try:
                    tx.execute("INSERT OR ROLLBACK INTO t VALUES (1)")
                except consensus_db.IntegrityError:
                    pass
    assert stdlib_rows(db_path, "SELECT k FROM t") == [(1,)]
    assert failed.type.__name__ == "TransactionError"


@pytest.mark.parametrize("statement", ["ROLLBACK", "COMMIT", "end transaction", "  /* c */ -- c\n savepoint x",
                                       "RELEASE sp1", "BEGIN"])
def test_raw_transaction_control_is_refused_and_nothing_persists(db_path, statement):
    with consensus_db.connect(db_path) as db:
        db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)")
        with pytest.raises(consensus_db.Error) as failed:
            with db.transaction() as tx:
                tx.execute("INSERT INTO t VALUES (1)")
                tx.execute(statement)
                tx.execute("INSERT INTO t VALUES (2)")
    assert stdlib_rows(db_path, "SELECT k FROM t") == []
    assert failed.type.__name__ == "TransactionError"
    assert issubclass(failed.type, consensus_db.DatabaseError)
    assert "cannot run inside a transaction block" in str(failed.value)


def test_executemany_stops_at_the_row_whose_conflict_rolled_back(db_path):
    with consensus_db.connect(db_path) as db:
        db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)")
        db.execute("INSERT INTO t VALUES (5)")
        with pytest.raises(consensus_db.IntegrityError):
            with db.transaction() as tx:
                tx.executemany("INSERT OR ROLLBACK INTO t VALUES (?)", [[1], [5], [6], [7]])
    assert stdlib_rows(db_path, "SELECT k FROM t") == [(5,)]
