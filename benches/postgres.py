"""PostgreSQL (loopback) beside SQLite: the same workloads on consensus-db over a file,
consensus-db over PostgreSQL, and the psycopg 3 + psycopg_pool baseline
(`baseline_psycopg.py`) on the same server, schema and server-side statements.
Interleaved rounds, medians, ops/s; a table on stdout and `results/postgres.md`.

    python -m benches.postgres [--rounds 5] [-n 2000]

Beside one thread and 8 threads of one process: 100 asyncio tasks (consensus-db's
`aio` twin against psycopg's AsyncConnectionPool) and 4 processes (each its own store,
against a ConnectionPool in each process), each counted from the start of the first
call to the end of the last; a process is this file run as a child (`--child`) that
opens its store, says so, waits for the start line on stdin and reports its calls.

Starts its own PostgreSQL cluster (tests/pg_cluster.py; as root it runs as `postgres`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import consensus_db
from consensus_db import aio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from pg_cluster import Cluster, why_unavailable, workdir  # noqa: E402

from .baseline_psycopg import AsyncPsycopgStore, PsycopgStore  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
THREADS = 8
TASKS = 100
PROCESSES = 4
IMPLS = ("sqlite", "postgresql", "psycopg")


def open_sync(impl: str, where: dict):
    """`impl`'s store: `where` holds the file, the store's URL and psycopg's conninfo."""
    if impl == "sqlite":
        return consensus_db.connect(where["file"])
    if impl == "postgresql":
        return consensus_db.connect(where["url"])
    return PsycopgStore(where["conninfo"])


async def open_async(impl: str, where: dict):
    if impl == "psycopg":
        return await AsyncPsycopgStore(where["conninfo"]).open()
    return await aio.connect(where["file"] if impl == "sqlite" else where["url"])


# The calls of the asyncio and process rows, the same on each store (sync or async):
# ``call(store, op, worker, k)`` is the k-th call of one task or process.
def call(store, op: str, worker: int, k: int):
    if op == "store_artifact":
        return store.store_artifact(f"C{worker}", "plan", "gemini", '{"verdict": "ok"}')
    return store.get_agent_spawn_info(f"agent-{(worker * 7 + k) % 1000}")


def async_run(impl: str, where: dict, op: str, per_task: int) -> float:
    """ops/s of TASKS coroutines making ``per_task`` calls each on one store."""

    async def main() -> float:
        store = await open_async(impl, where)
        try:
            await asyncio.gather(*(call(store, "get_agent_spawn_info", t, 0) for t in range(TASKS)))  # the pool opened

            async def task(t: int) -> None:
                for k in range(per_task):
                    await call(store, op, t, k)

            start = time.perf_counter()
            await asyncio.gather(*(task(t) for t in range(TASKS)))
            return TASKS * per_task / (time.perf_counter() - start)
        finally:
            await store.close()

    return asyncio.run(main())


def child(impl: str, op: str, n: int, worker: int, where: dict) -> None:
    store = open_sync(impl, where)
    call(store, "get_agent_spawn_info", worker, 0)  # connected
    print("ready", flush=True)
    sys.stdin.readline()
    for k in range(n):
        call(store, op, worker, k)
    store.close()
    print("done", flush=True)


