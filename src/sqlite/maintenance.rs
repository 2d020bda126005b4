//! Keeping the file small and healthy: statistics, incremental and full VACUUM, WAL
//! checkpoints, integrity checks, retention, and an optional background thread that
//! does retention + incremental vacuum + checkpoint on an interval (its handle is held by
//! the store's `Database`, above).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use rusqlite::Connection;

use crate::error::{Error, Result};
use crate::model::HEALTH_EXACT_BELOW;
pub use crate::sqlite::chunks::Progress;
use crate::sqlite::chunks::{run_in_chunks, Chunk, ChunkSize};
use crate::sqlite::database::{Engine, Pool};
use crate::sqlite::replica::{self, Checkpoint, CheckpointMode};
use crate::sqlite::schema;
use crate::sqlite::writer::{LaneHold, WriteLane};

/// Free-page fraction above which `needs_vacuum` is true by default.
pub const DEFAULT_VACUUM_THRESHOLD: f64 = 0.5;
/// Executions older than this many days are deleted by the default retention policy.
pub const DEFAULT_RETENTION_DAYS: i64 = 30;

report! {
    #[derive(Clone, Debug, Default, PartialEq)]
    pub struct Stats {
        pub page_size: i64,
        pub page_count: i64,
        pub freelist_count: i64,
        /// freelist_count / page_count (0 for an empty file).
        pub free_fraction: f64,
        /// Bytes of the database file (0 in memory).
        pub file_size: u64,
        /// Bytes of the `-wal` file (0 when absent).
        pub wal_size: u64,
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Health {
    pub stats: Stats,
    /// Rows per table, tables in name order: exact, or for the tables named in
    /// `estimated`, an upper bound (see [`Engine::health`]).
    pub rows: Vec<(String, i64)>,
    /// The tables whose row figure is an estimate rather than a count.
    pub estimated: Vec<String>,
    pub journal_mode: String,
    /// 0 none, 1 full, 2 incremental.
    pub auto_vacuum: i64,
    pub schema_version: i64,
    /// The file's shape (`schema::Shape::describe`): legacy, the predecessor's seed
    /// layout, or one of this store's layouts.
    pub shape: String,
    pub needs_vacuum: bool,
    pub vacuum_threshold: f64,
}

/// What a vacuum did. `before`/`after` are the file as `stats()` reads it; the
/// checkpoint that follows moves the WAL into the main file, so the main file can grow
/// while the database shrinks: the figures below say which is which.
#[derive(Clone, Debug, PartialEq)]
pub struct VacuumReport {
    pub full: bool,
    pub before: Stats,
    pub after: Stats,
    /// The checkpoint run after the vacuum (None in memory).
    pub checkpoint: Option<Checkpoint>,
}

impl VacuumReport {
    /// Pages the database gave up (its page count went down by); never negative — a
    /// full VACUUM that grows the database (adding auto_vacuum's pointer-map pages, say)
    /// freed none, and [`VacuumReport::page_count_change`] shows the growth.
    pub fn pages_freed(&self) -> i64 {
        (-self.page_count_change()).max(0)
    }

    /// The page count after minus before (a change: negative when pages were freed).
    pub fn page_count_change(&self) -> i64 {
        self.after.page_count - self.before.page_count
    }

    /// The bytes the freed pages held: `pages_freed × page_size`, never negative. The main
    /// file gives them back once a checkpoint has copied the whole WAL in (see
    /// [`VacuumReport::checkpoint_blocked`]).
    pub fn bytes_reclaimed(&self) -> i64 {
        self.pages_freed() * self.after.page_size
    }

    /// Main file plus WAL, after minus before (a change: the WAL folded into the main
    /// file can make it positive on a store with nothing to free).
    pub fn disk_bytes_change(&self) -> i64 {
        (self.after.file_size + self.after.wal_size) as i64 - (self.before.file_size + self.before.wal_size) as i64
    }

    /// Why the checkpoint after the vacuum did not copy the whole WAL, if it did not.
    pub fn checkpoint_blocked(&self) -> Option<String> {
        self.checkpoint.as_ref().and_then(Checkpoint::blocked)
    }
}

fn pragma_i64(conn: &Connection, name: &str) -> Result<i64> {
    Ok(conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))?)
}

