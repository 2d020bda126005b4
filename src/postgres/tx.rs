//! Transactions and raw SQL on PostgreSQL. Raw `execute`/`query` take PostgreSQL's own
//! SQL (`$1`, `$2`, … placeholders; no translation). Parameters arrive as the SQLite
//! value types the bindings make, and are converted to what the statement declares.

use postgres::types::{ToSql, Type};
use rusqlite::types::Value;

use super::map_error;
use super::pool::{Pooled, Session};
use crate::error::{Error, Result};
use crate::sqlite::transaction::Params;
use crate::statement::{self, Dialect};

/// An open transaction on one pooled connection; dropped without `commit`, it rolls back.
pub struct PgTx {
    conn: Option<Pooled>,
    read_only: bool,
    savepoints: u32,
    failed: bool,
}

impl PgTx {
    pub(super) fn new(conn: Pooled, read_only: bool) -> PgTx {
        PgTx { conn: Some(conn), read_only, savepoints: 0, failed: false }
    }

    fn session(&mut self) -> Result<&mut Session> {
        match self.conn.as_mut() {
            Some(c) => {
                c.check_origin()?;
                Ok(c.session())
            }
            None => Err(Error::Transaction("the transaction has ended".into())),
        }
    }

    /// Runs `f`; a lost connection ends the transaction (nothing of it committed).
    fn guarded<T>(&mut self, f: impl FnOnce(&mut Session) -> Result<T>) -> Result<T> {
        let r = f(self.session()?);
        if let Err(e) = &r {
            if matches!(e, Error::ConnectionLost(_)) {
                if let Some(mut c) = self.conn.take() {
                    c.discard();
                }
                return Err(Error::Transaction(format!(
                    "the connection to PostgreSQL was lost inside the transaction, which is rolled back: {e}"
                )));
            }
            self.failed = true;
        }
        r
    }

    pub fn execute_params(&mut self, sql: &str, params: &Params) -> Result<usize> {
        if self.read_only {
            return Err(Error::ReadOnly("execute through a read-only store".into()));
        }
        self.guarded(|s| execute(s, sql, params))
    }

    /// One statement for every parameter row, prepared once.
    pub fn execute_many_params(&mut self, sql: &str, rows: &[Params]) -> Result<usize> {
        if self.read_only {
            return Err(Error::ReadOnly("executemany through a read-only store".into()));
        }
        self.guarded(|s| {
            let mut n = 0;
            for p in rows {
                n += execute(s, sql, p)?;
            }
            Ok(n)
        })
    }

    pub fn query_params(&mut self, sql: &str, params: &Params) -> Result<Vec<Vec<Value>>> {
        self.guarded(|s| query(s, sql, params))
    }

    /// [`PgTx::query_params`] with the result's column names.
    pub fn query_columns(&mut self, sql: &str, params: &Params) -> Result<(Vec<String>, Vec<Vec<Value>>)> {
        self.guarded(|s| query_columns(s, sql, params))
    }

    /// `lastval()`: the last value a sequence (an identity key) handed out in this session.
    pub fn last_insert_rowid(&mut self) -> Result<i64> {
        self.guarded(|s| Ok(s.client.query_one("SELECT lastval()", &[])?.get(0)))
    }

    pub fn savepoint(&mut self) -> Result<String> {
        self.savepoints += 1;
        let name = format!("cdb_sp_{}", self.savepoints);
        let sql = format!("SAVEPOINT {name}");
        self.guarded(|s| Ok(s.client.batch_execute(&sql)?))?;
        Ok(name)
    }

    pub fn release(&mut self, name: &str) -> Result<()> {
        let sql = format!("RELEASE SAVEPOINT {name}");
        self.guarded(|s| Ok(s.client.batch_execute(&sql)?))
    }

    pub fn rollback_to(&mut self, name: &str) -> Result<()> {
        let sql = format!("ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}");
        self.guarded(|s| Ok(s.client.batch_execute(&sql)?))?;
        self.failed = false;
        Ok(())
    }

