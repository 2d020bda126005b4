//! The connection pool: `r2d2::Pool<StoreManager>`, r2d2 with r2d2_sqlite's
//! `SqliteConnectionManager` doing the connecting and [`VerifiedPragmas`] as its
//! connection customizer, inside a thin wrapper that keeps what the store promises.
//!
//! What r2d2 0.8 does, and what the wrapper adds for it:
//! - r2d2 opens every connection on a worker of its `ScheduledThreadPool`, never on
//!   the caller; its workers cannot be joined. Here one set of workers serves every
//!   pool of the process, and a forked child (a new `fork::generation`) makes its own:
//!   the parent's threads do not exist there. Across every `fork()` the workers wait
//!   in a job of the pool's, not in parking_lot (`hold_workers_across_fork`).
//! - With `min_idle(Some(0))` r2d2 opens connections only for a checkout that finds
//!   none idle; with `idle_timeout(None)` and `max_lifetime(None)` it schedules no
//!   reaper, so an open store costs no CPU and leaves no periodic job behind when it
//!   closes (but see failed opens below).
//!   `test_on_check_out(false)` (and r2d2_sqlite without its `is-valid` feature): a
//!   checkout runs no `SELECT 1`; a local connection does not go stale, and its
//!   pragmas were verified when it was opened.
//! - r2d2 reports a failed open only as text, retries it in the background for as
//!   long as the pool lives (after 0.4 s, doubling up to every 5 s), and never
//!   wakes a waiting checkout when an open fails or the pool closes. So the manager
//!   counts the files it has open and refuses to open after close; the error handler
//!   keeps the last typed error, and a checkout waiting for a new connection returns
//!   it; checkouts wait for a free slot on the wrapper's own condvar, which `close()`
//!   and a failed open notify. One thing the wrapper cannot stop: an open that failed
//!   (one in flight at `close()` fails so) is retried by r2d2 until the pool is dropped
//!   with the store — each retry is refused at once by the manager, opens no file, and
//!   runs at most every 5 s on r2d2's idle workers.
//! - The count is exact: it goes up before SQLite opens the file and down when
//!   `sqlite3_close` has closed it (the destructor of a function each connection
//!   carries; SQLite runs it after closing the database files), whichever thread
//!   closes it and whatever path r2d2 takes (a failed customizer, a broken return, a
//!   dropped pool). r2d2's own `state()` does not count opens in flight.
//! - `close()` drains the idle connections on the calling thread (once closed, the
//!   manager calls every connection broken, so r2d2 closes each as it is returned),
//!   then waits, at most `checkout_timeout`, until every open file belongs to a
//!   checked-out connection (one still being opened is waited for; one checked out,
//!   say in a transaction, closes on the thread that returns it).
//! - In a forked child nothing of a pool from before the fork is touched (closing the
//!   parent's connections could checkpoint or unlink its WAL, and a lock held by a
//!   parent's thread at the fork would never be released): checkouts fail with
//!   `Forked`, and the connections are leaked.

use std::mem::ManuallyDrop;
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use rusqlite::functions::FunctionFlags;
use rusqlite::{Connection, OpenFlags};
use scheduled_thread_pool::ScheduledThreadPool;

use crate::error::{Error, Result};
use crate::fork;
pub use crate::sqlite::pragmas::VerifiedPragmas;
use crate::sqlite::user_sql;

/// The crates the pool is made of, for a host that wants exactly these versions.
pub use {r2d2, r2d2_sqlite};

/// The store's r2d2 pool type ([`Pool::r2d2`]).
pub type R2d2Pool = r2d2::Pool<StoreManager>;

/// r2d2 retries a failed open after 0.4 s, doubling up to half its
/// `connection_timeout`: this keeps a file that cannot be opened to one try every 5 s.
/// (Checkouts wait with their own timeout.)
const RETRY_CEILING: Duration = Duration::from_secs(5);
/// How long a checkout waits inside r2d2 for the connection it asked r2d2 to open;
/// after that (a slow open) it polls, so that `close()` or a failed open wakes it.
const CONNECT_WAIT: Duration = Duration::from_millis(20);
const POLL: Duration = Duration::from_millis(5);
/// r2d2's default: opens of every store in the process share them.
const WORKER_THREADS: usize = 3;

