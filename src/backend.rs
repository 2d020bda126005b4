//! The backend seam: the store's public operations as one trait, implemented by the
//! SQLite store ([`crate::store::Database`], the embedded default) and, with the
//! `postgres` feature, by [`crate::postgres::PgDatabase`]. Inputs are validated by the
//! same functions (`store::validate`) on both sides; each backend keeps its own SQL.
//!
//! [`AnyDatabase`] picks one at open time and dispatches by `match`: no boxing and no
//! virtual call on the SQLite hot path (the trait's SQLite methods are the store's own
//! inherent methods, inlined).

use crate::cursor::Page;
#[cfg(feature = "postgres")]
use crate::error::Error;
use crate::error::Result;
use crate::model::{
    AgentExecution, AgentRoute, Artifact, Claim, ExtractionFailure, NewArtifact, NewClaim, NewSynthesis, Synthesis,
};
use crate::sqlite::maintenance::MaintenanceOptions;
use crate::sqlite::transaction::{Params, Rows};
use crate::store::Database;
use crate::wait::{AgentSet, AgentsStatus, Changes, Expectation, WaitFor, WaitOutcome};
use std::sync::Arc;
use std::time::Duration;

/// Declares the store's public operations once: from the list come the [`Backend`] trait,
/// its implementations by the SQLite store and the PostgreSQL one (each forwarding to the
/// type's inherent method of the same name; `[engine]`: to the SQLite engine's, which the
/// store reaches by `Deref`; `[field]`: the field of that name) and [`AnyDatabase`]'s
/// dispatch. An operation is added here, once.
macro_rules! backend_ops {
    (
        $( $(#[$m:meta])* $([$via:ident])? fn $name:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) $(-> $ret:ty)?; )*
        provided { $($provided:tt)* }
    ) => {
        /// The store's public operations, the same on every backend.
        pub trait Backend: Send + Sync {
            $( $(#[$m])* fn $name(&self $(, $arg: $ty)*) $(-> $ret)?; )*
            $($provided)*
        }

        impl Backend for Database {
            $(
                $(#[$m])*
                #[inline]
                fn $name(&self $(, $arg: $ty)*) $(-> $ret)? {
                    forward!(Database, crate::sqlite::database::Engine, [$($via)?], $name, self $(, $arg)*)
                }
            )*
        }

        #[cfg(feature = "postgres")]
        impl Backend for crate::postgres::PgDatabase {
            $(
                $(#[$m])*
                #[inline]
                fn $name(&self $(, $arg: $ty)*) $(-> $ret)? {
                    forward!(crate::postgres::PgDatabase, crate::postgres::PgDatabase, [$($via)?], $name, self $(, $arg)*)
                }
            )*
        }

        impl Backend for AnyDatabase {
            $(
                $(#[$m])*
                #[inline]
                fn $name(&self $(, $arg: $ty)*) $(-> $ret)? {
                    crate::dispatch!(self, db => forward!(_, _, [$($via)?], $name, db $(, $arg)*; dispatched))
                }
            )*
        }
    };
}

/// One operation's call on a backend (see [`backend_ops!`]).
macro_rules! forward {
    ($ty:ty, $engine:ty, [], $name:ident, $db:ident $(, $arg:ident)*) => { <$ty>::$name($db $(, $arg)*) };
    ($ty:ty, $engine:ty, [engine], $name:ident, $db:ident $(, $arg:ident)*) => { <$engine>::$name($db $(, $arg)*) };
    ($ty:ty, $engine:ty, [field], $name:ident, $db:ident) => { &$db.$name };
    // On `AnyDatabase`, the backend's own `Backend` method (a field: reached the same way).
    (_, _, [field], $name:ident, $db:ident; dispatched) => { &$db.$name };
    (_, _, [$($via:ident)?], $name:ident, $db:ident $(, $arg:ident)*; dispatched) => { $db.$name($($arg),*) };
}

backend_ops! {
    fn record_agent_spawn(
        &self,
        agent_id: &str,
        spec_id: &str,
        stage: &str,
        phase_type: &str,
        agent_name: &str,
        run_id: Option<&str>,
    ) -> Result<()>;
    #[allow(clippy::too_many_arguments)]
    fn record_agent_spawn_on_branch(
        &self,
        agent_id: &str,
        spec_id: &str,
        stage: &str,
        phase_type: &str,
        agent_name: &str,
        run_id: Option<&str>,
        branch_id: Option<&str>,
    ) -> Result<()>;
    fn get_agent_spawn_info(&self, agent_id: &str) -> Result<Option<(String, String)>>;
    fn get_agent_route(&self, agent_id: &str) -> Result<Option<AgentRoute>>;
    fn query_agent_executions(
        &self,
        spec_id: &str,
        stage: &str,
        branch_id: Option<&str>,
        newest_first: bool,
        limit: Option<usize>,
    ) -> Result<Vec<AgentExecution>>;
    /// `query_agent_executions` as a page (`cursor.rs`): in the page's order, at most
    /// `page.limit` rows after or before a cursor.
    fn query_agent_executions_page(
        &self,
        spec_id: &str,
        stage: &str,
        branch_id: Option<&str>,
        page: &Page,
    ) -> Result<Vec<AgentExecution>>;
    fn get_agent_name(&self, agent_id: &str) -> Result<Option<String>>;
    fn record_agent_completion(&self, agent_id: &str, response_text: &str) -> Result<bool>;
    fn record_extraction_failure(&self, agent_id: &str, response_text: &str, extraction_error: &str) -> Result<bool>;
    fn query_extraction_failures(&self, spec_id: &str) -> Result<Vec<ExtractionFailure>>;
    fn query_extraction_failures_page(&self, spec_id: &str, page: &Page) -> Result<Vec<ExtractionFailure>>;
    fn cleanup_old_executions(&self, days: i64) -> Result<usize>;
    fn store_artifact(&self, artifact: &NewArtifact) -> Result<i64>;
    fn store_artifacts(&self, artifacts: &[NewArtifact]) -> Result<Vec<i64>>;
    fn query_artifacts(&self, spec_id: &str, stage: &str) -> Result<Vec<Artifact>>;
    fn query_artifacts_page(&self, spec_id: &str, stage: &str, page: &Page) -> Result<Vec<Artifact>>;
    fn count_artifacts(&self, spec_id: &str, stage: &str) -> Result<usize>;
    fn delete_spec_artifacts(&self, spec_id: &str) -> Result<usize>;
    fn delete_stage_artifacts(&self, spec_id: &str, stage: &str) -> Result<usize>;
    fn delete_runs(&self, spec_id: &str, stage: Option<&str>) -> Result<usize>;
    fn store_synthesis(&self, synthesis: &NewSynthesis) -> Result<i64>;
    fn query_latest_synthesis(&self, spec_id: &str, stage: &str) -> Result<Option<Synthesis>>;
    /// Claims a stage (`docs/claims.md`): the claim, or None while another owner's lease is live.
    fn claim_stage(&self, claim: &NewClaim) -> Result<Option<Claim>>;
    /// Extends a live claim's lease; a stale claim is [`crate::Error::StaleClaim`].
    fn renew_claim(&self, claim: &Claim, lease_ms: Option<i64>) -> Result<Claim>;
    /// Ends a claim; whether it was still the stage's unreleased claim.
    fn release_claim(&self, claim: &Claim) -> Result<bool>;
    /// The live claims, of one spec or all.
    fn query_claims(&self, spec_id: Option<&str>) -> Result<Vec<Claim>>;
    /// Shifts this store's clock for leases and keys (tests).
    fn set_clock_offset(&self, offset_ms: i64);
    [engine] fn schema_version(&self) -> Result<i64>;
    [engine] fn retry_count(&self) -> u64;
    fn close(&self);
    [engine] fn is_closed(&self) -> bool;
    /// Declares the agents a run of a stage waits for (see `Database::expect_agents`).
    fn expect_agents(&self, set: &Expectation) -> Result<usize>;
    /// The state of a set's agents, in one query.
    fn agents_status(&self, spec_id: &str, stage: &str, set: &AgentSet) -> Result<AgentsStatus>;
    /// The store's change signal, which waiters sleep on (`wait.rs`).
    [field] fn changes(&self) -> &Arc<Changes>;
    /// Runs one statement of the backend's own SQL in a transaction of its own.
    fn execute(&self, sql: &str, params: &Params) -> Result<usize>;
    /// Runs a query of the backend's own SQL: the column names and the rows.
    [engine] fn query_columns(&self, sql: &str, params: &Params) -> Result<(Vec<String>, Rows)>;
    /// Starts the background maintenance thread (retention, vacuum, checkpoints).
    fn start_maintenance(&self, options: MaintenanceOptions) -> Result<()>;
    /// Stops it, waiting for a running cycle; a no-op if none runs.
    fn stop_maintenance(&self);
    /// Cycles the running maintenance thread completed, or None.
    fn maintenance_cycles(&self) -> Option<u64>;

    provided {
        /// Waits until `condition` holds or `timeout` passes (None: no limit; zero: check
        /// once); woken by commits of this process and, through the store's watcher, of
        /// others. A timeout is an outcome (`timed_out`), not an error.
        fn wait_for_agents(&self, condition: &WaitFor, timeout: Option<Duration>) -> Result<WaitOutcome> {
            crate::wait::wait(
                self.changes(),
                condition,
                timeout,
                Duration::from_secs(3600),
                &mut || self.agents_status(&condition.spec_id, &condition.stage, &condition.set),
                &mut || Ok(()),
            )
        }
    }
}

/// A store on either backend, chosen at open time. One per store: the size difference
/// between the variants costs nothing, and boxing would put a pointer on the SQLite path.
#[allow(clippy::large_enum_variant)]
pub enum AnyDatabase {
    Sqlite(std::sync::Arc<Database>),
    #[cfg(feature = "postgres")]
    Postgres(crate::postgres::PgDatabase),
}

/// `dispatch!(self, db => expr)`: `expr` with `db` bound to the backend in use.
#[macro_export]
#[doc(hidden)]
macro_rules! dispatch {
    ($any:expr, $db:ident => $e:expr) => {
        match $any {
            $crate::backend::AnyDatabase::Sqlite($db) => $e,
            #[cfg(feature = "postgres")]
            $crate::backend::AnyDatabase::Postgres($db) => $e,
        }
    };
}

macro_rules! dispatch_tx {
    ($any:expr, $tx:ident => $e:expr) => {
        match $any {
            AnyTx::Sqlite($tx) => $e,
            #[cfg(feature = "postgres")]
            AnyTx::Postgres($tx) => $e,
        }
    };
}

impl AnyDatabase {
    /// The backend's name: "sqlite" or "postgresql".
    pub fn backend_name(&self) -> &'static str {
        match self {
            AnyDatabase::Sqlite(_) => "sqlite",
            #[cfg(feature = "postgres")]
            AnyDatabase::Postgres(_) => "postgresql",
        }
    }

    /// The SQLite store, or a [`Error::NotSupported`] naming `what` on another backend.
    #[inline]
    pub fn sqlite(&self, what: &str) -> Result<&Database> {
        let _ = what;
        match self {
            AnyDatabase::Sqlite(db) => Ok(&**db),
            #[cfg(feature = "postgres")]
            AnyDatabase::Postgres(_) => Err(Error::NotSupported(format!(
                "{what} is SQLite-only and does not apply on PostgreSQL (see the table in docs/postgresql.md)"
            ))),
        }
    }
}

/// An open transaction on either backend (`AnyDatabase::begin`).
pub enum AnyTx {
    Sqlite(crate::sqlite::transaction::Tx),
    #[cfg(feature = "postgres")]
    Postgres(crate::postgres::PgTx),
}

impl AnyDatabase {
    /// A transaction: SQLite's with `behavior`; PostgreSQL's `BEGIN` (READ COMMITTED).
    pub fn begin(&self, behavior: crate::sqlite::transaction::Behavior) -> Result<AnyTx> {
        match self {
            AnyDatabase::Sqlite(db) => db.begin(behavior).map(AnyTx::Sqlite),
            #[cfg(feature = "postgres")]
            AnyDatabase::Postgres(db) => db.begin().map(AnyTx::Postgres),
        }
    }
}

impl AnyTx {
    pub fn check_origin(&self) -> Result<()> {
        match self {
            AnyTx::Sqlite(tx) => tx.check_origin(),
            #[cfg(feature = "postgres")]
            AnyTx::Postgres(_) => Ok(()),
        }
    }

    pub fn execute_params(&mut self, sql: &str, params: &crate::sqlite::transaction::Params) -> Result<usize> {
        dispatch_tx!(self, tx => tx.execute_params(sql, params))
    }

    pub fn execute_many_params(&mut self, sql: &str, rows: &[crate::sqlite::transaction::Params]) -> Result<usize> {
        dispatch_tx!(self, tx => tx.execute_many_params(sql, rows))
    }

    pub fn query_params(&mut self, sql: &str, params: &crate::sqlite::transaction::Params) -> Result<Rows> {
        dispatch_tx!(self, tx => tx.query_params(sql, params))
    }

    pub fn query_columns(
        &mut self,
        sql: &str,
        params: &crate::sqlite::transaction::Params,
    ) -> Result<(Vec<String>, Rows)> {
        dispatch_tx!(self, tx => tx.query_columns(sql, params))
    }

    pub fn last_insert_rowid(&mut self) -> Result<i64> {
        match self {
            AnyTx::Sqlite(tx) => Ok(tx.last_insert_rowid()),
            #[cfg(feature = "postgres")]
            AnyTx::Postgres(tx) => tx.last_insert_rowid(),
        }
    }

    pub fn savepoint(&mut self) -> Result<String> {
        dispatch_tx!(self, tx => tx.savepoint())
    }

    pub fn release(&mut self, name: &str) -> Result<()> {
        dispatch_tx!(self, tx => tx.release(name))
    }

    pub fn rollback_to(&mut self, name: &str) -> Result<()> {
        dispatch_tx!(self, tx => tx.rollback_to(name))
    }

    pub fn commit(self) -> Result<()> {
        dispatch_tx!(self, tx => tx.commit())
    }

    pub fn rollback(self) -> Result<()> {
        dispatch_tx!(self, tx => tx.rollback())
    }
}
