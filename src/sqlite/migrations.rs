//! Migrations. `PRAGMA user_version` keeps the predecessor's meaning and never goes
//! above 2 — predecessor builds refuse a file newer than they know, and they may
//! still run during a rollout — so two ordered lists move a file:
//!
//! - the **schema version** (`user_version`): 0 the legacy tables only; 1 the new
//!   `consensus_runs` + `agent_outputs` beside them, backfilled; 2 the legacy
//!   artifact/synthesis tables dropped (only when asked for, after a final backfill);
//! - the **layout** of the new tables (`schema::Shape`): a predecessor's seed layout
//!   or this store's first layout is brought to the current one, keeping every row.
//!
//! Every step runs in one IMMEDIATE transaction and re-checks the file inside it, so a
//! failure, a crash or a concurrent migrator leaves the file as it was or as the
//! other left it. Opening only ever moves a file up; down-migrations run only when a
//! caller asks for a lower version explicitly.

use rusqlite::types::Value;
use rusqlite::{params, Connection, OptionalExtension};

use crate::error::{Error, Result};
use crate::model::NewSynthesis;
use crate::sqlite::chunks::{run_in_chunks, Chunk, ChunkSize, Progress};
use crate::sqlite::legacy_rows::{bool_sql, created_ms_sql, ms_sql as legacy_ms, text_from_ms_sql, text_sql};
use crate::sqlite::schema::{self, column_exists, synthesis_from_text, table_exists, Shape, PAIR_WINDOW_MS};

pub use crate::sqlite::schema::LEGACY_SCHEMA_SQL;

pub type Version = i64;

/// What opening a legacy file brings it to: both schemas, legacy tables kept for old
/// binaries. A brand-new file gets [`LATEST_VERSION`] directly.
pub const DEFAULT_VERSION: Version = 1;
/// The newest version this library knows; newer files are refused.
pub const LATEST_VERSION: Version = 2;

struct Migration {
    version: Version,
    description: &'static str,
    up: Step,
    down: Step,
}

/// One move between two versions, in three kinds of transaction: `begin` (what the copy
/// needs), the bulk of the copy in chunks of rows by id ([`Phase`]; each chunk holds the
/// write lock ~[`CHUNK_TARGET`](crate::sqlite::chunks::CHUNK_TARGET)), then `end`: what
/// writers added meanwhile, verified, and `user_version` bumped. A move that drops
/// tables empties them in chunks first, so that dropping them is quick too. Every state
/// in between is one the file can be in anyway — rows of one schema partly copied to the
/// other, each copy linked to its original, as a dual-write build leaves them — read once
/// each through the dual-schema rule; a move killed midway resumes where it was,
/// skipping what is linked already. `check` verifies the chunks' work from a snapshot,
/// outside the write lock, before an `end` that verifies only what it copies.
#[derive(Clone, Copy)]
struct Step {
    begin: fn(&Connection) -> Result<()>,
    phases: &'static [Phase],
    check: fn(&Connection) -> Result<()>,
    end: fn(&Connection, &Tails) -> Result<RowsMoved>,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "consensus_runs + agent_outputs (the predecessor's seed layout and this store's columns), backfilled from the legacy tables",
        up: Step { begin: begin_v1, phases: &BACKFILL, check: verify_backfill, end: up_v1 },
        down: Step {
            begin: begin_write_back,
            phases: &[
                Phase::PairArtifacts,
                Phase::PairSyntheses,
                Phase::WriteBackOutputs,
                Phase::WriteBackSyntheses,
                Phase::EmptyOutputs,
                Phase::EmptyRuns,
            ],
            check: |_| Ok(()),
            end: |c, _| down_v1(c),
        },
    },
    Migration {
        version: 2,
        description: "drop the legacy consensus_artifacts / consensus_synthesis tables",
        up: Step {
            begin: |_| Ok(()),
            phases: &[
                Phase::PairArtifacts,
                Phase::BackfillArtifacts,
                Phase::PairSyntheses,
                Phase::BackfillSyntheses,
                Phase::EmptyLegacyArtifacts,
                Phase::EmptyLegacySyntheses,
            ],
            check: |_| Ok(()),
            end: |c, _| up_v2(c),
        },
        down: Step {
            begin: begin_down_v2,
            phases: &[
                Phase::PairArtifacts,
                Phase::PairSyntheses,
                Phase::WriteBackOutputs,
                Phase::WriteBackSyntheses,
                Phase::BackfillArtifacts,
                Phase::BackfillSyntheses,
            ],
            check: |c| {
                verify_write_back(c, &Tails::NONE)?;
                verify_backfill(c)
            },
            end: down_v2,
        },
    },
];

const BACKFILL: [Phase; 4] =
    [Phase::PairArtifacts, Phase::BackfillArtifacts, Phase::PairSyntheses, Phase::BackfillSyntheses];

/// (version, description) of every migration, in order.
pub fn list() -> Vec<(Version, &'static str)> {
    MIGRATIONS.iter().map(|m| (m.version, m.description)).collect()
}

pub fn user_version(conn: &Connection) -> Result<Version> {
    let found: Version = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > LATEST_VERSION {
        return Err(Error::SchemaTooNew { found, supported: LATEST_VERSION });
    }
    if found < 0 {
        return Err(Error::Migration(format!(
            "PRAGMA user_version is {found}: not a version of this schema (0..={LATEST_VERSION}); refusing to touch the file"
        )));
    }
    Ok(found)
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
    migrate(&conn, LATEST_VERSION, None)?;
    migrate(&conn, 0, None)?;
    migrate(&conn, LATEST_VERSION, None).map(drop)
}

/// What opening does: a brand-new file gets the latest schema; new tables in an
/// older layout are brought to the current one; then the schema moves *up* to
/// `target` if it is below. Never down. Returns the shape found.
/// Also returns what the additive layout steps changed ([`additive_steps`]), for the
/// open report.
pub fn upgrade(conn: &Connection, target: Version) -> Result<(Shape, Vec<String>)> {
    upgrade_counting(&mut On(conn), None, target, LongSteps::Run, &mut RowsMoved::default())
}

/// Whether an additive step that holds the write lock for seconds on a big file runs
/// now: not while opening (every other writer of the file would wait it out, past its
/// busy timeout), yes when asked for (`upgrade`, `migrate`, `consensus-db upgrade`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LongSteps {
    Defer,
    Run,
}

/// An additive index whose building reads its whole table: on a big table, opening
/// leaves it to an upgrade ([`LongSteps`]); every reader works without it, slower.
struct BigIndex {
    table: &'static str,
    names: &'static [&'static str],
    sql: &'static str,
}

const BIG_INDEXES: [BigIndex; 2] = [
    BigIndex { table: "agent_executions", names: &["idx_agent_executions_route"], sql: schema::ROUTE_INDEX_SQL },
    BigIndex {
        table: "agent_outputs",
        names: &["idx_agent_outputs_run_time", "idx_agent_outputs_time"],
        sql: schema::PAGE_INDEX_SQL,
    },
];

/// Up to this many rows (by rowid span) opening builds a [`BigIndex`] itself: ~0.7 s of
/// write lock here; the routing index over 1M executions with 2 KB responses took 6.9 s.
const BIG_INDEX_AT_OPENING: i64 = 100_000;

impl BigIndex {
    fn named(&self) -> String {
        let what = if self.names.len() == 1 { "the index" } else { "the indexes" };
        format!("{what} {}", self.names.join(" and "))
    }

