"""How long a migration holds the write lane at a time: a legacy file of N artifacts (2 KB
each) moved 0 -> 1 -> 0 -> 1 -> 2 -> 1, timing the gaps between `progress` calls (each a
chunk's turn of the lane plus its checkpoint outside; the last one the snapshot check
and the end transaction). Prints per move the time, the chunks and the turns' p50 / p99 / max.

    python -m benches.migration_chunks [--legacy 200000]
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from pathlib import Path

import consensus_db

from .maintenance_stall import LEGACY_ARTIFACTS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--legacy", type=int, default=200_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "legacy.db"
        conn = sqlite3.connect(path)  # closed before the store opens the file
        conn.executescript(consensus_db._core.LEGACY_SCHEMA_SQL)
        conn.execute(LEGACY_ARTIFACTS, [args.legacy, "c" * 2000])
        conn.commit()
        conn.close()
        with consensus_db.connect(path, migrate=False) as db:
            for target in (1, 0, 1, 2, 1):
                marks: list[float] = []

                def progress(_done: int, _total: int) -> bool:
                    marks.append(time.perf_counter())
                    return True

                started = time.perf_counter()
                db.migrate(target, force=True, progress=progress)
                ended = time.perf_counter()
                gaps = sorted((b - a) * 1000 for a, b in zip([started, *marks], [*marks, ended]))
                p99 = gaps[min(len(gaps) - 1, int(len(gaps) * 0.99))]
                print(
                    f"-> {target}: {ended - started:5.1f} s, {len(marks):5} chunks; turn p50 "
                    f"{gaps[len(gaps) // 2]:5.1f} ms, p99 {p99:6.1f} ms, max {gaps[-1]:6.1f} ms",
                    flush=True,
                )


if __name__ == "__main__":
    main()
