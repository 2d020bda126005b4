//! A Rust host sharing one consensus-db `Database` with the Python code it runs.
//!
//! It opens the store in Rust, registers its own `consensus_db._core` (so the wheel's
//! extension is never loaded beside it), hands the store to a Python snippet that
//! writes from four threads, and reads the same `Database` from a Rust thread while
//! they write. Usage: `embed_host [DB_PATH]`; `CONSENSUS_DB_PYTHONPATH` names where the
//! package's Python files are (default: this repository's `python/`).
//! `embed_host --wheel-first` shows the refusal when the wheel's extension got in first.

use std::ffi::CString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use consensus_db::{embed, Database, Options};
use pyo3::prelude::*;
use pyo3::types::{IntoPyDict, PyDict};

const SPEC: &str = "SPEC-EMBED";
const PY_THREADS: usize = 4;
const PY_WRITES: usize = 50;

const SNIPPET: &str = r#"
import sys, threading
import consensus_db
assert isinstance(store, consensus_db.Store), type(store)
assert consensus_db._core.Database is type(store).__mro__[1]

def work(t):
    for i in range(WRITES):
        store.record_agent_spawn(f"py-{t}-{i}", SPEC, "plan", "regular_stage", "claude")
        store.store_artifact(SPEC, "plan", "claude", {"thread": t, "i": i})

threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
for th in threads: th.start()
for th in threads: th.join()
with store.transaction() as tx:
    tx.execute("UPDATE agent_executions SET completed_at = '2026-11-28 00:00:00' WHERE agent_id = 'rust-0'")
seen_by_python = len(store.query_artifacts(SPEC, "plan"))
print(f"python: {store!r}, SQLite {consensus_db.sqlite_version()}, {seen_by_python} artifacts, "
      f"package from {consensus_db.__file__}")
"#;

fn python_dir() -> String {
    std::env::var("CONSENSUS_DB_PYTHONPATH")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../python").to_string())
}

/// `embed_host --wheel-first`: what a host that lets Python import the wheel's extension
/// before registering its own gets — an ImportError, not two copies of the crate in use.
fn wheel_first() -> Result<(), Box<dyn std::error::Error>> {
    let message = Python::attach(|py| -> PyResult<String> {
        py.import("sys")?.getattr("path")?.call_method1("insert", (0, python_dir()))?;
        let core = py.import("consensus_db._core")?;
        println!("python: imported the wheel's extension first: {}", core.getattr("__file__")?);
        match embed::register(py) {
            Ok(()) => Ok(String::new()),
            Err(e) if e.is_instance_of::<pyo3::exceptions::PyImportError>(py) => Ok(e.to_string()),
            Err(e) => Err(e),
        }
    })?;
    assert!(message.contains("already imported from"), "register() accepted a foreign _core: {message:?}");
    println!("rust: register() refused it: {message}");
    println!("embed_host --wheel-first: ok");
    Ok(())
}

