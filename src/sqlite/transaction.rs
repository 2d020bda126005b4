//! Transactions on a pooled connection: deferred / immediate / exclusive, commit on
//! success, rollback on error or drop, nested savepoints, batch execution.

use std::ops::Deref;
use std::str::FromStr;
use std::sync::OnceLock;

use rusqlite::types::Value;
use rusqlite::{params_from_iter, Connection, Statement};

use crate::error::{Error, Result};
use crate::sqlite::busy;
use crate::sqlite::pool::Conn;
use crate::sqlite::user_sql;
use crate::statement::excerpt;

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
///
/// Every statement run through it is checked afterwards: when SQLite ended the
/// transaction by itself (an `INSERT OR ROLLBACK` conflict, an automatic rollback after
/// a full disk), the `Tx` is spent and every later call fails with
/// [`Error::Transaction`] — nothing after that point runs in autocommit and persists.
/// Transaction control (`BEGIN`, `COMMIT`, `END`, `ROLLBACK`, `SAVEPOINT`, `RELEASE`,
/// however spelt) is refused before it runs (`user_sql`): use `commit`/`rollback` and
/// `savepoint`.
pub struct Tx {
    conn: Conn,
    savepoints: Vec<String>,
    finished: bool,
    /// Why the transaction ended underneath this `Tx`, once it has.
    ended: OnceLock<String>,
    /// Held until the transaction ends, dropped after the connection went back to the
    /// pool: the write lane's hold, for an explicit write transaction.
    pub(crate) _lane: Option<Box<dyn Send>>,
}

/// Rows as SQLite values, column by column.
pub type Rows = Vec<Vec<Value>>;

/// A statement's parameter values: by position, or by name as `sqlite3` and `apsw` bind
/// a mapping (`:x`, `@x` and `$x` all take the value named `x`).
#[derive(Clone, Debug, PartialEq)]
pub enum Params {
    Positional(Vec<Value>),
    Named(Vec<(String, Value)>),
}

impl From<Vec<Value>> for Params {
    fn from(values: Vec<Value>) -> Self {
        Params::Positional(values)
    }
}

impl Params {
    /// The values in the statement's parameter order. A named value the statement does
    /// not use is ignored (as in `sqlite3`); a parameter without a value is an error.
    fn in_order<'a>(&'a self, stmt: &Statement<'_>) -> Result<Vec<&'a Value>> {
        let named = match self {
            Params::Positional(values) => return Ok(values.iter().collect()),
            Params::Named(named) => named,
        };
        (1..=stmt.parameter_count())
            .map(|i| match stmt.parameter_name(i) {
                Some(name) if !name.starts_with('?') => {
                    let key = &name[1..];
                    named.iter().find(|(k, _)| k == key).map(|(_, v)| v).ok_or_else(|| {
                        Error::invalid(
                            "params",
                            format!("no value for the statement's parameter {name} (give the key {key:?})"),
                        )
                    })
                }
                other => Err(Error::invalid(
                    "params",
                    format!(
                        "the statement's parameter {i} ({}) is positional: pass a sequence, not a mapping",
                        other.unwrap_or("?")
                    ),
                )),
            })
            .collect()
    }
}

impl Tx {
    pub fn begin(conn: Conn, behavior: Behavior) -> Result<Tx> {
        // Cached like any statement: parsing BEGIN and COMMIT anew is a few percent of
        // a single-row write.
        conn.prepare_cached(behavior.begin_sql())?.execute([])?;
        Ok(Tx { conn, savepoints: Vec::new(), finished: false, ended: OnceLock::new(), _lane: None })
    }

    /// Whether SQLite ended the transaction underneath this `Tx` (see [`Tx`]).
    pub fn is_ended(&self) -> bool {
        self.ended.get().is_some()
    }

    /// Refuses to run anything once the transaction has ended.
    fn check_usable(&self) -> Result<()> {
        self.check_origin()?;
        if let Some(why) = self.ended.get() {
            return Err(Error::Transaction(format!("{why}; nothing more runs in this transaction block")));
        }
        Ok(())
    }

    /// After a statement: if SQLite left the transaction, remember why (the caller
    /// still gets the statement's own error, if it had one).
    fn after<T>(&self, sql: &str, result: Result<T>) -> Result<T> {
        if !self.conn.is_autocommit() {
            return result;
        }
        let why = match &result {
            Err(e) => format!("SQLite rolled the transaction back at {:?} ({e})", excerpt(sql)),
            Ok(_) => format!("the transaction ended at {:?}", excerpt(sql)),
        };
        let _ = self.ended.set(why.clone());
        match result {
            Err(e) => Err(e),
            Ok(_) => Err(Error::Transaction(why)),
        }
    }

