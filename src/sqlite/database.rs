//! Opening a database: the persistent settings and migrations on one bootstrap
//! connection (on the opening thread, so its errors are immediate and typed; it closes
//! then), then a pool (`pool.rs`: r2d2) whose every new connection gets the
//! per-connection pragmas, verified (`VerifiedPragmas`). `Engine` is the open file: the pool, the path and
//! options, the open report, the process that opened it; `Send + Sync`. The store's
//! `Database` (`store/database.rs`) is an engine plus what the store keeps above it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags};

use crate::error::{Error, Result};
use crate::fork;
use crate::retry::{Retrier, RetryPolicy};
use crate::sqlite::chunks::Progress;
use crate::sqlite::host_queue::HostQueue;
use crate::sqlite::migrations::{self, RowsMoved, Version};
use crate::sqlite::pragmas::{self, Pragmas, VerifiedPragmas};
use crate::sqlite::replica;
use crate::sqlite::schema;
use crate::sqlite::writer::{LaneStats, WriteLane};
use crate::wait::{Changes, OpenWatcher, Poll, SQLITE_POLL};
use std::sync::Arc;

pub use crate::sqlite::pool::{Conn, Pool};

/// How to open a store. `Options::default()` is the configuration docs/how-it-works.md
/// describes ("Pool and pragmas").
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
    /// Read the path as an SQLite URI (`file:data.db?mode=ro`). Otherwise it is a file
    /// name, opened exactly as given, even one that starts with `file:`.
    pub uri: bool,
    /// Busy databases and pool timeouts are retried with this policy on every write,
    /// `begin` and opening (`retry.rs`); `None` turns retrying off.
    pub retry: Option<RetryPolicy>,
    /// A replica (Litestream) streams this file's WAL off the host: checkpoints are
    /// PASSIVE only and `busy_timeout` must be at least 5 s (`replica.rs`). A file
    /// Litestream has replicated is recognised by its tables without this flag.
    pub replicated: bool,
    /// How many days an idempotency key is kept (`docs/claims.md`).
    pub idempotency_days: i64,
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
            uri: false,
            retry: Some(RetryPolicy::default()),
            replicated: false,
            idempotency_days: crate::store::DEFAULT_IDEMPOTENCY_DAYS,
        }
    }
}

report! {
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
        /// What opening's migration copied between the schemas.
        pub rows_moved: RowsMoved,
        /// What the additive layout steps changed, one line each (`migrations::upgrade`).
        pub layout_steps: Vec<String>,
    }
}

pub struct Engine {
    pub(crate) pool: Pool,
    /// The path as given, for messages (lossy if it is not UTF-8).
    pub(crate) path: String,
    given: PathBuf,
    /// The file opened, byte for byte (None in memory or for a URI).
    pub(crate) file: Option<PathBuf>,
    pub(crate) in_memory: bool,
    pub(crate) read_only: bool,
    pub(crate) options: Options,
    open_report: OpenReport,
    opened_in: fork::Origin,
    /// Every write of this store goes through it (`writer/`).
    pub(crate) lane: Arc<WriteLane>,
    /// Moved by every commit of the lane and, while someone waits, by a watcher of
    /// other processes' commits (`wait.rs`).
    pub(crate) changes: Arc<Changes>,
    /// Keeps a `:memory:` database alive: memdb frees it with its last connection.
    keeper: Mutex<Option<Connection>>,
    /// The retry policy and the count of retries made (`retry.rs`).
    pub(crate) retrier: Retrier,
    /// What the last migration copied between the schemas (`rows_moved`).
    last_moved: Mutex<RowsMoved>,
}

