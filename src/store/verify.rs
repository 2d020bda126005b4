//! The rolling upgrade's consistency check: the legacy tables against the new ones,
//! spec/stage by spec/stage, in one read snapshot. Rows pair as the dual-schema reader
//! pairs them — by link (`legacy_artifact_id`, `legacy_synthesis_id`), then unlinked
//! copies by the twin rule — and are compared as the API returns them.

use std::sync::atomic::Ordering;

use rusqlite::Connection;
use sha2::{Digest, Sha256};

use super::database::Database;
use super::legacy::{legacy_artifacts, legacy_synthesis_row, Columns};
use crate::error::Result;
use crate::model::*;
use crate::sqlite::legacy_rows::{self, bool_sql};
use crate::sqlite::schema::synthesis_from_text;
use crate::sqlite::schema::PAIR_WINDOW_MS;

impl Database {
    /// Compares the two schemas; writes nothing. See [`SchemaReport`].
    pub fn verify_schemas(&self) -> Result<SchemaReport> {
        let has_legacy = self.layout.legacy_artifacts.load(Ordering::Acquire)
            && self.layout.legacy_synthesis.load(Ordering::Acquire);
        let reason = if !self.layout.new_tables.load(Ordering::Acquire) && !self.layout.stale.load(Ordering::Acquire) {
            Some("the file has no new tables (schema version 0): only the legacy schema, nothing to compare")
        } else if !has_legacy {
            Some("the file has no legacy tables (a new file, or schema version 2): only the new schema, nothing to compare")
        } else if !self.layout.current.load(Ordering::Acquire) {
            Some("the new tables are not in the current layout: open the file with migrate=True first")
        } else {
            None
        };
        if let Some(reason) = reason {
            return Ok(SchemaReport { reason: Some(reason.to_owned()), consistent: true, ..Default::default() });
        }
        let columns = *self.layout.columns.read();
        self.read(|conn| {
            // One snapshot for both sides: a writer between two reads would look like a mismatch.
            conn.execute_batch("BEGIN")?;
            let report = compare(conn, columns);
            let _ = conn.execute_batch("ROLLBACK");
            report
        })
    }
}

fn compare(conn: &Connection, columns: Columns) -> Result<SchemaReport> {
    let mut groups_stmt = conn.prepare(
        "SELECT spec_id, stage FROM consensus_artifacts UNION SELECT spec_id, stage FROM consensus_synthesis
         UNION SELECT spec_id, stage FROM consensus_runs ORDER BY 1, 2",
    )?;
    let keys: Vec<(String, String)> = groups_stmt
        .query_map([], |r| Ok((legacy_rows::text_or_empty(r, 0)?, legacy_rows::text_or_empty(r, 1)?)))?
        .collect::<Result<_, _>>()?;
    let mut report = SchemaReport { comparable: true, ..Default::default() };
    for (spec, stage) in &keys {
        let legacy = legacy_artifacts(conn, spec, stage, false, columns)?;
        let new = new_artifacts(conn, spec, stage)?;
        let (l, v): (Vec<_>, Vec<_>) = (
            legacy.iter().map(Side::from_artifact).collect(),
            new.iter().map(|(a, link)| (Side::from_artifact(a), *link)).collect(),
        );
        check(&mut report, "artifacts", spec, stage, l, v, &ARTIFACT_FIELDS);
        let legacy = legacy_syntheses(conn, spec, stage, columns)?;
        let new = new_syntheses(conn, spec, stage)?;
        let (l, v): (Vec<_>, Vec<_>) = (
            legacy.iter().map(Side::from_synthesis).collect(),
            new.iter().map(|(s, link)| (Side::from_synthesis(s), *link)).collect(),
        );
        check(&mut report, "syntheses", spec, stage, l, v, &SYNTHESIS_FIELDS);
    }
    report.consistent = report.mismatches.is_empty() && report.groups.iter().all(|g| g.matches);
    Ok(report)
}

const ARTIFACT_FIELDS: [&str; 6] =
    ["agent_name", "content_json", "response_text", "run_id", "created_at", "model_version"];
const SYNTHESIS_FIELDS: [&str; 9] = [
    "output_markdown",
    "output_path",
    "status",
    "artifacts_count",
    "agreements",
    "conflicts",
    "degraded",
    "run_id",
    "created_at",
];

