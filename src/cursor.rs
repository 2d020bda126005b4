//! Keyset paging, the same on both backends: each listing (`query_artifacts`,
//! `query_agent_executions`, `query_extraction_failures`) returns its rows in one total
//! order; a row's position in it is an opaque cursor token (the rows' `cursor`), and a
//! [`Page`] asks for at most `limit` rows after or before such a position, in either order.
//!
//! The orders, oldest first (newest first is the exact reverse):
//! - artifacts: (time in ms, source — new-schema rows before legacy ones at one time —, id).
//!   Ids alone would not do: the two schemas number their rows independently, and a
//!   legacy time has whole seconds only, so many rows share one.
//! - executions and extraction failures: (`spawned_at`, `agent_id`).
//!
//! A position never moves: rows inserted between two pages land before or after it, and a
//! legacy row the store copies into the new tables keeps its time (its copy sorts just
//! before it). So every row present when a first page was read is returned exactly once
//! by the pages that follow it.
//!
//! A token is `c1` and the hex of a JSON array: the listing, a hash of its scope (spec, and
//! stage where the listing has one) and the key. It is opaque to callers; a token of
//! another listing or scope, or one this store did not make, is refused, naming it.

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::model::{AgentExecution, Artifact, ExtractionFailure, SOURCE_LEGACY};

const PREFIX: &str = "c1";

/// Which listing a cursor belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Listing {
    Artifacts,
    Executions,
    Failures,
}

impl Listing {
    fn tag(self) -> &'static str {
        match self {
            Listing::Artifacts => "a",
            Listing::Executions => "e",
            Listing::Failures => "f",
        }
    }

    fn query(self) -> &'static str {
        match self {
            Listing::Artifacts => "query_artifacts",
            Listing::Executions => "query_agent_executions",
            Listing::Failures => "query_extraction_failures",
        }
    }

    fn from_tag(tag: &str) -> Option<Listing> {
        [Listing::Artifacts, Listing::Executions, Listing::Failures].into_iter().find(|l| l.tag() == tag)
    }
}

/// An artifact's position: (time in ms, source rank — 0 new schema, 1 legacy —, id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ArtifactKey {
    pub at_ms: i64,
    pub source: i64,
    pub id: i64,
}

impl ArtifactKey {
    pub fn of(a: &Artifact) -> ArtifactKey {
        ArtifactKey { at_ms: a.created_at_ms, source: source_rank(a.source), id: a.id }
    }
}

/// The rank of a source in the artifacts' order: new-schema rows first at one time.
pub fn source_rank(source: &str) -> i64 {
    i64::from(source == SOURCE_LEGACY)
}

/// An execution's (or extraction failure's) position: (`spawned_at`, `agent_id`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecutionKey {
    pub spawned_at: String,
    pub agent_id: String,
}

/// The cursor of an artifact row (`Artifact.cursor`).
pub fn artifact_cursor(a: &Artifact) -> String {
    let k = ArtifactKey::of(a);
    encode(Listing::Artifacts, &[&a.spec_id, &a.stage], json!([k.at_ms, k.source, k.id]))
}

/// The cursor of an execution row (`AgentExecution.cursor`); the branch is no part of
/// it: a position among a stage's executions holds for one branch's listing too.
pub fn execution_cursor(e: &AgentExecution) -> String {
    encode(Listing::Executions, &[&e.spec_id, &e.stage], json!([e.spawned_at, e.agent_id]))
}

/// The cursor of an extraction failure (`ExtractionFailure.cursor`).
pub fn failure_cursor(f: &ExtractionFailure) -> String {
    encode(Listing::Failures, &[&f.spec_id], json!([f.spawned_at, f.agent_id]))
}

/// What a listing call asks for. The default is every row, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Page {
    pub newest_first: bool,
    /// At most this many rows (None: all). Zero is an empty page.
    pub limit: Option<usize>,
    /// Only the rows that come after this cursor in the page's order (the next page).
    pub after: Option<String>,
    /// Only the rows that come before this cursor in the page's order (the previous
    /// page: the `limit` rows nearest it, still in the page's order).
    pub before: Option<String>,
}

/// A [`Page`] resolved against its listing: scan `descending` from `from` (exclusive),
/// keep `limit` rows, and return them reversed when the page was asked `before` a cursor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window<K> {
    pub descending: bool,
    pub from: Option<K>,
    pub limit: Option<usize>,
    pub reversed: bool,
}

