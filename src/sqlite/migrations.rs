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
//! Every transaction of a step re-checks the file inside it (a concurrent migrator may
//! have moved it). A step that copies rows between the schemas (`legacy_copy.rs`) does
//! the bulk in chunks, each its own IMMEDIATE transaction, and ends with one that bumps
//! `user_version`: a failure or a crash leaves rows partly copied, each copy linked to
//! its original — a state the dual-schema rule reads once each — and the next move
//! resumes. Opening only ever moves a file up; down-migrations run only when a caller
//! asks for a lower version explicitly.

use rusqlite::types::Value;
use rusqlite::{params, Connection};

use crate::error::{Error, Result};
use crate::sqlite::chunks::{run_in_chunks, Chunk, ChunkSize, Progress};
pub use crate::sqlite::legacy_copy::RowsMoved;
use crate::sqlite::legacy_copy::{
    add_missing_legacy_columns, backfill, backfill_after, begin_write_back, clear_links, legacy_tables_ddl,
    unpaired_copies, verify_backfill_below, verify_write_back_below, write_back, write_back_after, Phase, Tails,
};
use crate::sqlite::replica::{self, CheckpointMode};
use crate::sqlite::schema::{self, column_exists, table_exists, Shape};

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
    check: fn(&Connection, &Tails) -> Result<()>,
    end: fn(&Connection, &Tails) -> Result<RowsMoved>,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "consensus_runs + agent_outputs (the predecessor's seed layout and this store's columns), backfilled from the legacy tables",
        up: Step { begin: begin_v1, phases: &BACKFILL, check: verify_backfill_below, end: up_v1 },
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
            check: |_, _| Ok(()),
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
            check: |_, _| Ok(()),
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
            check: |c, tails| {
                verify_write_back_below(c, tails)?;
                verify_backfill_below(c, tails)
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
/// predecessor's `branch_id` column and `idx_agent_executions_branch` index and this
/// store's table of expected agents (revision 5, `consensus_expected_agents`), and the
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
            if !table_exists(c, "consensus_expected_agents")? {
                c.execute_batch(schema::EXPECTED_AGENTS_SQL)?;
                changes.push("created the table consensus_expected_agents".to_owned());
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
            && index_exists(conn, "idx_agent_executions_branch")?
            && table_exists(conn, "consensus_expected_agents")?)
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
fn writing<T>(turns: &mut dyn Turns, work: impl FnMut(&Connection) -> Result<T>) -> Result<T> {
    returning(|w| turns.write(w), work)
}

/// Runs `work` in one read turn (outside the lane) and returns what it returned.
fn reading<T>(turns: &mut dyn Turns, work: impl FnMut(&Connection) -> Result<T>) -> Result<T> {
    returning(|w| turns.read(w), work)
}

fn returning<T>(
    turn: impl FnOnce(Work<'_>) -> Result<()>,
    mut work: impl FnMut(&Connection) -> Result<T>,
) -> Result<T> {
    let mut out = None;
    turn(&mut |c| {
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
    writing(turns, |c| {
        in_transaction(c, &what, still_here, |c| {
            refuse(c)?;
            begin(c)
        })
    })?;
    // Whether the bulk pairs twins (two index counts: outside the lane); without, the
    // pairs start at the legacy tables' ends as they were before the question.
    let pair = reading(turns, |c| {
        let [artifacts, syntheses] = PAIRS.map(|p| last_id(c, p.table()));
        Ok(if unpaired_copies(c)? { None } else { Some([artifacts?, syntheses?]) })
    })?;
    // A move the guard refuses once it has emptied tables puts their rows back first: the
    // refusal leaves the file as old binaries read it.
    let refill = |turns: &mut dyn Turns, moved: &mut RowsMoved, e: Error| -> Error {
        let Some(phases) = refill_phases(phases).filter(|_| matches!(e, Error::InFlight { .. })) else {
            return e;
        };
        let refilled = writing(turns, |c| in_transaction(c, &what, still_here, begin_write_back)).and_then(|()| {
            let checks = Checks { what: &what, still_here: &still_here, refuse: &|_| Ok(()) };
            run_phases(turns, None, &checks, phases, pair, moved)
        });
        match refilled {
            Ok(_) => e,
            Err(again) => Error::Migration(format!("{e}; putting back the rows it had emptied failed: {again}")),
        }
    };
    let checks = Checks { what: &what, still_here: &still_here, refuse: &refuse };
    let tails = match run_phases(turns, progress, &checks, phases, pair, moved) {
        Ok(Some(tails)) => tails,
        Ok(None) => return Ok(false),
        Err(e) => return Err(refill(turns, moved, e)),
    };
    turns.read(&mut |c| if still_here(c)? { check(c, &tails) } else { Ok(()) })?;
    let ended = writing(turns, |c| {
        let mut tail = RowsMoved::default();
        in_transaction(c, &what, still_here, |c| {
            refuse(c)?;
            tail = end(c, &tails)?;
            c.execute_batch(&format!("PRAGMA user_version = {to}"))?;
            Ok(())
        })?;
        Ok(tail)
    });
    match ended {
        Ok(tail) => moved.add(tail),
        Err(e) => return Err(refill(turns, moved, e)),
    }
    Ok(true)
}

/// What puts back the rows a move's phases emptied (the legacy tables: written back
/// from the new ones; the new tables: backfilled from the legacy ones), if it empties any.
fn refill_phases(phases: &[Phase]) -> Option<&'static [Phase]> {
    if phases.contains(&Phase::EmptyLegacyArtifacts) {
        Some(&[Phase::WriteBackOutputs, Phase::WriteBackSyntheses])
    } else if phases.contains(&Phase::EmptyOutputs) {
        Some(&[Phase::BackfillArtifacts, Phase::BackfillSyntheses])
    } else {
        None
    }
}

/// Runs `phases` in chunks, each its own transaction in its own write turn, sized to
/// hold the write lock about [`CHUNK_TARGET`](crate::sqlite::chunks::CHUNK_TARGET); adds
/// what each chunk copied to `moved` as it commits and tells `progress` the rows gone
/// through of the tables' (estimated) total. Ends early when another process made the
/// move meanwhile (`still_here` false). Returns how far each phase went, or `None` when
/// `progress` stopped the move.
/// What the transactions of a step check: which move it is (named in errors), that the
/// file is still where the move began (another process may have made it), and the
/// in-flight guard (before each chunk that deletes rows, and at the end).
#[derive(Clone, Copy)]
struct Checks<'a> {
    what: &'a str,
    still_here: &'a dyn Fn(&Connection) -> Result<bool>,
    refuse: &'a dyn Fn(&Connection) -> Result<()>,
}

fn run_phases(
    turns: &mut dyn Turns,
    progress: Option<&mut Progress>,
    checks: &Checks<'_>,
    phases: &[Phase],
    pair_after: Option<[i64; 2]>,
    moved: &mut RowsMoved,
) -> Result<Option<Tails>> {
    let Checks { what, still_here, refuse } = *checks;
    let phases: Vec<Phase> = phases.iter().copied().filter(|p| pair_after.is_none() || !PAIRS.contains(p)).collect();
    // Twins a dual-write build writes while the move runs are paired before a chunk copies
    // either of them (the bulk's pairs are over by then, or skipped: their cursors start
    // at `pair_after`), and so by the end.
    let mut tails = Tails { pair: Some(true), ..Tails::NONE };
    for (pairing, after) in PAIRS.iter().zip(pair_after.unwrap_or([i64::MIN; 2])) {
        tails.after[*pairing as usize] = after;
    }
    let total = reading(turns, |c| {
        let mut total = 0;
        for phase in &phases {
            if table_exists(c, phase.table())? {
                total += schema::rowid_span(c, phase.table())?.unwrap_or(0);
            }
        }
        Ok(total.max(0) as u64)
    })?;
    let mut at = 0;
    let mut finished = false;
    let mut hold = |chunk: Chunk<'_>| {
        let done = writing(turns, |c| chunk(c));
        // The chunk's pages copied into the file now, outside the lane (PASSIVE waits for
        // no one), rather than by whichever commit next crosses `wal_autocheckpoint`.
        if done.is_ok() {
            let _ = turns.read(&mut |c| replica::checkpoint(c, CheckpointMode::Passive).map(drop));
        }
        done
    };
    let chunk = |c: &Connection, n: u32| {
        let (mut next, mut next_tails) = (at, tails);
        let mut done = (0, true);
        let mut copied = RowsMoved::default();
        in_transaction(c, what, still_here, |c| loop {
            for &pairing in PAIRS.iter().filter(|p| !phases[next.min(phases.len())..].contains(p)) {
                let after = next_tails.after[pairing as usize];
                if let Some((last, _)) = next_ids(c, pairing.table(), after, u32::MAX)? {
                    pairing.run(c, (after, last))?;
                    next_tails.after[pairing as usize] = last;
                }
            }
            let Some(&phase) = phases.get(next) else { return Ok(()) };
            let after = next_tails.after[phase as usize];
            match next_ids(c, phase.table(), after, n)? {
                None => next += 1,
                Some((last, rows)) => {
                    if phase.empties() {
                        refuse(c)?; // the in-flight guard, before each chunk it deletes
                    }
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

/// The phases that pair a dual-write build's copies with their legacy twins.
const PAIRS: [Phase; 2] = [Phase::PairArtifacts, Phase::PairSyntheses];

/// The highest id of `table` (0 when it is empty, or absent).
fn last_id(conn: &Connection, table: &str) -> Result<i64> {
    if !table_exists(conn, table)? {
        return Ok(0);
    }
    let last: Option<i64> = conn.query_row(&format!("SELECT max(id) FROM {table}"), [], |r| r.get(0))?;
    Ok(last.unwrap_or(0))
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
    conn.execute_batch(schema::EXPECTED_AGENTS_SQL)?;
    schema::create_current_tables(conn)?;
    conn.execute_batch(&format!("PRAGMA user_version = {LATEST_VERSION}"))?;
    Ok(())
}

/// The new tables, empty, beside the legacy ones (still version 0): what the backfill fills.
fn begin_v1(conn: &Connection) -> Result<()> {
    add_missing_legacy_columns(conn)?;
    conn.execute_batch(schema::ROUTING_TABLE_SQL)?;
    conn.execute_batch(schema::EXPECTED_AGENTS_SQL)?;
    schema::create_current_tables(conn)
}

fn up_v1(conn: &Connection, tails: &Tails) -> Result<RowsMoved> {
    begin_v1(conn)?;
    backfill_after(conn, tails)
}

fn down_v1(conn: &Connection) -> Result<RowsMoved> {
    let written = write_back(conn)?;
    conn.execute_batch("DROP TABLE agent_outputs; DROP TABLE consensus_runs; DROP TABLE IF EXISTS consensus_db_meta;")?;
    // The claims and keys go with the tables whose rows they name (a legacy file is the
    // predecessor's shape); an upgrade makes them again, empty, tokens from 1.
    conn.execute_batch("DROP TABLE IF EXISTS consensus_claims; DROP TABLE IF EXISTS consensus_idempotency;")?;
    // Version 0 holds no table of this store's.
    conn.execute_batch("DROP TABLE IF EXISTS consensus_expected_agents;")?;
    Ok(written)
}

fn up_v2(conn: &Connection) -> Result<RowsMoved> {
    let copied = backfill(conn)?;
    conn.execute_batch("DROP TABLE IF EXISTS consensus_artifacts; DROP TABLE IF EXISTS consensus_synthesis;")?;
    clear_links(conn)?;
    Ok(copied)
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
        newer
            .execute_batch(&format!("UPDATE consensus_db_meta SET value = {} WHERE key = 'layout'", schema::LAYOUT + 1))
            .unwrap();
        assert!(
            matches!(upgrade(&newer, 1), Err(Error::LayoutTooNew { found, supported: schema::LAYOUT }) if found == schema::LAYOUT + 1)
        );
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