    /// `ForkedProcessError` in a process forked after the transaction began: its
    /// connection is the parent's.
    pub fn check_origin(&self) -> Result<()> {
        self.conn.check_origin()
    }

    /// Runs one statement; returns the number of rows changed.
    pub fn execute(&self, sql: &str, params: &[Value]) -> Result<usize> {
        self.check_usable()?;
        let result = user_sql::run(sql, || Ok(self.conn.prepare_cached(sql)?.execute(params_from_iter(params))?));
        self.after(sql, result)
    }

    /// [`Tx::execute`] with positional or named parameters.
    pub fn execute_params(&self, sql: &str, params: &Params) -> Result<usize> {
        self.check_usable()?;
        let result = user_sql::run(sql, || {
            let mut stmt = self.conn.prepare_cached(sql)?;
            let values = params.in_order(&stmt)?;
            Ok(stmt.execute(params_from_iter(values))?)
        });
        self.after(sql, result)
    }

    /// Runs one statement once per parameter row (prepared once); returns rows changed.
    pub fn execute_many(&self, sql: &str, rows: &[Vec<Value>]) -> Result<usize> {
        self.check_usable()?;
        user_sql::run(sql, || {
            let mut stmt = self.conn.prepare_cached(sql)?;
            let mut changed = 0;
            for (i, row) in rows.iter().enumerate() {
                let result = stmt.execute(params_from_iter(row)).map_err(|e| in_row(i, e.into()));
                changed += self.after(sql, result)?;
            }
            Ok(changed)
        })
    }

    /// [`Tx::execute_many`] with positional or named parameters per row.
    pub fn execute_many_params(&self, sql: &str, rows: &[Params]) -> Result<usize> {
        self.check_usable()?;
        user_sql::run(sql, || {
            let mut stmt = self.conn.prepare_cached(sql)?;
            let mut changed = 0;
            for (i, row) in rows.iter().enumerate() {
                let values = row.in_order(&stmt).map_err(|e| in_row(i, e))?;
                let result = stmt.execute(params_from_iter(values)).map_err(|e| in_row(i, e.into()));
                changed += self.after(sql, result)?;
            }
            Ok(changed)
        })
    }

    pub fn query(&self, sql: &str, params: &[Value]) -> Result<Rows> {
        self.check_usable()?;
        let result = user_sql::run(sql, || query(&self.conn, sql, params));
        self.after(sql, result)
    }

    /// [`Tx::query`] with positional or named parameters.
    pub fn query_params(&self, sql: &str, params: &Params) -> Result<Rows> {
        self.check_usable()?;
        let result = user_sql::run(sql, || query_params(&self.conn, sql, params));
        self.after(sql, result)
    }

    /// [`Tx::query_params`] and the result's column names.
    pub fn query_columns(&self, sql: &str, params: &Params) -> Result<(Vec<String>, Rows)> {
        self.check_usable()?;
        let result = user_sql::run(sql, || query_columns(&self.conn, sql, params));
        self.after(sql, result)
    }

    pub fn last_insert_rowid(&self) -> i64 {
        self.conn.last_insert_rowid()
    }

    /// Opens a nested savepoint; returns its name for `release` / `rollback_to`.
    pub fn savepoint(&mut self) -> Result<String> {
        self.check_usable()?;
        let name = format!("sp{}", self.savepoints.len() + 1);
        self.conn.execute_batch(&format!("SAVEPOINT {name}"))?;
        self.savepoints.push(name.clone());
        Ok(name)
    }

    /// Keeps the innermost savepoint's work (part of the enclosing transaction).
    pub fn release(&mut self, name: &str) -> Result<()> {
        self.check_usable()?;
        self.pop_savepoint(name)?;
        self.conn.execute_batch(&format!("RELEASE {name}"))?;
        Ok(())
    }

