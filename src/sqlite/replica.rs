//! Cooperating with a replica streaming the WAL off the host (Litestream): how the store
//! knows one is attached, and what it changes then.
//!
//! Litestream reads the WAL as it grows and copies new frames out. A checkpoint that
//! restarts or truncates the WAL (`RESTART`, `TRUNCATE`) behind its back breaks that
//! tracking, so a replicated store runs `PASSIVE` checkpoints only (copy what can be
//! copied, never wait, never reset the WAL) and keeps `busy_timeout` at 5 s or more,
//! because Litestream briefly holds locks of its own while it syncs and checkpoints.
//!
//! A store is replicated when it was opened with `Options::replicated`, or when the file
//! carries the tables Litestream creates in every database it replicates
//! (`_litestream_seq`, `_litestream_lock`). Detection is read at opening and again at
//! every checkpoint, so a Litestream started after the store opened is seen too. The
//! tables stay in the file (a restored file has them as well): a file that was
//! replicated once keeps PASSIVE checkpoints, which is always safe.

use rusqlite::Connection;

use crate::error::{Error, Result};

/// Litestream's guidance for applications: wait at least this long on a lock.
pub const MIN_BUSY_TIMEOUT_MS: i64 = 5000;

/// The tables Litestream creates inside a database it replicates.
pub const LITESTREAM_TABLES: [&str; 2] = ["_litestream_seq", "_litestream_lock"];

/// `PRAGMA wal_checkpoint(MODE)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointMode {
    /// Copies what it can without waiting for anyone; the WAL is left in place.
    Passive,
    /// Waits for writers, then copies every frame; the WAL is left in place.
    Full,
    /// As FULL, then waits for readers so the next writer restarts the WAL.
    Restart,
    /// As RESTART, then truncates the WAL file to zero bytes.
    Truncate,
}

impl CheckpointMode {
    pub const ALL: [CheckpointMode; 4] =
        [CheckpointMode::Passive, CheckpointMode::Full, CheckpointMode::Restart, CheckpointMode::Truncate];

    pub fn name(self) -> &'static str {
        match self {
            CheckpointMode::Passive => "passive",
            CheckpointMode::Full => "full",
            CheckpointMode::Restart => "restart",
            CheckpointMode::Truncate => "truncate",
        }
    }

    /// `"passive"`, `"FULL"`, … (any case); anything else is refused, naming it.
    pub fn parse(text: &str) -> Result<CheckpointMode> {
        let lower = text.trim().to_ascii_lowercase();
        CheckpointMode::ALL.into_iter().find(|m| m.name() == lower).ok_or_else(|| {
            Error::invalid("mode", format!("unknown checkpoint mode {text:?}; known: passive, full, restart, truncate"))
        })
    }

    /// The mode a checkpoint runs in when the caller names none: TRUNCATE keeps the WAL
    /// file small on a store of its own; PASSIVE is the only mode a replica tolerates.
    pub fn default_for(replicated: bool) -> CheckpointMode {
        if replicated {
            CheckpointMode::Passive
        } else {
            CheckpointMode::Truncate
        }
    }

    /// The mode to run: `asked` (or the default) when allowed; on a replicated store
    /// anything but PASSIVE is refused with an error naming the mode.
    pub fn resolve(asked: Option<CheckpointMode>, replicated: bool) -> Result<CheckpointMode> {
        match asked {
            None => Ok(CheckpointMode::default_for(replicated)),
            Some(CheckpointMode::Passive) => Ok(CheckpointMode::Passive),
            Some(mode) if replicated => Err(Error::invalid(
                "mode",
                format!(
                    "a {} checkpoint is refused while a replica (Litestream) is attached: only passive checkpoints run on a \
                     replicated store, since {} would reset the WAL Litestream is still reading",
                    mode.name().to_ascii_uppercase(),
                    mode.name().to_ascii_uppercase()
                ),
            )),
            Some(mode) => Ok(mode),
        }
    }
}

/// What a checkpoint did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub mode: CheckpointMode,
    /// 1 when it could not finish (another connection held what it needed), else 0.
    pub busy: i64,
    /// Frames in the WAL (-1 when not in WAL mode).
    pub log_frames: i64,
    /// Frames copied into the database (-1 when not in WAL mode).
    pub checkpointed_frames: i64,
}

