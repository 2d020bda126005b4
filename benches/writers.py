"""Concurrent writers, the orchestrator's real load: many agents finishing at once.

``python -m benches.writers`` runs the same writes on consensus-db and the baselines
(stdlib ``sqlite3`` and ``apsw``, thread-local connections, same pragmas and schema):
1/4/8/16 writer threads for ``store_artifact`` and ``record_agent_spawn``, 100 asyncio
tasks (consensus-db's ``aio`` twin vs ``asyncio.to_thread`` over a baseline), 4 writer
processes, and 8 writer threads beside 2 reader threads. Each figure is total writes/s,
the median of interleaved rounds, each on a fresh file; ratios within the run; the
targets of the write lane checked at the end, with the group sizes consensus-db's lane
committed at 8 threads. Results: ``results/writers.json`` and ``results/writers.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import queue
import statistics
import tempfile
import threading
import time
from pathlib import Path
import consensus_db
from consensus_db import aio

from .baseline_sqlite3 import PurePythonStore

try:
    from .baseline_apsw import ApswStore
except ImportError:  # apsw is optional: `pip install apsw`
    ApswStore = None

IMPLS: dict = {"consensus-db": consensus_db.connect, "pure-python": PurePythonStore}
if ApswStore is not None:
    IMPLS["apsw"] = ApswStore
CONTENT = '{"verdict": "approve", "notes": ["scope", "tests"], "score": 0.9}'


def write_op(op: str, store, t: int, i: int) -> None:
    if op == "store_artifact":
        store.store_artifact(f"T{t}-{i % 20}", "plan", "gemini", CONTENT, run_id=f"r{t}-{i % 20}")
    else:
        store.record_agent_spawn(f"a{t}-{i}", "SPEC", "plan", "quality_gate", "claude", "run-1")


def threads(store, op: str, n: int, per_thread: int, readers: int = 0) -> float:
    """Total writes/s of ``n`` writer threads (beside ``readers`` threads doing point
    reads until the writers finish)."""
    barrier = threading.Barrier(n + readers + 1)
    writing = threading.Event()
    writing.set()

    failed: list = []

    def run(t: int) -> None:
        barrier.wait()
        try:
            for i in range(per_thread):
                write_op(op, store, t, i)
        except BaseException as exc:  # a dead writer would make the figure a lie
            failed.append(exc)

    def read(t: int) -> None:
        barrier.wait()
        i = 0
        while writing.is_set():
            store.get_agent_spawn_info(f"a{t}-{i % 50}")
            i += 1

    pool = [threading.Thread(target=run, args=(t,)) for t in range(n)]
    others = [threading.Thread(target=read, args=(t,)) for t in range(readers)]
    for p in pool + others:
        p.start()
    barrier.wait()
    start = time.perf_counter()
    for p in pool:
        p.join()
    elapsed = time.perf_counter() - start
    writing.clear()
    for p in others:
        p.join()
    if failed:
        raise RuntimeError(f"{len(failed)} of {n} writer threads failed; the first: {failed[0]!r}") from failed[0]
    return n * per_thread / elapsed


def tasks(impl: str, path: Path, n: int, per_task: int) -> float:
    async def main() -> float:
        if impl == "consensus-db":
            store = await aio.connect(path)
            write = lambda t, i: store.store_artifact(f"T{t}-{i % 20}", "plan", "gemini", CONTENT,  # noqa: E731
                                                      run_id=f"r{t}-{i % 20}")
        else:
            sync = IMPLS[impl](str(path))
            write = lambda t, i: asyncio.to_thread(write_op, "store_artifact", sync, t, i)  # noqa: E731

        async def task(t: int) -> None:
            for i in range(per_task):
                await write(t, i)

        start = time.perf_counter()
        await asyncio.gather(*(task(t) for t in range(n)))
        elapsed = time.perf_counter() - start
        if impl == "consensus-db":
            await store.close()
        else:
            sync.close()
        return n * per_task / elapsed

    return asyncio.run(main())


def _process(impl: str, path: str, per_process: int, p: int, ready, go, out) -> None:
    store = IMPLS[impl](path)
    ready.put(p)
    go.wait()
    start = time.perf_counter()
    for i in range(per_process):
        write_op("store_artifact", store, p, i)
    out.put(time.perf_counter() - start)
    store.close()


def collect(results, procs: list, impl: str) -> list:
    """One result from each child; a child that died instead is an error, not a hang."""
    got: list = []
    while len(got) < len(procs):
        try:
            got.append(results.get(timeout=1.0))
        except queue.Empty:
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"a writer process of {impl} failed (exit codes {dead})") from None
    return got


def processes(impl: str, path: Path, n: int, per_process: int) -> float:
    ctx = multiprocessing.get_context("spawn")
    ready, go, out = ctx.Queue(), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_process, args=(impl, str(path), per_process, p, ready, go, out)) for p in range(n)]
    for p in procs:
        p.start()
    collect(ready, procs, impl)  # every child has opened its store before the start signal
    go.set()
    elapsed = collect(out, procs, impl)
    for p in procs:
        p.join(timeout=60)
    return n * per_process / max(elapsed)


GROUPS = "lane group sizes at 8 threads (store_artifact)"


def one_round(impl: str, tmp: Path, per_thread: int, groups: dict) -> dict:
    """One round of every workload for ``impl``; consensus-db's group sizes at 8
    threads are added up in ``groups``."""
    out: dict = {}
    counter = iter(range(10_000))

    def fresh() -> Path:
        path = tmp / f"{impl}-{next(counter)}.db"
        IMPLS[impl](str(path)).close()
        return path

    for op in ("store_artifact", "record_agent_spawn"):
        for n in (1, 4, 8, 16):
            store = IMPLS[impl](str(fresh()))
            out[f"{op}, {n} thread{'s' if n > 1 else ''}"] = threads(store, op, n, per_thread)
            if impl == "consensus-db" and n == 8 and op == "store_artifact":
                for size, count in store.lane_stats()["sizes"].items():
                    groups[size] = groups.get(size, 0) + count
            store.close()
    out["store_artifact, 100 asyncio tasks"] = tasks(impl, fresh(), 100, max(1, per_thread // 10))
    out["store_artifact, 4 processes"] = processes(impl, fresh(), 4, per_thread)
    store = IMPLS[impl](str(fresh()))
    out["store_artifact, 8 threads beside 2 readers"] = threads(store, "store_artifact", 8, per_thread, readers=2)
    store.close()
    return out


#: The write lane's targets: (workload, against, at least).
TARGETS = [
    ("store_artifact, 8 threads", "pure-python", 3.0),
    ("store_artifact, 8 threads", "apsw", 2.0),
    ("record_agent_spawn, 8 threads", "pure-python", 3.0),
    ("record_agent_spawn, 8 threads", "apsw", 2.0),
    ("store_artifact, 100 asyncio tasks", "pure-python", 3.0),
    ("store_artifact, 1 thread", "pure-python", 1.0),
    ("store_artifact, 1 thread", "apsw", 1.0),
    ("record_agent_spawn, 1 thread", "pure-python", 1.0),
    ("record_agent_spawn, 1 thread", "apsw", 1.0),
    ("store_artifact, 4 processes", "pure-python", 0.95),
    ("store_artifact, 4 processes", "apsw", 0.95),
]


def checks(table: dict) -> list:
    ours = {name: v["median"] for name, v in table["consensus-db"].items()}
    out = []
    for name, against, target in TARGETS:
        if against in table:
            ratio = ours[name] / table[against][name]["median"]
            out.append({"check": f"{name} vs {against} >= {target}x", "value": ratio, "ok": ratio >= target})
    for op in ("store_artifact", "record_agent_spawn"):
        ratio = ours[f"{op}, 8 threads"] / ours[f"{op}, 1 thread"]
        out.append({"check": f"consensus-db {op} 8 threads vs its own 1 thread >= 2.0x", "value": ratio,
                    "ok": ratio >= 2.0})
    return out


def markdown(rounds: int, table: dict, groups: dict, found: list) -> str:
    impls = list(table)
    others = impls[1:]
    lines = [f"Writers: total writes/s, median of {rounds} interleaved rounds (min–max), "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs.", "",
             "| workload | " + " | ".join(impls) + " | " + " | ".join(f"× {o}" for o in others) + " |",
             "|---|" + "---:|" * (len(impls) + len(others))]
    for name, v in table["consensus-db"].items():
        cells = [f"{table[i][name]['median']:,.0f} ({table[i][name]['min']:,.0f}–{table[i][name]['max']:,.0f})"
                 for i in impls]
        ratios = [f"{v['median'] / table[o][name]['median']:.2f}" for o in others]
        lines.append(f"| {name} | " + " | ".join(cells + ratios) + " |")
    lines += ["", "| target | value | |", "|---|---:|---|"]
    lines += [f"| {c['check']} | {c['value']:.2f} | {'met' if c['ok'] else '**below**'} |" for c in found]
    total = sum(groups.values()) or 1
    members = sum(size * count for size, count in groups.items()) or 1
    lines += ["", f"{GROUPS}, all rounds: commits by number of writes they carried", "",
              "| group size | commits | share of commits | share of writes |", "|---:|---:|---:|---:|"]
    lines += [f"| {size} | {count:,} | {count / total:.0%} | {size * count / members:.0%} |"
              for size, count in sorted(groups.items())]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benches.writers", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round (a smoke run)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-thread", type=int, default=300, help="writes per thread, task group or process")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results", help="where results go")
    args = parser.parse_args()
    rounds, per_thread = (1, 20) if args.quick else (args.rounds, args.per_thread)
    run(rounds, per_thread, args.out)


def run(rounds: int, per_thread: int, out_dir: Path) -> dict:
    samples: dict = {impl: {} for impl in IMPLS}
    groups: dict = {}
    with tempfile.TemporaryDirectory(prefix="consensus-db-writers-") as tmp:
        for r in range(rounds):
            for impl in IMPLS:
                for name, ops in one_round(impl, Path(tmp), per_thread, groups).items():
                    samples[impl].setdefault(name, []).append(ops)
            print(f"round {r + 1}/{rounds} done", flush=True)
    ours = {name: statistics.median(v) for name, v in samples["consensus-db"].items()}
    table = {impl: {name: {"median": statistics.median(v), "min": min(v), "max": max(v)} for name, v in per.items()}
             for impl, per in samples.items()}
    others = [impl for impl in IMPLS if impl != "consensus-db"]
    header = f"{'workload':38} " + " ".join(f"{impl:>13}" for impl in IMPLS) + " " + " ".join(
        f"{'x ' + impl:>13}" for impl in others)
    print(header)
    for name, value in ours.items():
        cells = " ".join(f"{table[impl][name]['median']:13,.0f}" for impl in IMPLS)
        ratios = " ".join(f"{value / table[impl][name]['median']:13.2f}" for impl in others)
        print(f"{name:38} {cells} {ratios}")
    found = checks(table)
    print("\ntargets")
    for c in found:
        print(f"  {'PASS ' if c['ok'] else 'BELOW'} {c['check']:66} {c['value']:.2f}")
    print(f"\n{GROUPS}: " + ", ".join(f"{size}: {count}" for size, count in sorted(groups.items())))
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {"rounds": rounds, "per_thread": per_thread, "ops_per_s": table, "checks": found,
              "group_sizes_8_threads": {str(k): v for k, v in sorted(groups.items())}}
    (out_dir / "writers.json").write_text(json.dumps(report, indent=2))
    (out_dir / "writers.md").write_text(markdown(rounds, table, groups, found))
    return report


if __name__ == "__main__":
    # Through the package, so that spawned writer processes find `_process` by its
    # importable name (`benches.writers`), not as `__main__`.
    from benches.writers import main as package_main

    package_main()
