"""Identical workloads on consensus-db and the two baselines, interleaved, medians,
ratios within one run; a table on stdout, ``results.json`` and ``results.png``."""

from __future__ import annotations

import gc
import json
import os
import platform
import shutil
import sqlite3
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

import consensus_db

from .baseline_legacy import LegacyStore
from .baseline_sqlite3 import PurePythonStore

IMPLS: dict = {
    "consensus-db": lambda path: consensus_db.connect(path),
    "pure-python": PurePythonStore,
    "legacy": LegacyStore,
}
AGENTS = 10_000
SPECS = 200  # specs with 5 artifacts each, for query_artifacts


@dataclass(frozen=True)
class Size:
    rounds: int
    reads: int
    writes: int
    legacy_writes: int
    batch_rounds: int
    queries: int
    opens: int
    mixed_seconds: float


FULL = Size(rounds=5, reads=40_000, writes=1_000, legacy_writes=150, batch_rounds=4, queries=10_000, opens=40,
            mixed_seconds=1.0)
QUICK = Size(rounds=1, reads=2_000, writes=50, legacy_writes=20, batch_rounds=1, queries=500, opens=3,
             mixed_seconds=0.1)

# (workload, target ratio vs pure-python, what the ratio is about)
TARGETS = {
    "get_agent_spawn_info": 1.5,
    "record_agent_spawn": 2.0,
    "record_agent_completion": 2.0,
    "store_artifact": 2.0,
    "query_artifacts (5 rows)": 2.0,
    "store_artifacts (batch of 500, rows)": 3.0,
    "store_artifacts (batch of 500 across 100 runs, rows)": 3.0,
    "2 reader threads (point reads)": 2.0,
    "4 reader threads (point reads)": 2.0,
    "2 reader threads (query_artifacts)": 2.0,
    "1 writer + 2 readers: reads": 2.0,
    "1 writer + 2 readers: writes": 2.0,
    "open + first read + close": 1.0,
}


def seed(path: Path, impl_name: str) -> None:
    """Creates the file with the implementation, then loads the fixture rows with the
    stdlib in one transaction (the implementation's store is closed meanwhile)."""
    IMPLS[impl_name](str(path)).close()
    conn = sqlite3.connect(path)
    conn.executemany(
        "INSERT INTO agent_executions (agent_id, spec_id, stage, phase_type, agent_name, spawned_at)"
        " VALUES (?, 'SPEC', 'plan', 'quality_gate', 'gemini', '2025-01-01 00:00:00')",
        ((f"agent-{i}",) for i in range(AGENTS)),
    )
    conn.commit()
    conn.close()
    store = IMPLS[impl_name](str(path))
    store.store_artifacts([{"spec_id": f"Q-{s}", "stage": "plan", "agent_name": a, "run_id": f"run-{s}",
                            "content_json": '{"verdict": "approve", "notes": ["scope", "tests"], "score": 0.9}'}
                           for s in range(SPECS) for a in ("gemini", "claude", "code", "gpt_pro", "extra")])
    store.close()


def ids(n: int, offset: int = 0) -> list:
    return [f"agent-{((i + offset) * 7919) % AGENTS}" for i in range(n)]


def timed(n: int, fn: Callable[[], None]) -> float:
    gc.collect()
    start = time.perf_counter()
    fn()
    return n / (time.perf_counter() - start)


def threaded(store, threads: int, per_thread: int, op: str) -> float:
    barrier = threading.Barrier(threads + 1)
    if op == "point":
        work = [ids(per_thread, t * 1000) for t in range(threads)]

        def run(t: int) -> None:
            f = store.get_agent_spawn_info
            barrier.wait()
            for agent_id in work[t]:
                f(agent_id)
    else:
        def run(t: int) -> None:
            f = store.query_artifacts
            barrier.wait()
            for i in range(per_thread):
                f(f"Q-{(i + t * 37) % SPECS}", "plan")

    pool = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for p in pool:
        p.start()
    barrier.wait()
    start = time.perf_counter()
    for p in pool:
        p.join()
    return threads * per_thread / (time.perf_counter() - start)


def mixed(store, seconds: float) -> tuple:
    stop = threading.Event()
    counts = {"reads": 0, "writes": 0}
    lock = threading.Lock()

    def reader(t: int) -> None:
        n, f, work = 0, store.get_agent_spawn_info, ids(AGENTS, t)
        while not stop.is_set():
            f(work[n % AGENTS])
            n += 1
        with lock:
            counts["reads"] += n

    def writer() -> None:
        n = 0
        while not stop.is_set():
            store.store_artifact("MIX", "plan", "gemini", '{"mixed": true}', run_id=f"m{n % 10}")
            n += 1
        counts["writes"] = n

    pool = [threading.Thread(target=reader, args=(t,)) for t in range(2)] + [threading.Thread(target=writer)]
    for p in pool:
        p.start()
    time.sleep(seconds)  # the measurement window
    stop.set()
    for p in pool:
        p.join()
    return counts["reads"] / seconds, counts["writes"] / seconds