/// `embed_host --python-sqlite-first` (built with `system-sqlite`): Python's `sqlite3`
/// initialises the shared system SQLite before consensus-db loads; loading the module
/// (`register`) then warns (RuntimeWarning) that SQLite kept its own mutexes.
fn python_sqlite_first() -> Result<(), Box<dyn std::error::Error>> {
    let warned = Python::attach(|py| -> PyResult<Vec<String>> {
        py.import("sys")?.getattr("path")?.call_method1("insert", (0, python_dir()))?;
        let sqlite3 = py.import("sqlite3")?;
        sqlite3.call_method1("connect", (":memory:",))?.call_method1("execute", ("SELECT 1",))?;
        let warnings = py.import("warnings")?;
        let catcher = warnings.call_method("catch_warnings", (), Some(&[("record", true)].into_py_dict(py)?))?;
        let caught = catcher.call_method0("__enter__")?;
        warnings.call_method1("simplefilter", ("always",))?;
        embed::register(py)?; // the module is made (and its SQLite settings tried) here
        py.import("consensus_db")?;
        catcher.call_method1("__exit__", (py.None(), py.None(), py.None()))?;
        let mut out = Vec::new();
        for w in caught.try_iter()? {
            let w = w?;
            out.push(format!("{}: {}", w.getattr("category")?.getattr("__name__")?, w.getattr("message")?));
        }
        Ok(out)
    })?;
    println!("python: warnings on loading consensus_db: {warned:?}");
    assert!(
        warned.iter().any(|w| w.starts_with("RuntimeWarning") && w.contains("initialised by another user")),
        "no RuntimeWarning about SQLite's mutexes"
    );
    assert_eq!(consensus_db::sqlite::mutex::setup(), consensus_db::sqlite::mutex::Setup::AlreadyInitialised);
    println!("embed_host --python-sqlite-first: ok");
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    match std::env::args().nth(1).as_deref() {
        Some("--wheel-first") => return wheel_first(),
        Some("--python-sqlite-first") => return python_sqlite_first(),
        _ => {}
    }
    let dir = tempfile_dir();
    let path = std::env::args().nth(1).unwrap_or_else(|| format!("{dir}/embed_host.db"));
    let db = Arc::new(Database::open(&path, Options::default())?);
    db.record_agent_spawn("rust-0", SPEC, "plan", "quality_gate", "gemini", None)?;
    println!(
        "rust: opened {path}; SQLite {}; consensus-db's SQLite settings: {:?}",
        rusqlite::version(),
        consensus_db::sqlite::mutex::setup()
    );

    // A Rust reader on the same Database while Python writes.
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (db, done) = (db.clone(), done.clone());
        std::thread::spawn(move || -> consensus_db::Result<(usize, usize)> {
            let (mut reads, mut max_seen) = (0, 0);
            while !done.load(Ordering::Acquire) {
                max_seen = max_seen.max(db.query_artifacts(SPEC, "plan")?.len());
                reads += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok((reads, max_seen))
        })
    };

    let handed = Python::attach(|py| -> PyResult<Arc<Database>> {
        embed::register(py)?; // before anything imports consensus_db
        py.import("sys")?.getattr("path")?.call_method1("insert", (0, python_dir()))?;
        let store = embed::store(py, db.clone())?;
        let globals = PyDict::new(py);
        globals.set_item("store", &store)?;
        globals.set_item("SPEC", SPEC)?;
        globals.set_item("THREADS", PY_THREADS)?;
        globals.set_item("WRITES", PY_WRITES)?;
        py.run(&CString::new(SNIPPET)?, Some(&globals), None)?;
        embed::database(&store)
    })?;
    done.store(true, Ordering::Release);
    let (reads, max_seen) = reader.join().expect("reader thread")?;

    // One engine: the store Python wrote through is this Database, and Python letting go
    // of its object did not close it (the host owns it).
    assert!(Arc::ptr_eq(&handed, &db), "Python's store is not the host's Database");
    drop(handed);
    assert!(!db.is_closed(), "dropping the Python store closed the host's Database");
    let rows = db.query_artifacts(SPEC, "plan")?;
    assert_eq!(rows.len(), PY_THREADS * PY_WRITES);
    assert!(db.get_agent_spawn_info(&format!("py-{}-{}", PY_THREADS - 1, PY_WRITES - 1))?.is_some());
    let lane = db.lane_stats();
    println!(
        "rust: read {reads} times while Python wrote (saw up to {max_seen} artifacts); now {} artifacts; \
              write lane: {lane:?}",
        rows.len()
    );

    // No second copy of the crate: the wheel's extension was never mapped.
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let loaded: Vec<&str> = maps.lines().filter(|l| l.contains("_core.") && l.contains(".so")).collect();
    assert!(loaded.is_empty(), "an extension module was loaded beside the host: {loaded:?}");
    let libsqlite3: std::collections::BTreeSet<&str> =
        maps.lines().filter_map(|l| l.split_whitespace().nth(5)).filter(|p| p.contains("libsqlite3")).collect();
    println!(
        "rust: no consensus_db extension loaded (the store's SQLite is the host's); libsqlite3 mapped: \
              {libsqlite3:?} (Python's stdlib sqlite3's; with system-sqlite the store's too)"
    );

    host_r2d2_pool(&path, 1 + PY_THREADS * PY_WRITES)?;

    db.close();
    std::fs::remove_dir_all(&dir).ok();
    println!("embed_host: ok");
    Ok(())
}

/// A host's own r2d2 pool on the store's file gets the store's verified pragmas from its
/// customizer: every connection has every configured pragma, or none is handed out.
fn host_r2d2_pool(path: &str, spawns: usize) -> Result<(), Box<dyn std::error::Error>> {
    use consensus_db::sqlite::pool::{r2d2, r2d2_sqlite::SqliteConnectionManager};
    use consensus_db::{Pragmas, VerifiedPragmas};

    let pool = r2d2::Pool::builder()
        .max_size(2)
        .connection_customizer(Box::new(VerifiedPragmas::new(Pragmas::default())))
        .build(SqliteConnectionManager::file(path))?;
    let conn = pool.get()?;
    let (synchronous, mode): (i64, String) =
        conn.query_row("SELECT * FROM pragma_synchronous, pragma_journal_mode", [], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let seen: i64 = conn.query_row("SELECT count(*) FROM agent_executions WHERE spec_id = ?1", [SPEC], |r| r.get(0))?;
    assert_eq!((synchronous, mode.as_str(), seen), (1, "wal", spawns as i64));
    println!(
        "rust: the host's own r2d2 pool (VerifiedPragmas): {seen} spawns, synchronous={synchronous}, journal_mode={mode}"
    );
    Ok(())
}

fn tempfile_dir() -> String {
    let dir = std::env::temp_dir().join(format!("embed_host-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.to_string_lossy().into_owned()
}