    /// Undoes the innermost savepoint's work only. After SQLite ended the transaction
    /// there is nothing left to undo: a no-op.
    pub fn rollback_to(&mut self, name: &str) -> Result<()> {
        if self.is_ended() {
            return Ok(());
        }
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

    /// Commits; fails with [`Error::Transaction`] if SQLite already ended the transaction.
    pub fn commit(mut self) -> Result<()> {
        self.check_origin()?;
        self.finished = true;
        self.check_usable()?;
        if let Err(e) = self.conn.prepare_cached("COMMIT").and_then(|mut commit| commit.execute([])) {
            let _ = self.conn.execute_batch("ROLLBACK");
            return Err(e.into());
        }
        Ok(())
    }

    /// Rolls back (nothing to do if SQLite already did).
    pub fn rollback(mut self) -> Result<()> {
        self.check_origin()?;
        self.finished = true;
        if !self.conn.is_autocommit() {
            self.conn.execute_batch("ROLLBACK")?;
        }
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

/// Says which row of a batch an invalid-input error is about.
fn in_row(i: usize, e: Error) -> Error {
    match e {
        Error::InvalidInput { name, message } => Error::invalid(format!("{name} of row {i}"), message),
        other => other,
    }
}

/// Prepares a user's query (`PRAGMA busy_timeout` reads as configured: `busy.rs`).
fn prepare_user<'c>(conn: &'c Connection, sql: &str) -> Result<rusqlite::CachedStatement<'c>> {
    let answered = busy::read_as_configured(conn, sql);
    Ok(conn.prepare_cached(answered.as_deref().unwrap_or(sql))?)
}

pub(crate) fn query(conn: &Connection, sql: &str, params: &[Value]) -> Result<Rows> {
    let mut stmt = prepare_user(conn, sql)?;
    collect_rows(&mut stmt, params_from_iter(params))
}

pub(crate) fn query_params(conn: &Connection, sql: &str, params: &Params) -> Result<Rows> {
    let mut stmt = prepare_user(conn, sql)?;
    let values = params.in_order(&stmt)?;
    collect_rows(&mut stmt, params_from_iter(values))
}

/// [`query_params`] and the result's column names (from the same prepared statement).
pub(crate) fn query_columns(conn: &Connection, sql: &str, params: &Params) -> Result<(Vec<String>, Rows)> {
    let mut stmt = prepare_user(conn, sql)?;
    let values = params.in_order(&stmt)?;
    let rows = collect_rows(&mut stmt, params_from_iter(values))?;
    // Read after the first step: a cached statement whose tables changed (`SELECT *`
    // after `ALTER TABLE … ADD COLUMN`) is prepared again by SQLite as it steps.
    let columns = stmt.column_names().into_iter().map(String::from).collect();
    Ok((columns, rows))
}

fn collect_rows(stmt: &mut Statement<'_>, params: impl rusqlite::Params) -> Result<Rows> {
    let mut rows = stmt.query(params)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        // The width of this row: a statement prepared again while stepping (its tables
        // changed since it was cached) may have more columns than before it ran.
        let width = row.as_ref().column_count();
        out.push((0..width).map(|i| row.get::<_, Value>(i)).collect::<Result<_, _>>()?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_select_star_sees_a_column_added_since_it_was_cached() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (a INTEGER); INSERT INTO t VALUES (1)").unwrap();
        let none = Params::Positional(vec![]);
        assert_eq!(
            query_columns(&conn, "SELECT * FROM t", &none).unwrap(),
            (vec!["a".into()], vec![vec![Value::Integer(1)]])
        );
        conn.execute_batch("ALTER TABLE t ADD COLUMN b TEXT").unwrap();
        let (columns, rows) = query_columns(&conn, "SELECT * FROM t", &none).unwrap();
        assert_eq!(columns, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(rows, vec![vec![Value::Integer(1), Value::Null]]);
        assert_eq!(query_params(&conn, "SELECT * FROM t", &none).unwrap(), rows);
    }

    #[test]
    fn named_params_bind_by_name_and_a_missing_one_is_named() {
        let conn = Connection::open_in_memory().unwrap();
        let named = Params::Named(vec![("b".into(), Value::Integer(2)), ("a".into(), Value::Text("one".into()))]);
        let rows = query_params(&conn, "SELECT :a, @b, $a", &named).unwrap();
        assert_eq!(rows, vec![vec![Value::Text("one".into()), Value::Integer(2), Value::Text("one".into())]]);
        let positional = Params::Positional(vec![Value::Integer(1), Value::Integer(2)]);
        assert_eq!(
            query_params(&conn, "SELECT :x, :y", &positional).unwrap(),
            vec![vec![Value::Integer(1), Value::Integer(2)]]
        );
        match query_params(&conn, "SELECT :a, :c", &named) {
            Err(Error::InvalidInput { name, message }) => {
                assert!(name == "params" && message.contains(":c"), "{message}")
            }
            other => panic!("expected an invalid-input error, got {other:?}"),
        }
        assert!(matches!(query_params(&conn, "SELECT ?", &named), Err(Error::InvalidInput { .. })));
    }
}
