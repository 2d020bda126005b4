"""Issue 15, hardening at the boundary: named parameters, bad arguments and files,
exact paths, errors as documented, async close and cancellation. Each test fails on
the code before the fix; races are forced with hooks, never left to timing."""

from __future__ import annotations

import asyncio
import os
import pathlib
import sqlite3
import stat
import subprocess
import sys
import threading
import time

import pytest

import consensus_db
from consensus_db import aio
from consensus_db.retry import RetryPolicy


# ---- 12. async: close and cancellation ---------------------------------------------------


def test_async_calls_after_close_raise_closed_error(db_path):
    async def main():
        db = await aio.connect(db_path)
        await db.close()
        with pytest.raises(consensus_db.ClosedError):
            await db.get_agent_name("a")
        with pytest.raises(consensus_db.ClosedError):
            await db.record_agent_spawn("a", "S", "plan", "quality_gate", "g")
        with pytest.raises(consensus_db.ClosedError):
            await db.close()
        assert db.closed

    asyncio.run(main())


def _blocked_writer(db_path):
    """An async store whose next write is held mid-call: a second store holds the write
    lock, the write gets BusyError at once (busy_timeout 0) and its retry sleeps in a
    hook that signals `started` and waits for `go`."""
    started, go = threading.Event(), threading.Event()

    def sleep(_delay):
        started.set()
        go.wait(30)

    policy = RetryPolicy(max_attempts=3, initial_delay=0.001, jitter=False, sleep=sleep)
    return started, go, policy


def test_a_cancelled_running_write_is_finished_when_the_cancellation_arrives(db_path):
    holder = consensus_db.connect(db_path)
    started, go, policy = _blocked_writer(db_path)

    async def main():
        db = await aio.connect(db_path, retry=policy, pragmas={"busy_timeout": 0})
        lock = holder.transaction("immediate")
        lock.__enter__()
        task = asyncio.ensure_future(db.record_agent_spawn("a1", "S", "plan", "quality_gate", "g"))
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 30)  # the write is running
        task.cancel()
        for _ in range(5):
            await asyncio.sleep(0)
        finished_early = task.done()  # before the write had any outcome
        lock.__exit__(None, None, None)
        go.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The cancellation came through only after the write's outcome: here, a commit.
        written = db.sync.get_agent_name("a1")
        await db.close()
        return finished_early, written

    try:
        finished_early, written = asyncio.run(main())
    finally:
        go.set()
        holder.close()
    assert not finished_early
    assert written == "g"


def test_a_cancelled_queued_write_never_runs(db_path):
    holder = consensus_db.connect(db_path)
    started, go, policy = _blocked_writer(db_path)

    async def main():
        db = await aio.connect(db_path, pool_size=1, retry=policy, pragmas={"busy_timeout": 0})
        lock = holder.transaction("immediate")
        lock.__enter__()
        first = asyncio.ensure_future(db.record_agent_spawn("a1", "S", "plan", "quality_gate", "g"))
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 30)
        queued = asyncio.ensure_future(db.record_agent_spawn("a2", "S", "plan", "quality_gate", "g"))
        await asyncio.sleep(0)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        lock.__exit__(None, None, None)
        go.set()
        await first
        names = (db.sync.get_agent_name("a1"), db.sync.get_agent_name("a2"))
        await db.close()
        return names

    try:
        names = asyncio.run(main())
    finally:
        go.set()
        holder.close()
    assert names == ("g", None)


# ---- 7. named parameters, unknown artifact keys ---------------------------------------------


@pytest.mark.parametrize("prefix", [":", "@", "$"])
def test_a_mapping_binds_by_name(db, prefix):
    assert db.query(f"SELECT {prefix}x, {prefix}y", {"y": 2, "x": "one"}) == [("one", 2)]


