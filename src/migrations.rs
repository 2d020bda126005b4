//! Schema migrations: an ordered list tracked by `PRAGMA user_version`, each step
//! applied in one IMMEDIATE transaction together with the version bump, so a failure
//! or a crash leaves the previous version, unchanged.
//!
//! - 0: the legacy schema (or an empty file).
//! - 1: the normalized `consensus_runs` + `agent_outputs`, backfilled from the legacy
//!   tables, which stay for old binaries still writing during a rolling upgrade.
//! - 2: the legacy tables dropped — only when asked for, after a final backfill.

use rusqlite::Connection;

use crate::error::{Error, Result};

pub type Version = i64;

/// What `connect(migrate=True)` brings a database to.
pub const DEFAULT_VERSION: Version = 1;
/// The newest version this library knows; newer files are refused.
pub const LATEST_VERSION: Version = 2;

/// The legacy DDL, exactly as field databases have it (for tests and tools).
pub const LEGACY_SCHEMA_SQL: &str = include_str!("sql/legacy_v0.sql");
const V1_TABLES_SQL: &str = include_str!("sql/v1_tables.sql");

struct Migration {
    version: Version,
    description: &'static str,
    up: fn(&Connection) -> Result<()>,
    down: fn(&Connection) -> Result<()>,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "normalized consensus_runs + agent_outputs, backfilled from the legacy tables",
        up: up_v1,
        down: down_v1,
    },
    Migration {
        version: 2,
        description: "drop the legacy consensus_artifacts / consensus_synthesis tables",
        up: up_v2,
        down: down_v2,
    },
];

/// (version, description) of every migration, in order.
pub fn list() -> Vec<(Version, &'static str)> {
    MIGRATIONS.iter().map(|m| (m.version, m.description)).collect()
}

pub fn user_version(conn: &Connection) -> Result<Version> {
    Ok(conn.query_row("PRAGMA user_version", [], |r| r.get(0))?)
}

/// Checks the list itself: consecutive versions, and every step up and back down
/// applies cleanly on a fresh legacy database.
pub fn validate() -> Result<()> {
    for (i, m) in MIGRATIONS.iter().enumerate() {
        if m.version != i as Version + 1 {
            return Err(Error::Migration(format!("migration #{i} has version {}, expected {}", m.version, i + 1)));
        }
    }
    let conn = Connection::open_in_memory()?;
    conn.execute_batch(LEGACY_SCHEMA_SQL)?;
    migrate(&conn, LATEST_VERSION)?;
    migrate(&conn, 0)?;
    migrate(&conn, LATEST_VERSION)
}

/// Moves the schema to `target`, one step (one transaction) at a time, up or down.
pub fn migrate(conn: &Connection, target: Version) -> Result<()> {
    if !(0..=LATEST_VERSION).contains(&target) {
        return Err(Error::invalid("target", format!("schema version {target} does not exist (0..={LATEST_VERSION})")));
    }
    loop {
        let current = user_version(conn)?;
        if current > LATEST_VERSION {
            return Err(Error::SchemaTooNew { found: current, supported: LATEST_VERSION });
        }
        if current == target {
            return Ok(());
        }
        let (next, step) = if target > current {
            let m = &MIGRATIONS[current as usize];
            (m.version, m.up)
        } else {
            (current - 1, MIGRATIONS[current as usize - 1].down)
        };
        in_transaction(conn, current, next, step)?;
    }
}

fn in_transaction(conn: &Connection, from: Version, to: Version, step: fn(&Connection) -> Result<()>) -> Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = (|| {
        // Another process may have migrated while we waited for the write lock.
        if user_version(conn)? != from {
            return Ok(());
        }
        step(conn)?;
        conn.execute_batch(&format!("PRAGMA user_version = {to}"))?;
        Ok(())
    })();
    match result {
        Ok(()) => conn.execute_batch("COMMIT").map_err(Error::from),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(match e {
                e @ (Error::Busy(_) | Error::DiskFull(_) | Error::Migration(_) | Error::Corrupt(_)) => e,
                other => Error::Migration(format!("migration from version {from} to {to} failed: {other}")),
            })
        }
    }
}

