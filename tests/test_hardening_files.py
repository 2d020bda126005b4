"""Issue 15, items 4-6: the upgrade backup, messages that tell the truth about a file's
state, and transaction blocks that stay atomic when SQLite ends the transaction.

Real files and real processes throughout; a full disk is a child process with a
file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored). The stdlib ``sqlite3`` only ever
touches a file here while consensus-db does not have it open (see conftest).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

import consensus_db
from consensus_db.cli import main as cli
from conftest import make_legacy_db, read_pragmas, stdlib_rows


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def backups(directory: Path) -> list:
    return sorted(p for p in directory.iterdir() if ".backup-" in p.name)


def run_child(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=120)


# A child with a file-size limit: writes past it fail with EFBIG (SIGXFSZ ignored).
LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
"""


# ---- 4. the upgrade backup ---------------------------------------------------------------


def test_upgrade_backup_never_follows_a_planted_link(tmp_path):
    path = tmp_path / "field.db"
    make_legacy_db(path)
    victim = tmp_path / "someone-elses.db"  # another database the link points at
    stdlib_rows(victim, "CREATE TABLE mine (x)")
    before = sha256(victim)
    # Links at every name the old scheme (field.backup-<local second>.db) could pick.
    start = datetime.now()
    for s in range(-1, 6):
        link = tmp_path / f"field.backup-{(start + timedelta(seconds=s)).strftime('%Y%m%d-%H%M%S')}.db"
        link.symlink_to(victim)
    result = CliRunner().invoke(cli, ["upgrade", str(path)])
    assert result.exit_code == 0, result.output
    assert sha256(victim) == before
    made = [p for p in backups(tmp_path) if not p.is_symlink()]
    assert len(made) == 1 and stdlib_rows(made[0], "PRAGMA user_version") == [(0,)]


def test_backup_refuses_an_existing_file_or_link_and_names_it(tmp_path):
    victim = tmp_path / "victim.db"
    victim.write_bytes(b"not yours")
    link, dangling = tmp_path / "link.db", tmp_path / "dangling.db"
    link.symlink_to(victim)
    dangling.symlink_to(tmp_path / "nowhere.db")
    with consensus_db.connect(tmp_path / "src.db") as db:
        db.record_agent_spawn("a", "S", "plan", "quality_gate", "g")
        for dest in (victim, link, dangling):
            with pytest.raises(consensus_db.InvalidInputError, match=f"{dest.name}.*already exists"):
                db.backup(dest)
        assert db.backup(tmp_path / "ok.db") == str(tmp_path / "ok.db")
    assert victim.read_bytes() == b"not yours"
    assert not (tmp_path / "nowhere.db").exists() and dangling.is_symlink()
    assert stdlib_rows(tmp_path / "ok.db", "SELECT agent_id FROM agent_executions") == [("a",)]


def test_async_backup_beside_the_file(tmp_path):
    import asyncio

    import consensus_db.aio

    async def main() -> list:
        async with await consensus_db.aio.connect(tmp_path / "a.db") as db:
            await db.record_agent_spawn("a", "S", "plan", "quality_gate", "g")
            return [await db.backup(), await db.backup()]

    made = asyncio.run(main())
    assert len(set(made)) == 2 and all(Path(m).parent == tmp_path and ".backup-" in m for m in made)
    assert all(stdlib_rows(Path(m), "SELECT agent_id FROM agent_executions") == [("a",)] for m in made)


def test_backup_keeps_the_source_permissions(tmp_path):
    path = tmp_path / "field.db"
    make_legacy_db(path)
    path.chmod(0o600)
    old = os.umask(0o022)
    try:
        result = CliRunner().invoke(cli, ["upgrade", str(path)])
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    [copy] = backups(tmp_path)
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600