def test_named_updates_change_the_named_rows(db):
    db.record_agent_spawn("a1", "S", "plan", "quality_gate", "gemini")
    db.record_agent_spawn("a2", "S", "plan", "quality_gate", "claude")
    changed = db.execute("UPDATE agent_executions SET run_id = :run WHERE agent_id = :agent", {"agent": "a2", "run": "r9"})
    assert changed == 1
    assert db.query("SELECT agent_id, run_id FROM agent_executions ORDER BY agent_id") == [("a1", None), ("a2", "r9")]
    with db.transaction() as tx:
        assert tx.execute("UPDATE agent_executions SET run_id = $r WHERE agent_id = @a", {"a": "a1", "r": "r1"}) == 1
        assert tx.query("SELECT run_id FROM agent_executions WHERE agent_id = :a", {"a": "a1"}) == [("r1",)]
        assert tx.executemany("UPDATE agent_executions SET stage = :s WHERE agent_id = :a",
                              [{"a": "a1", "s": "tasks"}, {"a": "a2", "s": "audit"}]) == 2
    assert db.query("SELECT stage FROM agent_executions ORDER BY agent_id") == [("tasks",), ("audit",)]


def test_a_sequence_still_binds_named_parameters_by_position(db):
    assert db.query("SELECT :a, :b", ["first", "second"]) == [("first", "second")]


def test_a_missing_name_is_refused_naming_it_and_nothing_changes(db):
    db.record_agent_spawn("a1", "S", "plan", "quality_gate", "gemini")
    with pytest.raises(consensus_db.InvalidInputError, match=":run"):
        db.execute("UPDATE agent_executions SET run_id = :run WHERE agent_id = :agent", {"agent": "a1", "runn": "r"})
    with pytest.raises(consensus_db.InvalidInputError, match="positional"):
        db.query("SELECT ?", {"x": 1})
    with pytest.raises(consensus_db.InvalidInputError, match="row 1"):
        with db.transaction() as tx:
            tx.executemany("UPDATE agent_executions SET run_id = :r WHERE agent_id = 'a1'", [{"r": "x"}, {"q": "y"}])
    assert db.query("SELECT run_id FROM agent_executions") == [(None,)]


def test_store_artifacts_refuses_unknown_keys_naming_them(db):
    good = {"spec_id": "S", "stage": "plan", "agent_name": "g", "content_json": {}}
    with pytest.raises(consensus_db.InvalidInputError, match=r"artifacts\[1\].*'runid'"):
        db.store_artifacts([good, {**good, "runid": "r1"}])
    assert db.query_artifacts("S", "plan") == []
    assert len(db.store_artifacts([good, {**good, "run_id": None, "response_text": "r"}])) == 2


# ---- 8. bad arguments and files: typed errors, never panics or foreign exceptions ----------------


@pytest.mark.parametrize("value", [1e300, 1e-300, float("inf"), float("nan"), -1, 0, "10", True])
def test_bad_durations_are_invalid_input_naming_them(db, db_path, value):
    with pytest.raises(consensus_db.InvalidInputError, match="checkout_timeout"):
        consensus_db.connect(db_path, checkout_timeout=value)
    with pytest.raises(consensus_db.InvalidInputError, match="interval_s"):
        db.start_maintenance(value)
    assert db.maintenance_cycles is None


SURROGATE = "bad\ud800"


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda db: db.query(SURROGATE), "sql"),
        (lambda db: db.execute(SURROGATE), "sql"),
        (lambda db: db.transaction(SURROGATE), "behavior"),
        (lambda db: db.transaction(1), "behavior"),
        (lambda db: db.query(1), "sql"),
        (lambda db: db.store_synthesis("S", "plan", "m", status=SURROGATE), "status"),
        (lambda db: db.store_synthesis("S", "plan", "m", status=1), "status"),
        (lambda db: db.store_synthesis("S", "plan", "m", artifacts_count=2**70), "artifacts_count"),
        (lambda db: db.store_synthesis("S", "plan", "m", artifacts_count="3"), "artifacts_count"),
        (lambda db: db.store_synthesis("S", "plan", "m", degraded="yes"), "degraded"),
        (lambda db: db.vacuum(pages=-1), "pages"),
        (lambda db: db.vacuum(pages="all"), "pages"),
        (lambda db: db.vacuum(full="yes"), "full"),
        (lambda db: db.vacuum(progress=3), "progress"),
        (lambda db: db.health("0.5"), "threshold"),
        (lambda db: db.integrity_check("quick"), "quick"),
        (lambda db: db.start_maintenance(1, retention_days=2**70), "retention_days"),
        (lambda db: db.start_maintenance(1, vacuum_pages=-1), "vacuum_pages"),
        (lambda db: db.start_maintenance(1, on_cycle="log"), "on_cycle"),
        (lambda db: db.start_maintenance(1, checkpoint="no"), "checkpoint"),
    ],
)
def test_bad_arguments_are_invalid_input_naming_them(db, call, name):
    with pytest.raises(consensus_db.InvalidInputError, match=name):
        call(db)
    assert db.query("SELECT count(*) FROM consensus_runs") == [(0,)]
    assert db.maintenance_cycles is None


