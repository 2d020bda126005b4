//! The pragmas every connection runs with: defaults, overrides, applying, verifying,
//! and [`VerifiedPragmas`], the r2d2 connection customizer that does both on every new
//! connection (the store's pool's, and one a Rust host can give its own r2d2 pool).
//!
//! Values are normalised to what SQLite reads back (`synchronous=NORMAL` reads back
//! as `1`), so verification is a plain comparison and an error can name the pragma,
//! the wanted and the actual value.

use r2d2::CustomizeConnection;
use rusqlite::{Connection, OptionalExtension};

use crate::error::{Error, Result};
use crate::sqlite::busy;

/// How SQLite spells a pragma's value.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// An integer SQLite keeps as given only within these bounds: outside them it
    /// reads back as something else, so verification could never pass.
    Int(i64, i64),
    Bool,
    /// Named values; the index is the integer SQLite reads back.
    Choice(&'static [&'static str]),
    /// `journal_mode` reads back as its lowercase name.
    Mode(&'static [&'static str]),
}

/// Persistent pragmas live in the database file (set once, before the pool opens);
/// the others are per connection (set by the pool's customizer on each new one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Persistent,
    Connection,
}

#[derive(Debug)]
struct Def {
    name: &'static str,
    kind: Kind,
    scope: Scope,
    default: &'static str,
}

/// In the order they must be applied: auto_vacuum before journal_mode (switching to
/// WAL writes the header, after which auto_vacuum needs a VACUUM to change).
const DEFS: &[Def] = &[
    Def {
        name: "auto_vacuum",
        kind: Kind::Choice(&["none", "full", "incremental"]),
        scope: Scope::Persistent,
        default: "incremental",
    },
    Def {
        name: "journal_mode",
        kind: Kind::Mode(&["delete", "truncate", "persist", "memory", "wal", "off"]),
        scope: Scope::Persistent,
        default: "wal",
    },
    Def {
        name: "synchronous",
        kind: Kind::Choice(&["off", "normal", "full", "extra"]),
        scope: Scope::Connection,
        default: "normal",
    },
    Def { name: "foreign_keys", kind: Kind::Bool, scope: Scope::Connection, default: "on" },
    Def {
        name: "cache_size",
        kind: Kind::Int(i32::MIN as i64, i32::MAX as i64),
        scope: Scope::Connection,
        default: "-32000",
    },
    Def {
        name: "temp_store",
        kind: Kind::Choice(&["default", "file", "memory"]),
        scope: Scope::Connection,
        default: "memory",
    },
    // SQLITE_MAX_MMAP_SIZE caps it (0x7fff0000 on Linux); a negative value resets it.
    // 0 (SQLite's own default), from measurement: on a 6.3 GB file, 10 threads reading at
    // random got no faster with a map (0 MB: 56-59k routing reads/s; 1 GB: 32-42k) and
    // each pooled connection maps the file on its own (RSS 357 MB -> 2.0 GB at 1 GB);
    // one thread read alike either way (`benches/memory.py`). A map also turns I/O errors
    // into SIGBUS.
    Def { name: "mmap_size", kind: Kind::Int(0, 0x7fff_0000), scope: Scope::Connection, default: "0" },
    Def { name: "busy_timeout", kind: Kind::Int(0, i32::MAX as i64), scope: Scope::Connection, default: "5000" },
];

/// One configured pragma: its normalised value, as SQLite reads it back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    pub name: &'static str,
    pub value: String,
    pub scope: Scope,
}

/// The set of pragmas a store applies and verifies. `Pragmas::default()` is the set
/// docs/how-it-works.md lists ("Pool and pragmas").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pragmas {
    settings: Vec<Setting>,
}

impl Default for Pragmas {
    fn default() -> Self {
        let settings = DEFS
            .iter()
            .map(|d| Setting { name: d.name, value: normalise(d, d.default).expect("valid default"), scope: d.scope })
            .collect();
        Pragmas { settings }
    }
}

