//! Artifacts: each agent's output, in the run it joins. An artifact joins the newest
//! *open* run (no synthesis yet) of its (spec_id, stage, run_id); runs are made here.
//! Reads take the new tables, then the legacy rows that have no copy there (`legacy.rs`).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::LazyLock;
use std::time::Instant;

use rusqlite::types::Value;
use rusqlite::{params, OptionalExtension};

use super::database::Database;
use super::legacy::{delete_legacy, legacy_artifacts, pair_with_twin, unless_dropped, Columns, SCOPE};
use super::modes::{ReadMode, WriteMode};
use super::validate::{check_artifact, check_id};
use crate::error::{Error, Result};
use crate::model::*;
use crate::sqlite::legacy_rows;
use crate::sqlite::schema;
use crate::sqlite::transaction::Tx;

impl Database {
    /// Stores one artifact; returns its id.
    pub fn store_artifact(&self, artifact: &NewArtifact) -> Result<i64> {
        check_artifact(artifact)?;
        self.require_current()?;
        self.write_repeatable_as("store_artifact", |tx| {
            insert_artifact(tx, artifact, now_ms(), self.write_mode() == WriteMode::Dual)
        })
    }

    /// [`Database::store_artifact`] without waiting (`Engine::submit_repeatable`):
    /// `on_done` gets the id from the thread that commits it.
    pub fn submit_artifact(&self, artifact: NewArtifact, on_done: impl FnOnce(Result<i64>) + Send + 'static) {
        if let Err(e) = check_artifact(&artifact).and_then(|()| self.require_current()) {
            return on_done(Err(e));
        }
        let dual = self.write_mode() == WriteMode::Dual;
        self.submit_repeatable(move |tx| insert_artifact(tx, &artifact, now_ms(), dual), on_done)
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
        self.write_repeatable_as("store_artifacts", |tx| {
            let dual = self.write_mode() == WriteMode::Dual;
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
            if dual {
                return artifacts.iter().zip(&run_of).map(|(a, &run)| insert_dual(tx, run, a, now)).collect();
            }
            insert_outputs(tx, artifacts, &run_of, now)
        })
    }

    /// Artifacts of a spec/stage from both schemas, oldest first (ties by id).
    pub fn query_artifacts(&self, spec_id: &str, stage: &str) -> Result<Vec<Artifact>> {
        let started = Instant::now();
        let mode = self.read_mode();
        let has_v1 = mode != ReadMode::Legacy && self.v1_readable()?;
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
        if mode != ReadMode::V1 && self.layout.legacy_artifacts.load(Ordering::Acquire) {
            let read = legacy_artifacts(&conn, spec_id, stage, has_v1, columns);
            legacy = unless_dropped(&self.layout.legacy_artifacts, "consensus_artifacts", read)?;
            legacy.retain(|l| !pair_with_twin(l, &mut out));
        }
        self.reader.record(from_v1 > 0, !legacy.is_empty(), started.elapsed());
        let mut out: Vec<Artifact> = out.into_iter().map(|(a, _)| a).collect();
        if !legacy.is_empty() {
            out.extend(legacy);
            out.sort_by_key(|a| a.created_at_ms);
        }
        Ok(out)
    }