fn table_exists(conn: &Connection, table: &str) -> Result<bool> {
    Ok(conn.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1")?.exists([table])?)
}

fn column_exists(conn: &Connection, table: &str, column: &str) -> Result<bool> {
    Ok(conn.prepare("SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2")?.exists([table, column])?)
}

/// Old databases predate some columns (added later by ALTER TABLE in the field).
fn add_missing_legacy_columns(conn: &Connection) -> Result<()> {
    for (table, column) in [
        ("agent_executions", "run_id"),
        ("agent_executions", "extraction_error"),
        ("consensus_artifacts", "run_id"),
        ("consensus_artifacts", "response_text"),
        ("consensus_synthesis", "run_id"),
    ] {
        if table_exists(conn, table)? && !column_exists(conn, table, column)? {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} TEXT"))?;
        }
    }
    Ok(())
}

fn up_v1(conn: &Connection) -> Result<()> {
    add_missing_legacy_columns(conn)?;
    conn.execute_batch(V1_TABLES_SQL)?;
    backfill(conn)
}

fn down_v1(conn: &Connection) -> Result<()> {
    let new_only: i64 = conn.query_row(
        "SELECT (SELECT count(*) FROM agent_outputs WHERE legacy_artifact_id IS NULL)
              + (SELECT count(*) FROM consensus_runs WHERE synthesis IS NOT NULL AND legacy_synthesis_id IS NULL)",
        [],
        |r| r.get(0),
    )?;
    if new_only > 0 {
        return Err(Error::Migration(format!(
            "refusing to migrate down to version 0: {new_only} rows exist only in the version-1 tables and would be lost"
        )));
    }
    conn.execute_batch("DROP TABLE agent_outputs; DROP TABLE consensus_runs;")?;
    Ok(())
}

fn up_v2(conn: &Connection) -> Result<()> {
    backfill(conn)?;
    conn.execute_batch("DROP TABLE IF EXISTS consensus_artifacts; DROP TABLE IF EXISTS consensus_synthesis;")?;
    Ok(())
}

fn down_v2(conn: &Connection) -> Result<()> {
    // Recreate the (empty) legacy tables for old binaries; nothing is lost.
    let ddl = LEGACY_SCHEMA_SQL
        .replace("CREATE TABLE ", "CREATE TABLE IF NOT EXISTS ")
        .replace("CREATE INDEX ", "CREATE INDEX IF NOT EXISTS ");
    conn.execute_batch(&ddl)?;
    Ok(())
}

/// SQL for a legacy `YYYY-MM-DD HH:MM:SS` (UTC) column as Unix milliseconds.
pub(crate) fn legacy_ms(col: &str) -> String {
    format!("COALESCE(CAST(ROUND((julianday({col}) - 2440587.5) * 86400000.0) AS INTEGER), 0)")
}

/// Copies every legacy row not yet in the new schema into it, then verifies that none
/// is left out. Idempotent: `legacy_*_id` records which legacy row each new row mirrors.
pub(crate) fn backfill(conn: &Connection) -> Result<()> {
    if table_exists(conn, "consensus_artifacts")? {
        backfill_artifacts(conn)?;
    }
    if table_exists(conn, "consensus_synthesis")? {
        backfill_syntheses(conn)?;
    }
    verify_backfill(conn)
}

fn backfill_artifacts(conn: &Connection) -> Result<()> {
    // One open run per (spec_id, stage, run_id) group, unless one exists already.
    let created = legacy_ms("a.created_at");
    conn.execute(
        &format!(
            "INSERT INTO consensus_runs (spec_id, stage, run_id, run_at_ms)
             SELECT a.spec_id, a.stage, a.run_id, MIN({created})
             FROM consensus_artifacts a
             WHERE NOT EXISTS (SELECT 1 FROM agent_outputs o WHERE o.legacy_artifact_id = a.id)
               AND NOT EXISTS (SELECT 1 FROM consensus_runs r WHERE r.spec_id = a.spec_id
                               AND r.stage = a.stage AND r.run_id IS a.run_id AND r.synthesis IS NULL)
             GROUP BY a.spec_id, a.stage, a.run_id"
        ),
        [],
    )?;
    conn.execute(
        &format!(
            "INSERT INTO agent_outputs (run_pk, agent_name, content, response_text, output_at_ms, legacy_artifact_id)
             SELECT (SELECT r.id FROM consensus_runs r WHERE r.spec_id = a.spec_id AND r.stage = a.stage
                     AND r.run_id IS a.run_id AND r.synthesis IS NULL ORDER BY r.id DESC LIMIT 1),
                    a.agent_name, a.content_json, a.response_text, {created}, a.id
             FROM consensus_artifacts a
             WHERE NOT EXISTS (SELECT 1 FROM agent_outputs o WHERE o.legacy_artifact_id = a.id)
             ORDER BY a.id"
        ),
        [],
    )?;
    Ok(())
}

