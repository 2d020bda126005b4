//! Legacy rows and their copies in the new tables: the twin rule that pairs a
//! predecessor's dual-write copies, the backfill (legacy -> new), the write-back (new ->
//! legacy), the emptying of one side before its tables are dropped, and the checks that no
//! row is left without its copy. Each copy is linked to its original
//! (`legacy_artifact_id`, `legacy_synthesis_id`), so a copy made twice is impossible and a
//! copy stopped midway is resumed by skipping what is linked. The migrations
//! (`migrations.rs`) run these in chunks of rows by id ([`Phase`]) and as one transaction's
//! end ([`Tails`]); the store's write and read modes call them whole.

use rusqlite::types::Value;
use rusqlite::{params, Connection, OptionalExtension};

use crate::error::{Error, Result};
use crate::model::NewSynthesis;
use crate::sqlite::legacy_rows::{bool_sql, created_ms_sql, ms_sql as legacy_ms, text_from_ms_sql, text_sql};
use crate::sqlite::schema::{
    self, column_exists, synthesis_from_text, table_exists, LEGACY_SCHEMA_SQL, PAIR_WINDOW_MS,
};

/// Whether the new tables hold rows with no link to a legacy row (a dual-write build's
/// copies, which a copy pairs with their twins first). Asked once, as a move begins.
pub(super) fn unpaired_copies(conn: &Connection) -> Result<bool> {
    if !table_exists(conn, "agent_outputs")? {
        return Ok(false);
    }
    Ok(unlinked_outputs(conn)? || unlinked_syntheses(conn)?)
}

pub(super) fn unlinked_syntheses(conn: &Connection) -> Result<bool> {
    Ok(conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM consensus_runs WHERE synthesis_json IS NOT NULL AND legacy_synthesis_id IS NULL)",
        [],
        |r| r.get(0),
    )?)
}

/// One table's share of a move's bulk: what a chunk does to the rows of an id range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// Links a dual-write build's copies to their legacy twins (only when, as the move
    /// began, the new tables held rows without a link).
    PairArtifacts,
    PairSyntheses,
    /// Legacy rows into the new tables.
    BackfillArtifacts,
    BackfillSyntheses,
    /// New-table rows into the legacy tables.
    WriteBackOutputs,
    WriteBackSyntheses,
    /// Deletes the legacy rows that have their copy, and the links to them (before the
    /// legacy tables are dropped).
    EmptyLegacyArtifacts,
    EmptyLegacySyntheses,
    /// Deletes the new rows that have their legacy copy (before the new tables are dropped).
    EmptyOutputs,
    EmptyRuns,
}

pub(super) const PHASES: usize = 10;

impl Phase {
    /// Whether the phase deletes rows (before a drop): the in-flight guard runs first.
    pub(super) fn empties(self) -> bool {
        matches!(
            self,
            Phase::EmptyLegacyArtifacts | Phase::EmptyLegacySyntheses | Phase::EmptyOutputs | Phase::EmptyRuns
        )
    }

    pub(super) fn table(self) -> &'static str {
        match self {
            Phase::PairArtifacts | Phase::BackfillArtifacts | Phase::EmptyLegacyArtifacts => "consensus_artifacts",
            Phase::PairSyntheses | Phase::BackfillSyntheses | Phase::EmptyLegacySyntheses => "consensus_synthesis",
            Phase::WriteBackOutputs | Phase::EmptyOutputs => "agent_outputs",
            Phase::WriteBackSyntheses | Phase::EmptyRuns => "consensus_runs",
        }
    }

    pub(super) fn run(self, conn: &Connection, ids: Ids) -> Result<RowsMoved> {
        let mut moved = RowsMoved::default();
        match self {
            Phase::PairArtifacts => pair_artifact_copies(conn, None, ids)?,
            Phase::PairSyntheses => pair_synthesis_copies(conn, None, ids)?,
            Phase::BackfillArtifacts => moved.artifacts_backfilled = backfill_artifacts(conn, ids)?,
            Phase::BackfillSyntheses => moved.syntheses_backfilled = backfill_syntheses(conn, ids)?,
            Phase::WriteBackOutputs => moved = write_back_outputs(conn, ids)?,
            Phase::WriteBackSyntheses => moved = write_back_syntheses(conn, ids)?,
            Phase::EmptyLegacyArtifacts => {
                empty_legacy(conn, "consensus_artifacts", "agent_outputs", "legacy_artifact_id", ids)?
            }
            Phase::EmptyLegacySyntheses => {
                empty_legacy(conn, "consensus_synthesis", "consensus_runs", "legacy_synthesis_id", ids)?
            }
            Phase::EmptyOutputs => {
                conn.execute(
                    "DELETE FROM agent_outputs WHERE id > ?1 AND id <= ?2
                       AND EXISTS (SELECT 1 FROM consensus_artifacts a WHERE a.id = agent_outputs.legacy_artifact_id)",
                    params![ids.0, ids.1],
                )?;
            }
            Phase::EmptyRuns => {
                conn.execute(
                    "DELETE FROM consensus_runs WHERE id > ?1 AND id <= ?2
                       AND NOT EXISTS (SELECT 1 FROM agent_outputs o WHERE o.run_id = consensus_runs.id)
                       AND (synthesis_json IS NULL
                            OR EXISTS (SELECT 1 FROM consensus_synthesis s WHERE s.id = consensus_runs.legacy_synthesis_id))",
                    params![ids.0, ids.1],
                )?;
            }
        }
        Ok(moved)
    }
}

