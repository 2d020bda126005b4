"""Failover on loopback: a primary and a synchronous standby (initdb, pg_basebackup -R,
synchronous_standby_names); the primary is killed with SIGKILL mid-load, the standby is
promoted with `pg_ctl promote`, and the store — connected through a multi-host URL with
target_session_attrs=read-write — keeps working after reconnecting, with no
acknowledged write lost and none written twice."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

import consensus_db
from consensus_db.retry import RetryPolicy
from pg_cluster import Cluster, why_unavailable, workdir


def _children(pid: int) -> list:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def kill_server(cluster: Cluster) -> None:
    """SIGKILL to the postmaster and every process it started: the host is gone."""
    pid = cluster.pid()
    victims = [pid, *_children(pid)]
    for p in victims:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() and "Z" not in _state(p) for p in victims):
        time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].split()[0]
    except (OSError, IndexError):
        return "Z"


@pytest.fixture
def pair():
    reason = why_unavailable()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is part of CI and cannot run here: {reason}")
        pytest.skip(f"PostgreSQL failover not tested: {reason}")
    root = workdir("cdb-failover-")
    primary = Cluster(root, "primary").init(synchronous_standby_names="'standby1'", synchronous_commit="on")
    primary.start()
    standby = Cluster(root, "standby").standby_of(primary, "standby1")
    standby.start()
    deadline = time.monotonic() + 30
    while primary.psql("SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby1'") != "sync":
        assert time.monotonic() < deadline, "the standby never became synchronous"
        time.sleep(0.1)
    # A hung run must not outlive the test: the servers stop after 180 s whatever happens.
    watchdog = threading.Timer(180, lambda: [c.stop("immediate") for c in (primary, standby)])
    watchdog.daemon = True
    watchdog.start()
    yield primary, standby
    watchdog.cancel()
    for c in (primary, standby):
        c.stop("immediate")
    shutil.rmtree(root, ignore_errors=True)


def test_failover_loses_no_acknowledged_write(pair, capsys):
    primary, standby = pair
    url = (f"postgresql://cdb@127.0.0.1:{primary.port},127.0.0.1:{standby.port}/postgres"
           "?target_session_attrs=read-write&connect_timeout=2")
    db = consensus_db.connect(url, pool_size=4, retry=RetryPolicy(max_attempts=20, initial_delay=0.05, max_delay=0.5))
    acked_artifacts: dict = {}  # agent_name -> id
    acked_spawns: list = []
    failures: list = []

    def write(i: int) -> None:
        try:
            db.record_agent_spawn(f"agent-{i}", "SPEC", "plan", "quality_gate", "g")
            acked_spawns.append(f"agent-{i}")
            acked_artifacts[f"w{i}"] = db.store_artifact("SPEC", "plan", f"w{i}", {"i": i})
        except consensus_db.Error as e:
            failures.append((i, e))

    for i in range(200):
        write(i)
    assert failures == []
    before_kill = len(acked_artifacts) + len(acked_spawns)

    stop = threading.Event()
    counter = iter(range(200, 10**6))

    def writer() -> None:
        while not stop.is_set():
            write(next(counter))

    threads = [threading.Thread(target=writer) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    in_flight_from = len(acked_artifacts)
    acked_at_kill = len(acked_artifacts) + len(acked_spawns)
    kill_server(primary)
    killed_at = time.monotonic()
    standby.run("pg_ctl", "-D", str(standby.data), "-w", "promote")
    promoted_after = time.monotonic() - killed_at
    # Writes go on against the new primary.
    deadline = time.monotonic() + 30
    while len(acked_artifacts) < in_flight_from + 100 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join()
    assert len(acked_artifacts) >= in_flight_from + 100, failures

    # Every acknowledged write is on the promoted standby, each once.
    stored = db.query_artifacts("SPEC", "plan")
    by_name = {}
    for a in stored:
        assert a.agent_name not in by_name, f"{a.agent_name} written twice"
        by_name[a.agent_name] = a.id
    lost = {n: i for n, i in acked_artifacts.items() if by_name.get(n) != i}
    assert lost == {}
    spawned = {r[0] for r in db.query("SELECT agent_id FROM agent_executions")}
    assert set(acked_spawns) <= spawned
    assert len(stored) + len(spawned) >= acked_at_kill
    # Writes that failed raised a typed error; none was a silent loss.
    assert all(isinstance(e, consensus_db.Error) for _, e in failures)
    with capsys.disabled():
        print(f"\nfailover: {before_kill} acknowledged writes before the load, {acked_at_kill} at the kill, "
              f"{len(acked_artifacts) + len(acked_spawns)} acknowledged in all; after promotion ({promoted_after:.2f} s after the kill) the store holds "
              f"{len(stored)} artifacts and {len(spawned)} executions; {len(failures)} writes failed with a typed error "
              f"({sorted({type(e).__name__ for _, e in failures})}); retries: {db.retry_count}")
    db.close()
