//! What a file looks like: the shapes databases in the field come in (see [`Shape`]:
//! legacy, the predecessor's seed layout, this store's first layout, current),
//! recognised by their tables and columns, and the SQL
//! this store shares between its migrations and its writes.
//!
//! The new tables carry the predecessor's names, types and constraints exactly (the
//! "seed layout" its version-1 migration creates); this store's richer fields are added,
//! nullable columns, so a predecessor build still running on the same file keeps
//! inserting. `PRAGMA user_version` keeps the predecessor's meaning (0 legacy only,
//! 1 both schemas, 2 legacy dropped); this store's own layout revision lives in
//! `consensus_db_meta`, beside the minimum layout a reader needs (see [`LAYOUT`]).

use std::collections::HashSet;

use rusqlite::{params, Connection, OptionalExtension};

use crate::error::{Error, Result};
use crate::model::{Synthesis, SOURCE_V1};

/// The legacy DDL, exactly as field databases have it (for tests and tools).
pub const LEGACY_SCHEMA_SQL: &str = include_str!("sql/legacy_v0.sql");
/// The new tables as the predecessor's own version-1 migration creates them.
pub const SEED_TABLES_SQL: &str = include_str!("sql/seed_tables.sql");
pub(crate) const ROUTING_TABLE_SQL: &str = concat!(
    include_str!("sql/routing_table.sql"),
    include_str!("sql/branch_index.sql"),
    include_str!("sql/route_index.sql")
);
pub(crate) const BRANCH_INDEX_SQL: &str = include_str!("sql/branch_index.sql");
pub(crate) const ROUTE_INDEX_SQL: &str = include_str!("sql/route_index.sql");
const STORE_COLUMNS_SQL: &str = include_str!("sql/store_columns.sql");
/// The expected sets of agents (`expect_agents`, layout revision 5).
pub(crate) const EXPECTED_AGENTS_SQL: &str = include_str!("sql/expected_agents.sql");

/// This store's layout revision. 1 was its first release (its own column names); 2 is
/// the seed layout plus this store's columns; 3 adds only (`agent_executions.branch_id`
/// and its index, `consensus_ok` as the predecessor writes it), so a build of revision 2
/// still reads and writes a revision-3 file; 4 adds only the routing read's covering
/// index (`idx_agent_executions_route`), which no reader needs; 5 adds only the
/// coordination tables (`consensus_claims`, `consensus_idempotency` and
/// `consensus_expected_agents`), which no predecessor build or earlier release reads.
///
/// `consensus_db_meta` keeps two numbers: `'layout'`, the **minimum reader layout** —
/// the oldest revision that can open the file, the key every release checks and refuses
/// when above its own revision — and `'revision'`, the revision the file was brought
/// to. A step that only adds leaves `'layout'` alone, so the previous release keeps
/// opening the file mid-rollout; a step that changes what a reader sees raises it.
pub const LAYOUT: i64 = 5;
/// The minimum reader layout this build records (see [`LAYOUT`]): revision 2 reads
/// everything revisions 3 to 5 write.
pub const MIN_READER_LAYOUT: i64 = 2;

/// Two copies of one artifact or synthesis that the predecessor's dual-write build
/// put in both schemas carry no link: they pair when their timestamps (legacy whole
/// seconds, new milliseconds) are at most this far apart.
pub const PAIR_WINDOW_MS: i64 = 2000;

/// The shapes a file can have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// No tables at all: a brand-new file.
    Empty,
    /// The legacy tables only.
    Legacy,
    /// The new tables as the predecessor left them (its version 1 or 2).
    Seed,
    /// This store's first layout (`run_pk`, `run_at_ms`, `output_at_ms`, `synthesis`).
    StoreRevision1,
    /// The seed layout with this store's columns: what this version writes.
    Current,
}

