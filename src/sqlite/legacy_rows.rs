//! Legacy rows as they really are: valid SQLite, not always what the code expects.
//! SQLite columns are loosely typed, and twenty years of writers have put a BLOB in
//! `content_json`, `'yes'` in `degraded` or epoch seconds in `created_at`. One such row
//! must not hide its neighbours: readers and migrations convert what is convertible
//! (here, in one place), and [`problems`] lists every row that needed it, for the
//! upgrade report.

use rusqlite::types::ValueRef;
use rusqlite::{Connection, Row};

use crate::error::Result;
use crate::sqlite::schema::table_exists;

/// Numbers this large in a timestamp column are milliseconds, not seconds (year 5138).
const MS_THRESHOLD: f64 = 1e11;

/// SQL for a legacy timestamp as Unix milliseconds: `YYYY-MM-DD HH:MM:SS` text (UTC),
/// or a number of Unix seconds (milliseconds when very large); 0 when unreadable.
pub(crate) fn ms_sql(col: &str) -> String {
    format!(
        "CASE WHEN typeof({col}) IN ('integer', 'real')
              THEN CAST(ROUND(CASE WHEN abs({col}) >= {MS_THRESHOLD} THEN {col} ELSE {col} * 1000.0 END) AS INTEGER)
              ELSE COALESCE(CAST(ROUND((julianday({col}) - 2440587.5) * 86400000.0) AS INTEGER), 0) END"
    )
}

/// SQL for a legacy row's time in ms: the exact one this store kept (`created_at_ms`,
/// which old files lack: `has_exact` false), else its legacy timestamp.
pub(crate) fn created_ms_sql(alias: &str, has_exact: bool) -> String {
    let legacy = ms_sql(&format!("{alias}.created_at"));
    if has_exact {
        format!("COALESCE({alias}.created_at_ms, {legacy})")
    } else {
        legacy
    }
}

/// SQL for Unix milliseconds as a legacy timestamp (`YYYY-MM-DD HH:MM:SS`, UTC).
pub(crate) fn text_from_ms_sql(ms: &str) -> String {
    format!("strftime('%Y-%m-%d %H:%M:%S', {ms} / 1000, 'unixepoch')")
}

/// Words a hand-written `degraded` may hold, read as true.
const TRUE_WORDS: &str = "'1', 'true', 't', 'yes', 'y', 'on'";
/// ... and as false; anything else is read as false and listed by [`problems`].
const FALSE_WORDS: &str = "'0', 'false', 'f', 'no', 'n', 'off', ''";

/// SQL for a legacy boolean as 0 or 1.
pub(crate) fn bool_sql(col: &str) -> String {
    format!(
        "CASE WHEN {col} IS NULL THEN 0 WHEN typeof({col}) IN ('integer', 'real') THEN ({col} != 0)
              WHEN lower(trim(CAST({col} AS TEXT))) IN ({TRUE_WORDS}) THEN 1 ELSE 0 END"
    )
}

/// SQL for a legacy text column as text (a BLOB's bytes, a number's digits).
pub(crate) fn text_sql(col: &str) -> String {
    format!("CAST({col} AS TEXT)")
}

/// A text column read whatever SQLite holds there: bytes that are not UTF-8 are
/// replaced (U+FFFD) rather than failing the whole query.
pub(crate) fn text(r: &Row, i: usize) -> rusqlite::Result<Option<String>> {
    Ok(match r.get_ref(i)? {
        ValueRef::Null => None,
        ValueRef::Text(b) | ValueRef::Blob(b) => Some(String::from_utf8_lossy(b).into_owned()),
        ValueRef::Integer(n) => Some(n.to_string()),
        ValueRef::Real(f) => Some(f.to_string()),
    })
}

