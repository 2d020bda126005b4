//! The PostgreSQL backend (feature `postgres`): the store's public operations over a
//! server, for deployments that outgrow one host. `PgDatabase` implements
//! [`crate::backend::Backend`] beside the SQLite store; `connect("postgresql://...")`
//! selects it from Python.
//!
//! - Schema: `schema.sql` (the SQLite store's current layout in PostgreSQL types:
//!   identity keys, JSONB, the same integer-millisecond and UTC-text timestamps),
//!   applied by migrations under `pg_advisory_lock`, recorded in `consensus_db_meta`.
//! - Connections: a small pool of synchronous `postgres::Client`s (`pool.rs`), opened
//!   on demand; a connection found broken is dropped and the next call reconnects. A
//!   multi-host URL with `target_session_attrs=read-write` follows a failover.
//! - Retry: serialization failures (40001), deadlocks (40P01) and lost connections are
//!   retried with the store's policy. A write whose commit outcome is unknown (the
//!   connection died after the statement was sent) is repeated only where it is
//!   idempotent: spawns and completions by nature, artifacts and syntheses by a write
//!   token the server checks; every other write raises [`Error::OutcomeUnknown`], and so
//!   does an idempotent one whose repetitions do not get through (a caller repeating the
//!   call would write it again). A retryable [`Error::ConnectionLost`] means nothing that
//!   could commit was sent, or the call only reads or migrates.

mod deadline;
mod maintenance;
mod pool;
mod sql;
mod tx;

use std::sync::Arc;
use std::time::Duration;

use postgres::error::SqlState;
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::ToSql;

pub use pool::{PgPool, Session};
pub use tx::PgTx;

use crate::conninfo::redact;
use crate::cursor::{ExecutionKey, Page, Window};
use crate::error::{Error, Result};
use crate::model::{
    AgentExecution, AgentRoute, Artifact, ExtractionFailure, NewArtifact, NewSynthesis, Synthesis, HEALTH_EXACT_BELOW,
    SOURCE_V1,
};
use crate::sqlite::retry::{Retrier, RetryPolicy};
use crate::store::validate::{check_artifact, check_id, check_phase_type};
use crate::wait::{AgentSet, AgentsStatus, Changes, Expectation, OpenWatcher, Poll, PG_LISTEN_SLICE};

/// The cross-process change signal's watcher: a connection of its own that `LISTEN`s
/// on the channel a completion's transaction notifies (`schema_3.sql`), waiting at most
/// [`PG_LISTEN_SLICE`] at a time. A lost connection is opened again at the next poll
/// (which then says "changed": anything may have happened meanwhile).
fn listener(pool: PgPool) -> OpenWatcher {
    Arc::new(move || {
        let listen = |pool: &PgPool| -> Result<postgres::Client> {
            let mut client = pool.connect_dedicated()?;
            client.batch_execute(sql::AGENTS_CHANNEL)?;
            Ok(client)
        };
        let mut client = Some(listen(&pool)?);
        let pool = pool.clone();
        Ok(Box::new(move |_: &Changes| {
            let Some(c) = client.as_mut() else {
                client = Some(listen(&pool)?);
                return Ok(true);
            };
            let got = {
                let mut notifications = c.notifications();
                let got = notifications.timeout_iter(PG_LISTEN_SLICE).next().map(|n| n.is_some());
                if let Ok(true) = got {
                    // Take whatever else arrived with it: one wake-up for all of them.
                    let mut pending = notifications.iter();
                    while let Ok(Some(_)) = pending.next() {}
                }
                got
            };
            if got.is_err() {
                client = None;
            }
            got.map_err(|e| map_error(&e))
        }) as Poll)
    })
}

/// This backend's layout revision (`consensus_db_meta.pg_revision`; `pg_layout` keeps
/// the minimum reader layout, as on SQLite: revisions 2 and 3 only add, so it stays 1).
pub const PG_LAYOUT: i64 = 3;

/// Whether `target` names a PostgreSQL server: a `postgresql://` URL.
pub fn is_url(target: &str) -> bool {
    target.starts_with("postgresql://")
}

/// What opening a PostgreSQL store takes.
#[derive(Clone, Debug)]
pub struct PgOptions {
    pub pool_size: u32,
    pub checkout_timeout: Duration,
    /// Apply migrations at open (`migrate=True`); otherwise an unmigrated database is refused.
    pub migrate: bool,
    pub read_only: bool,
    pub retry: Option<RetryPolicy>,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            pool_size: 10,
            checkout_timeout: Duration::from_secs(30),
            migrate: true,
            read_only: false,
            retry: Some(RetryPolicy::default()),
        }
    }
}

/// How a failed call may be repeated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Reads: always safe to run again.
    Read,
    /// Writes any later call repeats to the same effect (migrations, found applied by a
    /// repetition; VACUUM): a lost connection stays a retryable ConnectionLost.
    Rerunnable,
    /// Writes this call may repeat (an upsert, the same update, a write token the server
    /// checks), but a later call may not: once an attempt was lost after it was sent, the
    /// call succeeds by a repetition or raises OutcomeUnknown, never ConnectionLost.
    Idempotent,
    /// Writes that must not run twice: a lost connection mid-call is OutcomeUnknown.
    Once,
    /// VACUUM: as Rerunnable, and not under the store's deadline (a VACUUM of big tables
    /// may rightly take long; it also runs with `statement_timeout = 0`).
    Vacuum,
}

