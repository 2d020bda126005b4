//! The busy handler every connection runs with, in place of the one `PRAGMA
//! busy_timeout` installs: when a lock is taken (another program's writer, a
//! checkpoint), it waits short randomised times growing from tens of microseconds to
//! [`MAX_WAIT`], and gives up when the configured `busy_timeout` has passed on the
//! clock. SQLite's own handler sleeps 1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100 ms:
//! a lock held for 130 µs past a try is seen up to 25–100 ms later.
//!
//! SQLite keeps one handler per connection: `sqlite3_busy_handler` replaces the one
//! `sqlite3_busy_timeout` installs and resets what `PRAGMA busy_timeout` reads back to
//! 0. The timeout travels as the handler's argument (no allocation per connection),
//! and a table by connection handle keeps it for [`configured`], so the store reports
//! and verifies `busy_timeout` as it was set. The entry goes when the connection
//! closes (an `SQLITE_TRACE_CLOSE` callback), so a new connection at a reused address
//! never inherits it.

use std::cell::Cell;
use std::collections::HashMap;
use std::os::raw::{c_int, c_uint, c_void};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rusqlite::{ffi, Connection};

use crate::error::{Error, Result};

/// The first wait (randomised down to half of it), doubled on every try up to [`MAX_WAIT`].
const FIRST_WAIT: Duration = Duration::from_micros(20);
/// The longest single wait: how late, at most, a freed lock is seen.
pub(crate) const MAX_WAIT: Duration = Duration::from_millis(1);

/// `busy_timeout` in ms by connection handle, for connections running this handler.
fn table() -> &'static Mutex<HashMap<usize, u32>> {
    static TABLE: OnceLock<Mutex<HashMap<usize, u32>>> = OnceLock::new();
    TABLE.get_or_init(Default::default)
}

thread_local! {
    /// When this thread's current busy wait began (a connection waits on the thread running it).
    static STARTED: Cell<Option<Instant>> = const { Cell::new(None) };
    static RANDOM: Cell<u64> = const { Cell::new(0) };
    /// Budget the next busy wait on this thread starts with already spent ([`with_spent`]).
    static SPENT: Cell<Duration> = const { Cell::new(Duration::ZERO) };
}

/// Runs `f` with `spent` of its first busy wait's budget already used: a group that
/// waited in the writer queue (`host_queue.rs`) first waits for SQLite's lock only for
/// what is left of `busy_timeout`, so the two waits share one budget.
pub(crate) fn with_spent<T>(spent: Duration, f: impl FnOnce() -> T) -> T {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            SPENT.set(Duration::ZERO);
        }
    }
    SPENT.set(spent);
    let _reset = Reset;
    f()
}