fn def(name: &str) -> Result<&'static Def> {
    let lower = name.to_ascii_lowercase();
    DEFS.iter().find(|d| d.name == lower).ok_or_else(|| {
        let known: Vec<&str> = DEFS.iter().map(|d| d.name).collect();
        Error::invalid("pragma", format!("unknown pragma {name:?}; known: {}", known.join(", ")))
    })
}

fn normalise(def: &Def, value: &str) -> Result<String> {
    let v = value.trim().to_ascii_lowercase();
    let bad =
        |expected: &str| Error::invalid(format!("pragma {}", def.name), format!("value {value:?} is not {expected}"));
    match def.kind {
        Kind::Int(min, max) => match v.parse::<i64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n.to_string()),
            _ => Err(bad(&format!("an integer from {min} to {max}"))),
        },
        Kind::Bool => match v.as_str() {
            "1" | "on" | "true" | "yes" => Ok("1".into()),
            "0" | "off" | "false" | "no" => Ok("0".into()),
            _ => Err(bad("a boolean (on/off)")),
        },
        Kind::Choice(names) => {
            if let Some(i) = names.iter().position(|n| *n == v) {
                return Ok(i.to_string());
            }
            match v.parse::<usize>() {
                Ok(i) if i < names.len() => Ok(i.to_string()),
                _ => Err(bad(&format!("one of {}", names.join(", ")))),
            }
        }
        Kind::Mode(names) if names.contains(&v.as_str()) => Ok(v),
        Kind::Mode(names) => Err(bad(&format!("one of {}", names.join(", ")))),
    }
}

impl Pragmas {
    /// Overrides one pragma (`value` as you would write it in SQL: `"normal"`, `"0"`,
    /// `"wal"`). Unknown names and values are rejected, naming them.
    pub fn set(&mut self, name: &str, value: &str) -> Result<&mut Self> {
        let d = def(name)?;
        let value = normalise(d, value)?;
        match self.settings.iter_mut().find(|s| s.name == d.name) {
            Some(s) => s.value = value,
            None => {
                // Re-insert in definition order so apply order stays right.
                self.settings.push(Setting { name: d.name, value, scope: d.scope });
                self.settings.sort_by_key(|s| DEFS.iter().position(|x| x.name == s.name));
            }
        }
        Ok(self)
    }

    /// Stops applying (and verifying) one pragma: SQLite's own default stays.
    pub fn unset(&mut self, name: &str) -> Result<&mut Self> {
        let d = def(name)?;
        self.settings.retain(|s| s.name != d.name);
        Ok(self)
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.settings.iter().find(|s| s.name == name).map(|s| s.value.as_str())
    }

    pub fn settings(&self) -> &[Setting] {
        &self.settings
    }

    pub fn scoped(&self, scope: Scope) -> impl Iterator<Item = &Setting> {
        self.settings.iter().filter(move |s| s.scope == scope)
    }

    /// Applies the per-connection pragmas (the pool's customizer calls this).
    pub fn apply_connection(&self, conn: &Connection) -> Result<()> {
        for s in self.scoped(Scope::Connection) {
            set_raw(conn, s.name, &s.value)?;
        }
        Ok(())
    }

    /// Checks that every configured pragma reads back as wanted. In-memory databases
    /// always report journal_mode `memory` and have no mmap, so neither is demanded.
    pub fn verify(&self, conn: &Connection, in_memory: bool) -> Result<()> {
        for s in &self.settings {
            if in_memory && matches!(s.name, "journal_mode" | "mmap_size") {
                continue;
            }
            let actual = read(conn, s.name)?;
            if actual != s.value {
                return Err(Error::Pragma { pragma: s.name.into(), wanted: s.value.clone(), actual });
            }
        }
        Ok(())
    }

    /// What a read-only store verifies: it cannot set the persistent pragmas, so only
    /// the per-connection ones it set.
    pub fn verify_connection_scope(&self, conn: &Connection) -> Result<()> {
        let mut only = self.clone();
        only.settings.retain(|s| s.scope == Scope::Connection);
        only.verify(conn, true)
    }
}

