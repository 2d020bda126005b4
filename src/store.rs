//! The high-level operations: agent executions (the routing table), artifacts and
//! syntheses. Each write is one IMMEDIATE transaction; each read one statement per
//! schema. Inputs are validated before anything is written.
//!
//! Runs: an artifact joins the newest *open* run (no synthesis yet) of its
//! (spec_id, stage, run_id); a synthesis closes that run, or is a run of its own.
//!
//! Reads go through the dual-schema reader: the new tables first, then legacy rows
//! that have no copy in the new tables (written by an old binary after the
//! migration), each row once, tagged with its source.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rusqlite::types::Value;
use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::sqlite::database::{Columns, Database};
use crate::error::{Error, Result};
use crate::model::*;
use crate::sqlite::legacy_rows::{self, bool_sql, ms_sql as legacy_ms};
use crate::sqlite::schema::{self, PAIR_WINDOW_MS};
use crate::sqlite::transaction::Tx;

pub const PHASE_TYPES: [&str; 2] = ["quality_gate", "regular_stage"];

#[derive(Debug, Default)]
pub(crate) struct ReaderStats {
    v1: AtomicU64,
    legacy: AtomicU64,
    empty: AtomicU64,
}

impl ReaderStats {
    fn count(&self, v1: bool, legacy: bool) {
        if v1 {
            self.v1.fetch_add(1, Ordering::Relaxed);
        }
        if legacy {
            self.legacy.fetch_add(1, Ordering::Relaxed);
        }
        if !v1 && !legacy {
            self.empty.fetch_add(1, Ordering::Relaxed);
        }
    }
}

pub fn check_id(name: &str, value: &str) -> Result<()> {
    if value.trim().is_empty() {
        return Err(Error::invalid(name, format!("must be a non-empty string, got {value:?}")));
    }
    Ok(())
}

pub fn check_json(name: &str, value: &str) -> Result<()> {
    serde_json::from_str::<serde::de::IgnoredAny>(value).map(|_| ()).map_err(|e| {
        let shown: String = value.chars().take(80).collect();
        let more = if value.chars().count() > 80 { "…" } else { "" };
        Error::invalid(name, format!("is not valid JSON ({e}): {shown:?}{more}"))
    })
}

fn check_phase_type(value: &str) -> Result<()> {
    if PHASE_TYPES.contains(&value) {
        Ok(())
    } else {
        Err(Error::invalid("phase_type", format!("{value:?} is not one of {}", PHASE_TYPES.join(", "))))
    }
}

fn check_artifact(a: &NewArtifact) -> Result<()> {
    check_id("spec_id", &a.spec_id)?;
    check_id("stage", &a.stage)?;
    check_id("agent_name", &a.agent_name)?;
    check_json("content_json", &a.content_json)
}

const NOW_TEXT: &str = "strftime('%Y-%m-%d %H:%M:%S', 'now')";

impl Database {
    /// Artifact and synthesis writes need the new tables in the current layout.
    fn require_current(&self) -> Result<()> {
        if self.layout.current.load(Ordering::Acquire) {
            return Ok(());
        }
        let why = if self.layout.v1.load(Ordering::Acquire) {
            "has the new tables in the predecessor's seed layout, without this store's columns"
        } else if self.layout.stale.load(Ordering::Acquire) {
            "has the new tables in consensus-db's first layout"
        } else {
            "is at schema version 0 (legacy)"
        };
        Err(Error::Migration(format!(
            "database {:?} {why}; call migrate() (or open it with migrate=True) before writing artifacts or syntheses",
            self.path
        )))
    }

    /// Whether the new tables can be read. This store's first layout cannot be read
    /// until it is migrated: refusing beats returning only the legacy half.
    fn v1_readable(&self) -> Result<bool> {
        if self.layout.stale.load(Ordering::Acquire) {
            return Err(Error::Migration(format!(
                "database {:?} has the new tables in consensus-db's first layout; open it once with migrate=True \
                 (or call migrate()) to read them",
                self.path
            )));
        }
        Ok(self.layout.v1.load(Ordering::Acquire))
    }

