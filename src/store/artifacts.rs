//! Artifacts: each agent's output, in the run it joins. An artifact joins the newest
//! *open* run (no synthesis yet) of its (spec_id, stage, run_id); runs are made here.
//! Reads take the new tables, then the legacy rows that have no copy there (`legacy.rs`).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::LazyLock;
use std::time::Instant;

use rusqlite::types::Value;
use rusqlite::{params, Connection, OptionalExtension};

use super::claims::db_now;
use super::database::Database;
use super::idempotency::{self, artifact_digest, check_key, keep_ms, ARTIFACT};
use super::legacy::{
    delete_legacy, legacy_artifacts_in, legacy_fields, twins, unless_dropped, unmirrored_sql, Columns, Twins, SCOPE,
};
use super::modes::{ReadMode, WriteMode};
use super::validate::{check_artifact, check_id};
use crate::cursor::{after_sql, ArtifactKey, Page, Window};
use crate::error::{Error, Result};
use crate::model::*;
use crate::sqlite::legacy_rows;
use crate::sqlite::schema;
use crate::sqlite::transaction::Tx;

impl Database {
    /// Stores one artifact; returns its id (with an idempotency key already used for
    /// the same content: the first write's id, and nothing is written).
    pub fn store_artifact(&self, artifact: &NewArtifact) -> Result<i64> {
        self.check_new_artifact(artifact)?;
        let keep = keep_ms(self.options.idempotency_days);
        let digest = artifact.idempotency_key.as_ref().map(|_| artifact_digest(artifact));
        let offset = self.clock_offset();
        self.write_repeatable_as("store_artifact", |tx| {
            insert_keyed(tx, artifact, digest.as_deref(), (offset, keep), self.write_mode() == WriteMode::Dual)
        })
    }

    /// [`Database::store_artifact`] without waiting (`Engine::submit_repeatable`):
    /// `on_done` gets the id from the thread that commits it.
    pub fn submit_artifact(&self, artifact: NewArtifact, on_done: impl FnOnce(Result<i64>) + Send + 'static) {
        if let Err(e) = self.check_new_artifact(&artifact) {
            return on_done(Err(e));
        }
        let dual = self.write_mode() == WriteMode::Dual;
        let keep = keep_ms(self.options.idempotency_days);
        let digest = artifact.idempotency_key.as_ref().map(|_| artifact_digest(&artifact));
        let offset = self.clock_offset();
        self.submit_repeatable(move |tx| insert_keyed(tx, &artifact, digest.as_deref(), (offset, keep), dual), on_done)
    }

    fn check_new_artifact(&self, artifact: &NewArtifact) -> Result<()> {
        check_artifact(artifact)?;
        check_key("idempotency_key", artifact.idempotency_key.as_deref())?;
        self.require_current()?;
        if artifact.idempotency_key.is_some() {
            self.require_coordination("an idempotency key")?;
        }
        Ok(())
    }

