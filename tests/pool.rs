//! The pool from Rust: r2d2 with r2d2_sqlite's manager, wrapped so that `close()` wakes
//! and waits as the store promises, a failed open keeps its own error, and a host's own
//! r2d2 pool can get the verified pragmas (`VerifiedPragmas`).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use consensus_db::sqlite::pool::{r2d2, r2d2_sqlite::SqliteConnectionManager};
use consensus_db::{Behavior, Database, Error, Options, Pragmas, VerifiedPragmas};

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}

/// The files of `db` this process holds open (Linux: read from /proc).
fn files_held(db: &Path) -> Vec<String> {
    let prefix = db.to_string_lossy().into_owned();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| p.starts_with(&prefix))
        .collect()
}

#[test]
fn a_checkout_blocked_at_close_is_woken_with_the_closed_error() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options { pool_size: 1, checkout_timeout: Duration::from_secs(30), ..Options::default() };
    let db = Arc::new(Database::open(dir.path().join("a.db"), options).unwrap());
    let held = db.conn().unwrap();
    let blocked = {
        let db = db.clone();
        std::thread::spawn(move || {
            let outcome = db.conn().map(drop);
            (outcome, Instant::now())
        })
    };
    wait_for("the second checkout to wait", || db.pool().waiting() == 1);
    let closing = Instant::now();
    db.close();
    let (outcome, woken) = blocked.join().unwrap();
    assert!(matches!(outcome, Err(Error::Closed)), "{outcome:?}");
    let after = woken.saturating_duration_since(closing);
    assert!(after < Duration::from_secs(2), "woken {after:?} after close (checkout_timeout 30 s)");
    drop(held);
    assert_eq!(files_held(&dir.path().join("a.db")), Vec::<String>::new());
}

#[test]
fn a_connection_that_fails_to_open_reports_its_own_error_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    let options = Options { pool_size: 2, checkout_timeout: Duration::from_secs(30), ..Options::default() };
    let db = Database::open(&path, options).unwrap();
    // Another program turns auto_vacuum off: the next connection the pool opens
    // fails its verification.
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("PRAGMA auto_vacuum = NONE; VACUUM;").unwrap();
    drop(other);
    let tx = db.begin(Behavior::Deferred).unwrap(); // the idle connection
    let asked = Instant::now();
    let second = db.conn().map(drop);
    let took = asked.elapsed();
    match second {
        Err(Error::Pragma { pragma, wanted, actual }) => {
            assert_eq!((pragma.as_str(), wanted.as_str(), actual.as_str()), ("auto_vacuum", "2", "0"))
        }
        other => panic!("expected the open's own pragma error, got {other:?}"),
    }
    assert!(took < Duration::from_secs(2), "took {took:?} (checkout_timeout 30 s)");
    drop(tx);
    db.close();
    assert_eq!(files_held(&path), Vec::<String>::new());
}

/// Holds the WAL locks of `db`'s `-shm` file for `how_long` in a forked child (POSIX
/// locks of this process would not conflict with its own SQLite): a connection opened
/// meanwhile stalls in its first read until they are released. Returns the child's pid.
fn hold_wal_locks_for(db: &Path, how_long: Duration) -> libc::pid_t {
    use std::os::unix::ffi::OsStrExt;
    let shm = std::ffi::CString::new([db.as_os_str().as_bytes(), b"-shm"].concat()).unwrap();
    let micros = how_long.as_micros() as libc::useconds_t;
    let mut pipe = [0; 2];
    // SAFETY: plain libc calls; the child only calls async-signal-safe functions.
    unsafe {
        assert_eq!(libc::pipe(pipe.as_mut_ptr()), 0);
        let pid = libc::fork();
        assert!(pid >= 0);
        if pid == 0 {
            libc::close(pipe[0]);
            let fd = libc::open(shm.as_ptr(), libc::O_RDWR);
            let lock = libc::flock {
                l_type: libc::F_WRLCK as i16,
                l_whence: libc::SEEK_SET as i16,
                l_start: 120, // SQLite's WAL write, checkpoint, recover and read locks
                l_len: 8,
                l_pid: 0,
            };
            let ok = fd >= 0 && libc::fcntl(fd, libc::F_SETLK, &lock) == 0;
            libc::write(pipe[1], [u8::from(ok)].as_ptr().cast(), 1);
            libc::usleep(micros);
            libc::_exit(0);
        }
        libc::close(pipe[1]);
        let mut ok = 0u8;
        assert_eq!(libc::read(pipe[0], (&mut ok as *mut u8).cast(), 1), 1);
        libc::close(pipe[0]);
        assert_eq!(ok, 1, "the child could not lock {shm:?}");
        pid
    }
}