def run_round(impl: str, template: Path, work: Path, size: Size) -> dict:
    """One round of every workload for one implementation; ops/s per workload."""
    out: dict = {}
    writes = size.legacy_writes if impl == "legacy" else size.writes

    def fresh():
        for suffix in ("", "-wal", "-shm", "-journal"):
            target = Path(f"{work}{suffix}")
            source = Path(f"{template}{suffix}")
            if source.exists():
                shutil.copyfile(source, target)
            elif target.exists():
                target.unlink()
        return IMPLS[impl](str(work))

    store = fresh()
    read_ids = ids(size.reads)
    store.get_agent_spawn_info("agent-1")  # warm-up: pool, caches
    out["get_agent_spawn_info"] = timed(size.reads, lambda: [store.get_agent_spawn_info(i) for i in read_ids])
    out["record_agent_spawn"] = timed(writes, lambda: [
        store.record_agent_spawn(f"new-{i}", "SPEC", "plan", "quality_gate", "claude", "run-1") for i in range(writes)])
    done_ids = ids(writes, 17)
    out["record_agent_completion"] = timed(writes, lambda: [
        store.record_agent_completion(i, "the agent's raw response text") for i in done_ids])
    content = '{"verdict": "approve", "notes": ["scope", "tests"], "score": 0.9}'
    out["store_artifact"] = timed(writes, lambda: [
        store.store_artifact(f"W-{i % 50}", "plan", "gemini", content, run_id=f"run-{i % 50}") for i in range(writes)])
    out["query_artifacts (5 rows)"] = timed(size.queries, lambda: [
        store.query_artifacts(f"Q-{i % SPECS}", "plan") for i in range(size.queries)])
    batch = [{"spec_id": f"B-{i % 20}", "stage": "tasks", "agent_name": "claude", "content_json": content,
              "run_id": f"b-{i % 20}"} for i in range(500)]
    out["store_artifacts (batch of 500, rows)"] = timed(500 * size.batch_rounds, lambda: [
        store.store_artifacts(batch) for _ in range(size.batch_rounds)])
    # The same rows spread over 100 runs (5 outputs each), each batch opening new runs.
    spread = [[dict(a, spec_id=f"M-{r}-{i % 100}", run_id=f"m-{i % 100}") for i, a in enumerate(batch)]
              for r in range(size.batch_rounds)]
    out["store_artifacts (batch of 500 across 100 runs, rows)"] = timed(500 * size.batch_rounds, lambda: [
        store.store_artifacts(b) for b in spread])
    per_thread = size.reads
    for n in (1, 2, 4):
        out[f"{n} reader thread{'s' if n > 1 else ''} (point reads)"] = threaded(store, n, per_thread, "point")
    for n in (1, 2):
        out[f"{n} reader thread{'s' if n > 1 else ''} (query_artifacts)"] = threaded(store, n, size.queries, "query")
    reads, writes_per_s = mixed(store, size.mixed_seconds)
    out["1 writer + 2 readers: reads"] = reads
    out["1 writer + 2 readers: writes"] = writes_per_s
    store.close()

    def open_read_close():
        for _ in range(size.opens):
            s = IMPLS[impl](str(work))
            s.get_agent_spawn_info("agent-1")
            s.close()

    out["open + first read + close"] = timed(size.opens, open_read_close)
    return out


def machine() -> dict:
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "sqlite (consensus-db, bundled)": consensus_db.sqlite_version(),
        "sqlite (stdlib)": sqlite3.sqlite_version,
        "consensus-db": consensus_db.__version__,
    }