    /// A read's SQL: built once for the current layout, per call for a file that
    /// lacks some of this store's columns (a seed file opened without migrating).
    fn sql_for_layout(&self, current: &'static LazyLock<String>, build: fn(Columns) -> String, columns: Columns) -> Cow<'static, str> {
        if self.layout.current.load(Ordering::Acquire) {
            Cow::Borrowed(current.as_str())
        } else {
            Cow::Owned(build(columns))
        }
    }

    /// Deletes touch every table: a file whose new tables are not current is migrated first.
    fn require_current_if_new_tables(&self) -> Result<()> {
        if self.layout.v1.load(Ordering::Acquire) || self.layout.stale.load(Ordering::Acquire) {
            self.require_current()?;
        }
        Ok(())
    }

    /// Writes that need a column an old, unmigrated file predates.
    fn require_column(&self, column: &str, table_column: &str) -> Result<()> {
        if column != Columns::MISSING {
            return Ok(());
        }
        Err(Error::Migration(format!(
            "database {:?} predates the {table_column} column (an old legacy shape); call migrate() first",
            self.path
        )))
    }

    // ---- agent executions -------------------------------------------------------

    /// Records a spawned agent. Recording the same `agent_id` again starts it afresh.
    pub fn record_agent_spawn(
        &self,
        agent_id: &str,
        spec_id: &str,
        stage: &str,
        phase_type: &str,
        agent_name: &str,
        run_id: Option<&str>,
    ) -> Result<()> {
        check_id("agent_id", agent_id)?;
        check_id("spec_id", spec_id)?;
        check_id("stage", stage)?;
        check_phase_type(phase_type)?;
        check_id("agent_name", agent_name)?;
        self.require_column(self.layout.columns.read().execution_run_id, "agent_executions.run_id")?;
        self.write(|tx| {
            tx.prepare_cached(&format!(
                "INSERT INTO agent_executions (agent_id, spec_id, stage, phase_type, agent_name, run_id, spawned_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, {NOW_TEXT})
                 ON CONFLICT(agent_id) DO UPDATE SET spec_id = excluded.spec_id, stage = excluded.stage,
                   phase_type = excluded.phase_type, agent_name = excluded.agent_name, run_id = excluded.run_id,
                   spawned_at = excluded.spawned_at, completed_at = NULL, response_text = NULL,
                   extraction_error = NULL"
            ))?
            .execute(params![agent_id, spec_id, stage, phase_type, agent_name, run_id])?;
            Ok(())
        })
    }

    /// `(phase_type, stage)` of a spawned agent — the completion-routing hot path.
    pub fn get_agent_spawn_info(&self, agent_id: &str) -> Result<Option<(String, String)>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached("SELECT phase_type, stage FROM agent_executions WHERE agent_id = ?1")?;
        Ok(stmt.query_row([agent_id], |r| Ok((r.get(0)?, r.get(1)?))).optional()?)
    }