/// Deletes the rows of `legacy` with ids in `ids` that have their copy in `copies`, and
/// clears the copies' links to them (a dropped table's ids are handed out again).
pub(super) fn empty_legacy(
    conn: &Connection,
    legacy: &str,
    copies: &str,
    link: &str,
    (after, last): Ids,
) -> Result<()> {
    conn.execute(
        &format!(
            "DELETE FROM {legacy} WHERE id > ?1 AND id <= ?2
               AND EXISTS (SELECT 1 FROM {copies} c WHERE c.{link} = {legacy}.id)"
        ),
        params![after, last],
    )?;
    conn.execute(
        &format!(
            "UPDATE {copies} SET {link} = NULL WHERE {link} > ?1 AND {link} <= ?2
               AND NOT EXISTS (SELECT 1 FROM {legacy} l WHERE l.id = {copies}.{link})"
        ),
        params![after, last],
    )?;
    Ok(())
}

/// The ids of one chunk: those above the first and up to the second.
pub(super) type Ids = (i64, i64);
pub(super) const ALL_IDS: Ids = (i64::MIN, i64::MAX);

/// How far a move's bulk went in each phase: its end handles the rows above. `pair`:
/// whether it pairs twins (`None`: ask the file).
#[derive(Clone, Copy, Debug)]
pub(super) struct Tails {
    pub(super) after: [i64; PHASES],
    pub(super) pair: Option<bool>,
}

impl Tails {
    /// No bulk ran: the end handles every row.
    pub(super) const NONE: Tails = Tails { after: [i64::MIN; PHASES], pair: None };

    fn rest(&self, phase: Phase) -> Ids {
        (self.after[phase as usize], i64::MAX)
    }

    fn pairs(&self, unlinked: impl FnOnce() -> Result<bool>) -> Result<bool> {
        self.pair.map_or_else(unlinked, Ok)
    }
}

/// Old databases predate some columns (added later by ALTER TABLE in the field).
pub(super) fn add_missing_legacy_columns(conn: &Connection) -> Result<()> {
    for (table, column) in [
        ("agent_executions", "run_id"),
        ("agent_executions", "extraction_error"),
        ("consensus_artifacts", "run_id"),
        ("consensus_artifacts", "response_text"),
        ("consensus_synthesis", "run_id"),
    ] {
        if table_exists(conn, table)? && !column_exists(conn, table, column)? {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} TEXT"))?;
        }
    }
    Ok(())
}

/// Columns this store adds to the legacy tables, all nullable (old binaries name their
/// columns on insert): what the legacy format cannot hold, so that rows written back
/// on a rollback come up again unchanged.
pub(super) const LEGACY_EXTRAS: &[(&str, &str, &str)] = &[
    ("consensus_artifacts", "model_version", "TEXT"),
    ("consensus_artifacts", "created_at_ms", "INTEGER"),
    ("consensus_synthesis", "created_at_ms", "INTEGER"),
];

/// Adds [`LEGACY_EXTRAS`] to the legacy tables the file has. Idempotent.
pub(crate) fn add_legacy_extras(conn: &Connection) -> Result<()> {
    for &(table, column, kind) in LEGACY_EXTRAS {
        if table_exists(conn, table)? && !column_exists(conn, table, column)? {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {kind}"))?;
        }
    }
    Ok(())
}

/// New-table rows with no legacy row: never linked, or linked to a row that is gone.
pub(super) const UNMIRRORED_OUTPUTS: &str =
    "NOT EXISTS (SELECT 1 FROM consensus_artifacts a WHERE a.id = o.legacy_artifact_id)";

