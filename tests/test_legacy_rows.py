"""Legacy rows that are valid SQLite but not what the code expects (issue: hardening,
item 13): a BLOB ``content_json`` or synthesis, ``degraded='yes'``, a numeric
``created_at`` (epoch seconds), a date that is no date. One such row must not hide its
neighbours: readers convert what is convertible, migrations copy the converted value
(not the poison), and the upgrade report lists every such row."""

from __future__ import annotations

import json
import sqlite3

from click.testing import CliRunner

import consensus_db
from consensus_db.cli import main as cli
from conftest import LEGACY_SCHEMA_SQL

EPOCH = 1_700_000_000  # 2023-11-14 22:13:20 UTC


def poisoned(path):
    conn = sqlite3.connect(path)
    conn.executescript(LEGACY_SCHEMA_SQL)
    rows = [
        ("gemini", '{"ok": 1}', "2025-03-01 10:00:00"),
        ("claude", b'{"blob": true}', "2025-03-01 10:00:01"),       # a BLOB
        ("code", b'{"bad": "\xff\xfe"}', "2025-03-01 10:00:02"),     # a BLOB that is not UTF-8
        ("gpt_pro", '{"epoch": true}', EPOCH),                       # Unix seconds
        ("gemini", '{"nodate": true}', "yesterday"),                 # no date
        ("claude", '{"ok": 2}', "2025-03-01 10:00:05"),
    ]
    conn.executemany("INSERT INTO consensus_artifacts (spec_id, stage, agent_name, content_json, created_at)"
                     " VALUES ('S', 'plan', ?, ?, ?)", rows)
    conn.executemany(
        "INSERT INTO consensus_synthesis (spec_id, stage, output_markdown, status, degraded, agreements, created_at)"
        " VALUES (?, 'plan', ?, 'success', ?, ?, ?)",
        [("S", b"# blob markdown", "yes", '["a"]', "2025-03-01 11:00:00"),
         ("T", "# epoch", "no", None, EPOCH + 60),
         ("U", "# odd", "maybe", None, "2025-03-01 11:00:00")])
    conn.commit()
    conn.close()


def test_one_bad_row_does_not_hide_its_neighbours_unmigrated(tmp_path):
    path = tmp_path / "poison.db"
    poisoned(path)
    with consensus_db.connect(path, migrate=False) as db:
        got = db.query_artifacts("S", "plan")
        assert len(got) == 6
        by_agent = {(a.agent_name, a.content_json): a for a in got}
        assert by_agent[("claude", '{"blob": true}')].created_at == "2025-03-01 10:00:01"
        assert by_agent[("gpt_pro", '{"epoch": true}')].created_at == "2023-11-14 22:13:20"
        assert by_agent[("gemini", '{"nodate": true}')].created_at == "1970-01-01 00:00:00"
        assert any(a.content_json == '{"bad": "\ufffd\ufffd"}' for a in got)
        s = db.query_latest_synthesis("S", "plan")
        assert (s.output_markdown, s.degraded, s.agreements) == ("# blob markdown", True, '["a"]')
        t = db.query_latest_synthesis("T", "plan")
        assert (t.degraded, t.created_at) == (False, "2023-11-14 22:14:20")
        assert db.query_latest_synthesis("U", "plan").degraded is False


def test_the_migration_copies_converted_values_and_the_upgrade_lists_the_rows(tmp_path):
    path = tmp_path / "poison.db"
    poisoned(path)
    result = CliRunner().invoke(cli, ["upgrade", str(path), "--no-backup", "--json"])
    assert result.exit_code == 0, result.output
    problems = json.loads(result.output)["legacy_row_problems"]
    listed = {(p["table"], p["id"], p["column"]) for p in problems}
    assert listed == {
        ("consensus_artifacts", 2, "content_json"), ("consensus_artifacts", 3, "content_json"),
        ("consensus_artifacts", 4, "created_at"), ("consensus_artifacts", 5, "created_at"),
        ("consensus_synthesis", 1, "output_markdown"), ("consensus_synthesis", 1, "degraded"),
        ("consensus_synthesis", 2, "created_at"), ("consensus_synthesis", 2, "degraded"),
        ("consensus_synthesis", 3, "degraded"),
    }
    assert any("means neither true nor false" in p["problem"] for p in problems)
    text = CliRunner().invoke(cli, ["upgrade", str(path), "--no-backup"])
    assert text.exit_code == 0 and "legacy rows converted to be read (9)" in text.output
    with consensus_db.connect(path) as db:
        got = db.query_artifacts("S", "plan")
        assert {a.source for a in got} == {"v1"} and len(got) == 6
        epoch = next(a for a in got if a.agent_name == "gpt_pro")
        assert epoch.created_at == "2023-11-14 22:13:20"  # not 1970: the seconds were read as seconds
        assert db.query("SELECT typeof(content) FROM agent_outputs GROUP BY 1") == [("text",)]
        s = db.query_latest_synthesis("S", "plan")
        assert (s.output_markdown, s.degraded, s.source) == ("# blob markdown", True, "v1")
        assert db.query_latest_synthesis("T", "plan").created_at == "2023-11-14 22:14:20"
