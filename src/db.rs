//! Opening a database: the persistent settings and migrations on one bootstrap
//! connection, then a pool (`pool.rs`) whose every new connection gets the
//! per-connection pragmas, verified. `Database` is `Send + Sync`: share it between threads.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use rusqlite::{Connection, OpenFlags};

use crate::error::{Error, Result};
use crate::fork;
use crate::migrations::{self, Version};
use crate::pragmas::{self, Pragmas};
use crate::schema::{self, Shape};

pub use crate::pool::{Conn, Pool};

/// How to open a store. `Options::default()` is the spec's configuration.
#[derive(Clone, Debug)]
pub struct Options {
    pub pool_size: u32,
    /// Connections opened with the store (at least one); more are opened on demand,
    /// up to `pool_size`, and every one stays open until the store closes.
    pub min_idle: u32,
    pub checkout_timeout: Duration,
    pub read_only: bool,
    /// Create the file if it does not exist.
    pub create: bool,
    pub pragmas: Pragmas,
    /// A non-empty database whose auto_vacuum mode differs is converted with a VACUUM;
    /// with `false` it is refused with a pragma verification error instead.
    pub convert_auto_vacuum: bool,
    /// Migrate to this schema version on open; `None` leaves the schema alone.
    pub migrate_to: Option<Version>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            pool_size: 10,
            min_idle: 1,
            checkout_timeout: Duration::from_secs(10),
            read_only: false,
            create: true,
            pragmas: Pragmas::default(),
            convert_auto_vacuum: true,
            migrate_to: Some(migrations::DEFAULT_VERSION),
        }
    }
}

/// What opening did to the file, for reports and logs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// `Some((from, to))` when auto_vacuum was converted with a VACUUM.
    pub auto_vacuum_converted: Option<(String, String)>,
    pub journal_mode_changed: Option<(String, String)>,
    pub migrated: Option<(Version, Version)>,
    /// The shape the file had when it was opened (`schema::Shape::describe`).
    pub shape: String,
    /// Whether the new tables were brought from an older layout to the current one.
    pub layout_updated: bool,
}

/// Which tables the file has, in which layout; decides which paths the dual-schema
/// reader takes and whether artifact writes can go ahead.
#[derive(Debug, Default)]
pub(crate) struct Layout {
    /// The new tables are readable (the seed layout or the current one).
    pub v1: AtomicBool,
    /// The new tables are in the current layout: this store writes them.
    pub current: AtomicBool,
    /// The new tables are in this store's first layout, which only a migration makes
    /// readable again (a store opened with `migrate=False`, or read-only).
    pub stale: AtomicBool,
    pub legacy_artifacts: AtomicBool,
    pub legacy_synthesis: AtomicBool,
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
    pub output_response_text: &'static str,
    pub output_legacy_id: &'static str,
    pub run_orchestrator_id: &'static str,
    pub run_legacy_id: &'static str,
    pub run_synthesized_at: &'static str,
}

impl Default for Columns {
    fn default() -> Self {
        Columns {
            artifact_run_id: "run_id",
            artifact_response_text: "response_text",
            synthesis_run_id: "run_id",
            execution_run_id: "run_id",
            execution_extraction_error: "extraction_error",
            output_response_text: "response_text",
            output_legacy_id: "legacy_artifact_id",
            run_orchestrator_id: "orchestrator_run_id",
            run_legacy_id: "legacy_synthesis_id",
            run_synthesized_at: "synthesized_at",
        }
    }
}

impl Columns {
    pub const MISSING: &'static str = "NULL";
}

pub struct Database {
    pub(crate) pool: Pool,
    pub(crate) path: String,
    pub(crate) in_memory: bool,
    pub(crate) read_only: bool,
    pub(crate) options: Options,
    pub(crate) layout: Layout,
    pub(crate) reader: crate::store::ReaderStats,
    pub(crate) maintenance: Mutex<Option<crate::maintenance::Maintenance>>,
    open_report: OpenReport,
    opened_in: fork::Origin,
    /// Keeps a `:memory:` database alive: memdb frees it with its last connection.
    keeper: Mutex<Option<Connection>>,
}

