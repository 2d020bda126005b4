//! The store's `Database`: a SQLite engine (`sqlite::Engine`: pool, path, options)
//! plus what the store keeps above it — the file's layout for the dual-schema reader,
//! its counters, and the background maintenance thread. The store's operations are
//! `impl Database` blocks in `executions.rs`, `artifacts.rs` and `synthesis.rs`; the
//! engine's own (conn, begin/write/read/query, health, vacuum, backup, pragmas, …) are
//! reached through `Deref`. `Database` is `Send + Sync`: share it between threads.

use std::borrow::Cow;
use std::ops::Deref;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::LazyLock;

use parking_lot::Mutex;

use super::legacy::{Columns, Layout};
use super::modes::{Modes, ReadMode, WriteMode};
use super::read_metrics::ReadMetrics;
use crate::error::{Error, Result};
use crate::model::ReaderCounts;
use crate::sqlite::database::{Engine, Options};
use crate::sqlite::maintenance::{Maintenance, MaintenanceOptions, Progress};
use crate::sqlite::migrations::{InFlightGuard, Version, LATEST_VERSION};
use crate::sqlite::schema::{self, Shape};

pub struct Database {
    engine: Engine,
    pub(crate) layout: Layout,
    pub(crate) reader: ReadMetrics,
    pub(crate) modes: Modes,
    pub(crate) maintenance: Mutex<Option<Maintenance>>,
    /// Added to the database's clock for leases and keys (`set_clock_offset`: tests).
    pub(crate) clock_offset_ms: std::sync::atomic::AtomicI64,
}

impl Deref for Database {
    type Target = Engine;

    #[inline]
    fn deref(&self) -> &Engine {
        &self.engine
    }
}

impl Database {
    /// Opens (or creates) a store at `path`; `":memory:"` gives one in-memory database
    /// shared by every pooled connection.
    pub fn open(path: impl AsRef<Path>, options: Options) -> Result<Database> {
        super::idempotency::check_days(options.idempotency_days)?;
        let db = Database {
            engine: Engine::open(path, options)?,
            layout: Layout::default(),
            reader: Default::default(),
            modes: Modes::default(),
            maintenance: Mutex::new(None),
            clock_offset_ms: Default::default(),
        };
        db.refresh_layout()?;
        Ok(db)
    }

    /// Migrates the schema to `target`, up or down; returns the version reached. Moving
    /// down loses no row (see `migrations::migrate`). A step that drops or downgrades
    /// tables refuses while agents are in flight ([`InFlightGuard::default`]).
    pub fn migrate(&self, target: Version) -> Result<Version> {
        self.migrate_with(target, Some(InFlightGuard::default()))
    }

    /// [`Database::migrate`] with the in-flight guard given: `None` forces the move.
    pub fn migrate_with(&self, target: Version, guard: Option<InFlightGuard>) -> Result<Version> {
        self.migrate_reporting(target, guard, None)
    }

    /// [`Database::migrate_with`], telling `progress` the rows a long copy between the
    /// schemas has gone through (it runs in chunks, writers getting their turn between).
    pub fn migrate_reporting(
        &self,
        target: Version,
        guard: Option<InFlightGuard>,
        progress: Option<Progress>,
    ) -> Result<Version> {
        self.refuse_dropping_legacy_in_use(target)?;
        let reached = self.engine.migrate(target, guard, progress)?;
        self.refresh_layout()?;
        Ok(reached)
    }

    /// What [`Database::migrate_with`] would refuse, checked without moving: nothing is
    /// written (a read-only store can check), so a caller can refuse before it backs up.
    pub fn check_migration(&self, target: Version, guard: Option<InFlightGuard>) -> Result<()> {
        self.refuse_dropping_legacy_in_use(target)?;
        self.engine.check_migration(target, guard)
    }

    fn refuse_dropping_legacy_in_use(&self, target: Version) -> Result<()> {
        if target != LATEST_VERSION {
            return Ok(());
        }
        for (mode, needs_legacy) in [
            (format!("write_mode='{}'", self.write_mode()), self.write_mode() == WriteMode::Dual),
            (format!("read_mode='{}'", self.read_mode()), self.read_mode() == ReadMode::Legacy),
        ] {
            if needs_legacy {
                return Err(Error::Migration(format!(
                    "refusing to drop the legacy tables of {:?}: this store is open with {mode}, which uses \
                     them; reopen it with write_mode='v1' and read_mode='dual' or 'v1' first",
                    self.path
                )));
            }
        }
        Ok(())
    }

    pub fn write_mode(&self) -> WriteMode {
        self.modes.write()
    }

    pub fn read_mode(&self) -> ReadMode {
        self.modes.read()
    }

