//! The engine from Rust, without Python: `cargo test --no-default-features`.

use std::sync::{Arc, Barrier};

use consensus_db::{Behavior, Database, Error, NewArtifact, NewSynthesis, Options};

fn open(dir: &tempfile::TempDir) -> Database {
    Database::open(dir.path().join("engine.db"), Options::default()).expect("open")
}

#[test]
fn pragmas_are_applied_and_verified_on_every_connection() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir);
    let threads = 4;
    let barrier = Arc::new(Barrier::new(threads));
    let db = Arc::new(db);
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (db, barrier) = (db.clone(), barrier.clone());
            std::thread::spawn(move || {
                let tx = db.begin(Behavior::Deferred).unwrap();
                barrier.wait();
                let mode: String = tx.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
                let sync: i64 = tx.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap();
                (mode, sync)
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), ("wal".to_string(), 1));
    }
    db.verify_pragmas().unwrap();
    assert!(db.pool_state().unwrap().0 >= threads as u32);
}

#[test]
fn closure_transactions_commit_or_roll_back() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir);
    db.write(|tx| tx.execute("CREATE TABLE t (x INTEGER)", &[])).unwrap();
    let failed: Result<(), Error> = db.write(|tx| {
        tx.execute("INSERT INTO t VALUES (1)", &[])?;
        Err(Error::invalid("x", "forced"))
    });
    assert!(matches!(failed, Err(Error::InvalidInput { .. })));
    assert_eq!(db.query("SELECT count(*) FROM t", &[]).unwrap()[0][0], 0i64.into());
    db.write(|tx| tx.execute("INSERT INTO t VALUES (2)", &[])).unwrap();
    assert_eq!(db.query("SELECT x FROM t", &[]).unwrap(), vec![vec![2i64.into()]]);
}

#[test]
fn store_round_trip_and_dual_schema_sources() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir);
    db.record_agent_spawn("a1", "SPEC", "plan", "quality_gate", "gemini", Some("r1")).unwrap();
    assert_eq!(db.get_agent_spawn_info("a1").unwrap(), Some(("quality_gate".into(), "plan".into())));
    assert!(db.record_agent_completion("a1", "done").unwrap());
    assert!(!db.record_agent_completion("nobody", "done").unwrap());
    let artifact = NewArtifact {
        spec_id: "SPEC".into(),
        stage: "plan".into(),
        agent_name: "gemini".into(),
        content_json: r#"{"ok": true}"#.into(),
        run_id: Some("r1".into()),
        ..Default::default()
    };
    let id = db.store_artifact(&artifact).unwrap();
    let got = db.query_artifacts("SPEC", "plan").unwrap();
    assert_eq!((got.len(), got[0].id, got[0].source), (1, id, "v1"));
    let bad = NewArtifact { content_json: "{nope".into(), ..artifact };
    assert!(matches!(db.store_artifact(&bad), Err(Error::InvalidInput { ref name, .. }) if name == "content_json"));
    db.store_synthesis(&NewSynthesis {
        spec_id: "SPEC".into(),
        stage: "plan".into(),
        output_markdown: "# merged".into(),
        run_id: Some("r1".into()),
        ..Default::default()
    })
    .unwrap();
    let s = db.query_latest_synthesis("SPEC", "plan").unwrap().unwrap();
    assert_eq!((s.output_markdown.as_str(), s.status.as_str()), ("# merged", "success"));
    assert_eq!(db.reader_counts().v1, 2);
    // A count is what query_artifacts returns (and is a read served by the version-1 tables).
    assert_eq!(db.count_artifacts("SPEC", "plan").unwrap(), 1);
    assert_eq!(db.reader_counts().v1, 3);
}

#[test]
fn memory_databases_are_shared_by_the_pool_and_private_to_the_store() {
    let a = Database::open(":memory:", Options::default()).unwrap();
    let b = Database::open(":memory:", Options::default()).unwrap();
    a.record_agent_spawn("x", "S", "plan", "regular_stage", "code", None).unwrap();
    let t1 = a.begin(Behavior::Deferred).unwrap();
    let t2 = a.begin(Behavior::Deferred).unwrap();
    for tx in [&t1, &t2] {
        let n: i64 = tx.query_row("SELECT count(*) FROM agent_executions", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 1);
    }
    assert_eq!(b.get_agent_name("x").unwrap(), None);
}

#[test]
fn closed_and_future_databases_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir);
    db.write(|tx| tx.execute_batch("PRAGMA user_version = 42").map_err(Error::from)).unwrap();
    db.close();
    assert!(matches!(db.get_agent_name("a"), Err(Error::Closed)));
    let again = Database::open(dir.path().join("engine.db"), Options::default());
    assert!(matches!(again, Err(Error::SchemaTooNew { found: 42, .. })), "{:?}", again.err());
}

