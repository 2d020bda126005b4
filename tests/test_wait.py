"""Waiting for agents (``expect_agents``, ``wait_for_agents``; src/wait.rs), on both
backends, with real processes: a waiter woken by a completion another process commits,
the persisted expected set (a wait after 2 of 3 spawns does not return early, the
predecessor's bug), quorum, an extraction failure counting as finished, a timeout
returning what is pending, async waiters that hold no thread, ``close()`` waking a
waiter with ``ClosedError`` and leaving no file open, bad input refused by name, and the
``consensus-db wait`` command. No test sleeps for a wake-up: each waits for the event
itself (a thread's join, a child's line) with a bound only a hang would reach."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

import consensus_db
import consensus_db.aio

STAGE = "plan"
WATCHER = "consensus-db-wa"  # the watcher thread's name as /proc shows it (15 characters)


def spawn(db: Any, *agents: str, spec: str = "S", stage: str = STAGE) -> None:
    for a in agents:
        db.record_agent_spawn(a, spec, stage, "regular_stage", "gemini")


def thread_names() -> list[str]:
    names = []
    for tid in os.listdir("/proc/self/task"):
        try:
            names.append(Path(f"/proc/self/task/{tid}/comm").read_text().strip())
        except OSError:
            pass
    return names


def until(condition: Callable[[], bool], bound: float = 20.0) -> bool:
    """Waits for a condition of another thread (not for time): True once it holds."""
    deadline = time.monotonic() + bound
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


async def until_async(condition: Callable[[], bool], bound: float = 20.0) -> bool:
    """``until`` on an event loop: the loop's tasks run meanwhile."""
    deadline = time.monotonic() + bound
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.002)
    return True


def open_files(path: Path) -> list[str]:
    names = {str(path), f"{path}-wal", f"{path}-shm", f"{path}-writer"}
    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target in names:
            held.append(target)
    return sorted(held)


class Waiting:
    """A blocking wait on a thread of its own; ``result()`` joins it."""

    def __init__(self, db: Any, **kwargs: Any) -> None:
        self.outcome: Any = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self.outcome = db.wait_for_agents("S", STAGE, **kwargs)
            except BaseException as e:  # noqa: BLE001 - handed to the test
                self.error = e

        self.thread = threading.Thread(target=run)
        self.thread.start()
        assert until(lambda: WATCHER in thread_names()), "the watcher never started"

    def result(self) -> Any:
        self.thread.join(60)
        assert not self.thread.is_alive(), "the waiter was never woken"
        if self.error is not None:
            raise self.error
        return self.outcome


COMPLETER = """
import sys, consensus_db
target, agents = sys.argv[1], sys.argv[2:]
with consensus_db.connect(target) as db:
    print("ready", flush=True)
    sys.stdin.readline()
    for a in agents:
        if a.startswith("fail:"):
            db.record_extraction_failure(a[5:], "not json", "Expecting value")
        else:
            db.record_agent_completion(a, "{}")
    print("done", flush=True)
"""