@pytest.mark.parametrize(
    "options, name",
    [
        ({"pool_size": -1}, "pool_size"),
        ({"pool_size": 2**40}, "pool_size"),
        ({"pool_size": "4"}, "pool_size"),
        ({"min_idle": -1}, "min_idle"),
        ({"read_only": "no"}, "read_only"),
        ({"create": 1}, "create"),
        ({"pragmas": [("mmap_size", 0)]}, "pragmas"),
        ({"pragmas": {"cache_size": SURROGATE}}, "cache_size"),
        ({"retry": 3}, "retry"),
    ],
)
def test_bad_connect_arguments_are_invalid_input_naming_them(db_path, options, name):
    with pytest.raises(consensus_db.InvalidInputError, match=name):
        consensus_db.connect(db_path, **options)
    assert not db_path.exists()


def test_values_over_sqlites_length_limit_are_invalid_input_naming_them(db):
    big = "x" * (1_000_000_000 + 1)
    with pytest.raises(consensus_db.InvalidInputError, match="response_text"):
        db.store_artifact("S", "plan", "g", "{}", response_text=big)
    with pytest.raises(consensus_db.InvalidInputError, match=r"params\[0\]"):
        db.query("SELECT length(?)", [big])
    del big
    blob = b"x" * (1_000_000_000 + 1)
    with pytest.raises(consensus_db.InvalidInputError, match=r"params\['b'\]"):
        db.execute("INSERT INTO consensus_db_meta VALUES ('k', :b)", {"b": blob})
    del blob
    assert db.query_artifacts("S", "plan") == []


def test_a_negative_user_version_is_a_typed_error(db_path):
    conn = sqlite3.connect(db_path)
    conn.execute("PRAGMA user_version = -5")
    conn.close()
    with pytest.raises(consensus_db.MigrationError, match="-5"):
        consensus_db.connect(db_path)


# ---- 10. paths: exactly the file named, URIs only when asked for ------------------------------


def test_non_utf8_file_names_open_exactly_that_file(tmp_path):
    names = [b"run\xff.db", b"run\xfe.db"]
    for i, name in enumerate(names):
        path = os.fsencode(tmp_path) + b"/" + name
        with consensus_db.connect(os.fsdecode(path)) as db:  # a str with surrogate escapes
            db.record_agent_spawn(f"a{i}", "S", "plan", "quality_gate", "g")
            assert db.path == os.fsdecode(path)
        with consensus_db.connect(path) as db:  # the same file, named by its bytes
            assert db.query("SELECT agent_id FROM agent_executions") == [(f"a{i}",)]
    assert sorted(n for n in os.listdir(os.fsencode(tmp_path)) if n.endswith(b".db")) == sorted(names)


def test_backups_upgrades_and_downgrades_of_a_non_utf8_file_name_use_its_bytes(tmp_path):
    """backup() stats and names files by their bytes, as connect() opens them; dest may
    be bytes; the commands that back up first (upgrade, downgrade) work on such a file."""
    directory = os.fsencode(tmp_path)
    path = directory + b"/caf\xe9.db"
    with consensus_db.connect(path) as db:
        db.store_artifact("S", "plan", "g", {"n": 1})
        os.chmod(path, 0o640)
        copies = [
            db.backup(),
            db.backup(directory + b"/copy\xff.db"),
            db.backup(os.fsdecode(directory + b"/copy\xfe.db")),
            db.backup(pathlib.Path(os.fsdecode(directory + b"/copy\xfd.db"))),
        ]
    assert os.fsencode(copies[0]).startswith(directory + b"/caf\xe9.backup-") and copies[0].endswith(".db")
    assert [os.fsencode(c) for c in copies[1:]] == [directory + n for n in (b"/copy\xff.db", b"/copy\xfe.db", b"/copy\xfd.db")]
    for copy in copies:
        assert stat.S_IMODE(os.stat(copy).st_mode) == 0o640
        with consensus_db.connect(copy, read_only=True) as backed_up:
            assert [a.agent_name for a in backed_up.query_artifacts("S", "plan")] == ["g"]
    cli = [sys.executable, "-m", "consensus_db"]
    for command in (["downgrade", path, "--to", "1"], ["upgrade", path, "--drop-legacy"]):
        done = subprocess.run(cli + command, capture_output=True, timeout=120)
        assert done.returncode == 0, done.stderr.decode(errors="backslashreplace")
    with consensus_db.connect(path) as db:
        assert db.schema_version == 2 and [a.agent_name for a in db.query_artifacts("S", "plan")] == ["g"]
    backups = [n for n in os.listdir(directory) if n.startswith(b"caf\xe9.backup-") and n.endswith(b".db")]
    assert len(backups) == 3, "backup(), then one by each command"