impl Shape {
    /// Whether the new tables need a layout migration before this store can write.
    pub fn is_stale(self) -> bool {
        matches!(self, Shape::Seed | Shape::StoreRevision1)
    }

    /// The shape named for reports, with the file's `user_version`.
    pub fn describe(self, user_version: i64) -> String {
        let era = match user_version {
            0 => "",
            1 => " v1 (legacy and new tables)",
            _ => " v2 (legacy tables dropped)",
        };
        match self {
            Shape::Empty => "empty (a new file)".into(),
            Shape::Legacy => "legacy (user_version 0)".into(),
            Shape::Seed => format!("predecessor seed{era}"),
            Shape::StoreRevision1 => format!("consensus-db layout 1{era}"),
            Shape::Current => format!("consensus-db layout {LAYOUT}{era}"),
        }
    }
}

pub(crate) fn table_exists(conn: &Connection, table: &str) -> Result<bool> {
    Ok(conn.prepare_cached("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1")?.exists([table])?)
}

pub(crate) fn column_exists(conn: &Connection, table: &str, column: &str) -> Result<bool> {
    Ok(conn.prepare_cached("SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2")?.exists([table, column])?)
}

fn meta_value(conn: &Connection, key: &str) -> Result<Option<i64>> {
    if !table_exists(conn, "consensus_db_meta")? {
        return Ok(None);
    }
    Ok(conn.query_row("SELECT value FROM consensus_db_meta WHERE key = ?1", [key], |r| r.get(0)).optional()?)
}

/// The minimum reader layout recorded by this store, if any (see [`LAYOUT`]).
pub fn layout_revision(conn: &Connection) -> Result<Option<i64>> {
    meta_value(conn, "layout")
}

/// The revision the file was brought to: `'revision'`, or — written by a release that
/// predates the key — its `'layout'`.
pub fn revision(conn: &Connection) -> Result<Option<i64>> {
    Ok(meta_value(conn, "revision")?.or(layout_revision(conn)?))
}

/// Records this build's revision and the minimum reader layout; never lowers either (a
/// newer build may have raised them).
pub(crate) fn set_layout_revision(conn: &Connection) -> Result<()> {
    let mut set = conn.prepare_cached(
        "INSERT INTO consensus_db_meta (key, value) VALUES (?1, ?2)
         ON CONFLICT(key) DO UPDATE SET value = max(value, excluded.value)",
    )?;
    set.execute(params!["layout", MIN_READER_LAYOUT])?;
    set.execute(params!["revision", LAYOUT])?;
    Ok(())
}

/// The file's tables and their columns, read in one statement: what shapes and
/// readers decide on (opening asks several questions; each would be a statement).
pub struct Catalog {
    columns: HashSet<(String, String)>,
    tables: HashSet<String>,
    indexes: HashSet<String>,
    layout: Option<i64>,
}

impl Catalog {
    pub fn read(conn: &Connection) -> Result<Catalog> {
        let mut stmt = conn.prepare_cached(
            "SELECT m.name, p.name FROM sqlite_master m LEFT JOIN pragma_table_info(m.name) p WHERE m.type = 'table'",
        )?;
        let mut rows = stmt.query([])?;
        let (mut tables, mut columns) = (HashSet::new(), HashSet::new());
        while let Some(r) = rows.next()? {
            let table: String = r.get(0)?;
            if let Some(column) = r.get::<_, Option<String>>(1)? {
                columns.insert((table.clone(), column));
            }
            tables.insert(table);
        }
        let indexes = conn
            .prepare_cached("SELECT name FROM sqlite_master WHERE type = 'index'")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let layout = if tables.contains("consensus_db_meta") { layout_revision(conn)? } else { None };
        Ok(Catalog { columns, tables, indexes, layout })
    }

    pub fn has_index(&self, index: &str) -> bool {
        self.indexes.contains(index)
    }

    pub fn has_table(&self, table: &str) -> bool {
        self.tables.contains(table)
    }