fn backfill_syntheses(conn: &Connection) -> Result<()> {
    // A synthesis closes the newest open run of its group; otherwise it is a run of its own.
    let mut pending = conn.prepare(&format!(
        "SELECT id, spec_id, stage, run_id, output_markdown, output_path, status, artifacts_count,
                agreements, conflicts, COALESCE(degraded, 0), {}
         FROM consensus_synthesis s
         WHERE NOT EXISTS (SELECT 1 FROM consensus_runs r WHERE r.legacy_synthesis_id = s.id)
         ORDER BY id",
        legacy_ms("created_at")
    ))?;
    let mut close_run = conn.prepare(
        "UPDATE consensus_runs SET synthesis = ?5, output_path = ?6, synthesis_status = ?7,
                consensus_ok = (?7 = 'success'), artifacts_count = ?8, agreements = ?9, conflicts = ?10,
                degraded = ?11, synthesized_at_ms = ?12, legacy_synthesis_id = ?1
         WHERE id = (SELECT id FROM consensus_runs WHERE spec_id = ?2 AND stage = ?3 AND run_id IS ?4
                     AND synthesis IS NULL ORDER BY id DESC LIMIT 1)",
    )?;
    let mut new_run = conn.prepare(
        "INSERT INTO consensus_runs (legacy_synthesis_id, spec_id, stage, run_id, synthesis, output_path,
                synthesis_status, consensus_ok, artifacts_count, agreements, conflicts, degraded,
                synthesized_at_ms, run_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, (?7 = 'success'), ?8, ?9, ?10, ?11, ?12, ?12)",
    )?;
    let mut rows = pending.query([])?;
    while let Some(row) = rows.next()? {
        let values: Vec<rusqlite::types::Value> = (0..12).map(|i| row.get(i)).collect::<Result<_, _>>()?;
        let params = rusqlite::params_from_iter(values.iter());
        if close_run.execute(params)? == 0 {
            new_run.execute(rusqlite::params_from_iter(values.iter()))?;
        }
    }
    Ok(())
}