    /// Switches the schemas this store writes. Dual mode needs the legacy tables; turning
    /// it on first writes back into them every row only the new tables hold (what a
    /// v1-only phase wrote), so an old binary on the same file sees everything.
    pub fn set_write_mode(&self, mode: WriteMode) -> Result<()> {
        if mode == WriteMode::Dual {
            self.require_legacy_tables("write_mode", mode.as_str())?;
            if !self.read_only && self.layout.new_tables.load(Ordering::Acquire) {
                self.require_current()?;
                // The switch first: a write the lane runs after the write-back sees it (writes
                // read the mode inside their transaction), one before is written back.
                let before = self.modes.write();
                self.modes.set_write(mode);
                let written =
                    self.write_repeatable_as("write_mode", |tx| crate::sqlite::legacy_copy::write_back(tx).map(drop));
                if let Err(e) = written.and_then(|()| self.refresh_layout()) {
                    self.modes.set_write(before);
                    return Err(e);
                }
            }
        }
        self.modes.set_write(mode);
        Ok(())
    }

    /// Switches the schemas this store reads: `Legacy` needs the legacy tables, `V1`
    /// the new ones. Turning the fallback off (`V1`) first copies into the new tables the
    /// legacy rows that have no copy there (what old binaries wrote since the migration),
    /// so no row drops out of sight.
    pub fn set_read_mode(&self, mode: ReadMode) -> Result<()> {
        match mode {
            ReadMode::Legacy => self.require_legacy_tables("read_mode", mode.as_str())?,
            ReadMode::V1 => {
                if !self.layout.new_tables.load(Ordering::Acquire) && !self.layout.stale.load(Ordering::Acquire) {
                    return Err(Error::invalid(
                        "read_mode",
                        format!("'v1' reads the new tables, and database {:?} has none (schema version 0)", self.path),
                    ));
                }
                let has_legacy = self.layout.legacy_artifacts.load(Ordering::Acquire)
                    || self.layout.legacy_synthesis.load(Ordering::Acquire);
                if has_legacy && self.read_only {
                    let uncopied = crate::sqlite::legacy_copy::uncopied_legacy_rows(&*self.conn()?)?;
                    if uncopied > 0 {
                        return Err(Error::invalid(
                            "read_mode",
                            format!(
                                "'v1' would hide {uncopied} legacy rows of {:?} that have no copy in the new tables, \
                                 and a read-only store cannot copy them; open it writable once or read with 'dual'",
                                self.path
                            ),
                        ));
                    }
                } else if has_legacy {
                    self.require_current()?;
                    self.write_repeatable_as("read_mode", |tx| crate::sqlite::legacy_copy::backfill(tx).map(drop))?;
                }
            }
            ReadMode::Dual => {}
        }
        self.modes.set_read(mode);
        Ok(())
    }

    fn require_legacy_tables(&self, name: &str, mode: &str) -> Result<()> {
        if self.layout.legacy_artifacts.load(Ordering::Acquire) && self.layout.legacy_synthesis.load(Ordering::Acquire)
        {
            return Ok(());
        }
        Err(Error::invalid(
            name,
            format!(
                "'{mode}' uses the legacy tables (consensus_artifacts, consensus_synthesis), and database {:?} has \
                 none: it is a new file or its legacy tables were dropped (schema version 2); \
                 migrate(1) recreates them",
                self.path
            ),
        ))
    }

    /// Brings the file up to at least `target` and its tables to the current layout,
    /// as opening does; never down. Returns the version reached.
    pub fn upgrade(&self, target: Version) -> Result<Version> {
        self.upgrade_reporting(target, None)
    }

    /// [`Database::upgrade`], telling `progress` about a long copy as
    /// [`Database::migrate_reporting`] does.
    pub fn upgrade_reporting(&self, target: Version, progress: Option<Progress>) -> Result<Version> {
        let reached = self.engine.upgrade(target, progress)?;
        self.refresh_layout()?;
        Ok(reached)
    }

    pub(crate) fn refresh_layout(&self) -> Result<()> {
        let catalog = schema::Catalog::read(&*self.conn()?)?;
        let shape = catalog.shape()?;
        let readable = matches!(shape, Shape::Seed | Shape::Current);
        self.layout.new_tables.store(readable, Ordering::Release);
        self.layout.current.store(shape == Shape::Current, Ordering::Release);
        self.layout.stale.store(shape == Shape::StoreRevision1, Ordering::Release);
        self.layout.legacy_artifacts.store(catalog.has_table("consensus_artifacts"), Ordering::Release);
        self.layout.legacy_synthesis.store(catalog.has_table("consensus_synthesis"), Ordering::Release);
        let coordination = schema::COORDINATION_TABLES.iter().all(|t| catalog.has_table(t));
        self.layout.coordination.store(coordination, Ordering::Release);
        let column = |table: &str, name: &'static str| -> Result<&'static str> {
            Ok(if catalog.has_column(table, name) { name } else { Columns::MISSING })
        };
        *self.layout.columns.write() = Columns {
            artifact_run_id: column("consensus_artifacts", "run_id")?,
            artifact_response_text: column("consensus_artifacts", "response_text")?,
            synthesis_run_id: column("consensus_synthesis", "run_id")?,
            execution_run_id: column("agent_executions", "run_id")?,
            execution_extraction_error: column("agent_executions", "extraction_error")?,
            execution_branch_id: column("agent_executions", "branch_id")?,
            output_response_text: column("agent_outputs", "response_text")?,
            output_legacy_id: column("agent_outputs", "legacy_artifact_id")?,
            run_orchestrator_id: column("consensus_runs", "orchestrator_run_id")?,
            run_legacy_id: column("consensus_runs", "legacy_synthesis_id")?,
            run_synthesized_at: column("consensus_runs", "synthesized_at")?,
            artifact_model_version: column("consensus_artifacts", "model_version")?,
            artifact_created_ms: column("consensus_artifacts", "created_at_ms")?,
            synthesis_created_ms: column("consensus_synthesis", "created_at_ms")?,
            routing_index: catalog.has_index("idx_agent_executions_route"),
            expected_agents: catalog.has_table("consensus_expected_agents"),
        };
        Ok(())
    }