def test_a_path_starting_with_file_is_a_file_name_not_a_uri(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    name = "file:x.db?nolock=1&immutable=1"
    with consensus_db.connect(name) as db:
        db.record_agent_spawn("a1", "S", "plan", "quality_gate", "g")
    assert (tmp_path / name).is_file()
    assert not (tmp_path / "x.db").exists()
    with consensus_db.connect(tmp_path / name) as db:
        assert db.get_agent_name("a1") == "g"


def test_uris_are_opened_when_asked_for(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with consensus_db.connect("file:y.db?mode=rwc", uri=True) as db:
        db.record_agent_spawn("a1", "S", "plan", "quality_gate", "g")
        assert db.health()["file_size"] > 0
    with consensus_db.connect(tmp_path / "y.db") as db:
        assert db.get_agent_name("a1") == "g"
    with pytest.raises(consensus_db.InvalidInputError, match="memory"):
        consensus_db.connect("file:z?mode=memory", uri=True)


@pytest.mark.parametrize("path", ["", "a\0b.db", b"a\0b.db", 42, "bad\ud800.db"])
def test_bad_paths_are_invalid_input(tmp_path, monkeypatch, path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(consensus_db.InvalidInputError, match="path"):
        consensus_db.connect(path)
    assert os.listdir(tmp_path) == []


# ---- 11. errors as documented: file-size limits, pragmas that cannot verify ----------------------


FSIZE_CHILD = """
import resource, signal, sys, consensus_db
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
db = consensus_db.connect(sys.argv[1], retry=None)
if sys.argv[2] == "vacuum":
    db.store_artifacts([{"spec_id": "S", "stage": "plan", "agent_name": "g", "content_json": {"pad": "x" * 2000}}
                        for _ in range(500)])
    db.checkpoint()
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
try:
    if sys.argv[2] == "vacuum":
        db.vacuum(full=True)
    else:
        for i in range(100):
            db.store_artifact("S", "plan", "gemini", {"i": i, "pad": "x" * 20_000})
except consensus_db.Error as exc:
    print(type(exc).__name__, exc, flush=True)
"""


@pytest.mark.parametrize("work", ["writes", "vacuum"])
def test_a_file_size_limit_is_disk_full(db_path, work):
    done = subprocess.run([sys.executable, "-c", FSIZE_CHILD, str(db_path), work], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("DiskFullError"), done.stdout
    with consensus_db.connect(db_path) as db:
        assert db.integrity_check() == ["ok"]


def test_a_pragma_that_can_never_verify_is_refused_at_once_leaving_no_file(db_path):
    started = time.monotonic()
    with pytest.raises(consensus_db.InvalidInputError, match="mmap_size"):
        consensus_db.connect(db_path, pragmas={"mmap_size": 2**40}, checkout_timeout=5)
    assert time.monotonic() - started < 4
    assert list(db_path.parent.iterdir()) == []


def test_a_pragma_that_fails_verification_leaves_no_new_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # The dot-file locking VFS has no shared memory, so WAL cannot be switched on.
    started = time.monotonic()
    with pytest.raises(consensus_db.PragmaVerificationError, match="journal_mode"):
        consensus_db.connect("file:new.db?vfs=unix-dotfile", uri=True)
    assert time.monotonic() - started < 1.5  # no retrying of an answer that will not change
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("pool_size", [0, -1, "4", None])
def test_async_connect_refuses_a_bad_pool_size(db_path, pool_size):
    with pytest.raises(consensus_db.InvalidInputError, match="pool_size"):
        asyncio.run(aio.connect(db_path, pool_size=pool_size))
    assert not db_path.exists()