/// Readies a connection for the pool: per-connection pragmas, applied then verified.
fn ready(conn: &Connection, pragmas: &Pragmas, in_memory: bool, read_only: bool) -> Result<()> {
    conn.set_prepared_statement_cache_capacity(64);
    pragmas.apply_connection(conn)?;
    if read_only {
        verify_connection_scope(pragmas, conn)
    } else {
        pragmas.verify(conn, in_memory)
    }
}

/// A read-only store cannot set persistent pragmas, so it verifies only what it set.
fn verify_connection_scope(p: &Pragmas, conn: &Connection) -> Result<()> {
    let mut only = p.clone();
    for s in p.scoped(pragmas::Scope::Persistent) {
        only.unset(s.name)?;
    }
    only.verify(conn, true)
}

/// Process-wide SQLite settings, applied before the first connection opens: memory
/// statistics off (otherwise every SQLite allocation takes a global mutex) and
/// mutexes that spin before sleeping (see `sqlite_mutex`).
pub(crate) fn configure_sqlite() {
    static CONFIGURE: std::sync::Once = std::sync::Once::new();
    CONFIGURE.call_once(|| {
        // SAFETY: runs once, before this library opens any connection; SQLite answers
        // SQLITE_MISUSE (ignored) if something else initialised it already.
        unsafe {
            rusqlite::ffi::sqlite3_config(rusqlite::ffi::SQLITE_CONFIG_MEMSTATUS, 0 as std::ffi::c_int);
        }
        crate::sqlite_mutex::install();
    });
}