/// A row as compared: its id, what the twin rule looks at, and its fields in the
/// order of `ARTIFACT_FIELDS` / `SYNTHESIS_FIELDS` (timestamps to the second, the
/// legacy format's precision; JSON text normalized).
#[derive(Clone, Debug)]
struct Side {
    id: i64,
    at_ms: i64,
    twin_key: (String, String),
    fields: Vec<Option<String>>,
}

/// What a twin takes from its legacy copy when it has none: `run_id` and
/// `response_text`, which the reader fills in.
const FILLED: [&str; 2] = ["response_text", "run_id"];

impl Side {
    fn from_artifact(a: &Artifact) -> Side {
        Side {
            id: a.id,
            at_ms: a.created_at_ms,
            twin_key: (a.agent_name.clone(), a.content_json.clone()),
            fields: vec![
                Some(a.agent_name.clone()),
                Some(a.content_json.clone()),
                a.response_text.clone(),
                a.run_id.clone(),
                Some(a.created_at_ms.div_euclid(1000).to_string()),
                a.model_version.clone(),
            ],
        }
    }

    fn from_synthesis(s: &Synthesis) -> Side {
        Side {
            id: s.id,
            at_ms: s.created_at_ms,
            twin_key: (s.output_markdown.clone(), String::new()),
            fields: vec![
                Some(s.output_markdown.clone()),
                s.output_path.clone(),
                Some(s.status.clone()),
                s.artifacts_count.map(|n| n.to_string()),
                s.agreements.as_deref().map(json_normalized),
                s.conflicts.as_deref().map(json_normalized),
                Some(s.degraded.to_string()),
                s.run_id.clone(),
                Some(s.created_at_ms.div_euclid(1000).to_string()),
            ],
        }
    }

    fn canonical(&self) -> String {
        serde_json::to_string(&self.fields).unwrap_or_default()
    }
}

/// JSON text as one spelling (`["a", "b"]` and `["a","b"]` are one list); other text as is.
fn json_normalized(text: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(value) => value.to_string(),
        Err(_) => text.to_owned(),
    }
}