/// [`UNMIRRORED_OUTPUTS`] for the artifacts `o` with ids in `ids`. Over all of them, once
/// every row has a link, as a list of the dangling links found on two indexes: tested
/// row by row it reads every row of the table.
pub(super) fn unmirrored_outputs_sql(conn: &Connection, ids: Ids) -> Result<String> {
    if ids == ALL_IDS && !unlinked_outputs(conn)? {
        return Ok("o.id IN (SELECT y.id FROM agent_outputs y WHERE y.legacy_artifact_id IS NOT NULL
                      AND NOT EXISTS (SELECT 1 FROM consensus_artifacts a WHERE a.id = y.legacy_artifact_id))"
            .to_owned());
    }
    Ok(format!("{UNMIRRORED_OUTPUTS} {}", ids_sql("o.id", ids)))
}
pub(super) const UNMIRRORED_SYNTHESES: &str = "r.synthesis_json IS NOT NULL
    AND NOT EXISTS (SELECT 1 FROM consensus_synthesis s WHERE s.id = r.legacy_synthesis_id)";

/// Writes the legacy copy of a synthesis (run `run`, at `at_ms`) and links the run to it:
/// dual write mode and the write-back share it.
pub(crate) fn copy_synthesis_to_legacy(conn: &Connection, run: i64, s: &NewSynthesis, at_ms: i64) -> Result<()> {
    conn.prepare_cached(&format!(
        "INSERT INTO consensus_synthesis (spec_id, stage, output_markdown, output_path, status, artifacts_count,
                agreements, conflicts, degraded, run_id, created_at, created_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, {}, ?11)",
        text_from_ms_sql("?11")
    ))?
    .execute(params![
        s.spec_id,
        s.stage,
        s.output_markdown,
        s.output_path,
        s.status,
        s.artifacts_count,
        s.agreements,
        s.conflicts,
        s.degraded,
        s.run_id,
        at_ms
    ])?;
    let legacy_id = conn.last_insert_rowid();
    conn.prepare_cached("UPDATE consensus_runs SET legacy_synthesis_id = ?2 WHERE id = ?1")?
        .execute(params![run, legacy_id])?;
    Ok(())
}

/// Writes every row that only the new tables hold into the legacy tables (legacy
/// timestamps, plus [`LEGACY_EXTRAS`] for what they cannot hold), linked to its copy, so
/// an old binary sees everything. Returns how many rows were written. Idempotent.
pub(crate) fn write_back(conn: &Connection) -> Result<RowsMoved> {
    write_back_after(conn, &Tails::NONE)
}

/// [`write_back`] of the rows above a bulk's `tails`.
pub(super) fn write_back_after(conn: &Connection, tails: &Tails) -> Result<RowsMoved> {
    begin_write_back(conn)?;
    // The predecessor's dual-write copies are already in both schemas, unlinked.
    if tails.pairs(|| unlinked_outputs(conn))? {
        pair_artifact_copies(conn, None, tails.rest(Phase::PairArtifacts))?;
    }
    if tails.pairs(|| unlinked_syntheses(conn))? {
        pair_synthesis_copies(conn, None, tails.rest(Phase::PairSyntheses))?;
    }
    let mut written = write_back_outputs(conn, tails.rest(Phase::WriteBackOutputs))?;
    // Every run, not only those above the chunks: a store may close an open run below
    // them with its synthesis meanwhile (the runs' table is the small one).
    written.add(write_back_syntheses(conn, ALL_IDS)?);
    verify_write_back(conn, tails)?;
    Ok(written)
}

/// That every new artifact above `tails`, and every synthesis, has its legacy copy.
pub(super) fn verify_write_back(conn: &Connection, tails: &Tails) -> Result<()> {
    let left: i64 = conn.query_row(
        &format!(
            "SELECT (SELECT count(*) FROM agent_outputs o WHERE {})
                  + (SELECT count(*) FROM consensus_runs r WHERE {UNMIRRORED_SYNTHESES})",
            unmirrored_outputs_sql(conn, tails.rest(Phase::WriteBackOutputs))?
        ),
        [],
        |r| r.get(0),
    )?;
    if left != 0 {
        return Err(Error::Migration(format!(
            "writing the new tables back into the legacy ones left {left} rows without a legacy copy"
        )));
    }
    Ok(())
}