pub struct PgDatabase {
    pool: PgPool,
    url: String,
    options: PgOptions,
    retrier: Retrier,
    maintenance: parking_lot::Mutex<Option<maintenance::PgMaintenance>>,
    /// The routing table has `branch_id` (a revision-1 database opened without migrating has not).
    branch_column: std::sync::atomic::AtomicBool,
    /// The table of expected agents exists (revision 3).
    expected_table: std::sync::atomic::AtomicBool,
    /// Waiters' change signal, moved by the listener (`LISTEN`) while someone waits.
    pub(crate) changes: std::sync::Arc<Changes>,
}

/// The keyset condition's parameters of an executions or failures page, after `params`.
fn with_key<'a>(
    mut params: Vec<&'a (dyn ToSql + Sync)>,
    from: &'a Option<ExecutionKey>,
) -> Vec<&'a (dyn ToSql + Sync)> {
    if let Some(k) = from {
        params.extend([&k.spawned_at as &(dyn ToSql + Sync), &k.agent_id]);
    }
    params
}

/// A COMMIT that `statement_timeout` stopped waiting for a synchronous standby: it
/// committed on the primary, and a failover to the standby may lose it.
pub(crate) fn unreplicated_commit(op: &str) -> Error {
    Error::NotReplicated(format!(
        "{op}: the commit waited for a synchronous standby past statement_timeout and stopped waiting; the primary \
         has it, the standby may not (a failover now could lose it): do not write it again, check it after a failover"
    ))
}

/// Maps a driver error; `lost` tells whether the connection is gone.
pub(crate) fn map_error(e: &postgres::Error) -> Error {
    if let Some(db) = e.as_db_error() {
        let code = db.code();
        let msg = format!("{} (SQLSTATE {})", db.message(), code.code());
        let msg = match db.detail() {
            Some(d) => format!("{msg}: {d}"),
            None => msg,
        };
        return if *code == SqlState::QUERY_CANCELED {
            Error::Busy(format!(
                "the statement ran past statement_timeout and was cancelled, nothing of it kept: {msg}"
            ))
        } else if *code == SqlState::T_R_SERIALIZATION_FAILURE
            || *code == SqlState::T_R_DEADLOCK_DETECTED
            || *code == SqlState::LOCK_NOT_AVAILABLE
        {
            Error::Busy(msg)
        } else if code.code().starts_with("23") {
            Error::Integrity(msg)
        } else if *code == SqlState::READ_ONLY_SQL_TRANSACTION {
            Error::ReadOnly(msg)
        } else if *code == SqlState::DISK_FULL {
            Error::DiskFull(msg)
        } else if code.code().starts_with("08") || code.code().starts_with("57P") {
            Error::ConnectionLost(msg)
        } else if code.code() == "22021" || code.code() == "22P05" {
            // Text the server cannot hold (NUL, say).
            Error::invalid("value", msg)
        } else if *code == SqlState::IN_FAILED_SQL_TRANSACTION {
            Error::Transaction(msg)
        } else {
            Error::Sqlite(format!("PostgreSQL: {msg}"))
        };
    }
    if e.is_closed() || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>()) {
        return Error::ConnectionLost(format!("connection to PostgreSQL lost: {e}"));
    }
    Error::Sqlite(format!("PostgreSQL: {e}"))
}

impl From<postgres::Error> for Error {
    fn from(e: postgres::Error) -> Self {
        map_error(&e)
    }
}

/// A random token naming one write call, so that its repetition is recognised.
fn write_token() -> String {
    let mut bytes = [0u8; 16];
    // SAFETY: getrandom writes at most `len` bytes into the buffer it is given.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        // Never expected on Linux; time and pid still make a collision implausible.
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        bytes = (t ^ ((std::process::id() as u128) << 96)).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// PostgreSQL text cannot hold NUL: refused up front, naming the argument.
fn no_nul(name: &str, value: &str) -> Result<()> {
    if value.contains('\0') {
        return Err(Error::invalid(name, "contains a NUL character, which PostgreSQL text cannot hold"));
    }
    Ok(())
}

fn no_nul_opt(name: &str, value: Option<&str>) -> Result<()> {
    value.map_or(Ok(()), |v| no_nul(name, v))
}

/// JSONB cannot hold NUL either (`\u0000` in a string or key).
fn json_no_nul(name: &str, json: &str) -> Result<()> {
    no_nul(name, json)?;
    if !json.contains("\\u0000") {
        return Ok(());
    }
    fn has_nul(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::String(s) => s.contains('\0'),
            serde_json::Value::Array(a) => a.iter().any(has_nul),
            serde_json::Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
            _ => false,
        }
    }
    match serde_json::from_str::<serde_json::Value>(json) {
        Ok(v) if has_nul(&v) => {
            Err(Error::invalid(name, "holds a NUL character (\\u0000), which PostgreSQL's JSONB cannot store"))
        }
        _ => Ok(()),
    }
}

