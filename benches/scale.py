"""How per-call costs grow with the file: one store grown from 1,000 to 1,000,000 completed
executions (2 KB responses) plus as many artifacts (2 KB each; specs of 50, and one stage
holding a tenth of them, at most 100,000), measured at each size. Then, optionally, a writer
beside a retention of every execution and the vacuum after it (`--stall`).

    python -m benches.scale [--sizes 1000,10000,100000,1000000] [--stall] [--dir DIR]

Per call, medians of three loops: `get_agent_spawn_info` and `get_agent_route` of random
agents, `store_artifact`, `query_artifacts` of a spec of 50 and of the big stage (also a
page of 100 deep in it when the store pages), `count_artifacts` of the big stage, `health()`
warm and, when this process may drop the OS page cache (root), cold, and `connect()`.
"pages/lookup" is what the routing read touches in SQLite's page cache (apsw's
`SQLITE_DBSTATUS_CACHE_HIT + MISS` over 2,000 lookups on a connection without mmap), with
the plan SQLite chose. Written to `results/scale.json` and `results/scale.md`. Not part of
the test suite or `.ci/run`: the 1M file is ~4.6 GB and takes minutes to grow.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import random
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import consensus_db

from .maintenance_stall import beside

RESPONSE = "r" * 2000
CONTENT = json.dumps({"text": "c" * 1990})
BIG = ("big", "implement")  # the one stage that holds a tenth of the artifacts
SPEC_SIZE = 50
ROUTING_SQL = "SELECT phase_type, stage, branch_id FROM agent_executions{} WHERE agent_id = ?"
ROUTE_INDEX = "idx_agent_executions_route"  # read through it, as the store does, where the file has it

# Agent i is named by a bijection of i mod 2^32, so lookups hit random places of the key
# order as UUID-like ids do, and the bench can still name any agent it wrote.
AGENT_SQL = "printf('agent-%08x', (i * 2654435761) % 4294967296)"


def agent(i: int) -> str:
    return f"agent-{(i * 2654435761) % 4294967296:08x}"


def add_executions(db: consensus_db.Store, start: int, stop: int) -> None:
    """Completed, back-dated executions start..stop (so a retention deletes them all)."""
    step = 50_000
    for lo in range(start, stop, step):
        hi = min(stop, lo + step)
        db.execute(
            "WITH RECURSIVE n(i) AS (SELECT ? UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?)"
            " INSERT INTO agent_executions (agent_id, spec_id, stage, phase_type, agent_name, run_id,"
            " spawned_at, completed_at, response_text)"
            f" SELECT {AGENT_SQL}, 'spec-' || (i / 50), 'plan', 'regular_stage', 'gemini', 'run-1',"
            " '2020-01-01 00:00:00', '2020-01-01 00:01:00', ? FROM n",
            [lo, hi, RESPONSE],
        )
        db.checkpoint()


def big_share(n: int) -> int:
    return min(n // 10, 100_000)


def add_artifacts(db: consensus_db.Store, start: int, stop: int) -> None:
    """Artifacts start..stop: the big stage's share first, the rest in specs of 50."""
    big_from, big_to = big_share(start), big_share(stop)
    rows: list[dict[str, Any]] = []

    def flush() -> None:
        db.store_artifacts(rows)
        rows.clear()
        if db.stats()["wal_size"] > 256 << 20:
            db.checkpoint()

    for i in range(start, stop):
        if big_from < big_to:
            spec, stage = BIG
            big_from += 1
        else:
            spec, stage = f"spec-{i // SPEC_SIZE}", "plan"
        rows.append({"spec_id": spec, "stage": stage, "agent_name": "gemini", "content_json": CONTENT})
        if len(rows) == 1_000:
            flush()
    if rows:
        flush()
    db.checkpoint()


def per_call(fn: Callable[[int], object], calls: int) -> float:
    """Seconds per call, the median of three loops."""
    loops = []
    for _ in range(3):
        started = time.perf_counter()
        for i in range(calls):
            fn(i)
        loops.append((time.perf_counter() - started) / calls)
    return statistics.median(loops)