fn memdb_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("file:/consensus-db-{}-{}?vfs=memdb", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

impl Engine {
    /// Opens (or creates) a database at `path`; `":memory:"` gives one in-memory database
    /// shared by every pooled connection.
    ///
    /// A busy file (another process holding a lock past `busy_timeout`) is retried with
    /// `options.retry`; what no retry can fix (a pragma that fails verification, a file
    /// that is not a database) fails at once.
    pub fn open(path: impl AsRef<Path>, options: Options) -> Result<Engine> {
        let path = path.as_ref();
        let retrier = Retrier::new(options.retry.clone());
        let mut engine = retrier.run("open", || Engine::open_once(path, options.clone()))?;
        engine.retrier = retrier;
        Ok(engine)
    }

    fn open_once(path: &Path, options: Options) -> Result<Engine> {
        crate::sqlite::mutex::configure_sqlite();
        let display = path.display().to_string();
        if options.pool_size == 0 {
            return Err(Error::invalid("pool_size", "must be at least 1, got 0"));
        }
        if options.min_idle > options.pool_size {
            return Err(Error::invalid(
                "min_idle",
                format!("{} is larger than pool_size {}", options.min_idle, options.pool_size),
            ));
        }
        let in_memory = path.as_os_str() == ":memory:";
        if options.replicated {
            if in_memory {
                return Err(Error::invalid("replicated", "an in-memory database has no file to replicate"));
            }
            // Refused before the file is opened (or created).
            replica::check_busy_timeout(options.pragmas.get("busy_timeout"), "it was opened with replicated=True")?;
        }
        let (target, flags, file) = if in_memory {
            if options.read_only {
                return Err(Error::invalid("read_only", "an in-memory database cannot be opened read-only"));
            }
            let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_URI;
            (PathBuf::from(memdb_name()), flags, None)
        } else {
            let mut flags =
                if options.read_only { OpenFlags::SQLITE_OPEN_READ_ONLY } else { OpenFlags::SQLITE_OPEN_READ_WRITE };
            let target = open_target(path, options.uri)?;
            if options.create && !options.read_only {
                flags |= OpenFlags::SQLITE_OPEN_CREATE;
            } else if !options.uri && !path.exists() {
                return Err(Error::Sqlite(format!("database file {display:?} does not exist")));
            }
            if options.uri {
                flags |= OpenFlags::SQLITE_OPEN_URI;
            }
            let file = (!options.uri).then(|| target.clone());
            (target, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX, file)
        };
        let in_file = |e: Error| e.context(&format!("database {display:?}"));
        // A file this call creates is removed again if a pragma fails verification.
        // (Not on other errors: a busy one may mean another process is creating it.)
        let named = file.clone().or_else(|| uri_file(&target));
        let created = named.filter(|f| std::fs::symlink_metadata(f).is_err());
        let removing_created = |e: Error| {
            if let (Some(f), Error::Pragma { .. }) = (&created, &e) {
                remove_database_files(f);
            }
            e
        };

        let bootstrap =
            Connection::open_with_flags(&target, flags).map_err(|e| removing_created(in_file(Error::from(e))))?;
        let verified = VerifiedPragmas::for_store(options.pragmas.clone(), in_memory, options.read_only);
        let prepared = prepare_file(&bootstrap, &options, in_memory).and_then(|report| {
            // Every pooled connection gets what the bootstrap one has: verify it here,
            // so a pragma that will not hold fails now rather than after every pooled
            // connection's setup has failed until `checkout_timeout`.
            verified.ready(&bootstrap)?;
            Ok(report)
        });
        let open_report = match prepared {
            Ok(report) => report,
            Err(e) => {
                drop(bootstrap);
                return Err(removing_created(in_file(e)));
            }
        };

        let host_queue = if in_memory || options.read_only || bootstrap.is_readonly(rusqlite::MAIN_DB)? {
            None
        } else {
            let budget = options.pragmas.get("busy_timeout").and_then(|ms| ms.parse().ok()).unwrap_or(0);
            sqlite_file(&bootstrap)
                .map(|f| HostQueue::open(&f, Duration::from_millis(budget)))
                .transpose()
                .map_err(in_file)?
                .flatten()
        };
        // Nothing but this process writes an in-memory database: its lane's commits say all.
        let changes = Changes::new((!in_memory).then(|| data_version_watcher(target.clone(), flags)));
        let pool = Pool::new(options.pool_size, options.checkout_timeout, target, flags, verified)?;
        // A file's bootstrap connection closes here (r2d2 opens the pool's own, on its
        // workers); a `:memory:` one stays outside, keeping the database alive.
        let keeper = if in_memory { Some(bootstrap) } else { None };

        let db = Engine {
            pool,
            path: display,
            given: path.to_path_buf(),
            file,
            in_memory,
            read_only: options.read_only,
            options,
            last_moved: Mutex::new(open_report.rows_moved),
            open_report,
            opened_in: fork::Origin::here(),
            lane: Arc::new(WriteLane::new(host_queue, changes.clone())),
            changes,
            keeper: Mutex::new(keeper),
            retrier: Retrier::new(None),
        };
        // The first checkout proves a pooled connection gets, and keeps, every pragma.
        let first: Vec<Conn> = (0..db.options.min_idle.max(1)).map(|_| db.conn()).collect::<Result<_>>()?;
        drop(first);
        Ok(db)
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// The path exactly as given to `open`.
    pub fn given_path(&self) -> &Path {
        &self.given
    }

    /// The database file, byte for byte as opened; `None` in memory or for a URI.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
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

    /// The host-wide writer queue's sidecar file (`<database>-writer`) while this store
    /// takes its writes' turns in it; `None` in memory, read-only, where the file cannot
    /// be created, or on a filesystem without OFD locks (`host_queue.rs`).
    pub fn writer_queue(&self) -> Option<&Path> {
        self.lane.host_queue()
    }

    /// Group commits by size, holds, callers waiting: the write lane's counters.
    /// (Zeros in a forked child: the parent's lane is not touched there.)
    pub fn lane_stats(&self) -> LaneStats {
        if self.is_forked() {
            return LaneStats::default();
        }
        self.lane.stats()
    }

    /// Whether a replica is attached: opened with `Options::replicated`, or Litestream's
    /// tables are in the file (read now, so a replica started after opening counts).
    pub fn is_replicated(&self) -> Result<bool> {
        self.replicated_on(&*self.conn()?)
    }

    pub(crate) fn replicated_on(&self, conn: &Connection) -> Result<bool> {
        Ok(self.options.replicated || (!self.in_memory && replica::litestream_detected(conn)?))
    }

    /// Holds the write lane alone until the guard drops (checks the process first:
    /// a forked child must not touch the parent's lane).
    /// Waiting for the lane is bounded by the retry deadline (none without a policy).
    pub(crate) fn hold_lane(&self) -> Result<crate::sqlite::writer::LaneHold> {
        let wait = self.retrier.policy().map(|p| p.deadline);
        self.hold_lane_within(wait)
    }

    pub(crate) fn hold_lane_within(&self, wait: Option<Duration>) -> Result<crate::sqlite::writer::LaneHold> {
        self.opened_in.check()?;
        if self.pool.is_closed() {
            return Err(Error::Closed);
        }
        self.lane.hold(wait)
    }

    /// Retries made by this store so far (opening included).
    pub fn retry_count(&self) -> u64 {
        self.retrier.count()
    }

    /// Runs `f` on a pooled connection while holding the write lane, retried as a
    /// whole (lane released between attempts) on busy/pool timeouts. `f` must leave
    /// nothing behind when it fails (one statement, or its own transaction).
    pub(crate) fn with_lane<T>(&self, op: &str, mut f: impl FnMut(&Connection) -> Result<T>) -> Result<T> {
        let mut attempts = self.retrier.start(op);
        loop {
            let result = self.hold_lane_within(attempts.remaining()).and_then(|lane| {
                let conn = self.conn()?;
                let out = f(&conn);
                drop(conn);
                drop(lane);
                out
            });
            match result {
                Err(e) if attempts.again(&e) => continue,
                other => return other,
            }
        }
    }

    /// `ForkedProcessError` in a child forked after the engine opened.
    pub(crate) fn check_process(&self) -> Result<()> {
        self.opened_in.check()
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

    /// The store's pool: `pool.r2d2()` is its `r2d2::Pool<StoreManager>` (see there
    /// for what a checkout straight from r2d2 skips).
    pub fn pool(&self) -> &Pool {
        &self.pool
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
        self.options.pragmas.settings().iter().map(|s| Ok((s.name, pragmas::read(&conn, s.name)?))).collect()
    }

    /// Re-verifies every configured pragma on a pooled connection.
    pub fn verify_pragmas(&self) -> Result<()> {
        let conn = self.conn()?;
        if self.read_only {
            self.options.pragmas.verify_connection_scope(&conn)
        } else {
            self.options.pragmas.verify(&conn, self.in_memory)
        }
    }

    /// Migrates the schema to `target`, up or down; returns the version reached.
    /// (`Database::migrate` then re-reads the store's layout.)
    pub(crate) fn migrate(
        &self,
        target: Version,
        guard: Option<migrations::InFlightGuard>,
        progress: Option<Progress>,
    ) -> Result<Version> {
        self.migrating(progress, |turn, progress, moved| {
            migrations::migrate_counting(turn, progress, target, guard, moved)
        })
    }

    /// What the last migration of this store (at opening, or `migrate`) copied between
    /// the schemas.
    pub fn rows_moved(&self) -> RowsMoved {
        *self.last_moved.lock()
    }

    /// What [`Engine::migrate`] would refuse, checked without moving (`migrations::check`;
    /// a read-only store can check).
    pub(crate) fn check_migration(&self, target: Version, guard: Option<migrations::InFlightGuard>) -> Result<()> {
        migrations::check(&*self.conn()?, target, guard)
    }

    /// Brings the file up to at least `target` and its tables to the current layout,
    /// as opening does; never down. Returns the version reached.
    pub(crate) fn upgrade(&self, target: Version, progress: Option<Progress>) -> Result<Version> {
        self.migrating(progress, |turn, progress, moved| {
            migrations::upgrade_counting(turn, progress, target, migrations::LongSteps::Run, moved).map(drop)
        })
    }

    /// Runs a migration and keeps what it copied between the schemas (`rows_moved`).
    /// Each of its transactions (a step's, or one chunk of a long copy) runs in a hold of
    /// the lane of its own, so writes queued meanwhile get in between; a busy one left
    /// nothing behind and is tried again, and what committed stays counted.
    fn migrating(
        &self,
        mut progress: Option<Progress>,
        work: impl FnOnce(&mut dyn migrations::Turns, Option<&mut Progress>, &mut RowsMoved) -> Result<()>,
    ) -> Result<Version> {
        let mut moved = RowsMoved::default();
        let reached = if self.read_only {
            Err(Error::ReadOnly(format!("cannot migrate {:?}", self.path)))
        } else {
            work(&mut InTurns(self), progress.as_mut(), &mut moved)
                .and_then(|()| self.with_lane("migrate", migrations::user_version))
        };
        *self.last_moved.lock() = moved;
        reached
    }

    /// Legacy rows whose values had to be converted to be read (or could not be read
    /// as meant): listed by the upgrade report.
    pub fn legacy_row_problems(&self) -> Result<Vec<crate::sqlite::legacy_rows::Problem>> {
        crate::sqlite::legacy_rows::problems(&*self.conn()?)
    }

    pub fn schema_version(&self) -> Result<Version> {
        migrations::user_version(&*self.conn()?)
    }

    /// Closes every pooled connection on this thread: when it returns, the engine holds
    /// no file open (a connection still in use by an open transaction closes when that
    /// transaction ends). Idempotent. `Database::close` stops maintenance first.
    pub fn close(&self) {
        if !self.is_forked() {
            // Writers still waiting fail with `Closed` (in a forked child the lane is
            // the parent's: not touched), and so do waiters for agents, once the
            // watcher has closed its connection.
            self.lane.close();
            self.changes.close();
        }
        self.pool.close();
        let keeper = self.keeper.lock().take();
        if self.is_forked() {
            // Closing an inherited connection in a forked child could checkpoint or
            // unlink the parent's WAL: leak it instead.
            std::mem::forget(keeper);
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.close();
    }
}

/// The cross-process change signal's watcher: a connection of its own whose `PRAGMA
/// data_version` changes when another connection (this store's own included) committed
/// to the file. It runs only while someone waits, and sleeps in `poll(2)` on an inotify
/// watch of the `-wal` file for at most [`WAL_SLICE`]: a commit writes its frames there,
/// which wakes it; the frames are written before the wal-index makes them visible, so
/// `data_version` confirms, read again after [`CONFIRM_AFTER`] when it has not moved yet. Where inotify cannot watch the WAL (no `-wal`, no inotify), it
/// reads `data_version` every [`SQLITE_POLL`] instead. Measured (`benches/wait.py`,
/// docs/coordination.md): the 10 ms poll costs an idle process about 0.4-0.8% of a core
/// on this machine (a timed wake-up here costs ~40 µs), the inotify watch ~0.1%.
fn data_version_watcher(target: PathBuf, flags: OpenFlags) -> OpenWatcher {
    Arc::new(move || {
        let conn = Connection::open_with_flags(&target, flags)?;
        conn.busy_timeout(Duration::from_secs(1))?;
        let read = |c: &Connection| -> Result<i64> { Ok(c.query_row("PRAGMA data_version", [], |r| r.get(0))?) };
        let mut last = read(&conn)?;
        let wal = sqlite_file(&conn).and_then(|f| WalWatch::new(&f));
        Ok(Box::new(move |changes: &Changes| {
            let Some(wal) = &wal else {
                changes.pause(SQLITE_POLL);
                let now = read(&conn)?;
                return Ok(std::mem::replace(&mut last, now) != now);
            };
            let written = wal.wait(WAL_SLICE);
            // The write that woke it may precede the commit's visibility by microseconds,
            // or belong to no commit (SQLite writes the WAL's header when it restarts
            // the log, and a transaction still writing spills pages): looked at again
            // 0.2, 1.2, 5.2 and 20.2 ms later, or as soon as the next write comes.
            for delay in CONFIRM_AFTER {
                if !delay.is_zero() {
                    // A wait the next write ends at once: a commit made visible meanwhile is
                    // read then, not at the end of the delay.
                    wal.wait(delay);
                }
                let now = read(&conn)?;
                if std::mem::replace(&mut last, now) != now {
                    return Ok(true);
                }
                if !written {
                    break;
                }
            }
            Ok(false)
        }) as Poll)
    })
}

/// How long the inotify watcher sleeps without an event before it reads `data_version`
/// anyway (a write it could not see: another path to the file) and looks whether it is
/// still wanted.
const WAL_SLICE: Duration = Duration::from_millis(50);
/// When, after a write to the WAL, the watcher reads `data_version` (each delay after
/// the one before).
/// The writer may lose its core right after the write that woke the watcher (on a busy
/// machine for milliseconds): the last look is 20 ms after the write.
const CONFIRM_AFTER: [Duration; 5] = [
    Duration::ZERO,
    Duration::from_micros(200),
    Duration::from_millis(1),
    Duration::from_millis(4),
    Duration::from_millis(15),
];

/// An inotify watch of a database's `-wal` file for writes (`IN_MODIFY`).
struct WalWatch {
    fd: std::os::fd::OwnedFd,
}

impl WalWatch {
    fn new(database: &Path) -> Option<WalWatch> {
        use std::os::fd::FromRawFd;
        use std::os::unix::ffi::OsStrExt;
        let mut wal = database.as_os_str().as_bytes().to_vec();
        wal.extend_from_slice(b"-wal");
        let wal = std::ffi::CString::new(wal).ok()?;
        // SAFETY: plain system calls on a new descriptor, owned from here on.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return None;
        }
        // SAFETY: `fd` is open and owned by nothing else yet.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let watched =
            unsafe { libc::inotify_add_watch(std::os::fd::AsRawFd::as_raw_fd(&fd), wal.as_ptr(), libc::IN_MODIFY) };
        (watched >= 0).then_some(WalWatch { fd })
    }

    /// Waits up to `max` for a write to the WAL; drains the events; whether there was one.
    fn wait(&self, max: Duration) -> bool {
        use std::os::fd::AsRawFd;
        let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut pfd, 1, max.as_millis() as libc::c_int) };
        if ready <= 0 {
            return false;
        }
        let mut buf = [0u8; 4096];
        // SAFETY: reads into the buffer, at most its length; non-blocking.
        while unsafe { libc::read(pfd.fd, buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
        true
    }
}

/// What to hand SQLite for `path`. Without `uri`, a relative name that starts with
/// `file:` gets a `./` in front: the bundled SQLite (SQLITE_USE_URI) would otherwise
/// parse it as a URI, options and all.
fn open_target(path: &Path, uri: bool) -> Result<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() {
        // SQLite would give every pooled connection its own private temporary database.
        return Err(Error::invalid("path", "is empty"));
    }
    if bytes.contains(&0) {
        return Err(Error::invalid("path", format!("{:?} contains a NUL byte", path.display().to_string())));
    }
    if uri {
        let text = std::str::from_utf8(bytes).map_err(|_| Error::invalid("path", "a URI must be valid UTF-8"))?;
        if !text.starts_with("file:") {
            return Err(Error::invalid("path", format!("{text:?} is not a URI (file:...) but uri=True was given")));
        }
        if text.contains("mode=memory") || text.contains(":memory:") || text.contains("vfs=memdb") {
            // Each pooled connection would open a database of its own.
            return Err(Error::invalid("path", format!("{text:?}: use \":memory:\" for an in-memory store")));
        }
        return Ok(path.to_path_buf());
    }
    if bytes.starts_with(b"file:") {
        return Ok(Path::new(".").join(path));
    }
    Ok(path.to_path_buf())
}

/// The file a `file:` URI names (`file:a.db?x=1`, `file:///abs/a.db`, `%xx` escapes).
fn uri_file(uri: &Path) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let rest = uri.as_os_str().as_bytes().strip_prefix(b"file:")?;
    let rest = match rest.strip_prefix(b"//") {
        Some(authority_and_path) => {
            let slash = authority_and_path.iter().position(|&b| b == b'/')?;
            &authority_and_path[slash..]
        }
        None => rest,
    };
    let end = rest.iter().position(|&b| b == b'?' || b == b'#').unwrap_or(rest.len());
    let mut path = Vec::new();
    let mut bytes = rest[..end].iter().copied();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            path.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            path.push(b);
        }
    }
    (!path.is_empty()).then(|| PathBuf::from(std::ffi::OsStr::from_bytes(&path)))
}