/// That every new artifact at or below `tails` (what a bulk's chunks went through) has
/// its legacy copy: the rows above, and the syntheses, are the end's. One statement, so
/// one snapshot.
pub(super) fn verify_write_back_below(conn: &Connection, tails: &Tails) -> Result<()> {
    let outputs = tails.rest(Phase::WriteBackOutputs);
    let left: i64 = conn.query_row(
        &format!(
            "SELECT (SELECT count(*) FROM agent_outputs o WHERE {})
                  - (SELECT count(*) FROM agent_outputs o WHERE {})",
            unmirrored_outputs_sql(conn, ALL_IDS)?,
            unmirrored_outputs_sql(conn, outputs)?
        ),
        [],
        |r| r.get(0),
    )?;
    if left != 0 {
        return Err(Error::Migration(format!(
            "writing the new tables back into the legacy ones left {left} rows without a legacy copy"
        )));
    }
    Ok(())
}

/// The legacy tables with every column a written-back row needs.
pub(super) fn begin_write_back(conn: &Connection) -> Result<()> {
    conn.execute_batch(&legacy_tables_ddl())?;
    add_missing_legacy_columns(conn)?;
    add_legacy_extras(conn)
}

/// Writes back the artifacts with ids in `ids` that have no legacy copy.
pub(super) fn write_back_outputs(conn: &Connection, ids: Ids) -> Result<RowsMoved> {
    let mut outputs = conn.prepare(&format!(
        "SELECT o.id, r.spec_id, r.stage, o.agent_name, o.content, o.response_text, r.orchestrator_run_id,
                {}, o.model_version, o.output_timestamp
         FROM agent_outputs o JOIN consensus_runs r ON r.id = o.run_id
         WHERE {} ORDER BY o.id",
        text_from_ms_sql("o.output_timestamp"),
        unmirrored_outputs_sql(conn, ids)?
    ))?;
    let mut insert = conn.prepare_cached(
        "INSERT INTO consensus_artifacts (spec_id, stage, agent_name, content_json, response_text, run_id, created_at,
                model_version, created_at_ms)
         VALUES (?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    let mut link = conn.prepare_cached("UPDATE agent_outputs SET legacy_artifact_id = ?2 WHERE id = ?1")?;
    let mut written = RowsMoved::default();
    let mut rows = outputs.query([])?;
    while let Some(row) = rows.next()? {
        let values: Vec<Value> = (0..10).map(|i| row.get(i)).collect::<Result<_, _>>()?;
        insert.execute(rusqlite::params_from_iter(values.iter()))?;
        link.execute(params![values[0], conn.last_insert_rowid()])?;
        written.artifacts_written_back += 1;
    }
    Ok(written)
}

/// Writes back the syntheses of the runs with ids in `ids` that have no legacy copy.
pub(super) fn write_back_syntheses(conn: &Connection, (after, last): Ids) -> Result<RowsMoved> {
    let mut runs = conn.prepare_cached(&format!(
        "SELECT r.id, r.spec_id, r.stage, r.synthesis_json, COALESCE(r.degraded, 0), r.orchestrator_run_id,
                COALESCE(r.synthesized_at, r.run_timestamp)
         FROM consensus_runs r WHERE r.id > ?1 AND r.id <= ?2 AND {UNMIRRORED_SYNTHESES} ORDER BY r.id"
    ))?;
    let mut written = RowsMoved::default();
    let mut rows = runs.query(params![after, last])?;
    while let Some(row) = rows.next()? {
        let (id, spec, stage): (i64, String, String) = (row.get(0)?, row.get(1)?, row.get(2)?);
        let raw = crate::sqlite::legacy_rows::text(row, 3)?.unwrap_or_default();
        let s = synthesis_from_text(&raw, id, &spec, &stage, row.get(4)?, row.get(5)?, row.get(6)?);
        let new = NewSynthesis {
            spec_id: s.spec_id,
            stage: s.stage,
            output_markdown: s.output_markdown,
            output_path: s.output_path,
            status: s.status,
            artifacts_count: s.artifacts_count,
            agreements: s.agreements,
            conflicts: s.conflicts,
            degraded: s.degraded,
            run_id: s.run_id,
            ..NewSynthesis::default()
        };
        copy_synthesis_to_legacy(conn, id, &new, s.created_at_ms)?;
        written.syntheses_written_back += 1;
    }
    Ok(written)
}

/// Links to dropped legacy tables point at ids a recreated table hands out again (its
/// AUTOINCREMENT sequence went with it): at version 2 no link stands.
pub(super) fn clear_links(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "UPDATE agent_outputs SET legacy_artifact_id = NULL WHERE legacy_artifact_id IS NOT NULL;
         UPDATE consensus_runs SET legacy_synthesis_id = NULL WHERE legacy_synthesis_id IS NOT NULL;",
    )?;
    Ok(())
}