    fn missing(&self, conn: &Connection) -> Result<bool> {
        if !table_exists(conn, self.table)? {
            return Ok(false);
        }
        for name in self.names {
            if !index_exists(conn, name)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn rows(&self, conn: &Connection) -> Result<i64> {
        Ok(schema::rowid_span(conn, self.table)?.unwrap_or(0))
    }

    /// Missing, and to be built now: when asked for, or on a small table.
    fn due(&self, conn: &Connection, long: LongSteps) -> Result<bool> {
        Ok(self.missing(conn)? && (long == LongSteps::Run || self.rows(conn)? <= BIG_INDEX_AT_OPENING))
    }
}

/// Whether every [`BigIndex`] the file's tables call for exists.
fn big_indexes_complete(conn: &Connection) -> Result<bool> {
    for index in &BIG_INDEXES {
        if index.missing(conn)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// [`upgrade`], in turns of `turns`, adding what it copied between the schemas to `moved`
/// as each transaction commits; `progress` hears a long copy's chunks.
pub(crate) fn upgrade_counting(
    turns: &mut dyn Turns,
    mut progress: Option<&mut Progress>,
    target: Version,
    long: LongSteps,
    moved: &mut RowsMoved,
) -> Result<(Shape, Vec<String>)> {
    let found = writing(turns, |c| bring_layout_current(c, true, long, moved))?;
    loop {
        let current = writing(turns, user_version)?;
        if current >= target {
            return Ok(found);
        }
        if !step(turns, progress.as_deref_mut(), current, current + 1, None, moved)? {
            return Ok(found);
        }
    }
}

/// Moves the schema to `target`, up or down, one step (one transaction) at a time,
/// bringing the layout current first. Moving down loses no row: the rows only the new
/// tables hold are written back into the legacy tables first. With a `guard`, a step
/// down or one that drops the legacy tables refuses while agents are in flight.
pub fn migrate(conn: &Connection, target: Version, guard: Option<InFlightGuard>) -> Result<RowsMoved> {
    let mut moved = RowsMoved::default();
    migrate_counting(&mut On(conn), None, target, guard, &mut moved)?;
    Ok(moved)
}

/// [`migrate`], adding to `moved` as each step commits (a step that fails adds nothing;
/// the steps before it stay counted).
pub(crate) fn migrate_counting(
    turns: &mut dyn Turns,
    mut progress: Option<&mut Progress>,
    target: Version,
    guard: Option<InFlightGuard>,
    moved: &mut RowsMoved,
) -> Result<()> {
    check_target(target)?;
    writing(turns, |c| bring_layout_current(c, target > 0, LongSteps::Run, moved))?;
    loop {
        let current = writing(turns, user_version)?;
        if current == target {
            return Ok(());
        }
        let next = if target > current { current + 1 } else { current - 1 };
        if !step(turns, progress.as_deref_mut(), current, next, guard, moved)? {
            return Ok(());
        }
    }
}

report! {
    /// What a migration copied between the schemas: rows, counted inside each step's
    /// transaction — not the runs made to hold them, nor rows other writers add meanwhile.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct RowsMoved {
        /// Legacy rows given their copy in the new tables.
        pub artifacts_backfilled: i64,
        pub syntheses_backfilled: i64,
        /// New-table rows given their copy in the legacy tables.
        pub artifacts_written_back: i64,
        pub syntheses_written_back: i64,
    }
}

/// What [`migrate`] to `target` would refuse before moving: a version that does not
/// exist, a file from the future, agents in flight before a destructive step. Reads
/// only (a read-only connection can check); the move checks again in its transactions.
pub fn check(conn: &Connection, target: Version, guard: Option<InFlightGuard>) -> Result<()> {
    check_target(target)?;
    let mut from = user_version(conn)?;
    while from != target {
        let to = if target > from { from + 1 } else { from - 1 };
        if let (Some(guard), true) = (guard, destructive(from, to)) {
            return guard.refuse_if_in_flight(conn, from, to);
        }
        from = to;
    }
    Ok(())
}

fn check_target(target: Version) -> Result<()> {
    if !(0..=LATEST_VERSION).contains(&target) {
        return Err(Error::invalid("target", format!("schema version {target} does not exist (0..={LATEST_VERSION})")));
    }
    Ok(())
}

/// A step down, or the one that drops the legacy tables: refused while agents are in flight.
fn destructive(from: Version, to: Version) -> bool {
    to < from || to == LATEST_VERSION
}

/// What keeps a destructive move (down, or dropping the legacy tables) away from running
/// agents: executions spawned within `max_age_ms` and not completed. Checked inside the
/// step's transaction, so no agent can be recorded between the check and the move.
#[derive(Clone, Copy, Debug)]
pub struct InFlightGuard {
    pub max_age_ms: i64,
}

impl InFlightGuard {
    /// One hour: an agent spawned longer ago and never completed is taken as dead.
    pub const DEFAULT_MAX_AGE_MS: i64 = 3_600_000;

    fn refuse_if_in_flight(&self, conn: &Connection, from: Version, to: Version) -> Result<()> {
        if !table_exists(conn, "agent_executions")? {
            return Ok(());
        }
        // An age beyond SQLite's dates (year 9999) has no cutoff: every uncompleted spawn counts.
        let count: i64 = conn.query_row(
            "SELECT count(*) FROM agent_executions
             WHERE completed_at IS NULL
               AND spawned_at >= COALESCE(strftime('%Y-%m-%d %H:%M:%S', 'now', ?1), '')",
            // Fractional: whole seconds would cut a 0.5 s age to 0 and miss a spawn made in the
            // second before (spawned_at has one-second resolution; the cut is floored like it).
            [format!("-{}.{:03} seconds", self.max_age_ms / 1000, self.max_age_ms % 1000)],
            |r| r.get(0),
        )?;
        if count > 0 {
            return Err(Error::InFlight { count, max_age_s: self.max_age_ms / 1000, from, to });
        }
        Ok(())
    }
}

impl Default for InFlightGuard {
    fn default() -> Self {
        InFlightGuard { max_age_ms: Self::DEFAULT_MAX_AGE_MS }
    }
}

/// What every move starts with: refuse a version from the future, then create the
/// schema in an empty file (when `create` says so) or bring new tables in an older
/// layout to the current one, then run the additive steps. Returns the shape found and
/// what the additive steps changed.
fn bring_layout_current(
    conn: &Connection,
    create: bool,
    long: LongSteps,
    moved: &mut RowsMoved,
) -> Result<(Shape, Vec<String>)> {
    user_version(conn)?;
    let found = schema::shape(conn)?;
    if found == Shape::Empty && create {
        let still_empty = |c: &Connection| Ok(user_version(c)? == 0 && schema::shape(c)? == Shape::Empty);
        in_transaction(conn, "create the schema", still_empty, create_fresh)?;
    } else if found.is_stale() {
        update_layout(conn, moved)?;
    }
    Ok((found, additive_steps(conn, long)?))
}

/// The steps of layout revisions 3 to 5, which only add or correct (the minimum reader
/// layout stays [`schema::MIN_READER_LAYOUT`]): on every shape with a routing table, the
/// predecessor's `branch_id` column and `idx_agent_executions_branch` index, and the
/// read indexes of revision 4 ([`BIG_INDEXES`]: the routing read's covering index, the
/// artifact pages' two; left, and said so, at an opening of a file whose table holds more
/// than [`BIG_INDEX_AT_OPENING`] rows; revision 4 is recorded once they exist), the
/// coordination tables of revision 5 (claims, idempotency keys: on every shape); on the new
/// tables, `consensus_ok` as the predecessor writes it (1: the run has an artifact or a
/// synthesis) where this store wrote 0 — an older release still running mid-rollout
/// writes 0 again, so this looks at every opening, not once. Checked before taking the
/// write lock: a file that has it all is opened without one. Returns one line per change.
fn additive_steps(conn: &Connection, long: LongSteps) -> Result<Vec<String>> {
    let pending = |c: &Connection| additive_steps_pending(c, long);
    let mut deferred = Vec::new();
    for index in &BIG_INDEXES {
        if index.missing(conn)? && !index.due(conn, long)? {
            deferred.push(format!(
                "left {} for `consensus-db upgrade`: building it over ~{} rows of {} holds the write lock for \
                 seconds (reads work without it, slower)",
                index.named(),
                index.rows(conn)?,
                index.table
            ));
        }
    }
    if !pending(conn)? {
        return Ok(deferred);
    }
    let changes = std::cell::RefCell::new(Vec::new());
    in_transaction(conn, "the additive layout steps", pending, |c| {
        let mut changes = changes.borrow_mut();
        changes.clear(); // a busy attempt that rolled back changed nothing
        if table_exists(c, "agent_executions")? {
            if !column_exists(c, "agent_executions", "branch_id")? {
                c.execute_batch("ALTER TABLE agent_executions ADD COLUMN branch_id TEXT")?;
                changes.push("added the column agent_executions.branch_id".to_owned());
            }
            if !index_exists(c, "idx_agent_executions_branch")? {
                c.execute_batch(schema::BRANCH_INDEX_SQL)?;
                changes.push("created the index idx_agent_executions_branch".to_owned());
            }
        }
        for index in &BIG_INDEXES {
            if index.due(c, long)? {
                c.execute_batch(index.sql)?;
                changes.push(format!("created {}", index.named()));
            }
        }
        if !coordination_tables_exist(c)? {
            c.execute_batch(schema::COORDINATION_TABLES_SQL)?;
            changes.push(format!("created the tables {}", schema::COORDINATION_TABLES.join(" and ")));
        }
        if table_exists(c, "consensus_runs")? {
            let n = c.execute("UPDATE consensus_runs SET consensus_ok = 1 WHERE consensus_ok = 0", [])?;
            if n > 0 {
                changes.push(format!(
                    "consensus_ok 0 -> 1 on {n} runs (as the predecessor writes it: the run has an artifact or a \
                     synthesis; success is the synthesis status)"
                ));
            }
        }
        let current = big_indexes_complete(c)?;
        if let Some(found) = schema::revision(c)?.filter(|&r| r < schema::LAYOUT && current) {
            schema::set_layout_revision(c)?;
            changes.push(format!(
                "layout revision {found} -> {} (minimum reader layout {})",
                schema::LAYOUT,
                schema::MIN_READER_LAYOUT
            ));
        }
        Ok(())
    })?;
    let mut changes = changes.into_inner();
    changes.extend(deferred);
    Ok(changes)
}

fn additive_steps_pending(conn: &Connection, long: LongSteps) -> Result<bool> {
    let routing = table_exists(conn, "agent_executions")?;
    if routing
        && !(column_exists(conn, "agent_executions", "branch_id")?
            && index_exists(conn, "idx_agent_executions_branch")?)
    {
        return Ok(true);
    }
    for index in &BIG_INDEXES {
        if index.due(conn, long)? {
            return Ok(true);
        }
    }
    if !coordination_tables_exist(conn)? {
        return Ok(true);
    }
    if big_indexes_complete(conn)? && schema::revision(conn)?.is_some_and(|r| r < schema::LAYOUT) {
        return Ok(true);
    }
    Ok(table_exists(conn, "consensus_runs")?
        && conn.query_row("SELECT EXISTS (SELECT 1 FROM consensus_runs WHERE consensus_ok = 0)", [], |r| r.get(0))?)
}

/// Whether the claims and idempotency tables of layout revision 5 exist.
fn coordination_tables_exist(conn: &Connection) -> Result<bool> {
    for table in schema::COORDINATION_TABLES {
        if !table_exists(conn, table)? {
            return Ok(false);
        }
    }
    Ok(true)
}

fn index_exists(conn: &Connection, index: &str) -> Result<bool> {
    Ok(conn.prepare_cached("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?1")?.exists([index])?)
}

/// Where a migration runs its work. At opening both kinds run on the one connection; on
/// an open store `write` holds the write lane for each transaction (writers queued behind
/// a long move get their turn between its chunks) and `read` uses a pooled connection
/// outside the lane. A `write` may run its work again after a busy attempt that rolled
/// back.
pub(crate) trait Turns {
    fn write(&mut self, work: Work<'_>) -> Result<()>;
    fn read(&mut self, work: Work<'_>) -> Result<()>;
}

/// The work of one turn.
pub(crate) type Work<'w> = &'w mut dyn FnMut(&Connection) -> Result<()>;

/// Every turn on one connection.
pub(crate) struct On<'c>(pub(crate) &'c Connection);

impl Turns for On<'_> {
    fn write(&mut self, work: Work<'_>) -> Result<()> {
        work(self.0)
    }

    fn read(&mut self, work: Work<'_>) -> Result<()> {
        work(self.0)
    }
}

/// Runs `work` in one write turn and returns what it returned (the last attempt's).
fn writing<T>(turns: &mut dyn Turns, mut work: impl FnMut(&Connection) -> Result<T>) -> Result<T> {
    let mut out = None;
    turns.write(&mut |c| {
        out = Some(work(c)?);
        Ok(())
    })?;
    out.ok_or_else(|| Error::Migration("a migration turn ran nothing".into()))
}

/// Moves the file from `from` to `to` ([`Step`]); returns false when `progress` stopped
/// it before its end (the file stays at `from`, what was copied stays, linked).
fn step(
    turns: &mut dyn Turns,
    progress: Option<&mut Progress>,
    from: Version,
    to: Version,
    guard: Option<InFlightGuard>,
    moved: &mut RowsMoved,
) -> Result<bool> {
    let Step { begin, phases, check, end } =
        if to > from { MIGRATIONS[from as usize].up } else { MIGRATIONS[from as usize - 1].down };
    let what = format!("migration from version {from} to {to}");
    // Another process may have migrated while we waited for the write lock.
    let still_here = |c: &Connection| Ok(user_version(c)? == from);
    let refuse = |c: &Connection| match (guard, destructive(from, to)) {
        (Some(guard), true) => guard.refuse_if_in_flight(c, from, to),
        _ => Ok(()),
    };
    let pair = writing(turns, |c| {
        in_transaction(c, &what, still_here, |c| {
            refuse(c)?;
            begin(c)
        })?;
        unpaired_copies(c)
    })?;
    let Some(tails) = run_phases(turns, progress, &what, &still_here, phases, pair, moved)? else {
        return Ok(false);
    };
    turns.read(&mut |c| if still_here(c)? { check(c) } else { Ok(()) })?;
    let tail = writing(turns, |c| {
        let mut tail = RowsMoved::default();
        in_transaction(c, &what, still_here, |c| {
            refuse(c)?;
            tail = end(c, &tails)?;
            c.execute_batch(&format!("PRAGMA user_version = {to}"))?;
            Ok(())
        })?;
        Ok(tail)
    })?;
    moved.add(tail);
    Ok(true)
}

/// Whether the new tables hold rows with no link to a legacy row (a dual-write build's
/// copies, which a copy pairs with their twins first). Asked once, as a move begins.
fn unpaired_copies(conn: &Connection) -> Result<bool> {
    if !table_exists(conn, "agent_outputs")? {
        return Ok(false);
    }
    Ok(unlinked_outputs(conn)? || unlinked_syntheses(conn)?)
}

fn unlinked_syntheses(conn: &Connection) -> Result<bool> {
    Ok(conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM consensus_runs WHERE synthesis_json IS NOT NULL AND legacy_synthesis_id IS NULL)",
        [],
        |r| r.get(0),
    )?)
}

/// One table's share of a move's bulk: what a chunk does to the rows of an id range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Links a dual-write build's copies to their legacy twins (only when, as the move
    /// began, the new tables held rows without a link).
    PairArtifacts,
    PairSyntheses,
    /// Legacy rows into the new tables.
    BackfillArtifacts,
    BackfillSyntheses,
    /// New-table rows into the legacy tables.
    WriteBackOutputs,
    WriteBackSyntheses,
    /// Deletes the legacy rows that have their copy, and the links to them (before the
    /// legacy tables are dropped).
    EmptyLegacyArtifacts,
    EmptyLegacySyntheses,
    /// Deletes the new rows that have their legacy copy (before the new tables are dropped).
    EmptyOutputs,
    EmptyRuns,
}