impl<K> Window<K> {
    /// The rows as scanned, in the page's order.
    pub fn finish<T>(&self, mut rows: Vec<T>) -> Vec<T> {
        if let Some(limit) = self.limit {
            rows.truncate(limit);
        }
        if self.reversed {
            rows.reverse();
        }
        rows
    }

    /// LIMIT's value in SQL: -1 (SQLite) for none.
    pub fn sql_limit(&self) -> i64 {
        self.limit.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX))
    }
}

impl Page {
    /// Every row in one order: what the listings returned before pages existed.
    pub fn everything(&self) -> bool {
        self.limit.is_none() && self.after.is_none() && self.before.is_none()
    }

    pub fn artifacts(&self, spec_id: &str, stage: &str) -> Result<Window<ArtifactKey>> {
        self.window(Listing::Artifacts, &[spec_id, stage], |name, token, key| {
            let numbers: Option<Vec<i64>> = key.iter().map(Value::as_i64).collect();
            match numbers.as_deref() {
                Some(&[at_ms, source @ (0 | 1), id]) => Ok(ArtifactKey { at_ms, source, id }),
                _ => Err(not_ours(name, token)),
            }
        })
    }

    pub fn executions(&self, spec_id: &str, stage: &str) -> Result<Window<ExecutionKey>> {
        self.window(Listing::Executions, &[spec_id, stage], execution_key)
    }

    pub fn failures(&self, spec_id: &str) -> Result<Window<ExecutionKey>> {
        self.window(Listing::Failures, &[spec_id], execution_key)
    }

    fn window<K>(
        &self,
        listing: Listing,
        scope: &[&str],
        key: impl Fn(&str, &str, Vec<Value>) -> Result<K>,
    ) -> Result<Window<K>> {
        let (name, token) = match (&self.after, &self.before) {
            (Some(_), Some(before)) => {
                return Err(Error::invalid(
                    "before",
                    format!("{} given with after=: a page is after one cursor or before one, not both", shown(before)),
                ))
            }
            (Some(after), None) => ("after", Some(after)),
            (None, Some(before)) => ("before", Some(before)),
            (None, None) => ("after", None),
        };
        let from = match token {
            Some(token) => Some(key(name, token, decode(listing, scope, name, token)?)?),
            None => None,
        };
        let reversed = self.before.is_some();
        Ok(Window { descending: self.newest_first != reversed, from, limit: self.limit, reversed })
    }
}

fn execution_key(name: &str, token: &str, key: Vec<Value>) -> Result<ExecutionKey> {
    match <[Value; 2]>::try_from(key) {
        Ok([Value::String(spawned_at), Value::String(agent_id)]) => Ok(ExecutionKey { spawned_at, agent_id }),
        _ => Err(not_ours(name, token)),
    }
}

/// SQL: whether a row of source `rank` whose key is (`at`, rank, `id`) comes after the
/// cursor's key (`t`, `s`, `i`, placeholders) in a scan's direction. The leading range on
/// `at` is what an index on the time serves; the rest settles ties.
pub fn after_sql(at: &str, id: &str, rank: i64, descending: bool, [t, s, i]: [&str; 3]) -> String {
    let ties = match (descending, rank) {
        (false, 0) => format!("({s} = 0 AND {id} > {i})"),
        (false, _) => format!("{s} = 0 OR {id} > {i}"),
        (true, 0) => format!("{s} = 1 OR {id} < {i}"),
        (true, _) => format!("({s} = 1 AND {id} < {i})"),
    };
    let (cmp, strict) = if descending { ("<=", "<") } else { (">=", ">") };
    format!("({at} {cmp} {t} AND ({at} {strict} {t} OR {ties}))")
}

/// SQL: whether an execution comes after the cursor's (`t`, `i`) in a scan's direction.
pub fn execution_after_sql(descending: bool, [t, i]: [&str; 2]) -> String {
    let (cmp, strict) = if descending { ("<=", "<") } else { (">=", ">") };
    format!("(spawned_at {cmp} {t} AND (spawned_at {strict} {t} OR agent_id {strict} {i}))")
}