/// A number in `[0, 1)` (xorshift, seeded per thread): jitter, not cryptography.
fn random() -> f64 {
    RANDOM.with(|state| {
        let mut x = state.get();
        if x == 0 {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let seed = now.as_nanos() as u64 ^ (state as *const _ as u64) ^ 0x9E37_79B9_7F4A_7C15;
            x = seed | 1;
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        (x >> 11) as f64 / (1u64 << 53) as f64
    })
}

/// The wait before try `count + 1`: uniform in `[d/2, d]`, `d` doubling from [`FIRST_WAIT`] to [`MAX_WAIT`].
fn wait_before(count: u32) -> Duration {
    let full = FIRST_WAIT.saturating_mul(1u32 << count.min(16)).min(MAX_WAIT);
    full.mul_f64(0.5 + 0.5 * random())
}

extern "C" fn on_busy(timeout_ms: *mut c_void, count: c_int) -> c_int {
    let now = Instant::now();
    let started = STARTED.with(|s| {
        if count == 0 || s.get().is_none() {
            s.set(Some(now.checked_sub(SPENT.take()).unwrap_or(now)));
        }
        s.get().unwrap_or(now)
    });
    let budget = Duration::from_millis(timeout_ms as usize as u64);
    let left = budget.saturating_sub(now.saturating_duration_since(started));
    if left.is_zero() {
        return 0; // SQLITE_BUSY goes to the caller
    }
    std::thread::sleep(wait_before(count.max(0) as u32).min(left));
    1
}

extern "C" fn on_close(mask: c_uint, _ctx: *mut c_void, handle: *mut c_void, _x: *mut c_void) -> c_int {
    if mask == ffi::SQLITE_TRACE_CLOSE as c_uint {
        table().lock().remove(&(handle as usize));
    }
    0
}

/// The table's key for `conn`: its handle's address.
fn key(conn: &Connection) -> usize {
    // SAFETY: only the address is read, nothing is called through it.
    unsafe { conn.handle() as usize }
}

/// Gives `conn` this handler with a budget of `ms` (0: no waiting, SQLite's meaning).
pub(crate) fn install(conn: &Connection, ms: u32) -> Result<()> {
    // SAFETY: the handle is this open connection's; the callbacks are plain functions
    // whose arguments are an integer and the handle, nothing to free.
    let rc = unsafe {
        let db = conn.handle();
        let rc = if ms == 0 {
            ffi::sqlite3_busy_handler(db, None, std::ptr::null_mut())
        } else {
            ffi::sqlite3_busy_handler(db, Some(on_busy), ms as usize as *mut c_void)
        };
        if rc == ffi::SQLITE_OK {
            ffi::sqlite3_trace_v2(db, ffi::SQLITE_TRACE_CLOSE as c_uint, Some(on_close), std::ptr::null_mut())
        } else {
            rc
        }
    };
    if rc != ffi::SQLITE_OK {
        return Err(Error::Sqlite(format!("cannot install the busy handler (SQLite error {rc})")));
    }
    table().lock().insert(key(conn), ms);
    Ok(())
}

/// The `busy_timeout` this handler runs with on `conn`; `None` when `conn` has SQLite's
/// own (someone ran `PRAGMA busy_timeout` on it since: that reads back non-zero).
pub(crate) fn configured(conn: &Connection, sqlite_reports: i64) -> Option<u32> {
    if sqlite_reports != 0 {
        return None;
    }
    table().lock().get(&key(conn)).copied()
}

/// A user's `PRAGMA busy_timeout` (the read) on a connection running this handler
/// would read SQLite's 0: it runs as a query of the same shape giving the budget.
pub(crate) fn read_as_configured(conn: &Connection, sql: &str) -> Option<String> {
    let words: String = sql.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_ascii_lowercase();
    if !matches!(words.trim_end_matches(';'), "pragmabusy_timeout" | "pragmamain.busy_timeout") {
        return None;
    }
    let reported: i64 = conn.query_row("PRAGMA busy_timeout", [], |r| r.get(0)).ok()?;
    configured(conn, reported).map(|ms| format!("SELECT {ms} AS timeout"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_from_tens_of_microseconds_to_the_cap() {
        for count in 0..40 {
            let full = FIRST_WAIT.saturating_mul(1u32 << count.min(16)).min(MAX_WAIT);
            let w = wait_before(count);
            assert!(w >= full / 2 && w <= full, "try {count}: {w:?} outside [{:?}, {full:?}]", full / 2);
        }
        assert!(wait_before(0) <= Duration::from_micros(20) && wait_before(30) >= MAX_WAIT / 2);
    }

    #[test]
    fn reported_as_configured_and_forgotten_at_close() {
        let conn = Connection::open_in_memory().unwrap();
        install(&conn, 1234).unwrap();
        let reported: i64 = conn.query_row("PRAGMA busy_timeout", [], |r| r.get(0)).unwrap();
        assert_eq!((reported, configured(&conn, reported)), (0, Some(1234)));
        assert_eq!(read_as_configured(&conn, " pragma  BUSY_TIMEOUT ;").as_deref(), Some("SELECT 1234 AS timeout"));
        assert_eq!(read_as_configured(&conn, "PRAGMA busy_timeout = 5"), None);
        conn.execute_batch("PRAGMA busy_timeout = 77").unwrap(); // SQLite's handler again: its value
        assert_eq!((configured(&conn, 77), read_as_configured(&conn, "PRAGMA busy_timeout")), (None, None));
        let handle = key(&conn);
        drop(conn);
        assert!(!table().lock().contains_key(&handle));
    }

    #[test]
    fn gives_up_when_the_budget_is_spent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.db");
        let holder = Connection::open(&path).unwrap();
        holder.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t (x); BEGIN IMMEDIATE").unwrap();
        let waiter = Connection::open(&path).unwrap();
        install(&waiter, 150).unwrap();
        let started = Instant::now();
        let e = waiter.execute_batch("BEGIN IMMEDIATE").unwrap_err();
        let waited = started.elapsed();
        assert!(matches!(Error::from(e), Error::Busy(_)));
        assert!(waited >= Duration::from_millis(150) && waited < Duration::from_secs(2), "{waited:?}");
        // 120 ms of the budget spent in the writer queue: 30 ms left for SQLite's lock.
        let started = Instant::now();
        assert!(with_spent(Duration::from_millis(120), || waiter.execute_batch("BEGIN IMMEDIATE")).is_err());
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(30) && waited < Duration::from_millis(120), "{waited:?}");
        assert_eq!(SPENT.get(), Duration::ZERO, "charged once");
    }
}