def processes_run(impl: str, where: dict, op: str, per_process: int) -> float:
    """ops/s of PROCESSES children making ``per_process`` calls each, started together."""
    argv = [sys.executable, "-m", "benches.postgres", "--child", impl, op, str(per_process), json.dumps(where)]
    procs = [subprocess.Popen(argv + [str(p)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for p in range(PROCESSES)]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready", f"a {impl} process did not open"
        start = time.perf_counter()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "done", f"a {impl} process failed"
        elapsed = time.perf_counter() - start
    finally:
        for p in procs:
            p.wait(timeout=120)
    return PROCESSES * per_process / elapsed


def concurrent_workloads(n: int) -> list:
    """(label, run(impl, where) -> ops/s): the asyncio and process rows."""
    per_task, per_process = max(1, n // 100), max(1, n // 4)
    rows = []
    for op in ("get_agent_spawn_info", "store_artifact"):
        rows.append((f"{op}, {TASKS} asyncio tasks", lambda impl, where, op=op: async_run(impl, where, op, per_task)))
    for op in ("get_agent_spawn_info", "store_artifact"):
        rows.append((f"{op}, {PROCESSES} processes",
                     lambda impl, where, op=op: processes_run(impl, where, op, per_process)))
    return rows


def workloads(n: int):
    def spawn_info(db, i):
        for k in range(n):
            db.get_agent_spawn_info(f"agent-{k % 1000}")

    def spawn(db, i):
        for k in range(n):
            db.record_agent_spawn(f"agent-{k % 1000}", "SPEC", "plan", "quality_gate", "gemini", None)

    def completion(db, i):
        for k in range(n):
            db.record_agent_completion(f"agent-{k % 1000}", "done")

    def artifact(db, i):
        for k in range(n // 4):
            db.store_artifact(f"W{i}", "plan", "gemini", '{"verdict": "ok"}')

    def query(db, i):
        for k in range(n):
            db.query_artifacts(f"Q{k % 50}", "plan")

    def batch(db, i):
        db.store_artifacts([{"spec_id": f"B{i}", "stage": "plan", "agent_name": f"a{j}", "content_json": '{"j": 1}'}
                            for j in range(500)])

    def threaded_artifacts(db, i):
        def one(t):
            for k in range(n // 16):
                db.store_artifact(f"T{i}-{t}", "plan", "gemini", '{"verdict": "ok"}')
        ts = [threading.Thread(target=one, args=(t,)) for t in range(THREADS)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    return [
        ("get_agent_spawn_info", spawn_info, n),
        ("record_agent_spawn", spawn, n),
        ("record_agent_completion", completion, n),
        ("store_artifact", artifact, n // 4),
        ("query_artifacts (5 rows)", query, n),
        ("store_artifacts (batch of 500, rows)", batch, 500),
        (f"store_artifact, {THREADS} threads", threaded_artifacts, (n // 16) * THREADS),
    ]


def seed(db) -> None:
    for k in range(1000):
        db.record_agent_spawn(f"agent-{k}", "SPEC", "plan", "quality_gate", "gemini", None)
    for s in range(50):
        for a in range(5):
            db.store_artifact(f"Q{s}", "plan", f"a{a}", '{"x": 1}')


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("--child", nargs=5, metavar=("IMPL", "OP", "N", "WHERE", "WORKER"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        impl, op, n, where, worker = args.child
        child(impl, op, int(n), int(worker), json.loads(where))
        return
    reason = why_unavailable()
    if reason:
        sys.exit(f"cannot start PostgreSQL: {reason}")
    root = workdir("cdb-bench-")
    cluster = Cluster(root, "bench").init(fsync="on", synchronous_commit="on").start()
    tmp = Path(tempfile.mkdtemp())
    try:
        stores, places = {}, {}
        for name in IMPLS:
            # Each implementation its own file or schema (the store's tables, made by consensus-db).
            schema = name
            cluster.psql(f"CREATE SCHEMA {schema}")
            places[name] = {
                "file": str(tmp / "bench.db"),
                "url": cluster.url(options=f"-csearch_path%3D{schema}"),
                "conninfo": f"host=127.0.0.1 port={cluster.port} user=cdb dbname=postgres options='-csearch_path={schema}'",
            }
            if name != "sqlite":
                consensus_db.connect(places[name]["url"]).close()  # the schema, for both PostgreSQL clients
            stores[name] = open_sync(name, places[name])
            seed(stores[name])
        results = {}
        for rnd in range(args.rounds):
            for label, fn, ops in workloads(args.n):
                for name, db in stores.items():
                    t = time.perf_counter()
                    fn(db, rnd)
                    results.setdefault(label, {}).setdefault(name, []).append(ops / (time.perf_counter() - t))
            for label, run in concurrent_workloads(args.n):
                for name in IMPLS:
                    results.setdefault(label, {}).setdefault(name, []).append(run(name, places[name]))
        lines = [
            f"One run, ops/s, medians of {args.rounds} rounds ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, "
            f"{platform.platform()}, Python {platform.python_version()}; PostgreSQL "
            f"{cluster.psql('SHOW server_version')} on loopback, fsync and synchronous_commit on). Pools of 10 "
            f"connections on every side; the asyncio rows' baseline is psycopg_pool's AsyncConnectionPool, the "
            f"threads' and processes' its ConnectionPool (one per process); SQLite's asyncio rows are the `aio` twin "
            f"over the file, its processes share the file:",
            "",
            "| workload | SQLite (consensus-db) | PostgreSQL (consensus-db) | PostgreSQL (psycopg 3 + pool) | consensus-db ÷ psycopg |",
            "|---|---:|---:|---:|---:|",
        ]
        for label, by in results.items():
            m = {k: statistics.median(v) for k, v in by.items()}
            lines.append(f"| {label} | {m['sqlite']:,.0f} | {m['postgresql']:,.0f} | {m['psycopg']:,.0f} | "
                         f"{m['postgresql'] / m['psycopg']:.2f} |")
        out = "\n".join(lines)
        print(out)
        (Path(__file__).parent / "results").mkdir(exist_ok=True)
        (Path(__file__).parent / "results" / "postgres.md").write_text(out + "\n")
        for db in stores.values():
            db.close()
    finally:
        cluster.stop("fast")
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
