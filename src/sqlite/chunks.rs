//! Maintenance in bounded steps. Retention deletes and incremental vacuum run as a
//! series of chunks, each its own transaction under its own hold of the write lane, so
//! writers queued behind maintenance get their turn between chunks instead of waiting
//! for the whole job (a million-row retention in one DELETE held the lane for seconds).
//! A chunk's size adapts to what the last one took: it doubles while chunks finish in
//! under half of [`CHUNK_TARGET`] and halves when one takes longer. A job killed
//! between chunks leaves every finished chunk committed and the rest to the next run.
//! After each chunk the job tells its [`Progress`] what it has done of its total, and
//! stops there when told to.

use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::error::Result;

/// How long one chunk should hold the write lane (and SQLite's write lock).
pub const CHUNK_TARGET: Duration = Duration::from_millis(10);

/// One chunk of a job, run by [`run_in_chunks`] in its turn: the units it did and
/// whether the job is done.
pub(crate) type Chunk<'a> = &'a mut dyn FnMut(&Connection) -> Result<(u64, bool)>;

/// Told after each chunk the units done so far and the job's total when it is known
/// (`None`: a full VACUUM, which counts SQLite VM steps instead); returns `false` to stop
/// the job after this chunk, every chunk done so far staying committed.
pub type Progress = Box<dyn FnMut(u64, Option<u64>) -> bool + Send>;

/// The size of the next chunk, from what the previous ones took.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ChunkSize {
    size: u32,
    min: u32,
    max: u32,
}

impl ChunkSize {
    pub(crate) fn new(start: u32, min: u32, max: u32) -> ChunkSize {
        ChunkSize { size: start.clamp(min, max), min, max }
    }

    /// Retention's rows and incremental vacuum's pages: from 256, between 16 and 16,384.
    pub(crate) fn maintenance() -> ChunkSize {
        ChunkSize::new(256, 16, 16_384)
    }

    pub(crate) fn get(&self) -> u32 {
        self.size
    }

    pub(crate) fn took(&mut self, elapsed: Duration) {
        if elapsed > CHUNK_TARGET {
            self.size = (self.size / 2).max(self.min);
        } else if elapsed < CHUNK_TARGET / 2 {
            self.size = self.size.saturating_mul(2).min(self.max);
        }
    }
}

/// Runs `chunk` until it reports the job done, each call in its own turn of `hold`
/// (which holds the lane and hands out a connection, retrying as the caller's policy
/// says). `chunk` gets the connection and the chunk's size and returns the units it did
/// and whether the job is done. After each chunk `progress` (if any) is told the units
/// done of `total` (raised to the units done if writers added work meanwhile) and may
/// stop the job. Returns the units done in all.
pub(crate) fn run_in_chunks(
    mut size: ChunkSize,
    mut hold: impl FnMut(Chunk<'_>) -> Result<(u64, bool)>,
    mut chunk: impl FnMut(&Connection, u32) -> Result<(u64, bool)>,
    total: u64,
    mut progress: Option<&mut Progress>,
) -> Result<u64> {
    let mut done_so_far = 0;
    loop {
        let n = size.get();
        let started = Instant::now();
        let (done, finished) = hold(&mut |conn| chunk(conn, n))?;
        size.took(started.elapsed());
        done_so_far += done;
        let go_on = match progress.as_mut() {
            Some(report) => report(done_so_far, Some(total.max(done_so_far))),
            None => true,
        };
        if finished || !go_on {
            return Ok(done_so_far);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chunk_size_follows_what_chunks_take_within_its_bounds() {
        let mut size = ChunkSize::new(100, 10, 400);
        size.took(Duration::from_millis(1));
        assert_eq!(size.get(), 200);
        size.took(Duration::from_millis(1));
        size.took(Duration::from_millis(1));
        assert_eq!(size.get(), 400);
        size.took(Duration::from_millis(7)); // within the target: kept
        assert_eq!(size.get(), 400);
        for _ in 0..10 {
            size.took(Duration::from_millis(50));
        }
        assert_eq!(size.get(), 10);
    }

    #[test]
    fn chunks_run_until_done_and_each_gets_its_own_turn() {
        let conn = Connection::open_in_memory().unwrap();
        let mut turns = 0;
        let mut left = 1000u64;
        let total = run_in_chunks(
            ChunkSize::new(64, 64, 64),
            |f| {
                turns += 1;
                f(&conn)
            },
            |_, n| {
                let done = left.min(u64::from(n));
                left -= done;
                Ok((done, left == 0))
            },
            1000,
            None,
        )
        .unwrap();
        assert_eq!((total, turns), (1000, 16));
    }

    #[test]
    fn progress_is_told_after_each_chunk_and_can_stop_the_job() {
        let conn = Connection::open_in_memory().unwrap();
        let seen = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
        let told = seen.clone();
        let mut progress: Progress = Box::new(move |done, total| {
            told.lock().push((done, total));
            done < 192 // stops after the third chunk
        });
        let mut left = 1000u64;
        let total = run_in_chunks(
            ChunkSize::new(64, 64, 64),
            |f| f(&conn),
            |_, n| {
                let done = left.min(u64::from(n));
                left -= done;
                Ok((done, left == 0))
            },
            100, // fewer than there are: the total shown grows to what was done
            Some(&mut progress),
        )
        .unwrap();
        assert_eq!(total, 192);
        assert_eq!(*seen.lock(), vec![(64, Some(100)), (128, Some(128)), (192, Some(192))]);
    }
}