fn artifact_no_nul(a: &NewArtifact) -> Result<()> {
    no_nul("spec_id", &a.spec_id)?;
    no_nul("stage", &a.stage)?;
    no_nul("agent_name", &a.agent_name)?;
    json_no_nul("content_json", &a.content_json)?;
    no_nul_opt("response_text", a.response_text.as_deref())?;
    no_nul_opt("run_id", a.run_id.as_deref())?;
    no_nul_opt("model_version", a.model_version.as_deref())
}

impl PgDatabase {
    /// Connects to `url`, checks (and with `migrate`, applies) the schema.
    pub fn open(url: &str, options: PgOptions) -> Result<PgDatabase> {
        if !is_url(url) {
            return Err(Error::invalid("url", format!("{:?} is not a postgresql:// URL", redact(url))));
        }
        let pool = PgPool::new(url, options.pool_size, options.checkout_timeout, options.read_only)?;
        let db = PgDatabase {
            url: redact(url),
            retrier: Retrier::new(options.retry.clone()),
            options,
            maintenance: parking_lot::Mutex::new(None),
            branch_column: Default::default(),
            expected_table: Default::default(),
            changes: Changes::new(Some(listener(pool.clone()))),
            pool,
        };
        db.run("open", Kind::Rerunnable, |c| sql::migrate(c, db.options.migrate && !db.options.read_only))?;
        db.refresh_columns()?;
        Ok(db)
    }

