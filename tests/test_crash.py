"""Crashes: children killed with SIGKILL mid-write and mid-VACUUM lose nothing acknowledged,
on both backends (on PostgreSQL the server outlives its killed client and rolls back
whatever the client had not committed)."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time



WRITER = """
import sys, consensus_db
db = consensus_db.connect(sys.argv[1])
round_ = sys.argv[2]
i = 0
while True:
    if i % 2:
        db.record_agent_spawn(f"{round_}-{i}", "S", "plan", "quality_gate", "gemini")
        print(f"spawn {round_}-{i}", flush=True)
    else:
        aid = db.store_artifact("S", "plan", "gemini", {"round": round_, "i": i}, response_text="x" * 2000)
        print(f"artifact {aid} {round_} {i}", flush=True)
    i += 1
"""


def kill_after(path, code, args, n_lines, stats):
    child = subprocess.Popen([sys.executable, "-c", code, str(path), *args], stdout=subprocess.PIPE, text=True)
    acked = []
    try:
        for _ in range(n_lines):
            line = child.stdout.readline()
            if not line:
                break
            acked.append(line.split())
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
    # Lines already written before the kill were acknowledged too.
    acked += [line.split() for line in child.stdout.read().splitlines() if line.strip()]
    stats["rounds_killed"] += child.returncode == -signal.SIGKILL
    return acked


def test_sigkill_during_writes_loses_nothing_acknowledged(backend):
    rng = random.Random(20261124)
    stats = {"rounds_killed": 0, "acknowledged": 0}
    acknowledged = []
    for r in range(6):
        acknowledged += kill_after(backend.target, WRITER, [f"r{r}"], rng.randint(5, 400), stats)
    stats["acknowledged"] = len(acknowledged)
    print(f"\ncrash test: {stats}")
    assert stats["rounds_killed"] == 6 and stats["acknowledged"] > 100
    with backend.connect() as db:
        assert backend.integrity_check(db) == ["ok"]
        artifacts = {a.id: a for a in db.query_artifacts("S", "plan")}
        for entry in acknowledged:
            if entry[0] == "spawn":
                assert db.get_agent_name(entry[1]) == "gemini", entry
            else:
                _, aid, round_, i = entry
                assert json.loads(artifacts[int(aid)].content_json) == {"round": round_, "i": int(i)}


VACUUMER = """
import sys, consensus_db
db = consensus_db.connect(sys.argv[1])
n = 0
while True:
    db.store_artifacts([{"spec_id": "TMP", "stage": "s", "agent_name": "g", "content_json": {"b": "y" * 50000}}
                        for _ in range(40)])
    db.delete_spec_artifacts("TMP")
    print("vacuum starting", flush=True)
    db.vacuum(full=True)
    n += 1
    print(f"vacuumed {n}", flush=True)
"""


def test_sigkill_during_vacuum_keeps_the_data(backend):
    with backend.connect() as db:
        keep = db.store_artifacts([{"spec_id": "KEEP", "stage": "plan", "agent_name": f"a{i}", "content_json": {"i": i}}
                                   for i in range(200)])
    stats = {"rounds_killed": 0}
    rng = random.Random(7)
    for _ in range(3):
        child = subprocess.Popen([sys.executable, "-c", VACUUMER, str(backend.target)], stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "vacuum starting"
        time.sleep(rng.uniform(0.0, 0.05))  # land inside the VACUUM
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
        stats["rounds_killed"] += child.returncode == -signal.SIGKILL
    print(f"\nvacuum crash test: {stats}")
    assert stats["rounds_killed"] == 3
    with backend.connect() as db:
        assert backend.integrity_check(db) == ["ok"]
        got = db.query_artifacts("KEEP", "plan", order="oldest")
        assert [a.id for a in got] == keep
        assert [a.content() for a in got] == [{"i": i} for i in range(200)]
