//! A user's statement (`execute`, `query`, a transaction block's statements) never
//! begins, ends or nests a transaction: the engine owns those. Inside a write-lane
//! group a `COMMIT` would persist the members before it, which the lane, seeing the
//! transaction gone, would then run again — an acknowledged write stored twice; and
//! autocommit looks the same after a COMMIT as after a rollback, so it cannot be
//! detected afterwards. So it is refused before it runs, twice over: by its leading
//! keyword ([`crate::statement`]), and by an authorizer on every connection that denies
//! SQLite's transaction and savepoint actions while a user statement is prepared —
//! SQLite's parser decides what the text is, whatever its spelling.

use std::cell::Cell;

use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::Connection;

use crate::error::Result;
use crate::statement::{self, Dialect};

thread_local! {
    /// Whether this thread is preparing or running a user's statement.
    static IN_USER_SQL: Cell<bool> = const { Cell::new(false) };
    /// What the authorizer denied during the current user statement.
    static DENIED: Cell<Option<&'static str>> = const { Cell::new(None) };
}

/// Installs the authorizer on a connection the pool will hand out.
pub(crate) fn install(conn: &Connection) -> Result<()> {
    conn.authorizer(Some(|ctx: AuthContext<'_>| {
        if !IN_USER_SQL.get() {
            return Authorization::Allow;
        }
        let what = match ctx.action {
            AuthAction::Transaction { .. } => "BEGIN/COMMIT/END/ROLLBACK",
            AuthAction::Savepoint { .. } => "SAVEPOINT/RELEASE/ROLLBACK TO",
            _ => return Authorization::Allow,
        };
        DENIED.set(Some(what));
        Authorization::Deny
    }))?;
    Ok(())
}

/// Runs `f`, which prepares and runs the user's statement `sql`, with transaction
/// control refused: by keyword before anything is prepared, else by the authorizer
/// (a typed [`Error::Transaction`] naming the statement either way).
pub(crate) fn run<T>(sql: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    if let Some(keyword) = statement::transaction_control(sql, Dialect::Sqlite) {
        return Err(statement::refused(&keyword, sql));
    }
    authorized(sql, f)
}

/// [`run`] without the keyword scan: only the authorizer stands in the way.
fn authorized<T>(sql: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            IN_USER_SQL.set(self.0);
        }
    }
    let restore = Restore(IN_USER_SQL.replace(true));
    DENIED.set(None);
    let result = f();
    drop(restore);
    match (result, DENIED.take()) {
        (Err(_), Some(what)) => Err(statement::refused(what, sql)),
        (result, _) => result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    fn conn() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        install(&conn).unwrap();
        conn.execute_batch("CREATE TABLE t (x)").unwrap();
        conn
    }

    #[test]
    fn the_authorizer_refuses_every_spelling_and_the_engines_own_statements_run() {
        let conn = conn();
        conn.execute_batch("BEGIN").unwrap();
        let user = |sql: &str| authorized(sql, || Ok(conn.prepare(sql)?.execute([])?));
        for sql in [
            "COMMIT",
            ";COMMIT",
            "/**/COMMIT",
            " ;\n-- x\nrollback",
            "END",
            ";SAVEPOINT a",
            "; release a",
            "INSERT INTO t VALUES (1); COMMIT",
            "BEGIN",
        ] {
            let r = user(sql);
            assert!(matches!(&r, Err(Error::Transaction(m)) if m.contains("cannot run")), "{sql:?}: {r:?}");
            assert!(!conn.is_autocommit(), "{sql:?} ended the transaction");
        }
        assert_eq!(user("INSERT INTO t VALUES (2)").unwrap(), 1);
        conn.execute_batch("SAVEPOINT s; RELEASE s; COMMIT").unwrap(); // the engine's own statements run
        assert_eq!(conn.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0)).unwrap(), 1);
    }

    #[test]
    fn the_keyword_scan_refuses_before_anything_is_prepared() {
        let conn = conn();
        let prepared = Cell::new(false);
        let r = run(" -- x\n;commit", || {
            prepared.set(true);
            Ok(conn.execute("SELECT 1", [])?)
        });
        assert!(matches!(r, Err(Error::Transaction(_))) && !prepared.get());
    }
}