    /// Stores many artifacts in one transaction: all or none. Returns their ids in order.
    pub fn store_artifacts(&self, artifacts: &[NewArtifact]) -> Result<Vec<i64>> {
        for (i, a) in artifacts.iter().enumerate() {
            check_artifact(a).and_then(|()| check_key("idempotency_key", a.idempotency_key.as_deref())).map_err(
                |e| match e {
                    Error::InvalidInput { name, message } => Error::invalid(format!("artifacts[{i}].{name}"), message),
                    other => other,
                },
            )?;
        }
        self.require_current()?;
        if artifacts.iter().any(|a| a.idempotency_key.is_some()) {
            self.require_coordination("an idempotency key")?;
            return self.store_keyed_artifacts(artifacts);
        }
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

    /// A batch with idempotency keys, in one transaction: each keyed item already
    /// written (or keyed like an earlier item of the batch, with the same content) gets
    /// the first write's id; the rest are written one by one (no multi-row INSERT). A key
    /// used with other content fails the whole batch, nothing written.
    fn store_keyed_artifacts(&self, artifacts: &[NewArtifact]) -> Result<Vec<i64>> {
        let keep = keep_ms(self.options.idempotency_days);
        let digests: Vec<Option<String>> =
            artifacts.iter().map(|a| a.idempotency_key.as_ref().map(|_| artifact_digest(a))).collect();
        self.write_repeatable_as("store_artifacts", |tx| {
            let clock = self.db_now(tx)?;
            let now = now_ms();
            // Where each item's id comes from: a key's first write, or the batch's own.
            enum From {
                Known(i64),
                Written(usize),
            }
            let mut first: HashMap<&str, (&str, usize)> = HashMap::new();
            let mut fresh: Vec<&NewArtifact> = Vec::new();
            let mut from = Vec::with_capacity(artifacts.len());
            for (a, digest) in artifacts.iter().zip(&digests) {
                let (Some(key), Some(digest)) = (a.idempotency_key.as_deref(), digest.as_deref()) else {
                    fresh.push(a);
                    from.push(From::Written(fresh.len() - 1));
                    continue;
                };
                if let Some(&(seen, at)) = first.get(key) {
                    if seen != digest {
                        return Err(idempotency::conflict(key, ARTIFACT, ARTIFACT));
                    }
                    from.push(From::Written(at));
                    continue;
                }
                match idempotency::lookup(tx, key, ARTIFACT, digest, clock, keep)? {
                    Some(id) => from.push(From::Known(id)),
                    None => {
                        fresh.push(a);
                        first.insert(key, (digest, fresh.len() - 1));
                        from.push(From::Written(fresh.len() - 1));
                    }
                }
            }
            let mut ids = Vec::with_capacity(fresh.len());
            for a in fresh {
                ids.push(insert_artifact(tx, a, now, self.write_mode() == WriteMode::Dual)?);
            }
            for (key, (digest, at)) in &first {
                idempotency::record(tx, key, ARTIFACT, digest, ids[*at], clock)?;
            }
            Ok(from
                .into_iter()
                .map(|f| match f {
                    From::Known(id) => id,
                    From::Written(at) => ids[at],
                })
                .collect())
        })
    }

    /// Artifacts of a spec/stage from both schemas, oldest first: by time, new-schema rows
    /// before legacy ones of the same millisecond, then by id (the order pages follow,
    /// `cursor.rs`). A legacy row with a new-schema twin is returned once, as the twin.
    pub fn query_artifacts(&self, spec_id: &str, stage: &str) -> Result<Vec<Artifact>> {
        self.query_artifacts_page(spec_id, stage, &Page::default())
    }

    /// [`Database::query_artifacts`] in the page's order, at most `page.limit` rows after
    /// (or before) a cursor. A page reads only its rows: keys from the indexes
    /// ([`KeyWalk`]), then those rows; the legacy half reads the rows that have no copy in
    /// the new tables (none once a migration has copied them).
    pub fn query_artifacts_page(&self, spec_id: &str, stage: &str, page: &Page) -> Result<Vec<Artifact>> {
        let window = page.artifacts(spec_id, stage)?;
        let started = Instant::now();
        let (has_new, has_legacy, columns) = self.artifact_sources()?;
        let conn = self.conn()?;
        let _snapshot = Snapshot::begin(&conn, has_new && has_legacy)?;
        // Twins are legacy rows without a copy: a full read, which reads all of those,
        // pairs only when it found some; a page pairs first (its legacy half is longer by
        // as many rows as pair).
        let pair = |conn: &Connection| -> Result<Twins> {
            if has_new && has_legacy {
                self.legacy_read(twins(conn, spec_id, stage, columns))
            } else {
                Ok(Twins::default())
            }
        };
        let mut twins = if page.everything() { Twins::default() } else { pair(&conn)? };
        let mut legacy = Vec::new();
        if has_legacy {
            // As many rows more as may pair and drop out.
            let longer = Window { limit: window.limit.map(|n| n.saturating_add(twins.pairs.len())), ..window.clone() };
            let read =
                legacy_artifacts_in(&conn, spec_id, stage, has_new, columns, (!page.everything()).then_some(&longer));
            legacy = self.legacy_read(read)?;
            if page.everything() && !legacy.is_empty() {
                twins = pair(&conn)?;
            }
        }
        // A paired legacy row is read as its twin, which takes what only it kept.
        let mut paired: HashMap<i64, (Option<String>, Option<String>)> = HashMap::new();
        legacy.retain_mut(|l| match twins.pairs.get(&l.id) {
            Some(&twin) => {
                paired.insert(twin, (l.response_text.take(), l.run_id.take()));
                false
            }
            None => true,
        });
        let mut out = Vec::new();
        if has_new {
            out = if page.everything() {
                let sql = self.sql_for_layout(&V1_ARTIFACTS, new_artifacts_sql, columns);
                new_rows(&conn, &sql, spec_id, stage, None)?
            } else {
                new_page(&conn, spec_id, stage, columns, &window)?
            };
        }
        let from_new = !out.is_empty();
        if !twins.pairs.is_empty() {
            let copies: HashMap<i64, i64> = twins.pairs.iter().map(|(&l, &v)| (v, l)).collect();
            for a in out.iter_mut().filter(|a| a.response_text.is_none() || a.run_id.is_none()) {
                let Some(&legacy_id) = copies.get(&a.id) else { continue };
                let (response_text, run_id) = match paired.remove(&a.id) {
                    Some(fields) => fields,
                    None => self.legacy_read(legacy_fields(&conn, legacy_id, columns))?,
                };
                if a.response_text.is_none() {
                    a.response_text = response_text;
                }
                if a.run_id.is_none() {
                    a.run_id = run_id;
                }
            }
        }
        self.reader.record(from_new, !legacy.is_empty(), started.elapsed());
        out.extend(legacy);
        // Sorted here rather than by ORDER BY: for a handful of rows SQLite's sorter
        // (a temp b-tree) costs more than the rest of the query.
        if window.descending {
            out.sort_unstable_by_key(|a| std::cmp::Reverse(ArtifactKey::of(a)));
        } else {
            out.sort_unstable_by_key(ArtifactKey::of);
        }
        Ok(window.finish(out))
    }

    /// How many artifacts a spec/stage has: exactly the rows [`Database::query_artifacts`]
    /// returns (a legacy row with a new-schema twin counts once), counted by SQL on the
    /// indexes: no row is read but the legacy ones without a copy in the new tables.
    pub fn count_artifacts(&self, spec_id: &str, stage: &str) -> Result<usize> {
        let started = Instant::now();
        let (has_new, has_legacy, columns) = self.artifact_sources()?;
        let conn = self.conn()?;
        let _snapshot = Snapshot::begin(&conn, has_new && has_legacy)?;
        let mut new: i64 = 0;
        if has_new {
            new = conn.prepare_cached(COUNT_NEW)?.query_row([spec_id, stage], |r| r.get(0))?;
        }
        let mut legacy: i64 = 0;
        if has_legacy {
            let sql = legacy_count_sql(has_new, columns);
            legacy = self.legacy_read(
                conn.prepare_cached(&sql)
                    .and_then(|mut s| s.query_row([spec_id, stage], |r| r.get(0)))
                    .map_err(Error::from),
            )?;
            if has_new && legacy > 0 {
                legacy -= self.legacy_read(twins(&conn, spec_id, stage, columns))?.pairs.len() as i64;
            }
        }
        // A count is a read of the schemas it found rows in, as the listing it counts.
        self.reader.record(new > 0, legacy > 0, started.elapsed());
        Ok(usize::try_from(new + legacy).unwrap_or(0))
    }

    /// Which halves an artifact read takes, and the file's columns.
    fn artifact_sources(&self) -> Result<(bool, bool, Columns)> {
        let mode = self.read_mode();
        let has_new = mode != ReadMode::Legacy && self.new_tables_readable()?;
        let has_legacy = mode != ReadMode::V1 && self.layout.legacy_artifacts.load(Ordering::Acquire);
        Ok((has_new, has_legacy, *self.layout.columns.read()))
    }

    /// A read of the legacy artifacts table, which another process may have dropped.
    fn legacy_read<T: Default>(&self, read: Result<T>) -> Result<T> {
        unless_dropped(&self.layout.legacy_artifacts, "consensus_artifacts", read)
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
        let has_new = self.layout.new_tables.load(Ordering::Acquire);
        let has_legacy = self.layout.legacy_artifacts.load(Ordering::Acquire);
        let args = [Value::Text(spec_id.to_owned()), opt(stage)];
        self.write_repeatable_as("delete_stage_artifacts", |tx| {
            let mut deleted = 0;
            if has_legacy {
                if has_new {
                    // Copies a dual-write build wrote since the last migration count once.
                    let linked = crate::sqlite::legacy_copy::link_artifact_copies(tx, Some((spec_id, stage)));
                    unless_dropped(&self.layout.legacy_artifacts, "consensus_artifacts", linked)?;
                }
                let copies = has_new
                    .then_some("SELECT legacy_artifact_id FROM agent_outputs WHERE legacy_artifact_id IS NOT NULL");
                let legacy = delete_legacy(tx, "consensus_artifacts", copies, &args);
                deleted += unless_dropped(&self.layout.legacy_artifacts, "consensus_artifacts", legacy)?;
            }
            if has_new {
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
        let has_new = self.layout.new_tables.load(Ordering::Acquire);
        let has_legacy = self.layout.legacy_synthesis.load(Ordering::Acquire);
        let args = [Value::Text(spec_id.to_owned()), opt(stage)];
        let runs = self.write_repeatable_as("delete_runs", |tx| {
            let mut deleted = 0;
            if has_legacy {
                if has_new {
                    let linked = crate::sqlite::legacy_copy::link_synthesis_copies(tx, Some((spec_id, stage)));
                    unless_dropped(&self.layout.legacy_synthesis, "consensus_synthesis", linked)?;
                }
                let copies = has_new
                    .then_some("SELECT legacy_synthesis_id FROM consensus_runs WHERE legacy_synthesis_id IS NOT NULL");
                let legacy = delete_legacy(tx, "consensus_synthesis", copies, &args);
                deleted += unless_dropped(&self.layout.legacy_synthesis, "consensus_synthesis", legacy)?;
            }
            if has_new {
                deleted += tx.execute(&format!("DELETE FROM consensus_runs WHERE {SCOPE}"), &args)?;
            }
            Ok(deleted)
        })?;
        Ok(runs)
    }
}

/// The new tables' artifacts of a spec/stage, counted on the runs' and the outputs'
/// indexes alone (`idx_consensus_spec_stage`, `idx_agent_outputs_run`).
const COUNT_NEW: &str = "SELECT count(*) FROM consensus_runs r JOIN agent_outputs o ON o.run_id = r.id
                        WHERE r.spec_id = ?1 AND r.stage = ?2";

/// The legacy artifacts of a spec/stage without a copy in the new tables, counted on
/// `idx_spec_stage` and `idx_agent_outputs_legacy_artifact` alone.
fn legacy_count_sql(has_new: bool, columns: Columns) -> String {
    format!(
        "SELECT count(*) FROM consensus_artifacts a WHERE a.spec_id = ?1 AND a.stage = ?2 {}",
        unmirrored_sql(has_new, columns)
    )
}

fn opt(s: Option<&str>) -> Value {
    s.map_or(Value::Null, |s| Value::Text(s.to_owned()))
}

/// The reads of the new tables as SQL for a file's columns; the current layout's are
/// built once (`sql_for_layout`).
fn new_artifacts_sql(columns: Columns) -> String {
    format!(
        "SELECT o.id, o.agent_name, o.content, {}, {}, o.output_timestamp, o.model_version
         FROM consensus_runs r JOIN agent_outputs o ON o.run_id = r.id
         WHERE r.spec_id = ?1 AND r.stage = ?2",
        Columns::of("o", columns.output_response_text),
        Columns::of("r", columns.run_orchestrator_id),
    )
}

/// How a page finds its keys (time, id) in the new tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyWalk {
    /// Run by run (`idx_agent_outputs_run_time`): each run of the stage is one index seek,
    /// which stops at the page's end (SQLite's ordered inner loop under LIMIT).
    ByRun,
    /// Along every output's time (`idx_agent_outputs_time`) from the cursor, keeping the
    /// stage's rows: no per-run cost, for a stage of many runs.
    ByTime,
}

/// Beyond this many runs a stage's pages walk by time: a seek per run costs ~3 µs.
const MANY_RUNS: i64 = 64;

impl KeyWalk {
    fn choose(conn: &Connection, spec_id: &str, stage: &str, window: &Window<ArtifactKey>) -> Result<KeyWalk> {
        if window.limit.is_none() {
            return Ok(KeyWalk::ByRun); // every row after the cursor: no walk stops early
        }
        let runs: i64 = conn
            .prepare_cached(
                "SELECT count(*) FROM (SELECT 1 FROM consensus_runs WHERE spec_id = ?1 AND stage = ?2 LIMIT ?3)",
            )?
            .query_row(params![spec_id, stage, MANY_RUNS + 1], |r| r.get(0))?;
        if runs <= MANY_RUNS {
            return Ok(KeyWalk::ByRun);
        }
        // A file this store never migrated may lack the index: a walk would scan the table.
        let indexed = conn
            .prepare_cached("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'idx_agent_outputs_time'")?
            .exists([])?;
        Ok(if indexed { KeyWalk::ByTime } else { KeyWalk::ByRun })
    }
}

/// A page of the new tables' rows. A walk by time passes the other stages' outputs
/// too: it goes at most [`walk_budget`] outputs past the cursor (the horizon, found on
/// the time index alone); a stage too sparse to fill its page within them is paged run
/// by run instead.
fn new_page(
    conn: &Connection,
    spec_id: &str,
    stage: &str,
    columns: Columns,
    window: &Window<ArtifactKey>,
) -> Result<Vec<Artifact>> {
    let bounded = window.from.is_some();
    if KeyWalk::choose(conn, spec_id, stage, window)? == KeyWalk::ByTime {
        let horizon = walk_horizon(conn, window)?;
        let sql = new_page_sql(columns, KeyWalk::ByTime, window.descending, bounded, horizon.is_some());
        let rows = new_rows(conn, &sql, spec_id, stage, Some((window, horizon)))?;
        if horizon.is_none() || window.limit.is_some_and(|n| rows.len() >= n) {
            return Ok(rows);
        }
    }
    let sql = new_page_sql(columns, KeyWalk::ByRun, window.descending, bounded, false);
    new_rows(conn, &sql, spec_id, stage, Some((window, None)))
}

/// The key (time, id) a walk by time stops at.
type Horizon = (i64, i64);

/// The [`walk_horizon`] on the time index alone: `?1` outputs on from the cursor (`?2`-`?4`).
fn walk_horizon_sql(descending: bool, bounded: bool) -> String {
    let dir = if descending { "DESC" } else { "ASC" };
    let bound = if bounded {
        format!("WHERE {}", after_sql("output_timestamp", "id", 0, descending, ["?2", "?3", "?4"]))
    } else {
        String::new()
    };
    format!("SELECT output_timestamp, id FROM agent_outputs {bound} ORDER BY output_timestamp {dir}, id {dir} LIMIT 1 OFFSET ?1")
}

/// How far a walk by time may go: this many outputs of any stage past the cursor.
fn walk_budget(limit: usize) -> i64 {
    i64::try_from(limit.saturating_mul(16)).unwrap_or(i64::MAX).max(4096)
}

/// The key (time, id) of the output [`walk_budget`] places past the window's cursor in
/// its direction, or None when fewer remain (the walk may then go to the end).
fn walk_horizon(conn: &Connection, window: &Window<ArtifactKey>) -> Result<Option<Horizon>> {
    let k = window.from.unwrap_or(ArtifactKey { at_ms: 0, source: 0, id: 0 });
    let budget = walk_budget(window.limit.unwrap_or(usize::MAX));
    let mut stmt = conn.prepare_cached(&walk_horizon_sql(window.descending, window.from.is_some()))?;
    let found = if window.from.is_some() {
        stmt.query_row(params![budget, k.at_ms, k.source, k.id], |r| Ok((r.get(0)?, r.get(1)?)))
    } else {
        stmt.query_row(params![budget], |r| Ok((r.get(0)?, r.get(1)?)))
    };
    Ok(found.optional()?)
}

/// A page of the new tables' rows: its keys from the indexes alone (see [`KeyWalk`]),
/// then those rows by id (CROSS JOIN: the ids drive the join, not every run of the
/// file). `?3`-`?5` are the cursor's key, `?6` the limit, `?7`-`?8` a walk's horizon.
fn new_page_sql(columns: Columns, walk: KeyWalk, descending: bool, bounded: bool, horizon: bool) -> String {
    let mut bound = if bounded {
        format!("AND {}", after_sql("o.output_timestamp", "o.id", 0, descending, ["?3", "?4", "?5"]))
    } else {
        String::new()
    };
    if horizon {
        // Not past the horizon (`?7`, `?8`): the walk's last output, included.
        let (strict, cmp) = if descending { (">", ">=") } else { ("<", "<=") };
        bound
            .push_str(&format!(" AND (o.output_timestamp {strict} ?7 OR (o.output_timestamp = ?7 AND o.id {cmp} ?8))"));
    }
    let dir = if descending { "DESC" } else { "ASC" };
    let keys = match walk {
        KeyWalk::ByRun => format!(
            "SELECT o.id FROM consensus_runs r JOIN agent_outputs o ON o.run_id = r.id
             WHERE r.spec_id = ?1 AND r.stage = ?2 {bound}
             ORDER BY o.output_timestamp {dir}, o.id {dir} LIMIT ?6"
        ),
        // Each output walked is checked by its run's id: the walk's cost is the rows it
        // passes, not the stage's runs.
        KeyWalk::ByTime => format!(
            "SELECT o.id FROM agent_outputs o
             WHERE EXISTS (SELECT 1 FROM consensus_runs r WHERE r.id = o.run_id AND r.spec_id = ?1 AND r.stage = ?2)
                   {bound}
             ORDER BY o.output_timestamp {dir}, o.id {dir} LIMIT ?6"
        ),
    };
    format!(
        "SELECT o.id, o.agent_name, o.content, {}, {}, o.output_timestamp, o.model_version
         FROM agent_outputs o CROSS JOIN consensus_runs r ON r.id = o.run_id
         WHERE o.id IN ({keys})",
        Columns::of("o", columns.output_response_text),
        Columns::of("r", columns.run_orchestrator_id),
    )
}

fn new_rows(
    conn: &Connection,
    sql: &str,
    spec_id: &str,
    stage: &str,
    page: Option<(&Window<ArtifactKey>, Option<Horizon>)>,
) -> Result<Vec<Artifact>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let map = |r: &rusqlite::Row| {
        Ok(Artifact {
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
        })
    };
    let rows = match page {
        None => stmt.query_map(params![spec_id, stage], map)?.collect::<Result<Vec<_>, _>>()?,
        Some((w, horizon)) => {
            let k = w.from.unwrap_or(ArtifactKey { at_ms: 0, source: 0, id: 0 });
            let limit = w.sql_limit();
            let mut values: Vec<&dyn rusqlite::ToSql> = vec![&spec_id, &stage, &k.at_ms, &k.source, &k.id, &limit];
            if let Some((at, id)) = &horizon {
                values.extend([at as &dyn rusqlite::ToSql, id]);
            }
            stmt.query_map(values.as_slice(), map)?.collect::<Result<Vec<_>, _>>()?
        }
    };
    Ok(rows)
}

/// A read transaction for the statements of one call, when it has several: a writer
/// between them would make the twin pairs and the rows disagree.
struct Snapshot<'c>(Option<&'c Connection>);

impl<'c> Snapshot<'c> {
    fn begin(conn: &'c Connection, needed: bool) -> Result<Snapshot<'c>> {
        if !needed {
            return Ok(Snapshot(None));
        }
        conn.execute_batch("BEGIN")?;
        Ok(Snapshot(Some(conn)))
    }
}

impl Drop for Snapshot<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.0 {
            let _ = conn.execute_batch("ROLLBACK");
        }
    }
}

