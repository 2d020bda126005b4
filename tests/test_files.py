"""consensus_db.files: what a read-write opening would convert, asked without changing the file."""

from __future__ import annotations

import hashlib
import sqlite3

import consensus_db
from consensus_db import files


def test_conversions_names_what_a_read_write_opening_would_change_and_changes_nothing(tmp_path):
    legacy = tmp_path / "legacy.db"
    conn = sqlite3.connect(legacy)
    conn.executescript(consensus_db._core.LEGACY_SCHEMA_SQL)
    conn.close()
    digest = hashlib.sha256(legacy.read_bytes()).hexdigest()
    db, journal = files.open_read_only(legacy)
    with db:
        found = files.conversions(db)
    assert journal is None
    assert found == ["schema version 0 (legacy tables only)", "auto_vacuum none", "journal mode delete"], found
    assert hashlib.sha256(legacy.read_bytes()).hexdigest() == digest
    own = tmp_path / "own.db"
    consensus_db.connect(own).close()
    db, _ = files.open_read_only(own)
    with db:
        assert files.conversions(db) == []