/// The legacy schema, for tables that may exist already.
pub(super) fn legacy_tables_ddl() -> String {
    LEGACY_SCHEMA_SQL
        .replace("CREATE TABLE ", "CREATE TABLE IF NOT EXISTS ")
        .replace("CREATE INDEX ", "CREATE INDEX IF NOT EXISTS ")
}

/// Brings every legacy row into the new tables exactly once, then verifies that none
/// is left out. First pairs the copies a predecessor's dual-write build put in both
/// schemas (no link between them): same spec, stage, agent and content, timestamps
/// within [`PAIR_WINDOW_MS`], one to one, nearest first. Idempotent.
pub(crate) fn backfill(conn: &Connection) -> Result<RowsMoved> {
    backfill_after(conn, &Tails::NONE)
}

/// [`backfill`] of the legacy rows above a bulk's `tails`.
pub(super) fn backfill_after(conn: &Connection, tails: &Tails) -> Result<RowsMoved> {
    let mut copied = RowsMoved::default();
    if table_exists(conn, "consensus_artifacts")? {
        if tails.pairs(|| unlinked_outputs(conn))? {
            pair_artifact_copies(conn, None, tails.rest(Phase::PairArtifacts))?;
        }
        copied.artifacts_backfilled = backfill_artifacts(conn, tails.rest(Phase::BackfillArtifacts))?;
    }
    if table_exists(conn, "consensus_synthesis")? {
        if tails.pairs(|| unlinked_syntheses(conn))? {
            pair_synthesis_copies(conn, None, tails.rest(Phase::PairSyntheses))?;
        }
        copied.syntheses_backfilled = backfill_syntheses(conn, tails.rest(Phase::BackfillSyntheses))?;
    }
    verify_backfill_after(conn, tails)?;
    Ok(copied)
}

/// The rows of one spec (`?1`), or of one of its stages (`?2`), or all rows.
pub(crate) type Scope<'a> = Option<(&'a str, Option<&'a str>)>;

pub(super) fn scope_sql(scope: Scope) -> (&'static str, Vec<Value>) {
    match scope {
        None => ("", Vec::new()),
        Some((spec, stage)) => (
            "AND spec_id = ?1 AND (?2 IS NULL OR stage = ?2)",
            vec![Value::Text(spec.into()), stage.map_or(Value::Null, |s| Value::Text(s.into()))],
        ),
    }
}

/// Links the two copies of each artifact a dual-write build wrote (see [`backfill`]).
pub(crate) fn link_artifact_copies(conn: &Connection, scope: Scope) -> Result<()> {
    let any_unlinked = match scope {
        Some(_) => {
            conn.query_row("SELECT EXISTS (SELECT 1 FROM agent_outputs WHERE legacy_artifact_id IS NULL)", [], |r| {
                r.get(0)
            })?
        }
        None => unlinked_outputs(conn)?,
    };
    if !any_unlinked {
        return Ok(());
    }
    pair_artifact_copies(conn, scope, ALL_IDS)
}

/// Whether any new artifact has no link to a legacy row, asked of two indexes: the
/// partial one on the link leaves NULL out, so a search for one reads every row of the
/// table (KB-sized contents) whenever every row is linked, as after a backfill.
pub(super) fn unlinked_outputs(conn: &Connection) -> Result<bool> {
    Ok(conn.query_row(
        "SELECT (SELECT count(*) FROM agent_outputs)
              > (SELECT count(*) FROM agent_outputs WHERE legacy_artifact_id IS NOT NULL)",
        [],
        |r| r.get(0),
    )?)
}