    /// How many artifacts a spec/stage has: exactly the rows [`Database::query_artifacts`]
    /// returns (a legacy row with a version-1 twin counts once).
    pub fn count_artifacts(&self, spec_id: &str, stage: &str) -> Result<usize> {
        Ok(self.query_artifacts(spec_id, stage)?.len())
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

    pub(super) fn delete_artifacts(&self, spec_id: &str, stage: Option<&str>) -> Result<usize> {
        self.require_current_if_new_tables()?;
        let has_v1 = self.layout.v1.load(Ordering::Acquire);
        let has_legacy = self.layout.legacy_artifacts.load(Ordering::Acquire);
        let args = [Value::Text(spec_id.to_owned()), opt(stage)];
        self.write_repeatable_as("delete_stage_artifacts", |tx| {
            let mut deleted = 0;
            if has_legacy {
                if has_v1 {
                    // Copies a dual-write build wrote since the last migration count once.
                    let linked = crate::sqlite::migrations::link_artifact_copies(tx, Some((spec_id, stage)));
                    unless_dropped(&self.layout.legacy_artifacts, "consensus_artifacts", linked)?;
                }
                let copies = has_v1
                    .then_some("SELECT legacy_artifact_id FROM agent_outputs WHERE legacy_artifact_id IS NOT NULL");
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
        let runs = self.write_repeatable_as("delete_runs", |tx| {
            let mut deleted = 0;
            if has_legacy {
                if has_v1 {
                    let linked = crate::sqlite::migrations::link_synthesis_copies(tx, Some((spec_id, stage)));
                    unless_dropped(&self.layout.legacy_synthesis, "consensus_synthesis", linked)?;
                }
                let copies = has_v1
                    .then_some("SELECT legacy_synthesis_id FROM consensus_runs WHERE legacy_synthesis_id IS NOT NULL");
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
}

fn opt(s: Option<&str>) -> Value {
    s.map_or(Value::Null, |s| Value::Text(s.to_owned()))
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

static OPEN_RUN: LazyLock<String> = LazyLock::new(|| schema::open_run_sql("?1", "?2", "?3"));
static V1_ARTIFACTS: LazyLock<String> = LazyLock::new(|| v1_artifacts_sql(Columns::default()));

fn open_run(tx: &Tx, spec_id: &str, stage: &str, run_id: Option<&str>) -> Result<Option<i64>> {
    Ok(tx.prepare_cached(&OPEN_RUN)?.query_row(params![spec_id, stage, run_id], |r| r.get(0)).optional()?)
}

pub(super) fn open_or_new_run(tx: &Tx, spec_id: &str, stage: &str, run_id: Option<&str>, now: i64) -> Result<i64> {
    match open_run(tx, spec_id, stage, run_id)? {
        Some(id) => Ok(id),
        None => schema::insert_run(tx, spec_id, stage, run_id, now),
    }
}

const INSERT_OUTPUT: &str =
    "INSERT INTO agent_outputs (run_id, agent_name, model_version, content, response_text, output_timestamp)
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
    tx.prepare_cached(INSERT_OUTPUT)?.execute(params![
        run,
        a.agent_name,
        a.model_version,
        a.content_json,
        a.response_text,
        now
    ])?;
    Ok(tx.last_insert_rowid())
}

fn insert_artifact(tx: &Tx, a: &NewArtifact, now: i64, dual: bool) -> Result<i64> {
    let run = open_or_new_run(tx, &a.spec_id, &a.stage, a.run_id.as_deref(), now)?;
    if dual {
        insert_dual(tx, run, a, now)
    } else {
        insert_output(tx, run, a, now)
    }
}

/// Dual write mode: the legacy row, then its new-schema copy linked to it.
fn insert_dual(tx: &Tx, run: i64, a: &NewArtifact, now: i64) -> Result<i64> {
    tx.prepare_cached(&INSERT_LEGACY_ARTIFACT)?.execute(params![
        a.spec_id,
        a.stage,
        a.agent_name,
        a.content_json,
        a.response_text,
        a.run_id,
        now,
        a.model_version
    ])?;
    let legacy_id = tx.last_insert_rowid();
    tx.prepare_cached(
        "INSERT INTO agent_outputs (run_id, agent_name, model_version, content, response_text, output_timestamp,
                legacy_artifact_id)
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )?
    .execute(params![run, a.agent_name, a.model_version, a.content_json, a.response_text, now, legacy_id])?;
    Ok(tx.last_insert_rowid())
}

static INSERT_LEGACY_ARTIFACT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO consensus_artifacts (spec_id, stage, agent_name, content_json, response_text, run_id, created_at,
                created_at_ms, model_version)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, {}, ?7, ?8)",
        legacy_rows::text_from_ms_sql("?7")
    )
});
