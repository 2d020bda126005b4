//! The store: the high-level operations over a database, by entity — agent executions
//! (the routing table), artifacts and syntheses. Each write is one IMMEDIATE
//! transaction; each read one statement per schema. Inputs are validated before
//! anything is written.
//!
//! Runs: an artifact joins the newest *open* run (no synthesis yet) of its
//! (spec_id, stage, run_id); a synthesis closes that run, or is a run of its own.
//!
//! Reads go through the dual-schema reader: the new tables first, then legacy rows
//! that have no copy in the new tables (written by an old binary after the
//! migration), each row once, tagged with its source.

mod artifacts;
pub(crate) mod claims;
mod coordination;
pub mod database;
mod executions;
pub(crate) mod idempotency;
pub(crate) mod legacy;
pub mod modes;
mod read_metrics;
pub(crate) mod synthesis;
pub(crate) mod validate;
mod verify;

pub use claims::lease_ms;
pub use database::Database;
pub use executions::NewSpawn;
pub use idempotency::DEFAULT_IDEMPOTENCY_DAYS;
pub use modes::{ReadMode, WriteMode};
pub use validate::{check_id, check_json, PHASE_TYPES};