const PHASES: usize = 10;

impl Phase {
    fn table(self) -> &'static str {
        match self {
            Phase::PairArtifacts | Phase::BackfillArtifacts | Phase::EmptyLegacyArtifacts => "consensus_artifacts",
            Phase::PairSyntheses | Phase::BackfillSyntheses | Phase::EmptyLegacySyntheses => "consensus_synthesis",
            Phase::WriteBackOutputs | Phase::EmptyOutputs => "agent_outputs",
            Phase::WriteBackSyntheses | Phase::EmptyRuns => "consensus_runs",
        }
    }

    fn run(self, conn: &Connection, ids: Ids) -> Result<RowsMoved> {
        let mut moved = RowsMoved::default();
        match self {
            Phase::PairArtifacts => pair_artifact_copies(conn, None, ids)?,
            Phase::PairSyntheses => pair_synthesis_copies(conn, None, ids)?,
            Phase::BackfillArtifacts => moved.artifacts_backfilled = backfill_artifacts(conn, ids)?,
            Phase::BackfillSyntheses => moved.syntheses_backfilled = backfill_syntheses(conn, ids)?,
            Phase::WriteBackOutputs => moved = write_back_outputs(conn, ids)?,
            Phase::WriteBackSyntheses => moved = write_back_syntheses(conn, ids)?,
            Phase::EmptyLegacyArtifacts => {
                empty_legacy(conn, "consensus_artifacts", "agent_outputs", "legacy_artifact_id", ids)?
            }
            Phase::EmptyLegacySyntheses => {
                empty_legacy(conn, "consensus_synthesis", "consensus_runs", "legacy_synthesis_id", ids)?
            }
            Phase::EmptyOutputs => {
                conn.execute(
                    "DELETE FROM agent_outputs WHERE id > ?1 AND id <= ?2
                       AND EXISTS (SELECT 1 FROM consensus_artifacts a WHERE a.id = agent_outputs.legacy_artifact_id)",
                    params![ids.0, ids.1],
                )?;
            }
            Phase::EmptyRuns => {
                conn.execute(
                    "DELETE FROM consensus_runs WHERE id > ?1 AND id <= ?2
                       AND NOT EXISTS (SELECT 1 FROM agent_outputs o WHERE o.run_id = consensus_runs.id)
                       AND (synthesis_json IS NULL
                            OR EXISTS (SELECT 1 FROM consensus_synthesis s WHERE s.id = consensus_runs.legacy_synthesis_id))",
                    params![ids.0, ids.1],
                )?;
            }
        }
        Ok(moved)
    }
}

/// Deletes the rows of `legacy` with ids in `ids` that have their copy in `copies`, and
/// clears the copies' links to them (a dropped table's ids are handed out again).
fn empty_legacy(conn: &Connection, legacy: &str, copies: &str, link: &str, (after, last): Ids) -> Result<()> {
    conn.execute(
        &format!(
            "DELETE FROM {legacy} WHERE id > ?1 AND id <= ?2
               AND EXISTS (SELECT 1 FROM {copies} c WHERE c.{link} = {legacy}.id)"
        ),
        params![after, last],
    )?;
    conn.execute(
        &format!(
            "UPDATE {copies} SET {link} = NULL WHERE {link} > ?1 AND {link} <= ?2
               AND NOT EXISTS (SELECT 1 FROM {legacy} l WHERE l.id = {copies}.{link})"
        ),
        params![after, last],
    )?;
    Ok(())
}

/// The ids of one chunk: those above the first and up to the second.
type Ids = (i64, i64);
const ALL_IDS: Ids = (i64::MIN, i64::MAX);

/// How far a move's bulk went in each phase: its end handles the rows above. `pair`:
/// whether it pairs twins (`None`: ask the file).
#[derive(Clone, Copy, Debug)]
struct Tails {
    after: [i64; PHASES],
    pair: Option<bool>,
}

impl Tails {
    /// No bulk ran: the end handles every row.
    const NONE: Tails = Tails { after: [i64::MIN; PHASES], pair: None };

    fn rest(&self, phase: Phase) -> Ids {
        (self.after[phase as usize], i64::MAX)
    }

    fn pairs(&self, unlinked: impl FnOnce() -> Result<bool>) -> Result<bool> {
        self.pair.map_or_else(unlinked, Ok)
    }
}

/// Runs `phases` in chunks, each its own transaction in its own write turn, sized to
/// hold the write lock about [`CHUNK_TARGET`](crate::sqlite::chunks::CHUNK_TARGET); adds
/// what each chunk copied to `moved` as it commits and tells `progress` the rows gone
/// through of the tables' (estimated) total. Ends early when another process made the
/// move meanwhile (`still_here` false). Returns how far each phase went, or `None` when
/// `progress` stopped the move.
fn run_phases(
    turns: &mut dyn Turns,
    progress: Option<&mut Progress>,
    what: &str,
    still_here: &dyn Fn(&Connection) -> Result<bool>,
    phases: &[Phase],
    pair: bool,
    moved: &mut RowsMoved,
) -> Result<Option<Tails>> {
    let phases: Vec<Phase> =
        phases.iter().copied().filter(|p| pair || !matches!(p, Phase::PairArtifacts | Phase::PairSyntheses)).collect();
    let total = writing(turns, |c| {
        let mut total = 0;
        for phase in &phases {
            if table_exists(c, phase.table())? {
                total += schema::rowid_span(c, phase.table())?.unwrap_or(0);
            }
        }
        Ok(total.max(0) as u64)
    })?;
    let mut tails = Tails { pair: Some(pair), ..Tails::NONE };
    let mut at = 0;
    let mut finished = false;
    let mut hold = |chunk: Chunk<'_>| writing(turns, |c| chunk(c));
    let chunk = |c: &Connection, n: u32| {
        let (mut next, mut next_tails) = (at, tails);
        let mut done = (0, true);
        let mut copied = RowsMoved::default();
        in_transaction(c, what, still_here, |c| loop {
            let Some(&phase) = phases.get(next) else { return Ok(()) };
            let after = next_tails.after[phase as usize];
            match next_ids(c, phase.table(), after, n)? {
                None => next += 1,
                Some((last, rows)) => {
                    copied = phase.run(c, (after, last))?;
                    next_tails.after[phase as usize] = last;
                    done = (rows, false);
                    return Ok(());
                }
            }
        })?;
        (at, tails) = (next, next_tails);
        moved.add(copied);
        finished = done.1;
        Ok(done)
    };
    run_in_chunks(ChunkSize::maintenance(), &mut hold, chunk, total, progress)?;
    Ok(finished.then_some(tails))
}