fn file_len(path: &std::ffi::OsStr) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// `file` is the database file (`None` in memory); for a URI, SQLite's own file name.
pub(crate) fn stats(conn: &Connection, file: Option<&std::path::Path>, in_memory: bool) -> Result<Stats> {
    let page_size = pragma_i64(conn, "page_size")?;
    let page_count = pragma_i64(conn, "page_count")?;
    let freelist_count = pragma_i64(conn, "freelist_count")?;
    let file = file.map(|f| f.as_os_str().to_os_string()).or_else(|| conn.path().map(Into::into));
    let (file_size, wal_size) = match file {
        Some(f) if !in_memory => {
            let mut wal = f.clone();
            wal.push("-wal");
            (file_len(&f), file_len(&wal))
        }
        _ => (0, 0),
    };
    Ok(Stats {
        page_size,
        page_count,
        freelist_count,
        free_fraction: if page_count > 0 { freelist_count as f64 / page_count as f64 } else { 0.0 },
        file_size,
        wal_size,
    })
}

/// Frees up to `pages` free pages (all when `None`); returns how many were freed.
pub(crate) fn incremental_vacuum(conn: &Connection, pages: Option<u32>) -> Result<i64> {
    let before = pragma_i64(conn, "freelist_count")?;
    let sql = match pages {
        Some(n) => format!("PRAGMA incremental_vacuum({n})"),
        None => "PRAGMA incremental_vacuum".to_string(),
    };
    // Each step returns a row; it frees pages as the rows are stepped through.
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query([])?;
    while rows.next()?.is_some() {}
    Ok(before - pragma_i64(conn, "freelist_count")?)
}

/// Where a retention of `days` cuts, as the routing table's timestamp text: computed
/// once, so a retention that runs in many chunks does not chase a moving "now". None
/// when the cut lies before SQLite's dates (year 0): nothing is that old.
pub(crate) fn retention_cutoff(conn: &Connection, days: i64) -> Result<Option<String>> {
    if days < 0 {
        return Err(Error::invalid("days", format!("must be zero or more, got {days}")));
    }
    Ok(conn.query_row("SELECT strftime('%Y-%m-%d %H:%M:%S', 'now', ?1)", [format!("-{days} days")], |r| r.get(0))?)
}

/// Where retention prunes idempotency keys: those recorded before this time (Unix ms)
/// have expired. None when the file has no key table.
pub(crate) fn keys_cutoff(conn: &Connection, kept_ms: i64) -> Result<Option<i64>> {
    if !crate::sqlite::schema::table_exists(conn, "consensus_idempotency")? {
        return Ok(None);
    }
    let now: i64 =
        conn.query_row("SELECT CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)", [], |r| r.get(0))?;
    Ok(Some(now.saturating_sub(kept_ms)))
}

/// The executions a retention cutting at `cutoff` deletes: a count of the `spawned_at`
/// index's entries before it (~0.1 s for a million), for the progress of the job.
pub(crate) fn executions_before(conn: &Connection, cutoff: &str) -> Result<u64> {
    let n: i64 =
        conn.query_row("SELECT count(*) FROM agent_executions WHERE spawned_at < ?1", [cutoff], |r| r.get(0))?;
    Ok(n.max(0) as u64)
}