/// [`link_artifact_copies`] for the legacy rows with ids in `ids`, without first asking
/// whether any new row is unlinked.
pub(super) fn pair_artifact_copies(conn: &Connection, scope: Scope, ids: Ids) -> Result<()> {
    let uncopied = match scope {
        Some(_) => format!(
            "NOT EXISTS (SELECT 1 FROM agent_outputs o WHERE o.legacy_artifact_id = a.id) {}",
            ids_sql("a.id", ids)
        ),
        None => uncopied_artifacts_sql(ids),
    };
    let mut legacy = conn.prepare(&format!(
        "SELECT a.id, a.spec_id, a.stage, a.agent_name, a.content_json, a.response_text, a.run_id, {}
         FROM consensus_artifacts a
         WHERE {uncopied} {} ORDER BY a.id",
        legacy_ms("a.created_at"),
        scope_sql(scope).0.replace("spec_id", "a.spec_id").replace("stage =", "a.stage =")
    ))?;
    let mut twin = conn.prepare(
        "SELECT o.id, o.run_id FROM consensus_runs r JOIN agent_outputs o ON o.run_id = r.id
         WHERE r.spec_id = ?1 AND r.stage = ?2 AND o.agent_name = ?3 AND o.content = ?4
           AND o.legacy_artifact_id IS NULL AND abs(o.output_timestamp - ?5) <= ?6
         ORDER BY abs(o.output_timestamp - ?5), o.id LIMIT 1",
    )?;
    let mut link = conn.prepare(
        "UPDATE agent_outputs SET legacy_artifact_id = ?2, response_text = COALESCE(response_text, ?3) WHERE id = ?1",
    )?;
    let mut label = conn
        .prepare("UPDATE consensus_runs SET orchestrator_run_id = ?2 WHERE id = ?1 AND orchestrator_run_id IS NULL")?;
    let mut rows = legacy.query(rusqlite::params_from_iter(scope_sql(scope).1))?;
    while let Some(a) = rows.next()? {
        let (id, spec, stage, agent, content): (i64, String, String, String, Value) =
            (a.get(0)?, a.get(1)?, a.get(2)?, a.get(3)?, a.get(4)?);
        let (response, run_id, at): (Value, Value, i64) = (a.get(5)?, a.get(6)?, a.get(7)?);
        let found: Option<(i64, i64)> = twin
            .query_row(params![spec, stage, agent, content, at, PAIR_WINDOW_MS], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        if let Some((output, run)) = found {
            link.execute(params![output, id, response])?;
            label.execute(params![run, run_id])?;
        }
    }
    Ok(())
}

/// Links the two copies of each synthesis a dual-write build wrote.
pub(crate) fn link_synthesis_copies(conn: &Connection, scope: Scope) -> Result<()> {
    let any_unlinked: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM consensus_runs WHERE synthesis_json IS NOT NULL AND legacy_synthesis_id IS NULL)",
        [],
        |r| r.get(0),
    )?;
    if !any_unlinked {
        return Ok(());
    }
    pair_synthesis_copies(conn, scope, ALL_IDS)
}

/// [`link_synthesis_copies`] for the legacy rows with ids in `ids`, without first asking
/// whether any new row is unlinked.
pub(super) fn pair_synthesis_copies(conn: &Connection, scope: Scope, ids: Ids) -> Result<()> {
    let mut legacy = conn.prepare(&format!(
        "SELECT s.id, s.spec_id, s.stage, s.output_markdown, s.run_id, {}
         FROM consensus_synthesis s
         WHERE NOT EXISTS (SELECT 1 FROM consensus_runs r WHERE r.legacy_synthesis_id = s.id) {} {} ORDER BY s.id",
        legacy_ms("s.created_at"),
        scope_sql(scope).0.replace("spec_id", "s.spec_id").replace("stage =", "s.stage ="),
        ids_sql("s.id", ids)
    ))?;
    let markdown = schema::synthesis_field("synthesis_json", "output_markdown");
    let mut twin = conn.prepare(&format!(
        "SELECT id FROM consensus_runs
         WHERE spec_id = ?1 AND stage = ?2 AND synthesis_json IS NOT NULL AND legacy_synthesis_id IS NULL
           AND {markdown} = ?3 AND abs(COALESCE(synthesized_at, run_timestamp) - ?4) <= ?5
         ORDER BY abs(COALESCE(synthesized_at, run_timestamp) - ?4), id LIMIT 1"
    ))?;
    let mut link = conn.prepare(
        "UPDATE consensus_runs SET legacy_synthesis_id = ?2, orchestrator_run_id = COALESCE(orchestrator_run_id, ?3)
         WHERE id = ?1",
    )?;
    let mut rows = legacy.query(rusqlite::params_from_iter(scope_sql(scope).1))?;
    while let Some(s) = rows.next()? {
        let (id, spec, stage, markdown, run_id, at): (i64, String, String, Value, Value, i64) =
            (s.get(0)?, s.get(1)?, s.get(2)?, s.get(3)?, s.get(4)?, s.get(5)?);
        let found: Option<i64> =
            twin.query_row(params![spec, stage, markdown, at, PAIR_WINDOW_MS], |r| r.get(0)).optional()?;
        if let Some(run) = found {
            link.execute(params![run, id, run_id])?;
        }
    }
    Ok(())
}

/// The condition "legacy artifact `a` (id in `ids`) has no copy in the new tables", as a
/// list of ids found on two indexes: tested row by row it reads every legacy row.
pub(super) fn uncopied_artifacts_sql(ids: Ids) -> String {
    if ids == ALL_IDS {
        "a.id IN (SELECT x.id FROM consensus_artifacts x
                  WHERE NOT EXISTS (SELECT 1 FROM agent_outputs o WHERE o.legacy_artifact_id = x.id))"
            .to_owned()
    } else {
        // A range of ids is read from the table itself: the list would scan a whole index.
        format!("NOT EXISTS (SELECT 1 FROM agent_outputs o WHERE o.legacy_artifact_id = a.id) {}", ids_sql("a.id", ids))
    }
}

