"""PostgreSQL (loopback) beside SQLite: the same workloads on consensus-db over a file,
consensus-db over PostgreSQL, and the psycopg 3 + psycopg_pool baseline
(`baseline_psycopg.py`) on the same server, schema and server-side statements.
Interleaved rounds, medians, ops/s; a table on stdout and `results/postgres.md`.

    python -m benches.postgres [--rounds 5] [-n 2000]

Starts its own PostgreSQL cluster (tests/pg_cluster.py; as root it runs as `postgres`).
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import consensus_db

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from pg_cluster import Cluster, why_unavailable, workdir  # noqa: E402

from .baseline_psycopg import PsycopgStore  # noqa: E402

THREADS = 8


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
    args = ap.parse_args()
    reason = why_unavailable()
    if reason:
        sys.exit(f"cannot start PostgreSQL: {reason}")
    root = workdir("cdb-bench-")
    cluster = Cluster(root, "bench").init(fsync="on", synchronous_commit="on").start()
    tmp = Path(tempfile.mkdtemp())
    try:
        stores = {}
        for name in ("sqlite", "postgresql", "psycopg"):
            if name == "sqlite":
                stores[name] = consensus_db.connect(tmp / "bench.db")
            else:
                schema = name
                cluster.psql(f"CREATE SCHEMA {schema}")
                url = cluster.url(options=f"-csearch_path%3D{schema}")
                consensus_db.connect(url).close()  # the schema, for both PostgreSQL clients
                stores[name] = consensus_db.connect(url) if name == "postgresql" else PsycopgStore(
                    f"host=127.0.0.1 port={cluster.port} user=cdb dbname=postgres options='-csearch_path={schema}'")
            seed(stores[name])
        results = {}
        for rnd in range(args.rounds):
            for label, fn, ops in workloads(args.n):
                for name, db in stores.items():
                    t = time.perf_counter()
                    fn(db, rnd)
                    results.setdefault(label, {}).setdefault(name, []).append(ops / (time.perf_counter() - t))
        lines = [
            f"One run, ops/s, medians of {args.rounds} rounds ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, "
            f"{platform.platform()}, Python {platform.python_version()}; PostgreSQL "
            f"{cluster.psql('SHOW server_version')} on loopback, fsync and synchronous_commit on):",
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