fn memdb_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("file:/consensus-db-{}-{}?vfs=memdb", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

impl Database {
    /// Opens (or creates) a store at `path`; `":memory:"` gives one in-memory database
    /// shared by every pooled connection.
    pub fn open(path: impl AsRef<Path>, options: Options) -> Result<Database> {
        configure_sqlite();
        let display = path.as_ref().display().to_string();
        if options.pool_size == 0 {
            return Err(Error::invalid("pool_size", "must be at least 1, got 0"));
        }
        if options.min_idle > options.pool_size {
            return Err(Error::invalid(
                "min_idle",
                format!("{} is larger than pool_size {}", options.min_idle, options.pool_size),
            ));
        }
        let in_memory = display == ":memory:";
        let (target, flags) = if in_memory {
            if options.read_only {
                return Err(Error::invalid("read_only", "an in-memory database cannot be opened read-only"));
            }
            (memdb_name(), OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_URI)
        } else {
            let mut flags = if options.read_only {
                OpenFlags::SQLITE_OPEN_READ_ONLY
            } else {
                OpenFlags::SQLITE_OPEN_READ_WRITE
            };
            if options.create && !options.read_only {
                flags |= OpenFlags::SQLITE_OPEN_CREATE;
            } else if !path.as_ref().exists() {
                return Err(Error::Sqlite(format!("database file {display:?} does not exist")));
            }
            (display.clone(), flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        };
        let in_file = |e: Error| e.context(&format!("database {display:?}"));

        let bootstrap = Connection::open_with_flags(&target, flags)
            .map_err(|e| in_file(Error::from(e)))?;
        let open_report = prepare_file(&bootstrap, &options, in_memory).map_err(in_file)?;

        let (pragmas, read_only) = (options.pragmas.clone(), options.read_only);
        let pool = Pool::new(options.pool_size, options.checkout_timeout, move || {
            let conn = Connection::open_with_flags(&target, flags)?;
            ready(&conn, &pragmas, in_memory, read_only)?;
            Ok(conn)
        });
        // A file's bootstrap connection becomes the pool's first (saves an open and a
        // close); a `:memory:` one stays outside, keeping the database alive.
        let keeper = if in_memory {
            Some(bootstrap)
        } else {
            ready(&bootstrap, &options.pragmas, in_memory, options.read_only)?;
            pool.add_idle(bootstrap);
            None
        };

        let db = Database {
            pool,
            path: display,
            in_memory,
            read_only: options.read_only,
            options,
            layout: Layout::default(),
            reader: Default::default(),
            maintenance: Mutex::new(None),
            open_report,
            opened_in: fork::Origin::here(),
            keeper: Mutex::new(keeper),
        };
        // The first checkout proves a pooled connection gets, and keeps, every pragma.
        let first: Vec<Conn> = (0..db.options.min_idle.max(1)).map(|_| db.conn()).collect::<Result<_>>()?;
        drop(first);
        db.refresh_layout()?;
        Ok(db)
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    pub fn is_in_memory(&self) -> bool {
        self.in_memory
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    pub fn open_report(&self) -> &OpenReport {
        &self.open_report
    }

    pub(crate) fn is_forked(&self) -> bool {
        self.opened_in.check().is_err()
    }

    pub fn is_closed(&self) -> bool {
        self.pool.is_closed()
    }

    /// Checks a connection out of the pool (returned when dropped).
    pub fn conn(&self) -> Result<Conn> {
        self.opened_in.check()?;
        self.pool.get()
    }

    /// Pool state: (connections open, of which idle).
    pub fn pool_state(&self) -> Result<(u32, u32)> {
        self.opened_in.check()?;
        if self.pool.is_closed() {
            return Err(Error::Closed);
        }
        Ok(self.pool.state())
    }

    /// The current value of every configured pragma, read from a pooled connection.
    pub fn pragmas(&self) -> Result<Vec<(&'static str, String)>> {
        let conn = self.conn()?;
        self.options
            .pragmas
            .settings()
            .iter()
            .map(|s| Ok((s.name, pragmas::read(&conn, s.name)?)))
            .collect()
    }

    /// Re-verifies every configured pragma on a pooled connection.
    pub fn verify_pragmas(&self) -> Result<()> {
        let conn = self.conn()?;
        if self.read_only {
            verify_connection_scope(&self.options.pragmas, &conn)
        } else {
            self.options.pragmas.verify(&conn, self.in_memory)
        }
    }

    /// Migrates the schema to `target`, up or down; returns the version reached.
    pub fn migrate(&self, target: Version) -> Result<Version> {
        self.migrating(|conn| migrations::migrate(conn, target))
    }

    /// Brings the file up to at least `target` and its tables to the current layout,
    /// as opening does; never down. Returns the version reached.
    pub fn upgrade(&self, target: Version) -> Result<Version> {
        self.migrating(|conn| migrations::upgrade(conn, target).map(drop))
    }

    fn migrating(&self, work: impl FnOnce(&Connection) -> Result<()>) -> Result<Version> {
        if self.read_only {
            return Err(Error::ReadOnly(format!("cannot migrate {:?}", self.path)));
        }
        let conn = self.conn()?;
        work(&conn)?;
        let reached = migrations::user_version(&conn)?;
        drop(conn);
        self.refresh_layout()?;
        Ok(reached)
    }

    pub fn schema_version(&self) -> Result<Version> {
        migrations::user_version(&*self.conn()?)
    }

    pub(crate) fn refresh_layout(&self) -> Result<()> {
        let conn = self.conn()?;
        let shape = schema::shape(&conn)?;
        let readable = matches!(shape, Shape::Seed | Shape::Current);
        self.layout.v1.store(readable, Ordering::Release);
        self.layout.current.store(shape == Shape::Current, Ordering::Release);
        self.layout.stale.store(shape == Shape::StoreRevision1, Ordering::Release);
        self.layout.legacy_artifacts.store(schema::table_exists(&conn, "consensus_artifacts")?, Ordering::Release);
        self.layout.legacy_synthesis.store(schema::table_exists(&conn, "consensus_synthesis")?, Ordering::Release);
        let column = |table: &str, name: &'static str| -> Result<&'static str> {
            Ok(if schema::column_exists(&conn, table, name)? { name } else { Columns::MISSING })
        };
        *self.layout.columns.write() = Columns {
            artifact_run_id: column("consensus_artifacts", "run_id")?,
            artifact_response_text: column("consensus_artifacts", "response_text")?,
            synthesis_run_id: column("consensus_synthesis", "run_id")?,
            execution_run_id: column("agent_executions", "run_id")?,
            execution_extraction_error: column("agent_executions", "extraction_error")?,
            output_response_text: column("agent_outputs", "response_text")?,
            output_legacy_id: column("agent_outputs", "legacy_artifact_id")?,
            run_orchestrator_id: column("consensus_runs", "orchestrator_run_id")?,
            run_legacy_id: column("consensus_runs", "legacy_synthesis_id")?,
            run_synthesized_at: column("consensus_runs", "synthesized_at")?,
        };
        Ok(())
    }

    /// Stops maintenance and closes every pooled connection on this thread: when it
    /// returns, the store holds no file open (a connection still in use by an open
    /// transaction closes when that transaction ends). Idempotent.
    pub fn close(&self) {
        self.stop_maintenance();
        self.pool.close();
        let keeper = self.keeper.lock().take();
        if self.is_forked() {
            // Closing an inherited connection in a forked child could checkpoint or
            // unlink the parent's WAL: leak it instead.
            std::mem::forget(keeper);
        }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        self.close();
    }
}

/// Everything that changes the file, done once on one connection before the pool
/// opens: refuse what must be refused (before writing anything), then auto_vacuum,
/// journal_mode and migrations, in that order.
fn prepare_file(conn: &Connection, options: &Options, in_memory: bool) -> Result<OpenReport> {
    let mut report = OpenReport::default();
    if let Some(ms) = options.pragmas.get("busy_timeout") {
        pragmas::set_raw(conn, "busy_timeout", ms)?;
    }
    // Opening is lazy: read the header now so a non-database is refused here.
    conn.query_row("PRAGMA schema_version", [], |_| Ok(()))?;
    let found = migrations::user_version(conn)?;
    let shape = schema::shape(conn)?;
    report.shape = shape.describe(found);
    if options.read_only {
        return Ok(report);
    }
    if let Some(want) = options.pragmas.get("auto_vacuum") {
        let actual = pragmas::read(conn, "auto_vacuum")?;
        if actual != want {
            pragmas::set_raw(conn, "auto_vacuum", want)?;
            // On a database with tables the new mode only takes effect after a VACUUM.
            if pragmas::read(conn, "auto_vacuum")? != want {
                if !options.convert_auto_vacuum {
                    return Err(Error::Pragma { pragma: "auto_vacuum".into(), wanted: want.into(), actual });
                }
                conn.execute_batch("VACUUM")?;
                report.auto_vacuum_converted = Some((actual, want.to_string()));
            }
        }
    }
    if let (Some(want), false) = (options.pragmas.get("journal_mode"), in_memory) {
        let actual = pragmas::read(conn, "journal_mode")?;
        if actual != want {
            set_journal_mode(conn, want)?;
            report.journal_mode_changed = Some((actual, want.to_string()));
        }
    }
    options.pragmas.apply_connection(conn)?;
    if let Some(target) = options.migrate_to {
        migrations::upgrade(conn, target)?;
        let reached = migrations::user_version(conn)?;
        if reached != found {
            report.migrated = Some((found, reached));
        }
        report.layout_updated = shape.is_stale();
    }
    Ok(report)
}

/// `journal_mode` does not wait on the busy handler: when another process is switching
/// at the same moment, retry briefly instead of failing the open.
fn set_journal_mode(conn: &Connection, want: &str) -> Result<()> {
    let mut actual = String::new();
    for _ in 0..100 {
        match conn.query_row(&format!("PRAGMA journal_mode = {want}"), [], |r| r.get::<_, String>(0)) {
            Ok(mode) if mode.eq_ignore_ascii_case(want) => return Ok(()),
            Ok(mode) => actual = mode.to_ascii_lowercase(),
            Err(e) => match Error::from(e) {
                Error::Busy(m) => actual = m,
                other => return Err(other),
            },
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(Error::Pragma { pragma: "journal_mode".into(), wanted: want.into(), actual })
}