/// A cheap handle to one pool; clones share it.
pub struct Pool {
    /// Never dropped in a forked child (`Drop for Pool`).
    r2d2: ManuallyDrop<R2d2Pool>,
    shared: Arc<Shared>,
}

/// What the wrapper, its manager and its error handler share.
struct Shared {
    max_size: u32,
    timeout: Duration,
    /// Read without a lock: a forked child must never wait on a lock that a thread
    /// of its parent held at the fork.
    closed: AtomicBool,
    /// Checked out, or being checked out: at most `max_size`, so a checkout that
    /// holds a slot never waits inside r2d2 for another one to be returned.
    claimed: AtomicU32,
    /// Checkouts waiting for a slot.
    waiting: AtomicU32,
    files: Mutex<Files>,
    /// A slot freed, a connection closed, an open failed, the pool closed.
    changed: Condvar,
    opened_in: fork::Origin,
}

#[derive(Default)]
struct Files {
    /// Connections with a file open: idle, checked out, being opened or closed.
    open: u32,
    /// Set under this lock too, so no open starts after `close()` has counted.
    closed: bool,
    /// Failed opens so far, and the last one's error.
    failures: u64,
    last_failure: Option<Error>,
}

impl Shared {
    fn opening(&self) -> Result<()> {
        let mut files = self.files.lock();
        if files.closed {
            return Err(Error::Closed);
        }
        files.open += 1;
        Ok(())
    }

    fn closed_one(&self) {
        self.files.lock().open -= 1;
        self.changed.notify_all();
    }

    fn failed(&self, error: Error) {
        let mut files = self.files.lock();
        files.failures += 1;
        files.last_failure = Some(error);
        drop(files);
        self.changed.notify_all();
    }

    /// Claims a checkout slot, waiting up to `deadline`.
    fn claim(&self, deadline: &mut Option<Instant>) -> Result<()> {
        if self.try_claim() {
            return Ok(());
        }
        let deadline = *deadline.get_or_insert_with(|| Instant::now() + self.timeout);
        let mut files = self.files.lock();
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let claimed = loop {
            if self.closed.load(Ordering::Acquire) {
                break Err(Error::Closed);
            }
            if self.try_claim() {
                break Ok(());
            }
            if self.changed.wait_until(&mut files, deadline).timed_out() {
                break if self.try_claim() { Ok(()) } else { Err(self.timed_out()) };
            }
        };
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        claimed
    }

    fn try_claim(&self) -> bool {
        let mut n = self.claimed.load(Ordering::SeqCst);
        while n < self.max_size {
            match self.claimed.compare_exchange_weak(n, n + 1, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => return true,
                Err(now) => n = now,
            }
        }
        false
    }

    fn release(&self) {
        self.claimed.fetch_sub(1, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            let _files = self.files.lock();
            self.changed.notify_all();
        }
    }

    fn timed_out(&self) -> Error {
        Error::PoolTimeout(format!("no connection free within {:?} (pool_size {})", self.timeout, self.max_size))
    }
}

/// r2d2_sqlite's manager, counting the files it opens and refusing to open once the
/// pool is closed; connections are readied for the store (statement cache, the
/// authorizer of `user_sql`) before the customizer verifies their pragmas.
pub struct StoreManager {
    sqlite: r2d2_sqlite::SqliteConnectionManager,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for StoreManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreManager").field("sqlite", &self.sqlite).finish_non_exhaustive()
    }
}

impl r2d2::ManageConnection for StoreManager {
    type Connection = Connection;
    type Error = Error;

    fn connect(&self) -> Result<Connection> {
        self.shared.opening()?;
        let conn = match r2d2::ManageConnection::connect(&self.sqlite) {
            Ok(conn) => conn,
            Err(e) => {
                self.shared.closed_one();
                return Err(e.into());
            }
        };
        // From here the connection counts itself out as it closes (or already has, if
        // tying the count to it failed): an error below just drops it.
        counted(&conn, self.shared.clone())?;
        conn.set_prepared_statement_cache_capacity(64);
        user_sql::install(&conn)?;
        Ok(conn)
    }

