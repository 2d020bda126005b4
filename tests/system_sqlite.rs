//! With the system libsqlite3 (feature `system-sqlite`) SQLite is shared with every other
//! user of it in the process (Python's `sqlite3`, another crate). If one of them opens a
//! connection before consensus-db, SQLite refuses consensus-db's mutex configuration:
//! that is detected and reported, and the store still works (on SQLite's own mutexes).
#![cfg(feature = "system-sqlite")]

use consensus_db::sqlite::mutex::{self as sqlite_mutex, Setup};
use consensus_db::{Database, Options};

#[test]
fn another_sqlite_user_first_is_detected_and_the_store_still_works() {
    // Stands for Python's sqlite3 or another crate: a connection opened first initialises SQLite.
    let other = rusqlite::Connection::open_in_memory().unwrap();
    other.execute_batch("CREATE TABLE t (x)").unwrap();

    assert_eq!(sqlite_mutex::setup(), Setup::AlreadyInitialised);
    assert!(!sqlite_mutex::installed());
    let err = sqlite_mutex::require().unwrap_err().to_string();
    assert!(err.contains("initialised by another user") && err.contains("Embedding"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path().join("shared.db"), Options::default()).unwrap();
    db.record_agent_spawn("agent-1", "SPEC-1", "plan", "quality_gate", "gemini", None).unwrap();
    assert!(db.get_agent_spawn_info("agent-1").unwrap().is_some());
    db.close();
}
