//! The dual-schema reader's legacy half: which tables and columns the file has
//! (`Layout`, `Columns`), the legacy
//! tables' reads and deletes, and the pairing of rows the predecessor wrote twice.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::RwLock;
use rusqlite::types::Value;
use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::cursor::{after_sql, ArtifactKey, Window};
use crate::error::{Error, Result};
use crate::model::*;
use crate::sqlite::legacy_rows::{self, bool_sql};
use crate::sqlite::schema::PAIR_WINDOW_MS;
use crate::sqlite::transaction::Tx;

/// Which tables the file has, in which layout; decides which paths the dual-schema
/// reader takes and whether artifact writes can go ahead.
#[derive(Debug, Default)]
pub(crate) struct Layout {
    /// The new tables are readable (the seed layout or the current one).
    pub new_tables: AtomicBool,
    /// The new tables are in the current layout: this store writes them.
    pub current: AtomicBool,
    /// The new tables are in this store's first layout, which only a migration makes
    /// readable again (a store opened with `migrate=False`, or read-only).
    pub stale: AtomicBool,
    pub legacy_artifacts: AtomicBool,
    pub legacy_synthesis: AtomicBool,
    /// The claims and idempotency tables exist (layout revision 5).
    pub coordination: AtomicBool,
    pub columns: RwLock<Columns>,
}

/// What the readers select for columns a file may lack: the column, or NULL. Old
/// legacy files predate some columns (added later by `ALTER TABLE` in the field,
/// and by the version 1 migration here); a predecessor's seed layout lacks this
/// store's columns until its layout is migrated.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Columns {
    pub artifact_run_id: &'static str,
    pub artifact_response_text: &'static str,
    pub synthesis_run_id: &'static str,
    pub execution_run_id: &'static str,
    pub execution_extraction_error: &'static str,
    pub execution_branch_id: &'static str,
    pub output_response_text: &'static str,
    pub output_legacy_id: &'static str,
    pub run_orchestrator_id: &'static str,
    pub run_legacy_id: &'static str,
    pub run_synthesized_at: &'static str,
    pub artifact_model_version: &'static str,
    pub artifact_created_ms: &'static str,
    pub synthesis_created_ms: &'static str,
    /// Whether the file has the routing reads' covering index (`route_index.sql`).
    pub routing_index: bool,
    /// Whether the file has the table of expected agents (`expected_agents.sql`).
    pub expected_agents: bool,
}

impl Default for Columns {
    fn default() -> Self {
        Columns {
            artifact_run_id: "run_id",
            artifact_response_text: "response_text",
            synthesis_run_id: "run_id",
            execution_run_id: "run_id",
            execution_extraction_error: "extraction_error",
            execution_branch_id: "branch_id",
            output_response_text: "response_text",
            output_legacy_id: "legacy_artifact_id",
            run_orchestrator_id: "orchestrator_run_id",
            run_legacy_id: "legacy_synthesis_id",
            run_synthesized_at: "synthesized_at",
            artifact_model_version: "model_version",
            artifact_created_ms: "created_at_ms",
            synthesis_created_ms: "created_at_ms",
            routing_index: true,
            expected_agents: true,
        }
    }
}

impl Columns {
    pub const MISSING: &'static str = "NULL";

    /// `column` qualified by a table alias, or NULL where the file lacks it.
    /// A legacy row's time in ms: the exact one this store kept (`created_at_ms`, which
    /// old files lack), else its legacy timestamp.
    pub fn legacy_created(alias: &str, created_ms: &str) -> String {
        legacy_rows::created_ms_sql(alias, created_ms != Self::MISSING)
    }

    pub fn of(alias: &str, column: &str) -> String {
        if column == Self::MISSING {
            Self::MISSING.to_owned()
        } else {
            format!("{alias}.{column}")
        }
    }
}

/// A legacy table that another process dropped (`migrate(2)`) while this store was open
/// reads as empty, and the layout is corrected so later reads skip it.
pub(super) fn unless_dropped<T: Default>(present: &AtomicBool, table: &str, read: Result<T>) -> Result<T> {
    match read {
        Err(Error::Sqlite(message)) if message.contains(&format!("no such table: {table}")) => {
            present.store(false, Ordering::Release);
            Ok(T::default())
        }
        other => other,
    }
}

/// The rows a delete covers: a spec (`?2` NULL) or one of its stages.
pub(super) const SCOPE: &str = "spec_id = ?1 AND (?2 IS NULL OR stage = ?2)";