/// An integer column that may hold a real or digits as text; anything else is None.
pub(crate) fn integer(r: &Row, i: usize) -> rusqlite::Result<Option<i64>> {
    Ok(match r.get_ref(i)? {
        ValueRef::Integer(n) => Some(n),
        ValueRef::Real(f) => Some(f as i64),
        ValueRef::Text(b) => std::str::from_utf8(b).ok().and_then(|s| s.trim().parse().ok()),
        ValueRef::Null | ValueRef::Blob(_) => None,
    })
}

/// A NOT NULL text column: as [`text`], empty when NULL.
pub(crate) fn text_or_empty(r: &Row, i: usize) -> rusqlite::Result<String> {
    Ok(text(r, i)?.unwrap_or_default())
}

report! {
    /// One legacy row whose value needed converting or could not be read as meant.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct Problem {
        pub table: String,
        pub id: i64,
        pub column: String,
        /// What was found and what the store makes of it.
        pub problem: String,
    }
}

/// Every legacy artifact/synthesis row a reader or migration has to convert, and how.
pub fn problems(conn: &Connection) -> Result<Vec<Problem>> {
    let mut found = Vec::new();
    let checks: [(&str, &str, String); 8] = [
        ("consensus_artifacts", "content_json", blob_or_invalid_json("content_json")),
        ("consensus_artifacts", "created_at", timestamp_problem("created_at")),
        ("consensus_synthesis", "output_markdown", blob_problem("output_markdown")),
        ("consensus_synthesis", "agreements", blob_problem("agreements")),
        ("consensus_synthesis", "conflicts", blob_problem("conflicts")),
        ("consensus_synthesis", "status", blob_problem("status")),
        (
            "consensus_synthesis",
            "degraded",
            format!(
                "CASE WHEN degraded IS NULL OR typeof(degraded) IN ('integer', 'real') THEN NULL
                      WHEN lower(trim(CAST(degraded AS TEXT))) IN ({TRUE_WORDS}) THEN 'the text ' || quote(degraded) || ', read as true'
                      WHEN lower(trim(CAST(degraded AS TEXT))) IN ({FALSE_WORDS}) THEN 'the text ' || quote(degraded) || ', read as false'
                      ELSE 'the text ' || quote(degraded) || ' means neither true nor false; read as false' END"
            ),
        ),
        ("consensus_synthesis", "created_at", timestamp_problem("created_at")),
    ];
    for (table, column, problem_sql) in checks {
        if !table_exists(conn, table)? {
            continue;
        }
        let mut stmt = conn.prepare(&format!(
            "SELECT id, problem FROM (SELECT id, {problem_sql} AS problem FROM {table}) WHERE problem IS NOT NULL ORDER BY id"
        ))?;
        let rows = stmt.query_map([], |r| {
            Ok(Problem { table: table.into(), id: r.get(0)?, column: column.into(), problem: r.get(1)? })
        })?;
        for row in rows {
            found.push(row?);
        }
    }
    Ok(found)
}

fn blob_problem(col: &str) -> String {
    format!("CASE WHEN typeof({col}) = 'blob' THEN 'a BLOB of ' || length({col}) || ' bytes, read as text' END")
}

fn blob_or_invalid_json(col: &str) -> String {
    format!(
        "CASE WHEN typeof({col}) = 'blob' THEN 'a BLOB of ' || length({col}) || ' bytes, read as text'
              WHEN NOT json_valid({col}) THEN 'not valid JSON: ' || quote(substr({col}, 1, 40)) END"
    )
}

fn timestamp_problem(col: &str) -> String {
    format!(
        "CASE WHEN typeof({col}) IN ('integer', 'real')
                THEN 'the number ' || {col} || ', read as Unix ' ||
                     CASE WHEN abs({col}) >= {MS_THRESHOLD} THEN 'milliseconds' ELSE 'seconds' END
              WHEN {col} IS NULL THEN 'missing; read as 1970-01-01 00:00:00'
              WHEN julianday({col}) IS NULL THEN 'not a date: ' || quote(substr({col}, 1, 40)) || '; read as 1970-01-01 00:00:00'
         END"
    )
}