/// The last id and the number of rows of the next (up to) `n` rows of `table` after
/// `after`; `None` when there are none (or no such table).
fn next_ids(conn: &Connection, table: &str, after: i64, n: u32) -> Result<Option<(i64, u64)>> {
    if !table_exists(conn, table)? {
        return Ok(None);
    }
    let (last, rows): (Option<i64>, i64) = conn.query_row(
        &format!("SELECT max(id), count(*) FROM (SELECT id FROM {table} WHERE id > ?1 ORDER BY id LIMIT ?2)"),
        params![after, n],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok(last.map(|last| (last, rows as u64)))
}

impl RowsMoved {
    pub(crate) fn add(&mut self, other: RowsMoved) {
        self.artifacts_backfilled += other.artifacts_backfilled;
        self.syntheses_backfilled += other.syntheses_backfilled;
        self.artifacts_written_back += other.artifacts_written_back;
        self.syntheses_written_back += other.syntheses_written_back;
    }
}

/// Brings the new tables of a seed or first-layout file to the current layout.
fn update_layout(conn: &Connection, moved: &mut RowsMoved) -> Result<()> {
    let mut this_step = RowsMoved::default();
    in_transaction(
        conn,
        "bringing the new tables to the current layout",
        |c| Ok(schema::shape(c)?.is_stale()),
        |c| match schema::shape(c)? {
            Shape::Seed => {
                schema::create_current_tables(c)?;
                this_step = backfill(c)?;
                Ok(())
            }
            Shape::StoreRevision1 => rebuild_revision_1(c),
            _ => Ok(()),
        },
    )?;
    moved.add(this_step);
    Ok(())
}

/// Runs `work` in one IMMEDIATE transaction if `still_needed` says so once the write
/// lock is held; rolls back on any error.
fn in_transaction(
    conn: &Connection,
    what: &str,
    still_needed: impl Fn(&Connection) -> Result<bool>,
    work: impl FnOnce(&Connection) -> Result<()>,
) -> Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = still_needed(conn).and_then(|needed| if needed { work(conn) } else { Ok(()) });
    match result {
        Ok(()) => conn.execute_batch("COMMIT").map_err(Error::from),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(match e {
                e @ (Error::Busy(_)
                | Error::DiskFull(_)
                | Error::Migration(_)
                | Error::Corrupt(_)
                | Error::SchemaTooNew { .. }
                | Error::LayoutTooNew { .. }
                | Error::InFlight { .. }) => e,
                other => Error::Migration(format!("{what} failed: {other}")),
            })
        }
    }
}

fn create_fresh(conn: &Connection) -> Result<()> {
    conn.execute_batch(schema::ROUTING_TABLE_SQL)?;
    schema::create_current_tables(conn)?;
    conn.execute_batch(&format!("PRAGMA user_version = {LATEST_VERSION}"))?;
    Ok(())
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

/// The new tables, empty, beside the legacy ones (still version 0): what the backfill fills.
fn begin_v1(conn: &Connection) -> Result<()> {
    add_missing_legacy_columns(conn)?;
    conn.execute_batch(schema::ROUTING_TABLE_SQL)?;
    schema::create_current_tables(conn)
}

fn up_v1(conn: &Connection, tails: &Tails) -> Result<RowsMoved> {
    begin_v1(conn)?;
    backfill_after(conn, tails)
}

/// Columns this store adds to the legacy tables, all nullable (old binaries name their
/// columns on insert): what the legacy format cannot hold, so that rows written back
/// on a rollback come up again unchanged.
const LEGACY_EXTRAS: &[(&str, &str, &str)] = &[
    ("consensus_artifacts", "model_version", "TEXT"),
    ("consensus_artifacts", "created_at_ms", "INTEGER"),
    ("consensus_synthesis", "created_at_ms", "INTEGER"),
];

/// Adds [`LEGACY_EXTRAS`] to the legacy tables the file has. Idempotent.
pub(crate) fn add_legacy_extras(conn: &Connection) -> Result<()> {
    for &(table, column, kind) in LEGACY_EXTRAS {
        if table_exists(conn, table)? && !column_exists(conn, table, column)? {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {kind}"))?;
        }
    }
    Ok(())
}

/// New-table rows with no legacy row: never linked, or linked to a row that is gone.
const UNMIRRORED_OUTPUTS: &str = "NOT EXISTS (SELECT 1 FROM consensus_artifacts a WHERE a.id = o.legacy_artifact_id)";

/// [`UNMIRRORED_OUTPUTS`] for the artifacts `o` with ids in `ids`. Over all of them, once
/// every row has a link, as a list of the dangling links found on two indexes: tested
/// row by row it reads every row of the table.
fn unmirrored_outputs_sql(conn: &Connection, ids: Ids) -> Result<String> {
    if ids == ALL_IDS && !unlinked_outputs(conn)? {
        return Ok("o.id IN (SELECT y.id FROM agent_outputs y WHERE y.legacy_artifact_id IS NOT NULL
                      AND NOT EXISTS (SELECT 1 FROM consensus_artifacts a WHERE a.id = y.legacy_artifact_id))"
            .to_owned());
    }
    Ok(format!("{UNMIRRORED_OUTPUTS} {}", ids_sql("o.id", ids)))
}
const UNMIRRORED_SYNTHESES: &str = "r.synthesis_json IS NOT NULL
    AND NOT EXISTS (SELECT 1 FROM consensus_synthesis s WHERE s.id = r.legacy_synthesis_id)";

/// Writes the legacy copy of a synthesis (run `run`, at `at_ms`) and links the run to it:
/// dual write mode and the write-back share it.
pub(crate) fn copy_synthesis_to_legacy(conn: &Connection, run: i64, s: &NewSynthesis, at_ms: i64) -> Result<()> {
    conn.prepare_cached(&format!(
        "INSERT INTO consensus_synthesis (spec_id, stage, output_markdown, output_path, status, artifacts_count,
                agreements, conflicts, degraded, run_id, created_at, created_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, {}, ?11)",
        text_from_ms_sql("?11")
    ))?
    .execute(params![
        s.spec_id,
        s.stage,
        s.output_markdown,
        s.output_path,
        s.status,
        s.artifacts_count,
        s.agreements,
        s.conflicts,
        s.degraded,
        s.run_id,
        at_ms
    ])?;
    let legacy_id = conn.last_insert_rowid();
    conn.prepare_cached("UPDATE consensus_runs SET legacy_synthesis_id = ?2 WHERE id = ?1")?
        .execute(params![run, legacy_id])?;
    Ok(())
}

/// Writes every row that only the new tables hold into the legacy tables (legacy
/// timestamps, plus [`LEGACY_EXTRAS`] for what they cannot hold), linked to its copy, so
/// an old binary sees everything. Returns how many rows were written. Idempotent.
pub(crate) fn write_back(conn: &Connection) -> Result<RowsMoved> {
    write_back_after(conn, &Tails::NONE)
}

/// [`write_back`] of the rows above a bulk's `tails`.
fn write_back_after(conn: &Connection, tails: &Tails) -> Result<RowsMoved> {
    begin_write_back(conn)?;
    // The predecessor's dual-write copies are already in both schemas, unlinked.
    if tails.pairs(|| unlinked_outputs(conn))? {
        pair_artifact_copies(conn, None, tails.rest(Phase::PairArtifacts))?;
    }
    if tails.pairs(|| unlinked_syntheses(conn))? {
        pair_synthesis_copies(conn, None, tails.rest(Phase::PairSyntheses))?;
    }
    let mut written = write_back_outputs(conn, tails.rest(Phase::WriteBackOutputs))?;
    written.add(write_back_syntheses(conn, tails.rest(Phase::WriteBackSyntheses))?);
    verify_write_back(conn, tails)?;
    Ok(written)
}

/// That every new row above `tails` has its legacy copy.
fn verify_write_back(conn: &Connection, tails: &Tails) -> Result<()> {
    let left: i64 = conn.query_row(
        &format!(
            "SELECT (SELECT count(*) FROM agent_outputs o WHERE {})
                  + (SELECT count(*) FROM consensus_runs r WHERE {UNMIRRORED_SYNTHESES} {})",
            unmirrored_outputs_sql(conn, tails.rest(Phase::WriteBackOutputs))?,
            ids_sql("r.id", tails.rest(Phase::WriteBackSyntheses))
        ),
        [],
        |r| r.get(0),
    )?;
    if left != 0 {
        return Err(Error::Migration(format!(
            "writing the new tables back into the legacy ones left {left} rows without a legacy copy"
        )));
    }
    Ok(())
}

/// The legacy tables with every column a written-back row needs.
fn begin_write_back(conn: &Connection) -> Result<()> {
    conn.execute_batch(&legacy_tables_ddl())?;
    add_missing_legacy_columns(conn)?;
    add_legacy_extras(conn)
}

