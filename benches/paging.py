"""Counting and paging one big stage: N artifacts of K KB in one spec/stage (plus a tenth
as many in another stage), written straight into the new tables by SQL. Prints, best of
a few runs each: `count_artifacts`; a page of 100 (`limit=100, after=` a cursor) at the
start, the middle and deep in the set, in both orders; the full `query_artifacts` read;
the whole stage through `iter_artifacts` — each with the process's peak RSS growth
(with `mmap_size` 0, so that the file's pages read are not counted as the process's).

    python -m benches.paging [--artifacts 200000] [--content-kb 4] [--per-run 0]

``--per-run 5`` closes a run every 5 artifacts (a synthesis each), as an orchestrator
does; 0 puts the stage in one open run. On a build without pages (before issue 28) only
the count and the full read are measured.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import consensus_db

T0 = 1_767_225_600_000  # 2026-01-01 00:00:00 UTC, in ms; row i is T0 + 10 i ms
SPEC, STAGE = "SPEC-BIG", "implement"

RUNS = (
    "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?3)"
    " INSERT INTO consensus_runs (spec_id, stage, run_timestamp, consensus_ok, degraded, synthesis_json)"
    " SELECT ?1, ?2, ?4 + i, 1, 0, CASE WHEN i + 1 < ?3 THEN '{\"output_markdown\": \"# m\"}' END FROM n"
)
OUTPUTS = (
    "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?3)"
    " INSERT INTO agent_outputs (run_id, agent_name, content, output_timestamp)"
    " SELECT (SELECT min(id) FROM consensus_runs WHERE spec_id = ?1 AND stage = ?2) + i / ?4,"
    "        'agent-' || (i % 4), '{\"n\": ' || i || ', \"pad\": \"' || ?5 || '\"}', ?6 + i * 10 FROM n"
)


def seed(db: consensus_db.Store, spec: str, stage: str, n: int, per_run: int, kb: int) -> None:
    runs = max(1, -(-n // per_run)) if per_run else 1
    db.execute(RUNS, [spec, stage, runs, T0])
    db.execute(OUTPUTS, [spec, stage, n, per_run or n, "x" * (kb * 1024), T0])


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(label: str, fn: Callable[[], object], repeat: int) -> None:
    before = rss_mb()
    times = []
    result = None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    shown = f"{len(result)} rows" if isinstance(result, list) else f"= {result}"
    best, median = min(times) * 1e3, statistics.median(times) * 1e3
    print(f"{label:44} best {best:9.2f} ms  median {median:9.2f} ms  peak RSS +{rss_mb() - before:7.0f} MB  ({shown})",
          flush=True)


def cursor_at(db: consensus_db.Store, i: int) -> str:
    """The cursor of the stage's row i (the rows' ids and times are known from the seed)."""
    first = db.query(
        "SELECT min(o.id) FROM agent_outputs o JOIN consensus_runs r ON r.id = o.run_id"
        " WHERE r.spec_id = ? AND r.stage = ?", [SPEC, STAGE]
    )[0][0]
    return consensus_db.Artifact(first + i, SPEC, STAGE, "", "", created_at_ms=T0 + i * 10).cursor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=int, default=200_000)
    parser.add_argument("--content-kb", type=int, default=4)
    parser.add_argument("--per-run", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    n = args.artifacts
    with tempfile.TemporaryDirectory(prefix="consensus-db-paging-") as tmp:
        path = Path(tmp) / "paging.db"
        started = time.perf_counter()
        with consensus_db.connect(path) as db:
            seed(db, SPEC, STAGE, n, args.per_run, args.content_kb)
            seed(db, SPEC, "other", n // 10, args.per_run, args.content_kb)
        size = path.stat().st_size / 1e6
        print(f"{n} artifacts of {args.content_kb} KB in one stage ({args.per_run or n} per run), {size:.0f} MB file,"
              f" seeded in {time.perf_counter() - started:.1f} s; consensus_db from {consensus_db.__file__}")
        with consensus_db.connect(path, pragmas={"mmap_size": 0}) as db:
            paged = "after" in (consensus_db.Store.query_artifacts.__text_signature__ or "")
            measure("count_artifacts", lambda: db.count_artifacts(SPEC, STAGE), args.repeat)
            if paged:
                for order in ("newest", "oldest"):
                    measure(f"page of 100, {order} first, first page",
                            lambda order=order: db.query_artifacts(SPEC, STAGE, order=order, limit=100), args.repeat)
                    for depth in (0.5, 0.9):
                        # Deep in the set: 90% of the rows lie before the cursor in this order.
                        row = int(n * (1 - depth)) if order == "newest" else int(n * depth)
                        after = cursor_at(db, row)
                        measure(f"page of 100, {order} first, cursor at {depth:.0%}",
                                lambda order=order, after=after: db.query_artifacts(
                                    SPEC, STAGE, order=order, limit=100, after=after),
                                args.repeat)
                measure("iter_artifacts (batch=1000), whole stage",
                        lambda: sum(1 for _ in db.iter_artifacts(SPEC, STAGE, batch=1000)), 1)
            measure("query_artifacts, whole stage", lambda: db.query_artifacts(SPEC, STAGE), min(args.repeat, 2))


if __name__ == "__main__":
    main()