def drop_os_cache() -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def pages_per_lookup(path: Path, n: int) -> tuple[float, float, str]:
    """(pages touched, of them cache misses) per routing lookup, and the plan. In a child
    process: apsw is another copy of SQLite, and two copies in one process break each
    other's locks (closing one drops the other's; its -shm can be truncated under it)."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as child:
        return child.apply(_pages_per_lookup, (path, n))


def _pages_per_lookup(path: Path, n: int) -> tuple[float, float, str]:
    try:
        import apsw
    except ImportError:
        return float("nan"), float("nan"), "apsw not installed"
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    conn.execute("PRAGMA mmap_size = 0").fetchall()
    conn.execute("PRAGMA cache_size = -32000").fetchall()  # the store's own cache size
    indexed = conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (ROUTE_INDEX,)).fetchall()
    sql = ROUTING_SQL.format(f" INDEXED BY {ROUTE_INDEX}" if indexed else "")
    plan = " ".join(str(r[-1]) for r in conn.execute("EXPLAIN QUERY PLAN " + sql, ("x",)))
    rng = random.Random(1)
    for _ in range(2_000):  # warm the cache as a long-running process would have it
        conn.execute(sql, (agent(rng.randrange(n)),)).fetchall()
    before = [conn.status(k)[0] for k in (apsw.SQLITE_DBSTATUS_CACHE_HIT, apsw.SQLITE_DBSTATUS_CACHE_MISS)]
    for _ in range(2_000):
        conn.execute(sql, (agent(rng.randrange(n)),)).fetchall()
    hit, miss = (
        conn.status(k)[0] - b for k, b in zip((apsw.SQLITE_DBSTATUS_CACHE_HIT, apsw.SQLITE_DBSTATUS_CACHE_MISS), before)
    )
    conn.close()
    return (hit + miss) / 2_000, miss / 2_000, plan


def measure(db: consensus_db.Store, path: Path, n: int) -> dict[str, Any]:
    rng = random.Random(n)
    lookups = [agent(rng.randrange(n)) for _ in range(5_000)]
    specs = [f"spec-{rng.randrange(max(1, (n - big_share(n)) // SPEC_SIZE))}" for _ in range(300)]
    row: dict[str, Any] = {"executions": n, "artifacts": n}
    for agent_id in lookups:  # warm, as a long-running orchestrator's store is, before any loop is timed
        db.get_agent_route(agent_id)
    row["get_agent_spawn_info_us"] = per_call(lambda i: db.get_agent_spawn_info(lookups[i]), len(lookups)) * 1e6
    row["get_agent_route_us"] = per_call(lambda i: db.get_agent_route(lookups[i]), len(lookups)) * 1e6
    row["pages_per_lookup"], row["cache_misses_per_lookup"], row["routing_plan"] = pages_per_lookup(path, n)
    row["store_artifact_us"] = (
        per_call(lambda i: db.store_artifact(f"written-{n}", "plan", "gemini", CONTENT), 200) * 1e6
    )
    row["query_artifacts_spec_of_50_us"] = per_call(lambda i: db.query_artifacts(specs[i], "plan"), len(specs)) * 1e6
    big = big_share(n)
    row["big_stage_rows"] = big
    row["query_artifacts_big_stage_ms"] = per_call(lambda i: db.query_artifacts(*BIG), 1) * 1e3
    row["count_artifacts_big_stage_ms"] = per_call(lambda i: db.count_artifacts(*BIG), 1) * 1e3
    row["health_warm_ms"] = per_call(lambda i: db.health(), 1) * 1e3
    row["health_cold_ms"] = None
    if drop_os_cache():
        with consensus_db.connect(path) as cold:
            started = time.perf_counter()
            cold.health()
            row["health_cold_ms"] = (time.perf_counter() - started) * 1e3

    def open_close(i: int) -> None:
        consensus_db.connect(path).close()

    row["connect_ms"] = per_call(open_close, 10) * 1e3
    row["file_mb"] = db.stats()["file_size"] / 1e6
    return row


COLUMNS = [
    ("get_agent_spawn_info_us", "get_agent_spawn_info (µs)", "{:.1f}"),
    ("get_agent_route_us", "get_agent_route (µs)", "{:.1f}"),
    ("pages_per_lookup", "pages/lookup", "{:.2f}"),
    ("cache_misses_per_lookup", "misses/lookup", "{:.2f}"),
    ("store_artifact_us", "store_artifact (µs)", "{:.0f}"),
    ("query_artifacts_spec_of_50_us", "query_artifacts, spec of 50 (µs)", "{:.0f}"),
    ("query_artifacts_big_stage_ms", "query_artifacts, big stage (ms)", "{:.1f}"),
    ("count_artifacts_big_stage_ms", "count_artifacts, big stage (ms)", "{:.2f}"),
    ("health_warm_ms", "health() warm (ms)", "{:.2f}"),
    ("health_cold_ms", "health() cold (ms)", "{:.2f}"),
    ("connect_ms", "connect() (ms)", "{:.2f}"),
    ("file_mb", "file (MB)", "{:.0f}"),
]


def table(rows: list[dict[str, Any]]) -> str:
    head = "| per call | " + " | ".join(f"{r['executions']:,}" for r in rows) + " |"
    lines = [head, "|---|" + "---:|" * len(rows)]
    for key, label, fmt in COLUMNS:
        cells = ["—" if r.get(key) is None else fmt.format(r[key]) for r in rows]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000,1000000")
    parser.add_argument("--stall", action="store_true", help="then a writer beside retention and vacuum")
    parser.add_argument("--dir", help="where the file grows (default: a temporary directory)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"), help="'-': stdout only")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    rows: list[dict[str, Any]] = []
    stalls: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "scale.db"
        with consensus_db.connect(path) as db:
            done = 0
            for n in sizes:
                started = time.perf_counter()
                add_executions(db, done, n)
                add_artifacts(db, done, n)
                done = n
                print(f"grew to {n:,} executions + artifacts in {time.perf_counter() - started:.0f} s", flush=True)
                rows.append(measure(db, path, n))
                print(table(rows[-1:]), flush=True)
            if args.stall:
                stalls.append(beside(db, lambda: db.cleanup_old_executions(30), "retention"))
                stalls.append(beside(db, db.vacuum, "vacuum"))
    report = table(rows)
    if stalls:
        report += "\n\nA writer (record_agent_spawn in a loop) beside maintenance of the largest file:\n\n"
        report += "| job | took (s) | writes | p50 (ms) | p99 (ms) | max (ms) | errors |\n|---|---:|---:|---:|---:|---:|---|\n"
        report += "\n".join(
            f"| {s['job']} | {s['took_s']:.1f} | {s['writes']} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | "
            f"{s['max_ms']:.1f} | {', '.join(s['errors']) or 'none'} |"
            for s in stalls
        )
    print("\n" + report)
    if args.out != "-":
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        meta = {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": platform.node(),
            "cpus": os.cpu_count(),
            "version": consensus_db.__version__,
        }
        (out / "scale.json").write_text(json.dumps({**meta, "sizes": rows, "stalls": stalls}, indent=2) + "\n")
        (out / "scale.md").write_text(f"# Scale ({meta['date']}, {meta['cpus']} CPUs)\n\n{report}\n")


if __name__ == "__main__":
    main()