static OPEN_RUN: LazyLock<String> = LazyLock::new(|| schema::open_run_sql("?1", "?2", "?3"));
static V1_ARTIFACTS: LazyLock<String> = LazyLock::new(|| new_artifacts_sql(Columns::default()));

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

/// One artifact, answered by its key when the key was used (`digest`: the artifact's,
/// when it has a key; `clock`: the store's clock offset and how long keys are kept).
fn insert_keyed(tx: &Tx, a: &NewArtifact, digest: Option<&str>, clock: (i64, i64), dual: bool) -> Result<i64> {
    let (Some(key), Some(digest)) = (a.idempotency_key.as_deref(), digest) else {
        return insert_artifact(tx, a, now_ms(), dual);
    };
    let (offset, keep) = clock;
    let now = db_now(tx, offset)?;
    if let Some(id) = idempotency::lookup(tx, key, ARTIFACT, digest, now, keep)? {
        return Ok(id);
    }
    let id = insert_artifact(tx, a, now_ms(), dual)?;
    idempotency::record(tx, key, ARTIFACT, digest, id, now)?;
    Ok(id)
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

#[cfg(test)]
mod tests {
    use super::super::legacy::{legacy_artifacts_sql, twins_sql};
    use super::*;

    /// What SQLite plans for a statement, one line per step.
    fn plan(conn: &Connection, sql: &str) -> Vec<String> {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let nulls = vec![rusqlite::types::Null; stmt.parameter_count()];
        let rows = stmt.query_map(rusqlite::params_from_iter(nulls), |r| r.get::<_, String>(3)).unwrap();
        rows.collect::<rusqlite::Result<_>>().unwrap()
    }

    /// The count and every page shape search indexes: no table is scanned, the count and
    /// the run-by-run keys read no row, a walk by time takes the time index in order
    /// between the cursor and its horizon, and a page's rows are fetched by id.
    #[test]
    fn counting_and_paging_search_indexes_only() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(schema::LEGACY_SCHEMA_SQL).unwrap();
        conn.execute_batch(
            "ALTER TABLE consensus_artifacts ADD COLUMN created_at_ms INTEGER;
             ALTER TABLE consensus_artifacts ADD COLUMN model_version TEXT;",
        )
        .unwrap();
        schema::create_current_tables(&conn).unwrap();
        let columns = Columns::default();
        let covering = |sql: &str, indexes: &[&str]| {
            let steps = plan(&conn, sql);
            for index in indexes {
                assert!(steps.iter().any(|s| s.contains(&format!("COVERING INDEX {index}"))), "{index}: {steps:?}");
            }
            assert!(steps.iter().all(|s| !s.starts_with("SCAN")), "{steps:?}");
        };
        covering(COUNT_NEW, &["idx_agent_outputs_run"]); // either of the two on run_id
        covering(&legacy_count_sql(true, columns), &["idx_spec_stage", "idx_agent_outputs_legacy_artifact"]);
        for descending in [false, true] {
            for bounded in [false, true] {
                let horizon = plan(&conn, &walk_horizon_sql(descending, bounded));
                assert!(horizon.iter().any(|s| s.contains("COVERING INDEX idx_agent_outputs_time")), "{horizon:?}");
                assert!(horizon.iter().all(|s| !s.contains("TEMP B-TREE")), "{horizon:?}");
                // By time: the index in order (no sort), from the cursor when there is one.
                let steps = plan(&conn, &new_page_sql(columns, KeyWalk::ByTime, descending, bounded, true));
                let walk = "SEARCH o USING INDEX idx_agent_outputs_time".to_owned(); // up to its horizon
                assert!(steps.iter().any(|s| s.starts_with(&walk)), "{walk}: {steps:?}");
                assert!(steps.iter().all(|s| !s.contains("TEMP B-TREE")), "{steps:?}");
                assert!(steps.iter().all(|s| !s.starts_with("SCAN") || s.starts_with(&walk)), "{steps:?}");
                let steps = plan(&conn, &new_page_sql(columns, KeyWalk::ByRun, descending, bounded, false));
                assert!(steps.iter().all(|s| !s.starts_with("SCAN")), "{steps:?}");
                assert!(steps.iter().any(|s| s.starts_with("SEARCH o USING INTEGER PRIMARY KEY")), "{steps:?}");
                let range = if !bounded {
                    "(run_id=?)"
                } else if descending {
                    "(run_id=? AND output_timestamp<?)"
                } else {
                    "(run_id=? AND output_timestamp>?)"
                };
                let keys = format!("SEARCH o USING COVERING INDEX idx_agent_outputs_run_time {range}");
                assert!(steps.contains(&keys), "{keys}: {steps:?}");
                let legacy = plan(&conn, &legacy_artifacts_sql(columns, true, Some((bounded, descending))));
                assert!(legacy.iter().all(|s| !s.starts_with("SCAN")), "{legacy:?}");
            }
        }
        let twins = plan(&conn, &twins_sql(columns));
        assert!(twins.iter().all(|s| !s.starts_with("SCAN")), "{twins:?}");
        assert_eq!(twins.iter().position(|s| s.starts_with("SEARCH a ")), Some(0), "legacy rows drive: {twins:?}");
        assert!(
            twins
                .iter()
                .any(|s| s
                    .contains("idx_agent_outputs_run_time (run_id=? AND output_timestamp>? AND output_timestamp<?)")),
            "{twins:?}"
        );
    }
}