#[test]
fn close_waits_for_a_connection_being_opened() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    let options = Options { pool_size: 2, checkout_timeout: Duration::from_secs(10), ..Options::default() };
    let db = Arc::new(Database::open(&path, options).unwrap());
    db.record_agent_spawn("a1", "S", "plan", "regular_stage", "x", None).unwrap();
    let tx = db.begin(Behavior::Deferred).unwrap(); // the idle connection, BEGIN reads nothing yet

    // The transaction's connection's files (not the store's writer-queue sidecar, which
    // close() releases as well).
    let held_by_tx = files_held(&path).iter().filter(|p| !p.ends_with("-writer")).count();
    let holder = hold_wal_locks_for(&path, Duration::from_millis(500));
    // A second checkout makes the pool open a connection, which stalls in its first read.
    let opening = {
        let db = db.clone();
        std::thread::spawn(move || db.get_agent_spawn_info("a1").map(drop))
    };
    wait_for("the new connection's file to open", || files_held(&path).len() > held_by_tx);
    let closing = Instant::now();
    db.close();
    let (waited, left) = (closing.elapsed(), files_held(&path));
    // SAFETY: reaps the child started above.
    unsafe { libc::waitpid(holder, std::ptr::null_mut(), 0) };
    assert_eq!(left.len(), held_by_tx, "close() returned with the connection being opened still open: {left:?}");
    assert!(!left.iter().any(|p| p.ends_with("-writer")), "close() left the writer queue open: {left:?}");
    assert!(waited < Duration::from_secs(5), "close() waited {waited:?}");
    assert!(matches!(opening.join().unwrap(), Err(Error::Closed)));
    tx.rollback().unwrap();
    assert_eq!(files_held(&path), Vec::<String>::new());
}

#[test]
fn a_hosts_own_r2d2_pool_gets_the_verified_pragmas() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("host.db");
    Database::open(&path, Options::default()).unwrap().close(); // the file's persistent pragmas
    let pool = r2d2::Pool::builder()
        .max_size(2)
        .connection_customizer(Box::new(VerifiedPragmas::new(Pragmas::default())))
        .build(SqliteConnectionManager::file(&path))
        .unwrap();
    let conn = pool.get().unwrap();
    for (pragma, wanted) in [("auto_vacuum", 2), ("synchronous", 1), ("foreign_keys", 1), ("temp_store", 2)] {
        let actual: i64 = conn.query_row(&format!("PRAGMA {pragma}"), [], |r| r.get(0)).unwrap();
        assert_eq!(actual, wanted, "{pragma}");
    }
    // The store's busy handler replaces SQLite's (whose PRAGMA then reads 0); the crate
    // reads the timeout it was given.
    assert_eq!(consensus_db::sqlite::pragmas::read(&conn, "busy_timeout").unwrap(), "5000");
    drop(conn);

    // A file whose auto_vacuum is not the configured one: no connection is handed out,
    // and the error names the pragma.
    let plain = dir.path().join("plain.db");
    rusqlite::Connection::open(&plain).unwrap().execute_batch("CREATE TABLE t (x)").unwrap();
    let refused = r2d2::Pool::builder()
        .connection_timeout(Duration::from_millis(500))
        .connection_customizer(Box::new(VerifiedPragmas::new(Pragmas::default())))
        .build(SqliteConnectionManager::file(&plain));
    let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("auto_vacuum"), "{message:?}");
    let customizer = VerifiedPragmas::new(Pragmas::default());
    let mut bare = rusqlite::Connection::open(&plain).unwrap();
    let typed = r2d2::CustomizeConnection::<_, rusqlite::Error>::on_acquire(&customizer, &mut bare);
    match typed {
        Err(rusqlite::Error::UserFunctionError(e)) => {
            assert!(matches!(e.downcast_ref::<Error>(), Some(Error::Pragma { pragma, .. }) if pragma == "auto_vacuum"))
        }
        other => panic!("expected the typed pragma error, got {other:?}"),
    }
}
