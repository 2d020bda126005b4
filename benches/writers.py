"""Concurrent writers, the orchestrator's real load: many agents finishing at once.

``python -m benches.writers`` runs the same writes on consensus-db and the baselines
(stdlib ``sqlite3`` and ``apsw``, thread-local connections, same pragmas and schema):
1/4/8/16 writer threads for ``store_artifact`` and ``record_agent_spawn``, 100 asyncio
tasks (consensus-db's ``aio`` twin vs ``asyncio.to_thread`` over a baseline), and 4
writer processes. Each figure is total writes/s, the median of interleaved rounds, each
on a fresh file; ratios within the run. Results: ``results/writers.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
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


def threads(store, op: str, n: int, per_thread: int) -> float:
    barrier = threading.Barrier(n + 1)

    def run(t: int) -> None:
        barrier.wait()
        for i in range(per_thread):
            write_op(op, store, t, i)

    pool = [threading.Thread(target=run, args=(t,)) for t in range(n)]
    for p in pool:
        p.start()
    barrier.wait()
    start = time.perf_counter()
    for p in pool:
        p.join()
    return n * per_thread / (time.perf_counter() - start)


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


def one_round(impl: str, tmp: Path, per_thread: int) -> dict:
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
            store.close()
    out["store_artifact, 100 asyncio tasks"] = tasks(impl, fresh(), 100, max(1, per_thread // 10))
    out["store_artifact, 4 processes"] = processes(impl, fresh(), 4, per_thread)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benches.writers", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round (a smoke run)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-thread", type=int, default=300, help="writes per thread, task group or process")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results", help="where results go")
    args = parser.parse_args()
    rounds, per_thread = (1, 20) if args.quick else (args.rounds, args.per_thread)
    samples: dict = {impl: {} for impl in IMPLS}
    with tempfile.TemporaryDirectory(prefix="consensus-db-writers-") as tmp:
        for r in range(rounds):
            for impl in IMPLS:
                for name, ops in one_round(impl, Path(tmp), per_thread).items():
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
    one = ours["store_artifact, 1 thread"]
    print(f"consensus-db 8 threads vs its own 1 thread (store_artifact): {ours['store_artifact, 8 threads'] / one:.2f}x")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "writers.json").write_text(json.dumps({"rounds": rounds, "per_thread": per_thread, "ops_per_s": table},
                                                      indent=2))


if __name__ == "__main__":
    # Through the package, so that spawned writer processes find `_process` by its
    # importable name (`benches.writers`), not as `__main__`.
    from benches.writers import main as package_main

    package_main()