    fn is_valid(&self, _: &mut Connection) -> Result<()> {
        Ok(())
    }

    /// Once the pool is closed every returned connection is closed, on the thread
    /// that returns it.
    fn has_broken(&self, _: &mut Connection) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }
}

/// Ties the open-file count to the connection: SQLite runs a function's destructor
/// in `sqlite3_close`, after it has closed the connection's files.
fn counted(conn: &Connection, shared: Arc<Shared>) -> Result<()> {
    struct Open(Arc<Shared>);
    impl Drop for Open {
        fn drop(&mut self) {
            self.0.closed_one();
        }
    }
    let open = Open(shared);
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC | FunctionFlags::SQLITE_DIRECTONLY;
    let registered = conn.create_scalar_function("consensus_db_pooled", 0, flags, move |_| {
        let _ = &open;
        Ok(true)
    });
    // Not registered: SQLite has run the destructor already.
    registered.map_err(|e| Error::from(e).context("counting a pooled connection"))
}

/// r2d2's error handler: keeps the typed error of a failed open for the checkout
/// waiting for it (r2d2 itself keeps only its text).
#[derive(Debug)]
struct KeepFailure(Arc<Shared>);

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("max_size", &self.max_size).finish_non_exhaustive()
    }
}

impl r2d2::HandleError<Error> for KeepFailure {
    fn handle_error(&self, error: Error) {
        // A refused open after close is no failure of the file.
        if !matches!(error, Error::Closed) {
            self.0.failed(error);
        }
    }
}

struct Workers {
    generation: u64,
    threads: Arc<ScheduledThreadPool>,
}

/// The current set of workers (never freed once installed).
static CURRENT: AtomicPtr<Workers> = AtomicPtr::new(ptr::null_mut());

/// The worker threads r2d2 opens connections on: one set per process, made again in
/// a forked child (a parent's set is left alone there: its threads are gone, and
/// dropping it could wait on a lock one of them held).
fn workers() -> Arc<ScheduledThreadPool> {
    let generation = fork::generation();
    loop {
        let current = CURRENT.load(Ordering::Acquire);
        // SAFETY: an installed `Workers` is never freed.
        if let Some(workers) = unsafe { current.as_ref() } {
            if workers.generation == generation {
                return workers.threads.clone();
            }
        }
        let threads = Arc::new(
            ScheduledThreadPool::builder()
                .num_threads(WORKER_THREADS)
                .thread_name_pattern("consensus-db-pool-{}")
                .build(),
        );
        let made = Box::into_raw(Box::new(Workers { generation, threads }));
        if CURRENT.compare_exchange(current, made, Ordering::AcqRel, Ordering::Acquire).is_err() {
            // Another thread installed a set first: use that one.
            // SAFETY: `made` was never shared.
            drop(unsafe { Box::from_raw(made) });
        } else {
            hold_workers_across_fork();
        }
    }
}

/// Idle workers are parked in parking_lot's global table of waiting threads, which
/// points into each one's thread-local storage. A forked child inherits the table,
/// and glibc gives the new threads it starts the stacks (and so the thread-local
/// storage) of the parent's threads: a child's new worker would find itself already
/// queued there, and spin. So across every `fork()` the workers wait in a job of ours
/// on a std condvar (a futex, no global table) instead: for at most `FORK_HOLD` (a
/// worker busy opening a connection for longer is not waited for).
fn hold_workers_across_fork() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        #[cfg(unix)]
        // SAFETY: the handlers only use std's futex-based primitives and the pool's queue.
        unsafe {
            libc::pthread_atfork(Some(before_fork), Some(after_fork_in_parent), None);
        }
    });
}

const FORK_HOLD: Duration = Duration::from_millis(50);

/// One fork's hold: a new one each time, so a lock a worker happened to hold at the
/// fork is never taken again in the child.
#[derive(Default)]
struct Hold {
    /// (workers holding, released)
    state: std::sync::Mutex<(usize, bool)>,
    changed: std::sync::Condvar,
}

impl Hold {
    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, bool)> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The hold of the fork under way, for the parent's after-fork handler to release.