    /// The URL with every secret masked ([`crate::conninfo::redact`]).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn options(&self) -> &PgOptions {
        &self.options
    }

    pub fn retry_count(&self) -> u64 {
        self.retrier.count()
    }

    /// Stops maintenance, wakes waiters for agents with `Closed` (their listener's
    /// connection closed first), then closes the idle connections. Idempotent.
    pub fn close(&self) {
        self.stop_maintenance();
        self.changes.close();
        self.pool.close();
    }

    /// Starts the background maintenance thread (replacing a running one): retention,
    /// then `VACUUM (ANALYZE)`, every `interval`.
    pub fn start_maintenance(&self, options: crate::maintenance::MaintenanceOptions) -> Result<()> {
        self.writable("maintenance")?;
        options.validate()?;
        if self.pool.is_closed() {
            return Err(Error::Closed);
        }
        // The thread's own handle on the same pool; its retries count on its own.
        let handle = PgDatabase {
            pool: self.pool.clone(),
            url: self.url.clone(),
            options: self.options.clone(),
            retrier: Retrier::new(self.options.retry.clone()),
            maintenance: parking_lot::Mutex::new(None),
            branch_column: self.has_branch_column().into(),
            expected_table: self.expected_table.load(std::sync::atomic::Ordering::Acquire).into(),
            changes: self.changes.clone(),
        };
        let mut slot = self.maintenance.lock();
        if let Some(old) = slot.take() {
            old.stop();
        }
        *slot = Some(maintenance::start(handle, options)?);
        Ok(())
    }

    /// Stops the maintenance thread and waits for it; a no-op when none runs.
    pub fn stop_maintenance(&self) {
        let running = self.maintenance.lock().take();
        if let Some(m) = running {
            m.stop();
        }
    }

    /// Cycles completed by the running maintenance thread (`None` when none runs).
    pub fn maintenance_cycles(&self) -> Option<u64> {
        self.maintenance.lock().as_ref().map(|m| m.cycles.load(std::sync::atomic::Ordering::Acquire))
    }

    pub fn is_closed(&self) -> bool {
        self.pool.is_closed()
    }

    pub fn pool_state(&self) -> (u32, u32) {
        self.pool.state()
    }

    fn writable(&self, what: &str) -> Result<()> {
        if self.options.read_only {
            return Err(Error::ReadOnly(format!("{what} writes; the store at {} is read-only", self.url)));
        }
        Ok(())
    }

    /// Runs `f` on a pooled connection with the retry policy. See [`Kind`].
    fn run<T>(&self, op: &str, kind: Kind, mut f: impl FnMut(&mut Session) -> Result<T>) -> Result<T> {
        let mut attempts = self.retrier.start(op);
        // An Idempotent write's attempt lost after it was sent: it may have committed.
        let mut lost_after_sending: Option<String> = None;
        loop {
            let result = match self.pool.get() {
                Ok(mut conn) => {
                    // A statement that must not run twice first checks, by a round trip,
                    // that its connection is alive (an idle one may have died with its
                    // server): a dead one fails here, before anything is sent.
                    let alive = match kind {
                        Kind::Once => conn
                            .session()
                            .client
                            .is_valid(Duration::from_secs(5))
                            .map_err(|e| Error::ConnectionLost(format!("connection to PostgreSQL lost: {e}"))),
                        _ => Ok(()),
                    };
                    let sent = alive.is_ok();
                    let r = match alive {
                        Ok(()) => {
                            let writes = !matches!(kind, Kind::Read | Kind::Vacuum);
                            let (r, cancelled) = conn.session().bounded(writes, op, &mut f);
                            if cancelled {
                                conn.discard(); // a cancel may still reach the server: never reuse it
                            }
                            r
                        }
                        Err(e) => {
                            conn.discard();
                            self.pool.purge_idle();
                            Err(e)
                        }
                    };
                    if let Err(Error::ConnectionLost(_)) = &r {
                        conn.discard();
                        // Its server may be gone (a failover): so are the idle ones.
                        self.pool.purge_idle();
                    } else if conn.session_if_present().is_some_and(|s| s.client.is_closed()) {
                        conn.discard();
                    }
                    match r {
                        Err(Error::ConnectionLost(m)) if kind == Kind::Once && sent => {
                            return Err(Error::OutcomeUnknown(format!(
                                "{op}: the connection to PostgreSQL was lost after the statement was sent ({m}); it may \
                                 or may not have committed, and it is not repeated: check before writing it again"
                            )));
                        }
                        Err(Error::ConnectionLost(m)) if kind == Kind::Idempotent && sent => {
                            lost_after_sending.get_or_insert_with(|| m.clone());
                            Err(Error::ConnectionLost(m))
                        }
                        r => r,
                    }
                }
                // Failing to connect wrote nothing: any call may try again.
                Err(e) => Err(e),
            };
            match result {
                Ok(v) => return Ok(v),
                Err(e) if attempts.again(&e) => continue,
                Err(e) => {
                    return Err(match lost_after_sending {
                        // A caller repeating the call would write it again (a new token).
                        Some(lost) => Error::OutcomeUnknown(format!(
                            "{op}: the connection to PostgreSQL was lost after the write was sent ({lost}), and \
                             repeating it did not get through ({e}): it may or may not have committed; check before \
                             writing it again"
                        )),
                        None => e,
                    });
                }
            }
        }
    }

    /// A transaction on one pooled connection (`BEGIN`, READ COMMITTED).
    pub fn begin(&self) -> Result<PgTx> {
        let mut attempts = self.retrier.start("transaction");
        loop {
            let r = self.pool.get().and_then(|mut conn| {
                conn.session().client.batch_execute("BEGIN").map_err(|e| {
                    let e = map_error(&e);
                    conn.discard();
                    e
                })?;
                Ok(PgTx::new(conn, self.options.read_only))
            });
            match r {
                Ok(tx) => return Ok(tx),
                Err(e) if attempts.again(&e) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Runs one statement of the backend's own SQL in its own transaction.
    pub fn execute(&self, sql: &str, params: &crate::transaction::Params) -> Result<usize> {
        self.writable("execute")?;
        self.run("execute", Kind::Once, |c| tx::execute(c, sql, params))
    }

    /// Runs a query of the backend's own SQL; rows as SQLite-like values.
    pub fn query(&self, sql: &str, params: &crate::transaction::Params) -> Result<Vec<Vec<rusqlite::types::Value>>> {
        // Any statement can write (a volatile function in a SELECT, INSERT … RETURNING):
        // the caller's SQL is never repeated after it was sent.
        self.run("query", Kind::Once, |c| tx::query(c, sql, params))
    }

    /// [`PgDatabase::query`] with the result's column names.
    pub fn query_columns(
        &self,
        sql: &str,
        params: &crate::transaction::Params,
    ) -> Result<(Vec<String>, Vec<Vec<rusqlite::types::Value>>)> {
        self.run("query", Kind::Once, |c| tx::query_columns(c, sql, params))
    }

    pub fn schema_version(&self) -> Result<i64> {
        // No legacy tables, ever: the equivalent of SQLite's version 2.
        Ok(crate::migrations::LATEST_VERSION)
    }

    pub fn layout_revision(&self) -> Result<i64> {
        self.run("layout_revision", Kind::Read, sql::layout)
    }

    /// Applies pending migrations; returns the schema version.
    pub fn migrate(&self) -> Result<i64> {
        self.writable("migrate")?;
        self.run("migrate", Kind::Rerunnable, |c| sql::migrate(c, true))?;
        self.refresh_columns()?;
        self.schema_version()
    }

    fn refresh_columns(&self) -> Result<()> {
        let has = self.run("open", Kind::Read, sql::has_branch_column)?;
        self.branch_column.store(has, std::sync::atomic::Ordering::Release);
        let has = self.run("open", Kind::Read, sql::has_expected_agents)?;
        self.expected_table.store(has, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    fn has_branch_column(&self) -> bool {
        self.branch_column.load(std::sync::atomic::Ordering::Acquire)
    }

    // ---- executions ---------------------------------------------------------------

    pub fn record_agent_spawn(
        &self,
        agent_id: &str,
        spec_id: &str,
        stage: &str,
        phase_type: &str,
        agent_name: &str,
        run_id: Option<&str>,
    ) -> Result<()> {
        self.record_agent_spawn_on_branch(agent_id, spec_id, stage, phase_type, agent_name, run_id, None)
    }

    /// A spawn with its pipeline branch (see the SQLite store's).
    #[allow(clippy::too_many_arguments)]
    pub fn record_agent_spawn_on_branch(
        &self,
        agent_id: &str,
        spec_id: &str,
        stage: &str,
        phase_type: &str,
        agent_name: &str,
        run_id: Option<&str>,
        branch_id: Option<&str>,
    ) -> Result<()> {
        check_id("agent_id", agent_id)?;
        check_id("spec_id", spec_id)?;
        check_id("stage", stage)?;
        check_phase_type(phase_type)?;
        check_id("agent_name", agent_name)?;
        for (name, v) in [("agent_id", agent_id), ("spec_id", spec_id), ("stage", stage), ("agent_name", agent_name)] {
            no_nul(name, v)?;
        }
        no_nul_opt("run_id", run_id)?;
        let with_branch = self.has_branch_column();
        if let Some(branch) = branch_id {
            check_id("branch_id", branch)?;
            no_nul("branch_id", branch)?;
            if !with_branch {
                let why = "predates the agent_executions.branch_id column (layout revision 1)";
                return Err(if self.options.read_only {
                    Error::ReadOnly(format!(
                        "the store at {} {why}, and a read-only store cannot add it; open it writable once",
                        self.url
                    ))
                } else {
                    Error::Migration(format!("the store at {} {why}; call migrate() first", self.url))
                });
            }
        }
        self.writable("record_agent_spawn")?;
        // An upsert: repeating it leaves the same row.
        self.run("record_agent_spawn", Kind::Idempotent, |c| {
            if with_branch {
                let stmt = c.prepared(sql::SPAWN_ON_BRANCH)?;
                c.client
                    .execute(&stmt, &[&agent_id, &spec_id, &stage, &phase_type, &agent_name, &run_id, &branch_id])?;
            } else {
                let stmt = c.prepared(sql::SPAWN)?;
                c.client.execute(&stmt, &[&agent_id, &spec_id, &stage, &phase_type, &agent_name, &run_id])?;
            }
            Ok(())
        })
    }

    pub fn get_agent_spawn_info(&self, agent_id: &str) -> Result<Option<(String, String)>> {
        self.run("get_agent_spawn_info", Kind::Read, |c| {
            let stmt = c.prepared(sql::SPAWN_INFO)?;
            Ok(c.client.query_opt(&stmt, &[&agent_id])?.map(|r| (r.get(0), r.get(1))))
        })
    }

    pub fn get_agent_route(&self, agent_id: &str) -> Result<Option<AgentRoute>> {
        let sql = sql::route(self.has_branch_column());
        self.run("get_agent_route", Kind::Read, |c| {
            let stmt = c.prepared(sql)?;
            Ok(c.client.query_opt(&stmt, &[&agent_id])?.map(|r| AgentRoute {
                phase_type: r.get(0),
                stage: r.get(1),
                branch_id: r.get(2),
            }))
        })
    }

    pub fn query_agent_executions(
        &self,
        spec_id: &str,
        stage: &str,
        branch_id: Option<&str>,
        newest_first: bool,
        limit: Option<usize>,
    ) -> Result<Vec<AgentExecution>> {
        self.query_agent_executions_page(spec_id, stage, branch_id, &Page { newest_first, limit, ..Page::default() })
    }

    pub fn query_agent_executions_page(
        &self,
        spec_id: &str,
        stage: &str,
        branch_id: Option<&str>,
        page: &Page,
    ) -> Result<Vec<AgentExecution>> {
        let window = page.executions(spec_id, stage)?;
        let branch_column = self.has_branch_column();
        if branch_id.is_some() && !branch_column {
            return Ok(Vec::new());
        }
        let sql = sql::executions(branch_id.is_some(), branch_column, &window);
        let limit = pg_limit(&window);
        self.run("query_agent_executions", Kind::Read, |c| {
            let params = with_key(vec![&spec_id, &stage, &branch_id, &limit], &window.from);
            let stmt = c.prepared(sql)?;
            let rows = c.client.query(&stmt, &params)?;
            Ok(window.finish(
                rows.iter()
                    .map(|r| AgentExecution {
                        agent_id: r.get(0),
                        spec_id: r.get(1),
                        stage: r.get(2),
                        phase_type: r.get(3),
                        agent_name: r.get(4),
                        run_id: r.get(5),
                        branch_id: r.get(6),
                        spawned_at: r.get(7),
                        completed_at: r.get(8),
                        response_text: r.get(9),
                    })
                    .collect(),
            ))
        })
    }

    pub fn get_agent_name(&self, agent_id: &str) -> Result<Option<String>> {
        self.run("get_agent_name", Kind::Read, |c| {
            let stmt = c.prepared(sql::AGENT_NAME)?;
            Ok(c.client.query_opt(&stmt, &[&agent_id])?.map(|r| r.get(0)))
        })
    }

    pub fn record_agent_completion(&self, agent_id: &str, response_text: &str) -> Result<bool> {
        check_id("agent_id", agent_id)?;
        no_nul("agent_id", agent_id)?;
        no_nul("response_text", response_text)?;
        self.writable("record_agent_completion")?;
        // Setting the same values again: idempotent (completed_at moves by the retry's delay).
        let known = self.run("record_agent_completion", Kind::Idempotent, |c| {
            let stmt = c.prepared(sql::COMPLETE)?;
            Ok(c.client.execute(&stmt, &[&agent_id, &response_text])? > 0)
        })?;
        // This process's waiters need not wait for the notification's round trip.
        self.changes.bump();
        Ok(known)
    }

    pub fn record_extraction_failure(
        &self,
        agent_id: &str,
        response_text: &str,
        extraction_error: &str,
    ) -> Result<bool> {
        check_id("agent_id", agent_id)?;
        check_id("extraction_error", extraction_error)?;
        no_nul("agent_id", agent_id)?;
        no_nul("response_text", response_text)?;
        no_nul("extraction_error", extraction_error)?;
        self.writable("record_extraction_failure")?;
        let known = self.run("record_extraction_failure", Kind::Idempotent, |c| {
            let stmt = c.prepared(sql::FAIL_EXTRACTION)?;
            Ok(c.client.execute(&stmt, &[&agent_id, &response_text, &extraction_error])? > 0)
        })?;
        self.changes.bump();
        Ok(known)
    }

    pub fn query_extraction_failures(&self, spec_id: &str) -> Result<Vec<ExtractionFailure>> {
        self.query_extraction_failures_page(spec_id, &Page::default())
    }

    pub fn query_extraction_failures_page(&self, spec_id: &str, page: &Page) -> Result<Vec<ExtractionFailure>> {
        let window = page.failures(spec_id)?;
        let sql = sql::extraction_failures(&window);
        let limit = pg_limit(&window);
        self.run("query_extraction_failures", Kind::Read, |c| {
            let params = with_key(vec![&spec_id, &limit], &window.from);
            let stmt = c.prepared(sql)?;
            let rows = c.client.query(&stmt, &params)?;
            Ok(window.finish(
                rows.iter()
                    .map(|r| ExtractionFailure {
                        agent_id: r.get(0),
                        spec_id: r.get(1),
                        stage: r.get(2),
                        phase_type: r.get(3),
                        agent_name: r.get(4),
                        run_id: r.get(5),
                        spawned_at: r.get(6),
                        completed_at: r.get(7),
                        response_text: r.get(8),
                        extraction_error: r.get(9),
                    })
                    .collect(),
            ))
        })
    }

    pub fn cleanup_old_executions(&self, days: i64) -> Result<usize> {
        if days < 0 {
            return Err(Error::invalid("days", format!("must be zero or more, got {days}")));
        }
        self.writable("cleanup_old_executions")?;
        // Beyond a million days every row is older anyway; the server's interval stays in range.
        let days = days.min(1_000_000);
        let sql = if self.expected_table.load(std::sync::atomic::Ordering::Acquire) {
            sql::CLEANUP_WITH_EXPECTED
        } else {
            sql::CLEANUP
        };
        self.run("cleanup_old_executions", Kind::Once, |c| Ok(c.client.execute(sql, &[&days])? as usize))
    }

    // ---- artifacts ----------------------------------------------------------------

    pub fn store_artifact(&self, a: &NewArtifact) -> Result<i64> {
        check_artifact(a)?;
        artifact_no_nul(a)?;
        self.writable("store_artifact")?;
        let token = write_token();
        // The token makes a repetition find the first attempt's row.
        self.run("store_artifact", Kind::Idempotent, |c| {
            let stmt = c.prepared(sql::STORE_ARTIFACT)?;
            let row = c.client.query_one(
                &stmt,
                &[
                    &a.spec_id,
                    &a.stage,
                    &a.agent_name,
                    &a.content_json,
                    &a.response_text,
                    &a.run_id,
                    &a.model_version,
                    &token,
                ],
            )?;
            Ok(row.get(0))
        })
    }

    pub fn store_artifacts(&self, artifacts: &[NewArtifact]) -> Result<Vec<i64>> {
        for (i, a) in artifacts.iter().enumerate() {
            check_artifact(a).and_then(|()| artifact_no_nul(a)).map_err(|e| match e {
                Error::InvalidInput { name, message } => Error::invalid(format!("artifacts[{i}].{name}"), message),
                other => other,
            })?;
        }
        self.writable("store_artifacts")?;
        if artifacts.is_empty() {
            return Ok(Vec::new());
        }
        let batch = write_token();
        let tokens: Vec<String> = (0..artifacts.len()).map(|i| format!("{batch}:{i}")).collect();
        let mut first = true;
        self.run("store_artifacts", Kind::Idempotent, |c| {
            sql::store_batch(c, artifacts, &tokens, std::mem::replace(&mut first, false))
        })
    }

    pub fn query_artifacts(&self, spec_id: &str, stage: &str) -> Result<Vec<Artifact>> {
        self.query_artifacts_page(spec_id, stage, &Page::default())
    }

    /// Pages as on SQLite, the same cursors and order; there is no legacy half here.
    pub fn query_artifacts_page(&self, spec_id: &str, stage: &str, page: &Page) -> Result<Vec<Artifact>> {
        let window = page.artifacts(spec_id, stage)?;
        let sql = sql::artifacts_page(&window);
        let limit = pg_limit(&window);
        let key = window.from.map(|k| [k.at_ms, k.source, k.id]);
        self.run("query_artifacts", Kind::Read, |c| {
            let mut params: Vec<&(dyn ToSql + Sync)> = vec![&spec_id, &stage, &limit];
            if let Some(key) = &key {
                params.extend(key.iter().map(|k| k as &(dyn ToSql + Sync)));
            }
            let stmt = c.prepared(sql)?;
            let rows = c.client.query(&stmt, &params)?;
            Ok(window.finish(
                rows.iter()
                    .map(|r| Artifact {
                        id: r.get(0),
                        spec_id: spec_id.to_owned(),
                        stage: stage.to_owned(),
                        agent_name: r.get(1),
                        content_json: r.get(2),
                        response_text: r.get(3),
                        run_id: r.get(4),
                        created_at_ms: r.get(5),
                        model_version: r.get(6),
                        source: SOURCE_V1,
                    })
                    .collect(),
            ))
        })
    }

    pub fn count_artifacts(&self, spec_id: &str, stage: &str) -> Result<usize> {
        self.run("count_artifacts", Kind::Read, |c| {
            let stmt = c.prepared(sql::COUNT_ARTIFACTS)?;
            let n: i64 = c.client.query_one(&stmt, &[&spec_id, &stage])?.get(0);
            Ok(usize::try_from(n).unwrap_or(0))
        })
    }

    pub fn delete_spec_artifacts(&self, spec_id: &str) -> Result<usize> {
        check_id("spec_id", spec_id)?;
        self.delete_artifacts(spec_id, None)
    }

    pub fn delete_stage_artifacts(&self, spec_id: &str, stage: &str) -> Result<usize> {
        check_id("spec_id", spec_id)?;
        check_id("stage", stage)?;
        self.delete_artifacts(spec_id, Some(stage))
    }

    fn delete_artifacts(&self, spec_id: &str, stage: Option<&str>) -> Result<usize> {
        self.writable("delete_artifacts")?;
        self.run("delete_artifacts", Kind::Once, |c| {
            let mut t = c.client.transaction()?;
            let n = t.execute(sql::DELETE_OUTPUTS, &[&spec_id, &stage])?;
            t.execute(sql::DELETE_EMPTY_OPEN_RUNS, &[&spec_id, &stage])?;
            t.commit()?;
            Ok(n as usize)
        })
    }

    pub fn delete_runs(&self, spec_id: &str, stage: Option<&str>) -> Result<usize> {
        check_id("spec_id", spec_id)?;
        self.writable("delete_runs")?;
        self.run("delete_runs", Kind::Once, |c| Ok(c.client.execute(sql::DELETE_RUNS, &[&spec_id, &stage])? as usize))
    }

    // ---- synthesis ----------------------------------------------------------------

    pub fn store_synthesis(&self, s: &NewSynthesis) -> Result<i64> {
        check_id("spec_id", &s.spec_id)?;
        check_id("stage", &s.stage)?;
        check_id("status", &s.status)?;
        if let Some(n) = s.artifacts_count {
            if n < 0 {
                return Err(Error::invalid("artifacts_count", format!("must be zero or more, got {n}")));
            }
        }
        for (name, v) in [
            ("spec_id", &s.spec_id),
            ("stage", &s.stage),
            ("output_markdown", &s.output_markdown),
            ("status", &s.status),
        ] {
            no_nul(name, v)?;
        }
        for (name, v) in [
            ("output_path", &s.output_path),
            ("agreements", &s.agreements),
            ("conflicts", &s.conflicts),
            ("run_id", &s.run_id),
        ] {
            no_nul_opt(name, v.as_deref())?;
        }
        self.writable("store_synthesis")?;
        let token = write_token();
        self.run("store_synthesis", Kind::Idempotent, |c| {
            let stmt = c.prepared(sql::STORE_SYNTHESIS)?;
            let params: [&(dyn ToSql + Sync); 11] = [
                &s.spec_id,
                &s.stage,
                &s.output_markdown,
                &s.output_path,
                &s.status,
                &s.artifacts_count,
                &s.agreements,
                &s.conflicts,
                &s.degraded,
                &s.run_id,
                &token,
            ];
            Ok(c.client.query_one(&stmt, &params)?.get(0))
        })
    }

    pub fn query_latest_synthesis(&self, spec_id: &str, stage: &str) -> Result<Option<Synthesis>> {
        self.run("query_latest_synthesis", Kind::Read, |c| {
            let stmt = c.prepared(sql::LATEST_SYNTHESIS)?;
            Ok(c.client.query_opt(&stmt, &[&spec_id, &stage])?.map(|r| {
                let raw: String = r.get(1);
                crate::sqlite::schema::synthesis_from_text(&raw, r.get(0), spec_id, stage, r.get(2), r.get(3), r.get(4))
            }))
        })
    }

    // ---- coordination ---------------------------------------------------------------

    /// Declares the agents a run of a stage waits for, in one transaction; as on SQLite
    /// (`Database::expect_agents`). The insert comes first, so a concurrent declaration
    /// of the same agent for another set is seen once it commits. Returns how many
    /// agents were added.
    pub fn expect_agents(&self, set: &Expectation) -> Result<usize> {
        for (name, v) in [("spec_id", &set.spec_id), ("stage", &set.stage), ("run_id", &set.run_id)] {
            no_nul(name, v)?;
        }
        no_nul_opt("branch_id", set.branch_id.as_deref())?;
        set.agent_ids.iter().try_for_each(|a| no_nul("agent_ids", a))?;
        self.writable("expect_agents")?;
        if !self.expected_table.load(std::sync::atomic::Ordering::Acquire) {
            return Err(Error::Migration(
                "the PostgreSQL database predates the table consensus_expected_agents (layout revision 3); open it \
                 with migrate=True (or call migrate())"
                    .into(),
            ));
        }
        let branch = set.branch_key();
        self.run("expect_agents", Kind::Idempotent, |c| {
            let mut t = c.client.transaction()?;
            let params: [&(dyn ToSql + Sync); 5] = [&set.agent_ids, &set.spec_id, &set.stage, &set.run_id, &branch];
            let added = t.execute(sql::EXPECT_AGENTS, &params)?;
            if let Some(r) = t.query_opt(sql::EXPECTED_ELSEWHERE, &params)? {
                let agent: String = r.get(0);
                return Err(set.conflict(&agent, &(r.get(1), r.get(2), r.get(3), r.get(4))));
                // rolls back
            }
            t.commit()?;
            Ok(added as usize)
        })
        .inspect(|_| self.changes.bump())
    }

    /// The state of a set's agents, in one query. A database before revision 3 has no
    /// trigger to notify waiters of other hosts' completions: refused, not left to hang.
    pub fn agents_status(&self, spec_id: &str, stage: &str, set: &AgentSet) -> Result<AgentsStatus> {
        if !self.expected_table.load(std::sync::atomic::Ordering::Acquire) {
            return Err(Error::Migration(
                "the PostgreSQL database predates layout revision 3, whose trigger notifies waiters of completions; \
                 open it with migrate=True (or call migrate()) to wait for agents"
                    .into(),
            ));
        }
        let rows = match set {
            AgentSet::Agents { agent_ids, branch_id } => {
                let sql = sql::agents_status(self.has_branch_column());
                self.run("wait_for_agents", Kind::Read, |c| {
                    let stmt = c.prepared(sql)?;
                    Ok(c.client.query(&stmt, &[agent_ids, &spec_id, &stage, branch_id])?)
                })?
            }
            AgentSet::Run { run_id, branch_id } => {
                let branch = branch_id.as_deref().unwrap_or("");
                self.run("wait_for_agents", Kind::Read, |c| {
                    let stmt = c.prepared(sql::RUN_STATUS)?;
                    Ok(c.client.query(&stmt, &[&spec_id, &stage, run_id, &branch])?)
                })?
            }
        };
        Ok(AgentsStatus::from_rows(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2)))))
    }

    // ---- health and vacuum ---------------------------------------------------------

    /// Rows per table and the database's size in bytes. Rows are counted when `exact`;
    /// else a table the planner's statistics (`pg_class.reltuples`, kept by autovacuum
    /// and ANALYZE) put above [`HEALTH_EXACT_BELOW`] rows reports that estimate and is named in
    /// `estimated`; smaller or never-analysed tables are counted.
    pub fn health(&self, exact: bool) -> Result<PgHealth> {
        self.run("health", Kind::Read, |c| {
            let (mut rows, mut estimated) = (Vec::new(), Vec::new());
            for table in [
                "agent_executions",
                "agent_outputs",
                "consensus_db_meta",
                "consensus_expected_agents",
                "consensus_runs",
            ] {
                let exists: bool = c.client.query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])?.get(0);
                if !exists {
                    continue; // a database at an older revision, opened without migrating
                }
                let planned: Option<f32> = if exact {
                    None
                } else {
                    let sql = "SELECT (SELECT reltuples FROM pg_class WHERE oid = to_regclass($1))";
                    c.client.query_one(sql, &[&table])?.get(0)
                };
                let n = match planned.map(|n| n as i64) {
                    Some(n) if n > HEALTH_EXACT_BELOW => {
                        estimated.push(table.to_owned());
                        n
                    }
                    _ => c.client.query_one(&format!("SELECT count(*) FROM {table}"), &[])?.get(0),
                };
                rows.push((table.to_owned(), n));
            }
            let size: i64 = c.client.query_one("SELECT pg_database_size(current_database())", &[])?.get(0);
            let version: String = c.client.query_one("SHOW server_version", &[])?.get(0);
            let layout = sql::layout(c)?;
            Ok(PgHealth { rows, estimated, database_size: size, server_version: version, layout })
        })
    }

    /// `VACUUM (ANALYZE)` of the store's tables; `full` adds FULL (rewrites them).
    pub fn vacuum(&self, full: bool) -> Result<()> {
        self.writable("vacuum")?;
        let sql = if full {
            "VACUUM (FULL, ANALYZE) agent_executions, agent_outputs, consensus_runs"
        } else {
            "VACUUM (ANALYZE) agent_executions, agent_outputs, consensus_runs"
        };
        // A VACUUM of big tables may rightly outlast statement_timeout: not bounded. (Two
        // calls: one simple query of several statements is a transaction, refused to VACUUM.)
        self.run("vacuum", Kind::Vacuum, |c| {
            c.client.batch_execute("SET statement_timeout = 0")?;
            let vacuumed = c.client.batch_execute(sql);
            c.client.batch_execute("RESET statement_timeout")?;
            Ok(vacuumed?)
        })
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        self.stop_maintenance();
    }
}

#[derive(Clone, Debug)]
pub struct PgHealth {
    pub rows: Vec<(String, i64)>,
    /// The tables whose row figure is the planner's estimate rather than a count.
    pub estimated: Vec<String>,
    pub database_size: i64,
    pub server_version: String,
    pub layout: i64,
}

/// LIMIT's value on PostgreSQL: NULL for none.
fn pg_limit<K>(window: &Window<K>) -> Option<i64> {
    window.limit.map(|n| i64::try_from(n).unwrap_or(i64::MAX))
}
