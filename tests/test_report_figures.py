"""Maintenance reports checked against the file itself (issue 27, item 3): every figure
of ``vacuum()``, ``checkpoint()``, ``health()``, ``cleanup_old_executions`` and the
command line's vacuum line is what its name says, read back with ``os.stat`` and stdlib
``sqlite3`` (in a child process while the store is open, or after it is closed). No
field is negative unless its name says it is a change; a checkpoint that another
process's reader blocked says so.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

import consensus_db
from consensus_db.cli import main as cli
from conftest import stdlib_rows

MB = 1 << 20
CHANGES = ("page_count_change", "disk_bytes_change")


def sizes(path: Path) -> tuple:
    wal = Path(f"{path}-wal")
    return path.stat().st_size, wal.stat().st_size if wal.exists() else 0


def check_vacuum_report(r: dict, path: Path, before: tuple) -> None:
    """The report's figures against the file: sizes by os.stat, pages by stdlib sqlite3."""
    for name, value in r.items():
        if isinstance(value, int) and not isinstance(value, bool) and name not in CHANGES:
            assert value >= 0, (name, value)
    assert (r["file_bytes_before"], r["wal_bytes_before"]) == before
    assert (r["file_bytes_after"], r["wal_bytes_after"]) == sizes(path)
    assert r["disk_bytes_change"] == sum(sizes(path)) - sum(before)
    assert r["page_count_change"] == r["after"]["page_count"] - r["before"]["page_count"]
    assert r["bytes_reclaimed"] == r["pages_freed"] * r["after"]["page_size"]
    assert r["pages_freed"] == max(0, -r["page_count_change"])


def bloat(db, n_mb: int = 8) -> None:
    blob = "x" * MB
    db.store_artifacts([{"spec_id": "BIG", "stage": "plan", "agent_name": f"a{i}", "content_json": {"blob": blob}}
                        for i in range(n_mb)])
    db.store_artifact("KEEP", "plan", "gemini", {"keep": True})
    db.delete_spec_artifacts("BIG")
    db.checkpoint()


def test_vacuum_on_a_fresh_store_reports_no_negative_figure(tmp_path):
    path = tmp_path / "fresh.db"
    with consensus_db.connect(path) as db:
        before = sizes(path)
        r = db.vacuum(pages=20)
        check_vacuum_report(r, path, before)
    print(f"\nvacuum(pages=20) on a fresh store: {r}")
    assert r["pages_freed"] == 0 and r["bytes_reclaimed"] == 0 and r["checkpoint_blocked"] is None
    # The checkpoint moved the WAL into the main file: the main file grew, the WAL emptied.
    assert r["file_bytes_after"] > r["file_bytes_before"] and r["wal_bytes_after"] == 0
    assert stdlib_rows(path, "PRAGMA page_count") == [(r["after"]["page_count"],)]


def test_vacuum_on_a_bloated_store_frees_what_it_says(tmp_path):
    path = tmp_path / "bloated.db"
    with consensus_db.connect(path) as db:
        bloat(db)
        before = sizes(path)
        some = db.vacuum(pages=500)
        check_vacuum_report(some, path, before)
        before = sizes(path)
        rest = db.vacuum()
        check_vacuum_report(rest, path, before)
    print(f"\nvacuum(pages=500) on a bloated store: {some}")
    print(f"vacuum() after it: {rest}")
    # 500 free pages asked for; the file gives up the pointer-map pages that mapped them too.
    assert some["before"]["freelist_count"] - some["after"]["freelist_count"] == 500
    assert 500 <= some["pages_freed"] <= 502 and some["bytes_reclaimed"] == some["pages_freed"] * 4096
    assert some["checkpoint_blocked"] is None
    # With the WAL checkpointed whole, the main file is the database: page_count pages.
    for r in (some, rest):
        assert r["file_bytes_after"] == r["after"]["page_count"] * r["after"]["page_size"]
    assert rest["pages_freed"] > 1000 and rest["after"]["freelist_count"] == 0
    assert stdlib_rows(path, "PRAGMA freelist_count") == [(0,)]
    assert stdlib_rows(path, "PRAGMA page_count") == [(rest["after"]["page_count"],)]