impl Checkpoint {
    /// Why the checkpoint did not copy every frame of the WAL into the database, or None
    /// when it did (or the file is not in WAL mode). A reader on another connection or
    /// process keeps the frames its snapshot needs; until a later checkpoint copies them
    /// the main file keeps its size and the WAL its frames.
    pub fn blocked(&self) -> Option<String> {
        if self.busy != 0 {
            return Some(format!(
                "the {} checkpoint could not finish: another connection held the database (a read transaction \
                 or a writer); {} of {} WAL frames were copied into the main file",
                self.mode.name(),
                self.checkpointed_frames.max(0),
                self.log_frames.max(0)
            ));
        }
        if self.log_frames >= 0 && self.checkpointed_frames < self.log_frames {
            return Some(format!(
                "{} of {} WAL frames were copied into the main file: another connection's read transaction still \
                 needs the rest",
                self.checkpointed_frames, self.log_frames
            ));
        }
        None
    }
}

/// Runs `PRAGMA wal_checkpoint(mode)`.
pub(crate) fn checkpoint(conn: &Connection, mode: CheckpointMode) -> Result<Checkpoint> {
    let sql = format!("PRAGMA wal_checkpoint({})", mode.name().to_ascii_uppercase());
    let (busy, log_frames, checkpointed_frames) =
        conn.query_row(&sql, [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(Checkpoint { mode, busy, log_frames, checkpointed_frames })
}

/// Whether Litestream has replicated this database (its tables are in the file).
pub(crate) fn litestream_detected(conn: &Connection) -> Result<bool> {
    let found: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN (?1, ?2)",
        LITESTREAM_TABLES,
        |r| r.get(0),
    )?;
    Ok(found > 0)
}

/// Refuses a `busy_timeout` below Litestream's minimum (`None`: SQLite's default, 0).
pub(crate) fn check_busy_timeout(configured: Option<&str>, why: &str) -> Result<()> {
    let ms = configured.and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
    if ms < MIN_BUSY_TIMEOUT_MS {
        let shown = configured.map_or("unset (SQLite's default, 0)".to_string(), |v| format!("{v} ms"));
        return Err(Error::invalid(
            "pragma busy_timeout",
            format!("{shown} is below the {MIN_BUSY_TIMEOUT_MS} ms a replicated store needs ({why})"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_unknown_ones_are_named() {
        assert_eq!(CheckpointMode::parse("TRUNCATE").ok(), Some(CheckpointMode::Truncate));
        assert_eq!(CheckpointMode::parse(" passive ").ok(), Some(CheckpointMode::Passive));
        let e = CheckpointMode::parse("trunc").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("\"trunc\"") && e.contains("passive"), "{e}");
    }

    #[test]
    fn a_replicated_store_runs_passive_checkpoints_only() {
        assert_eq!(CheckpointMode::resolve(None, true).ok(), Some(CheckpointMode::Passive));
        assert_eq!(CheckpointMode::resolve(None, false).ok(), Some(CheckpointMode::Truncate));
        assert_eq!(CheckpointMode::resolve(Some(CheckpointMode::Restart), false).ok(), Some(CheckpointMode::Restart));
        for mode in [CheckpointMode::Full, CheckpointMode::Restart, CheckpointMode::Truncate] {
            match CheckpointMode::resolve(Some(mode), true) {
                Err(Error::InvalidInput { name, message }) => {
                    assert_eq!(name, "mode");
                    assert!(message.contains(&mode.name().to_ascii_uppercase()), "{message}");
                }
                other => panic!("expected a refusal of {mode:?}, got {other:?}"),
            }
        }
    }

    #[test]
    fn busy_timeout_below_five_seconds_is_refused() {
        assert!(check_busy_timeout(Some("5000"), "x").is_ok());
        let e = check_busy_timeout(Some("1000"), "x").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("busy_timeout") && e.contains("1000 ms"), "{e}");
        assert!(check_busy_timeout(None, "x").is_err());
    }

    #[test]
    fn detection_reads_the_tables_litestream_creates() {
        let conn = Connection::open_in_memory().unwrap();
        assert!(!litestream_detected(&conn).unwrap());
        conn.execute_batch("CREATE TABLE _litestream_seq (id INTEGER PRIMARY KEY, seq INTEGER)").unwrap();
        assert!(litestream_detected(&conn).unwrap());
    }
}
