//! The engine's one error type. Each variant maps onto one Python exception class
//! (see `python/consensus_db/errors.py`); Rust callers match on it directly.

use rusqlite::ffi;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    /// Another connection or process holds a conflicting lock (retryable).
    #[error("database is busy or locked: {0}")]
    Busy(String),

    /// No pooled connection became free in time (retryable).
    #[error("timed out waiting for a pooled connection: {0}")]
    PoolTimeout(String),

    #[error("constraint violated: {0}")]
    Integrity(String),

    /// An argument was rejected before anything was written.
    #[error("invalid {name}: {message}")]
    InvalidInput { name: String, message: String },

    #[error("database schema version {found} is newer than this library supports (latest known: {supported}); upgrade consensus-db to open it")]
    SchemaTooNew { found: i64, supported: i64 },

    /// The new tables were laid out by a newer version of this store.
    #[error("the database's tables are in consensus-db layout revision {found}, newer than this library knows (latest: {supported}); upgrade consensus-db to open it")]
    LayoutTooNew { found: i64, supported: i64 },

    #[error("migration failed: {0}")]
    Migration(String),

    /// A move that drops or downgrades tables was refused: agents spawned within the
    /// last `max_age_s` seconds have not completed. (Python: `ExecutionsInFlightError`,
    /// a `MigrationError`.)
    #[error("refusing to migrate from version {from} to {to}: {count} agent executions are in flight (spawned within the last {max_age_s} s and not completed); wait for them to complete, or force the move (force=True; --force on the command line)")]
    InFlight { count: i64, max_age_s: i64, from: i64, to: i64 },

    /// A transaction block can no longer run statements: SQLite ended its transaction
    /// (an `OR ROLLBACK` conflict, a disk-full rollback), or a statement tried to.
    #[error("transaction error: {0}")]
    Transaction(String),

    #[error("pragma {pragma} verification failed: wanted {wanted}, database reports {actual}")]
    Pragma { pragma: String, wanted: String, actual: String },

    /// Not a SQLite database, or a damaged one.
    #[error("{0}")]
    Corrupt(String),

    #[error("attempt to write through a read-only store: {0}")]
    ReadOnly(String),

    /// SQLite must write where it cannot: a hot journal to roll back through a read-only
    /// connection, a directory where the `-wal`/`-shm`/`-journal` files cannot be created.
    /// The message says which. (Python: `ReadOnlyError`.)
    #[error("{0}")]
    CannotWrite(String),

    #[error("the store is closed")]
    Closed,

    #[error("the store was opened in process {opened_in} and used after fork() in process {used_in}; open a new store in the child")]
    Forked { opened_in: u32, used_in: u32 },

    /// SQLITE_FULL: disk, file-size limit or max_page_count reached. Not retryable.
    #[error("database or disk is full: {0}")]
    DiskFull(String),

    /// Any other SQLite failure.
    #[error("{0}")]
    Sqlite(String),

    /// The operation or option does not apply to this backend (a SQLite-only surface
    /// on PostgreSQL, say); the message names it. Not retryable.
    #[error("{0}")]
    NotSupported(String),

    /// The connection to the database server was lost, or none could be made, before
    /// anything that could commit was sent, or in a call that only reads or migrates
    /// (retryable: the next call reconnects).
    #[error("{0}")]
    ConnectionLost(String),

    /// A write (or its COMMIT) was sent and the connection was lost before its outcome
    /// was known: it may or may not have committed. Not retryable, and never retried.
    #[error("write outcome unknown: {0}")]
    OutcomeUnknown(String),

    /// A COMMIT that stopped waiting for a synchronous standby (its deadline passed):
    /// committed on the primary, perhaps not on the standby a failover would promote.
    /// An outcome unknown to a failover: never retried.
    #[error("committed on the primary, not replicated: {0}")]
    NotReplicated(String),

    /// A write (or a renewal) under a claim that is no longer the newest live claim of
    /// its stage — taken over, expired or released — or a synthesis without a claim on
    /// a stage another owner has claimed. Nothing was written. (Python:
    /// `StaleClaimError`.)
    #[error("{}", .0.message)]
    StaleClaim(Box<StaleClaim>),

    /// An idempotency key already used by an earlier write with other content: nothing
    /// was written. (Python: `IdempotencyKeyError`, an `InvalidInputError`.)
    #[error("idempotency key {key:?}: {message}; nothing was written")]
    IdempotencyConflict { key: String, message: String },

    /// A bug: a panic caught before it could cross into the caller.
    #[error("internal error (please report): {0}")]
    Internal(String),
}