    pub fn get_agent_name(&self, agent_id: &str) -> Result<Option<String>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached("SELECT agent_name FROM agent_executions WHERE agent_id = ?1")?;
        Ok(stmt.query_row([agent_id], |r| r.get(0)).optional()?)
    }

    /// Marks an agent completed. Returns whether the agent was known.
    pub fn record_agent_completion(&self, agent_id: &str, response_text: &str) -> Result<bool> {
        check_id("agent_id", agent_id)?;
        self.write(|tx| {
            let n = tx
                .prepare_cached(&format!(
                    "UPDATE agent_executions SET completed_at = {NOW_TEXT}, response_text = ?2 WHERE agent_id = ?1"
                ))?
                .execute(params![agent_id, response_text])?;
            Ok(n > 0)
        })
    }

    /// Marks an agent completed with output that could not be parsed. Returns whether
    /// the agent was known.
    pub fn record_extraction_failure(&self, agent_id: &str, response_text: &str, extraction_error: &str) -> Result<bool> {
        check_id("agent_id", agent_id)?;
        check_id("extraction_error", extraction_error)?;
        let columns = *self.layout.columns.read();
        self.require_column(columns.execution_extraction_error, "agent_executions.extraction_error")?;
        self.write(|tx| {
            let n = tx
                .prepare_cached(&format!(
                    "UPDATE agent_executions SET completed_at = {NOW_TEXT}, response_text = ?2, extraction_error = ?3
                     WHERE agent_id = ?1"
                ))?
                .execute(params![agent_id, response_text, extraction_error])?;
            Ok(n > 0)
        })
    }

    /// Extraction failures of a spec, oldest spawn first.
    pub fn query_extraction_failures(&self, spec_id: &str) -> Result<Vec<ExtractionFailure>> {
        let columns = *self.layout.columns.read();
        if columns.execution_extraction_error == Columns::MISSING {
            return Ok(Vec::new()); // a file without the column has never recorded a failure
        }
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT agent_id, spec_id, stage, phase_type, agent_name, {}, spawned_at, completed_at,
                    response_text, extraction_error
             FROM agent_executions WHERE spec_id = ?1 AND extraction_error IS NOT NULL
             ORDER BY spawned_at, agent_id",
            columns.execution_run_id
        ))?;
        let rows = stmt.query_map([spec_id], |r| {
            Ok(ExtractionFailure {
                agent_id: r.get(0)?,
                spec_id: r.get(1)?,
                stage: r.get(2)?,
                phase_type: r.get(3)?,
                agent_name: r.get(4)?,
                run_id: r.get(5)?,
                spawned_at: r.get(6)?,
                completed_at: r.get(7)?,
                response_text: r.get(8)?,
                extraction_error: r.get(9)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Deletes executions spawned more than `days` days ago; returns how many.
    pub fn cleanup_old_executions(&self, days: i64) -> Result<usize> {
        crate::sqlite::maintenance::cleanup_executions(&*self.conn()?, days)
    }

    // ---- artifacts --------------------------------------------------------------

    /// Stores one artifact; returns its id.
    pub fn store_artifact(&self, artifact: &NewArtifact) -> Result<i64> {
        check_artifact(artifact)?;
        self.require_current()?;
        self.write(|tx| insert_artifact(tx, artifact, now_ms()))
    }

    /// Stores many artifacts in one transaction: all or none. Returns their ids in order.
    pub fn store_artifacts(&self, artifacts: &[NewArtifact]) -> Result<Vec<i64>> {
        for (i, a) in artifacts.iter().enumerate() {
            check_artifact(a).map_err(|e| match e {
                Error::InvalidInput { name, message } => Error::invalid(format!("artifacts[{i}].{name}"), message),
                other => other,
            })?;
        }
        self.require_current()?;
        let now = now_ms();
        self.write(|tx| {
            // Within one transaction a group's open run cannot change: look it up once.
            let mut runs: HashMap<(&str, &str, Option<&str>), i64> = HashMap::new();
            let mut run_of = Vec::with_capacity(artifacts.len());
            for a in artifacts {
                let key = (a.spec_id.as_str(), a.stage.as_str(), a.run_id.as_deref());
                let run = match runs.get(&key) {
                    Some(&run) => run,
                    None => {
                        let run = open_or_new_run(tx, key.0, key.1, key.2, now)?;
                        runs.insert(key, run);
                        run
                    }
                };
                run_of.push(run);
            }
            insert_outputs(tx, artifacts, &run_of, now)
        })
    }

    /// Artifacts of a spec/stage from both schemas, oldest first (ties by id).
    pub fn query_artifacts(&self, spec_id: &str, stage: &str) -> Result<Vec<Artifact>> {
        let has_v1 = self.v1_readable()?;
        let conn = self.conn()?;
        let columns = *self.layout.columns.read();
        let mut out = Vec::new();
        if has_v1 {
            let mut stmt = conn.prepare_cached(&self.sql_for_layout(&V1_ARTIFACTS, v1_artifacts_sql, columns))?;
            let rows = stmt.query_map([spec_id, stage], |r| {
                let artifact = Artifact {
                    id: r.get(0)?,
                    spec_id: spec_id.to_owned(),
                    stage: stage.to_owned(),
                    agent_name: r.get(1)?,
                    content_json: legacy_rows::text_or_empty(r, 2)?,
                    response_text: legacy_rows::text(r, 3)?,
                    run_id: r.get(4)?,
                    created_at_ms: r.get(5)?,
                    model_version: r.get(6)?,
                    source: SOURCE_V1,
                };
                Ok((artifact, r.get::<_, bool>(7)?))
            })?;
            for row in rows {
                out.push(row?);
            }
            // Sorted here rather than by ORDER BY: for a handful of rows SQLite's sorter
            // (a temp b-tree) costs more than the rest of the query.
            out.sort_unstable_by_key(|(a, _)| (a.created_at_ms, a.id));
        }
        let from_v1 = out.len();
        let mut legacy = Vec::new();
        if self.layout.legacy_artifacts.load(Ordering::Acquire) {
            let read = legacy_artifacts(&conn, spec_id, stage, has_v1, columns);
            legacy = unless_dropped(&self.layout.legacy_artifacts, "consensus_artifacts", read)?;
            legacy.retain(|l| !pair_with_twin(l, &mut out));
        }
        self.reader.count(from_v1 > 0, !legacy.is_empty());
        let mut out: Vec<Artifact> = out.into_iter().map(|(a, _)| a).collect();
        if !legacy.is_empty() {
            out.extend(legacy);
            out.sort_by_key(|a| a.created_at_ms);
        }
        Ok(out)
    }

    /// Deletes every artifact of a spec (both schemas); returns how many.
    pub fn delete_spec_artifacts(&self, spec_id: &str) -> Result<usize> {
        check_id("spec_id", spec_id)?;
        self.delete_artifacts(spec_id, None)
    }

    /// Deletes every artifact of a spec's stage (both schemas); returns how many.
    pub fn delete_stage_artifacts(&self, spec_id: &str, stage: &str) -> Result<usize> {
        check_id("spec_id", spec_id)?;
        check_id("stage", stage)?;
        self.delete_artifacts(spec_id, Some(stage))
    }

    fn delete_artifacts(&self, spec_id: &str, stage: Option<&str>) -> Result<usize> {
        self.require_current_if_new_tables()?;
        let has_v1 = self.layout.v1.load(Ordering::Acquire);
        let has_legacy = self.layout.legacy_artifacts.load(Ordering::Acquire);
        let args = [Value::Text(spec_id.to_owned()), opt(stage)];
        self.write(|tx| {
            let mut deleted = 0;
            if has_legacy {
                if has_v1 {
                    // Copies a dual-write build wrote since the last migration count once.
                    let linked = crate::sqlite::migrations::link_artifact_copies(tx, Some((spec_id, stage)));
                    unless_dropped(&self.layout.legacy_artifacts, "consensus_artifacts", linked)?;
                }
                let copies = has_v1.then_some("SELECT legacy_artifact_id FROM agent_outputs WHERE legacy_artifact_id IS NOT NULL");
                let legacy = delete_legacy(tx, "consensus_artifacts", copies, &args);
                deleted += unless_dropped(&self.layout.legacy_artifacts, "consensus_artifacts", legacy)?;
            }
            if has_v1 {
                deleted += tx.execute(
                    &format!("DELETE FROM agent_outputs WHERE run_id IN (SELECT id FROM consensus_runs WHERE {SCOPE})"),
                    &args,
                )?;
                // Open runs left without outputs have nothing to say any more.
                tx.execute(
                    &format!(
                        "DELETE FROM consensus_runs WHERE {SCOPE} AND synthesis_json IS NULL
                         AND NOT EXISTS (SELECT 1 FROM agent_outputs o WHERE o.run_id = consensus_runs.id)"
                    ),
                    &args,
                )?;
            }
            Ok(deleted)
        })
    }

    /// Deletes whole runs (their syntheses and outputs) of a spec, or of one stage,
    /// from both schemas. Returns the number of runs (legacy syntheses included) deleted.
    pub fn delete_runs(&self, spec_id: &str, stage: Option<&str>) -> Result<usize> {
        check_id("spec_id", spec_id)?;
        self.require_current_if_new_tables()?;
        // Legacy artifacts have no run to cascade from.
        self.delete_artifacts(spec_id, stage)?;
        let has_v1 = self.layout.v1.load(Ordering::Acquire);
        let has_legacy = self.layout.legacy_synthesis.load(Ordering::Acquire);
        let args = [Value::Text(spec_id.to_owned()), opt(stage)];
        let runs = self.write(|tx| {
            let mut deleted = 0;
            if has_legacy {
                if has_v1 {
                    let linked = crate::sqlite::migrations::link_synthesis_copies(tx, Some((spec_id, stage)));
                    unless_dropped(&self.layout.legacy_synthesis, "consensus_synthesis", linked)?;
                }
                let copies = has_v1.then_some("SELECT legacy_synthesis_id FROM consensus_runs WHERE legacy_synthesis_id IS NOT NULL");
                let legacy = delete_legacy(tx, "consensus_synthesis", copies, &args);
                deleted += unless_dropped(&self.layout.legacy_synthesis, "consensus_synthesis", legacy)?;
            }
            if has_v1 {
                deleted += tx.execute(&format!("DELETE FROM consensus_runs WHERE {SCOPE}"), &args)?;
            }
            Ok(deleted)
        })?;
        Ok(runs)
    }

    // ---- synthesis --------------------------------------------------------------

    /// Stores a synthesis, closing the newest open run of its spec/stage/run_id (or
    /// starting a run of its own); returns the run's id.
    pub fn store_synthesis(&self, s: &NewSynthesis) -> Result<i64> {
        check_id("spec_id", &s.spec_id)?;
        check_id("stage", &s.stage)?;
        check_id("status", &s.status)?;
        if let Some(n) = s.artifacts_count {
            if n < 0 {
                return Err(Error::invalid("artifacts_count", format!("must be zero or more, got {n}")));
            }
        }
        self.require_current()?;
        let now = now_ms();
        self.write(|tx| {
            let run = open_or_new_run(tx, &s.spec_id, &s.stage, s.run_id.as_deref(), now)?;
            tx.prepare_cached(&CLOSE_RUN)?
            .execute(params![
                run,
                s.output_markdown,
                s.output_path,
                s.status,
                s.artifacts_count,
                s.agreements,
                s.conflicts,
                s.degraded,
                now
            ])?;
            Ok(run)
        })
    }

    /// The newest synthesis of a spec/stage from either schema.
    pub fn query_latest_synthesis(&self, spec_id: &str, stage: &str) -> Result<Option<Synthesis>> {
        let has_v1 = self.v1_readable()?;
        let conn = self.conn()?;
        let columns = *self.layout.columns.read();
        let mut found = if has_v1 {
            let sql = self.sql_for_layout(&V1_LATEST_SYNTHESIS, v1_latest_synthesis_sql, columns);
            v1_latest_synthesis(&conn, &sql, spec_id, stage)?
        } else {
            None
        };
        let from_v1 = found.is_some();
        if self.layout.legacy_synthesis.load(Ordering::Acquire) {
            let read = legacy_latest_synthesis(&conn, spec_id, stage, has_v1, columns);
            if let Some(l) = unless_dropped(&self.layout.legacy_synthesis, "consensus_synthesis", read)? {
                match found.as_mut() {
                    // The same synthesis, written to both schemas by a dual-write build.
                    Some(f) if is_synthesis_twin(&l, f) => {
                        if f.run_id.is_none() {
                            f.run_id = l.run_id;
                        }
                    }
                    Some(f) if l.created_at_ms <= f.created_at_ms => {}
                    _ => found = Some(l),
                }
            }
        }
        let from_legacy = found.as_ref().is_some_and(|f| f.source == SOURCE_LEGACY);
        self.reader.count(from_v1 && !from_legacy, from_legacy);
        Ok(found)
    }

    /// How often each schema served the dual-schema reader.
    pub fn reader_counts(&self) -> ReaderCounts {
        ReaderCounts {
            v1: self.reader.v1.load(Ordering::Relaxed),
            legacy: self.reader.legacy.load(Ordering::Relaxed),
            empty: self.reader.empty.load(Ordering::Relaxed),
        }
    }
}

/// A legacy table that another process dropped (`migrate(2)`) while this store was open
/// reads as empty, and the layout is corrected so later reads skip it.
fn unless_dropped<T: Default>(present: &AtomicBool, table: &str, read: Result<T>) -> Result<T> {
    match read {
        Err(Error::Sqlite(message)) if message.contains(&format!("no such table: {table}")) => {
            present.store(false, Ordering::Release);
            Ok(T::default())
        }
        other => other,
    }
}

/// The rows a delete covers: a spec (`?2` NULL) or one of its stages.
const SCOPE: &str = "spec_id = ?1 AND (?2 IS NULL OR stage = ?2)";

/// Deletes a spec's (or stage's) rows from a legacy table. Returns how many had no copy
/// in the new schema (`copies` selects the ids that have one; those are counted there).
fn delete_legacy(tx: &Tx, table: &str, copies: Option<&str>, args: &[Value]) -> Result<usize> {
    let uncopied = match copies {
        Some(ids) => tx.execute(&format!("DELETE FROM {table} WHERE {SCOPE} AND id NOT IN ({ids})"), args)?,
        None => 0,
    };
    let rest = tx.execute(&format!("DELETE FROM {table} WHERE {SCOPE}"), args)?;
    Ok(if copies.is_some() { uncopied } else { rest })
}

fn opt(s: Option<&str>) -> Value {
    s.map_or(Value::Null, |s| Value::Text(s.to_owned()))
}

/// A legacy synthesis row.
fn legacy_synthesis_row(r: &Row, spec_id: &str, stage: &str) -> rusqlite::Result<Synthesis> {
    Ok(Synthesis {
        id: r.get(0)?,
        spec_id: spec_id.to_owned(),
        stage: stage.to_owned(),
        output_markdown: legacy_rows::text_or_empty(r, 1)?,
        output_path: legacy_rows::text(r, 2)?,
        status: legacy_rows::text_or_empty(r, 3)?,
        artifacts_count: legacy_rows::integer(r, 4)?,
        agreements: legacy_rows::text(r, 5)?,
        conflicts: legacy_rows::text(r, 6)?,
        degraded: r.get(7)?,
        run_id: legacy_rows::text(r, 8)?,
        created_at_ms: r.get(9)?,
        source: SOURCE_LEGACY,
    })
}

/// The reads of the new tables as SQL for a file's columns; the current layout's are
/// built once (`sql_for_layout`).
fn v1_artifacts_sql(columns: Columns) -> String {
    format!(
        "SELECT o.id, o.agent_name, o.content, {}, {}, o.output_timestamp, o.model_version, {} IS NULL
         FROM consensus_runs r JOIN agent_outputs o ON o.run_id = r.id
         WHERE r.spec_id = ?1 AND r.stage = ?2",
        Columns::of("o", columns.output_response_text),
        Columns::of("r", columns.run_orchestrator_id),
        Columns::of("o", columns.output_legacy_id)
    )
}

fn v1_latest_synthesis_sql(columns: Columns) -> String {
    let at = match columns.run_synthesized_at {
        Columns::MISSING => "run_timestamp".to_owned(),
        column => format!("COALESCE({column}, run_timestamp)"),
    };
    // The newest by a scalar max, not ORDER BY: SQLite would sort the spec/stage's
    // syntheses in a temp b-tree, which costs more than the two index scans.
    format!(
        "SELECT id, synthesis_json, COALESCE(degraded, 0), {}, {at}
         FROM consensus_runs WHERE spec_id = ?1 AND stage = ?2 AND synthesis_json IS NOT NULL
           AND {at} = (SELECT max({at}) FROM consensus_runs
                       WHERE spec_id = ?1 AND stage = ?2 AND synthesis_json IS NOT NULL)
         ORDER BY id DESC LIMIT 1",
        columns.run_orchestrator_id,
    )
}

/// A synthesis kept as the plan's JSON object. Its fields come back as the API's text:
/// a JSON string as itself, anything else (the arrays a predecessor wrote, say) as its
/// JSON text. Text that is not a JSON object is returned whole as the markdown.
fn synthesis_from_json(r: &Row, spec_id: &str, stage: &str) -> rusqlite::Result<Synthesis> {
    let raw: String = r.get(1)?;
    let object = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&raw).ok();
    let text = |key: &str| -> Option<String> {
        match object.as_ref()?.get(key)? {
            serde_json::Value::Null => None,
            serde_json::Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        }
    };
    Ok(Synthesis {
        id: r.get(0)?,
        spec_id: spec_id.to_owned(),
        stage: stage.to_owned(),
        output_markdown: if object.is_some() { text("output_markdown").unwrap_or_default() } else { raw.clone() },
        output_path: text("output_path"),
        status: text("status").unwrap_or_default(),
        artifacts_count: object.as_ref().and_then(|o| o.get("artifacts_count")?.as_i64()),
        agreements: text("agreements"),
        conflicts: text("conflicts"),
        degraded: r.get(2)?,
        run_id: r.get(3)?,
        created_at_ms: r.get(4)?,
        source: SOURCE_V1,
    })
}

static OPEN_RUN: LazyLock<String> = LazyLock::new(|| schema::open_run_sql("?1", "?2", "?3"));
static CLOSE_RUN: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE consensus_runs SET synthesis_json = {}, consensus_ok = (?4 = 'success'), degraded = ?8,
                synthesized_at = ?9
         WHERE id = ?1",
        schema::synthesis_json_sql("?2", "?3", "?4", "?5", "?6", "?7")
    )
});
static V1_ARTIFACTS: LazyLock<String> = LazyLock::new(|| v1_artifacts_sql(Columns::default()));
static V1_LATEST_SYNTHESIS: LazyLock<String> = LazyLock::new(|| v1_latest_synthesis_sql(Columns::default()));

