"""Many threads and processes on one store, on both backends: every acknowledged write is there."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

import consensus_db
from conftest import ph

WRITES = 300


@pytest.fixture
def db(backend):
    store = backend.connect()
    yield store
    store.close()


def test_eight_threads_share_one_store(db):
    errors = []

    def writer(t: int) -> None:
        try:
            for i in range(WRITES):
                if i % 2:
                    db.record_agent_spawn(f"t{t}-{i}", "S", "plan", "quality_gate", "gemini")
                else:
                    db.store_artifact("S", f"stage-{t}", "gemini", {"t": t, "i": i})
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert db.query("SELECT count(*) FROM agent_executions") == [(8 * WRITES // 2,)]
    for t in range(8):
        got = db.query_artifacts("S", f"stage-{t}")
        assert sorted(a.content()["i"] for a in got) == list(range(0, WRITES, 2))
    assert len({a.id for t in range(8) for a in db.query_artifacts("S", f"stage-{t}")}) == 8 * WRITES // 2


CHILD = """
import sys, consensus_db
path, proc, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with consensus_db.connect(path) as db:
    for i in range(n):
        db.record_agent_spawn(f"p{proc}-{i}", "S", "plan", "quality_gate", "claude")
        db.store_artifact("S", "plan", f"p{proc}", {"i": i})
print(n)
"""


def test_four_processes_write_one_store(backend):
    backend.connect().close()  # create and migrate once
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(backend.target), str(p), str(WRITES)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for p in range(4)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outputs
    with backend.connect() as db:
        assert db.query("SELECT count(*) FROM agent_executions") == [(4 * WRITES,)]
        by_agent = db.query("SELECT agent_name, count(*) FROM agent_outputs GROUP BY agent_name ORDER BY 1")
        assert by_agent == [(f"p{p}", WRITES) for p in range(4)]
        assert backend.integrity_check(db) == ["ok"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX only")
def test_a_store_used_after_fork_raises_in_the_child(db, backend):
    db.record_agent_spawn("a", "S", "plan", "quality_gate", "gemini")
    pid = os.fork()
    if pid == 0:  # the child: must refuse, and must not close the parent's connections
        code = 3
        try:
            db.get_agent_name("a")
        except consensus_db.ForkedProcessError:
            code = 0
        except BaseException:
            code = 2
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert db.get_agent_name("a") == "gemini"  # the parent is unaffected
    db.record_agent_spawn("b", "S", "plan", "quality_gate", "claude")
    assert backend.integrity_check(db) == ["ok"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX only")
def test_a_forked_child_closing_the_store_leaves_the_parents_connections_alone(backend):
    """The child's close (and its exit) must not end the connections it shares with its
    parent; a store the child opens itself works."""
    with backend.connect(retry=None) as db:  # no retry: a connection the child ended raises
        insert = ph(db, "INSERT INTO agent_executions (agent_id, spec_id, stage, phase_type, agent_name, spawned_at) "
                        "VALUES (?, 'S', 'plan', 'quality_gate', 'g', '2026-01-01 00:00:00')")
        db.record_agent_spawn("before", "S", "plan", "quality_gate", "gemini")  # a connection left idle
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                db.close()
                with backend.connect() as own:
                    own.record_agent_spawn("child", "S", "plan", "quality_gate", "code")
            except BaseException:
                code = 2
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        with db.transaction() as tx:
            tx.execute(insert, ["in-a-transaction"])
        db.record_agent_spawn("after", "S", "plan", "quality_gate", "claude")
        names = [db.get_agent_name(a) for a in ("before", "child", "in-a-transaction", "after")]
        assert names == ["gemini", "code", "g", "claude"]
