//! consensus-db: a durable, fast local store for multi-agent LLM consensus workflows.
//!
//! The engine is plain Rust over SQLite (rusqlite + an r2d2 pool, r2d2_sqlite's manager,
//! every pragma verified by [`VerifiedPragmas`], which a host's own r2d2 pool can use). Features: `bundled` (default: SQLite compiled in) or `system-sqlite`
//! (the system libsqlite3), exactly one; `python` adds the bindings and [`embed`], for a
//! Rust host that links libpython and hands its [`Database`] to Python code;
//! `extension-module` is what the wheel's `consensus_db._core` is built with.
//!
//! ```no_run
//! use consensus_db::{Database, NewArtifact, Options};
//!
//! let db = Database::open("consensus.db", Options::default())?;
//! db.record_agent_spawn("agent-1", "SPEC-1", "plan", "quality_gate", "gemini", None)?;
//! let id = db.store_artifact(&NewArtifact {
//!     spec_id: "SPEC-1".into(),
//!     stage: "plan".into(),
//!     agent_name: "gemini".into(),
//!     content_json: r#"{"verdict": "ok"}"#.into(),
//!     ..Default::default()
//! })?;
//! assert_eq!(db.query_artifacts("SPEC-1", "plan")?[0].id, id);
//! # Ok::<(), consensus_db::Error>(())
//! ```

#[macro_use]
mod report;

pub mod backend;
mod callbacks;
pub mod conninfo;
pub mod cursor;
pub mod error;
pub(crate) mod fork;
pub mod model;
pub mod retry;
pub mod sqlite;
pub mod statement;
pub mod store;
pub mod wait;

#[cfg(all(feature = "bundled", feature = "system-sqlite"))]
compile_error!("consensus-db: the features `bundled` and `system-sqlite` exclude each other (`bundled` is a default feature: use `default-features = false, features = [\"system-sqlite\"]`)");
#[cfg(not(any(feature = "bundled", feature = "system-sqlite")))]
compile_error!(
    "consensus-db: choose how SQLite is linked: the feature `bundled` (a default feature) or `system-sqlite`"
);

#[cfg(feature = "postgres")]
pub mod postgres;

#[cfg(feature = "python")]
pub mod python;

#[cfg(feature = "python")]
pub mod embed;

pub use retry::{Clock, RetryEvent, RetryPolicy, SystemClock};

pub use backend::{AnyDatabase, Backend};
pub use cursor::Page;
pub use error::{Error, Result};
pub use model::{
    AgentExecution, AgentRoute, Artifact, ExtractionFailure, LatencySummary, NewArtifact, NewSynthesis, ReaderCounts,
    SchemaGroup, SchemaMismatch, SchemaReport, Synthesis,
};
pub use sqlite::database::{OpenReport, Options};
pub use sqlite::maintenance::{CycleReport, Health, MaintenanceOptions, Stats, VacuumReport};
pub use sqlite::pool::{R2d2Pool, StoreManager};
pub use sqlite::pragmas::{Pragmas, VerifiedPragmas};
pub use sqlite::replica::{self, Checkpoint, CheckpointMode};
pub use sqlite::schema::Shape;
pub use sqlite::transaction::{Behavior, Params, Tx};
pub use sqlite::writer::{self, LaneStats};
pub use store::{Database, NewSpawn};
pub use store::{ReadMode, WriteMode};
