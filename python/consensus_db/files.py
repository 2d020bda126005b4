"""What may be done to a file without changing it: the rules the command line follows
before it opens a store, in the library so that every tool follows the same ones.

A read-write opening converts a file as a side effect (auto_vacuum, journal mode, the
migration of a legacy file); ``conversions`` names what it would change, and
``open_read_only`` opens a file without changing any of that.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from .errors import Error, ReadOnlyError
from .results import auto_vacuum_name
from .store import Store, connect

AUTO_VACUUM_INCREMENTAL = 2

__all__ = ["conversions", "open_read_only"]


def open_read_only(path: Path) -> tuple[Store, Optional[Path]]:
    """A read-only store on ``path``, and the hot rollback journal it rolled back first
    (None when there was none). A journal left by a writer killed mid-transaction cannot
    be rolled back read-only: one plain read-write open does that first, as any writer
    would, restoring the last committed state (it changes no setting and migrates
    nothing). Raises the store's errors (``ReadOnlyError`` when no journal explains one)."""
    try:
        return connect(path, create=False, read_only=True, migrate=False), None
    except ReadOnlyError as exc:
        journal = Path(f"{path}-journal")
        if not (journal.is_file() and journal.stat().st_size > 0):
            raise
        first = exc
    try:
        connect(path, create=False, migrate=False, pragmas={"journal_mode": None, "auto_vacuum": None}).close()
    except Error as again:
        message = f"{first}; the read-write open that would roll the journal back failed too: {again}"
        raise type(again)(message) from again
    return connect(path, create=False, read_only=True, migrate=False), journal


def conversions(db: Store) -> list[str]:
    """What opening ``db``'s file read-write would convert, one phrase each (empty: nothing):
    a legacy file's migration, its auto_vacuum, its journal mode."""
    h = db.health()
    found = []
    if h["schema_version"] == 0:
        found.append("schema version 0 (legacy tables only)")
    if h["auto_vacuum"] != AUTO_VACUUM_INCREMENTAL:
        found.append(f"auto_vacuum {auto_vacuum_name(h['auto_vacuum'])}")
    if h["journal_mode"].lower() != "wal":
        found.append(f"journal mode {h['journal_mode']}")
    return found
