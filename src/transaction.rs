//! Transactions on a pooled connection: deferred / immediate / exclusive, commit on
//! success, rollback on error or drop, nested savepoints, batch execution.

use std::ops::Deref;
use std::str::FromStr;

use rusqlite::types::Value;
use rusqlite::{params_from_iter, Connection};

use crate::db::{Conn, Database};
use crate::error::{Error, Result};

/// How a transaction takes its locks. Writes use `Immediate`: a deferred transaction
/// that reads then writes fails with SQLITE_BUSY at once, busy_timeout notwithstanding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Behavior {
    Deferred,
    #[default]
    Immediate,
    Exclusive,
}

impl FromStr for Behavior {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "deferred" => Ok(Behavior::Deferred),
            "immediate" => Ok(Behavior::Immediate),
            "exclusive" => Ok(Behavior::Exclusive),
            _ => Err(Error::invalid(
                "behavior",
                format!("unknown transaction behaviour {s:?}; expected deferred, immediate or exclusive"),
            )),
        }
    }
}

impl Behavior {
    fn begin_sql(self) -> &'static str {
        match self {
            Behavior::Deferred => "BEGIN DEFERRED",
            Behavior::Immediate => "BEGIN IMMEDIATE",
            Behavior::Exclusive => "BEGIN EXCLUSIVE",
        }
    }
}

/// An open transaction owning its pooled connection. Dropped without `commit`, it
/// rolls back. Derefs to the `rusqlite::Connection` for anything not wrapped here.
pub struct Tx {
    conn: Conn,
    savepoints: Vec<String>,
    finished: bool,
}

/// Rows as SQLite values, column by column.
pub type Rows = Vec<Vec<Value>>;

impl Tx {
    pub fn begin(conn: Conn, behavior: Behavior) -> Result<Tx> {
        conn.execute_batch(behavior.begin_sql())?;
        Ok(Tx { conn, savepoints: Vec::new(), finished: false })
    }

    /// `ForkedProcessError` in a process forked after the transaction began: its
    /// connection is the parent's.
    pub fn check_origin(&self) -> Result<()> {
        self.conn.check_origin()
    }

    /// Runs one statement; returns the number of rows changed.
    pub fn execute(&self, sql: &str, params: &[Value]) -> Result<usize> {
        self.check_origin()?;
        Ok(self.conn.prepare_cached(sql)?.execute(params_from_iter(params))?)
    }

    /// Runs one statement once per parameter row (prepared once); returns rows changed.
    pub fn execute_many(&self, sql: &str, rows: &[Vec<Value>]) -> Result<usize> {
        self.check_origin()?;
        let mut stmt = self.conn.prepare_cached(sql)?;
        let mut changed = 0;
        for (i, row) in rows.iter().enumerate() {
            changed += stmt.execute(params_from_iter(row)).map_err(|e| match Error::from(e) {
                Error::InvalidInput { name, message } => Error::invalid(format!("{name} of row {i}"), message),
                other => other,
            })?;
        }
        Ok(changed)
    }

    pub fn query(&self, sql: &str, params: &[Value]) -> Result<Rows> {
        self.check_origin()?;
        query(&self.conn, sql, params)
    }

    pub fn last_insert_rowid(&self) -> i64 {
        self.conn.last_insert_rowid()
    }

    /// Opens a nested savepoint; returns its name for `release` / `rollback_to`.
    pub fn savepoint(&mut self) -> Result<String> {
        self.check_origin()?;
        let name = format!("sp{}", self.savepoints.len() + 1);
        self.conn.execute_batch(&format!("SAVEPOINT {name}"))?;
        self.savepoints.push(name.clone());
        Ok(name)
    }

    /// Keeps the innermost savepoint's work (part of the enclosing transaction).
    pub fn release(&mut self, name: &str) -> Result<()> {
        self.pop_savepoint(name)?;
        self.conn.execute_batch(&format!("RELEASE {name}"))?;
        Ok(())
    }

    /// Undoes the innermost savepoint's work only.
    pub fn rollback_to(&mut self, name: &str) -> Result<()> {
        self.pop_savepoint(name)?;
        self.conn.execute_batch(&format!("ROLLBACK TO {name}; RELEASE {name}"))?;
        Ok(())
    }

    fn pop_savepoint(&mut self, name: &str) -> Result<()> {
        self.check_origin()?;
        match self.savepoints.last() {
            Some(last) if last == name => {
                self.savepoints.pop();
                Ok(())
            }
            _ => Err(Error::invalid("savepoint", format!("{name:?} is not the innermost open savepoint"))),
        }
    }

    pub fn commit(mut self) -> Result<()> {
        self.check_origin()?;
        self.finished = true;
        if let Err(e) = self.conn.execute_batch("COMMIT") {
            let _ = self.conn.execute_batch("ROLLBACK");
            return Err(e.into());
        }
        Ok(())
    }

    pub fn rollback(mut self) -> Result<()> {
        self.check_origin()?;
        self.finished = true;
        self.conn.execute_batch("ROLLBACK")?;
        Ok(())
    }
}

impl Deref for Tx {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.conn
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        // In a forked child the connection is the parent's: leave it alone.
        if !self.finished && self.check_origin().is_ok() && !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

pub(crate) fn query(conn: &Connection, sql: &str, params: &[Value]) -> Result<Rows> {
    let mut stmt = conn.prepare_cached(sql)?;
    let width = stmt.column_count();
    let mut rows = stmt.query(params_from_iter(params))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push((0..width).map(|i| row.get::<_, Value>(i)).collect::<Result<_, _>>()?);
    }
    Ok(out)
}

impl Database {
    /// Begins a transaction on a pooled connection, for callers that drive it step by step.
    pub fn begin(&self, behavior: Behavior) -> Result<Tx> {
        if self.read_only && behavior != Behavior::Deferred {
            return Err(Error::ReadOnly(format!("{behavior:?} transactions write; the store {:?} is read-only", self.path)));
        }
        Tx::begin(self.conn()?, behavior)
    }

    /// Runs `f` in a transaction: commit when it returns `Ok`, rollback on `Err`.
    pub fn transaction<T>(&self, behavior: Behavior, f: impl FnOnce(&Tx) -> Result<T>) -> Result<T> {
        let tx = self.begin(behavior)?;
        let value = f(&tx)?; // `tx` rolls back when dropped on this path
        tx.commit()?;
        Ok(value)
    }

    /// A write transaction (`BEGIN IMMEDIATE`).
    pub fn write<T>(&self, f: impl FnOnce(&Tx) -> Result<T>) -> Result<T> {
        self.transaction(Behavior::Immediate, f)
    }

    /// A read outside any explicit transaction (one statement, its own snapshot).
    pub fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = self.conn()?;
        f(&conn)
    }

    pub fn query(&self, sql: &str, params: &[Value]) -> Result<Rows> {
        self.read(|conn| query(conn, sql, params))
    }
}
