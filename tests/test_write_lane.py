"""The write lane: writes of many threads commit in groups, each with its own outcome.

Groups are formed deterministically by holding the lane with an open
`transaction()` block while writers queue behind it (`lane_stats()["queued"]`)."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time

import pytest

import consensus_db


def wait_queued(db, n: int) -> None:
    deadline = time.monotonic() + 30
    while db.lane_stats()["queued"] < n:
        assert time.monotonic() < deadline, f"only {db.lane_stats()['queued']} of {n} writers queued"
        time.sleep(0.001)


def start(target, *args) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def run():
        try:
            out["value"] = target(*args)
        except Exception as exc:
            out["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def test_many_threads_every_acknowledged_write_is_present_and_groups_form(db):
    before = db.lane_stats()
    acked: list[str] = []
    lock = threading.Lock()

    def writer(t):
        for i in range(100):
            db.record_agent_spawn(f"t{t}-{i}", "S", "plan", "quality_gate", "gemini")
            with lock:
                acked.append(f"t{t}-{i}")

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(acked) == 800
    assert all(db.get_agent_name(a) == "gemini" for a in acked)
    stats = db.lane_stats()
    assert stats["members"] - before["members"] == 800
    assert stats["groups"] < stats["members"], stats
    assert max(stats["sizes"]) > 1, stats


def test_one_bad_write_in_a_group_of_50_fails_alone(db_path):
    db = consensus_db.connect(db_path, retry=None)
    db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)")
    db.execute("INSERT INTO t VALUES (1007)")
    before = db.lane_stats()
    with db.transaction():
        started = [start(db.execute, "INSERT INTO t VALUES (?)", [1000 + i]) for i in range(50)]
        wait_queued(db, 50)
    for thread, _ in started:
        thread.join(30)
    outcomes = [out for _, out in started]
    assert isinstance(outcomes[7].get("error"), consensus_db.IntegrityError), outcomes[7]
    assert all(out == {"value": 1} for i, out in enumerate(outcomes) if i != 7)
    assert db.query("SELECT count(*) FROM t") == [(50,)]
    stats = db.lane_stats()
    assert stats["groups"] - before["groups"] == 1 and stats["sizes"].get(50) == 1, stats
    db.close()


def test_a_write_that_ends_the_transaction_acknowledges_no_rolled_back_write(db_path):
    """`INSERT OR ROLLBACK` rolls back the whole group's transaction: the writes that had
    run are run again in a new one (never reported committed while rolled back)."""
    db = consensus_db.connect(db_path, retry=None)
    db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)")
    db.execute("INSERT INTO t VALUES (5)")
    statements = ["INSERT INTO t VALUES (1)", "INSERT INTO t VALUES (2)", "INSERT OR ROLLBACK INTO t VALUES (5)",
                  "INSERT INTO t VALUES (3)"]
    started = []
    with db.transaction():
        for n, sql in enumerate(statements, 1):  # queued in this order
            started.append(start(db.execute, sql))
            wait_queued(db, n)
    for thread, _ in started:
        thread.join(30)
    outcomes = [out for _, out in started]
    assert isinstance(outcomes[2].get("error"), consensus_db.IntegrityError), outcomes
    assert [outcomes[i] for i in (0, 1, 3)] == [{"value": 1}] * 3
    assert db.query("SELECT k FROM t ORDER BY k") == [(1,), (2,), (3,), (5,)]
    db.close()


def test_a_store_write_inside_the_same_threads_transaction_fails_at_once(db):
    with db.transaction() as tx:
        began = time.monotonic()
        with pytest.raises(consensus_db.TransactionError, match="write lane"):
            db.record_agent_spawn("a1", "S", "plan", "quality_gate", "gemini")
        with pytest.raises(consensus_db.TransactionError, match="write lane"):
            db.execute("DELETE FROM agent_executions")
        assert time.monotonic() - began < 2
        tx.execute("INSERT INTO agent_executions (agent_id, spec_id, stage, phase_type, agent_name, spawned_at) "
                    "VALUES ('in-block', 'S', 'plan', 'quality_gate', 'g', '2026-01-01 00:00:00')")
    assert db.get_agent_name("in-block") == "g"
    db.record_agent_spawn("a1", "S", "plan", "quality_gate", "gemini")
    assert db.get_agent_name("a1") == "gemini"


def test_close_fails_queued_writers(db_path):
    db = consensus_db.connect(db_path, retry=None)
    tx = db.transaction()
    tx.__enter__()
    started = [start(db.record_agent_spawn, f"a{i}", "S", "plan", "quality_gate", "g") for i in range(4)]
    wait_queued(db, 4)
    db.close()
    for thread, out in started:
        thread.join(30)
        assert not thread.is_alive()
        assert isinstance(out.get("error"), consensus_db.ClosedError), out
    tx.__exit__(None, None, None)


WRITERS = """
import sys, threading, consensus_db
db = consensus_db.connect(sys.argv[1])
round_ = sys.argv[2]
lock = threading.Lock()