/// Deletes a spec's (or stage's) rows from a legacy table. Returns how many had no copy
/// in the new schema (`copies` selects the ids that have one; those are counted there).
pub(super) fn delete_legacy(tx: &Tx, table: &str, copies: Option<&str>, args: &[Value]) -> Result<usize> {
    let uncopied = match copies {
        Some(ids) => tx.execute(&format!("DELETE FROM {table} WHERE {SCOPE} AND id NOT IN ({ids})"), args)?,
        None => 0,
    };
    let rest = tx.execute(&format!("DELETE FROM {table} WHERE {SCOPE}"), args)?;
    Ok(if copies.is_some() { uncopied } else { rest })
}

/// A legacy synthesis row.
pub(super) fn legacy_synthesis_row(r: &Row, spec_id: &str, stage: &str) -> rusqlite::Result<Synthesis> {
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

/// A legacy synthesis and the new-schema row a dual-write build wrote with it.
pub(super) fn is_synthesis_twin(legacy: &Synthesis, new: &Synthesis) -> bool {
    legacy.output_markdown == new.output_markdown && (new.created_at_ms - legacy.created_at_ms).abs() <= PAIR_WINDOW_MS
}

/// The legacy artifacts of a spec/stage that a predecessor's dual-write build also wrote
/// to the new tables, without a link: each paired with its copy (legacy id -> new id).
#[derive(Debug, Default)]
pub(super) struct Twins {
    pub pairs: HashMap<i64, i64>,
}

/// Pairs each legacy row without a copy in the new tables with its twin: among the
/// new-schema rows not linked to a legacy row, one with the same agent and content
/// within the pairing window, nearest first (ties: the lower id), one to one, the
/// legacy rows taken oldest first (by time, then id). The candidates come from SQL (the
/// time window on `idx_agent_outputs_run_time`); only their ids and times are read. The
/// legacy rows drive the join, then the stage's runs, then their outputs in the window
/// (CROSS JOIN fixes that order: the planner could otherwise walk every output of an
/// agent name), so a legacy row with a copy costs one probe.
pub(super) fn twins(conn: &Connection, spec_id: &str, stage: &str, columns: Columns) -> Result<Twins> {
    let mut stmt = conn.prepare_cached(&twins_sql(columns))?;
    let mut rows = stmt.query(params![spec_id, stage, PAIR_WINDOW_MS])?;
    let mut candidates: Vec<(i64, i64, i64, i64)> = Vec::new();
    while let Some(r) = rows.next()? {
        candidates.push((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?));
    }
    let mut taken = HashSet::new();
    let mut twins = Twins::default();
    for group in candidates.chunk_by(|x, y| x.0 == y.0) {
        let (legacy_id, legacy_at) = (group[0].0, group[0].1);
        let best =
            group.iter().filter(|c| !taken.contains(&c.2)).min_by_key(|&&(_, _, id, at)| ((at - legacy_at).abs(), id));
        if let Some(&(_, _, id, _)) = best {
            taken.insert(id);
            twins.pairs.insert(legacy_id, id);
        }
    }
    Ok(twins)
}

/// The twin candidates of a spec/stage's legacy rows without a copy (`twins`).
pub(super) fn twins_sql(columns: Columns) -> String {
    let at = Columns::legacy_created("a", columns.artifact_created_ms);
    format!(
        "SELECT a.id, {at}, o.id, o.output_timestamp
         FROM consensus_artifacts a
         CROSS JOIN consensus_runs r ON r.spec_id = a.spec_id AND r.stage = a.stage
         CROSS JOIN agent_outputs o ON o.run_id = r.id
         WHERE a.spec_id = ?1 AND a.stage = ?2 {}
           AND {} IS NULL
           AND o.output_timestamp BETWEEN {at} - ?3 AND {at} + ?3
           AND o.agent_name = {}
           AND {} = {}
         ORDER BY 2, 1",
        unmirrored_sql(true, columns),
        Columns::of("o", columns.output_legacy_id),
        as_text("a.agent_name"),
        as_text("o.content"),
        as_text("a.content_json"),
    )
}

/// SQL for a column as the readers compare it: text (a BLOB's bytes, a number's
/// digits), empty when NULL.
fn as_text(col: &str) -> String {
    format!("COALESCE(CAST({col} AS TEXT), '')")
}

/// SQL keeping the legacy artifacts (`a`) that have no linked copy in the new tables.
pub(super) fn unmirrored_sql(has_new: bool, columns: Columns) -> &'static str {
    if has_new && columns.output_legacy_id != Columns::MISSING {
        "AND NOT EXISTS (SELECT 1 FROM agent_outputs o WHERE o.legacy_artifact_id = a.id)"
    } else {
        ""
    }
}