/// [`uncopied_artifacts_sql`] for legacy syntheses `s`.
pub(super) fn uncopied_syntheses_sql(ids: Ids) -> String {
    if ids == ALL_IDS {
        "s.id IN (SELECT x.id FROM consensus_synthesis x
                  WHERE NOT EXISTS (SELECT 1 FROM consensus_runs r WHERE r.legacy_synthesis_id = x.id))"
            .to_owned()
    } else {
        format!(
            "NOT EXISTS (SELECT 1 FROM consensus_runs r WHERE r.legacy_synthesis_id = s.id) {}",
            ids_sql("s.id", ids)
        )
    }
}

/// The condition "`column` is in `ids`" (our own integers, not user input), or none for all.
pub(super) fn ids_sql(column: &str, ids: Ids) -> String {
    if ids == ALL_IDS {
        String::new()
    } else {
        format!("AND {column} > {} AND {column} <= {}", ids.0, ids.1)
    }
}

/// A legacy row's time in ms: the exact one a write-back kept, else its timestamp.
pub(super) fn legacy_created_ms(conn: &Connection, table: &str, alias: &str) -> Result<String> {
    Ok(created_ms_sql(alias, column_exists(conn, table, "created_at_ms")?))
}

/// Copies the legacy artifacts with ids in `ids`; returns how many.
pub(super) fn backfill_artifacts(conn: &Connection, ids: Ids) -> Result<i64> {
    let uncopied = uncopied_artifacts_sql(ids);
    // One open run per (spec_id, stage, run_id) group, unless one exists already.
    let created = legacy_created_ms(conn, "consensus_artifacts", "a")?;
    let model_version =
        if column_exists(conn, "consensus_artifacts", "model_version")? { "a.model_version" } else { "NULL" };
    let mut groups = conn.prepare(&format!(
        "SELECT a.spec_id, a.stage, a.run_id, MIN({created})
         FROM consensus_artifacts a
         WHERE {uncopied}
           AND NOT EXISTS (SELECT 1 FROM consensus_runs r WHERE r.spec_id = a.spec_id AND r.stage = a.stage
                           AND r.orchestrator_run_id IS a.run_id AND r.synthesis_json IS NULL)
         GROUP BY a.spec_id, a.stage, a.run_id"
    ))?;
    let mut rows = groups.query([])?;
    while let Some(g) = rows.next()? {
        let (spec, stage, run_id, at): (String, String, Option<String>, i64) =
            (g.get(0)?, g.get(1)?, g.get(2)?, g.get(3)?);
        schema::insert_run(conn, &spec, &stage, run_id.as_deref(), at)?;
    }
    let open_run = schema::open_run_sql("a.spec_id", "a.stage", "a.run_id");
    let copied = conn.execute(
        &format!(
            "INSERT INTO agent_outputs (run_id, agent_name, content, response_text, output_timestamp, legacy_artifact_id,
                    model_version)
             SELECT ({open_run}), {}, {}, {}, {created}, a.id, {model_version}
             FROM consensus_artifacts a
             WHERE {uncopied}
             ORDER BY a.id",
            text_sql("a.agent_name"),
            text_sql("a.content_json"),
            text_sql("a.response_text")
        ),
        [],
    )?;
    Ok(copied as i64)
}