    /// Stops maintenance and closes every pooled connection on this thread: when it
    /// returns, the store holds no file open (a connection still in use by an open
    /// transaction closes when that transaction ends). Idempotent.
    pub fn close(&self) {
        self.stop_maintenance();
        self.engine.close();
    }

    /// Runs one statement of the caller's SQL in its own IMMEDIATE transaction, through the
    /// write lane (repeated after a busy attempt that rolled back); returns rows changed.
    pub fn execute(&self, sql: &str, params: &crate::sqlite::transaction::Params) -> Result<usize> {
        self.write_repeatable_as("execute", |tx| tx.execute_params(sql, params))
    }

    /// Starts the background maintenance thread (replacing a running one).
    pub fn start_maintenance(&self, options: MaintenanceOptions) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly(format!("maintenance writes; {:?} is read-only", self.path)));
        }
        options.validate()?;
        if self.pool.is_closed() {
            return Err(Error::Closed);
        }
        let pool = self.pool.clone();
        let mut slot = self.maintenance.lock();
        if let Some(old) = slot.take() {
            old.stop();
        }
        *slot = Some(Maintenance::start(
            pool,
            self.lane.clone(),
            options,
            self.in_memory,
            self.options.replicated,
            crate::store::idempotency::keep_ms(self.options.idempotency_days),
        )?);
        Ok(())
    }

    /// Stops the background thread and waits for it (unless called from that thread,
    /// e.g. from `on_cycle`: it then stops once the hook returns); a no-op when none runs.
    pub fn stop_maintenance(&self) {
        let running = self.maintenance.lock().take();
        match running {
            // A forked child has no such thread to join.
            Some(m) if self.is_forked() => std::mem::forget(m),
            Some(m) => m.stop(),
            None => {}
        }
    }

    /// Cycles completed by the running maintenance thread (`None` when none runs).
    pub fn maintenance_cycles(&self) -> Option<u64> {
        self.maintenance.lock().as_ref().map(|m| m.cycles.load(Ordering::Acquire))
    }

    /// How often each schema served the dual-schema reader, and each read path's latency.
    pub fn reader_counts(&self) -> ReaderCounts {
        self.reader.counts()
    }

    /// Artifact and synthesis writes need the new tables in the current layout.
    pub(super) fn require_current(&self) -> Result<()> {
        if self.layout.current.load(Ordering::Acquire) {
            return Ok(());
        }
        let why = if self.layout.new_tables.load(Ordering::Acquire) {
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
    pub(super) fn new_tables_readable(&self) -> Result<bool> {
        if self.layout.stale.load(Ordering::Acquire) {
            return Err(Error::Migration(format!(
                "database {:?} has the new tables in consensus-db's first layout; open it once with migrate=True \
                 (or call migrate()) to read them",
                self.path
            )));
        }
        Ok(self.layout.new_tables.load(Ordering::Acquire))
    }

    /// A read's SQL: built once for the current layout, per call for a file that
    /// lacks some of this store's columns (a seed file opened without migrating).
    pub(super) fn sql_for_layout(
        &self,
        current: &'static LazyLock<String>,
        build: fn(Columns) -> String,
        columns: Columns,
    ) -> Cow<'static, str> {
        if self.layout.current.load(Ordering::Acquire) {
            Cow::Borrowed(current.as_str())
        } else {
            Cow::Owned(build(columns))
        }
    }

    /// Deletes touch every table: a file whose new tables are not current is migrated first.
    pub(super) fn require_current_if_new_tables(&self) -> Result<()> {
        if self.layout.new_tables.load(Ordering::Acquire) || self.layout.stale.load(Ordering::Acquire) {
            self.require_current()?;
        }
        Ok(())
    }

    /// Writes that need a column an old, unmigrated file predates.
    pub(super) fn require_column(&self, column: &str, table_column: &str) -> Result<()> {
        if column != Columns::MISSING {
            return Ok(());
        }
        if self.read_only {
            return Err(Error::ReadOnly(format!(
                "database {:?} predates the {table_column} column, and a read-only store cannot add it; open it \
                 writable once (the migration adds it)",
                self.path
            )));
        }
        Err(Error::Migration(format!(
            "database {:?} predates the {table_column} column (an older shape); call migrate() first",
            self.path
        )))
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        // The engine closes the pool when it drops, right after.
        self.stop_maintenance();
    }
}