/// An r2d2 connection customizer: on every new connection it applies the
/// per-connection pragmas and then verifies **every** configured pragma, auto_vacuum
/// and journal_mode included, failing with [`Error::Pragma`] (the pragma, the wanted
/// and the actual value) — so no connection with a pragma other than configured is
/// ever handed out. The store's own pool uses it.
///
/// A Rust host with an r2d2 pool of its own (`r2d2::Pool<r2d2_sqlite::SqliteConnectionManager>`)
/// gets the same guarantee:
///
/// ```no_run
/// use consensus_db::sqlite::pool::{r2d2, r2d2_sqlite::SqliteConnectionManager};
/// use consensus_db::{Database, Options, Pragmas, VerifiedPragmas};
///
/// // The persistent pragmas are the file's: opening it once as a store sets them.
/// Database::open("app.db", Options::default())?.close();
/// let pool = r2d2::Pool::builder()
///     .connection_customizer(Box::new(VerifiedPragmas::new(Pragmas::default())))
///     .build(SqliteConnectionManager::file("app.db"))
///     .expect("a verified connection");
/// let synchronous: i64 = pool.get().unwrap().query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap();
/// assert_eq!(synchronous, 1); // NORMAL
/// # Ok::<(), consensus_db::Error>(())
/// ```
///
/// The persistent pragmas (auto_vacuum, journal_mode) live in the file and are
/// verified, not set: a file a store opened has them; for another, set them once
/// yourself or [`Pragmas::unset`] them. With r2d2_sqlite's manager the typed error
/// arrives as `rusqlite::Error::UserFunctionError` holding the [`Error`]; r2d2 reports
/// it as text in `pool.get()`'s timeout error.
#[derive(Clone, Debug)]
pub struct VerifiedPragmas {
    pragmas: Pragmas,
    in_memory: bool,
    read_only: bool,
}

impl VerifiedPragmas {
    /// Applies and verifies `pragmas` on every new connection to a database file.
    pub fn new(pragmas: Pragmas) -> VerifiedPragmas {
        VerifiedPragmas { pragmas, in_memory: false, read_only: false }
    }

    /// A store's: in memory there is no journal file or mmap to verify; a read-only
    /// store verifies only what it sets.
    pub(crate) fn for_store(pragmas: Pragmas, in_memory: bool, read_only: bool) -> VerifiedPragmas {
        VerifiedPragmas { pragmas, in_memory, read_only }
    }

    pub fn pragmas(&self) -> &Pragmas {
        &self.pragmas
    }

    /// What `on_acquire` does: apply the per-connection pragmas, then verify.
    pub fn ready(&self, conn: &Connection) -> Result<()> {
        self.pragmas.apply_connection(conn)?;
        if self.read_only {
            self.pragmas.verify_connection_scope(conn)
        } else {
            self.pragmas.verify(conn, self.in_memory)
        }
    }
}

/// For the store's pool (`pool::StoreManager`, whose errors are this crate's).
impl CustomizeConnection<Connection, Error> for VerifiedPragmas {
    fn on_acquire(&self, conn: &mut Connection) -> Result<()> {
        self.ready(conn)
    }
}

/// For a host's pool on r2d2_sqlite's `SqliteConnectionManager`.
impl CustomizeConnection<Connection, rusqlite::Error> for VerifiedPragmas {
    fn on_acquire(&self, conn: &mut Connection) -> rusqlite::Result<()> {
        self.ready(conn).map_err(|e| rusqlite::Error::UserFunctionError(Box::new(e)))
    }
}

