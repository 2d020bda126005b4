"""Open/close cycles on a real store file: what the pool leaves behind.

    python -m benches.pool_cycles [--cycles 100000] [--memory]

Each cycle opens the store, does one point read and closes it, then counts the files
of the database this process still holds (``/proc/self/fd``): a close that returned
with a file still open counts as one cycle left open. Reported: those cycles, RSS growth
per cycle after the first tenth (allocator warm-up), the slowest ``close()``, and the
process's CPU while idle for 3 s after the last cycle with a store kept open (a periodic
job per pool — r2d2's reaper — would show there). Linux only. Nothing here is asserted
by the test suite.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import consensus_db


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def cpu_seconds() -> float:
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def files_held(prefix: str) -> int:
    held = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith(prefix):
                held += 1
        except OSError:
            pass  # the directory's own descriptor, gone by now
    return held


def run(cycles: int, memory: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = ":memory:" if memory else str(Path(tmp) / "cycles.db")
        with consensus_db.connect(path) as db:
            db.record_agent_spawn("a1", "S", "plan", "regular_stage", "gemini")
        left_open, slowest_close = 0, 0.0
        warm = max(1, cycles // 10)
        start = time.perf_counter()
        for i in range(cycles):
            if i == warm:
                before = rss()
            db = consensus_db.connect(path)
            db.get_agent_spawn_info("a1")
            closing = time.perf_counter()
            db.close()
            slowest_close = max(slowest_close, time.perf_counter() - closing)
            if not memory and files_held(path) > 0:
                left_open += 1
        took = time.perf_counter() - start
        growth = rss() - before
        kept = consensus_db.connect(path)
        idle_from = cpu_seconds()
        time.sleep(3)
        idle = (cpu_seconds() - idle_from) / 3
        kept.close()
    return {
        "cycles": cycles,
        "database": "memory" if memory else "file",
        "us_per_cycle": round(took / cycles * 1e6, 1),
        "cycles_with_a_file_left_open": left_open,
        "slowest_close_ms": round(slowest_close * 1e3, 2),
        "rss_bytes_per_cycle": round(growth / (cycles - warm), 1),
        "idle_cpu": round(idle, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cycles", type=int, default=100_000)
    parser.add_argument("--memory", action="store_true", help="':memory:' stores instead of a file")
    args = parser.parse_args()
    print(run(args.cycles, args.memory))


if __name__ == "__main__":
    main()