static HOLDING: AtomicPtr<Hold> = AtomicPtr::new(ptr::null_mut());

extern "C" fn before_fork() {
    // SAFETY: an installed `Workers` is never freed.
    let Some(workers) = (unsafe { CURRENT.load(Ordering::Acquire).as_ref() }) else { return };
    if workers.generation != fork::generation() {
        return; // a parent's set: its threads are not in this process
    }
    let hold = Arc::new(Hold::default());
    for _ in 0..WORKER_THREADS {
        let hold = hold.clone();
        workers.threads.execute(move || {
            let mut state = hold.lock();
            state.0 += 1;
            hold.changed.notify_all();
            while !state.1 {
                state = hold.changed.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
            }
        });
    }
    drop(hold.changed.wait_timeout_while(hold.lock(), FORK_HOLD, |state| state.0 < WORKER_THREADS));
    HOLDING.store(Arc::into_raw(hold).cast_mut(), Ordering::Release);
}

extern "C" fn after_fork_in_parent() {
    let holding = HOLDING.swap(ptr::null_mut(), Ordering::AcqRel);
    if holding.is_null() {
        return;
    }
    // SAFETY: made by `Arc::into_raw` in `before_fork`, taken once.
    let hold = unsafe { Arc::from_raw(holding.cast_const()) };
    hold.lock().1 = true;
    hold.changed.notify_all();
}

impl Pool {
    /// A pool of at most `max_size` connections to `target`; none is opened yet.
    /// Every connection is readied for the store and then verified by `pragmas`.
    pub(crate) fn new(
        max_size: u32,
        timeout: Duration,
        target: PathBuf,
        flags: OpenFlags,
        pragmas: VerifiedPragmas,
    ) -> Result<Pool> {
        if max_size == 0 {
            return Err(Error::invalid("pool_size", "must be at least 1, got 0"));
        }
        let shared = Arc::new(Shared {
            max_size,
            timeout,
            closed: AtomicBool::new(false),
            claimed: AtomicU32::new(0),
            waiting: AtomicU32::new(0),
            files: Mutex::new(Files::default()),
            changed: Condvar::new(),
            opened_in: fork::Origin::here(),
        });
        let manager = StoreManager {
            sqlite: r2d2_sqlite::SqliteConnectionManager::file(target).with_flags(flags),
            shared: shared.clone(),
        };
        let r2d2 = r2d2::Pool::builder()
            .max_size(max_size)
            .min_idle(Some(0))
            .idle_timeout(None)
            .max_lifetime(None)
            .test_on_check_out(false)
            .connection_timeout(RETRY_CEILING * 2)
            .error_handler(Box::new(KeepFailure(shared.clone())))
            .connection_customizer(Box::new(pragmas))
            .thread_pool(workers())
            .build_unchecked(manager);
        Ok(Pool { r2d2: ManuallyDrop::new(r2d2), shared })
    }

    /// An idle connection; otherwise one r2d2 opens (on its worker) while fewer than
    /// `max_size` exist; otherwise waits up to the timeout for one to be returned.
    /// A failed open is returned as its own error, not as a timeout.
    pub fn get(&self) -> Result<Conn> {
        let shared = &*self.shared;
        shared.opened_in.check()?;
        if shared.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let mut deadline = None;
        shared.claim(&mut deadline)?;
        let checked_out = match self.r2d2.try_get() {
            Some(conn) => Ok(conn),
            None => self.get_new(&mut deadline),
        };
        let conn = match checked_out {
            Ok(conn) if !shared.closed.load(Ordering::Acquire) => conn,
            other => {
                // Closed meanwhile: the connection closes as it is returned.
                let error = other.err().unwrap_or(Error::Closed);
                shared.release();
                return Err(error);
            }
        };
        Ok(Conn { conn: ManuallyDrop::new(conn), shared: self.shared.clone() })
    }

