"""Disk full and damaged, foreign or unreachable files: clear library errors, never a
crash of the interpreter, never a panic, nothing acknowledged lost."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest

import consensus_db
from consensus_db.retry import is_retryable


def test_disk_full_is_a_clear_error_and_earlier_writes_survive(db_path):
    with consensus_db.connect(db_path, pool_size=1, retry=None) as db:
        first = db.store_artifact("S", "plan", "gemini", {"before": True})
        pages = db.stats()["page_count"]
        # max_page_count is per connection: with pool_size=1 it sticks to the only one.
        db.query(f"PRAGMA max_page_count = {pages + 2}")
        with pytest.raises(consensus_db.DiskFullError) as err:
            db.store_artifacts([{"spec_id": "S", "stage": "plan", "agent_name": "big", "content_json": {"b": "x" * 100_000}}
                                for _ in range(5)])
        assert "full" in str(err.value)
        assert not is_retryable(err.value)
        assert [a.id for a in db.query_artifacts("S", "plan")] == [first]  # nothing half-written
        assert db.integrity_check() == ["ok"]
        db.query("PRAGMA max_page_count = 1073741823")
        db.store_artifact("S", "plan", "gemini", {"after": True})
        assert len(db.query_artifacts("S", "plan")) == 2


FSIZE_CHILD = """
import resource, signal, sys, consensus_db
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
db = consensus_db.connect(sys.argv[1], retry=None)
db.store_artifact("S", "plan", "gemini", {"small": True})
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
try:
    for i in range(100):
        db.store_artifact("S", "plan", "gemini", {"i": i, "pad": "x" * 20_000})
except consensus_db.Error as exc:
    print(type(exc).__name__, exc, flush=True)
"""


def test_file_size_limit_in_a_child_is_a_library_error(db_path):
    done = subprocess.run([sys.executable, "-c", FSIZE_CHILD, str(db_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    # ENOSPC is SQLITE_FULL (DiskFullError); EFBIG from RLIMIT_FSIZE is SQLITE_IOERR_WRITE.
    assert done.stdout.startswith(("DiskFullError", "DatabaseError disk I/O error: a write failed")), done.stdout
    assert "panicked" not in done.stderr
    with consensus_db.connect(db_path) as db:
        assert db.integrity_check() == ["ok"]
        got = db.query_artifacts("S", "plan", order="oldest")
        assert got[0].content() == {"small": True}
        assert [a.content()["i"] for a in got[1:]] == list(range(len(got) - 1))


def damaged_copy(tmp_path, name, damage):
    path = tmp_path / name
    with consensus_db.connect(path, pragmas={"journal_mode": "delete"}) as db:
        db.store_artifacts([{"spec_id": "S", "stage": "plan", "agent_name": "g", "content_json": {"i": i, "p": "z" * 500}}
                            for i in range(2000)])
    damage(path)
    return path


def overwrite_pages(path):
    data = bytearray(path.read_bytes())
    rng = __import__("random").Random(3)
    for page in range(2, len(data) // 4096):
        if page % 3 == 0:
            start = page * 4096
            data[start:start + 4096] = bytes(rng.randrange(256) for _ in range(4096))
    path.write_bytes(bytes(data))


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


OPEN_AND_CHECK = """
import sys, consensus_db
try:
    with consensus_db.connect(sys.argv[1]) as db:
        result = db.integrity_check()
        db.query_artifacts("S", "plan")
        print("opened", result[:1])
except consensus_db.Error as exc:
    print(type(exc).__name__, exc)
"""


@pytest.mark.parametrize("damage", [overwrite_pages, truncate])
def test_damaged_files_raise_library_errors_in_a_child_that_survives(tmp_path, damage):
    path = damaged_copy(tmp_path, f"{damage.__name__}.db", damage)
    done = subprocess.run([sys.executable, "-c", OPEN_AND_CHECK, str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr  # no segfault, no abort
    assert "panicked" not in done.stderr
    first = done.stdout.split()[0]
    # Either refused outright, or opened and integrity_check reports the damage.
    assert first in ("CorruptDatabaseError", "DatabaseError", "MigrationError") or (
        first == "opened" and "['ok']" not in done.stdout), done.stdout


def test_foreign_file_is_refused_unmodified(tmp_path):
    path = tmp_path / "photo.jpg"
    path.write_bytes(bytes(range(256)) * 64)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(consensus_db.CorruptDatabaseError, match="photo.jpg"):
        consensus_db.connect(path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def test_empty_file_becomes_a_new_database(tmp_path):
    path = tmp_path / "empty.db"
    path.touch()
    with consensus_db.connect(path) as db:  # SQLite treats a zero-byte file as an empty database
        assert db.schema_version == consensus_db.LATEST_SCHEMA_VERSION  # a new file: no legacy tables
        db.record_agent_spawn("a", "S", "plan", "quality_gate", "g")


def test_directory_and_unreachable_paths(tmp_path):
    with pytest.raises(consensus_db.Error, match=str(tmp_path.name)):
        consensus_db.connect(tmp_path)
    with pytest.raises(consensus_db.DatabaseError, match="no-such-dir"):
        consensus_db.connect(tmp_path / "no-such-dir" / "x.db")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_path_without_permission(tmp_path):
    path = tmp_path / "locked.db"
    consensus_db.connect(path).close()
    path.chmod(0)
    try:
        with pytest.raises(consensus_db.Error):
            consensus_db.connect(path)
    finally:
        path.chmod(0o600)


def test_read_only_store_on_a_rollback_journal_file(tmp_path):
    path = tmp_path / "ro" / "data.db"
    path.parent.mkdir()
    with consensus_db.connect(path, pragmas={"journal_mode": "delete"}) as db:
        db.record_agent_spawn("a", "S", "plan", "quality_gate", "g")
    with consensus_db.connect(path, read_only=True) as ro:
        assert ro.get_agent_name("a") == "g"
        with pytest.raises(consensus_db.ReadOnlyError):
            ro.execute("DELETE FROM agent_executions")
