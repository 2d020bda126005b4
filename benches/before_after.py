"""Before/after: the same single-thread workloads on two builds of consensus-db, each
installed in its own interpreter (say, a venv of the last commit and one of this
change), run alternately so that both see the same machine; medians per workload and
the after/before ratio.

    python benches/before_after.py --before /path/to/old/.venv/bin/python \\
                                   --after .venv/bin/python --rounds 5

Each round runs this file as a child with ``--probe``: it imports whichever
``consensus_db`` that interpreter has, uses only the public API, and prints ops/s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def probe(n: int, clock=time.perf_counter) -> dict:
    import consensus_db

    out = {}
    with tempfile.TemporaryDirectory() as tmp, consensus_db.connect(Path(tmp) / "b.db") as db:
        def timed(name: str, count: int, fn) -> None:
            start = clock()
            fn()
            out[name] = count / (clock() - start)

        timed("record_agent_spawn", n, lambda: [db.record_agent_spawn(f"a{i}", f"S{i % 200}", "plan",
                                                                      "quality_gate", "gemini") for i in range(n)])
        timed("get_agent_spawn_info", 20 * n, lambda: [db.get_agent_spawn_info(f"a{i % n}") for i in range(20 * n)])
        timed("store_artifact", n, lambda: [db.store_artifact(f"S{i % 200}", "plan", "gemini", '{"v": 1}',
                                                              run_id=f"r{i % 200}") for i in range(n)])
        timed("query_artifacts", 10 * n, lambda: [db.query_artifacts(f"S{i % 200}", "plan") for i in range(10 * n)])
        batch = [{"spec_id": f"B{i % 50}", "stage": "tasks", "agent_name": "claude", "content_json": '{"b": 1}'}
                 for i in range(500)]
        timed("store_artifacts (rows)", 500 * 10, lambda: [db.store_artifacts(batch) for _ in range(10)])
        timed("store_synthesis", n // 2, lambda: [db.store_synthesis(f"S{i % 200}", "plan", "# s", run_id=f"r{i}")
                                                  for i in range(n // 2)])
        timed("query_latest_synthesis", 10 * n, lambda: [db.query_latest_synthesis(f"S{i % 200}", "plan")
                                                         for i in range(10 * n)])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="python of the build before the change")
    parser.add_argument("--after", default=sys.executable, help="python of the build after it")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("-n", type=int, default=2000, help="writes per workload (reads are 10-20x)")
    parser.add_argument("--cpu", action="store_true",
                        help="time by the process's CPU time instead of the wall clock: steadier on a busy machine")
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(probe(args.n, time.process_time if args.cpu else time.perf_counter)))
        return
    runs: dict = {"before": [], "after": []}
    for _ in range(args.rounds):
        for side in ("before", "after"):
            done = subprocess.run([getattr(args, side), __file__, "--probe", "-n", str(args.n)] + ["--cpu"] * args.cpu,
                                  capture_output=True, text=True, check=True)
            runs[side].append(json.loads(done.stdout))
    print(f"{'workload':26} {'before ops/s':>14} {'after ops/s':>14} {'after/before':>13}")
    for name in runs["before"][0]:
        b = statistics.median(r[name] for r in runs["before"])
        a = statistics.median(r[name] for r in runs["after"])
        print(f"{name:26} {b:14,.0f} {a:14,.0f} {a / b:13.2f}")


if __name__ == "__main__":
    main()
