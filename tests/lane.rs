//! The write lane (`src/sqlite/writer/`): group commit, per-write outcomes, holds.
//! Real threads on a real file; groups are formed deterministically by holding the lane
//! with an open write transaction while writers queue behind it.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use consensus_db::{Behavior, Database, Error, Options};

fn open(dir: &tempfile::TempDir) -> Arc<Database> {
    let db = Database::open(dir.path().join("lane.db"), Options::default()).expect("open");
    db.write(|tx| tx.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)", &[])).unwrap();
    Arc::new(db)
}

fn count(db: &Database, sql: &str) -> i64 {
    match &db.query(sql, &[]).unwrap()[0][0] {
        rusqlite::types::Value::Integer(n) => *n,
        other => panic!("{other:?}"),
    }
}

/// Waits (without sleeping a fixed time) until `n` callers wait in the lane.
fn wait_queued(db: &Database, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while db.lane_stats().queued < n {
        assert!(Instant::now() < deadline, "only {} of {n} writers queued", db.lane_stats().queued);
        std::thread::yield_now();
    }
}

/// Starts one thread per closure, in order, each queued before the next starts (so the
/// group runs them in this order), while `db`'s lane is held by the caller.
type Write<T> = Box<dyn FnOnce(&Database) -> T + Send>;

fn queue_in_order<T: Send + 'static>(db: &Arc<Database>, writes: Vec<Write<T>>) -> Vec<JoinHandle<T>> {
    let base = db.lane_stats().queued;
    writes
        .into_iter()
        .enumerate()
        .map(|(i, w)| {
            let db2 = db.clone();
            let h = std::thread::spawn(move || w(&db2));
            wait_queued(db, base + i as u64 + 1);
            h
        })
        .collect()
}

