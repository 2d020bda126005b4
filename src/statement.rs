//! What a user's statement is, read from its text: its leading keywords past
//! whitespace, empty statements (`;`) and comments. Both backends refuse transaction
//! control in `execute`/`query` and in transaction blocks with it, before the statement
//! reaches the server; SQLite also denies it in an authorizer (`sqlite::user_sql`),
//! which sees what SQLite's own parser made of the text.

/// How a backend's comments nest: PostgreSQL nests `/* … */`, SQLite does not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// Skips whitespace, `;` and comments at the start of `sql`.
fn skip_filler(sql: &str, dialect: Dialect) -> &str {
    let mut rest = sql;
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == ';');
        if let Some(after) = rest.strip_prefix("--") {
            // PostgreSQL ends a line comment at `\r` too (SQLite only at `\n`: refusing more there is harmless).
            rest = after.find(['\n', '\r']).map_or("", |end| &after[end + 1..]);
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = skip_block_comment(after, dialect);
        } else {
            return rest;
        }
    }
}

/// The text after the block comment whose `/*` was just consumed (an unterminated
/// comment runs to the end).
fn skip_block_comment(mut rest: &str, dialect: Dialect) -> &str {
    let mut depth = 1;
    while depth > 0 {
        let close = rest.find("*/");
        let open = if dialect == Dialect::Postgres { rest.find("/*") } else { None };
        match (open, close) {
            (Some(o), Some(c)) if o < c => {
                depth += 1;
                rest = &rest[o + 2..];
            }
            (_, Some(c)) => {
                depth -= 1;
                rest = &rest[c + 2..];
            }
            (_, None) => return "",
        }
    }
    rest
}

/// The first word of `sql` (ASCII letters), past whitespace, `;` and comments.
fn next_word(sql: &str, dialect: Dialect) -> (&str, &str) {
    let rest = skip_filler(sql, dialect);
    let end = rest.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(rest.len());
    (&rest[..end], &rest[end..])
}

/// Words that begin, end or nest a transaction when they open a statement.
const CONTROL: [&str; 8] = ["BEGIN", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE", "START", "ABORT"];

/// The transaction-control keyword that opens `sql` (upper case), if it is one:
/// `BEGIN`, `COMMIT`, `END`, `ROLLBACK`, `SAVEPOINT`, `RELEASE` (both backends),
/// `START`, `ABORT` and `PREPARE TRANSACTION` (PostgreSQL), whatever the case and
/// whatever whitespace, semicolons or comments come before it.
pub fn transaction_control(sql: &str, dialect: Dialect) -> Option<String> {
    let (first, rest) = next_word(sql, dialect);
    let first = first.to_ascii_uppercase();
    if CONTROL.contains(&first.as_str()) {
        return Some(first);
    }
    if first == "PREPARE" && next_word(rest, dialect).0.eq_ignore_ascii_case("TRANSACTION") {
        return Some("PREPARE TRANSACTION".into());
    }
    None
}

/// A short, printable form of a statement for messages.
pub fn excerpt(sql: &str) -> String {
    let one_line = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(80) {
        Some((cut, _)) => format!("{}...", &one_line[..cut]),
        None => one_line,
    }
}

/// The error for a statement refused because it controls the transaction.
pub fn refused(keyword: &str, sql: &str) -> crate::error::Error {
    crate::error::Error::Transaction(format!(
        "{keyword} cannot run inside a transaction block or through execute()/query() ({:?}): the store begins, \
         commits and rolls back its own transactions (use `with db.transaction()`, and `tx.savepoint()` to nest)",
        excerpt(sql)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_is_found_past_semicolons_comments_whitespace_and_case() {
        for sql in [
            "COMMIT",
            ";COMMIT",
            " ; ;\n\tcommit;",
            "/**/COMMIT",
            "-- a note\nROLLBACK",
            "/* a */ -- b\n ; end",
            "SaVePoInT x",
            "release x",
            "begin immediate",
            "-- x\rCOMMIT",
            "--\rBEGIN",
        ] {
            assert!(transaction_control(sql, Dialect::Sqlite).is_some(), "{sql:?}");
            assert!(transaction_control(sql, Dialect::Postgres).is_some(), "{sql:?}");
        }
        assert_eq!(transaction_control(";START TRANSACTION", Dialect::Postgres).as_deref(), Some("START"));
        assert_eq!(
            transaction_control("/* x */ prepare\ttransaction 'a'", Dialect::Postgres).as_deref(),
            Some("PREPARE TRANSACTION")
        );
        for sql in ["SELECT 1", "INSERT INTO t VALUES (1)", "PREPARE q AS SELECT 1", "", ";;", "/* COMMIT */ SELECT 1"]
        {
            assert_eq!(transaction_control(sql, Dialect::Postgres), None, "{sql:?}");
        }
    }

    #[test]
    fn comments_nest_on_postgres_only() {
        let sql = "/* outer /* inner */ COMMIT */ SELECT 1";
        // PostgreSQL reads one comment, then SELECT; SQLite ends the comment at the first `*/`.
        assert_eq!(transaction_control(sql, Dialect::Postgres), None);
        assert_eq!(transaction_control(sql, Dialect::Sqlite).as_deref(), Some("COMMIT"));
        assert_eq!(transaction_control("/* never closed COMMIT", Dialect::Sqlite), None);
    }
}