/// Writes back the artifacts with ids in `ids` that have no legacy copy.
fn write_back_outputs(conn: &Connection, ids: Ids) -> Result<RowsMoved> {
    let mut outputs = conn.prepare(&format!(
        "SELECT o.id, r.spec_id, r.stage, o.agent_name, o.content, o.response_text, r.orchestrator_run_id,
                {}, o.model_version, o.output_timestamp
         FROM agent_outputs o JOIN consensus_runs r ON r.id = o.run_id
         WHERE {} ORDER BY o.id",
        text_from_ms_sql("o.output_timestamp"),
        unmirrored_outputs_sql(conn, ids)?
    ))?;
    let mut insert = conn.prepare_cached(
        "INSERT INTO consensus_artifacts (spec_id, stage, agent_name, content_json, response_text, run_id, created_at,
                model_version, created_at_ms)
         VALUES (?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    let mut link = conn.prepare_cached("UPDATE agent_outputs SET legacy_artifact_id = ?2 WHERE id = ?1")?;
    let mut written = RowsMoved::default();
    let mut rows = outputs.query([])?;
    while let Some(row) = rows.next()? {
        let values: Vec<Value> = (0..10).map(|i| row.get(i)).collect::<Result<_, _>>()?;
        insert.execute(rusqlite::params_from_iter(values.iter()))?;
        link.execute(params![values[0], conn.last_insert_rowid()])?;
        written.artifacts_written_back += 1;
    }
    Ok(written)
}

/// Writes back the syntheses of the runs with ids in `ids` that have no legacy copy.
fn write_back_syntheses(conn: &Connection, (after, last): Ids) -> Result<RowsMoved> {
    let mut runs = conn.prepare_cached(&format!(
        "SELECT r.id, r.spec_id, r.stage, r.synthesis_json, COALESCE(r.degraded, 0), r.orchestrator_run_id,
                COALESCE(r.synthesized_at, r.run_timestamp)
         FROM consensus_runs r WHERE r.id > ?1 AND r.id <= ?2 AND {UNMIRRORED_SYNTHESES} ORDER BY r.id"
    ))?;
    let mut written = RowsMoved::default();
    let mut rows = runs.query(params![after, last])?;
    while let Some(row) = rows.next()? {
        let (id, spec, stage): (i64, String, String) = (row.get(0)?, row.get(1)?, row.get(2)?);
        let raw = crate::sqlite::legacy_rows::text(row, 3)?.unwrap_or_default();
        let s = synthesis_from_text(&raw, id, &spec, &stage, row.get(4)?, row.get(5)?, row.get(6)?);
        let new = NewSynthesis {
            spec_id: s.spec_id,
            stage: s.stage,
            output_markdown: s.output_markdown,
            output_path: s.output_path,
            status: s.status,
            artifacts_count: s.artifacts_count,
            agreements: s.agreements,
            conflicts: s.conflicts,
            degraded: s.degraded,
            run_id: s.run_id,
            ..NewSynthesis::default()
        };
        copy_synthesis_to_legacy(conn, id, &new, s.created_at_ms)?;
        written.syntheses_written_back += 1;
    }
    Ok(written)
}

fn down_v1(conn: &Connection) -> Result<RowsMoved> {
    let written = write_back(conn)?;
    conn.execute_batch("DROP TABLE agent_outputs; DROP TABLE consensus_runs; DROP TABLE IF EXISTS consensus_db_meta;")?;
    // The claims and keys go with the tables whose rows they name (a legacy file is the
    // predecessor's shape); an upgrade makes them again, empty, tokens from 1.
    conn.execute_batch("DROP TABLE IF EXISTS consensus_claims; DROP TABLE IF EXISTS consensus_idempotency;")?;
    Ok(written)
}

fn up_v2(conn: &Connection) -> Result<RowsMoved> {
    let copied = backfill(conn)?;
    conn.execute_batch("DROP TABLE IF EXISTS consensus_artifacts; DROP TABLE IF EXISTS consensus_synthesis;")?;
    clear_links(conn)?;
    Ok(copied)
}

/// Links to dropped legacy tables point at ids a recreated table hands out again (its
/// AUTOINCREMENT sequence went with it): at version 2 no link stands.
fn clear_links(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "UPDATE agent_outputs SET legacy_artifact_id = NULL WHERE legacy_artifact_id IS NOT NULL;
         UPDATE consensus_runs SET legacy_synthesis_id = NULL WHERE legacy_synthesis_id IS NOT NULL;",
    )?;
    Ok(())
}

/// The legacy schema, for tables that may exist already.
fn legacy_tables_ddl() -> String {
    LEGACY_SCHEMA_SQL
        .replace("CREATE TABLE ", "CREATE TABLE IF NOT EXISTS ")
        .replace("CREATE INDEX ", "CREATE INDEX IF NOT EXISTS ")
}

/// Recreates the legacy tables for old binaries and writes every row back into them:
/// version 1 is whole again.
fn down_v2(conn: &Connection, tails: &Tails) -> Result<RowsMoved> {
    begin_down_v2(conn)?;
    let mut moved = write_back_after(conn, tails)?;
    // And what that old binary wrote gets its copy in the new tables.
    moved.add(backfill_after(conn, tails)?);
    conn.execute("DELETE FROM consensus_db_meta WHERE key = 'write_back_from_2'", [])?;
    Ok(moved)
}

/// The legacy tables recreated, no link standing. Tables an old binary recreated at
/// version 2 hold only its own rows: no link to them stands — unless this move has begun
/// before (a `write_back_from_2` mark in `consensus_db_meta`, removed by its end), whose
/// links to the copies it wrote stand.
fn begin_down_v2(conn: &Connection) -> Result<()> {
    conn.execute_batch(&legacy_tables_ddl())?;
    let begun = table_exists(conn, "consensus_db_meta")?
        && conn.prepare("SELECT 1 FROM consensus_db_meta WHERE key = 'write_back_from_2'")?.exists([])?;
    if !begun {
        clear_links(conn)?;
    }
    begin_write_back(conn)?;
    if table_exists(conn, "consensus_db_meta")? {
        conn.execute("INSERT OR REPLACE INTO consensus_db_meta (key, value) VALUES ('write_back_from_2', 1)", [])?;
    }
    Ok(())
}

/// This store's first layout, rebuilt as the current one: same ids, same rows.
/// The old tables are renamed aside, copied, and dropped child first (so no cascade
/// runs). Runs that shared a millisecond move to the next free one.
fn rebuild_revision_1(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "ALTER TABLE consensus_runs RENAME TO consensus_runs_layout1;
         ALTER TABLE agent_outputs RENAME TO agent_outputs_layout1;",
    )?;
    schema::create_current_tables(conn)?;
    let synthesis = schema::synthesis_json_sql(
        "synthesis",
        "output_path",
        "synthesis_status",
        "artifacts_count",
        "agreements",
        "conflicts",
    );
    let mut runs = conn.prepare(&format!(
        "SELECT id, spec_id, stage, run_id, run_at_ms, COALESCE(consensus_ok, 0), degraded,
                CASE WHEN synthesis IS NOT NULL THEN {synthesis} END, synthesized_at_ms, legacy_synthesis_id
         FROM consensus_runs_layout1 ORDER BY id"
    ))?;
    let mut insert = conn.prepare(
        "INSERT INTO consensus_runs (id, spec_id, stage, orchestrator_run_id, run_timestamp, consensus_ok, degraded,
                synthesis_json, synthesized_at, legacy_synthesis_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) ON CONFLICT (spec_id, stage, run_timestamp) DO NOTHING",
    )?;
    let mut rows = runs.query([])?;
    while let Some(row) = rows.next()? {
        let mut values: Vec<Value> = (0..10).map(|i| row.get(i)).collect::<Result<_, _>>()?;
        while insert.execute(rusqlite::params_from_iter(values.iter()))? == 0 {
            values[4] = match values[4] {
                Value::Integer(at) => Value::Integer(at + 1),
                ref other => return Err(Error::Migration(format!("run {:?} has a run_at_ms of {other:?}", values[0]))),
            };
        }
    }
    conn.execute_batch(
        "INSERT INTO agent_outputs (id, run_id, agent_name, model_version, content, output_timestamp, response_text,
                legacy_artifact_id)
         SELECT id, run_pk, agent_name, model_version, content, output_at_ms, response_text, legacy_artifact_id
         FROM agent_outputs_layout1 ORDER BY id;
         DROP TABLE agent_outputs_layout1;
         DROP TABLE consensus_runs_layout1;",
    )?;
    let (old, new): (i64, i64) = conn.query_row(
        "SELECT (SELECT count(*) FROM sqlite_master WHERE name LIKE '%_layout1'), (SELECT count(*) FROM agent_outputs)",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    if old != 0 {
        return Err(Error::Migration(format!(
            "rebuilding layout 1 left {old} old tables behind ({new} outputs copied)"
        )));
    }
    Ok(())
}

/// Brings every legacy row into the new tables exactly once, then verifies that none
/// is left out. First pairs the copies a predecessor's dual-write build put in both
/// schemas (no link between them): same spec, stage, agent and content, timestamps
/// within [`PAIR_WINDOW_MS`], one to one, nearest first. Idempotent.
pub(crate) fn backfill(conn: &Connection) -> Result<RowsMoved> {
    backfill_after(conn, &Tails::NONE)
}

/// [`backfill`] of the legacy rows above a bulk's `tails`.
fn backfill_after(conn: &Connection, tails: &Tails) -> Result<RowsMoved> {
    let mut copied = RowsMoved::default();
    if table_exists(conn, "consensus_artifacts")? {
        if tails.pairs(|| unlinked_outputs(conn))? {
            pair_artifact_copies(conn, None, tails.rest(Phase::PairArtifacts))?;
        }
        copied.artifacts_backfilled = backfill_artifacts(conn, tails.rest(Phase::BackfillArtifacts))?;
    }
    if table_exists(conn, "consensus_synthesis")? {
        if tails.pairs(|| unlinked_syntheses(conn))? {
            pair_synthesis_copies(conn, None, tails.rest(Phase::PairSyntheses))?;
        }
        copied.syntheses_backfilled = backfill_syntheses(conn, tails.rest(Phase::BackfillSyntheses))?;
    }
    verify_backfill_after(conn, tails)?;
    Ok(copied)
}

/// The rows of one spec (`?1`), or of one of its stages (`?2`), or all rows.
pub(crate) type Scope<'a> = Option<(&'a str, Option<&'a str>)>;

fn scope_sql(scope: Scope) -> (&'static str, Vec<Value>) {
    match scope {
        None => ("", Vec::new()),
        Some((spec, stage)) => (
            "AND spec_id = ?1 AND (?2 IS NULL OR stage = ?2)",
            vec![Value::Text(spec.into()), stage.map_or(Value::Null, |s| Value::Text(s.into()))],
        ),
    }
}

/// Links the two copies of each artifact a dual-write build wrote (see [`backfill`]).
pub(crate) fn link_artifact_copies(conn: &Connection, scope: Scope) -> Result<()> {
    let any_unlinked = match scope {
        Some(_) => {
            conn.query_row("SELECT EXISTS (SELECT 1 FROM agent_outputs WHERE legacy_artifact_id IS NULL)", [], |r| {
                r.get(0)
            })?
        }
        None => unlinked_outputs(conn)?,
    };
    if !any_unlinked {
        return Ok(());
    }
    pair_artifact_copies(conn, scope, ALL_IDS)
}

/// Whether any new artifact has no link to a legacy row, asked of two indexes: the
/// partial one on the link leaves NULL out, so a search for one reads every row of the
/// table (KB-sized contents) whenever every row is linked, as after a backfill.
fn unlinked_outputs(conn: &Connection) -> Result<bool> {
    Ok(conn.query_row(
        "SELECT (SELECT count(*) FROM agent_outputs)
              > (SELECT count(*) FROM agent_outputs WHERE legacy_artifact_id IS NOT NULL)",
        [],
        |r| r.get(0),
    )?)
}