fn check(
    report: &mut SchemaReport,
    kind: &'static str,
    spec: &str,
    stage: &str,
    legacy: Vec<Side>,
    mut new: Vec<(Side, Option<i64>)>,
    fields: &[&'static str],
) {
    if legacy.is_empty() && new.is_empty() {
        return;
    }
    let mut paired = vec![false; new.len()];
    let mut unpaired_legacy = Vec::new();
    let mut mismatches = Vec::new();
    let mismatch = |problem, legacy_id, v1_id, fields| SchemaMismatch {
        kind,
        spec_id: spec.to_owned(),
        stage: stage.to_owned(),
        problem,
        legacy_id,
        v1_id,
        fields,
    };
    let mut pairs = Vec::new();
    for (li, l) in legacy.iter().enumerate() {
        match new.iter().position(|(_, link)| *link == Some(l.id)) {
            Some(vi) if !paired[vi] => {
                paired[vi] = true;
                pairs.push((li, vi, false));
            }
            _ => unpaired_legacy.push(li),
        }
    }
    // Unlinked copies (a predecessor's dual-write build): the reader's twin rule.
    for li in unpaired_legacy {
        let l = &legacy[li];
        let twin = (0..new.len())
            .filter(|&vi| !paired[vi] && new[vi].1.is_none())
            .filter(|&vi| new[vi].0.twin_key == l.twin_key && (new[vi].0.at_ms - l.at_ms).abs() <= PAIR_WINDOW_MS)
            .min_by_key(|&vi| ((new[vi].0.at_ms - l.at_ms).abs(), new[vi].0.id));
        match twin {
            Some(vi) => {
                paired[vi] = true;
                pairs.push((li, vi, true));
            }
            None => mismatches.push(mismatch("legacy_only", Some(l.id), None, Vec::new())),
        }
    }
    for &(li, vi, twin) in &pairs {
        // Two copies written a moment apart (a predecessor's dual write, paired by the
        // twin rule or linked since) can straddle a second: within the pairing window
        // their times agree, whichever second each shows.
        let close_in_time = (new[vi].0.at_ms - legacy[li].at_ms).abs() <= PAIR_WINDOW_MS;
        for (i, name) in fields.iter().enumerate() {
            let take = match *name {
                "created_at" => close_in_time,
                name => twin && FILLED.contains(&name) && new[vi].0.fields[i].is_none(),
            };
            if take {
                new[vi].0.fields[i].clone_from(&legacy[li].fields[i]);
            }
        }
        let differ: Vec<&'static str> = fields
            .iter()
            .enumerate()
            .filter(|&(i, _)| legacy[li].fields[i] != new[vi].0.fields[i])
            .map(|(_, &name)| name)
            .collect();
        if !differ.is_empty() {
            mismatches.push(mismatch("differs", Some(legacy[li].id), Some(new[vi].0.id), differ));
        }
    }
    for (vi, (v, _)) in new.iter().enumerate() {
        if !paired[vi] {
            mismatches.push(mismatch("v1_only", None, Some(v.id), Vec::new()));
        }
    }
    let legacy_hash = hash(legacy.iter());
    let new_hash = hash(new.iter().map(|(v, _)| v));
    report.groups.push(SchemaGroup {
        kind,
        spec_id: spec.to_owned(),
        stage: stage.to_owned(),
        legacy_count: legacy.len(),
        v1_count: new.len(),
        matches: legacy.len() == new.len() && legacy_hash == new_hash,
        legacy_hash,
        v1_hash: new_hash,
    });
    report.mismatches.extend(mismatches);
}

fn hash<'a>(rows: impl Iterator<Item = &'a Side>) -> String {
    let mut canonical: Vec<String> = rows.map(Side::canonical).collect();
    canonical.sort_unstable();
    let mut digest = Sha256::new();
    for row in canonical {
        digest.update(row.as_bytes());
        digest.update(b"\n");
    }
    digest.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn new_artifacts(conn: &Connection, spec: &str, stage: &str) -> Result<Vec<(Artifact, Option<i64>)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT o.id, o.agent_name, o.content, o.response_text, r.orchestrator_run_id, o.output_timestamp,
                o.model_version, o.legacy_artifact_id
         FROM consensus_runs r JOIN agent_outputs o ON o.run_id = r.id WHERE r.spec_id = ?1 AND r.stage = ?2",
    )?;
    let rows = stmt.query_map([spec, stage], |r| {
        let artifact = Artifact {
            id: r.get(0)?,
            spec_id: spec.to_owned(),
            stage: stage.to_owned(),
            agent_name: legacy_rows::text_or_empty(r, 1)?,
            content_json: legacy_rows::text_or_empty(r, 2)?,
            response_text: legacy_rows::text(r, 3)?,
            run_id: r.get(4)?,
            created_at_ms: r.get(5)?,
            model_version: r.get(6)?,
            source: SOURCE_V1,
        };
        Ok((artifact, r.get(7)?))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn legacy_syntheses(conn: &Connection, spec: &str, stage: &str, columns: Columns) -> Result<Vec<Synthesis>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT id, output_markdown, output_path, status, artifacts_count, agreements, conflicts, {}, {}, {}
         FROM consensus_synthesis s WHERE spec_id = ?1 AND stage = ?2",
        bool_sql("degraded"),
        columns.synthesis_run_id,
        Columns::legacy_created("s", columns.synthesis_created_ms)
    ))?;
    let rows = stmt.query_map([spec, stage], |r| legacy_synthesis_row(r, spec, stage))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn new_syntheses(conn: &Connection, spec: &str, stage: &str) -> Result<Vec<(Synthesis, Option<i64>)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, synthesis_json, COALESCE(degraded, 0), orchestrator_run_id,
                COALESCE(synthesized_at, run_timestamp), legacy_synthesis_id
         FROM consensus_runs WHERE spec_id = ?1 AND stage = ?2 AND synthesis_json IS NOT NULL",
    )?;
    let rows = stmt.query_map([spec, stage], |r| {
        let raw = legacy_rows::text(r, 1)?.unwrap_or_default();
        let s = synthesis_from_text(&raw, r.get(0)?, spec, stage, r.get(2)?, r.get(3)?, r.get(4)?);
        Ok((s, r.get(5)?))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_text_has_one_spelling_and_hashes_ignore_order() {
        assert_eq!(json_normalized(r#"["a", "b"]"#), json_normalized(r#"["a","b"]"#));
        assert_eq!(json_normalized("not json"), "not json");
        let row = |id, text: &str| Side { id, at_ms: 0, twin_key: Default::default(), fields: vec![Some(text.into())] };
        let (a, b) = (row(1, "x"), row(2, "y"));
        assert_eq!(hash([&a, &b].into_iter()), hash([&b, &a].into_iter()));
        assert_ne!(hash([&a].into_iter()), hash([&b].into_iter()));
        assert_eq!(hash(std::iter::empty()).len(), 64);
    }
}