def writer(t):
    i = 0
    while True:
        if i % 2:
            db.record_agent_spawn(f"{round_}-{t}-{i}", "S", "plan", "quality_gate", "gemini")
            line = f"spawn {round_}-{t}-{i}"
        else:
            aid = db.store_artifact("S", "plan", "gemini", {"r": round_, "t": t, "i": i})
            line = f"artifact {aid} {round_}-{t}-{i}"
        with lock:
            print(line, flush=True)
        i += 1

for t in range(8):
    threading.Thread(target=writer, args=(t,), daemon=True).start()
threading.Event().wait()
"""


def test_sigkill_with_8_writer_threads_loses_nothing_acknowledged(db_path):
    consensus_db.connect(db_path).close()
    rng = random.Random(20261128)
    acknowledged = []
    for r in range(4):
        child = subprocess.Popen([sys.executable, "-c", WRITERS, str(db_path), f"r{r}"],
                                 stdout=subprocess.PIPE, text=True)
        try:
            for _ in range(rng.randint(20, 600)):
                line = child.stdout.readline()
                if not line:
                    break
                acknowledged.append(line.split())
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=60)
        assert child.returncode == -signal.SIGKILL
        acknowledged += [line.split() for line in child.stdout.read().splitlines() if line.strip()]
    assert len(acknowledged) > 80
    with consensus_db.connect(db_path) as db:
        assert db.integrity_check() == ["ok"]
        ids = {a.id: a.content() for a in db.query_artifacts("S", "plan")}
        for entry in acknowledged:
            if entry[0] == "spawn":
                assert db.get_agent_name(entry[1]) == "gemini", entry
            else:
                _, aid, tag = entry
                r, t, i = tag.split("-")
                assert ids[int(aid)] == {"r": r, "t": int(t), "i": int(i)}, entry


def test_writers_of_one_store_never_meet_the_busy_handler(db_path):
    """busy_timeout=0 and no retry: any lock contention between this store's own writers
    would raise BusyError at once. Every kind of write takes its turn in the lane."""
    db = consensus_db.connect(db_path, retry=None, pragmas={"busy_timeout": 0})
    db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT)")
    errors: list = []

    def writer(t):
        try:
            for i in range(40):
                kind = (t + i) % 6
                if kind == 0:
                    db.record_agent_spawn(f"a{t}-{i}", "S", "plan", "quality_gate", "g")
                elif kind == 1:
                    db.execute("INSERT INTO t (v) VALUES (?)", [f"{t}-{i}"])
                elif kind == 2:
                    with db.transaction() as tx:
                        tx.execute("INSERT INTO t (v) VALUES (?)", [f"block {t}-{i}"])
                        tx.query("SELECT count(*) FROM t")
                elif kind == 3:
                    db.store_artifacts([{"spec_id": "S", "stage": "plan", "agent_name": f"g{j}",
                                         "content_json": {"t": t, "i": i}} for j in range(5)])
                elif kind == 4:
                    db.cleanup_old_executions(30)
                else:
                    db.vacuum()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert db.query("SELECT count(*) FROM t") == [(sum(1 for t in range(8) for i in range(40) if (t + i) % 6 in (1, 2)),)]
    db.close()
