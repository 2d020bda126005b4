//! The SQLite wing: everything that knows it runs on SQLite — opening a file (the
//! persistent settings and migrations on a bootstrap connection, then the r2d2 pool), the
//! pragmas, the schema and its migrations, transactions, maintenance, online backup,
//! cooperating with a replica (Litestream), the writer queue between processes and the
//! busy handler, SQLite's process-wide settings (spinning mutexes) and fork detection.

mod access;
pub mod backup;
mod busy;
pub(crate) mod chunks;
pub mod database;
pub(crate) mod fork;
mod host_queue;
pub mod legacy_copy;
pub mod legacy_rows;
pub mod maintenance;
pub mod migrations;
pub mod mutex;
pub mod pool;
pub mod pragmas;
pub mod replica;
pub mod retry;
pub mod schema;
pub mod transaction;
mod user_sql;
pub mod writer;

pub use pool::{R2d2Pool, StoreManager};
pub use pragmas::VerifiedPragmas;