/// The main database file as SQLite resolved it (the name its `-wal` and `-shm` are
/// beside); `None` for a temporary or in-memory one.
fn sqlite_file(conn: &Connection) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: the handle is this open connection's; the name it returns lives as long.
    let name = unsafe { rusqlite::ffi::sqlite3_db_filename(conn.handle(), c"main".as_ptr()) };
    if name.is_null() {
        return None;
    }
    // SAFETY: a NUL-terminated string owned by the connection.
    let bytes = unsafe { std::ffi::CStr::from_ptr(name) }.to_bytes();
    (!bytes.is_empty()).then(|| PathBuf::from(std::ffi::OsStr::from_bytes(bytes)))
}

/// Removes a database file and the files SQLite keeps beside it. (Not the writer
/// queue's sidecar: another process may be waiting on it.)
fn remove_database_files(file: &Path) {
    let _ = std::fs::remove_file(file);
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut side = file.as_os_str().to_os_string();
        side.push(suffix);
        let _ = std::fs::remove_file(side);
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
    if !in_memory {
        check_replica_settings(conn, options)?;
    }
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
        report.layout_steps = migrations::upgrade_counting(
            &mut migrations::On(conn),
            None,
            target,
            migrations::LongSteps::Defer,
            &mut report.rows_moved,
        )?
        .1;
        let reached = migrations::user_version(conn)?;
        if reached != found {
            report.migrated = Some((found, reached));
        }
        report.layout_updated = shape.is_stale();
    }
    Ok(report)
}