    pub fn has_column(&self, table: &str, column: &str) -> bool {
        self.columns.contains(&(table.to_owned(), column.to_owned()))
    }

    /// Recognises the file's shape by its tables and columns. A minimum reader layout
    /// newer than this library's revision is refused; so are new tables of no known shape.
    pub fn shape(&self) -> Result<Shape> {
        if let Some(found) = self.layout.filter(|&found| found > LAYOUT) {
            return Err(Error::LayoutTooNew { found, supported: LAYOUT });
        }
        if !self.has_table("consensus_runs") {
            let legacy = ["consensus_artifacts", "consensus_synthesis", "agent_executions"];
            return Ok(if legacy.iter().any(|t| self.has_table(t)) { Shape::Legacy } else { Shape::Empty });
        }
        if self.has_column("agent_outputs", "run_pk") && self.has_column("consensus_runs", "run_at_ms") {
            return Ok(Shape::StoreRevision1);
        }
        let seed = self.has_column("consensus_runs", "run_timestamp")
            && self.has_column("consensus_runs", "synthesis_json")
            && self.has_column("agent_outputs", "run_id")
            && self.has_column("agent_outputs", "output_timestamp");
        if !seed {
            return Err(Error::Migration(
                "consensus_runs / agent_outputs have columns of no known layout (neither the predecessor's seed layout nor consensus-db's); \
                 refusing to touch them"
                    .into(),
            ));
        }
        let known = self.layout.is_some_and(|layout| layout >= MIN_READER_LAYOUT);
        if known && self.has_column("agent_outputs", "legacy_artifact_id") {
            Ok(Shape::Current)
        } else {
            Ok(Shape::Seed)
        }
    }
}

/// The file's shape (see [`Catalog::shape`]).
pub fn shape(conn: &Connection) -> Result<Shape> {
    Catalog::read(conn)?.shape()
}

/// The claims and idempotency keys of layout revision 5 (only adds; see the file).
pub(crate) const COORDINATION_TABLES_SQL: &str = include_str!("sql/coordination_tables.sql");
/// The tables [`COORDINATION_TABLES_SQL`] creates.
pub(crate) const COORDINATION_TABLES: [&str; 2] = ["consensus_claims", "consensus_idempotency"];

/// The artifact pages' index on `agent_outputs` (only adds; see the file).
pub(crate) const PAGE_INDEX_SQL: &str = include_str!("sql/page_index.sql");

/// Creates the new tables in the current layout, or completes a seed layout with this
/// store's columns. Idempotent.
pub(crate) fn create_current_tables(conn: &Connection) -> Result<()> {
    conn.execute_batch(SEED_TABLES_SQL)?;
    if !column_exists(conn, "agent_outputs", "legacy_artifact_id")? {
        conn.execute_batch(STORE_COLUMNS_SQL)?;
    }
    conn.execute_batch(PAGE_INDEX_SQL)?;
    conn.execute_batch(COORDINATION_TABLES_SQL)?;
    set_layout_revision(conn)
}

/// SQL for a synthesis as the seed layout keeps it: one JSON object, keys in the
/// predecessor's order (`output_markdown`, `output_path`, `status`, `artifacts_count`,
/// `agreements`, `conflicts`; `degraded` has its own column).
pub(crate) fn synthesis_json_sql(
    markdown: &str,
    path: &str,
    status: &str,
    count: &str,
    agreements: &str,
    conflicts: &str,
) -> String {
    format!(
        "json_object('output_markdown', {markdown}, 'output_path', {path}, 'status', {status}, \
         'artifacts_count', {count}, 'agreements', {agreements}, 'conflicts', {conflicts})"
    )
}

/// SQL reading one field back out of `synthesis_json`: a JSON string as its text,
/// anything else (an array the predecessor wrote, say) as its JSON text.
pub(crate) fn synthesis_field(column: &str, key: &str) -> String {
    format!("CASE WHEN json_valid({column}) THEN json_extract({column}, '$.{key}') END")
}

