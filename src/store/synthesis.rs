//! Syntheses: the merged consensus of a run. A synthesis closes the newest open run of
//! its spec/stage/run_id, or is a run of its own; the newest is read from either schema.

use std::sync::atomic::Ordering;
use std::sync::LazyLock;
use std::time::Instant;

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::artifacts::open_or_new_run;
use super::claims::{check_claim_scope, check_fence};
use super::database::Database;
use super::idempotency::{self, check_key, keep_ms, synthesis_digest, SYNTHESIS};
use super::legacy::{is_synthesis_twin, legacy_latest_synthesis, unless_dropped, Columns};
use super::modes::{ReadMode, WriteMode};
use super::validate::check_id;
use crate::error::{Error, Result};
use crate::model::*;
use crate::sqlite::schema::{self, synthesis_from_text};

impl Database {
    /// Stores a synthesis, closing the newest open run of its spec/stage/run_id (or
    /// starting a run of its own); returns the run's id. With an idempotency key, a
    /// repeat returns the first write's id; with a claim, it is refused unless that is
    /// the stage's newest live claim, and without one while another owner holds one.
    pub fn store_synthesis(&self, s: &NewSynthesis) -> Result<i64> {
        check_id("spec_id", &s.spec_id)?;
        check_id("stage", &s.stage)?;
        check_id("status", &s.status)?;
        if let Some(n) = s.artifacts_count {
            if n < 0 {
                return Err(Error::invalid("artifacts_count", format!("must be zero or more, got {n}")));
            }
        }
        check_key("idempotency_key", s.idempotency_key.as_deref())?;
        if let Some(claim) = &s.claim {
            check_claim_scope(claim, &s.spec_id, &s.stage)?;
        }
        self.require_current()?;
        let keyed = s.idempotency_key.as_deref().map(|key| (key, synthesis_digest(s)));
        if keyed.is_some() || s.claim.is_some() {
            self.require_coordination("store_synthesis with a claim or an idempotency key")?;
        }
        let opened_with_claims = self.layout.coordination.load(Ordering::Acquire);
        let keep = keep_ms(self.options.idempotency_days);
        let now = now_ms();
        self.write_repeatable_as("store_synthesis", |tx| {
            // A store opened on a file without the claims table (migrate=False) looks
            // again: another store may have added it, and claimed the stage, since.
            let coordination = opened_with_claims || schema::table_exists(tx, "consensus_claims")?;
            let clock = if coordination { self.db_now(tx)? } else { now };
            // A repeat of a committed write is no new advance: its key answers first.
            if let Some((key, digest)) = &keyed {
                if let Some(id) = idempotency::lookup(tx, key, SYNTHESIS, digest, clock, keep)? {
                    return Ok(id);
                }
            }
            if coordination {
                check_fence(tx, &s.spec_id, &s.stage, s.claim.as_ref(), clock)?;
            }
            let dual = self.write_mode() == WriteMode::Dual;
            let run = open_or_new_run(tx, &s.spec_id, &s.stage, s.run_id.as_deref(), now)?;
            tx.prepare_cached(&CLOSE_RUN)?.execute(params![
                run,
                s.output_markdown,
                s.output_path,
                s.status,
                s.artifacts_count,
                s.agreements,
                s.conflicts,
                s.degraded,
                now
            ])?;
            if dual {
                crate::sqlite::legacy_copy::copy_synthesis_to_legacy(tx, run, s, now)?;
            }
            if let Some((key, digest)) = &keyed {
                idempotency::record(tx, key, SYNTHESIS, digest, run, clock)?;
            }
            Ok(run)
        })
    }

    /// The newest synthesis of a spec/stage from either schema.
    pub fn query_latest_synthesis(&self, spec_id: &str, stage: &str) -> Result<Option<Synthesis>> {
        let started = Instant::now();
        let mode = self.read_mode();
        let has_new = mode != ReadMode::Legacy && self.new_tables_readable()?;
        let conn = self.conn()?;
        let columns = *self.layout.columns.read();
        let mut found = if has_new {
            let sql = self.sql_for_layout(&V1_LATEST_SYNTHESIS, new_latest_synthesis_sql, columns);
            new_latest_synthesis(&conn, &sql, spec_id, stage)?
        } else {
            None
        };
        let from_new = found.is_some();
        if mode != ReadMode::V1 && self.layout.legacy_synthesis.load(Ordering::Acquire) {
            let read = legacy_latest_synthesis(&conn, spec_id, stage, has_new, columns);
            if let Some(l) = unless_dropped(&self.layout.legacy_synthesis, "consensus_synthesis", read)? {
                match found.as_mut() {
                    // The same synthesis, written to both schemas by a dual-write build.
                    Some(f) if is_synthesis_twin(&l, f) => {
                        if f.run_id.is_none() {
                            f.run_id = l.run_id;
                        }
                    }
                    Some(f) if l.created_at_ms <= f.created_at_ms => {}
                    _ => found = Some(l),
                }
            }
        }
        let from_legacy = found.as_ref().is_some_and(|f| f.source == SOURCE_LEGACY);
        self.reader.record(from_new && !from_legacy, from_legacy, started.elapsed());
        Ok(found)
    }
}

fn new_latest_synthesis_sql(columns: Columns) -> String {
    let at = match columns.run_synthesized_at {
        Columns::MISSING => "run_timestamp".to_owned(),
        column => format!("COALESCE({column}, run_timestamp)"),
    };
    // The newest by a scalar max, not ORDER BY: SQLite would sort the spec/stage's
    // syntheses in a temp b-tree, which costs more than the two index scans.
    format!(
        "SELECT id, synthesis_json, COALESCE(degraded, 0), {}, {at}
         FROM consensus_runs WHERE spec_id = ?1 AND stage = ?2 AND synthesis_json IS NOT NULL
           AND {at} = (SELECT max({at}) FROM consensus_runs
                       WHERE spec_id = ?1 AND stage = ?2 AND synthesis_json IS NOT NULL)
         ORDER BY id DESC LIMIT 1",
        columns.run_orchestrator_id,
    )
}

/// A synthesis kept as the seed layout's JSON object (see `schema::synthesis_json_sql`).
/// Its fields come back as the API's text: a JSON string as itself, anything else (the
/// arrays a predecessor wrote, say) as its JSON text. Text that is not a JSON object is returned whole as the markdown.
fn synthesis_from_json(r: &Row, spec_id: &str, stage: &str) -> rusqlite::Result<Synthesis> {
    let raw: String = r.get(1)?;
    Ok(synthesis_from_text(&raw, r.get(0)?, spec_id, stage, r.get(2)?, r.get(3)?, r.get(4)?))
}

static CLOSE_RUN: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE consensus_runs SET synthesis_json = {}, consensus_ok = 1, degraded = ?8,
                synthesized_at = ?9
         WHERE id = ?1",
        schema::synthesis_json_sql("?2", "?3", "?4", "?5", "?6", "?7")
    )
});
static V1_LATEST_SYNTHESIS: LazyLock<String> = LazyLock::new(|| new_latest_synthesis_sql(Columns::default()));

fn new_latest_synthesis(conn: &Connection, sql: &str, spec_id: &str, stage: &str) -> Result<Option<Synthesis>> {
    let mut stmt = conn.prepare_cached(sql)?;
    Ok(stmt.query_row([spec_id, stage], |r| synthesis_from_json(r, spec_id, stage)).optional()?)
}