/// What a twin takes from its legacy copy: `response_text` and `run_id`.
pub(super) fn legacy_fields(conn: &Connection, id: i64, columns: Columns) -> Result<(Option<String>, Option<String>)> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {}, {} FROM consensus_artifacts WHERE id = ?1",
        columns.artifact_response_text, columns.artifact_run_id
    ))?;
    Ok(stmt
        .query_row([id], |r| Ok((legacy_rows::text(r, 0)?, legacy_rows::text(r, 1)?)))
        .optional()?
        .unwrap_or_default())
}

/// The newest legacy synthesis (written by an old binary) that has no copy in the new schema.
pub(super) fn legacy_latest_synthesis(
    conn: &Connection,
    spec_id: &str,
    stage: &str,
    has_new: bool,
    columns: Columns,
) -> Result<Option<Synthesis>> {
    let unmirrored = if has_new && columns.run_legacy_id != Columns::MISSING {
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
        Columns::legacy_created("s", columns.synthesis_created_ms)
    ))?;
    Ok(stmt.query_row([spec_id, stage], |r| legacy_synthesis_row(r, spec_id, stage)).optional()?)
}

pub(super) fn legacy_artifacts(
    conn: &Connection,
    spec_id: &str,
    stage: &str,
    has_new: bool,
    columns: Columns,
) -> Result<Vec<Artifact>> {
    legacy_artifacts_in(conn, spec_id, stage, has_new, columns, None)
}

/// The SQL of [`legacy_artifacts_in`]: every row, or a page (`Some((bounded, descending))`,
/// `?3`-`?5` the cursor's key, `?6` the limit).
pub(super) fn legacy_artifacts_sql(columns: Columns, has_new: bool, page: Option<(bool, bool)>) -> String {
    let at = Columns::legacy_created("a", columns.artifact_created_ms);
    let unmirrored = unmirrored_sql(has_new, columns);
    let keys = match page {
        Some((bounded, descending)) => {
            let dir = if descending { "DESC" } else { "ASC" };
            let after = if bounded {
                format!("WHERE {}", after_sql("at", "id", 1, descending, ["?3", "?4", "?5"]))
            } else {
                String::new()
            };
            format!(
                "AND a.id IN (SELECT id FROM (SELECT a.id, {at} AS at FROM consensus_artifacts a
                                             WHERE a.spec_id = ?1 AND a.stage = ?2 {unmirrored})
                              {after} ORDER BY at {dir}, id {dir} LIMIT ?6)"
            )
        }
        None => String::new(),
    };
    format!(
        "SELECT a.id, a.agent_name, a.content_json, {}, {}, {at}, {}
         FROM consensus_artifacts a WHERE a.spec_id = ?1 AND a.stage = ?2 {unmirrored} {keys}
         ORDER BY 6, a.id",
        columns.artifact_response_text,
        columns.artifact_run_id,
        Columns::of("a", columns.artifact_model_version)
    )
}

/// The legacy artifacts of a spec/stage without a copy in the new tables, in key order
/// (time, id) — or, for a page (`window`), only those after its cursor in its scan's
/// direction, at most its limit: keys first (the rows' ids and times), then those rows.
pub(super) fn legacy_artifacts_in(
    conn: &Connection,
    spec_id: &str,
    stage: &str,
    has_new: bool,
    columns: Columns,
    window: Option<&Window<ArtifactKey>>,
) -> Result<Vec<Artifact>> {
    let page = window.map(|w| (w.from.is_some(), w.descending));
    let mut stmt = conn.prepare_cached(&legacy_artifacts_sql(columns, has_new, page))?;
    let map = |r: &Row| {
        Ok(Artifact {
            id: r.get(0)?,
            spec_id: spec_id.to_owned(),
            stage: stage.to_owned(),
            agent_name: legacy_rows::text_or_empty(r, 1)?,
            content_json: legacy_rows::text_or_empty(r, 2)?,
            response_text: legacy_rows::text(r, 3)?,
            run_id: legacy_rows::text(r, 4)?,
            created_at_ms: r.get(5)?,
            model_version: legacy_rows::text(r, 6)?,
            source: SOURCE_LEGACY,
        })
    };
    let rows = match window {
        Some(w) => {
            let k = w.from.unwrap_or(ArtifactKey { at_ms: 0, source: 0, id: 0 });
            stmt.query_map(params![spec_id, stage, k.at_ms, k.source, k.id, w.sql_limit()], map)?
                .collect::<Result<_, _>>()?
        }
        None => stmt.query_map([spec_id, stage], map)?.collect::<Result<_, _>>()?,
    };
    Ok(rows)
}
