//! The rolling upgrade's switches: which schemas a store writes (`WriteMode`) and which
//! it reads (`ReadMode`). A fleet upgrades host by host with every host writing both
//! schemas, so old binaries on the same file see every row, then cuts reads and writes
//! over to the new tables; each phase can be rolled back without losing a row.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::error::Error;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WriteMode {
    /// The new tables only (the default).
    #[default]
    V1,
    /// The new tables and the legacy ones, in one transaction, each copy linked to the other.
    Dual,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadMode {
    /// The new tables, then the legacy rows that have no copy there (the default).
    #[default]
    Dual,
    /// The new tables only: reads no longer fall back.
    V1,
    /// The legacy tables only: new-schema reads turned off.
    Legacy,
}

impl WriteMode {
    pub fn as_str(self) -> &'static str {
        match self {
            WriteMode::V1 => "v1",
            WriteMode::Dual => "dual",
        }
    }
}

impl ReadMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ReadMode::Dual => "dual",
            ReadMode::V1 => "v1",
            ReadMode::Legacy => "legacy",
        }
    }
}

impl FromStr for WriteMode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "v1" => Ok(WriteMode::V1),
            "dual" => Ok(WriteMode::Dual),
            other => Err(Error::invalid("write_mode", format!("must be 'v1' or 'dual', got {other:?}"))),
        }
    }
}

impl FromStr for ReadMode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "dual" => Ok(ReadMode::Dual),
            "v1" => Ok(ReadMode::V1),
            "legacy" => Ok(ReadMode::Legacy),
            other => Err(Error::invalid("read_mode", format!("must be 'dual', 'v1' or 'legacy', got {other:?}"))),
        }
    }
}

impl fmt::Display for WriteMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for ReadMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A store's current modes; read on every write and read, so atomics.
#[derive(Debug, Default)]
pub(crate) struct Modes {
    write: AtomicU8,
    read: AtomicU8,
}

impl Modes {
    pub fn write(&self) -> WriteMode {
        match self.write.load(Ordering::Acquire) {
            1 => WriteMode::Dual,
            _ => WriteMode::V1,
        }
    }

    pub fn read(&self) -> ReadMode {
        match self.read.load(Ordering::Acquire) {
            1 => ReadMode::V1,
            2 => ReadMode::Legacy,
            _ => ReadMode::Dual,
        }
    }

    pub fn set_write(&self, mode: WriteMode) {
        self.write.store(mode as u8, Ordering::Release);
    }

    pub fn set_read(&self, mode: ReadMode) {
        self.read.store(mode as u8, Ordering::Release);
    }
}