/// What [`Error::StaleClaim`] says (boxed: the error stays small on every other path).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaleClaim {
    pub spec_id: String,
    pub stage: String,
    pub branch_id: Option<String>,
    /// The claim's token given with the write (None: no claim given).
    pub token: Option<i64>,
    /// The newest token of the stage, if any claim was ever taken.
    pub newest: Option<i64>,
    pub message: String,
}

impl Error {
    pub fn invalid(name: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidInput { name: name.into(), message: message.into() }
    }

    /// Whether the same call may succeed if tried again later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Busy(_) | Error::PoolTimeout(_) | Error::ConnectionLost(_))
    }

    /// Adds where the error happened (e.g. the file path) to the message.
    pub fn context(self, what: &str) -> Self {
        match self {
            Error::Busy(m) => Error::Busy(format!("{what}: {m}")),
            Error::Integrity(m) => Error::Integrity(format!("{what}: {m}")),
            Error::Corrupt(m) => Error::Corrupt(format!("{what}: {m}")),
            Error::ReadOnly(m) => Error::ReadOnly(format!("{what}: {m}")),
            Error::CannotWrite(m) => Error::CannotWrite(format!("{what}: {m}")),
            Error::DiskFull(m) => Error::DiskFull(format!("{what}: {m}")),
            Error::Sqlite(m) => Error::Sqlite(format!("{what}: {m}")),
            other => other,
        }
    }
}

impl From<rusqlite::Error> for Error {
    fn from(err: rusqlite::Error) -> Self {
        let message = err.to_string();
        match err.sqlite_error() {
            Some(e) => match e.code {
                ffi::ErrorCode::DatabaseBusy | ffi::ErrorCode::DatabaseLocked => Error::Busy(message),
                ffi::ErrorCode::ConstraintViolation => Error::Integrity(message),
                ffi::ErrorCode::NotADatabase | ffi::ErrorCode::DatabaseCorrupt => Error::Corrupt(message),
                ffi::ErrorCode::ReadOnly => match e.extended_code {
                    ffi::SQLITE_READONLY_ROLLBACK => Error::CannotWrite(
                        "the database has a hot rollback journal (the \"-journal\" file beside it), left by a writer that was \
                         interrupted mid-transaction; a read-only connection cannot roll it back. One read-write open \
                         does, as any writer would, restoring the last committed state"
                            .into(),
                    ),
                    ffi::SQLITE_READONLY_DIRECTORY => Error::CannotWrite(
                        "the database's directory is not writable, so SQLite cannot create the files it keeps beside the database \
                         (\"-wal\" and \"-shm\", which even readers of a WAL database need; \"-journal\" to write in \
                         rollback-journal mode)"
                            .into(),
                    ),
                    ffi::SQLITE_READONLY_CANTINIT => Error::CannotWrite(
                        "the WAL index of the database (the \"-shm\" file beside it) cannot be written or created, and a WAL database \
                         cannot be read without it: make the file and its directory writable"
                            .into(),
                    ),
                    _ => Error::ReadOnly(message),
                },
                ffi::ErrorCode::DiskFull => Error::DiskFull(message),
                // SQLite's unix VFS reports a failed write that is not ENOSPC as
                // IOERR_WRITE: a file-size limit (EFBIG) or a quota (EDQUOT) mostly.
                ffi::ErrorCode::SystemIoFailure if e.extended_code == ffi::SQLITE_IOERR_WRITE => Error::DiskFull(format!(
                    "{message}: a write failed (disk full, quota or file-size limit reached, or an I/O error)"
                )),
                ffi::ErrorCode::TooBig => Error::invalid(
                    "value",
                    format!("{message}: a string, blob or row is over SQLite's limit of 1000000000 bytes"),
                ),
                _ => Error::Sqlite(message),
            },
            None => match err {
                rusqlite::Error::InvalidParameterCount(got, wanted) => Error::invalid(
                    "params",
                    format!("the statement takes {wanted} parameters, {got} were given"),
                ),
                rusqlite::Error::NulError(_) => Error::invalid("sql", message),
                _ => Error::Sqlite(message),
            },
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(err: std::io::Error) -> Self {
        Error::Sqlite(format!("I/O error: {err}"))
    }
}