/// SQL selecting the newest open run (no synthesis yet) of a (spec_id, stage,
/// orchestrator run id) group, given as SQL expressions.
pub(crate) fn open_run_sql(spec_id: &str, stage: &str, orchestrator_run_id: &str) -> String {
    format!(
        "SELECT id FROM consensus_runs WHERE spec_id = {spec_id} AND stage = {stage} \
         AND orchestrator_run_id IS {orchestrator_run_id} AND synthesis_json IS NULL ORDER BY id DESC LIMIT 1"
    )
}

/// `consensus_ok` is 1 on every run, as the predecessor writes it ("an artifact exists",
/// "a synthesis exists"); whether a consensus succeeded is its synthesis's status.
///
/// Starts a run at `at_ms`, or at the next free millisecond when UNIQUE(spec_id,
/// stage, run_timestamp) is taken (many runs can start in one millisecond, and a
/// predecessor build may have taken it). Returns the run's id.
pub(crate) fn insert_run(
    conn: &Connection,
    spec_id: &str,
    stage: &str,
    orchestrator_run_id: Option<&str>,
    at_ms: i64,
) -> Result<i64> {
    let mut insert = conn.prepare_cached(
        "INSERT INTO consensus_runs (spec_id, stage, orchestrator_run_id, run_timestamp, consensus_ok, degraded)
         VALUES (?1, ?2, ?3, ?4, 1, 0) ON CONFLICT (spec_id, stage, run_timestamp) DO NOTHING",
    )?;
    let mut at = at_ms;
    loop {
        if insert.execute(params![spec_id, stage, orchestrator_run_id, at])? == 1 {
            return Ok(conn.last_insert_rowid());
        }
        at = at
            .checked_add(1)
            .ok_or_else(|| Error::invalid("run_timestamp", format!("no free millisecond after {at_ms}")))?;
    }
}

/// A synthesis from its stored JSON text and its run's columns (both backends).
pub(crate) fn synthesis_from_text(
    raw: &str,
    id: i64,
    spec_id: &str,
    stage: &str,
    degraded: bool,
    run_id: Option<String>,
    created_at_ms: i64,
) -> Synthesis {
    let object = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(raw).ok();
    let text = |key: &str| -> Option<String> {
        match object.as_ref()?.get(key)? {
            serde_json::Value::Null => None,
            serde_json::Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        }
    };
    Synthesis {
        id,
        spec_id: spec_id.to_owned(),
        stage: stage.to_owned(),
        output_markdown: if object.is_some() { text("output_markdown").unwrap_or_default() } else { raw.to_owned() },
        output_path: text("output_path"),
        status: text("status").unwrap_or_default(),
        artifacts_count: object.as_ref().and_then(|o| o.get("artifacts_count")?.as_i64()),
        agreements: text("agreements"),
        conflicts: text("conflicts"),
        degraded,
        run_id,
        created_at_ms,
        source: SOURCE_V1,
    }
}

/// `max(rowid) - min(rowid) + 1` of a table (0 when empty), as two seeks of its rowid
/// tree (one aggregate each: SQLite reads the whole table for both in one SELECT); None
/// for a table without rowids.
pub(crate) fn rowid_span(conn: &Connection, quoted_table: &str) -> Result<Option<i64>> {
    let sql = format!("SELECT (SELECT max(rowid) FROM {quoted_table}) - (SELECT min(rowid) FROM {quoted_table}) + 1");
    match conn.query_row(&sql, [], |r| r.get::<_, Option<i64>>(0)) {
        Ok(span) => Ok(Some(span.unwrap_or(0))),
        Err(rusqlite::Error::SqliteFailure(_, Some(m))) if m.contains("no such column: rowid") => Ok(None),
        Err(e) => Err(e.into()),
    }
}