/// Deletes the executions spawned before `cutoff` in chunks, each in its turn of `hold`
/// and its own IMMEDIATE transaction; returns how many. Each chunk also prunes as many
/// idempotency keys recorded before `keys_before` (ms), which are expired. `progress`
/// is told rows done of `total` after each chunk and may stop the job there.
pub(crate) fn delete_executions_in_chunks(
    mut hold: impl FnMut(Chunk<'_>) -> Result<(u64, bool)>,
    cutoff: &str,
    keys_before: Option<i64>,
    total: u64,
    progress: Option<&mut Progress>,
) -> Result<u64> {
    let mut keys_left = keys_before.is_some();
    // First the expected sets declared before the cutoff (`expect_agents`): in chunks
    // too, counted in neither the result nor the progress, which are the executions'.
    let expire = |conn: &Connection, n: u32| {
        if !crate::sqlite::schema::table_exists(conn, "consensus_expected_agents")? {
            return Ok((0, true));
        }
        let deleted = conn
            .prepare_cached(
                "DELETE FROM consensus_expected_agents WHERE rowid IN
                     (SELECT rowid FROM consensus_expected_agents
                      WHERE declared_at_ms < CAST(strftime('%s', ?1) AS INTEGER) * 1000 LIMIT ?2)",
            )?
            .execute(rusqlite::params![cutoff, n])?;
        Ok((deleted as u64, deleted < n as usize))
    };
    run_in_chunks(ChunkSize::maintenance(), &mut hold, expire, 0, None)?;
    let delete = |conn: &Connection, n: u32| {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let deleted = conn
            .prepare_cached(
                "DELETE FROM agent_executions WHERE rowid IN
                     (SELECT rowid FROM agent_executions WHERE spawned_at < ?1 LIMIT ?2)",
            )
            .and_then(|mut s| s.execute(rusqlite::params![cutoff, n]));
        let pruned = match keys_before.filter(|_| keys_left) {
            Some(before) => deleted.and_then(|deleted| {
                let keys = conn
                    .prepare_cached(
                        "DELETE FROM consensus_idempotency WHERE key IN
                             (SELECT key FROM consensus_idempotency WHERE created_at_ms < ?1 LIMIT ?2)",
                    )?
                    .execute(rusqlite::params![before, n])?;
                Ok((deleted, keys))
            }),
            None => deleted.map(|deleted| (deleted, 0)),
        };
        match pruned {
            Ok((deleted, keys)) => {
                conn.execute_batch("COMMIT")?;
                keys_left = keys >= n as usize;
                Ok((deleted as u64, deleted < n as usize && !keys_left))
            }
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                Err(e.into())
            }
        }
    };
    run_in_chunks(ChunkSize::maintenance(), hold, delete, total, progress)
}

