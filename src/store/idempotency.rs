//! Idempotency keys: a write given a key records it beside its row, so a repeat of the
//! call (after a timeout, a crash, a retried request) returns the first write's id and
//! writes nothing, and the same key with other content is refused naming the key.
//! Keys are store-wide and kept `idempotency_days` (they outlive the row they name).
//! "The same content" is equal canonical JSON: the write's fields with every JSON
//! value parsed and its object keys sorted, hashed with SHA-256. The digests are
//! shared by both backends; this file also holds the SQLite side of the key table.

use rusqlite::OptionalExtension;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::validate::check_id;
use crate::error::{Error, Result};
use crate::model::{NewArtifact, NewSynthesis};
use crate::sqlite::transaction::Tx;

/// How many days a key is kept unless `connect(idempotency_days=)` says otherwise.
pub const DEFAULT_IDEMPOTENCY_DAYS: i64 = 7;

/// The longest key taken (a key is a name, not a payload).
const MAX_KEY_CHARS: usize = 512;

pub(crate) const ARTIFACT: &str = "store_artifact";
pub(crate) const SYNTHESIS: &str = "store_synthesis";

pub(crate) fn check_key(name: &str, key: Option<&str>) -> Result<()> {
    let Some(key) = key else { return Ok(()) };
    check_id(name, key)?;
    if key.chars().count() > MAX_KEY_CHARS {
        return Err(Error::invalid(name, format!("is longer than {MAX_KEY_CHARS} characters")));
    }
    Ok(())
}

pub(crate) fn check_days(days: i64) -> Result<()> {
    if !(1..=36_500).contains(&days) {
        return Err(Error::invalid(
            "idempotency_days",
            format!("must be a whole number of days from 1 to 36500, got {days}"),
        ));
    }
    Ok(())
}

/// Milliseconds a key is kept.
pub(crate) fn keep_ms(days: i64) -> i64 {
    days.saturating_mul(86_400_000)
}

/// Canonical JSON text of `value`: object keys sorted, no whitespace (whatever order
/// serde_json's map keeps).
fn canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// A JSON text field as a value (parsed; text that is not JSON as a string).
fn json_field(text: Option<&str>) -> Value {
    match text {
        None => Value::Null,
        Some(t) => serde_json::from_str(t).unwrap_or_else(|_| Value::String(t.to_owned())),
    }
}

fn digest(value: &Value) -> String {
    let mut text = String::new();
    canonical(value, &mut text);
    Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn artifact_digest(a: &NewArtifact) -> String {
    digest(&serde_json::json!({
        "spec_id": a.spec_id, "stage": a.stage, "agent_name": a.agent_name,
        "content": json_field(Some(&a.content_json)), "response_text": a.response_text,
        "run_id": a.run_id, "model_version": a.model_version,
    }))
}

/// A synthesis's content; the claim it is written under is not content (a repeat after
/// the claim was renewed or lost is still the same write).
pub(crate) fn synthesis_digest(s: &NewSynthesis) -> String {
    digest(&serde_json::json!({
        "spec_id": s.spec_id, "stage": s.stage, "output_markdown": s.output_markdown,
        "output_path": s.output_path, "status": s.status, "artifacts_count": s.artifacts_count,
        "agreements": json_field(s.agreements.as_deref()), "conflicts": json_field(s.conflicts.as_deref()),
        "degraded": s.degraded, "run_id": s.run_id,
    }))
}

pub(crate) fn conflict(key: &str, operation: &str, found_operation: &str) -> Error {
    let message = if operation == found_operation {
        format!("an earlier {operation} with this key had different content (keys are store-wide)")
    } else {
        format!("the key was used by an earlier {found_operation}, this is a {operation} (keys are store-wide)")
    };
    Error::IdempotencyConflict { key: key.to_owned(), message }
}

/// A key's live record in the table: the first write's id, or a conflict.
pub(crate) fn lookup(tx: &Tx, key: &str, operation: &str, digest: &str, now: i64, keep: i64) -> Result<Option<i64>> {
    let found: Option<(String, String, i64)> = tx
        .prepare_cached(
            "SELECT operation, digest, row_id FROM consensus_idempotency WHERE key = ?1 AND created_at_ms > ?2",
        )?
        .query_row(rusqlite::params![key, now.saturating_sub(keep)], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    match found {
        None => Ok(None),
        Some((op, d, id)) if op == operation && d == digest => Ok(Some(id)),
        Some((op, _, _)) => Err(conflict(key, operation, &op)),
    }
}

/// Records a key for the row just written (an expired record of it is replaced).
pub(crate) fn record(tx: &Tx, key: &str, operation: &str, digest: &str, row_id: i64, now: i64) -> Result<()> {
    tx.prepare_cached(
        "INSERT OR REPLACE INTO consensus_idempotency (key, operation, digest, row_id, created_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(rusqlite::params![key, operation, digest, row_id, now])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_canonical_json_is_the_same_content_and_anything_else_is_not() {
        let a = NewArtifact { content_json: r#"{"b": 1, "a": [1, {"y": 2, "x": 1}]}"#.into(), ..Default::default() };
        let same = NewArtifact { content_json: r#"{"a":[1,{"x":1,"y":2}],"b":1}"#.into(), ..Default::default() };
        let other = NewArtifact { content_json: r#"{"a":[1,{"x":1,"y":2}],"b":2}"#.into(), ..Default::default() };
        assert_eq!(artifact_digest(&a), artifact_digest(&same));
        assert_ne!(artifact_digest(&a), artifact_digest(&other));
        let keyed = NewArtifact { idempotency_key: Some("k".into()), ..a.clone() };
        assert_eq!(artifact_digest(&a), artifact_digest(&keyed), "the key is not content");
    }
}