/// FNV-1a over the scope's strings: the same on every build and backend.
fn scope_hash(scope: &[&str]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, part) in scope.iter().enumerate() {
        let sep: &[u8] = if i == 0 { b"" } else { b"\x01" };
        for &b in sep.iter().chain(part.as_bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

fn encode(listing: Listing, scope: &[&str], key: Value) -> String {
    let body = json!([listing.tag(), scope_hash(scope), key]).to_string();
    let mut token = String::with_capacity(PREFIX.len() + 2 * body.len());
    token.push_str(PREFIX);
    for b in body.bytes() {
        token.push_str(&format!("{b:02x}"));
    }
    token
}

/// The key a token holds, once it is known to be a cursor of this listing and scope.
fn decode(listing: Listing, scope: &[&str], name: &str, token: &str) -> Result<Vec<Value>> {
    let body = token
        .strip_prefix(PREFIX)
        .filter(|hex| hex.len() % 2 == 0 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .and_then(|hex| {
            let bytes: Option<Vec<u8>> =
                (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok()).collect();
            String::from_utf8(bytes?).ok()
        })
        .and_then(|text| serde_json::from_str::<Value>(&text).ok())
        .ok_or_else(|| not_ours(name, token))?;
    let Value::Array(parts) = body else { return Err(not_ours(name, token)) };
    let [Value::String(tag), Value::String(hash), Value::Array(key)] =
        <[Value; 3]>::try_from(parts).map_err(|_| not_ours(name, token))?
    else {
        return Err(not_ours(name, token));
    };
    let found = Listing::from_tag(&tag).ok_or_else(|| not_ours(name, token))?;
    if found != listing {
        return Err(Error::invalid(
            name,
            format!("{} is a cursor of {}, not of {}", shown(token), found.query(), listing.query()),
        ));
    }
    if hash != scope_hash(scope) {
        let what = if scope.len() == 2 { "spec/stage" } else { "spec" };
        return Err(Error::invalid(
            name,
            format!("{} is a cursor of another {what} than {}", shown(token), scope.join("/")),
        ));
    }
    Ok(key)
}

fn not_ours(name: &str, token: &str) -> Error {
    Error::invalid(name, format!("{} is not a cursor this store returned (a row's .cursor)", shown(token)))
}

/// A token as an error shows it: quoted, cut at 60 characters.
fn shown(token: &str) -> String {
    let cut: String = token.chars().take(60).collect();
    if cut.len() < token.len() {
        format!("{cut:?}…")
    } else {
        format!("{cut:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SOURCE_V1;

    fn artifact(id: i64, at: i64, source: &'static str) -> Artifact {
        Artifact {
            id,
            spec_id: "S".into(),
            stage: "plan".into(),
            agent_name: "gemini".into(),
            content_json: "{}".into(),
            response_text: None,
            run_id: None,
            created_at_ms: at,
            model_version: None,
            source,
        }
    }

    #[test]
    fn a_token_round_trips_to_its_key() {
        let a = artifact(7, 1_000, SOURCE_LEGACY);
        let page = Page { after: Some(artifact_cursor(&a)), limit: Some(3), ..Page::default() };
        let w = page.artifacts("S", "plan").unwrap();
        assert_eq!(w.from, Some(ArtifactKey { at_ms: 1_000, source: 1, id: 7 }));
        assert!(!w.descending && !w.reversed);
        let back = Page { before: Some(artifact_cursor(&artifact(7, 1_000, SOURCE_V1))), ..Page::default() };
        let w = back.artifacts("S", "plan").unwrap();
        assert_eq!(w.from.unwrap().source, 0);
        assert!(w.descending && w.reversed);
    }

    #[test]
    fn foreign_and_garbled_tokens_are_refused_by_name() {
        let token = artifact_cursor(&artifact(1, 1, SOURCE_V1));
        let other_stage = Page { after: Some(token.clone()), ..Page::default() }.artifacts("S", "tasks");
        assert!(matches!(other_stage, Err(Error::InvalidInput { ref name, ref message })
            if name == "after" && message.contains("another spec/stage")));
        let wrong_listing = Page { before: Some(token.clone()), ..Page::default() }.executions("S", "plan");
        assert!(matches!(wrong_listing, Err(Error::InvalidInput { ref name, ref message })
            if name == "before" && message.contains("a cursor of query_artifacts")));
        for bad in ["", "c1", "c1zz", "c15b5d", "x", &token[..token.len() - 2], "c17b7d"] {
            let got = Page { after: Some(bad.into()), ..Page::default() }.artifacts("S", "plan");
            assert!(
                matches!(got, Err(Error::InvalidInput { ref message, .. }) if message.contains("not a cursor")),
                "{bad}"
            );
        }
        let both = Page { after: Some(token.clone()), before: Some(token), ..Page::default() }.artifacts("S", "plan");
        assert!(matches!(both, Err(Error::InvalidInput { ref name, .. }) if name == "before"));
    }
}