/// Reads a pragma's current value as text (numbers as decimal); `unsupported` when
/// SQLite returns no row (e.g. `mmap_size` in memory).
pub fn read(conn: &Connection, name: &str) -> Result<String> {
    let value: Option<rusqlite::types::Value> =
        conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0)).optional()?;
    let Some(value) = value else { return Ok("unsupported".into()) };
    if let (true, rusqlite::types::Value::Integer(reported)) = (name.eq_ignore_ascii_case("busy_timeout"), &value) {
        // Our busy handler replaced SQLite's, which makes the pragma read 0 (`busy.rs`).
        if let Some(ms) = busy::configured(conn, *reported) {
            return Ok(ms.to_string());
        }
    }
    Ok(match value {
        rusqlite::types::Value::Integer(i) => i.to_string(),
        rusqlite::types::Value::Text(t) => t.to_ascii_lowercase(),
        rusqlite::types::Value::Real(f) => f.to_string(),
        other => format!("{other:?}"),
    })
}

/// Sets a pragma. Some pragmas (journal_mode, mmap_size) return a row, so it is run as
/// a query and the row ignored. `busy_timeout` installs the store's busy handler
/// (`busy.rs`) with that budget instead of SQLite's. `name` and `value` come from the
/// normalised table above, never from raw user text.
pub fn set_raw(conn: &Connection, name: &str, value: &str) -> Result<()> {
    if name == "busy_timeout" {
        let ms = value.parse().map_err(|_| Error::invalid("pragma busy_timeout", format!("value {value:?}")))?;
        return busy::install(conn, ms);
    }
    let mut stmt = conn.prepare(&format!("PRAGMA {name} = {value}"))?;
    let mut rows = stmt.query([])?;
    while rows.next()?.is_some() {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_normalised() {
        let p = Pragmas::default();
        assert_eq!(p.get("auto_vacuum"), Some("2"));
        assert_eq!(p.get("journal_mode"), Some("wal"));
        assert_eq!(p.get("synchronous"), Some("1"));
        assert_eq!(p.get("foreign_keys"), Some("1"));
        assert_eq!(p.get("temp_store"), Some("2"));
        assert_eq!(p.get("busy_timeout"), Some("5000"));
        assert_eq!(p.settings()[0].name, "auto_vacuum");
    }

    #[test]
    fn unknown_names_and_values_are_named() {
        let mut p = Pragmas::default();
        let e = p.set("jurnal_mode", "wal").unwrap_err().to_string();
        assert!(e.contains("jurnal_mode"), "{e}");
        let e = p.set("synchronous", "sometimes").unwrap_err().to_string();
        assert!(e.contains("synchronous") && e.contains("sometimes"), "{e}");
        let e = p.set("cache_size", "1; DROP TABLE x").unwrap_err().to_string();
        assert!(e.contains("integer"), "{e}");
        // Values SQLite would not read back as given can never verify.
        for (name, value) in
            [("mmap_size", "1099511627776"), ("mmap_size", "-1"), ("cache_size", "2147483648"), ("busy_timeout", "-5")]
        {
            let e = p.set(name, value).unwrap_err().to_string();
            assert!(e.contains(name) && e.contains(value), "{e}");
        }
    }

    #[test]
    fn overrides_and_unset() {
        let mut p = Pragmas::default();
        p.set("SYNCHRONOUS", "full").unwrap().set("mmap_size", "0").unwrap();
        p.unset("busy_timeout").unwrap();
        assert_eq!(p.get("synchronous"), Some("2"));
        assert_eq!(p.get("mmap_size"), Some("0"));
        assert_eq!(p.get("busy_timeout"), None);
        p.set("busy_timeout", "10").unwrap();
        assert_eq!(p.settings().last().map(|s| s.name), Some("busy_timeout"));
    }

    #[test]
    fn verify_reports_the_mismatch() {
        let conn = Connection::open_in_memory().unwrap();
        let p = Pragmas::default();
        p.apply_connection(&conn).unwrap();
        // auto_vacuum was not applied to this connection, so verification must fail on it.
        match p.verify(&conn, true) {
            Err(Error::Pragma { pragma, wanted, actual }) => {
                assert_eq!((pragma.as_str(), wanted.as_str(), actual.as_str()), ("auto_vacuum", "2", "0"));
            }
            other => panic!("expected a pragma error, got {other:?}"),
        }
    }
}