/// Frees up to `pages` free pages (all when None or 0) of the `free` there are, in
/// chunks, each in its turn of `hold`; returns how many. `progress` is told pages freed
/// of those to free after each chunk and may stop the job there.
pub(crate) fn vacuum_in_chunks(
    hold: impl FnMut(Chunk<'_>) -> Result<(u64, bool)>,
    pages: Option<u32>,
    free: u64,
    progress: Option<&mut Progress>,
) -> Result<u64> {
    let mut left = pages.filter(|&n| n > 0).map(u64::from);
    let total = left.map_or(free, |l| l.min(free));
    let free_some = |conn: &Connection, n: u32| {
        let take = left.map_or(n, |l| l.min(u64::from(n)) as u32).max(1);
        let freed = incremental_vacuum(conn, Some(take))?.max(0) as u64;
        if let Some(l) = left.as_mut() {
            *l = l.saturating_sub(freed);
        }
        Ok((freed, freed < u64::from(take) || left == Some(0)))
    };
    run_in_chunks(ChunkSize::maintenance(), hold, free_some, total, progress)
}

/// How much of the WAL file one step of [`checkpoint_in_steps`] cuts off. Truncating a
/// file 16 MB at a time took at most 9 ms a step here; an 850 MB WAL truncated at once
/// (what a TRUNCATE checkpoint does, holding SQLite's write lock) took 270–380 ms, and
/// every writer waited for it.
pub const WAL_SHRINK_STEP: u64 = 16 << 20;

/// The checkpoint that ends a maintenance job, in steps that each keep writers out
/// briefly: a PASSIVE checkpoint first, outside the lane (writers go on meanwhile); on a
/// replicated store that is all. On a store of its own the WAL file is then cut down
/// [`WAL_SHRINK_STEP`] at a time, each cut a turn of `hold`: a PASSIVE checkpoint of the
/// frames written since, then `user_version` rewritten unchanged with
/// `journal_size_limit` set to the size wanted — the first commit into the restarted WAL,
/// which SQLite truncates to that limit. Once the file is that small, the TRUNCATE
/// checkpoint runs in a last turn. A reader that keeps the WAL from restarting (or
/// another process writing first) ends the cutting early; the TRUNCATE then does the
/// rest in one piece, as it always has.
pub(crate) fn checkpoint_in_steps(
    hold: &dyn Fn() -> Result<LaneHold>,
    conn: &Connection,
    wal: &std::path::Path,
    replicated: bool,
) -> Result<Checkpoint> {
    let mut last = replica::checkpoint(conn, CheckpointMode::Passive)?;
    if replicated {
        return Ok(last);
    }
    let limit = pragma_i64(conn, "journal_size_limit")?;
    loop {
        let size = file_len(wal.as_os_str());
        if size <= WAL_SHRINK_STEP {
            break;
        }
        // The frames written since the last step, copied while writers go on.
        replica::checkpoint(conn, CheckpointMode::Passive)?;
        let lane = hold()?;
        // Again in the turn, so that no writer of this store restarts the WAL first (the
        // frames are those written since the line above: few).
        last = replica::checkpoint(conn, CheckpointMode::Passive)?;
        if last.blocked().is_some() {
            break;
        }
        conn.execute_batch(&format!("PRAGMA journal_size_limit = {}", size - WAL_SHRINK_STEP))?;
        let rewritten = rewrite_user_version(conn);
        conn.execute_batch(&format!("PRAGMA journal_size_limit = {limit}"))?;
        drop(lane);
        match rewritten {
            // Another process holds the write lock: the job is done; the TRUNCATE below
            // reports what it could not copy, as it always has.
            Err(Error::Busy(_)) => break,
            other => other?,
        }
        if file_len(wal.as_os_str()) >= size {
            break; // the WAL did not restart: another process wrote first, or a reader holds it
        }
    }
    let _lane = hold()?;
    replica::checkpoint(conn, CheckpointMode::Truncate)
}

/// One write that changes nothing: `user_version` written back as it is, in its own
/// IMMEDIATE transaction (so no migration can come between the read and the write).
fn rewrite_user_version(conn: &Connection) -> Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let written =
        pragma_i64(conn, "user_version").and_then(|v| Ok(conn.execute_batch(&format!("PRAGMA user_version = {v}"))?));
    match written {
        Ok(()) => Ok(conn.execute_batch("COMMIT")?),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

impl Engine {
    /// The `-wal` file beside the database (None in memory).
    fn wal_file(&self, conn: &Connection) -> Option<std::path::PathBuf> {
        if self.in_memory {
            return None;
        }
        let file = self.file().map(|f| f.as_os_str().to_os_string()).or_else(|| conn.path().map(Into::into))?;
        let mut wal = file;
        wal.push("-wal");
        Some(wal.into())
    }

    pub fn stats(&self) -> Result<Stats> {
        stats(&*self.conn()?, self.file(), self.in_memory)
    }

    /// The file's statistics and modes, with rows per table: counted when `exact`, else
    /// counted only where that is cheap (at most [`HEALTH_EXACT_BELOW`] rowids apart) and
    /// otherwise estimated from the rowid span, `max(rowid) - min(rowid) + 1` — two index
    /// seeks, an upper bound that counts the rows deleted in between; such tables are
    /// named in `estimated`. A count reads every page of the table's smallest index:
    /// ~0.8 s for a 1M-execution file.
    pub fn health(&self, vacuum_threshold: f64, exact: bool) -> Result<Health> {
        if !(0.0..=1.0).contains(&vacuum_threshold) {
            return Err(Error::invalid("threshold", format!("must be between 0 and 1, got {vacuum_threshold}")));
        }
        let conn = self.conn()?;
        let stats = stats(&conn, self.file(), self.in_memory)?;
        let tables: Vec<String> = conn
            .prepare_cached(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
            )?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let (mut rows, mut estimated) = (Vec::with_capacity(tables.len()), Vec::new());
        for t in tables {
            let quoted = format!("\"{}\"", t.replace('"', "\"\""));
            let span = if exact { None } else { schema::rowid_span(&conn, &quoted)? };
            let n = match span {
                Some(span) if span > HEALTH_EXACT_BELOW => {
                    estimated.push(t.clone());
                    span
                }
                _ => conn.query_row(&format!("SELECT count(*) FROM {quoted}"), [], |r| r.get(0))?,
            };
            rows.push((t, n));
        }
        Ok(Health {
            needs_vacuum: stats.free_fraction > vacuum_threshold,
            stats,
            rows,
            estimated,
            journal_mode: crate::sqlite::pragmas::read(&conn, "journal_mode")?,
            auto_vacuum: pragma_i64(&conn, "auto_vacuum")?,
            schema_version: pragma_i64(&conn, "user_version")?,
            shape: schema::shape(&conn)?.describe(pragma_i64(&conn, "user_version")?),
            vacuum_threshold,
        })
    }

    /// Reclaims free pages. `full = false` uses incremental vacuum (when auto_vacuum
    /// is incremental; otherwise falls back to a full VACUUM), `pages` limiting how
    /// many, in chunks: `progress` is told pages freed of those to free after each and
    /// may stop it there (what was freed stays freed). `full = true` rebuilds the file in
    /// one piece: `progress` is called every thousand SQLite VM steps with the number of
    /// calls so far and no total; returning `false` aborts it (nothing changes).
    pub fn vacuum(&self, full: bool, pages: Option<u32>, progress: Option<Progress>) -> Result<VacuumReport> {
        if self.read_only {
            return Err(Error::ReadOnly(format!("cannot vacuum {:?}", self.path)));
        }
        let conn = self.conn()?;
        let before = stats(&conn, self.file(), self.in_memory)?;
        let incremental = !full && pragma_i64(&conn, "auto_vacuum")? == 2;
        // In bounded chunks, writers in between (`chunks.rs`); a full VACUUM is one piece.
        if incremental {
            let mut progress = progress;
            let free = before.freelist_count.max(0) as u64;
            vacuum_in_chunks(|chunk| self.with_lane("vacuum", |c| chunk(c)), pages, free, progress.as_mut())?;
        } else {
            let _lane = self.hold_lane()?;
            if let Some(mut report) = progress {
                let mut calls = 0u64;
                conn.progress_handler(
                    1_000,
                    Some(move || {
                        calls += 1;
                        !report(calls, None)
                    }),
                )?;
            }
            let result = conn.execute_batch("VACUUM");
            conn.progress_handler(0, None::<fn() -> bool>)?;
            result?;
        }
        let checkpoint = match self.wal_file(&conn) {
            None => None,
            Some(wal) => {
                let replicated = self.replicated_on(&conn)?;
                Some(checkpoint_in_steps(&|| self.hold_lane(), &conn, &wal, replicated)?)
            }
        };
        let after = stats(&conn, self.file(), self.in_memory)?;
        Ok(VacuumReport { full: !incremental, before, after, checkpoint })
    }

    /// Deletes the executions spawned more than `days` days ago, in chunks (`chunks.rs`);
    /// returns how many. With `progress` they are counted first (the `spawned_at`
    /// index), and it is told rows deleted of that count after each chunk and may stop
    /// the job there (what was deleted stays deleted).
    pub fn cleanup_old_executions_in_chunks(&self, days: i64, progress: Option<Progress>) -> Result<u64> {
        let Some(cutoff) = self.read(|conn| retention_cutoff(conn, days))? else {
            return Ok(0);
        };
        let mut progress = progress;
        let total = match progress {
            Some(_) => self.read(|conn| executions_before(conn, &cutoff))?,
            None => 0,
        };
        // Each chunk its own transaction and turn in the lane: a busy attempt leaves nothing
        // of its chunk behind, and writers run in between.
        let hold = |chunk: Chunk<'_>| {
            let done = self.with_lane("cleanup_old_executions", |c| chunk(c));
            // The chunk's pages copied into the file now, outside the lane (PASSIVE waits
            // for no one), rather than by whichever commit next crosses
            // `wal_autocheckpoint`: a writer's, or the next chunk's inside its hold.
            if done.is_ok() {
                let _ = self.read(|conn| replica::checkpoint(conn, CheckpointMode::Passive));
            }
            done
        };
        let keys =
            self.read(|conn| keys_cutoff(conn, crate::store::idempotency::keep_ms(self.options.idempotency_days)))?;
        delete_executions_in_chunks(hold, &cutoff, keys, total, progress.as_mut())
    }

    /// Checkpoints the WAL into the database: in `mode`, or by default TRUNCATE (the
    /// WAL file is emptied) on a store of its own and PASSIVE on a replicated one, where
    /// any other mode is refused (`replica.rs`).
    pub fn checkpoint(&self, mode: Option<CheckpointMode>) -> Result<Checkpoint> {
        let _lane = self.hold_lane()?;
        let conn = self.conn()?;
        let mode = CheckpointMode::resolve(mode, self.replicated_on(&conn)?)?;
        replica::checkpoint(&conn, mode)
    }

    /// `PRAGMA integrity_check` (or `quick_check`): `["ok"]` when healthy.
    pub fn integrity_check(&self, quick: bool) -> Result<Vec<String>> {
        let conn = self.conn()?;
        let pragma = if quick { "quick_check" } else { "integrity_check" };
        let mut stmt = conn.prepare(&format!("PRAGMA {pragma}"))?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

report! {
    /// What the maintenance thread did in one cycle.
    #[derive(Clone, Debug, Default, PartialEq, Eq)]
    pub struct CycleReport {
        pub cycle: u64,
        pub executions_deleted: usize,
        pub pages_freed: i64,
        pub checkpointed: bool,
        /// The checkpoint's mode: TRUNCATE, or PASSIVE while a replica is attached.
        pub checkpoint_mode: Option<CheckpointMode>,
        /// A failed cycle is reported and retried at the next interval.
        pub error: Option<String>,
    }
}

pub type CycleHook = Arc<dyn Fn(&CycleReport) + Send + Sync>;

#[derive(Clone)]
pub struct MaintenanceOptions {
    pub interval: Duration,
    /// `None` skips retention.
    pub retention_days: Option<i64>,
    /// Free pages reclaimed per cycle (`None`: all). Small batches keep each write
    /// lock short, so callers' threads are never blocked for long.
    pub vacuum_pages: Option<u32>,
    pub checkpoint: bool,
    pub on_cycle: Option<CycleHook>,
}

impl MaintenanceOptions {
    /// Refuses an interval of zero and a negative retention, naming the option.
    pub(crate) fn validate(&self) -> Result<()> {
        if self.interval.is_zero() {
            return Err(Error::invalid("interval_s", "must be greater than zero"));
        }
        if let Some(days) = self.retention_days {
            if days < 0 {
                return Err(Error::invalid("retention_days", format!("must be zero or more, got {days}")));
            }
        }
        Ok(())
    }
}

impl Default for MaintenanceOptions {
    fn default() -> Self {
        MaintenanceOptions {
            interval: Duration::from_secs(300),
            retention_days: Some(DEFAULT_RETENTION_DAYS),
            vacuum_pages: Some(1000),
            checkpoint: true,
            on_cycle: None,
        }
    }
}

pub(crate) struct Maintenance {
    stop: Arc<(Mutex<bool>, Condvar)>,
    pub(crate) cycles: Arc<AtomicU64>,
    thread: JoinHandle<()>,
}

impl Maintenance {
    /// The SQLite store's cycle: retention, an incremental vacuum and a checkpoint, in
    /// the write lane. `replicated`: the store was opened with `Options::replicated`
    /// (Litestream's tables are looked for at every cycle as well).
    pub(crate) fn start(
        pool: Pool,
        lane: Arc<WriteLane>,
        options: MaintenanceOptions,
        in_memory: bool,
        replicated: bool,
        keys_kept_ms: i64,
    ) -> Result<Maintenance> {
        let cycle_options = options.clone();
        Maintenance::spawn("consensus-db-maintenance", options, move |report, stopping| {
            run_cycle(&pool, &lane, &cycle_options, (in_memory, replicated, keys_kept_ms), stopping, report)
        })
    }

    /// Runs `cycle` every `options.interval` on a thread of its own, then tells
    /// `options.on_cycle` its report, until [`Maintenance::stop`]. `cycle` is given
    /// whether a stop was asked for; [`Error::Closed`] from it while stopping ends the
    /// thread without a report.
    pub(crate) fn spawn(
        name: &str,
        options: MaintenanceOptions,
        mut cycle: impl FnMut(&mut CycleReport, &dyn Fn() -> bool) -> Result<()> + Send + 'static,
    ) -> Result<Maintenance> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let cycles = Arc::new(AtomicU64::new(0));
        let (stop_flag, counter) = (stop.clone(), cycles.clone());
        let thread = std::thread::Builder::new().name(name.into()).spawn(move || loop {
            {
                let (lock, wake) = &*stop_flag;
                let mut stopped = lock.lock();
                if !*stopped {
                    wake.wait_for(&mut stopped, options.interval);
                }
                if *stopped {
                    return;
                }
            }
            let n = counter.load(Ordering::Acquire) + 1;
            let mut report = CycleReport { cycle: n, ..Default::default() };
            let stopping = || *stop_flag.0.lock();
            match cycle(&mut report, &stopping) {
                Ok(()) => {}
                Err(Error::Closed) if stopping() => return, // stopped while waiting for the lane
                Err(e) => report.error = Some(e.to_string()),
            }
            counter.store(n, Ordering::Release);
            if let Some(hook) = &options.on_cycle {
                hook(&report);
            }
        })?;
        Ok(Maintenance { stop, cycles, thread })
    }

    pub(crate) fn stop(self) {
        let (lock, wake) = &*self.stop;
        *lock.lock() = true;
        wake.notify_all();
        // From its own hook the thread cannot wait for itself: it sees the flag and
        // ends when the hook returns.
        if self.thread.thread().id() != std::thread::current().id() {
            let _ = self.thread.join();
        }
    }
}

/// How long the maintenance thread waits for the lane before it looks whether it was
/// asked to stop (a `stop` from the thread holding the lane must not wait for it).
const LANE_POLL: Duration = Duration::from_millis(200);

fn run_cycle(
    pool: &Pool,
    lane: &Arc<WriteLane>,
    options: &MaintenanceOptions,
    (in_memory, replicated, keys_kept_ms): (bool, bool, i64),
    stopping: &dyn Fn() -> bool,
    report: &mut CycleReport,
) -> Result<()> {
    // Retention, vacuum and checkpoint write: they take their turn in the write lane,
    // chunk by chunk (`chunks.rs`), unless the thread is stopped meanwhile.
    let hold = || loop {
        match lane.hold(Some(LANE_POLL)) {
            Err(Error::Busy(_)) if !stopping() => continue,
            Err(Error::Busy(_)) => return Err(Error::Closed),
            held => return held,
        }
    };
    let in_turn = |chunk: Chunk<'_>| {
        let _lane = hold()?;
        chunk(&*pool.get()?)
    };
    if let Some(days) = options.retention_days {
        let conn = pool.get()?;
        let cutoff = retention_cutoff(&conn, days)?;
        let keys = keys_cutoff(&conn, keys_kept_ms)?;
        drop(conn);
        if let Some(cutoff) = cutoff {
            report.executions_deleted = delete_executions_in_chunks(in_turn, &cutoff, keys, 0, None)? as usize;
        }
    }
    if pragma_i64(&*pool.get()?, "auto_vacuum")? == 2 {
        report.pages_freed = vacuum_in_chunks(in_turn, options.vacuum_pages, 0, None)? as i64;
    }
    if options.checkpoint && !in_memory {
        let conn = pool.get()?;
        let replicated = replicated || replica::litestream_detected(&conn)?;
        let done = match conn.path().filter(|p| !p.is_empty()) {
            Some(file) => checkpoint_in_steps(&hold, &conn, std::path::Path::new(&format!("{file}-wal")), replicated)?,
            None => replica::checkpoint(&conn, CheckpointMode::default_for(replicated))?,
        };
        report.checkpointed = true;
        report.checkpoint_mode = Some(done.mode);
    }
    Ok(())
}
