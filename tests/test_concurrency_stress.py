"""Processes and threads contending for one store, on both backends, with a short wait
for locks (SQLite's busy_timeout, PostgreSQL's lock_timeout): the retry layer absorbs
every BusyError, and every acknowledged write is there."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

from consensus_db.retry import RetryPolicy

OPS = 150
CHILD = """
import json, sys, consensus_db
from consensus_db.retry import RetryPolicy
policy = RetryPolicy(max_attempts=50, initial_delay=0.001, max_delay=0.05)
with consensus_db.connect(sys.argv[1], **json.loads(sys.argv[4]), retry=policy) as db:
    for i in range(int(sys.argv[3])):
        db.store_artifact("S", "plan", sys.argv[2], {"i": i})
        db.query_artifacts("S", "plan")
    print(policy.stats.retries, flush=True)
"""


def test_processes_and_threads_contend_and_nothing_is_lost(backend):
    backend.connect().close()
    policy = RetryPolicy(max_attempts=50, initial_delay=0.001, max_delay=0.05)
    escaped = []
    target, busy = backend.busy(5)
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(target), f"proc-{p}", str(OPS), json.dumps(busy)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for p in range(3)]
    with backend.connect(busy_ms=5, retry=policy) as db:
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
        assert backend.integrity_check(db) == ["ok"]
    retries = policy.stats.retries + sum(int(out.strip()) for out, _ in results)
    print(f"\nstress ({backend.name}): {4 * OPS + 3 * OPS} writes acknowledged, {retries} busy retries absorbed")
