//! A small pool of synchronous PostgreSQL connections, opened on demand (no thread of
//! its own). A connection that failed with a lost connection is dropped, never
//! returned; the next checkout opens a new one (following `target_session_attrs`).
//!
//! Every connection has a `statement_timeout` ([`DEFAULT_STATEMENT_TIMEOUT`] unless the
//! URL's `options` set one), which the server applies to statements and the store to
//! COMMITs (`deadline.rs`), so nothing waits forever. A COMMIT whose wait for a
//! synchronous standby is cancelled still commits on the primary: the server says so
//! only in a WARNING, which the session keeps ([`Session::unreplicated`]).
//!
//! A connection never crosses a `fork()`: the child shares its parent's sockets. In a
//! forked child a checkout (and a transaction begun before the fork) is
//! [`Error::Forked`], and the inherited connections are leaked, never closed (closing
//! one would send the server a Terminate on the parent's connection).

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use postgres::{Client, Config, NoTls, Statement};

use super::map_error;
use crate::error::{Error, Result};
use crate::sqlite::fork::Origin;

/// One connection and the statements prepared on it.
pub struct Session {
    pub client: Client,
    cache: HashMap<&'static str, Statement>,
    /// Raw SQL (`execute`/`query`) prepared on this connection, up to `RAW_CACHE` statements.
    raw: HashMap<String, Statement>,
    /// Set by the server's WARNING that a COMMIT stopped waiting for a synchronous standby.
    cancelled_replication_wait: Arc<AtomicBool>,
    cancel: Box<postgres::CancelToken>,
    /// The connection's `statement_timeout` (None: 0, unbounded), which also bounds its
    /// writes' COMMITs (`deadline.rs`).
    limit: Option<Duration>,
}

/// The `statement_timeout` of every connection unless the URL sets one: longer than the
/// retry deadline (10 s), so only a wait that could never end meets it.
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

const RAW_CACHE: usize = 64;

impl Session {
    /// Whether a COMMIT since the last call stopped waiting for a synchronous standby
    /// (its `statement_timeout` ran out): committed on the primary, perhaps not on the
    /// standby that would take over. Clears the mark.
    pub fn unreplicated(&self) -> bool {
        self.cancelled_replication_wait.swap(false, Ordering::AcqRel)
    }

    /// Runs `f`, with `bounded`, under the connection's deadline, COMMITs included (the
    /// server bounds statements, not commits: past `statement_timeout` the server is
    /// asked to cancel it, `deadline.rs`). Returns whether a cancel was sent (the
    /// connection must then not be pooled) beside the result, which is
    /// [`Error::NotReplicated`] for a call that returned after a cancel or the server's
    /// warning that a COMMIT stopped waiting for a synchronous standby (the mark is
    /// cleared either way).
    pub fn bounded<T>(
        &mut self,
        bounded: bool,
        op: &str,
        f: impl FnOnce(&mut Session) -> Result<T>,
    ) -> (Result<T>, bool) {
        let armed = if bounded { self.limit.and_then(|limit| super::deadline::arm(&self.cancel, limit)) } else { None };
        let result = f(self);
        let cancelled = armed.is_some_and(|a| a.disarm());
        let warned = self.unreplicated();
        match result {
            Ok(_) if warned || cancelled => (Err(super::unreplicated_commit(op)), cancelled),
            r => (r, cancelled),
        }
    }

    /// A statement of the store's own SQL, prepared once per connection.
    pub fn prepared(&mut self, sql: &'static str) -> Result<Statement> {
        if let Some(s) = self.cache.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql)?;
        self.cache.insert(sql, s.clone());
        Ok(s)
    }

    /// Drops a caller's statement from the cache (it failed: a schema change, say).
    pub fn forget_raw(&mut self, sql: &str) {
        self.raw.remove(sql);
    }

    /// A caller's statement, prepared once per connection while it stays in the cache
    /// (emptied when full: the working set of raw SQL is small).
    pub fn prepared_raw(&mut self, sql: &str) -> Result<Statement> {
        if let Some(s) = self.raw.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql)?;
        if self.raw.len() >= RAW_CACHE {
            self.raw.clear();
        }
        self.raw.insert(sql.to_owned(), s.clone());
        Ok(s)
    }
}