    /// With a slot claimed and none idle: asks r2d2 for a new connection and waits.
    fn get_new(&self, deadline: &mut Option<Instant>) -> Result<r2d2::PooledConnection<StoreManager>> {
        let shared = &*self.shared;
        let deadline = *deadline.get_or_insert_with(|| Instant::now() + shared.timeout);
        let failures_before = shared.files.lock().failures;
        let first_wait = CONNECT_WAIT.min(deadline.saturating_duration_since(Instant::now()));
        if let Ok(conn) = self.r2d2.get_timeout(first_wait.max(Duration::from_micros(1))) {
            return Ok(conn);
        }
        loop {
            if let Some(conn) = self.r2d2.try_get() {
                return Ok(conn);
            }
            let mut files = shared.files.lock();
            if shared.closed.load(Ordering::Acquire) {
                return Err(Error::Closed);
            }
            if files.failures > failures_before {
                if let Some(error) = files.last_failure.clone() {
                    return Err(error);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(shared.timed_out());
            }
            shared.changed.wait_until(&mut files, deadline.min(now + POLL));
        }
    }

    /// Closes every idle connection on this thread, and waits (at most the checkout
    /// timeout) for those being opened; one checked out is closed by the thread that
    /// returns it. Later checkouts fail with `Closed`, and checkouts waiting now are
    /// woken with it. In a forked child nothing is closed: the connections are the
    /// parent's.
    pub fn close(&self) {
        let shared = &*self.shared;
        shared.closed.store(true, Ordering::Release);
        if shared.opened_in.check().is_err() {
            return;
        }
        shared.files.lock().closed = true;
        shared.changed.notify_all();
        let deadline = Instant::now() + shared.timeout;
        loop {
            // Returned while closed: r2d2 closes it here (the manager calls it broken).
            while let Some(idle) = self.r2d2.try_get() {
                drop(idle);
            }
            let mut files = shared.files.lock();
            let state = self.r2d2.state();
            let checked_out = state.connections - state.idle_connections;
            let now = Instant::now();
            if files.open <= checked_out || now >= deadline {
                return;
            }
            // An open in flight: its connection becomes idle (and is closed above) or
            // fails (and is counted out).
            shared.changed.wait_until(&mut files, deadline.min(now + Duration::from_millis(1)));
        }
    }

    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// (connections open, of which idle). Open counts those being opened too.
    pub fn state(&self) -> (u32, u32) {
        let open = self.shared.files.lock().open;
        (open, self.r2d2.state().idle_connections)
    }

    /// Checkouts waiting for a free connection now.
    pub fn waiting(&self) -> u32 {
        self.shared.waiting.load(Ordering::SeqCst)
    }

    /// The r2d2 pool itself, for a host that wants to hand it to code written for
    /// r2d2 (`R2d2Pool`, whose connections deref to `rusqlite::Connection`). Its
    /// connections are verified like the store's and close as they are returned
    /// after `close()`; but a checkout straight from it skips the store's fork check
    /// and is not woken by `close()` — check out through [`Pool::get`] (or
    /// `Database::conn`) where those matter, and never use it in a forked child.
    pub fn r2d2(&self) -> &R2d2Pool {
        &self.r2d2
    }
}

impl Clone for Pool {
    fn clone(&self) -> Pool {
        Pool { r2d2: self.r2d2.clone(), shared: self.shared.clone() }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if self.shared.opened_in.check().is_ok() {
            // SAFETY: `r2d2` is not used again.
            unsafe { ManuallyDrop::drop(&mut self.r2d2) }
        }
        // In a forked child it is leaked: dropping the last handle would close the
        // parent's idle connections.
    }
}

/// A checked-out connection; returned to its pool when dropped.
pub struct Conn {
    conn: ManuallyDrop<r2d2::PooledConnection<StoreManager>>,
    shared: Arc<Shared>,
}

impl Conn {
    /// `Forked` when used in a process forked after the checkout.
    pub fn check_origin(&self) -> Result<()> {
        self.shared.opened_in.check()
    }
}

impl Deref for Conn {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.conn
    }
}

impl DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.shared.opened_in.check().is_err() {
            // Returning it would take the parent's pool lock: leaked instead.
            return;
        }
        // SAFETY: `conn` is not used again; this is the only place it is dropped.
        unsafe { ManuallyDrop::drop(&mut self.conn) };
        self.shared.release();
    }
}