#[test]
fn many_threads_every_acknowledged_write_is_present_and_groups_form() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir);
    let before = db.lane_stats();
    let (threads, per) = (8i64, 150i64);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let db = db.clone();
            std::thread::spawn(move || {
                (0..per)
                    .map(|i| {
                        let k = t * per + i;
                        db.write(|tx| tx.execute("INSERT INTO t VALUES (?1, 'x')", &[k.into()])).map(|_| k).unwrap()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let acknowledged: Vec<i64> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    assert_eq!(acknowledged.len() as i64, threads * per);
    assert_eq!(count(&db, "SELECT count(*) FROM t"), threads * per);
    let stats = db.lane_stats();
    assert_eq!(stats.members - before.members, (threads * per) as u64);
    assert!(stats.groups < stats.members, "no write was ever grouped: {stats:?}");
    assert!(stats.sizes.iter().any(|&(size, _)| size > 1), "{stats:?}");
}

#[test]
fn one_bad_write_in_a_group_of_50_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir);
    db.write(|tx| tx.execute("INSERT INTO t VALUES (1007, 'taken')", &[])).unwrap();
    let holder = db.begin(Behavior::Immediate).unwrap();
    let base = db.lane_stats();
    let handles: Vec<_> = (0..50i64)
        .map(|i| {
            let db = db.clone();
            std::thread::spawn(move || db.store_like_insert(1000 + i))
        })
        .collect();
    wait_queued(&db, 50);
    holder.commit().unwrap();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for (i, r) in results.iter().enumerate() {
        if i == 7 {
            assert!(matches!(r, Err(Error::Integrity(_))), "{r:?}");
        } else {
            assert!(r.is_ok(), "write {i}: {r:?}");
        }
    }
    assert_eq!(count(&db, "SELECT count(*) FROM t"), 50);
    assert_eq!(count(&db, "SELECT count(*) FROM t WHERE v = 'taken'"), 1);
    let stats = db.lane_stats();
    assert_eq!(stats.groups - base.groups, 1, "{stats:?}");
    assert!(stats.sizes.contains(&(50, 1)), "{stats:?}");
}

trait Insert {
    fn store_like_insert(&self, k: i64) -> consensus_db::Result<usize>;
}

impl Insert for Database {
    fn store_like_insert(&self, k: i64) -> consensus_db::Result<usize> {
        self.write_repeatable(|tx| tx.execute("INSERT INTO t VALUES (?1, 'new')", &[k.into()]))
    }
}

#[test]
fn a_write_that_ends_the_transaction_acknowledges_no_rolled_back_write() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir);
    db.write(|tx| tx.execute("INSERT INTO t VALUES (5, 'taken')", &[])).unwrap();
    let holder = db.begin(Behavior::Immediate).unwrap();
    type W = Write<consensus_db::Result<usize>>;
    let writes: Vec<W> = vec![
        Box::new(|db: &Database| db.write(|tx| tx.execute("INSERT INTO t VALUES (1, 'once')", &[]))),
        Box::new(|db: &Database| db.store_like_insert(2)),
        Box::new(|db: &Database| db.write(|tx| tx.execute("INSERT OR ROLLBACK INTO t VALUES (5, 'conflict')", &[]))),
        Box::new(|db: &Database| db.write(|tx| tx.execute("INSERT INTO t VALUES (3, 'once')", &[]))),
        Box::new(|db: &Database| db.store_like_insert(4)),
    ];
    let handles = queue_in_order(&db, writes);
    holder.commit().unwrap();
    let r: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    // The FnOnce write that had run cannot run again: it fails, nothing of it persists.
    assert!(matches!(&r[0], Err(Error::Transaction(m)) if m.contains("rolled back with its group")), "{:?}", r[0]);
    // A repeatable (store) write that had run is run again and commits.
    assert!(r[1].is_ok(), "{:?}", r[1]);
    assert!(matches!(r[2], Err(Error::Integrity(_))), "{:?}", r[2]);
    assert!(r[3].is_ok() && r[4].is_ok(), "{r:?}");
    let keys: Vec<i64> = db
        .query("SELECT k FROM t ORDER BY k", &[])
        .unwrap()
        .into_iter()
        .map(|row| match row[0] {
            rusqlite::types::Value::Integer(k) => k,
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(keys, vec![2, 3, 4, 5]);
}

#[test]
fn a_panic_in_one_write_fails_only_that_write() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir);
    let holder = db.begin(Behavior::Immediate).unwrap();
    type W = Write<consensus_db::Result<usize>>;
    let writes: Vec<W> = (0..5i64)
        .map(|i| -> W {
            Box::new(move |db: &Database| {
                db.write(move |tx| {
                    tx.execute("INSERT INTO t VALUES (?1, 'x')", &[i.into()])?;
                    if i == 2 {
                        panic!("member two breaks");
                    }
                    Ok(1)
                })
            })
        })
        .collect();
    let handles = queue_in_order(&db, writes);
    holder.commit().unwrap();
    let r: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(matches!(&r[2], Err(Error::Internal(m)) if m.contains("member two breaks")), "{:?}", r[2]);
    for i in [0, 1, 3, 4] {
        assert!(r[i].is_ok(), "{i}: {:?}", r[i]);
    }
    assert_eq!(count(&db, "SELECT count(*) FROM t"), 4);
    assert_eq!(count(&db, "SELECT count(*) FROM t WHERE k = 2"), 0);
    // The lane goes on.
    db.write(|tx| tx.execute("INSERT INTO t VALUES (9, 'after')", &[])).unwrap();
}

#[test]
fn a_write_from_the_thread_that_holds_the_lane_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir);
    let tx = db.begin(Behavior::Immediate).unwrap();
    let started = Instant::now();
    let err = db.record_agent_spawn("a1", "S", "plan", "quality_gate", "g", None).unwrap_err();
    assert!(matches!(&err, Error::Transaction(m) if m.contains("write lane")), "{err:?}");
    assert!(matches!(db.begin(Behavior::Immediate), Err(Error::Transaction(_))));
    assert!(started.elapsed() < Duration::from_secs(2));
    tx.execute("INSERT INTO t VALUES (1, 'in block')", &[]).unwrap();
    tx.commit().unwrap();
    // A write inside a write runs on the committing thread, which holds the lane.
    let nested = db.write(|_| db.write(|tx| tx.execute("INSERT INTO t VALUES (2, 'x')", &[])));
    assert!(matches!(nested, Err(Error::Transaction(_))), "{nested:?}");
    db.record_agent_spawn("a1", "S", "plan", "quality_gate", "g", None).unwrap();
    assert_eq!(count(&db, "SELECT count(*) FROM t"), 1);
}