fn v1_latest_synthesis(conn: &Connection, sql: &str, spec_id: &str, stage: &str) -> Result<Option<Synthesis>> {
    let mut stmt = conn.prepare_cached(sql)?;
    Ok(stmt.query_row([spec_id, stage], |r| synthesis_from_json(r, spec_id, stage)).optional()?)
}

/// A legacy synthesis and the new-schema row a dual-write build wrote with it.
fn is_synthesis_twin(legacy: &Synthesis, v1: &Synthesis) -> bool {
    legacy.output_markdown == v1.output_markdown && (v1.created_at_ms - legacy.created_at_ms).abs() <= PAIR_WINDOW_MS
}

/// Finds, among the new-schema rows not linked to a legacy row, the copy of `legacy`
/// that a dual-write build wrote (same agent and content, within the pairing window,
/// nearest first); takes it, filling in what only the legacy copy kept. Returns
/// whether there was one.
fn pair_with_twin(legacy: &Artifact, v1: &mut [(Artifact, bool)]) -> bool {
    let twin = v1
        .iter_mut()
        .filter(|(a, unlinked)| {
            *unlinked
                && a.agent_name == legacy.agent_name
                && a.content_json == legacy.content_json
                && (a.created_at_ms - legacy.created_at_ms).abs() <= PAIR_WINDOW_MS
        })
        .min_by_key(|(a, _)| ((a.created_at_ms - legacy.created_at_ms).abs(), a.id));
    match twin {
        Some((a, unlinked)) => {
            *unlinked = false;
            if a.response_text.is_none() {
                a.response_text.clone_from(&legacy.response_text);
            }
            if a.run_id.is_none() {
                a.run_id.clone_from(&legacy.run_id);
            }
            true
        }
        None => false,
    }
}