@pytest.mark.parametrize("by", ["run_id", "agent_ids"])
def test_a_waiter_is_woken_by_a_completion_from_another_process(store_target, by):
    target = str(store_target)
    with consensus_db.connect(target) as db:
        db.expect_agents("S", STAGE, "run-1", ["a1", "a2"])
        spawn(db, "a1", "a2")
        child = subprocess.Popen(
            [sys.executable, "-c", COMPLETER, target, "a1", "fail:a2"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "ready"
        selector = {"run_id": "run-1"} if by == "run_id" else {"agent_ids": ["a1", "a2"]}
        waiting = Waiting(db, timeout=30, **selector)  # the watcher is up: the wait is in progress
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "done"
        outcome = waiting.result()
        child.wait(30)
    print(f"\n[{db.backend}, by {by}] {outcome}")
    assert outcome["timed_out"] is False
    assert (outcome["completed"], outcome["failed"], outcome["pending"]) == (["a1"], ["a2"], [])


def test_a_commit_of_another_process_wakes_a_waiter_whose_check_found_it_pending(store_target):
    """The wake-up itself, step by step (the async twin's steps): subscribed, checked
    and found pending, then woken by the child's commit — not by a timer, and not by a
    first check that happened to come after the commit."""
    target = str(store_target)
    with consensus_db.connect(target) as db:
        spawn(db, "a1")
        child = subprocess.Popen(
            [sys.executable, "-c", COMPLETER, target, "a1"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "ready"
        waiter = db.agents_waiter("S", STAGE, agent_ids=["a1"])
        waiter.start()
        assert waiter.check(False) is None  # pending, and the generation it read is kept
        woken = threading.Event()
        errors: list[BaseException | None] = []
        waiter.on_change(lambda error: (errors.append(error), woken.set()))
        assert not woken.is_set()
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "done"
        assert woken.wait(30), "the other process's commit woke nobody"
        outcome = waiter.check(False)
        waiter.close()
        child.wait(30)
    assert errors == [None]
    assert outcome is not None and outcome["completed"] == ["a1"] and outcome["timed_out"] is False


def test_a_read_only_store_waits_too(store_target):
    """A monitor (``consensus-db wait`` opens read-only) is woken by another store's
    commit: its watcher reads, and on PostgreSQL LISTENs, in a read-only session."""
    with consensus_db.connect(store_target) as writer:
        spawn(writer, "a1")
        with consensus_db.connect(store_target, read_only=True) as monitor:
            waiting = Waiting(monitor, agent_ids=["a1"], timeout=30)
            writer.record_agent_completion("a1", "{}")
            outcome = waiting.result()
            with pytest.raises(consensus_db.ReadOnlyError, match="expect_agents"):
                monitor.expect_agents("S", STAGE, "run-1", ["a1"])
    assert outcome["completed"] == ["a1"] and outcome["timed_out"] is False


@pytest.mark.parametrize("journal_mode", ["wal", "delete"])
def test_another_stores_commit_wakes_a_waiter_whatever_the_journal(db_path, journal_mode):
    """Two stores on one file (two write lanes): only the watcher can wake the waiter —
    through its inotify watch of the -wal, or where there is none (a rollback journal)
    its poll of data_version."""
    pragmas = {"journal_mode": journal_mode}
    with (
        consensus_db.connect(db_path, pragmas=pragmas) as waiter,
        consensus_db.connect(db_path, pragmas=pragmas) as other,
    ):
        assert os.path.exists(f"{db_path}-wal") == (journal_mode == "wal")
        spawn(other, "a1")
        waiting = Waiting(waiter, agent_ids=["a1"], timeout=30)
        other.record_agent_completion("a1", "{}")
        outcome = waiting.result()
    assert outcome["completed"] == ["a1"] and outcome["timed_out"] is False


def test_a_wait_after_two_of_three_spawns_does_not_return_early(store_target):
    """The predecessor kept the expected set in memory beside the database: a waiter
    that looked at the spawns found 2 of 2 done and went on without the third. The set
    is in the store here, declared before the spawns."""
    with consensus_db.connect(store_target) as db:
        assert db.expect_agents("S", STAGE, "run-1", ["a1", "a2", "a3"]) == 3
        spawn(db, "a1", "a2")
        db.record_agent_completion("a1", "{}")
        db.record_agent_completion("a2", "{}")
        spawned = [e.agent_id for e in db.query_agent_executions("S", STAGE)]
        assert db.wait_for_agents("S", STAGE, agent_ids=spawned, timeout=0)["timed_out"] is False  # the bug
        early = db.wait_for_agents("S", STAGE, run_id="run-1", timeout=0)
        assert early["timed_out"] is True and early["pending"] == ["a3"]
        assert early["completed"] == ["a1", "a2"] and early["expected"] == ["a1", "a2", "a3"]
        waiting = Waiting(db, run_id="run-1", timeout=30)
        spawn(db, "a3")
        db.record_agent_completion("a3", "{}")
        outcome = waiting.result()
    assert outcome["timed_out"] is False and outcome["completed"] == ["a1", "a2", "a3"]


def test_the_expected_set_is_idempotent_extends_and_refuses_an_agent_of_another_set(store_target):
    with consensus_db.connect(store_target) as db:
        assert db.expect_agents("S", STAGE, "run-1", ["a1", "a2"]) == 2
        assert db.expect_agents("S", STAGE, "run-1", ["a2", "a1", "a1"]) == 0  # the same set: nothing
        assert db.expect_agents("S", STAGE, "run-1", ["a3"]) == 1  # extends it
        with pytest.raises(consensus_db.InvalidInputError, match='agent_ids.*"a3" is already expected by run "run-1"'):
            db.expect_agents("S", STAGE, "run-2", ["a4", "a3"])
        with pytest.raises(consensus_db.InvalidInputError, match="run_id.*no agents are expected"):
            db.wait_for_agents("S", STAGE, run_id="run-2", timeout=0)  # a4 was not declared either
        assert db.expect_agents("S", STAGE, "run-1", ["b1"], branch_id="retry-1") == 1  # a set of its own
        assert db.wait_for_agents("S", STAGE, run_id="run-1", branch_id="retry-1", timeout=0)["expected"] == ["b1"]
        assert db.wait_for_agents("S", STAGE, run_id="run-1", timeout=0)["expected"] == ["a1", "a2", "a3"]


def test_retention_deletes_the_expected_sets_declared_before_its_cutoff(store_target):
    with consensus_db.connect(store_target) as db:
        db.expect_agents("S", STAGE, "old-run", ["old-1", "old-2"])
        db.expect_agents("S", STAGE, "new-run", ["new-1"])
        db.execute("UPDATE consensus_expected_agents SET declared_at_ms = 0 WHERE run_id = 'old-run'")
        assert db.cleanup_old_executions(30) == 0  # the count is the executions'
        with pytest.raises(consensus_db.InvalidInputError, match="no agents are expected"):
            db.wait_for_agents("S", STAGE, run_id="old-run", timeout=0)
        assert db.wait_for_agents("S", STAGE, run_id="new-run", timeout=0)["expected"] == ["new-1"]
        assert db.expect_agents("S", STAGE, "another-run", ["old-1"]) == 1  # its id is free again


def test_a_postgresql_database_before_revision_3_refuses_to_wait_rather_than_hang(pg_cluster, pg_url):
    consensus_db.connect(pg_url).close()
    schema = pg_url.split("search_path%3D")[1]
    pg_cluster.psql(  # the database as revision 2 (the previous release) left it
        f"DROP TABLE {schema}.consensus_expected_agents;"
        f" DROP FUNCTION {schema}.consensus_db_notify_agents() CASCADE;"
        f" UPDATE {schema}.consensus_db_meta SET value = 2 WHERE key = 'pg_revision'"
    )
    with consensus_db.connect(pg_url, migrate=False) as db:
        spawn(db, "a1")
        with pytest.raises(consensus_db.MigrationError, match="revision 3"):
            db.wait_for_agents("S", STAGE, agent_ids=["a1"], timeout=0)
        with pytest.raises(consensus_db.MigrationError, match="consensus_expected_agents"):
            db.expect_agents("S", STAGE, "run-1", ["a1"])
    with consensus_db.connect(pg_url) as db:  # migrating brings it back
        assert db.expect_agents("S", STAGE, "run-1", ["a1"]) == 1
        assert db.wait_for_agents("S", STAGE, run_id="run-1", timeout=0)["pending"] == ["a1"]


def test_quorum_returns_once_enough_agents_finished_and_a_failure_counts(store_target):
    with consensus_db.connect(store_target) as db:
        db.expect_agents("S", STAGE, "run-1", ["a1", "a2", "a3"])
        spawn(db, "a1", "a2", "a3")
        db.record_agent_completion("a1", "{}")
        assert db.wait_for_agents("S", STAGE, run_id="run-1", quorum=2, timeout=0)["timed_out"] is True
        waiting = Waiting(db, run_id="run-1", quorum=2, timeout=30)
        db.record_extraction_failure("a3", "not json", "Expecting value")
        outcome = waiting.result()
    assert outcome["timed_out"] is False and outcome["quorum"] == 2
    assert (outcome["completed"], outcome["failed"], outcome["pending"]) == (["a1"], ["a3"], ["a2"])


def test_a_timeout_returns_the_pending_agents_as_a_result(store_target):
    with consensus_db.connect(store_target) as db:
        spawn(db, "a1", "a2")
        db.record_agent_completion("a1", "{}")
        outcome = db.wait_for_agents("S", STAGE, agent_ids=["a1", "a2", "never"], timeout=0.05)
    assert outcome["timed_out"] is True
    assert (outcome["completed"], outcome["pending"]) == (["a1"], ["a2", "never"])


def test_an_execution_of_another_stage_or_branch_is_pending(store_target):
    with consensus_db.connect(store_target) as db:
        db.record_agent_spawn("a1", "S", "other", "regular_stage", "gemini")
        db.record_agent_spawn("a2", "S", STAGE, "regular_stage", "gemini", branch_id="b2")
        db.record_agent_completion("a1", "{}")
        db.record_agent_completion("a2", "{}")
        assert db.wait_for_agents("S", STAGE, agent_ids=["a1"], timeout=0)["pending"] == ["a1"]
        assert db.wait_for_agents("S", STAGE, agent_ids=["a2"], branch_id="b1", timeout=0)["pending"] == ["a2"]
        assert db.wait_for_agents("S", STAGE, agent_ids=["a2"], branch_id="b2", timeout=0)["completed"] == ["a2"]


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({}, "agent_ids"),
        ({"agent_ids": ["a"], "run_id": "r"}, "agent_ids"),
        ({"branch_id": "b1"}, "branch_id"),
        ({"agent_ids": []}, "agent_ids"),
        ({"agent_ids": "a1"}, "agent_ids"),
        ({"agent_ids": ["a1", ""]}, "agent_ids"),
        ({"agent_ids": ["a1"], "quorum": 0}, "quorum"),
        ({"agent_ids": ["a1"], "quorum": 2}, "quorum"),
        ({"agent_ids": ["a1"], "quorum": True}, "quorum"),
        ({"agent_ids": ["a1"], "timeout": -1}, "timeout"),
        ({"agent_ids": ["a1"], "timeout": float("nan")}, "timeout"),
        ({"agent_ids": ["a1"], "timeout": "1"}, "timeout"),
        ({"run_id": ""}, "run_id"),
    ],
)
def test_bad_wait_arguments_are_invalid_input_naming_them(store_target, kwargs, named):
    with consensus_db.connect(store_target) as db:
        with pytest.raises(consensus_db.InvalidInputError, match=f"^invalid {named}"):
            db.wait_for_agents("S", STAGE, **kwargs)
        with pytest.raises(consensus_db.InvalidInputError, match="^invalid agent_ids"):
            db.expect_agents("S", STAGE, "run-1", [])
        with pytest.raises(consensus_db.InvalidInputError, match="^invalid run_id"):
            db.expect_agents("S", STAGE, " ", ["a1"])
        db.expect_agents("S", STAGE, "run-1", ["a1"])
        with pytest.raises(consensus_db.InvalidInputError, match="^invalid quorum"):
            db.wait_for_agents("S", STAGE, run_id="run-1", quorum=2, timeout=0)  # more than declared
        assert db.wait_for_agents("S", STAGE, run_id="run-1", timeout=0)["expected"] == ["a1"]


def os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def test_async_waiters_hold_no_thread_while_they_wait_and_are_all_woken(store_target):
    async def main() -> tuple[int, int, list[Any]]:
        async with consensus_db.aio.connect(store_target) as db:
            spawn(db.sync, *(f"a{i}" for i in range(4)))
            # Every executor thread started (the store's own, waiters or not).
            await asyncio.gather(*(db.get_agent_name("a0") for _ in range(50)))
            before = os_threads()
            waits = [
                asyncio.create_task(db.wait_for_agents("S", STAGE, agent_ids=[f"a{i % 4}"], timeout=60))
                for i in range(200)
            ]
            assert await until_async(lambda: WATCHER in thread_names())
            during = os_threads()
            for i in range(4):
                await db.record_agent_completion(f"a{i}", "{}")
            results = await asyncio.gather(*waits)
            return before, during, results

    before, during, results = asyncio.run(main())
    print(f"\nOS threads before the waiters: {before}, with 200 waiting: {during}")
    assert during - before <= 2
    assert all(r["timed_out"] is False and len(r["completed"]) == 1 for r in results)


def test_the_watcher_lives_only_while_someone_waits_and_a_cancelled_waiter_leaves(store_target):
    async def main() -> None:
        async with consensus_db.aio.connect(store_target) as db:
            spawn(db.sync, "a1")
            waiter = asyncio.create_task(db.wait_for_agents("S", STAGE, agent_ids=["a1"]))
            assert await until_async(lambda: WATCHER in thread_names())
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            assert await until_async(lambda: WATCHER not in thread_names()), "the watcher outlived its last waiter"
            done = asyncio.create_task(db.wait_for_agents("S", STAGE, agent_ids=["a1"], timeout=30))
            assert await until_async(lambda: WATCHER in thread_names())  # started again
            await db.record_agent_completion("a1", "{}")
            assert (await done)["completed"] == ["a1"]
            assert await until_async(lambda: WATCHER not in thread_names())

    asyncio.run(main())


def inotify_fds() -> int:
    return sum(1 for fd in os.listdir("/proc/self/fd") if "inotify" in _link(f"/proc/self/fd/{fd}"))


def _link(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


def test_close_wakes_a_waiter_with_closed_error_and_closes_every_file(db_path):
    db = consensus_db.connect(db_path)
    spawn(db, "a1")
    watches = inotify_fds()
    waiting = Waiting(db, agent_ids=["a1"])  # no timeout
    assert until(lambda: inotify_fds() == watches + 1)  # the watcher's watch of the -wal
    db.close()
    assert open_files(db_path) == []  # the watcher's connection included
    assert inotify_fds() == watches and WATCHER not in thread_names()
    with pytest.raises(consensus_db.ClosedError):
        waiting.result()


def test_close_wakes_an_async_waiter_with_closed_error(store_target):
    async def main() -> None:
        db = await consensus_db.aio.connect(store_target)
        spawn(db.sync, "a1")
        waiter = asyncio.create_task(db.wait_for_agents("S", STAGE, agent_ids=["a1"]))
        assert await until_async(lambda: WATCHER in thread_names())
        await db.close()
        with pytest.raises(consensus_db.ClosedError):
            await waiter

    asyncio.run(main())


def test_the_previous_release_keeps_opening_a_file_with_the_expected_set(tmp_path):
    """The table is the store's own and only added: the minimum reader layout stays 2,
    and a downgrade to version 0 (the legacy tables only) drops it with the new tables."""
    path = tmp_path / "f.db"
    with consensus_db.connect(path) as db:
        db.expect_agents("S", STAGE, "run-1", ["a1"])
        assert db.query("SELECT key, value FROM consensus_db_meta ORDER BY key") == [("layout", 2), ("revision", 5)]
        db.migrate(0, force=True)
        assert db.query("SELECT name FROM sqlite_master WHERE name = 'consensus_expected_agents'") == []


WAIT_CLI = [sys.executable, "-m", "consensus_db"]


def test_the_wait_command_exits_nonzero_on_timeout_and_zero_when_done(tmp_path):
    path = tmp_path / "c.db"
    with consensus_db.connect(path) as db:
        db.expect_agents("S", STAGE, "run-1", ["a1", "a2"])
        spawn(db, "a1", "a2")
        db.record_agent_completion("a1", "{}")
    args = [*WAIT_CLI, "wait", str(path), "S", STAGE]
    timed_out = subprocess.run([*args, "--run-id", "run-1", "--timeout", "0", "--json"], capture_output=True, text=True)
    assert timed_out.returncode == 4, timed_out.stderr
    assert json.loads(timed_out.stdout)["pending"] == ["a2"]
    quorum = subprocess.run([*args, "--agent", "a1", "--agent", "a2", "--quorum", "1"], capture_output=True, text=True)
    assert quorum.returncode == 0, quorum.stderr
    assert "1 of 2 finished" in quorum.stdout and "a2" in quorum.stdout
    bad = subprocess.run([*args, "--run-id", "run-1", "--quorum", "3"], capture_output=True, text=True)
    assert bad.returncode == 1 and "invalid quorum" in bad.stderr