/// [`link_artifact_copies`] for the legacy rows with ids in `ids`, without first asking
/// whether any new row is unlinked.
fn pair_artifact_copies(conn: &Connection, scope: Scope, ids: Ids) -> Result<()> {
    let uncopied = match scope {
        Some(_) => format!(
            "NOT EXISTS (SELECT 1 FROM agent_outputs o WHERE o.legacy_artifact_id = a.id) {}",
            ids_sql("a.id", ids)
        ),
        None => uncopied_artifacts_sql(ids),
    };
    let mut legacy = conn.prepare(&format!(
        "SELECT a.id, a.spec_id, a.stage, a.agent_name, a.content_json, a.response_text, a.run_id, {}
         FROM consensus_artifacts a
         WHERE {uncopied} {} ORDER BY a.id",
        legacy_ms("a.created_at"),
        scope_sql(scope).0.replace("spec_id", "a.spec_id").replace("stage =", "a.stage =")
    ))?;
    let mut twin = conn.prepare(
        "SELECT o.id, o.run_id FROM consensus_runs r JOIN agent_outputs o ON o.run_id = r.id
         WHERE r.spec_id = ?1 AND r.stage = ?2 AND o.agent_name = ?3 AND o.content = ?4
           AND o.legacy_artifact_id IS NULL AND abs(o.output_timestamp - ?5) <= ?6
         ORDER BY abs(o.output_timestamp - ?5), o.id LIMIT 1",
    )?;
    let mut link = conn.prepare(
        "UPDATE agent_outputs SET legacy_artifact_id = ?2, response_text = COALESCE(response_text, ?3) WHERE id = ?1",
    )?;
    let mut label = conn
        .prepare("UPDATE consensus_runs SET orchestrator_run_id = ?2 WHERE id = ?1 AND orchestrator_run_id IS NULL")?;
    let mut rows = legacy.query(rusqlite::params_from_iter(scope_sql(scope).1))?;
    while let Some(a) = rows.next()? {
        let (id, spec, stage, agent, content): (i64, String, String, String, Value) =
            (a.get(0)?, a.get(1)?, a.get(2)?, a.get(3)?, a.get(4)?);
        let (response, run_id, at): (Value, Value, i64) = (a.get(5)?, a.get(6)?, a.get(7)?);
        let found: Option<(i64, i64)> = twin
            .query_row(params![spec, stage, agent, content, at, PAIR_WINDOW_MS], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        if let Some((output, run)) = found {
            link.execute(params![output, id, response])?;
            label.execute(params![run, run_id])?;
        }
    }
    Ok(())
}

/// Links the two copies of each synthesis a dual-write build wrote.
pub(crate) fn link_synthesis_copies(conn: &Connection, scope: Scope) -> Result<()> {
    let any_unlinked: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM consensus_runs WHERE synthesis_json IS NOT NULL AND legacy_synthesis_id IS NULL)",
        [],
        |r| r.get(0),
    )?;
    if !any_unlinked {
        return Ok(());
    }
    pair_synthesis_copies(conn, scope, ALL_IDS)
}

/// [`link_synthesis_copies`] for the legacy rows with ids in `ids`, without first asking
/// whether any new row is unlinked.
fn pair_synthesis_copies(conn: &Connection, scope: Scope, ids: Ids) -> Result<()> {
    let mut legacy = conn.prepare(&format!(
        "SELECT s.id, s.spec_id, s.stage, s.output_markdown, s.run_id, {}
         FROM consensus_synthesis s
         WHERE NOT EXISTS (SELECT 1 FROM consensus_runs r WHERE r.legacy_synthesis_id = s.id) {} {} ORDER BY s.id",
        legacy_ms("s.created_at"),
        scope_sql(scope).0.replace("spec_id", "s.spec_id").replace("stage =", "s.stage ="),
        ids_sql("s.id", ids)
    ))?;
    let markdown = schema::synthesis_field("synthesis_json", "output_markdown");
    let mut twin = conn.prepare(&format!(
        "SELECT id FROM consensus_runs
         WHERE spec_id = ?1 AND stage = ?2 AND synthesis_json IS NOT NULL AND legacy_synthesis_id IS NULL
           AND {markdown} = ?3 AND abs(COALESCE(synthesized_at, run_timestamp) - ?4) <= ?5
         ORDER BY abs(COALESCE(synthesized_at, run_timestamp) - ?4), id LIMIT 1"
    ))?;
    let mut link = conn.prepare(
        "UPDATE consensus_runs SET legacy_synthesis_id = ?2, orchestrator_run_id = COALESCE(orchestrator_run_id, ?3)
         WHERE id = ?1",
    )?;
    let mut rows = legacy.query(rusqlite::params_from_iter(scope_sql(scope).1))?;
    while let Some(s) = rows.next()? {
        let (id, spec, stage, markdown, run_id, at): (i64, String, String, Value, Value, i64) =
            (s.get(0)?, s.get(1)?, s.get(2)?, s.get(3)?, s.get(4)?, s.get(5)?);
        let found: Option<i64> =
            twin.query_row(params![spec, stage, markdown, at, PAIR_WINDOW_MS], |r| r.get(0)).optional()?;
        if let Some(run) = found {
            link.execute(params![run, id, run_id])?;
        }
    }
    Ok(())
}

/// The condition "legacy artifact `a` (id in `ids`) has no copy in the new tables", as a
/// list of ids found on two indexes: tested row by row it reads every legacy row.
fn uncopied_artifacts_sql(ids: Ids) -> String {
    if ids == ALL_IDS {
        "a.id IN (SELECT x.id FROM consensus_artifacts x
                  WHERE NOT EXISTS (SELECT 1 FROM agent_outputs o WHERE o.legacy_artifact_id = x.id))"
            .to_owned()
    } else {
        // A range of ids is read from the table itself: the list would scan a whole index.
        format!("NOT EXISTS (SELECT 1 FROM agent_outputs o WHERE o.legacy_artifact_id = a.id) {}", ids_sql("a.id", ids))
    }
}

/// [`uncopied_artifacts_sql`] for legacy syntheses `s`.
fn uncopied_syntheses_sql(ids: Ids) -> String {
    if ids == ALL_IDS {
        "s.id IN (SELECT x.id FROM consensus_synthesis x
                  WHERE NOT EXISTS (SELECT 1 FROM consensus_runs r WHERE r.legacy_synthesis_id = x.id))"
            .to_owned()
    } else {
        format!(
            "NOT EXISTS (SELECT 1 FROM consensus_runs r WHERE r.legacy_synthesis_id = s.id) {}",
            ids_sql("s.id", ids)
        )
    }
}

/// The condition "`column` is in `ids`" (our own integers, not user input), or none for all.
fn ids_sql(column: &str, ids: Ids) -> String {
    if ids == ALL_IDS {
        String::new()
    } else {
        format!("AND {column} > {} AND {column} <= {}", ids.0, ids.1)
    }
}

/// A legacy row's time in ms: the exact one a write-back kept, else its timestamp.
fn legacy_created_ms(conn: &Connection, table: &str, alias: &str) -> Result<String> {
    Ok(created_ms_sql(alias, column_exists(conn, table, "created_at_ms")?))
}

/// Copies the legacy artifacts with ids in `ids`; returns how many.
fn backfill_artifacts(conn: &Connection, ids: Ids) -> Result<i64> {
    let uncopied = uncopied_artifacts_sql(ids);
    // One open run per (spec_id, stage, run_id) group, unless one exists already.
    let created = legacy_created_ms(conn, "consensus_artifacts", "a")?;
    let model_version =
        if column_exists(conn, "consensus_artifacts", "model_version")? { "a.model_version" } else { "NULL" };
    let mut groups = conn.prepare(&format!(
        "SELECT a.spec_id, a.stage, a.run_id, MIN({created})
         FROM consensus_artifacts a
         WHERE {uncopied}
           AND NOT EXISTS (SELECT 1 FROM consensus_runs r WHERE r.spec_id = a.spec_id AND r.stage = a.stage
                           AND r.orchestrator_run_id IS a.run_id AND r.synthesis_json IS NULL)
         GROUP BY a.spec_id, a.stage, a.run_id"
    ))?;
    let mut rows = groups.query([])?;
    while let Some(g) = rows.next()? {
        let (spec, stage, run_id, at): (String, String, Option<String>, i64) =
            (g.get(0)?, g.get(1)?, g.get(2)?, g.get(3)?);
        schema::insert_run(conn, &spec, &stage, run_id.as_deref(), at)?;
    }
    let open_run = schema::open_run_sql("a.spec_id", "a.stage", "a.run_id");
    let copied = conn.execute(
        &format!(
            "INSERT INTO agent_outputs (run_id, agent_name, content, response_text, output_timestamp, legacy_artifact_id,
                    model_version)
             SELECT ({open_run}), {}, {}, {}, {created}, a.id, {model_version}
             FROM consensus_artifacts a
             WHERE {uncopied}
             ORDER BY a.id",
            text_sql("a.agent_name"),
            text_sql("a.content_json"),
            text_sql("a.response_text")
        ),
        [],
    )?;
    Ok(copied as i64)
}

/// Copies the legacy syntheses with ids in `ids`; returns how many.
fn backfill_syntheses(conn: &Connection, ids: Ids) -> Result<i64> {
    // A synthesis closes the newest open run of its group; otherwise it is a run of its own.
    let mut pending = conn.prepare(&format!(
        "SELECT id, spec_id, stage, run_id, {}, {}, {}, artifacts_count, {}, {}, {}, {}
         FROM consensus_synthesis s
         WHERE {}
         ORDER BY id",
        text_sql("output_markdown"),
        text_sql("output_path"),
        text_sql("status"),
        text_sql("agreements"),
        text_sql("conflicts"),
        bool_sql("degraded"),
        legacy_created_ms(conn, "consensus_synthesis", "s")?,
        uncopied_syntheses_sql(ids)
    ))?;
    let synthesis = schema::synthesis_json_sql("?5", "?6", "?7", "?8", "?9", "?10");
    let close = |run: &str| {
        format!(
            "UPDATE consensus_runs SET synthesis_json = {synthesis}, consensus_ok = 1,
                    degraded = ?11, synthesized_at = ?12, legacy_synthesis_id = ?1
             WHERE id = ({run})"
        )
    };
    let mut close_open_run = conn.prepare(&close(&schema::open_run_sql("?2", "?3", "?4")))?;
    let mut close_new_run = conn.prepare(&close("?13"))?;
    let mut copied = 0;
    let mut rows = pending.query([])?;
    while let Some(row) = rows.next()? {
        let mut values: Vec<Value> = (0..12).map(|i| row.get(i)).collect::<Result<_, _>>()?;
        if close_open_run.execute(rusqlite::params_from_iter(values.iter()))? == 0 {
            let (spec, stage, run_id, at): (String, String, Option<String>, i64) =
                (row.get(1)?, row.get(2)?, row.get(3)?, row.get(11)?);
            let run = schema::insert_run(conn, &spec, &stage, run_id.as_deref(), at)?;
            values.push(Value::Integer(run));
            close_new_run.execute(rusqlite::params_from_iter(values.iter()))?;
        }
        copied += 1;
    }
    Ok(copied)
}

