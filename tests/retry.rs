//! Retry in the engine: waiting for the write lane is bounded by the retry deadline.

use std::time::{Duration, Instant};

use consensus_db::{Behavior, Database, Error, Options, RetryPolicy};

#[test]
fn a_writer_waiting_for_the_lane_past_the_deadline_gets_a_busy_error_naming_the_wait() {
    let dir = tempfile::tempdir().unwrap();
    let policy = RetryPolicy { deadline: Duration::from_millis(300), ..RetryPolicy::default() };
    let db = Database::open(dir.path().join("x.db"), Options { retry: Some(policy), ..Options::default() }).unwrap();
    let tx = db.begin(Behavior::Immediate).unwrap(); // holds the lane, like a long VACUUM would
    std::thread::scope(|s| {
        let waited = s.spawn(|| {
            let start = Instant::now();
            let out = db.write_repeatable(|tx| tx.execute("CREATE TABLE IF NOT EXISTS t (x)", &[]));
            (out, start.elapsed())
        });
        let (out, elapsed) = waited.join().unwrap();
        match out {
            Err(Error::Busy(m)) => assert!(m.contains("write lane"), "{m}"),
            other => panic!("expected a busy error, got {other:?}"),
        }
        assert!(elapsed >= Duration::from_millis(250) && elapsed < Duration::from_secs(5), "{elapsed:?}");
    });
    assert_eq!(db.lane_stats().queued, 0, "the writer that gave up left the queue");
    tx.commit().unwrap();
    // The lane is free again and the next write goes through.
    db.write_repeatable(|tx| tx.execute("CREATE TABLE IF NOT EXISTS t (x)", &[])).unwrap();
    assert_eq!(db.retry_count(), 0);
}