def run(size: Size, out_dir: Path, chart: bool = True) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="consensus-db-bench-"))
    samples: dict = {impl: {} for impl in IMPLS}
    try:
        templates = {}
        for impl in IMPLS:
            templates[impl] = tmp / f"{impl}-template.db"
            seed(templates[impl], impl)
        for r in range(size.rounds):
            for impl in IMPLS:  # interleaved: each round visits every implementation
                for name, ops in run_round(impl, templates[impl], tmp / f"{impl}.db", size).items():
                    samples[impl].setdefault(name, []).append(ops)
            print(f"round {r + 1}/{size.rounds} done", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    medians = {impl: {k: statistics.median(v) for k, v in per.items()} for impl, per in samples.items()}
    report = {"machine": machine(), "mode": "quick" if size == QUICK else "full", "size": size.__dict__,
              "ops_per_s": medians, "ratios": {}, "checks": []}
    ours, pure, legacy = medians["consensus-db"], medians["pure-python"], medians["legacy"]
    for name in ours:
        report["ratios"][name] = {"vs_pure_python": ours[name] / pure[name], "vs_legacy": ours[name] / legacy[name]}
    for name, target in TARGETS.items():
        ratio = report["ratios"][name]["vs_pure_python"]
        report["checks"].append({"check": f"{name} vs pure-python >= {target}x", "value": ratio, "ok": ratio >= target})
    for impl_threads in ("point reads", "query_artifacts"):
        one = ours[f"1 reader thread ({impl_threads})"]
        two = ours[f"2 reader threads ({impl_threads})"]
        report["checks"].append({"check": f"consensus-db 2 threads vs 1 ({impl_threads}) >= 1.6x", "value": two / one,
                                 "ok": two / one >= 1.6})
    slower = [n for n, r in report["ratios"].items() if r["vs_pure_python"] < 1.0]
    report["checks"].append({"check": "never slower than the pure-python baseline", "value": len(slower),
                             "ok": not slower, "slower": slower})
    report["slower_than_legacy"] = [n for n, r in report["ratios"].items() if r["vs_legacy"] < 1.0]
    engine = Path(__file__).parent / "results" / "engine.json"
    if engine.exists():
        report["engine_ns_per_op"] = json.loads(engine.read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(report, indent=2))
    (out_dir / "results.md").write_text(markdown(report))
    print_table(report)
    if chart:
        draw(report, out_dir / "results.png")
    return report


def print_table(report: dict) -> None:
    ops = report["ops_per_s"]
    print(f"\n{'workload':40} {'consensus-db':>13} {'pure-python':>12} {'legacy':>10} {'x pure':>7} {'x legacy':>9}")
    for name in ops["consensus-db"]:
        r = report["ratios"][name]
        print(f"{name:40} {ops['consensus-db'][name]:13,.0f} {ops['pure-python'][name]:12,.0f} "
              f"{ops['legacy'][name]:10,.0f} {r['vs_pure_python']:7.2f} {r['vs_legacy']:9.2f}")
    print("\ntargets")
    for c in report["checks"]:
        value = c["value"] if isinstance(c["value"], int) else f"{c['value']:.2f}"
        print(f"  {'PASS ' if c['ok'] else 'BELOW'} {c['check']:60} {value}")
    if report["slower_than_legacy"]:
        print(f"  (slower than legacy: {', '.join(report['slower_than_legacy'])} — a bare sqlite3.connect has no pool,"
              " pragmas or verification to set up)")
    if "engine_ns_per_op" in report:
        print("\nengine alone (cargo bench --bench engine), ns/op:")
        for name, v in report["engine_ns_per_op"].items():
            print(f"  {name:32} {v['ns_per_op']:10,.0f}")
    m = report["machine"]
    print(f"\n{m['date']} | {m['platform']} | {m['cpus']} CPUs | Python {m['python']} | "
          f"SQLite {m['sqlite (consensus-db, bundled)']} (bundled) / {m['sqlite (stdlib)']} (stdlib)")


def markdown(report: dict) -> str:
    """The results table as it goes into docs/benchmarks.md."""
    ops, m = report["ops_per_s"], report["machine"]
    lines = [f"One run, ops/s ({m['date']}, {m['cpus']} CPUs, {m['platform']}, Python {m['python']}, "
             f"SQLite {m['sqlite (consensus-db, bundled)']} bundled / {m['sqlite (stdlib)']} stdlib):", "",
             "| workload | consensus-db | pure-Python | legacy | × pure-Python | × legacy |",
             "|---|---:|---:|---:|---:|---:|"]
    for name in ops["consensus-db"]:
        r = report["ratios"][name]
        lines.append(f"| {name} | {ops['consensus-db'][name]:,.0f} | {ops['pure-python'][name]:,.0f} | "
                     f"{ops['legacy'][name]:,.0f} | {r['vs_pure_python']:.2f} | {r['vs_legacy']:.2f} |")
    lines += ["", "| target | value | |", "|---|---:|---|"]
    for c in report["checks"]:
        value = c["value"] if isinstance(c["value"], int) else f"{c['value']:.2f}"
        lines.append(f"| {c['check']} | {value} | {'met' if c['ok'] else '**below**'} |")
    return "\n".join(lines) + "\n"


def draw(report: dict, path: Path) -> Optional[Path]:
    """Ratios against the pure-Python baseline (1.0 = as fast), one bar per workload for
    consensus-db and for the legacy design, the 1.0 line drawn and each workload's
    target marked; labelled with date, machine and quick/full."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no chart; pip install matplotlib)")
        return None
    ratios = report["ratios"]
    names = list(ratios)
    width = 0.38
    fig, ax = plt.subplots(figsize=(13, 6))
    xs = range(len(names))
    ax.bar([i - width / 2 for i in xs], [ratios[n]["vs_pure_python"] for n in names], width, label="consensus-db")
    ax.bar([i + width / 2 for i in xs], [ratios[n]["vs_pure_python"] / ratios[n]["vs_legacy"] for n in names], width,
           label="legacy design")
    ax.axhline(1.0, color="black", linewidth=1, linestyle="--", label="pure-Python baseline (1.0)")
    marked = [(i, TARGETS[n]) for i, n in enumerate(names) if n in TARGETS]
    if marked:
        ax.scatter([i - width / 2 for i, _ in marked], [t for _, t in marked], marker="_", s=400, color="red",
                   zorder=3, label="target (× pure-Python)")
    ax.set_yscale("log")
    ax.set_ylabel("× the pure-Python baseline (log scale, higher is better)")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=35, ha="right", fontsize=8)
    m = report["machine"]
    ax.set_title(f"consensus-db and the legacy design vs pure-Python — {report.get('mode', 'full')} run, {m['date']}, "
                 f"{m['cpus']} CPUs, {m['platform']}", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"chart: {path}")
    return path