const UNCOPIED_LEGACY: [(&str, &str); 2] = [
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
];

/// Legacy rows with no copy in the new tables (which must be in the current layout).
pub(crate) fn uncopied_legacy_rows(conn: &Connection) -> Result<i64> {
    let mut n = 0;
    for (legacy, count) in UNCOPIED_LEGACY {
        if table_exists(conn, legacy)? {
            n += conn.query_row(count, [], |r| r.get::<_, i64>(0))?;
        }
    }
    Ok(n)
}

fn verify_backfill(conn: &Connection) -> Result<()> {
    verify_backfill_after(conn, &Tails::NONE)
}

/// That every legacy row above `tails` has its copy in the new tables.
fn verify_backfill_after(conn: &Connection, tails: &Tails) -> Result<()> {
    // The legacy rows as UNCOPIED_LEGACY names them.
    let rows = [("a.id", Phase::BackfillArtifacts), ("s.id", Phase::BackfillSyntheses)];
    for ((legacy, check), (id, phase)) in UNCOPIED_LEGACY.into_iter().zip(rows) {
        if table_exists(conn, legacy)? {
            let check = format!("{check} {}", ids_sql(id, tails.rest(phase)));
            let missing: i64 = conn.query_row(&check, [], |r| r.get(0))?;
            if missing != 0 {
                return Err(Error::Migration(format!(
                    "backfill verification failed: {missing} {legacy} rows have no copy"
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(conn: &Connection, sql: &str) -> i64 {
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    fn legacy_db() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(LEGACY_SCHEMA_SQL).unwrap();
        conn.execute_batch(
            "INSERT INTO consensus_artifacts (spec_id, stage, agent_name, content_json, run_id, created_at)
               VALUES ('S1','plan','gemini','{\"a\":1}','r1','2025-01-02 03:04:05'),
                      ('S1','plan','claude','{\"a\":2}','r1','2025-01-02 03:04:06'),
                      ('S1','plan','code','{}',NULL,'2025-01-02 03:04:05'),
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
        upgrade(&conn, DEFAULT_VERSION).unwrap();
        assert_eq!(user_version(&conn).unwrap(), 1);
        assert_eq!(schema::shape(&conn).unwrap(), Shape::Current);
        assert_eq!(count(&conn, "SELECT count(*) FROM agent_outputs"), 4);
        // Groups: (S1,plan,r1), (S1,plan,NULL) — same first second, so the next free
        // millisecond — (S2,tasks,r9), plus the second r1 synthesis.
        assert_eq!(count(&conn, "SELECT count(*) FROM consensus_runs"), 4);
        assert_eq!(count(&conn, "SELECT count(DISTINCT run_timestamp) FROM consensus_runs WHERE spec_id = 'S1'"), 3);
        let (n, ms): (i64, i64) = conn
            .query_row(
                "SELECT count(*), MIN(o.output_timestamp) FROM agent_outputs o JOIN consensus_runs r ON r.id = o.run_id
                 WHERE r.orchestrator_run_id = 'r1' AND json_extract(r.synthesis_json, '$.output_markdown') = '# merged'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((n, ms), (2, 1_735_787_045_000));
        migrate(&conn, 1, None).unwrap(); // idempotent
        assert_eq!(count(&conn, "SELECT count(*) FROM agent_outputs"), 4);
    }

    #[test]
    fn a_fresh_file_gets_the_latest_version_directly() {
        let conn = Connection::open_in_memory().unwrap();
        assert_eq!(upgrade(&conn, DEFAULT_VERSION).unwrap().0, Shape::Empty);
        assert_eq!(user_version(&conn).unwrap(), LATEST_VERSION);
        assert_eq!(schema::shape(&conn).unwrap(), Shape::Current);
        assert!(!table_exists(&conn, "consensus_artifacts").unwrap());
    }

    #[test]
    fn opening_never_migrates_down() {
        let conn = legacy_db();
        migrate(&conn, 2, None).unwrap();
        upgrade(&conn, 1).unwrap();
        assert_eq!(user_version(&conn).unwrap(), 2);
        assert!(!table_exists(&conn, "consensus_artifacts").unwrap());
    }

    /// The race of two processes opening a legacy file at once, the interleaving forced:
    /// opener A has read version 0, another process then migrates to 2, and A goes on
    /// to migrate up to the default version. Before, A ran `migrate(1)` and took the file
    /// 2 -> 1, recreating empty legacy tables; opening now never goes down.
    #[test]
    fn an_opener_that_read_0_keeps_a_concurrent_migration_to_2() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("race.db");
        let a = Connection::open(&path).unwrap();
        a.execute_batch(LEGACY_SCHEMA_SQL).unwrap();
        assert_eq!(user_version(&a).unwrap(), 0);
        let b = Connection::open(&path).unwrap();
        migrate(&b, LATEST_VERSION, None).unwrap();
        upgrade(&a, DEFAULT_VERSION).unwrap();
        assert_eq!(user_version(&a).unwrap(), 2);
        assert!(!table_exists(&a, "consensus_artifacts").unwrap());
    }

    #[test]
    fn down_to_zero_writes_new_rows_back_and_up_again_keeps_them_whole() {
        let conn = Connection::open_in_memory().unwrap();
        upgrade(&conn, DEFAULT_VERSION).unwrap();
        let run = schema::insert_run(&conn, "S3", "plan", Some("r7"), 1_700_000_000_123).unwrap();
        conn.execute(
            "INSERT INTO agent_outputs (run_id, agent_name, model_version, content, output_timestamp)
             VALUES (?1, 'x', 'm-2', '{}', 1700000000456)",
            [run],
        )
        .unwrap();
        conn.execute(
            "UPDATE consensus_runs SET synthesis_json = '{\"output_markdown\":\"# s\",\"status\":\"success\"}',
                    synthesized_at = 1700000000789 WHERE id = ?1",
            [run],
        )
        .unwrap();
        migrate(&conn, 0, None).unwrap();
        assert_eq!(user_version(&conn).unwrap(), 0);
        assert!(!table_exists(&conn, "consensus_runs").unwrap());
        assert_eq!(
            count(
                &conn,
                "SELECT count(*) FROM consensus_artifacts WHERE spec_id = 'S3' AND run_id = 'r7' AND model_version = 'm-2'
                   AND created_at = '2023-11-14 22:13:20' AND created_at_ms = 1700000000456"
            ),
            1
        );
        assert_eq!(
            count(
                &conn,
                "SELECT count(*) FROM consensus_synthesis WHERE output_markdown = '# s' AND status = 'success'
                   AND run_id = 'r7' AND created_at_ms = 1700000000789"
            ),
            1
        );
        migrate(&conn, 1, None).unwrap();
        assert_eq!(
            count(
                &conn,
                "SELECT count(*) FROM agent_outputs WHERE model_version = 'm-2' AND output_timestamp = 1700000000456"
            ),
            1
        );
        assert_eq!(count(&conn, "SELECT count(*) FROM consensus_runs WHERE synthesized_at = 1700000000789"), 1);
    }

    #[test]
    fn a_destructive_step_refuses_while_agents_are_in_flight() {
        let conn = legacy_db();
        upgrade(&conn, DEFAULT_VERSION).unwrap();
        conn.execute_batch(
            "INSERT INTO agent_executions (agent_id, spec_id, stage, phase_type, agent_name, spawned_at)
             VALUES ('a1', 'S1', 'plan', 'regular_stage', 'gemini', datetime('now')),
                    ('old', 'S1', 'plan', 'regular_stage', 'gemini', datetime('now', '-2 hours'));",
        )
        .unwrap();
        let guard = Some(InFlightGuard::default());
        for target in [0, 2] {
            let err = migrate(&conn, target, guard).unwrap_err();
            assert!(matches!(err, Error::InFlight { count: 1, max_age_s: 3600, from: 1, .. }), "{err}");
            assert_eq!(user_version(&conn).unwrap(), 1);
            // The check before the move (the CLI's, before its backup) refuses the same way.
            assert_eq!(check(&conn, target, guard).unwrap_err().to_string(), err.to_string());
            check(&conn, target, None).unwrap();
        }
        assert!(matches!(check(&conn, 3, None), Err(Error::InvalidInput { .. })));
        check(&conn, 1, guard).unwrap();
        migrate(&conn, 1, guard).unwrap(); // not destructive
        conn.execute_batch("UPDATE agent_executions SET completed_at = datetime('now') WHERE agent_id = 'a1'").unwrap();
        check(&conn, 2, guard).unwrap();
        assert_eq!(user_version(&conn).unwrap(), 1, "a check moves nothing");
        migrate(&conn, 2, guard).unwrap();
        assert_eq!(user_version(&conn).unwrap(), 2);
    }

    #[test]
    fn a_failing_step_leaves_the_previous_version() {
        let conn = legacy_db();
        // A table the migration wants to create already exists in no known shape.
        conn.execute_batch("CREATE TABLE agent_outputs (x)").unwrap();
        let err = migrate(&conn, 1, None).unwrap_err();
        assert!(matches!(err, Error::Migration(_)), "{err}");
        assert_eq!(user_version(&conn).unwrap(), 0);
        assert!(!table_exists(&conn, "consensus_runs").unwrap());
    }

    /// Every row of `table` as text, runs by what they hold (their ids follow the order
    /// in which groups were first met, which chunks change), outputs with their run's.
    fn rows(conn: &Connection, table: &str) -> Vec<String> {
        let sql = match table {
            "consensus_runs" => "SELECT spec_id, stage, orchestrator_run_id, run_timestamp, consensus_ok, degraded,
                                        synthesis_json, synthesized_at, legacy_synthesis_id IS NOT NULL
                                 FROM consensus_runs ORDER BY 1, 2, 3, 4, 7"
                .to_owned(),
            "agent_outputs" => "SELECT o.id, r.spec_id, r.stage, r.orchestrator_run_id, r.run_timestamp, o.agent_name,
                                       o.content, o.output_timestamp, o.response_text, o.legacy_artifact_id
                                FROM agent_outputs o JOIN consensus_runs r ON r.id = o.run_id ORDER BY o.id"
                .to_owned(),
            // Written back in the order of the runs' ids.
            "consensus_synthesis" => "SELECT spec_id, stage, output_markdown, output_path, status, artifacts_count,
                                             agreements, conflicts, degraded, run_id, created_at, created_at_ms
                                      FROM consensus_synthesis ORDER BY 1, 2, 3, 10, 11"
                .to_owned(),
            _ => format!("SELECT * FROM {table} ORDER BY id"),
        };
        let mut stmt = conn.prepare(&sql).unwrap();
        let columns = stmt.column_count();
        stmt.query_map([], |r| {
            Ok((0..columns).map(|i| format!("{:?}", r.get::<_, Value>(i).unwrap())).collect::<Vec<_>>().join("|"))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    /// Legacy ids follow time (the predecessor's `created_at` is the insert's clock), so
    /// the run a backfill makes for a group gets its earliest time in the first chunk
    /// that reaches the group, as in one transaction. (A file whose ids do not follow
    /// time gets the earliest time among the group's rows in that chunk.)
    #[test]
    fn a_move_in_chunks_leaves_the_rows_one_transaction_leaves() {
        let legacy = || {
            let conn = Connection::open_in_memory().unwrap();
            conn.execute_batch(LEGACY_SCHEMA_SQL).unwrap();
            conn.execute_batch(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000)
                 INSERT INTO consensus_artifacts (spec_id, stage, agent_name, content_json, run_id, created_at)
                 SELECT 'S' || (i % 7), 'plan', 'a' || (i % 3), '{\"n\":' || i || '}',
                        CASE WHEN i % 11 = 0 THEN NULL ELSE 'r' || (i % 40) END,
                        datetime('2025-01-01', '+' || (i / 3) || ' seconds') FROM n;
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 700)
                 INSERT INTO consensus_synthesis (spec_id, stage, output_markdown, status, run_id, created_at)
                 SELECT 'S' || (i % 7), 'plan', '# ' || i, 'ok', 'r' || (i % 40),
                        datetime('2025-01-02', '+' || i || ' seconds') FROM n;",
            )
            .unwrap();
            conn
        };
        let (chunked, whole) = (legacy(), legacy());
        migrate(&chunked, 1, None).unwrap(); // 3,700 rows: chunks of 256 and up
        bring_layout_current(&whole, true, LongSteps::Run, &mut RowsMoved::default()).unwrap();
        in_transaction(&whole, "one", |_| Ok(true), |c| up_v1(c, &Tails::NONE).map(drop)).unwrap();
        for table in ["consensus_runs", "agent_outputs"] {
            assert_eq!(rows(&chunked, table), rows(&whole, table), "{table} after 0 -> 1");
        }
        migrate(&chunked, 2, None).unwrap();
        in_transaction(&whole, "one", |_| Ok(true), |c| up_v2(c).map(drop)).unwrap();
        for table in ["consensus_runs", "agent_outputs"] {
            assert_eq!(rows(&chunked, table), rows(&whole, table), "{table} after 1 -> 2");
        }
        migrate(&chunked, 1, None).unwrap();
        in_transaction(&whole, "one", |_| Ok(true), |c| down_v2(c, &Tails::NONE).map(drop)).unwrap();
        for table in ["consensus_artifacts", "consensus_synthesis", "consensus_runs", "agent_outputs"] {
            assert_eq!(rows(&chunked, table), rows(&whole, table), "{table} after 2 -> 1");
        }
        migrate(&chunked, 0, None).unwrap();
        in_transaction(&whole, "one", |_| Ok(true), |c| down_v1(c).map(drop)).unwrap();
        for table in ["consensus_artifacts", "consensus_synthesis"] {
            assert_eq!(rows(&chunked, table), rows(&whole, table), "{table} after 1 -> 0");
        }
        assert_eq!(count(&chunked, "SELECT count(*) FROM consensus_artifacts"), 3000);
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
        migrate(&conn, 1, None).unwrap();
        assert!(column_exists(&conn, "agent_executions", "extraction_error").unwrap());
        assert!(column_exists(&conn, "consensus_artifacts", "run_id").unwrap());
    }

    #[test]
    fn future_versions_and_layouts_are_refused() {
        let conn = Connection::open_in_memory().unwrap();
        assert!(matches!(migrate(&conn, 9, None), Err(Error::InvalidInput { .. })));
        conn.execute_batch("PRAGMA user_version = 7").unwrap();
        assert!(matches!(migrate(&conn, 1, None), Err(Error::SchemaTooNew { found: 7, supported: 2 })));
        conn.execute_batch("PRAGMA user_version = -5").unwrap();
        assert!(matches!(upgrade(&conn, 1), Err(Error::Migration(ref m)) if m.contains("-5")));
        let newer = Connection::open_in_memory().unwrap();
        upgrade(&newer, 1).unwrap();
        newer.execute_batch("UPDATE consensus_db_meta SET value = 6 WHERE key = 'layout'").unwrap();
        assert!(matches!(upgrade(&newer, 1), Err(Error::LayoutTooNew { found: 6, supported: 5 })));
    }

    #[test]
    fn dual_written_copies_pair_once_and_the_rest_is_backfilled() {
        let conn = legacy_db(); // S1/plan gemini at 03:04:05, claude at 03:04:06, code at 03:04:05
        conn.execute_batch(schema::SEED_TABLES_SQL).unwrap();
        // The dual-write build's copies of gemini and claude (ms within 2 s), and a
        // same-content copy 5 s away that is no twin; code's copy never arrived.
        conn.execute_batch(
            "INSERT INTO consensus_runs (spec_id, stage, run_timestamp, consensus_ok) VALUES
               ('S1','plan',1735787045400,1), ('S1','plan',1735787046900,1), ('S1','plan',1735787050000,1);
             INSERT INTO agent_outputs (run_id, agent_name, content, output_timestamp) VALUES
               (1,'gemini','{\"a\":1}',1735787045400), (2,'claude','{\"a\":2}',1735787046900),
               (3,'gemini','{\"a\":1}',1735787050000);
             PRAGMA user_version = 1;",
        )
        .unwrap();
        assert_eq!(schema::shape(&conn).unwrap(), Shape::Seed);
        upgrade(&conn, DEFAULT_VERSION).unwrap();
        assert_eq!(schema::shape(&conn).unwrap(), Shape::Current);
        // 3 seed rows + 2 legacy rows without a twin (code, gpt_pro).
        assert_eq!(count(&conn, "SELECT count(*) FROM agent_outputs"), 5);
        assert_eq!(count(&conn, "SELECT count(*) FROM agent_outputs WHERE legacy_artifact_id IS NOT NULL"), 4);
        assert_eq!(count(&conn, "SELECT legacy_artifact_id FROM agent_outputs WHERE id = 1"), 1);
        assert_eq!(count(&conn, "SELECT count(*) FROM agent_outputs WHERE id = 3 AND legacy_artifact_id IS NULL"), 1);
        // The legacy copy's run id found its home on the seed run.
        assert_eq!(count(&conn, "SELECT count(*) FROM consensus_runs WHERE id = 1 AND orchestrator_run_id = 'r1'"), 1);
    }

    #[test]
    fn layout_1_is_rebuilt_with_every_row_and_id() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(schema::ROUTING_TABLE_SQL).unwrap();
        conn.execute_batch(
            "CREATE TABLE consensus_runs (id INTEGER PRIMARY KEY, spec_id TEXT NOT NULL, stage TEXT NOT NULL, run_id TEXT,
               run_at_ms INTEGER NOT NULL, consensus_ok INTEGER, degraded INTEGER NOT NULL DEFAULT 0, synthesis TEXT,
               synthesis_status TEXT, output_path TEXT, artifacts_count INTEGER, agreements TEXT, conflicts TEXT,
               synthesized_at_ms INTEGER, legacy_synthesis_id INTEGER);
             CREATE TABLE agent_outputs (id INTEGER PRIMARY KEY,
               run_pk INTEGER NOT NULL REFERENCES consensus_runs(id) ON DELETE CASCADE, agent_name TEXT NOT NULL,
               model_version TEXT, content TEXT NOT NULL, response_text TEXT, output_at_ms INTEGER NOT NULL,
               legacy_artifact_id INTEGER);
             INSERT INTO consensus_runs (id, spec_id, stage, run_id, run_at_ms, synthesis, synthesis_status,
               agreements, synthesized_at_ms) VALUES (5, 'S','plan','r1',100,'# s','success','[\"x\"]',150),
               (6, 'S','plan','r2',100,NULL,NULL,NULL,NULL);
             INSERT INTO agent_outputs (id, run_pk, agent_name, content, response_text, output_at_ms)
               VALUES (10, 5, 'g', '{}', 'raw', 100), (11, 6, 'c', '[]', NULL, 100);
             PRAGMA user_version = 2;",
        )
        .unwrap();
        conn.execute_batch("PRAGMA foreign_keys = ON").unwrap();
        assert_eq!(schema::shape(&conn).unwrap(), Shape::StoreRevision1);
        upgrade(&conn, DEFAULT_VERSION).unwrap();
        assert_eq!(schema::shape(&conn).unwrap(), Shape::Current);
        assert_eq!(user_version(&conn).unwrap(), 2);
        let runs: Vec<(i64, i64, Option<String>)> = conn
            .prepare("SELECT id, run_timestamp, synthesis_json FROM consensus_runs ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let json = r##"{"output_markdown":"# s","output_path":null,"status":"success","artifacts_count":null,"agreements":"[\"x\"]","conflicts":null}"##;
        assert_eq!(runs, vec![(5, 100, Some(json.into())), (6, 101, None)]);
        assert_eq!(
            count(&conn, "SELECT count(*) FROM agent_outputs WHERE (id, run_id) IN (VALUES (10, 5), (11, 6))"),
            2
        );
        assert_eq!(count(&conn, "SELECT count(*) FROM sqlite_master WHERE name LIKE '%layout1%'"), 0);
    }
}
