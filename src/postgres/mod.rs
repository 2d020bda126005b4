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
    AgentExecution, AgentRoute, Artifact, Claim, ExtractionFailure, NewArtifact, NewClaim, NewSynthesis, Synthesis,
    HEALTH_EXACT_BELOW, SOURCE_V1,
};
use crate::sqlite::retry::{Retrier, RetryPolicy};
use crate::store::claims::{
    branch_key, check_claim_scope, check_new_claim, claim_required, stale, ClaimRow, MAX_LEASE_MS,
};
use crate::store::idempotency::{self, artifact_digest, check_key, keep_ms, synthesis_digest};
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
    /// How many days an idempotency key is kept (`docs/claims.md`).
    pub idempotency_days: i64,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            pool_size: 10,
            checkout_timeout: Duration::from_secs(30),
            migrate: true,
            read_only: false,
            retry: Some(RetryPolicy::default()),
            idempotency_days: crate::store::DEFAULT_IDEMPOTENCY_DAYS,
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
    /// The claims and idempotency tables exist (revision 3).
    coordination: std::sync::atomic::AtomicBool,
    /// Added to the server's clock for leases and keys (`set_clock_offset`: tests).
    clock_offset_ms: std::sync::atomic::AtomicI64,
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

/// The typed error of a refusal raised by the coordination functions (SQLSTATE CD001:
/// an idempotency key used with other content; CD002: the fence, DETAIL the stage's
/// newest token, HINT why); any other error as [`map_error`] maps it.
fn coordination_error(e: &postgres::Error, key: Option<&str>, fenced: Option<(&str, &str, Option<&Claim>)>) -> Error {
    let Some(db) = e.as_db_error() else { return map_error(e) };
    match (db.code().code(), key, fenced) {
        ("CD001", Some(key), _) => {
            let found = db.detail().unwrap_or_default();
            let operation = if fenced.is_some() { idempotency::SYNTHESIS } else { idempotency::ARTIFACT };
            idempotency::conflict(key, operation, found)
        }
        ("CD002", _, Some((spec_id, stage, claim))) => {
            let newest: Option<i64> = db.detail().and_then(|d| d.parse().ok());
            let hint = db.hint().unwrap_or_default();
            match claim {
                Some(claim) => {
                    // The row as the server saw it, enough for the same message as on SQLite.
                    let row = newest.map(|token| {
                        let (kind, rest) = hint.split_once(':').unwrap_or((hint, ""));
                        let (state, owner) = rest.split_once('\u{1}').unwrap_or((rest, ""));
                        match kind {
                            "taken" => ClaimRow {
                                token,
                                owner: owner.to_owned(),
                                expires_at_ms: if state == "live" { i64::MAX } else { i64::MIN },
                                released_at_ms: None,
                            },
                            "released" => ClaimRow {
                                token,
                                owner: claim.owner.clone(),
                                expires_at_ms: 0,
                                released_at_ms: Some(0),
                            },
                            _ => ClaimRow {
                                token,
                                owner: claim.owner.clone(),
                                expires_at_ms: -rest.parse::<i64>().unwrap_or(0),
                                released_at_ms: None,
                            },
                        }
                    });
                    stale(claim, row.as_ref(), 0, "store_synthesis")
                }
                None => {
                    let rest = hint.strip_prefix("required:").unwrap_or(hint);
                    let (owner, branch) = rest.split_once('\u{1}').unwrap_or((rest, ""));
                    let row = ClaimRow {
                        token: newest.unwrap_or(0),
                        owner: owner.to_owned(),
                        expires_at_ms: i64::MAX,
                        released_at_ms: None,
                    };
                    claim_required(spec_id, stage, (!branch.is_empty()).then_some(branch), &row)
                }
            }
        }
        _ => map_error(e),
    }
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
        crate::store::idempotency::check_days(options.idempotency_days)?;
        let pool = PgPool::new(url, options.pool_size, options.checkout_timeout, options.read_only)?;
        let db = PgDatabase {
            url: redact(url),
            retrier: Retrier::new(options.retry.clone()),
            options,
            maintenance: parking_lot::Mutex::new(None),
            branch_column: Default::default(),
            coordination: Default::default(),
            clock_offset_ms: Default::default(),
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
    pub fn start_maintenance(&self, options: crate::sqlite::maintenance::MaintenanceOptions) -> Result<()> {
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
            coordination: self.coordination.load(std::sync::atomic::Ordering::Acquire).into(),
            clock_offset_ms: Default::default(),
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
    fn run<T>(&self, op: &str, kind: Kind, f: impl FnMut(&mut Session) -> Result<T>) -> Result<T> {
        self.run_keyed(op, kind, None, f)
    }

    /// [`PgDatabase::run`] for a call carrying an idempotency key (`key`): an outcome
    /// left unknown says that repeating the call with the same key is safe, and the
    /// policy repeats one that reaches it (`Attempts::keyed`).
    fn run_keyed<T>(
        &self,
        op: &str,
        kind: Kind,
        key: Option<&str>,
        mut f: impl FnMut(&mut Session) -> Result<T>,
    ) -> Result<T> {
        let mut attempts = self.retrier.start(op).keyed(key.is_some());
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
                        Some(lost) => Error::OutcomeUnknown(match key {
                            Some(key) => format!(
                                "{op}: the connection to PostgreSQL was lost after the write was sent ({lost}), and \
                                 repeating it did not get through ({e}): it may or may not have committed; repeat the \
                                 call with the same idempotency key {key:?} (a repeat returns the first write's id)"
                            ),
                            None => format!(
                                "{op}: the connection to PostgreSQL was lost after the write was sent ({lost}), and \
                                 repeating it did not get through ({e}): it may or may not have committed; check \
                                 before writing it again"
                            ),
                        }),
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
    pub fn execute(&self, sql: &str, params: &crate::sqlite::transaction::Params) -> Result<usize> {
        self.writable("execute")?;
        self.run("execute", Kind::Once, |c| tx::execute(c, sql, params))
    }

    /// Runs a query of the backend's own SQL; rows as SQLite-like values.
    pub fn query(
        &self,
        sql: &str,
        params: &crate::sqlite::transaction::Params,
    ) -> Result<Vec<Vec<rusqlite::types::Value>>> {
        // Any statement can write (a volatile function in a SELECT, INSERT … RETURNING):
        // the caller's SQL is never repeated after it was sent.
        self.run("query", Kind::Once, |c| tx::query(c, sql, params))
    }

    /// [`PgDatabase::query`] with the result's column names.
    pub fn query_columns(
        &self,
        sql: &str,
        params: &crate::sqlite::transaction::Params,
    ) -> Result<(Vec<String>, Vec<Vec<rusqlite::types::Value>>)> {
        self.run("query", Kind::Once, |c| tx::query_columns(c, sql, params))
    }

    pub fn schema_version(&self) -> Result<i64> {
        // No legacy tables, ever: the equivalent of SQLite's version 2.
        Ok(crate::sqlite::migrations::LATEST_VERSION)
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
        let has = self.run("open", Kind::Read, sql::has_coordination_tables)?;
        self.coordination.store(has, std::sync::atomic::Ordering::Release);
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
        let coordination = self.coordination.load(std::sync::atomic::Ordering::Acquire);
        let keep = keep_ms(self.options.idempotency_days);
        let cleanup = if self.expected_table.load(std::sync::atomic::Ordering::Acquire) {
            sql::CLEANUP_WITH_EXPECTED
        } else {
            sql::CLEANUP
        };
        self.run("cleanup_old_executions", Kind::Once, |c| {
            let mut t = c.client.transaction()?;
            let n = t.execute(cleanup, &[&days])?;
            if coordination {
                t.execute(sql::PRUNE_KEYS, &[&keep])?;
            }
            t.commit()?;
            Ok(n as usize)
        })
    }

    // ---- artifacts ----------------------------------------------------------------

    pub fn store_artifact(&self, a: &NewArtifact) -> Result<i64> {
        check_artifact(a)?;
        artifact_no_nul(a)?;
        check_key("idempotency_key", a.idempotency_key.as_deref())?;
        self.writable("store_artifact")?;
        if let Some(key) = a.idempotency_key.as_deref() {
            self.require_coordination("an idempotency key")?;
            // The key is the write's token: it answers a repetition within the call too.
            let digest = artifact_digest(a);
            let (keep, offset) = (keep_ms(self.options.idempotency_days), self.clock_offset());
            return self.run_keyed("store_artifact", Kind::Idempotent, Some(key), |c| {
                let stmt = c.prepared(sql::STORE_ARTIFACT_KEYED)?;
                let params: [&(dyn ToSql + Sync); 11] = [
                    &a.spec_id,
                    &a.stage,
                    &a.agent_name,
                    &a.content_json,
                    &a.response_text,
                    &a.run_id,
                    &a.model_version,
                    &key,
                    &digest,
                    &keep,
                    &offset,
                ];
                c.client
                    .query_one(&stmt, &params)
                    .map(|r| r.get(0))
                    .map_err(|e| coordination_error(&e, Some(key), None))
            });
        }
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
            check_artifact(a)
                .and_then(|()| artifact_no_nul(a))
                .and_then(|()| check_key("idempotency_key", a.idempotency_key.as_deref()))
                .map_err(|e| match e {
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
        if artifacts.iter().any(|a| a.idempotency_key.is_some()) {
            return self.store_keyed_batch(artifacts, &tokens);
        }
        let mut first = true;
        self.run("store_artifacts", Kind::Idempotent, |c| {
            sql::store_batch(c, artifacts, &tokens, std::mem::replace(&mut first, false))
        })
    }

    /// A batch with idempotency keys in one transaction, item by item: a keyed item by
    /// its key (the first write's id when the key was used), the others by their write
    /// tokens. A key used with other content fails the whole batch. The batch is
    /// repeatable after a lost outcome only when every item has a key.
    fn store_keyed_batch(&self, artifacts: &[NewArtifact], tokens: &[String]) -> Result<Vec<i64>> {
        self.require_coordination("an idempotency key")?;
        let digests: Vec<Option<String>> =
            artifacts.iter().map(|a| a.idempotency_key.as_ref().map(|_| artifact_digest(a))).collect();
        let (keep, offset) = (keep_ms(self.options.idempotency_days), self.clock_offset());
        let every_key = artifacts.iter().all(|a| a.idempotency_key.is_some());
        let first_key = artifacts.first().and_then(|a| a.idempotency_key.as_deref()).filter(|_| every_key);
        self.run_keyed("store_artifacts", Kind::Idempotent, first_key, |c| {
            let keyed = c.prepared(sql::STORE_ARTIFACT_KEYED)?;
            let plain = c.prepared(sql::STORE_ARTIFACT)?;
            let mut t = c.client.transaction()?;
            let mut ids = Vec::with_capacity(artifacts.len());
            for ((a, token), digest) in artifacts.iter().zip(tokens).zip(&digests) {
                let row = match (a.idempotency_key.as_deref(), digest) {
                    (Some(key), Some(digest)) => {
                        let params: [&(dyn ToSql + Sync); 11] = [
                            &a.spec_id,
                            &a.stage,
                            &a.agent_name,
                            &a.content_json,
                            &a.response_text,
                            &a.run_id,
                            &a.model_version,
                            &key,
                            digest,
                            &keep,
                            &offset,
                        ];
                        t.query_one(&keyed, &params).map_err(|e| coordination_error(&e, Some(key), None))?
                    }
                    _ => t.query_one(
                        &plain,
                        &[
                            &a.spec_id,
                            &a.stage,
                            &a.agent_name,
                            &a.content_json,
                            &a.response_text,
                            &a.run_id,
                            &a.model_version,
                            token,
                        ],
                    )?,
                };
                ids.push(row.get(0));
            }
            t.commit()?;
            Ok(ids)
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
        check_key("idempotency_key", s.idempotency_key.as_deref())?;
        if let Some(claim) = &s.claim {
            check_claim_scope(claim, &s.spec_id, &s.stage)?;
        }
        self.writable("store_synthesis")?;
        if s.idempotency_key.is_some() || s.claim.is_some() {
            self.require_coordination("store_synthesis with a claim or an idempotency key")?;
        }
        if self.has_coordination()? {
            return self.store_synthesis_fenced(s);
        }
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

    /// `store_synthesis` on a database with the claims table: the fence (`docs/claims.md`),
    /// and the key as the write's token when there is one.
    fn store_synthesis_fenced(&self, s: &NewSynthesis) -> Result<i64> {
        let key = s.idempotency_key.as_deref();
        let token = key.is_none().then(write_token);
        let digest = key.map(|_| synthesis_digest(s));
        let (keep, offset) = (keep_ms(self.options.idempotency_days), self.clock_offset());
        let claim = s.claim.as_ref();
        let branch = claim.map(|c| branch_key(c.branch_id.as_deref()).to_owned());
        let claim_token = claim.map(|c| c.token);
        let claim_owner = claim.map(|c| c.owner.as_str());
        self.run_keyed("store_synthesis", Kind::Idempotent, key, |c| {
            let stmt = c.prepared(sql::STORE_SYNTHESIS_FENCED)?;
            let params: [&(dyn ToSql + Sync); 18] = [
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
                &key,
                &digest,
                &keep,
                &branch,
                &claim_token,
                &claim_owner,
                &offset,
            ];
            c.client
                .query_one(&stmt, &params)
                .map(|r| r.get(0))
                .map_err(|e| coordination_error(&e, key, Some((s.spec_id.as_str(), s.stage.as_str(), claim))))
        })
    }

    // ---- claims -------------------------------------------------------------------

    /// Whether the database has the coordination tables. A store opened on a database
    /// without them (migrate=False at revision 2) asks again at each call until they
    /// appear: another host may have migrated, and claimed a stage, since.
    fn has_coordination(&self) -> Result<bool> {
        if self.coordination.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(true);
        }
        let has = self.run("coordination tables", Kind::Read, sql::has_coordination_tables)?;
        self.coordination.store(has, std::sync::atomic::Ordering::Release);
        Ok(has)
    }

    fn require_coordination(&self, what: &str) -> Result<()> {
        if self.has_coordination()? {
            return Ok(());
        }
        Err(Error::Migration(format!(
            "{what} needs the tables consensus_claims and consensus_idempotency (PostgreSQL layout revision 3), which \
             {} does not have: open it with migrate=True (or call migrate())",
            self.url
        )))
    }

    fn clock_offset(&self) -> i64 {
        self.clock_offset_ms.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Shifts this store's view of the server's clock for leases and keys (tests).
    pub fn set_clock_offset(&self, offset_ms: i64) {
        self.clock_offset_ms.store(offset_ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// As the SQLite store's (`store::claims`): one statement, the claim's row locked.
    pub fn claim_stage(&self, n: &NewClaim) -> Result<Option<Claim>> {
        check_new_claim(n)?;
        for (name, v) in [("spec_id", Some(&n.spec_id)), ("stage", Some(&n.stage)), ("owner", Some(&n.owner))] {
            no_nul_opt(name, v.map(String::as_str))?;
        }
        no_nul_opt("branch_id", n.branch_id.as_deref())?;
        no_nul_opt("run_id", n.run_id.as_deref())?;
        self.writable("claim_stage")?;
        self.require_coordination("claim_stage")?;
        let branch = branch_key(n.branch_id.as_deref());
        let offset = self.clock_offset();
        // A repetition after a lost reply takes the next token for the same owner, which
        // fences off whatever the lost attempt took: safe to repeat.
        self.run("claim_stage", Kind::Idempotent, |c| {
            let stmt = c.prepared(sql::CLAIM_STAGE)?;
            let row = c
                .client
                .query_opt(&stmt, &[&n.spec_id, &n.stage, &branch, &n.run_id, &n.owner, &n.lease_ms, &offset])?;
            Ok(row.map(|r| Claim {
                spec_id: n.spec_id.clone(),
                stage: n.stage.clone(),
                branch_id: n.branch_id.clone(),
                run_id: n.run_id.clone(),
                owner: n.owner.clone(),
                token: r.get(0),
                lease_ms: n.lease_ms,
                claimed_at_ms: r.get(1),
                expires_at_ms: r.get(2),
                took_over_from: r.get(3),
            }))
        })
    }

    pub fn renew_claim(&self, claim: &Claim, lease_ms: Option<i64>) -> Result<Claim> {
        let lease = lease_ms.unwrap_or(claim.lease_ms);
        if !(1..=MAX_LEASE_MS).contains(&lease) {
            return Err(Error::invalid("lease_s", format!("must be above 0 s and at most 86400 s, got {lease} ms")));
        }
        self.writable("renew_claim")?;
        self.require_coordination("renew_claim")?;
        let branch = branch_key(claim.branch_id.as_deref());
        let offset = self.clock_offset();
        self.run("renew_claim", Kind::Idempotent, |c| {
            let mut t = c.client.transaction()?;
            let renewed = t.query_opt(
                sql::RENEW_CLAIM,
                &[&claim.spec_id, &claim.stage, &branch, &claim.token, &claim.owner, &offset, &lease],
            )?;
            if let Some(r) = renewed {
                t.commit()?;
                return Ok(Claim { lease_ms: lease, expires_at_ms: r.get(0), ..claim.clone() });
            }
            let row = t.query_opt(sql::CLAIM_ROW, &[&claim.spec_id, &claim.stage, &branch, &offset])?;
            let now = row.as_ref().map_or(0, |r| r.get::<_, i64>(4));
            let row = row.map(|r| ClaimRow {
                token: r.get(0),
                owner: r.get(1),
                expires_at_ms: r.get(2),
                released_at_ms: r.get(3),
            });
            Err(stale(claim, row.as_ref(), now, "renew_claim"))
        })
    }

    pub fn release_claim(&self, claim: &Claim) -> Result<bool> {
        self.writable("release_claim")?;
        self.require_coordination("release_claim")?;
        let branch = branch_key(claim.branch_id.as_deref());
        let offset = self.clock_offset();
        // A repetition finds it released and says False: the release happened anyway.
        self.run("release_claim", Kind::Idempotent, |c| {
            let n = c.client.execute(
                sql::RELEASE_CLAIM,
                &[&claim.spec_id, &claim.stage, &branch, &claim.token, &claim.owner, &offset],
            )?;
            Ok(n > 0)
        })
    }

    pub fn query_claims(&self, spec_id: Option<&str>) -> Result<Vec<Claim>> {
        if !self.coordination.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(Vec::new());
        }
        let offset = self.clock_offset();
        self.run("query_claims", Kind::Read, |c| {
            let rows = c.client.query(sql::LIVE_CLAIMS, &[&spec_id, &offset])?;
            Ok(rows
                .iter()
                .map(|r| Claim {
                    spec_id: r.get(0),
                    stage: r.get(1),
                    branch_id: r.get(2),
                    run_id: r.get(3),
                    owner: r.get(4),
                    token: r.get(5),
                    lease_ms: r.get(6),
                    claimed_at_ms: r.get(7),
                    expires_at_ms: r.get(8),
                    took_over_from: None,
                })
                .collect())
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
                "consensus_claims",
                "consensus_db_meta",
                "consensus_expected_agents",
                "consensus_idempotency",
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