struct State {
    idle: Vec<Session>,
    /// Connections open, idle or checked out.
    open: u32,
    closed: bool,
}

#[derive(Clone)]
pub struct PgPool(Arc<Inner>);

pub struct Inner {
    /// The process the connections belong to.
    origin: Origin,
    config: Config,
    max: u32,
    timeout: Duration,
    state: Mutex<State>,
    freed: Condvar,
}

impl PgPool {
    pub fn new(url: &str, max: u32, timeout: Duration, read_only: bool) -> Result<PgPool> {
        let mut config =
            Config::from_str(url).map_err(|e| Error::invalid("url", format!("not a valid PostgreSQL URL: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        if read_only {
            // The server refuses writes too, raw SQL included (SQLSTATE 25006: ReadOnlyError).
            let options = match config.get_options() {
                Some(o) => format!("{o} -c default_transaction_read_only=on"),
                None => "-c default_transaction_read_only=on".to_owned(),
            };
            config.options(&options);
        }
        if config.get_application_name().is_none() {
            config.application_name("consensus-db");
        }
        if !config.get_options().is_some_and(|o| o.contains("statement_timeout")) {
            let timeout = format!("-c statement_timeout={}", DEFAULT_STATEMENT_TIMEOUT.as_millis());
            let options = match config.get_options() {
                Some(o) => format!("{o} {timeout}"),
                None => timeout,
            };
            config.options(&options);
        }
        Ok(PgPool(Arc::new(Inner {
            origin: Origin::here(),
            config,
            max: max.max(1),
            timeout,
            state: Mutex::new(State { idle: Vec::new(), open: 0, closed: false }),
            freed: Condvar::new(),
        })))
    }

    pub fn get(&self) -> Result<Pooled> {
        self.0.get(&self.0)
    }

    pub fn close(&self) {
        self.0.close()
    }

    pub fn is_closed(&self) -> bool {
        self.0.state.lock().closed
    }

    /// Drops every idle connection (their server may be gone); the next calls reconnect.
    pub fn purge_idle(&self) {
        let idle = {
            let mut state = self.0.state.lock();
            let idle = std::mem::take(&mut state.idle);
            state.open -= idle.len() as u32;
            idle
        };
        self.0.retire(idle);
        self.0.freed.notify_all();
    }

    /// A connection outside the pool, for a caller that keeps it (the listener of
    /// `wait.rs`): the pool's settings, none of its slots.
    pub fn connect_dedicated(&self) -> Result<Client> {
        self.0.config.connect(NoTls).map_err(|e| connect_error(&e))
    }

    /// (open connections, idle connections).
    pub fn state(&self) -> (u32, u32) {
        let s = self.0.state.lock();
        (s.open, s.idle.len() as u32)
    }
}

impl Inner {
    /// A connection: an idle one, a new one while under the size, or the first freed
    /// within the checkout timeout.
    fn get(&self, me: &Arc<Inner>) -> Result<Pooled> {
        self.origin.check()?;
        let deadline = Instant::now() + self.timeout;
        let mut state = self.state.lock();
        loop {
            if state.closed {
                return Err(Error::Closed);
            }
            while let Some(session) = state.idle.pop() {
                if session.client.is_closed() {
                    state.open -= 1;
                    continue;
                }
                return Ok(Pooled { pool: me.clone(), session: Some(session) });
            }
            if state.open < self.max {
                state.open += 1;
                drop(state);
                let cancelled_replication_wait = Arc::new(AtomicBool::new(false));
                let mut config = self.config.clone();
                let mark = cancelled_replication_wait.clone();
                config.notice_callback(move |notice| {
                    if notice.message().starts_with("canceling wait for synchronous replication") {
                        mark.store(true, Ordering::Release);
                    }
                });
                let connected = config.connect(NoTls).and_then(|mut client| {
                    let ms: i64 = client
                        .query_one("SELECT setting::bigint FROM pg_settings WHERE name = 'statement_timeout'", &[])?
                        .get(0);
                    Ok((client, ms))
                });
                return match connected {
                    Ok((client, ms)) => Ok(Pooled {
                        pool: me.clone(),
                        session: Some(Session {
                            cancel: Box::new(client.cancel_token()),
                            client,
                            cache: HashMap::new(),
                            raw: HashMap::new(),
                            cancelled_replication_wait,
                            limit: (ms > 0).then(|| Duration::from_millis(ms as u64)),
                        }),
                    }),
                    Err(e) => {
                        self.release_slot();
                        Err(connect_error(&e))
                    }
                };
            }
            if self.freed.wait_until(&mut state, deadline).timed_out() {
                return Err(Error::PoolTimeout(format!(
                    "all {} PostgreSQL connections stayed busy for {:?}",
                    self.max, self.timeout
                )));
            }
        }
    }

    fn release_slot(&self) {
        self.state.lock().open -= 1;
        self.freed.notify_one();
    }

    fn put(&self, session: Session) {
        let mut state = self.state.lock();
        if state.closed || self.origin.check().is_err() {
            state.open -= 1;
            drop(state);
            self.retire([session]);
        } else {
            state.idle.push(session);
            drop(state);
        }
        self.freed.notify_one();
    }

    /// Closes connections no longer pooled; in a forked child, leaks them instead (their
    /// sockets are the parent's too).
    fn retire(&self, sessions: impl IntoIterator<Item = Session>) {
        let forked = self.origin.check().is_err();
        for session in sessions {
            if forked {
                std::mem::forget(session);
            } else {
                drop(session);
            }
        }
    }

    /// Closes the idle connections; checked-out ones close when returned. Idempotent.
    fn close(&self) {
        let idle = {
            let mut state = self.state.lock();
            state.closed = true;
            let idle = std::mem::take(&mut state.idle);
            state.open -= idle.len() as u32;
            idle
        };
        self.retire(idle);
        self.freed.notify_all();
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let idle = std::mem::take(&mut self.state.get_mut().idle);
        self.retire(idle);
    }
}

/// Why connecting failed. The server refusing who or what the URL names is permanent
/// (`InvalidInput` on `url`, with the server's reason, which never holds the password);
/// anything else wrote nothing, and the next attempt may get through.
fn connect_error(e: &postgres::Error) -> Error {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        // 28xxx: wrong password, unknown role, no pg_hba.conf entry; 3D000: no such
        // database; 42501: no CONNECT privilege on it.
        if code.starts_with("28") || code == "3D000" || code == "42501" {
            return Error::invalid(
                "url",
                format!(
                    "PostgreSQL refused the connection: {} (SQLSTATE {code}); trying again cannot help",
                    db.message()
                ),
            );
        }
    }
    // The driver's own refusals, known only by its message (its error kind is private):
    // "invalid configuration: password missing" (the server asks for a password the URL
    // lacks), "authentication error: ..." (a failed SCRAM exchange).
    let text = match std::error::Error::source(e) {
        Some(cause) if !e.to_string().contains(&cause.to_string()) => format!("{e}: {cause}"),
        _ => e.to_string(),
    };
    if text.starts_with("invalid configuration") || text.starts_with("authentication error") {
        return Error::invalid("url", format!("cannot connect to PostgreSQL: {text}; trying again cannot help"));
    }
    match map_error(e) {
        Error::Sqlite(m) => Error::ConnectionLost(format!("cannot connect to PostgreSQL: {m}")),
        other => other,
    }
}

/// A checked-out connection; back to the pool when dropped, unless discarded.
pub struct Pooled {
    pool: Arc<Inner>,
    session: Option<Session>,
}

impl Pooled {
    pub fn session_if_present(&mut self) -> Option<&mut Session> {
        self.session.as_mut()
    }

    pub fn session(&mut self) -> &mut Session {
        self.session.as_mut().expect("a pooled connection is present until dropped")
    }

    /// [`Error::Forked`] in a process forked after the checkout: the connection is the
    /// parent's, nothing may be sent on it.
    pub fn check_origin(&self) -> Result<()> {
        self.pool.origin.check()
    }

    /// Drops the connection instead of returning it (it is broken).
    pub fn discard(&mut self) {
        if let Some(session) = self.session.take() {
            self.pool.release_slot();
            self.pool.retire([session]);
        }
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            self.pool.put(s);
        }
    }
}