#[test]
fn sqlite_runs_on_spinning_mutexes_under_concurrent_reads_and_writes() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(open(&dir));
    assert!(consensus_db::sqlite::mutex::installed(), "SQLite kept its own mutexes");
    let threads = 4;
    let per_thread = 150;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (db, barrier) = (db.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                for i in 0..per_thread {
                    let id = format!("agent-{t}-{i}");
                    db.record_agent_spawn(&id, "SPEC", "plan", "regular_stage", "claude", None).unwrap();
                    let info = db.get_agent_spawn_info(&id).unwrap();
                    assert_eq!(info, Some(("regular_stage".to_string(), "plan".to_string())), "{id}");
                    // A read of another thread's latest row: concurrent readers share the WAL locks.
                    let other = format!("agent-{}-{i}", (t + 1) % threads);
                    if let Some(info) = db.get_agent_spawn_info(&other).unwrap() {
                        assert_eq!(info.1, "plan");
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let rows: i64 = db.conn().unwrap().query_row("SELECT count(*) FROM agent_executions", [], |r| r.get(0)).unwrap();
    assert_eq!(rows, (threads * per_thread) as i64);
}

#[test]
fn a_transaction_ended_by_sqlite_runs_nothing_more() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir);
    db.write(|tx| tx.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)", &[])).unwrap();
    db.write(|tx| tx.execute("INSERT INTO t VALUES (1)", &[])).unwrap();
    let err = db
        .write(|tx| {
            tx.execute("INSERT INTO t VALUES (2)", &[])?;
            let conflict = tx.execute("INSERT OR ROLLBACK INTO t VALUES (1)", &[]);
            assert!(matches!(conflict, Err(Error::Integrity(_))), "{conflict:?}");
            assert!(tx.is_ended());
            tx.execute("INSERT INTO t VALUES (3)", &[])
        })
        .unwrap_err();
    assert!(matches!(err, Error::Transaction(ref m) if m.contains("OR ROLLBACK")), "{err}");
    let err = db.write(|tx| tx.execute("COMMIT", &[])).unwrap_err();
    assert!(matches!(err, Error::Transaction(_)), "{err}");
    let keys: Vec<i64> = db
        .query("SELECT k FROM t", &[])
        .unwrap()
        .iter()
        .map(|r| match r[0] {
            rusqlite::types::Value::Integer(k) => k,
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(keys, vec![1]);
}

#[test]
fn backups_are_new_files_with_the_source_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir);
    db.record_agent_spawn("a", "S", "plan", "quality_gate", "g", None).unwrap();
    std::fs::set_permissions(dir.path().join("engine.db"), std::fs::Permissions::from_mode(0o640)).unwrap();
    let dest = dir.path().join("copy.db");
    db.backup(&dest).unwrap();
    assert_eq!(std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777, 0o640);
    let err = db.backup(&dest).unwrap_err();
    assert!(matches!(err, Error::InvalidInput { ref message, .. } if message.contains("copy.db")), "{err}");
    let (first, second) = (db.backup_beside().unwrap(), db.backup_beside().unwrap());
    assert_ne!(first, second);
    let copy = Database::open(&second, Options { read_only: true, ..Options::default() }).unwrap();
    assert_eq!(copy.get_agent_name("a").unwrap().as_deref(), Some("g"));
}

/// The files of `db` this process holds open (Linux: read from /proc).
#[cfg(target_os = "linux")]
fn files_held(db: &std::path::Path) -> Vec<String> {
    let prefix = db.to_string_lossy().into_owned();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| p.starts_with(&prefix))
        .collect()
}

#[cfg(target_os = "linux")]
#[test]
fn close_returns_with_every_file_closed_and_a_transaction_open_at_close_still_commits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("engine.db");
    let db = Database::open(&path, Options { min_idle: 3, ..Options::default() }).unwrap();
    db.record_agent_spawn("a1", "S", "plan", "regular_stage", "x", None).unwrap();
    let tx = db.begin(Behavior::Immediate).unwrap();
    tx.execute("UPDATE agent_executions SET run_id = 'late' WHERE agent_id = 'a1'", &[]).unwrap();
    db.close();
    assert!(matches!(db.conn(), Err(Error::Closed)));
    assert!(!files_held(&path).is_empty(), "the open transaction keeps its connection");
    tx.commit().unwrap();
    assert_eq!(files_held(&path), Vec::<String>::new());
    drop(db);
    let db = Database::open(&path, Options::default()).unwrap();
    let rows = db.query("SELECT run_id FROM agent_executions", &[]).unwrap();
    assert_eq!(rows, vec![vec![rusqlite::types::Value::Text("late".into())]]);
}

