"""Writers in several processes on one file: the host-wide writer queue's measurement
(issue 31). ``python -m benches.processes`` runs 2, 4 and 8 writer processes × 1 and 4
threads each, ``store_artifact`` and ``record_agent_spawn``, on consensus-db and the
baselines (stdlib ``sqlite3``, ``apsw``) at the same counts, and with ``--before PYTHON``
a build of consensus-db installed in another interpreter (say, a venv of the last
commit) too. Per run: total writes/s, the p99 write latency of every process (the
median process's and the worst), and the spread between the slowest and fastest
process (each process's writes/s over the mean). Every figure is the median of
interleaved rounds (the order of implementations rotates each round), each run on a
fresh file; ratios within the run. Results: ``results/processes.json`` and ``.md``.

Each writer process is this file run as a child (``--child``) by the interpreter of
its implementation: it opens the store, says so, waits for the start line on stdin,
runs its threads, and prints its elapsed time and latencies.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OPS = ("store_artifact", "record_agent_spawn")
PROCESSES = (2, 4, 8)
THREADS = (1, 4)
BASELINES = ("pure-python", "apsw")


def child(impl: str, op: str, threads: int, n: int, path: str, tag: str) -> None:
    from .writers import IMPLS, write_op

    store = IMPLS["consensus-db" if impl == "before" else impl](path)
    print("ready", flush=True)
    sys.stdin.readline()
    latencies: list = [[] for _ in range(threads)]
    failed: list = []

    def run(t: int) -> None:
        mine = latencies[t]
        try:
            for i in range(n):
                began = time.perf_counter()
                write_op(op, store, f"{tag}-{t}", i)
                mine.append(time.perf_counter() - began)
        except BaseException as exc:  # a dead writer would make the figure a lie
            failed.append(repr(exc))

    pool = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    start = time.perf_counter()
    for p in pool:
        p.start()
    for p in pool:
        p.join()
    elapsed = time.perf_counter() - start
    store.close()
    every = sorted(x for per in latencies for x in per)
    print(json.dumps({"elapsed": elapsed, "writes": len(every), "failed": failed,
                      "p99": every[min(len(every) - 1, int(len(every) * 0.99))] if every else 0.0}), flush=True)


def one_run(python: str, impl: str, op: str, processes: int, threads: int, n: int, path: Path) -> dict:
    """``processes`` children of ``impl`` writing ``n`` per thread, started together."""
    argv = [python, "-m", "benches.processes", "--child", impl, op, str(threads), str(n), str(path)]
    procs = [subprocess.Popen(argv + [f"p{p}"], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for p in range(processes)]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready", f"a {impl} writer did not open"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        results = [json.loads(p.communicate(timeout=600)[0]) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    if any(r["failed"] for r in results) or any(p.returncode for p in procs):
        raise RuntimeError(f"a writer process of {impl} failed: {[r['failed'] for r in results]}")
    rates = [r["writes"] / r["elapsed"] for r in results]
    p99s = sorted(r["p99"] for r in results)
    mean = statistics.mean(rates)
    return {"writes_per_s": sum(r["writes"] for r in results) / max(r["elapsed"] for r in results),
            "p99_ms": statistics.median(p99s) * 1000, "worst_p99_ms": p99s[-1] * 1000,
            "slowest_over_mean": min(rates) / mean, "fastest_over_mean": max(rates) / mean}


def fresh(tmp: Path, impl: str, counter=iter(range(1_000_000))) -> Path:
    from .writers import IMPLS

    path = tmp / f"{impl}-{next(counter)}.db"
    IMPLS["consensus-db" if impl == "before" else impl](str(path)).close()
    return path


def run(rounds: int, n: int, before: str | None, out_dir: Path, configs: list) -> dict:
    from .writers import IMPLS

    impls = {"consensus-db": sys.executable}
    if before:
        impls["before"] = before
    impls.update({b: sys.executable for b in BASELINES if b in IMPLS})
    names = list(impls)
    samples: dict = {}
    with tempfile.TemporaryDirectory(prefix="consensus-db-processes-") as tmp:
        for r in range(rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for op, processes, threads in configs:
                key = f"{op}, {processes} processes × {threads} thread{'s' if threads > 1 else ''}"
                for impl in order:
                    got = one_run(impls[impl], impl, op, processes, threads, n, fresh(Path(tmp), impl))
                    for metric, value in got.items():
                        samples.setdefault(key, {}).setdefault(impl, {}).setdefault(metric, []).append(value)
            print(f"round {r + 1}/{rounds} done", flush=True)
    table = {key: {impl: {metric: statistics.median(v) for metric, v in metrics.items()}
                   for impl, metrics in per.items()} for key, per in samples.items()}
    report = {"rounds": rounds, "per_thread": n, "cpus": os.cpu_count(), "impls": names, "table": table,
              "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "checks": checks(table)}
    text = markdown(report)
    print(text)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "processes.json").write_text(json.dumps(report, indent=2))
    (out_dir / "processes.md").write_text(text)
    return report


def checks(table: dict) -> list:
    """Issue 31's targets, where the run has their rows: at 4 processes × 4 threads ≥ 2x
    the stdlib store and ≥ 1.5x apsw; no process below half the mean; p99 at 4
    processes ≤ 1/3 of the stdlib store's."""
    out = []
    for key, per in table.items():
        ours = per["consensus-db"]
        if "4 processes" in key and "× 4 threads" in key:
            for against, target in (("pure-python", 2.0), ("apsw", 1.5)):
                if against in per:
                    ratio = ours["writes_per_s"] / per[against]["writes_per_s"]
                    out.append({"check": f"{key}: vs {against} >= {target}x", "value": ratio, "ok": ratio >= target})
        if "4 processes" in key and "pure-python" in per:
            ratio = ours["p99_ms"] / per["pure-python"]["p99_ms"]
            out.append({"check": f"{key}: p99 vs pure-python's <= 0.33", "value": ratio, "ok": ratio <= 1 / 3})
        out.append({"check": f"{key}: slowest process over the mean >= 0.5", "value": ours["slowest_over_mean"],
                    "ok": ours["slowest_over_mean"] >= 0.5})
    return out