#[test]
fn close_fails_waiting_writers_instead_of_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir);
    let holder = db.begin(Behavior::Immediate).unwrap();
    let handles: Vec<_> = (0..4i64)
        .map(|i| {
            let db = db.clone();
            std::thread::spawn(move || db.store_like_insert(i))
        })
        .collect();
    wait_queued(&db, 4);
    db.close();
    for h in handles {
        assert!(matches!(h.join().unwrap(), Err(Error::Closed)));
    }
    drop(holder);
    assert!(matches!(db.store_like_insert(9), Err(Error::Closed)));
}

#[test]
fn submitted_writes_wait_without_threads_and_ride_in_groups() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir);
    let (send, recv) = std::sync::mpsc::channel();
    let hold = db.begin(Behavior::Immediate).unwrap(); // the lane is held: the writes queue
    for k in 0..100i64 {
        let send = send.clone();
        db.submit_repeatable(
            move |tx| tx.execute("INSERT INTO t (k, v) VALUES (?1, 'x')", &[rusqlite::types::Value::Integer(k)]),
            move |r| send.send(r.map_err(|e| e.to_string())).unwrap(),
        );
    }
    // A duplicate key fails alone, with its own error.
    let s = send.clone();
    db.submit_repeatable(
        |tx| tx.execute("INSERT INTO t (k, v) VALUES (0, 'dup')", &[]),
        move |r| s.send(r.map_err(|e| e.to_string())).unwrap(),
    );
    assert_eq!(db.lane_stats().queued, 101);
    drop(hold);
    let results: Vec<_> = (0..101).map(|_| recv.recv_timeout(Duration::from_secs(30)).unwrap()).collect();
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 100);
    assert_eq!(count(&db, "SELECT count(*) FROM t"), 100);
    let stats = db.lane_stats();
    assert!(stats.sizes.iter().any(|&(size, _)| size > 1), "{stats:?}");
    db.close();
    let s = send.clone();
    db.submit_repeatable(
        |tx| tx.execute("INSERT INTO t (k, v) VALUES (1000, 'x')", &[]),
        move |r| s.send(r.map_err(|e| format!("{:?}", matches!(e, Error::Closed)))).unwrap(),
    );
    assert_eq!(recv.recv().unwrap(), Err("true".to_string()));
}

#[test]
fn stopping_maintenance_from_the_thread_that_holds_the_lane_does_not_wait_for_it() {
    use consensus_db::MaintenanceOptions;
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir);
    let hold = db.begin(Behavior::Immediate).unwrap();
    let options = MaintenanceOptions { interval: Duration::from_millis(1), ..Default::default() };
    db.start_maintenance(options).unwrap();
    wait_queued(&db, 1); // the maintenance cycle waits for the lane this thread holds
    db.stop_maintenance(); // joins the thread: it must leave the lane's queue (before: a deadlock)
    assert_eq!(db.maintenance_cycles(), None);
    assert_eq!(db.lane_stats().queued, 0);
    hold.commit().unwrap();
}

#[test]
fn a_member_leaving_a_deferred_violation_fails_alone_and_the_group_commits() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir);
    assert_eq!(count(&db, "PRAGMA foreign_keys"), 1);
    // A deferred foreign key is checked at COMMIT only: were it left to the group's
    // COMMIT, one member would fail them all. Each member is checked before its
    // savepoint is released, and fails alone as its own COMMIT would.
    db.write(|tx| {
        tx.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)", &[])?;
        tx.execute(
            "CREATE TABLE child (id INTEGER PRIMARY KEY, parent INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)",
            &[],
        )
    })
    .unwrap();
    let holder = db.begin(Behavior::Immediate).unwrap();
    let writes: Vec<Write<consensus_db::Result<usize>>> = vec![
        Box::new(|db: &Database| db.store_like_insert(1)),
        Box::new(|db: &Database| db.write_repeatable(|tx| tx.execute("INSERT INTO child VALUES (1, 42)", &[]))),
        Box::new(|db: &Database| db.store_like_insert(2)),
    ];
    let handles = queue_in_order(&db, writes);
    holder.commit().unwrap();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(matches!(results[1], Err(Error::Integrity(_))), "{results:?}");
    assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
    assert_eq!(count(&db, "SELECT count(*) FROM t"), 2);
    assert_eq!(count(&db, "SELECT count(*) FROM child"), 0);
    // The lane is free and the connection usable: the next write commits.
    db.store_like_insert(3).unwrap();
    assert_eq!(count(&db, "SELECT count(*) FROM t"), 3);
}