#[test]
fn close_and_stop_from_the_maintenance_hook_do_not_wait_for_themselves() {
    use consensus_db::MaintenanceOptions;
    use std::sync::mpsc;
    use std::time::Duration;

    for close in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(open(&dir));
        let (done, called) = mpsc::channel();
        let weak = Arc::downgrade(&db);
        let hook = move |_: &consensus_db::CycleReport| {
            if let Some(db) = weak.upgrade() {
                if close {
                    db.close();
                } else {
                    db.stop_maintenance();
                }
                let _ = done.send(());
            }
        };
        let options = MaintenanceOptions {
            interval: Duration::from_millis(20),
            on_cycle: Some(Arc::new(hook)),
            ..MaintenanceOptions::default()
        };
        db.start_maintenance(options).unwrap();
        called.recv_timeout(Duration::from_secs(20)).expect("the hook returned");
        assert_eq!(db.maintenance_cycles(), None);
        assert_eq!(db.is_closed(), close);
    }
}

#[test]
fn a_replicated_store_checkpoints_passive_only_and_needs_a_five_second_busy_timeout() {
    use consensus_db::CheckpointMode;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replicated.db");
    let mut low = Options { replicated: true, ..Options::default() };
    low.pragmas.set("busy_timeout", "1000").unwrap();
    match Database::open(&path, low) {
        Err(Error::InvalidInput { name, message }) => {
            assert_eq!(name, "pragma busy_timeout");
            assert!(message.contains("1000 ms"), "{message}");
        }
        other => panic!("expected busy_timeout to be refused, got {:?}", other.err()),
    }
    assert!(!path.exists(), "refused before the file was created");

    let db = Database::open(&path, Options { replicated: true, ..Options::default() }).unwrap();
    assert!(db.is_replicated().unwrap());
    let done = db.checkpoint(None).unwrap();
    assert_eq!(done.mode, CheckpointMode::Passive);
    assert!(matches!(db.checkpoint(Some(CheckpointMode::Truncate)), Err(Error::InvalidInput { .. })));
    db.close();

    // Without the flag a plain file truncates; Litestream's table in it turns that off.
    let db = Database::open(&path, Options::default()).unwrap();
    assert!(!db.is_replicated().unwrap());
    assert_eq!(db.checkpoint(None).unwrap().mode, CheckpointMode::Truncate);
    db.write(|tx| tx.execute("CREATE TABLE _litestream_seq (id INTEGER PRIMARY KEY, seq INTEGER)", &[])).unwrap();
    assert!(db.is_replicated().unwrap());
    assert_eq!(db.checkpoint(None).unwrap().mode, CheckpointMode::Passive);
}

#[test]
fn a_wait_by_run_is_woken_by_another_stores_commit_and_never_returns_early() {
    use consensus_db::wait::{AgentSet, Expectation, WaitFor};
    use consensus_db::Backend;

    let dir = tempfile::tempdir().unwrap();
    let waiter = Arc::new(open(&dir));
    // Another store on the file: its own lane, so only the data_version watcher can wake the waiter.
    let other = open(&dir);
    let set = Expectation::new("S".into(), "plan".into(), "run-1".into(), vec!["a1".into(), "a2".into()], None);
    assert_eq!(other.expect_agents(&set.unwrap()).unwrap(), 2);
    other.record_agent_spawn("a1", "S", "plan", "regular_stage", "gemini", None).unwrap();
    other.record_agent_completion("a1", "{}").unwrap();
    let wait = WaitFor::new("S".into(), "plan".into(), AgentSet::run("run-1".into(), None).unwrap(), None).unwrap();
    let once = waiter.wait_for_agents(&wait, Some(std::time::Duration::ZERO)).unwrap();
    assert!(once.timed_out && once.status.pending == ["a2"], "{once:?}");
    let (w, c) = (waiter.clone(), wait.clone());
    let waiting = std::thread::spawn(move || w.wait_for_agents(&c, Some(std::time::Duration::from_secs(60))));
    while !waiter.changes().watcher_running() {
        std::thread::yield_now();
    }
    other.record_agent_spawn("a2", "S", "plan", "regular_stage", "gemini", None).unwrap();
    other.record_extraction_failure("a2", "not json", "Expecting value").unwrap();
    let outcome = waiting.join().unwrap().unwrap();
    assert!(!outcome.timed_out, "{outcome:?}");
    assert_eq!((outcome.status.completed, outcome.status.failed), (vec!["a1".to_string()], vec!["a2".to_string()]));
}
