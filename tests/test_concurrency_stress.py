"""Processes and threads contending for one file with a short busy_timeout: the retry
layer absorbs every BusyError, and every acknowledged write is there."""

from __future__ import annotations

import subprocess
import sys
import threading

import consensus_db
from consensus_db.retry import RetryPolicy

OPS = 150
CHILD = """
import sys, consensus_db
from consensus_db.retry import RetryPolicy
policy = RetryPolicy(max_attempts=50, initial_delay=0.001, max_delay=0.05)
with consensus_db.connect(sys.argv[1], pragmas={"busy_timeout": 5}, retry=policy) as db:
    for i in range(int(sys.argv[3])):
        db.store_artifact("S", "plan", sys.argv[2], {"i": i})
        db.query_artifacts("S", "plan")
    print(policy.stats.retries, flush=True)
"""


def test_processes_and_threads_contend_and_nothing_is_lost(db_path):
    consensus_db.connect(db_path).close()
    policy = RetryPolicy(max_attempts=50, initial_delay=0.001, max_delay=0.05)
    escaped = []
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(db_path), f"proc-{p}", str(OPS)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for p in range(3)]
    with consensus_db.connect(db_path, pragmas={"busy_timeout": 5}, retry=policy) as db:
        def worker(t: int) -> None:
            try:
                for i in range(OPS):
                    db.record_agent_spawn(f"t{t}-{i}", "S", "plan", "quality_gate", "gemini")
                    db.get_agent_spawn_info(f"t{t}-{i}")
            except Exception as exc:
                escaped.append(exc)

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        results = [p.communicate(timeout=180) for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0], results
        assert escaped == []
        assert db.query("SELECT count(*) FROM agent_executions") == [(4 * OPS,)]
        assert db.query("SELECT agent_name, count(*) FROM agent_outputs GROUP BY 1 ORDER BY 1") == [
            (f"proc-{p}", OPS) for p in range(3)]
        assert db.integrity_check() == ["ok"]
    retries = policy.stats.retries + sum(int(out.strip()) for out, _ in results)
    print(f"\nstress: {4 * OPS + 3 * OPS} writes acknowledged, {retries} busy retries absorbed")