def test_two_upgrades_in_one_second_keep_the_original(tmp_path):
    path = tmp_path / "field.db"
    made = make_legacy_db(path)
    time.sleep(1.02 - time.time() % 1)  # both runs start early in the same second
    for _ in range(2):
        result = CliRunner().invoke(cli, ["upgrade", str(path)])
        assert result.exit_code == 0, result.output
    copies = backups(tmp_path)
    assert len(copies) == 2
    versions = sorted(stdlib_rows(c, "PRAGMA user_version")[0][0] for c in copies)
    assert versions == [0, 1]  # the pre-upgrade original survives the second upgrade
    first = next(c for c in copies if stdlib_rows(c, "PRAGMA user_version") == [(0,)])
    assert stdlib_rows(first, "SELECT count(*) FROM consensus_artifacts") == [(len(made["artifacts"]),)]


def test_upgrade_uses_no_second_sqlite_library(tmp_path):
    path = tmp_path / "field.db"
    make_legacy_db(path)
    done = run_child("import sqlite3, sys\n"
                     "def refuse(*args, **kwargs):\n    raise AssertionError(f'stdlib sqlite3.connect{args}')\n"
                     "sqlite3.connect = refuse\n"
                     "from consensus_db.cli import main\nmain(['upgrade', sys.argv[1]])", path)
    assert done.returncode == 0, done.stderr
    assert len(backups(tmp_path)) == 1 and read_pragmas(path, "user_version") == {"user_version": 1}


def test_backup_on_a_full_disk_is_a_typed_error_and_leaves_nothing(tmp_path):
    path = tmp_path / "field.db"
    make_legacy_db(path, bloat_mb=1)
    original = sha256(path)
    limit = path.stat().st_size // 2
    done = run_child(LIMITED + "from consensus_db.cli import main\nmain(['upgrade', sys.argv[2]])", limit, path)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("error: database or disk is full"), done.stderr
    assert "nothing was changed" in done.stderr
    assert backups(tmp_path) == []
    assert sha256(path) == original
    # The same through the API.
    dest = tmp_path / "copy.db"
    done = run_child(LIMITED + "import consensus_db\n"
                     "with consensus_db.connect(sys.argv[2], read_only=True) as db:\n"
                     "    try:\n        db.backup(sys.argv[3])\n"
                     "    except consensus_db.Error as exc:\n        print(type(exc).__name__, exc)\n",
                     limit, path, dest)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("DiskFullError") and "copy.db" in done.stdout, done.stdout
    assert not dest.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["field.db"]


# ---- 5. messages that tell the truth -------------------------------------------------------


def test_an_upgrade_that_fails_part_way_says_what_state_the_file_is_in(tmp_path):
    src = tmp_path / "orig.db"
    made = make_legacy_db(src, artifact_groups=[(f"SPEC-{i}", "plan", f"run-{i}", 20) for i in range(60)])
    size = src.stat().st_size
    states = []
    # Limits above the original's size (the backup fits) that stop the upgrade at some
    # step: during the migration (its tables and read indexes; its chunks' commits put
    # some pages in the WAL several times before a checkpoint), or in the final vacuum
    # (the WAL holds every page).
    for fraction in (1.1, 1.4, 1.7, 2.0, 2.3, 3.0, 4.0, 6.0, 9.0, 14.0):
        work = tmp_path / str(fraction)
        work.mkdir()
        path = work / "field.db"
        shutil.copy(src, path)
        done = run_child(LIMITED + "from consensus_db.cli import main\nmain(['upgrade', sys.argv[2]])",
                         int(size * fraction), path)
        if done.returncode == 0:
            continue
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        assert "unchanged" not in done.stderr
        actual = read_pragmas(path, "user_version", "journal_mode")
        states.append((actual["user_version"], actual["journal_mode"]))
        assert f"now at schema version {actual['user_version']} in {actual['journal_mode'].upper()} mode" in done.stderr
        [copy] = backups(work)
        assert f"the pre-upgrade original is at {copy}" in done.stderr
        assert stdlib_rows(copy, "SELECT count(*), max(user_version) FROM consensus_artifacts, pragma_user_version") == [
            (len(made["artifacts"]), 0)]
    assert (1, "wal") in states, states  # at least one run failed in the final vacuum


