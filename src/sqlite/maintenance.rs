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
use crate::sqlite::chunks::{run_in_chunks, Chunk, ChunkSize};
use crate::sqlite::database::{Engine, Pool};
use crate::sqlite::replica::{self, Checkpoint, CheckpointMode};
use crate::sqlite::writer::WriteLane;

/// Free-page fraction above which `needs_vacuum` is true by default.
pub const DEFAULT_VACUUM_THRESHOLD: f64 = 0.5;
/// Executions older than this many days are deleted by the default retention policy.
pub const DEFAULT_RETENTION_DAYS: i64 = 30;

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

/// Deletes the executions spawned before `cutoff` in chunks, each in its turn of `hold`
/// and its own IMMEDIATE transaction; returns how many.
pub(crate) fn delete_executions_in_chunks(
    hold: impl FnMut(Chunk<'_>) -> Result<(u64, bool)>,
    cutoff: &str,
) -> Result<u64> {
    run_in_chunks(ChunkSize::maintenance(), hold, |conn, n| {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let deleted = conn
            .prepare_cached(
                "DELETE FROM agent_executions WHERE rowid IN
                     (SELECT rowid FROM agent_executions WHERE spawned_at < ?1 LIMIT ?2)",
            )
            .and_then(|mut s| s.execute(rusqlite::params![cutoff, n]));
        match deleted {
            Ok(deleted) => {
                conn.execute_batch("COMMIT")?;
                Ok((deleted as u64, deleted < n as usize))
            }
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                Err(e.into())
            }
        }
    })
}

/// Frees up to `pages` free pages (all when None or 0) in chunks, each in its turn of
/// `hold`; returns how many.
pub(crate) fn vacuum_in_chunks(hold: impl FnMut(Chunk<'_>) -> Result<(u64, bool)>, pages: Option<u32>) -> Result<u64> {
    let mut left = pages.filter(|&n| n > 0).map(u64::from);
    run_in_chunks(ChunkSize::maintenance(), hold, |conn, n| {
        let take = left.map_or(n, |l| l.min(u64::from(n)) as u32).max(1);
        let freed = incremental_vacuum(conn, Some(take))?.max(0) as u64;
        if let Some(l) = left.as_mut() {
            *l = l.saturating_sub(freed);
        }
        Ok((freed, freed < u64::from(take) || left == Some(0)))
    })
}

/// `max(rowid) - min(rowid) + 1` of a table (0 when empty), as two seeks of its rowid
/// tree (one aggregate each: SQLite reads the whole table for both in one SELECT); None
/// for a table without rowids.
pub(crate) fn rowid_span(conn: &rusqlite::Connection, quoted_table: &str) -> Result<Option<i64>> {
    let sql = format!("SELECT (SELECT max(rowid) FROM {quoted_table}) - (SELECT min(rowid) FROM {quoted_table}) + 1");
    match conn.query_row(&sql, [], |r| r.get::<_, Option<i64>>(0)) {
        Ok(span) => Ok(Some(span.unwrap_or(0))),
        Err(rusqlite::Error::SqliteFailure(_, Some(m))) if m.contains("no such column: rowid") => Ok(None),
        Err(e) => Err(e.into()),
    }
}

impl Engine {
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
            let span = if exact { None } else { rowid_span(&conn, &quoted)? };
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
            shape: crate::sqlite::schema::shape(&conn)?.describe(pragma_i64(&conn, "user_version")?),
            vacuum_threshold,
        })
    }

    /// Reclaims free pages. `full = false` uses incremental vacuum (when auto_vacuum
    /// is incremental; otherwise falls back to a full VACUUM), `pages` limiting how
    /// many; `full = true` rebuilds the file. `progress` is called every thousand
    /// SQLite VM steps of a full VACUUM with the number of calls so far; returning
    /// `false` aborts it (nothing changes).
    pub fn vacuum(
        &self,
        full: bool,
        pages: Option<u32>,
        progress: Option<Box<dyn FnMut(u64) -> bool + Send>>,
    ) -> Result<VacuumReport> {
        if self.read_only {
            return Err(Error::ReadOnly(format!("cannot vacuum {:?}", self.path)));
        }
        let conn = self.conn()?;
        let before = stats(&conn, self.file(), self.in_memory)?;
        let incremental = !full && pragma_i64(&conn, "auto_vacuum")? == 2;
        // In bounded chunks, writers in between (`chunks.rs`); a full VACUUM is one piece.
        let _lane = if incremental {
            vacuum_in_chunks(|chunk| self.with_lane("vacuum", |c| chunk(c)), pages)?;
            self.hold_lane()?
        } else {
            let lane = self.hold_lane()?;
            if let Some(mut report) = progress {
                let mut calls = 0u64;
                conn.progress_handler(
                    1_000,
                    Some(move || {
                        calls += 1;
                        !report(calls)
                    }),
                )?;
            }
            let result = conn.execute_batch("VACUUM");
            conn.progress_handler(0, None::<fn() -> bool>)?;
            result?;
            lane
        };
        let checkpoint = if self.in_memory {
            None
        } else {
            Some(replica::checkpoint(&conn, CheckpointMode::default_for(self.replicated_on(&conn)?))?)
        };
        let after = stats(&conn, self.file(), self.in_memory)?;
        Ok(VacuumReport { full: !incremental, before, after, checkpoint })
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
    ) -> Result<Maintenance> {
        let cycle_options = options.clone();
        Maintenance::spawn("consensus-db-maintenance", options, move |report, stopping| {
            run_cycle(&pool, &lane, &cycle_options, in_memory, replicated, stopping, report)
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
    in_memory: bool,
    replicated: bool,
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
        if let Some(cutoff) = retention_cutoff(&*pool.get()?, days)? {
            report.executions_deleted = delete_executions_in_chunks(in_turn, &cutoff)? as usize;
        }
    }
    if pragma_i64(&*pool.get()?, "auto_vacuum")? == 2 {
        report.pages_freed = vacuum_in_chunks(in_turn, options.vacuum_pages)? as i64;
    }
    if options.checkpoint && !in_memory {
        let _lane = hold()?;
        let conn = pool.get()?;
        let replicated = replicated || replica::litestream_detected(&conn)?;
        let done = replica::checkpoint(&conn, CheckpointMode::default_for(replicated))?;
        report.checkpointed = true;
        report.checkpoint_mode = Some(done.mode);
    }
    Ok(())
}