    /// Commits. A connection lost during COMMIT leaves the outcome unknown: it is not retried.
    pub fn commit(mut self) -> Result<()> {
        let Some(mut conn) = self.conn.take() else {
            return Err(Error::Transaction("the transaction has ended".into()));
        };
        conn.check_origin()?;
        let (committed, cancelled) =
            conn.session().bounded(true, "COMMIT", |s| Ok(s.client.batch_execute("COMMIT")?));
        if cancelled {
            conn.discard(); // a cancel may still reach the server: never reuse it
        }
        match committed {
            Err(Error::ConnectionLost(m)) => {
                conn.discard();
                Err(Error::OutcomeUnknown(format!(
                    "the connection to PostgreSQL was lost during COMMIT ({m}): the transaction may or may not have \
                     committed, and it is not repeated"
                )))
            }
            other => other,
        }
    }

    pub fn rollback(mut self) -> Result<()> {
        if let Some(mut conn) = self.conn.take() {
            conn.check_origin()?;
            if let Err(e) = conn.session().client.batch_execute("ROLLBACK") {
                conn.discard();
                return match map_error(&e) {
                    // A lost connection rolls back by itself.
                    Error::ConnectionLost(_) => Ok(()),
                    other => Err(other),
                };
            }
        }
        Ok(())
    }
}

impl Drop for PgTx {
    fn drop(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            // In a forked child the transaction is the parent's: left alone, not rolled back.
            if conn.check_origin().is_ok() && conn.session().client.batch_execute("ROLLBACK").is_err() {
                conn.discard();
            }
        }
    }
}

/// A SQLite-typed value as the type the statement declares for it.
fn convert(i: usize, v: &Value, ty: &Type) -> Result<Box<dyn ToSql + Sync>> {
    let bad = |what: &str| {
        Error::invalid(format!("params[{i}]"), format!("{what} cannot be bound to a parameter of type {}", ty.name()))
    };
    Ok(match v {
        Value::Null => match *ty {
            Type::INT2 => Box::new(None::<i16>),
            Type::INT4 => Box::new(None::<i32>),
            Type::INT8 => Box::new(None::<i64>),
            Type::FLOAT4 => Box::new(None::<f32>),
            Type::FLOAT8 => Box::new(None::<f64>),
            Type::BOOL => Box::new(None::<bool>),
            Type::BYTEA => Box::new(None::<Vec<u8>>),
            Type::JSON | Type::JSONB => Box::new(None::<serde_json::Value>),
            _ => Box::new(None::<String>),
        },
        Value::Integer(n) => match *ty {
            Type::INT2 => Box::new(i16::try_from(*n).map_err(|_| bad(&format!("{n} (out of smallint range)")))?),
            Type::INT4 => Box::new(i32::try_from(*n).map_err(|_| bad(&format!("{n} (out of integer range)")))?),
            Type::INT8 => Box::new(*n),
            Type::FLOAT4 => Box::new(*n as f32),
            Type::FLOAT8 => Box::new(*n as f64),
            Type::BOOL => Box::new(*n != 0),
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => Box::new(n.to_string()),
            Type::JSON | Type::JSONB => Box::new(serde_json::Value::from(*n)),
            _ => return Err(bad("an int")),
        },
        Value::Real(x) => match *ty {
            Type::FLOAT4 => Box::new(*x as f32),
            Type::FLOAT8 => Box::new(*x),
            Type::TEXT | Type::VARCHAR | Type::BPCHAR => Box::new(x.to_string()),
            _ => return Err(bad("a float")),
        },
        Value::Text(s) => match *ty {
            Type::JSON | Type::JSONB => Box::new(
                serde_json::from_str::<serde_json::Value>(s)
                    .map_err(|e| bad(&format!("text that is not JSON ({e})")))?,
            ),
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => Box::new(s.clone()),
            _ => return Err(bad("a str")),
        },
        Value::Blob(b) => match *ty {
            Type::BYTEA => Box::new(b.clone()),
            _ => return Err(bad("bytes")),
        },
    })
}

fn positional(params: &Params) -> Result<&[Value]> {
    match params {
        Params::Positional(v) => Ok(v),
        Params::Named(_) => Err(Error::invalid(
            "params",
            "named parameters do not apply on PostgreSQL: write $1, $2, … and pass a sequence",
        )),
    }
}

