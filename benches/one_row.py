"""One-row writes on one thread, as the parity issue measures them: a fresh file each
time, 3,000 distinct writes, this store against apsw running the same statement with
the store's pragmas on the same schema (the thinnest peer), and against the benches'
stdlib and apsw stores. Best of the interleaved rounds; ratios within the run.

    python -m benches.one_row [--rounds 5] [--n 3000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import consensus_db

from .baseline_apsw import ApswStore
from .baseline_sqlite3 import PurePythonStore

SPAWN_SQL = (
    "INSERT OR REPLACE INTO agent_executions (agent_id, spec_id, stage, phase_type, agent_name, run_id, spawned_at)"
    " VALUES (?, ?, ?, ?, ?, ?, strftime('%Y-%m-%d %H:%M:%S', 'now'))"
)
PRAGMAS = (
    "busy_timeout=5000",
    "journal_mode=WAL",
    "synchronous=NORMAL",
    "foreign_keys=ON",
    "cache_size=-32000",
    "temp_store=MEMORY",
    "mmap_size=0",
)
RESPONSE = "x" * 2000


class RawApsw:
    """apsw running the store's own spawn statement, autocommit, nothing around it."""

    def __init__(self, path: str) -> None:
        import apsw

        self.conn = apsw.Connection(path)
        for p in PRAGMAS:
            self.conn.execute(f"PRAGMA {p}")

    def record_agent_spawn(self, *args: Any) -> None:
        self.conn.execute(SPAWN_SQL, args)

    def close(self) -> None:
        self.conn.close()


STORES: dict[str, Callable[[str], Any]] = {
    "consensus-db": consensus_db.connect,
    "apsw (same SQL)": RawApsw,
    "apsw store": ApswStore,
    "stdlib store": PurePythonStore,
}


def rate(make: Callable[[str], Any], op: str, n: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "one_row.db"
        consensus_db.connect(path).close()  # the store's schema and persistent pragmas, for every peer
        db = make(str(path))
        if op == "record_agent_completion":
            for i in range(n):
                db.record_agent_spawn(f"a{i}", "S", "plan", "quality_gate", "gemini", "r")
        start = time.perf_counter()
        for i in range(n):
            if op == "record_agent_spawn":
                db.record_agent_spawn(f"a{i}", "S", "plan", "quality_gate", "gemini", "r")
            elif op == "record_agent_completion":
                db.record_agent_completion(f"a{i}", RESPONSE)
            else:
                db.store_artifact("S", "plan", "gemini", '{"v": %d}' % i, response_text=RESPONSE, run_id="r")
        per_s = n / (time.perf_counter() - start)
        db.close()
        return per_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n", type=int, default=3000)
    args = parser.parse_args()
    for op in ("record_agent_spawn", "record_agent_completion", "store_artifact"):
        peers = STORES if op == "record_agent_spawn" else {k: v for k, v in STORES.items() if k != "apsw (same SQL)"}
        best = dict.fromkeys(peers, 0.0)
        for _ in range(args.rounds):
            for name, make in peers.items():
                best[name] = max(best[name], rate(make, op, args.n))
        ours = best["consensus-db"]
        ratios = "  ".join(f"{ours / v:.2f}x {k}" for k, v in best.items() if k != "consensus-db")
        print(f"{op:24} {ours:8,.0f}/s   {ratios}", flush=True)


if __name__ == "__main__":
    main()