READER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN")
conn.execute("SELECT count(*) FROM agent_outputs").fetchone()   # holds this snapshot of the WAL
print("reading", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
"""


def test_a_checkpoint_blocked_by_another_process_reader_says_so(tmp_path):
    path = tmp_path / "blocked.db"
    with consensus_db.connect(path, pragmas={"busy_timeout": 100}) as db:
        blob = "x" * MB
        db.store_artifacts([{"spec_id": "BIG", "stage": "plan", "agent_name": f"a{i}", "content_json": {"b": blob}}
                            for i in range(4)])
        reader = subprocess.Popen([sys.executable, "-c", READER, str(path)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert reader.stdout.readline().strip() == "reading"
            db.delete_spec_artifacts("BIG")  # frames after the reader's snapshot
            before = sizes(path)
            r = db.vacuum()
            check_vacuum_report(r, path, before)
            passive = db.checkpoint("passive")
        finally:
            reader.communicate("done\n", timeout=30)
        free = db.checkpoint()
    print(f"\nvacuum() while another process reads: pages_freed={r['pages_freed']} "
          f"file {r['file_bytes_before']} -> {r['file_bytes_after']}, WAL {r['wal_bytes_before']} -> "
          f"{r['wal_bytes_after']}, checkpoint={r['checkpoint']}, checkpoint_blocked={r['checkpoint_blocked']!r}")
    print(f"checkpoint('passive') then: {passive}; after the reader ended: {free}")
    assert r["pages_freed"] > 0 and r["checkpoint"]["busy"] == 1
    assert "another connection" in r["checkpoint_blocked"]
    assert r["file_bytes_after"] < r["after"]["page_count"] * r["after"]["page_size"] or r["wal_bytes_after"] > 0
    assert passive["checkpointed_frames"] < passive["log_frames"] and "read transaction" in passive["blocked"]
    assert free["blocked"] is None and free["busy"] == 0


def test_health_and_cleanup_figures_match_the_file(tmp_path):
    path = tmp_path / "h.db"
    with consensus_db.connect(path) as db:
        for i in range(5):
            db.record_agent_spawn(f"a{i}", "S", "plan", "quality_gate", "gemini")
        db.execute("UPDATE agent_executions SET spawned_at = '2020-01-01 00:00:00' WHERE agent_id IN ('a0', 'a1')")
        db.store_artifact("S", "plan", "gemini", "{}")
        h = db.health()
        assert (h["file_size"], h["wal_size"]) == sizes(path)
        # Another process reads the same figures while the store is open.
        seen = subprocess.run(
            [sys.executable, "-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); print([c.execute(q)"
             ".fetchone()[0] for q in sys.argv[2:]])", str(path), "PRAGMA page_count", "PRAGMA freelist_count",
             "SELECT count(*) FROM agent_executions", "SELECT count(*) FROM agent_outputs"],
            capture_output=True, text=True, check=True).stdout.strip()
        assert seen == str([h["page_count"], h["freelist_count"], h["rows"]["agent_executions"],
                            h["rows"]["agent_outputs"]])
        assert h["free_fraction"] == h["freelist_count"] / h["page_count"]
        deleted = db.cleanup_old_executions(30)
    assert deleted == 2 and stdlib_rows(path, "SELECT count(*) FROM agent_executions") == [(3,)]


def test_the_cli_vacuum_line_says_what_the_file_did(tmp_path):
    path = tmp_path / "cli.db"
    with consensus_db.connect(path) as db:
        bloat(db, 4)
    out = CliRunner().invoke(cli, ["vacuum", str(path)])
    print(f"\n{out.output}")
    assert out.exit_code == 0, out.output
    size = os.stat(path).st_size
    pages = stdlib_rows(path, "PRAGMA page_count")[0][0]
    assert size == pages * 4096
    assert "pages freed (" in out.output and "main file" in out.output and "WAL" in out.output
    assert "-" not in out.output.split("pages freed")[0]  # no negative count