/// A file Litestream has replicated (its tables are in it) needs a `busy_timeout` of at
/// least 5 s: refused at opening otherwise, naming the value. (`Options::replicated`
/// is checked before the file is opened.)
fn check_replica_settings(conn: &Connection, options: &Options) -> Result<()> {
    if options.replicated || !replica::litestream_detected(conn)? {
        return Ok(());
    }
    replica::check_busy_timeout(
        options.pragmas.get("busy_timeout"),
        "Litestream's tables _litestream_seq/_litestream_lock are in the file",
    )
}

/// `journal_mode` does not wait on the busy handler: when another process is switching
/// at the same moment, retry briefly instead of failing the open. A mode SQLite cannot
/// use here (WAL without shared memory) reads back as the old one: that fails at once.
fn set_journal_mode(conn: &Connection, want: &str) -> Result<()> {
    let mut actual = String::new();
    for _ in 0..100 {
        match conn.query_row(&format!("PRAGMA journal_mode = {want}"), [], |r| r.get::<_, String>(0)) {
            Ok(mode) if mode.eq_ignore_ascii_case(want) => return Ok(()),
            Ok(mode) => {
                return Err(Error::Pragma {
                    pragma: "journal_mode".into(),
                    wanted: want.into(),
                    actual: mode.to_ascii_lowercase(),
                })
            }
            Err(e) => match Error::from(e) {
                Error::Busy(m) => actual = m,
                other => return Err(other),
            },
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Still busy: retryable (the open is retried with the store's policy).
    Err(Error::Busy(actual))
}

/// A migration's turns on an open store: each write transaction in a hold of the lane of
/// its own, reads on a pooled connection outside it.
struct InTurns<'e>(&'e Engine);

impl migrations::Turns for InTurns<'_> {
    fn write(&mut self, work: migrations::Work<'_>) -> Result<()> {
        self.0.with_lane("migrate", |c| work(c))
    }

    fn read(&mut self, work: migrations::Work<'_>) -> Result<()> {
        work(&*self.0.conn()?)
    }
}

#[cfg(test)]
mod path_tests {
    use super::*;

    #[test]
    fn plain_paths_are_files_and_uris_only_when_asked_for() {
        assert_eq!(
            open_target(Path::new("file:x.db?immutable=1"), false).unwrap(),
            Path::new("./file:x.db?immutable=1")
        );
        assert_eq!(open_target(Path::new("/abs/file:x.db"), false).unwrap(), Path::new("/abs/file:x.db"));
        assert_eq!(open_target(Path::new("file:x.db?mode=ro"), true).unwrap(), Path::new("file:x.db?mode=ro"));
        for (path, uri) in
            [("", false), ("a\0b", false), ("x.db", true), ("file::memory:", true), ("file:m?mode=memory", true)]
        {
            assert!(matches!(open_target(Path::new(path), uri), Err(Error::InvalidInput { .. })), "{path:?}");
        }
        assert_eq!(uri_file(Path::new("file:a%20b.db?mode=rwc")), Some(PathBuf::from("a b.db")));
        assert_eq!(uri_file(Path::new("file:///tmp/x.db#f")), Some(PathBuf::from("/tmp/x.db")));
        assert_eq!(uri_file(Path::new("file://localhost/tmp/x.db")), Some(PathBuf::from("/tmp/x.db")));
        assert_eq!(uri_file(Path::new("x.db")), None);
    }
}