/// The newest legacy synthesis (written by an old binary) that has no copy in the new schema.
fn legacy_latest_synthesis(
    conn: &Connection,
    spec_id: &str,
    stage: &str,
    has_v1: bool,
    columns: Columns,
) -> Result<Option<Synthesis>> {
    let unmirrored = if has_v1 && columns.run_legacy_id != Columns::MISSING {
        "AND NOT EXISTS (SELECT 1 FROM consensus_runs r WHERE r.legacy_synthesis_id = s.id)"
    } else {
        ""
    };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT id, output_markdown, output_path, status, artifacts_count, agreements, conflicts, {}, {}, {} AS at
         FROM consensus_synthesis s WHERE spec_id = ?1 AND stage = ?2 {unmirrored}
         ORDER BY at DESC, id DESC LIMIT 1",
        bool_sql("degraded"),
        columns.synthesis_run_id,
        legacy_ms("created_at")
    ))?;
    Ok(stmt.query_row([spec_id, stage], |r| legacy_synthesis_row(r, spec_id, stage)).optional()?)
}

fn legacy_artifacts(
    conn: &Connection,
    spec_id: &str,
    stage: &str,
    has_v1: bool,
    columns: Columns,
) -> Result<Vec<Artifact>> {
    let unmirrored = if has_v1 && columns.output_legacy_id != Columns::MISSING {
        "AND NOT EXISTS (SELECT 1 FROM agent_outputs o WHERE o.legacy_artifact_id = a.id)"
    } else {
        ""
    };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT a.id, a.agent_name, a.content_json, {}, {}, {}
         FROM consensus_artifacts a WHERE a.spec_id = ?1 AND a.stage = ?2 {unmirrored}
         ORDER BY 6, a.id",
        columns.artifact_response_text,
        columns.artifact_run_id,
        legacy_ms("a.created_at")
    ))?;
    let rows = stmt.query_map([spec_id, stage], |r| {
        Ok(Artifact {
            id: r.get(0)?,
            spec_id: spec_id.to_owned(),
            stage: stage.to_owned(),
            agent_name: legacy_rows::text_or_empty(r, 1)?,
            content_json: legacy_rows::text_or_empty(r, 2)?,
            response_text: legacy_rows::text(r, 3)?,
            run_id: legacy_rows::text(r, 4)?,
            created_at_ms: r.get(5)?,
            model_version: None,
            source: SOURCE_LEGACY,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn open_run(tx: &Tx, spec_id: &str, stage: &str, run_id: Option<&str>) -> Result<Option<i64>> {
    Ok(tx
        .prepare_cached(&OPEN_RUN)?
        .query_row(params![spec_id, stage, run_id], |r| r.get(0))
        .optional()?)
}

fn open_or_new_run(tx: &Tx, spec_id: &str, stage: &str, run_id: Option<&str>, now: i64) -> Result<i64> {
    match open_run(tx, spec_id, stage, run_id)? {
        Some(id) => Ok(id),
        None => schema::insert_run(tx, spec_id, stage, run_id, now),
    }
}

const INSERT_OUTPUT: &str = "INSERT INTO agent_outputs (run_id, agent_name, model_version, content, response_text, output_timestamp)
     VALUES (?, ?, ?, ?, ?, ?)";

/// Rows per multi-row INSERT: one statement step per chunk instead of one per row.
const CHUNK: usize = 50;

/// Inserts a batch's outputs in chunks and returns their ids in input order. With
/// AUTOINCREMENT SQLite gives a new row the larger of the table's largest rowid and
/// the largest it ever handed out (`sqlite_sequence`) plus one, so rows inserted
/// after that `m` get m+1, m+2, … in VALUES order; `last_insert_rowid` confirms it.
fn insert_outputs(tx: &Tx, artifacts: &[NewArtifact], run_of: &[i64], now: i64) -> Result<Vec<i64>> {
    let n = artifacts.len() as i64;
    let before: i64 = tx
        .prepare_cached(
            "SELECT max(coalesce((SELECT max(id) FROM agent_outputs), 0),
                        coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'agent_outputs'), 0))",
        )?
        .query_row([], |r| r.get(0))?;
    if before > i64::MAX - n {
        return Err(Error::DiskFull(format!(
            "agent_outputs ids are exhausted: the largest id handed out is {before}, and {n} more do not fit (ids are never reused)"
        )));
    }
    for (chunk, runs) in artifacts.chunks(CHUNK).zip(run_of.chunks(CHUNK)) {
        // Cached like any statement (a batch has at most two chunk lengths).
        let sql = format!("{INSERT_OUTPUT}{}", ", (?, ?, ?, ?, ?, ?)".repeat(chunk.len() - 1));
        let mut insert = tx.prepare_cached(&sql)?;
        let mut values: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(chunk.len() * 6);
        for (a, run) in chunk.iter().zip(runs) {
            values.extend_from_slice(&[run, &a.agent_name, &a.model_version, &a.content_json, &a.response_text, &now]);
        }
        insert.execute(values.as_slice())?;
    }
    let last = tx.last_insert_rowid();
    if !artifacts.is_empty() && last != before + n {
        return Err(Error::Internal(format!("batch ids: expected the last to be {}, SQLite says {last}", before + n)));
    }
    Ok((before + 1..=before + n).collect())
}

fn insert_output(tx: &Tx, run: i64, a: &NewArtifact, now: i64) -> Result<i64> {
    tx.prepare_cached(INSERT_OUTPUT)?
        .execute(params![run, a.agent_name, a.model_version, a.content_json, a.response_text, now])?;
    Ok(tx.last_insert_rowid())
}

fn insert_artifact(tx: &Tx, a: &NewArtifact, now: i64) -> Result<i64> {
    let run = open_or_new_run(tx, &a.spec_id, &a.stage, a.run_id.as_deref(), now)?;
    insert_output(tx, run, a, now)
}