/// Prepares a user's statement and converts its parameters. Transaction control is
/// refused here, before anything is sent: the extended protocol takes one statement
/// per call, and its leading keyword (past semicolons and nested comments) says what
/// it is.
fn bind(s: &mut Session, sql: &str, params: &Params) -> Result<(postgres::Statement, Vec<Box<dyn ToSql + Sync>>)> {
    if let Some(keyword) = statement::transaction_control(sql, Dialect::Postgres) {
        return Err(statement::refused(&keyword, sql));
    }
    let values = positional(params)?;
    let stmt = s.prepared_raw(sql)?;
    if stmt.params().len() != values.len() {
        return Err(Error::invalid(
            "params",
            format!("the statement takes {} parameters, {} were given", stmt.params().len(), values.len()),
        ));
    }
    let boxed =
        values.iter().zip(stmt.params()).enumerate().map(|(i, (v, t))| convert(i, v, t)).collect::<Result<Vec<_>>>()?;
    Ok((stmt, boxed))
}

pub(super) fn execute(s: &mut Session, sql: &str, params: &Params) -> Result<usize> {
    let (stmt, boxed) = bind(s, sql, params)?;
    let refs: Vec<&(dyn ToSql + Sync)> = boxed.iter().map(|b| b.as_ref()).collect();
    match s.client.execute(&stmt, &refs) {
        Ok(n) => Ok(n as usize),
        Err(e) => {
            s.forget_raw(sql);
            Err(e.into())
        }
    }
}

pub(super) fn query(s: &mut Session, sql: &str, params: &Params) -> Result<Vec<Vec<Value>>> {
    query_columns(s, sql, params).map(|(_, rows)| rows)
}

/// [`query`] with the result's column names (known from the statement, rows or not).
pub(super) fn query_columns(s: &mut Session, sql: &str, params: &Params) -> Result<(Vec<String>, Vec<Vec<Value>>)> {
    let (stmt, boxed) = bind(s, sql, params)?;
    let names = stmt.columns().iter().map(|c| c.name().to_string()).collect();
    let refs: Vec<&(dyn ToSql + Sync)> = boxed.iter().map(|b| b.as_ref()).collect();
    let rows = s.client.query(&stmt, &refs).map_err(|e| {
        s.forget_raw(sql);
        crate::error::Error::from(e)
    })?;
    let rows = rows
        .iter()
        .map(|r| r.columns().iter().enumerate().map(|(i, c)| column(r, i, c.type_())).collect::<Result<Vec<_>>>())
        .collect::<Result<_>>()?;
    Ok((names, rows))
}

/// A result column as the value types SQLite returns (BOOL as 0/1, JSON as its text).
fn column(r: &postgres::Row, i: usize, ty: &Type) -> Result<Value> {
    let get_err = |e: postgres::Error| Error::Sqlite(format!("PostgreSQL: column {i}: {e}"));
    Ok(match *ty {
        Type::INT2 => {
            r.try_get::<_, Option<i16>>(i).map_err(get_err)?.map_or(Value::Null, |v| Value::Integer(v.into()))
        }
        Type::INT4 => {
            r.try_get::<_, Option<i32>>(i).map_err(get_err)?.map_or(Value::Null, |v| Value::Integer(v.into()))
        }
        Type::INT8 => r.try_get::<_, Option<i64>>(i).map_err(get_err)?.map_or(Value::Null, Value::Integer),
        Type::OID => r.try_get::<_, Option<u32>>(i).map_err(get_err)?.map_or(Value::Null, |v| Value::Integer(v.into())),
        Type::FLOAT4 => r.try_get::<_, Option<f32>>(i).map_err(get_err)?.map_or(Value::Null, |v| Value::Real(v.into())),
        Type::FLOAT8 => r.try_get::<_, Option<f64>>(i).map_err(get_err)?.map_or(Value::Null, Value::Real),
        Type::BOOL => {
            r.try_get::<_, Option<bool>>(i).map_err(get_err)?.map_or(Value::Null, |v| Value::Integer(v.into()))
        }
        Type::BYTEA => r.try_get::<_, Option<Vec<u8>>>(i).map_err(get_err)?.map_or(Value::Null, Value::Blob),
        Type::JSON | Type::JSONB => r
            .try_get::<_, Option<serde_json::Value>>(i)
            .map_err(get_err)?
            .map_or(Value::Null, |v| Value::Text(v.to_string())),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
            r.try_get::<_, Option<String>>(i).map_err(get_err)?.map_or(Value::Null, Value::Text)
        }
        ref other => {
            return Err(Error::invalid(
                "sql",
                format!(
                    "result column {i} has type {}, which the store does not return; cast it (e.g. ::text)",
                    other.name()
                ),
            ))
        }
    })
}