HOT_WRITER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA cache_size = 2")  # spill: the file itself holds uncommitted pages
conn.execute("BEGIN")
conn.execute("UPDATE consensus_artifacts SET content_json = 'uncommitted', response_text = zeroblob(20000)")
print("ready", flush=True)
time.sleep(60)
"""


def hot_journal_file(path: Path) -> list:
    """A legacy file whose writer was killed mid-transaction: a hot rollback journal."""
    make_legacy_db(path)
    committed = stdlib_rows(path, "SELECT id, content_json FROM consensus_artifacts ORDER BY id")
    writer = subprocess.Popen([sys.executable, "-c", HOT_WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline() == "ready\n"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
    assert Path(f"{path}-journal").stat().st_size > 0
    return committed


def test_health_and_upgrade_roll_back_a_hot_journal_and_lose_nothing(tmp_path):
    path = tmp_path / "field.db"
    committed = hot_journal_file(path)
    with pytest.raises(consensus_db.ReadOnlyError) as err:
        consensus_db.connect(path, read_only=True)
    assert "hot rollback journal" in str(err.value) and "read-only store" not in str(err.value)
    assert str(path) in str(err.value)

    result = CliRunner().invoke(cli, ["health", str(path), "--json"])
    assert result.exit_code == 0, result.output
    assert "rolled back the hot journal" in result.output
    assert not Path(f"{path}-journal").exists()
    assert stdlib_rows(path, "SELECT id, content_json FROM consensus_artifacts ORDER BY id") == committed

    path2 = tmp_path / "other.db"
    committed2 = hot_journal_file(path2)
    result = CliRunner().invoke(cli, ["upgrade", str(path2)])
    assert result.exit_code == 0, result.output
    [copy] = [p for p in backups(tmp_path) if p.name.startswith("other.")]
    assert stdlib_rows(copy, "SELECT id, content_json FROM consensus_artifacts ORDER BY id") == committed2
    with consensus_db.connect(path2) as db:
        assert db.integrity_check() == ["ok"]
        assert sorted((a.id, a.content_json) for s in ("SPEC-1", "SPEC-2") for st in ("plan", "tasks")
                      for a in db.query_artifacts(s, st)) == committed2


UNPRIVILEGED = """
import os, sys, json
from consensus_db.cli import main
import consensus_db
if os.geteuid() == 0:  # root ignores directory permissions: play an ordinary user
    os.setgid(65534)
    os.setuid(65534)
try:
    consensus_db.connect(sys.argv[1], read_only=True, create=False)
except consensus_db.Error as exc:
    print(type(exc).__name__, exc, flush=True)
main([sys.argv[2], sys.argv[1]])
"""


def test_a_wal_file_in_a_read_only_directory_says_so(tmp_path):
    directory = Path(tempfile.mkdtemp(prefix="consensus-db-ro-"))  # reachable by any user
    try:
        path = directory / "data.db"
        with consensus_db.connect(path) as db:
            db.record_agent_spawn("a", "S", "plan", "quality_gate", "g")
        deadline = time.monotonic() + 10  # the last connection's close removes -wal and -shm
        while len(list(directory.iterdir())) > 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sorted(p.name for p in directory.iterdir()) == ["data.db"]
        if os.geteuid() == 0:
            for p in (directory, path):
                os.chown(p, 65534, 65534)
        directory.chmod(0o555)
        for command in ("health", "upgrade"):
            done = run_child(UNPRIVILEGED, path, command)
            assert done.returncode == 1, (done.stdout, done.stderr)
            for message in (done.stdout, done.stderr):
                assert "read-only store" not in message
                assert "directory is not writable" in message and '"-wal" and "-shm"' in message, message
            assert done.stdout.startswith("ReadOnlyError")
            assert "Traceback" not in done.stderr
    finally:
        directory.chmod(0o755)
        shutil.rmtree(directory)


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