def markdown(report: dict) -> str:
    names, table = report["impls"], report["table"]
    others = [i for i in names if i != "consensus-db"]
    lines = [f"Writer processes: median of {report['rounds']} interleaved rounds, {report['per_thread']} writes per "
             f"thread, {report['when']}, {report['cpus']} CPUs. writes/s total; p99 ms of the median process "
             "(worst process); slowest–fastest process over the mean.", "",
             "| workload | impl | writes/s | p99 ms (worst) | slowest–fastest / mean | "
             + " | ".join(f"× {o}" for o in others) + " |",
             "|---|---|---:|---:|---:|" + "---:|" * len(others)]
    for key, per in table.items():
        ours = per["consensus-db"]["writes_per_s"]
        for impl in names:
            v = per[impl]
            ratios = [f"{ours / per[o]['writes_per_s']:.2f}" if impl == "consensus-db" else "" for o in others]
            lines.append(f"| {key} | {impl} | {v['writes_per_s']:,.0f} | {v['p99_ms']:.1f} ({v['worst_p99_ms']:.1f}) "
                         f"| {v['slowest_over_mean']:.2f}–{v['fastest_over_mean']:.2f} | " + " | ".join(ratios) + " |")
    lines += ["", "| target | value | |", "|---|---:|---|"]
    lines += [f"| {c['check']} | {c['value']:.2f} | {'met' if c['ok'] else '**below**'} |" for c in report["checks"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benches.processes", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-thread", type=int, default=150, help="writes per thread")
    parser.add_argument("--before", help="python of a consensus-db build to compare (e.g. the last commit's venv)")
    parser.add_argument("--processes", type=int, nargs="*", default=list(PROCESSES))
    parser.add_argument("--threads", type=int, nargs="*", default=list(THREADS))
    parser.add_argument("--ops", nargs="*", default=list(OPS), choices=OPS)
    parser.add_argument("--quick", action="store_true", help="one round, 20 writes per thread, 2 processes")
    parser.add_argument("--out", type=Path, help="where results go (default: benches/results; --quick: a temporary "
                        "directory)")
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        impl, op, threads, n, path, tag = args.child
        child(impl, op, int(threads), int(n), path, tag)
        return
    if args.quick:
        args.rounds, args.per_thread, args.processes = 1, 20, [2]
        if args.out is None:  # a smoke run's numbers are not the committed results
            args.out = Path(tempfile.mkdtemp(prefix="consensus-db-processes-quick-"))
    args.out = args.out or Path(__file__).parent / "results"
    configs = [(op, p, t) for op in args.ops for p in args.processes for t in args.threads]
    run(args.rounds, args.per_thread, args.before, args.out, configs)


if __name__ == "__main__":
    main()
