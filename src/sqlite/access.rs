//! How callers reach the database: reads on a pooled connection, transactions they
//! drive step by step (a write transaction holds the write lane), and writes through
//! the write lane (`writer/`), each retried by the store's policy (`retry.rs`).

use rusqlite::types::Value;
use rusqlite::Connection;

use crate::error::{Error, Result};
use crate::sqlite::database::Engine;
use crate::sqlite::transaction::{query, query_columns, query_params, Behavior, Params, Rows, Tx};
use crate::sqlite::user_sql;
use crate::sqlite::writer::{Job, OnceJob, Outcome, RepeatJob};

impl Engine {
    /// Begins a transaction on a pooled connection, for callers that drive it step by step.
    pub fn begin(&self, behavior: Behavior) -> Result<Tx> {
        if self.read_only && behavior != Behavior::Deferred {
            return Err(Error::ReadOnly(format!(
                "{behavior:?} transactions write; the store {:?} is read-only",
                self.path
            )));
        }
        // A write transaction holds the write lane for its duration; a deferred one
        // (a read snapshot) does not.
        // Busy and pool timeouts are retried, the lane released between attempts.
        let mut attempts = self.retrier.start("begin");
        loop {
            let result = (|| {
                let lane = match behavior {
                    Behavior::Deferred => None,
                    _ => Some(self.hold_lane_within(attempts.remaining())?),
                };
                let mut tx = Tx::begin(self.conn()?, behavior)?;
                tx._lane = lane.map(|hold| Box::new(hold) as Box<dyn Send>);
                Ok(tx)
            })();
            match result {
                Err(e) if attempts.again(&e) => continue,
                other => return other,
            }
        }
    }

    /// Runs `f` in a transaction of its own: commit when it returns `Ok`, rollback on
    /// `Err`. An `Immediate` or `Exclusive` one holds the write lane (not grouped).
    pub fn transaction<T>(&self, behavior: Behavior, f: impl FnOnce(&Tx) -> Result<T>) -> Result<T> {
        let tx = self.begin(behavior)?;
        let value = f(&tx)?; // `tx` rolls back when dropped on this path
        tx.commit()?;
        Ok(value)
    }

    /// A write through the write lane (`writer/`): it may run in one `BEGIN IMMEDIATE`
    /// transaction with writes of other threads, inside its own savepoint; it returns
    /// once the commit that holds it is done (or with its own error, nothing of it
    /// written). `f` runs on whichever thread commits the group, hence `Send`.
    pub fn write<T: Send, F: FnOnce(&Tx) -> Result<T> + Send>(&self, f: F) -> Result<T> {
        let mut job = OnceJob { f: Some(f), outcome: Outcome::default() };
        self.through_lane_as("write", &mut job);
        job.outcome.into_result()
    }

    /// [`Engine::write`] for a write that may run again: when another write of its
    /// group makes SQLite roll the whole transaction back, this one is run again in a
    /// new transaction instead of failing. Every store write is one.
    pub fn write_repeatable<T: Send, F: Fn(&Tx) -> Result<T> + Send>(&self, f: F) -> Result<T> {
        self.write_repeatable_as("write", f)
    }

    /// [`Engine::write_repeatable`] naming the operation for the retry hook.
    pub(crate) fn write_repeatable_as<T: Send, F: Fn(&Tx) -> Result<T> + Send>(&self, op: &str, f: F) -> Result<T> {
        let mut job = RepeatJob { f, outcome: Outcome::default() };
        self.through_lane_as(op, &mut job);
        job.outcome.into_result()
    }

    /// [`Engine::write_repeatable`] without waiting: `on_done` is called with the
    /// result by whichever thread commits the group the write joins (or at once, on
    /// this thread, when it cannot be queued). For callers that must not block (an
    /// asyncio event loop): a waiting write holds no thread.
    pub fn submit_repeatable<T, F, D>(&self, f: F, on_done: D)
    where
        T: Send + 'static,
        F: Fn(&Tx) -> Result<T> + Send + 'static,
        D: FnOnce(Result<T>) + Send + 'static,
    {
        if let Err(e) = self.check_writable() {
            return on_done(Err(e));
        }
        let job = crate::sqlite::writer::SubmittedJob { job: RepeatJob { f, outcome: Outcome::default() }, on_done };
        self.lane.submit(&self.pool, Box::new(job));
    }

    fn through_lane_as(&self, op: &str, job: &mut dyn Job) {
        if let Err(e) = self.check_writable() {
            return job.fail(e);
        }
        // The group's front writer fails every member's job with `fail_begin` when the
        // group's BEGIN (or checkout) fails; each caller retries here, outside the lane
        // (hook and sleep never run while it is held). A member's own error is final.
        let mut attempts = self.retrier.start(op);
        loop {
            self.lane.write(&self.pool, job, attempts.remaining());
            match job.take_begin_failure() {
                None => return,
                Some(e) if attempts.again(&e) => {
                    if let Err(e) = self.check_writable() {
                        return job.fail(e);
                    }
                }
                Some(e) => return job.fail(e),
            }
        }
    }

    fn check_writable(&self) -> Result<()> {
        self.check_process()?;
        if self.read_only {
            return Err(Error::ReadOnly(format!(
                "Immediate transactions write; the store {:?} is read-only",
                self.path
            )));
        }
        if self.pool.is_closed() {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// A read outside any explicit transaction (one statement, its own snapshot).
    pub fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = self.conn()?;
        f(&conn)
    }

    pub fn query(&self, sql: &str, params: &[Value]) -> Result<Rows> {
        self.read(|conn| user_sql::run(sql, || query(conn, sql, params)))
    }

    /// [`Engine::query`] with positional or named parameters.
    pub fn query_params(&self, sql: &str, params: &Params) -> Result<Rows> {
        self.read(|conn| user_sql::run(sql, || query_params(conn, sql, params)))
    }

    /// [`Engine::query_params`] and the result's column names.
    pub fn query_columns(&self, sql: &str, params: &Params) -> Result<(Vec<String>, Rows)> {
        self.read(|conn| user_sql::run(sql, || query_columns(conn, sql, params)))
    }
}