/// Copies the legacy syntheses with ids in `ids`; returns how many.
pub(super) fn backfill_syntheses(conn: &Connection, ids: Ids) -> Result<i64> {
    // A synthesis closes the newest open run of its group; otherwise it is a run of its own.
    let mut pending = conn.prepare(&format!(
        "SELECT id, spec_id, stage, run_id, {}, {}, {}, artifacts_count, {}, {}, {}, {}
         FROM consensus_synthesis s
         WHERE {}
         ORDER BY id",
        text_sql("output_markdown"),
        text_sql("output_path"),
        text_sql("status"),
        text_sql("agreements"),
        text_sql("conflicts"),
        bool_sql("degraded"),
        legacy_created_ms(conn, "consensus_synthesis", "s")?,
        uncopied_syntheses_sql(ids)
    ))?;
    let synthesis = schema::synthesis_json_sql("?5", "?6", "?7", "?8", "?9", "?10");
    let close = |run: &str| {
        format!(
            "UPDATE consensus_runs SET synthesis_json = {synthesis}, consensus_ok = 1,
                    degraded = ?11, synthesized_at = ?12, legacy_synthesis_id = ?1
             WHERE id = ({run})"
        )
    };
    let mut close_open_run = conn.prepare(&close(&schema::open_run_sql("?2", "?3", "?4")))?;
    let mut close_new_run = conn.prepare(&close("?13"))?;
    let mut copied = 0;
    let mut rows = pending.query([])?;
    while let Some(row) = rows.next()? {
        let mut values: Vec<Value> = (0..12).map(|i| row.get(i)).collect::<Result<_, _>>()?;
        if close_open_run.execute(rusqlite::params_from_iter(values.iter()))? == 0 {
            let (spec, stage, run_id, at): (String, String, Option<String>, i64) =
                (row.get(1)?, row.get(2)?, row.get(3)?, row.get(11)?);
            let run = schema::insert_run(conn, &spec, &stage, run_id.as_deref(), at)?;
            values.push(Value::Integer(run));
            close_new_run.execute(rusqlite::params_from_iter(values.iter()))?;
        }
        copied += 1;
    }
    Ok(copied)
}

pub(super) const UNCOPIED_LEGACY: [(&str, &str); 2] = [
    (
        "consensus_artifacts",
        "SELECT count(*) FROM consensus_artifacts a
         WHERE NOT EXISTS (SELECT 1 FROM agent_outputs o WHERE o.legacy_artifact_id = a.id)",
    ),
    (
        "consensus_synthesis",
        "SELECT count(*) FROM consensus_synthesis s
         WHERE NOT EXISTS (SELECT 1 FROM consensus_runs r WHERE r.legacy_synthesis_id = s.id)",
    ),
];

/// Legacy rows with no copy in the new tables (which must be in the current layout).
pub(crate) fn uncopied_legacy_rows(conn: &Connection) -> Result<i64> {
    let mut n = 0;
    for (legacy, count) in UNCOPIED_LEGACY {
        if table_exists(conn, legacy)? {
            n += conn.query_row(count, [], |r| r.get::<_, i64>(0))?;
        }
    }
    Ok(n)
}

/// That every legacy row at or below `tails` (what a bulk's chunks went through) has its
/// copy in the new tables: the rows above are the end's. One statement per table, so one
/// snapshot; the whole table's count reads indexes.
pub(super) fn verify_backfill_below(conn: &Connection, tails: &Tails) -> Result<()> {
    verify_backfill_of(conn, tails, |uncopied, above| format!("SELECT ({uncopied}) - ({uncopied} {above})"))
}

/// That every legacy row above `tails` has its copy in the new tables.
pub(super) fn verify_backfill_after(conn: &Connection, tails: &Tails) -> Result<()> {
    verify_backfill_of(conn, tails, |uncopied, above| format!("{uncopied} {above}"))
}

/// Counts, per legacy table, the rows without a copy that `count(uncopied, above)` selects
/// (`uncopied`: the count of them all; `above`: the condition "above `tails`").
fn verify_backfill_of(conn: &Connection, tails: &Tails, count: impl Fn(&str, &str) -> String) -> Result<()> {
    // The legacy rows as UNCOPIED_LEGACY names them.
    let rows = [("a.id", Phase::BackfillArtifacts), ("s.id", Phase::BackfillSyntheses)];
    for ((legacy, uncopied), (id, phase)) in UNCOPIED_LEGACY.into_iter().zip(rows) {
        if table_exists(conn, legacy)? {
            let missing: i64 = conn.query_row(&count(uncopied, &ids_sql(id, tails.rest(phase))), [], |r| r.get(0))?;
            if missing != 0 {
                return Err(Error::Migration(format!(
                    "backfill verification failed: {missing} {legacy} rows have no copy"
                )));
            }
        }
    }
    Ok(())
}

report! {
    /// What a migration copied between the schemas: rows, counted inside each step's
    /// transaction — not the runs made to hold them, nor rows other writers add meanwhile.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct RowsMoved {
        /// Legacy rows given their copy in the new tables.
        pub artifacts_backfilled: i64,
        pub syntheses_backfilled: i64,
        /// New-table rows given their copy in the legacy tables.
        pub artifacts_written_back: i64,
        pub syntheses_written_back: i64,
    }
}

impl RowsMoved {
    pub(crate) fn add(&mut self, other: RowsMoved) {
        self.artifacts_backfilled += other.artifacts_backfilled;
        self.syntheses_backfilled += other.syntheses_backfilled;
        self.artifacts_written_back += other.artifacts_written_back;
        self.syntheses_written_back += other.syntheses_written_back;
    }
}
