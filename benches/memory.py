"""What a store costs in memory on a big file, by `mmap_size`: one process opens a store
(10 pooled connections) on a file of ~5 GB (1M executions with 2 KB responses and 1M
artifacts of 2 KB, grown by `benches.scale`), 10 threads read at random across it for a
while (routing reads and `query_artifacts` of a spec of 50), and the process reports its
RSS — anonymous and file-backed (`/proc/self/status`), and PSS (`smaps_rollup`, file pages
shared between mappings counted once) — with the read rates. Each setting runs in a fresh
child process after the OS page cache is dropped (when root), so every figure starts cold.

    python -m benches.memory [--file PATH] [--rows 1000000] [--seconds 20]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import consensus_db

from .scale import SPEC_SIZE, add_artifacts, add_executions, agent, big_share, drop_os_cache

SETTINGS = [0, 64 << 20, 256 << 20, 1 << 30]


def status_kb() -> dict[str, int]:
    fields: dict[str, int] = {}
    for name in ("/proc/self/status", "/proc/self/smaps_rollup"):
        for line in Path(name).read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "Pss", "Pss_Anon", "Pss_File"):
                fields[key] = int(value.split()[0])
    return fields


def run(path: Path, rows: int, mmap_size: int, seconds: float) -> dict[str, Any]:
    before = status_kb()
    with consensus_db.connect(path, pool_size=10, pragmas={"mmap_size": mmap_size}) as db:
        specs = max(1, (rows - big_share(rows)) // SPEC_SIZE)
        counts = [[0, 0] for _ in range(10)]  # per thread: routing reads, query_artifacts
        stop = threading.Event()

        def reader(seed: int) -> None:
            rng = random.Random(seed)
            while not stop.is_set():
                for _ in range(100):
                    db.get_agent_spawn_info(agent(rng.randrange(rows)))
                db.query_artifacts(f"spec-{rng.randrange(specs)}", "plan")
                counts[seed][0] += 100
                counts[seed][1] += 1

        threads = [threading.Thread(target=reader, args=(i,)) for i in range(10)]
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join()
        during = status_kb()
        pool = db.pool_state()
    return {
        "mmap_size_mb": mmap_size >> 20,
        "connections": pool["connections"],
        "routing_reads_per_s": sum(c[0] for c in counts) / seconds,
        "query_artifacts_per_s": sum(c[1] for c in counts) / seconds,
        "rss_mb": during["VmRSS"] / 1024,
        "rss_anon_mb": (during["RssAnon"] - before["RssAnon"]) / 1024,
        "rss_file_mb": during["RssFile"] / 1024,
        "pss_mb": during["Pss"] / 1024,
        "pss_file_mb": during.get("Pss_File", 0) / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--file", help="an existing file grown by this bench (default: grow one in a temp dir)")
    parser.add_argument("--dir", help="where to grow the file")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "memory.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(args.file) if args.file else Path(tmp) / "memory.db"
        if not args.file:
            with consensus_db.connect(path) as db:
                add_executions(db, 0, args.rows)
                add_artifacts(db, 0, args.rows)
        print(f"file {path.stat().st_size / 1e9:.1f} GB, 10 pooled connections, 10 reader threads, {args.seconds:.0f} s")
        ctx = multiprocessing.get_context("spawn")
        results = []
        for mmap_size in SETTINGS:
            cold = drop_os_cache()
            with ctx.Pool(1) as child:
                r = child.apply(run, (path, args.rows, mmap_size, args.seconds))
            r["cold_start"] = cold
            results.append(r)
            print(
                f"mmap_size {r['mmap_size_mb']:5} MB: {r['routing_reads_per_s']:8.0f} routing reads/s,"
                f" {r['query_artifacts_per_s']:6.0f} query_artifacts/s; RSS {r['rss_mb']:6.0f} MB"
                f" (anon +{r['rss_anon_mb']:.0f}, file {r['rss_file_mb']:.0f}), PSS {r['pss_mb']:.0f} MB",
                flush=True,
            )
    if args.out != "-":
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
