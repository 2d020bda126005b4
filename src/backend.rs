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
use crate::store::Database;
use crate::wait::{AgentSet, AgentsStatus, Changes, Expectation, WaitFor, WaitOutcome};
use std::sync::Arc;
use std::time::Duration;

/// The store's public operations, the same on every backend.
pub trait Backend: Send + Sync {
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
    fn schema_version(&self) -> Result<i64>;
    fn retry_count(&self) -> u64;
    fn close(&self);
    fn is_closed(&self) -> bool;
    /// Declares the agents a run of a stage waits for (see `Database::expect_agents`).
    fn expect_agents(&self, set: &Expectation) -> Result<usize>;
    /// The state of a set's agents, in one query.
    fn agents_status(&self, spec_id: &str, stage: &str, set: &AgentSet) -> Result<AgentsStatus>;
    /// The store's change signal, which waiters sleep on (`wait.rs`).
    fn changes(&self) -> &Arc<Changes>;

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

/// Implements [`Backend`] by forwarding to a type's inherent methods of the same names.
macro_rules! forward_backend {
    ($ty:ty, $engine:ty) => {
        impl Backend for $ty {
            #[inline]
            fn record_agent_spawn(&self, a: &str, s: &str, st: &str, p: &str, n: &str, r: Option<&str>) -> Result<()> {
                <$ty>::record_agent_spawn(self, a, s, st, p, n, r)
            }
            #[inline]
            #[allow(clippy::too_many_arguments)]
            fn record_agent_spawn_on_branch(
                &self,
                a: &str,
                s: &str,
                st: &str,
                p: &str,
                n: &str,
                r: Option<&str>,
                b: Option<&str>,
            ) -> Result<()> {
                <$ty>::record_agent_spawn_on_branch(self, a, s, st, p, n, r, b)
            }
            #[inline]
            fn get_agent_spawn_info(&self, a: &str) -> Result<Option<(String, String)>> {
                <$ty>::get_agent_spawn_info(self, a)
            }
            #[inline]
            fn get_agent_route(&self, a: &str) -> Result<Option<AgentRoute>> {
                <$ty>::get_agent_route(self, a)
            }
            #[inline]
            fn query_agent_executions(
                &self,
                s: &str,
                st: &str,
                b: Option<&str>,
                newest: bool,
                limit: Option<usize>,
            ) -> Result<Vec<AgentExecution>> {
                <$ty>::query_agent_executions(self, s, st, b, newest, limit)
            }
            #[inline]
            fn query_agent_executions_page(
                &self,
                s: &str,
                st: &str,
                b: Option<&str>,
                page: &Page,
            ) -> Result<Vec<AgentExecution>> {
                <$ty>::query_agent_executions_page(self, s, st, b, page)
            }
            #[inline]
            fn get_agent_name(&self, a: &str) -> Result<Option<String>> {
                <$ty>::get_agent_name(self, a)
            }
            #[inline]
            fn record_agent_completion(&self, a: &str, r: &str) -> Result<bool> {
                <$ty>::record_agent_completion(self, a, r)
            }
            #[inline]
            fn record_extraction_failure(&self, a: &str, r: &str, e: &str) -> Result<bool> {
                <$ty>::record_extraction_failure(self, a, r, e)
            }
            #[inline]
            fn query_extraction_failures(&self, s: &str) -> Result<Vec<ExtractionFailure>> {
                <$ty>::query_extraction_failures(self, s)
            }
            #[inline]
            fn query_extraction_failures_page(&self, s: &str, page: &Page) -> Result<Vec<ExtractionFailure>> {
                <$ty>::query_extraction_failures_page(self, s, page)
            }
            #[inline]
            fn cleanup_old_executions(&self, days: i64) -> Result<usize> {
                <$ty>::cleanup_old_executions(self, days)
            }
            #[inline]
            fn store_artifact(&self, a: &NewArtifact) -> Result<i64> {
                <$ty>::store_artifact(self, a)
            }
            #[inline]
            fn store_artifacts(&self, a: &[NewArtifact]) -> Result<Vec<i64>> {
                <$ty>::store_artifacts(self, a)
            }
            #[inline]
            fn query_artifacts(&self, s: &str, st: &str) -> Result<Vec<Artifact>> {
                <$ty>::query_artifacts(self, s, st)
            }
            #[inline]
            fn query_artifacts_page(&self, s: &str, st: &str, page: &Page) -> Result<Vec<Artifact>> {
                <$ty>::query_artifacts_page(self, s, st, page)
            }
            #[inline]
            fn count_artifacts(&self, s: &str, st: &str) -> Result<usize> {
                <$ty>::count_artifacts(self, s, st)
            }
            #[inline]
            fn delete_spec_artifacts(&self, s: &str) -> Result<usize> {
                <$ty>::delete_spec_artifacts(self, s)
            }
            #[inline]
            fn delete_stage_artifacts(&self, s: &str, st: &str) -> Result<usize> {
                <$ty>::delete_stage_artifacts(self, s, st)
            }
            #[inline]
            fn delete_runs(&self, s: &str, st: Option<&str>) -> Result<usize> {
                <$ty>::delete_runs(self, s, st)
            }
            #[inline]
            fn store_synthesis(&self, s: &NewSynthesis) -> Result<i64> {
                <$ty>::store_synthesis(self, s)
            }
            #[inline]
            fn query_latest_synthesis(&self, s: &str, st: &str) -> Result<Option<Synthesis>> {
                <$ty>::query_latest_synthesis(self, s, st)
            }
            #[inline]
            fn claim_stage(&self, c: &NewClaim) -> Result<Option<Claim>> {
                <$ty>::claim_stage(self, c)
            }
            #[inline]
            fn renew_claim(&self, c: &Claim, lease_ms: Option<i64>) -> Result<Claim> {
                <$ty>::renew_claim(self, c, lease_ms)
            }
            #[inline]
            fn release_claim(&self, c: &Claim) -> Result<bool> {
                <$ty>::release_claim(self, c)
            }
            #[inline]
            fn query_claims(&self, s: Option<&str>) -> Result<Vec<Claim>> {
                <$ty>::query_claims(self, s)
            }
            #[inline]
            fn set_clock_offset(&self, offset_ms: i64) {
                <$ty>::set_clock_offset(self, offset_ms)
            }
            #[inline]
            fn schema_version(&self) -> Result<i64> {
                <$engine>::schema_version(self)
            }
            #[inline]
            fn retry_count(&self) -> u64 {
                <$engine>::retry_count(self)
            }
            #[inline]
            fn close(&self) {
                <$ty>::close(self)
            }
            #[inline]
            fn is_closed(&self) -> bool {
                <$engine>::is_closed(self)
            }
            fn expect_agents(&self, set: &Expectation) -> Result<usize> {
                <$ty>::expect_agents(self, set)
            }
            fn agents_status(&self, s: &str, st: &str, set: &AgentSet) -> Result<AgentsStatus> {
                <$ty>::agents_status(self, s, st, set)
            }
            fn changes(&self) -> &Arc<Changes> {
                &self.changes
            }
        }
    };
}

forward_backend!(Database, crate::sqlite::database::Engine);
#[cfg(feature = "postgres")]
forward_backend!(crate::postgres::PgDatabase, crate::postgres::PgDatabase);

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

impl Backend for AnyDatabase {
    #[inline]
    fn record_agent_spawn(&self, a: &str, s: &str, st: &str, p: &str, n: &str, r: Option<&str>) -> Result<()> {
        dispatch!(self, db => db.record_agent_spawn(a, s, st, p, n, r))
    }
    #[inline]
    fn record_agent_spawn_on_branch(
        &self,
        a: &str,
        s: &str,
        st: &str,
        p: &str,
        n: &str,
        r: Option<&str>,
        b: Option<&str>,
    ) -> Result<()> {
        dispatch!(self, db => db.record_agent_spawn_on_branch(a, s, st, p, n, r, b))
    }
    #[inline]
    fn get_agent_spawn_info(&self, a: &str) -> Result<Option<(String, String)>> {
        dispatch!(self, db => db.get_agent_spawn_info(a))
    }
    #[inline]
    fn get_agent_route(&self, a: &str) -> Result<Option<AgentRoute>> {
        dispatch!(self, db => db.get_agent_route(a))
    }
    #[inline]
    fn query_agent_executions(
        &self,
        s: &str,
        st: &str,
        b: Option<&str>,
        newest: bool,
        limit: Option<usize>,
    ) -> Result<Vec<AgentExecution>> {
        dispatch!(self, db => db.query_agent_executions(s, st, b, newest, limit))
    }
    #[inline]
    fn query_agent_executions_page(
        &self,
        s: &str,
        st: &str,
        b: Option<&str>,
        page: &Page,
    ) -> Result<Vec<AgentExecution>> {
        dispatch!(self, db => db.query_agent_executions_page(s, st, b, page))
    }
    #[inline]
    fn get_agent_name(&self, a: &str) -> Result<Option<String>> {
        dispatch!(self, db => db.get_agent_name(a))
    }
    #[inline]
    fn record_agent_completion(&self, a: &str, r: &str) -> Result<bool> {
        dispatch!(self, db => db.record_agent_completion(a, r))
    }
    #[inline]
    fn record_extraction_failure(&self, a: &str, r: &str, e: &str) -> Result<bool> {
        dispatch!(self, db => db.record_extraction_failure(a, r, e))
    }
    #[inline]
    fn query_extraction_failures(&self, s: &str) -> Result<Vec<ExtractionFailure>> {
        dispatch!(self, db => db.query_extraction_failures(s))
    }
    #[inline]
    fn query_extraction_failures_page(&self, s: &str, page: &Page) -> Result<Vec<ExtractionFailure>> {
        dispatch!(self, db => db.query_extraction_failures_page(s, page))
    }
    #[inline]
    fn cleanup_old_executions(&self, days: i64) -> Result<usize> {
        dispatch!(self, db => db.cleanup_old_executions(days))
    }
    #[inline]
    fn store_artifact(&self, a: &NewArtifact) -> Result<i64> {
        dispatch!(self, db => db.store_artifact(a))
    }
    #[inline]
    fn store_artifacts(&self, a: &[NewArtifact]) -> Result<Vec<i64>> {
        dispatch!(self, db => db.store_artifacts(a))
    }
    #[inline]
    fn query_artifacts(&self, s: &str, st: &str) -> Result<Vec<Artifact>> {
        dispatch!(self, db => db.query_artifacts(s, st))
    }
    #[inline]
    fn query_artifacts_page(&self, s: &str, st: &str, page: &Page) -> Result<Vec<Artifact>> {
        dispatch!(self, db => db.query_artifacts_page(s, st, page))
    }
    #[inline]
    fn count_artifacts(&self, s: &str, st: &str) -> Result<usize> {
        dispatch!(self, db => db.count_artifacts(s, st))
    }
    #[inline]
    fn delete_spec_artifacts(&self, s: &str) -> Result<usize> {
        dispatch!(self, db => db.delete_spec_artifacts(s))
    }
    #[inline]
    fn delete_stage_artifacts(&self, s: &str, st: &str) -> Result<usize> {
        dispatch!(self, db => db.delete_stage_artifacts(s, st))
    }
    #[inline]
    fn delete_runs(&self, s: &str, st: Option<&str>) -> Result<usize> {
        dispatch!(self, db => db.delete_runs(s, st))
    }
    #[inline]
    fn store_synthesis(&self, s: &NewSynthesis) -> Result<i64> {
        dispatch!(self, db => db.store_synthesis(s))
    }
    #[inline]
    fn query_latest_synthesis(&self, s: &str, st: &str) -> Result<Option<Synthesis>> {
        dispatch!(self, db => db.query_latest_synthesis(s, st))
    }
    #[inline]
    fn claim_stage(&self, c: &NewClaim) -> Result<Option<Claim>> {
        dispatch!(self, db => db.claim_stage(c))
    }
    #[inline]
    fn renew_claim(&self, c: &Claim, lease_ms: Option<i64>) -> Result<Claim> {
        dispatch!(self, db => db.renew_claim(c, lease_ms))
    }
    #[inline]
    fn release_claim(&self, c: &Claim) -> Result<bool> {
        dispatch!(self, db => db.release_claim(c))
    }
    #[inline]
    fn query_claims(&self, s: Option<&str>) -> Result<Vec<Claim>> {
        dispatch!(self, db => db.query_claims(s))
    }
    #[inline]
    fn set_clock_offset(&self, offset_ms: i64) {
        dispatch!(self, db => db.set_clock_offset(offset_ms))
    }
    #[inline]
    fn schema_version(&self) -> Result<i64> {
        dispatch!(self, db => db.schema_version())
    }
    #[inline]
    fn retry_count(&self) -> u64 {
        dispatch!(self, db => db.retry_count())
    }
    #[inline]
    fn close(&self) {
        dispatch!(self, db => db.close())
    }
    #[inline]
    fn is_closed(&self) -> bool {
        dispatch!(self, db => db.is_closed())
    }
    fn expect_agents(&self, set: &Expectation) -> Result<usize> {
        dispatch!(self, db => db.expect_agents(set))
    }
    fn agents_status(&self, s: &str, st: &str, set: &AgentSet) -> Result<AgentsStatus> {
        dispatch!(self, db => db.agents_status(s, st, set))
    }
    fn changes(&self) -> &Arc<Changes> {
        dispatch!(self, db => &db.changes)
    }
}

/// An open transaction on either backend (`AnyDatabase::begin`).
pub enum AnyTx {
    Sqlite(crate::sqlite::transaction::Tx),
    #[cfg(feature = "postgres")]
    Postgres(crate::postgres::PgTx),
}

type Rows = Vec<Vec<rusqlite::types::Value>>;

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