fn verify_backfill(conn: &Connection) -> Result<()> {
    for (legacy, check) in [
        (
            "consensus_artifacts",
            "SELECT count(*) FROM consensus_artifacts a
             WHERE NOT EXISTS (SELECT 1 FROM agent_outputs o WHERE o.legacy_artifact_id = a.id)",
        ),
        (
            "consensus_synthesis",
            "SELECT count(*) FROM consensus_synthesis s
             WHERE NOT EXISTS (SELECT 1 FROM consensus_runs r WHERE r.legacy_synthesis_id = s.id)",
        ),
    ] {
        if table_exists(conn, legacy)? {
            let missing: i64 = conn.query_row(check, [], |r| r.get(0))?;
            if missing != 0 {
                return Err(Error::Migration(format!("backfill verification failed: {missing} {legacy} rows have no copy")));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn legacy_db() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(LEGACY_SCHEMA_SQL).unwrap();
        conn.execute_batch(
            "INSERT INTO consensus_artifacts (spec_id, stage, agent_name, content_json, run_id, created_at)
               VALUES ('S1','plan','gemini','{\"a\":1}','r1','2025-01-02 03:04:05'),
                      ('S1','plan','claude','{\"a\":2}','r1','2025-01-02 03:04:06'),
                      ('S1','plan','code','{}',NULL,'2025-01-03 00:00:00'),
                      ('S2','tasks','gpt_pro','[]','r9','2025-02-01 00:00:00');
             INSERT INTO consensus_synthesis (spec_id, stage, output_markdown, status, degraded, run_id, created_at)
               VALUES ('S1','plan','# merged','success',0,'r1','2025-01-02 03:05:00'),
                      ('S1','plan','# again','failed',1,'r1','2025-01-02 03:06:00');",
        )
        .unwrap();
        conn
    }

    #[test]
    fn the_list_validates() {
        validate().unwrap();
    }

    #[test]
    fn backfill_groups_runs_and_keeps_every_row() {
        let conn = legacy_db();
        migrate(&conn, 1).unwrap();
        assert_eq!(user_version(&conn).unwrap(), 1);
        let outputs: i64 = conn.query_row("SELECT count(*) FROM agent_outputs", [], |r| r.get(0)).unwrap();
        assert_eq!(outputs, 4);
        // Groups: (S1,plan,r1), (S1,plan,NULL), (S2,tasks,r9), plus the second r1 synthesis.
        let runs: i64 = conn.query_row("SELECT count(*) FROM consensus_runs", [], |r| r.get(0)).unwrap();
        assert_eq!(runs, 4);
        let (n, ms): (i64, i64) = conn
            .query_row(
                "SELECT count(*), MIN(o.output_at_ms) FROM agent_outputs o JOIN consensus_runs r ON r.id = o.run_pk
                 WHERE r.run_id = 'r1' AND r.synthesis = '# merged'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((n, ms), (2, 1_735_787_045_000));
        migrate(&conn, 1).unwrap(); // idempotent
        let again: i64 = conn.query_row("SELECT count(*) FROM agent_outputs", [], |r| r.get(0)).unwrap();
        assert_eq!(again, 4);
    }

    #[test]
    fn down_to_zero_refuses_to_lose_new_rows() {
        let conn = legacy_db();
        migrate(&conn, 1).unwrap();
        conn.execute("INSERT INTO consensus_runs (spec_id, stage, run_at_ms) VALUES ('S3','plan',0)", []).unwrap();
        conn.execute(
            "INSERT INTO agent_outputs (run_pk, agent_name, content, output_at_ms) VALUES (last_insert_rowid(),'x','{}',0)",
            [],
        )
        .unwrap();
        let err = migrate(&conn, 0).unwrap_err();
        assert!(matches!(err, Error::Migration(ref m) if m.contains("1 rows")), "{err}");
        assert_eq!(user_version(&conn).unwrap(), 1);
    }

    #[test]
    fn a_failing_step_leaves_the_previous_version() {
        let conn = legacy_db();
        // A table the migration wants to create already exists: the step must fail whole.
        conn.execute_batch("CREATE TABLE agent_outputs (x)").unwrap();
        let err = migrate(&conn, 1).unwrap_err();
        assert!(matches!(err, Error::Migration(_)), "{err}");
        assert_eq!(user_version(&conn).unwrap(), 0);
        assert!(!table_exists(&conn, "consensus_runs").unwrap());
    }

    #[test]
    fn missing_legacy_columns_are_added() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE agent_executions (agent_id TEXT PRIMARY KEY, spec_id TEXT NOT NULL, stage TEXT NOT NULL,
               phase_type TEXT NOT NULL, agent_name TEXT NOT NULL, spawned_at TEXT NOT NULL, completed_at TEXT,
               response_text TEXT);
             CREATE TABLE consensus_artifacts (id INTEGER PRIMARY KEY AUTOINCREMENT, spec_id TEXT NOT NULL,
               stage TEXT NOT NULL, agent_name TEXT NOT NULL, content_json TEXT NOT NULL, response_text TEXT,
               created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
             INSERT INTO consensus_artifacts (spec_id, stage, agent_name, content_json) VALUES ('S','plan','g','{}');",
        )
        .unwrap();
        migrate(&conn, 1).unwrap();
        assert!(column_exists(&conn, "agent_executions", "extraction_error").unwrap());
        assert!(column_exists(&conn, "consensus_artifacts", "run_id").unwrap());
    }

    #[test]
    fn future_targets_are_refused() {
        let conn = Connection::open_in_memory().unwrap();
        assert!(matches!(migrate(&conn, 9), Err(Error::InvalidInput { .. })));
        conn.execute_batch("PRAGMA user_version = 7").unwrap();
        assert!(matches!(migrate(&conn, 1), Err(Error::SchemaTooNew { found: 7, supported: 2 })));
    }
}
