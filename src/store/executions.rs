//! Agent executions: the routing table (spawns, completions, extraction failures,
//! retention).

use rusqlite::{params, OptionalExtension};

use super::database::Database;
use super::legacy::Columns;
use super::validate::{check_id, check_phase_type};
use crate::error::Result;
use crate::model::ExtractionFailure;
use crate::sqlite::transaction::Tx;

const NOW_TEXT: &str = "strftime('%Y-%m-%d %H:%M:%S', 'now')";

impl Database {
    /// Records a spawned agent. Recording the same `agent_id` again starts it afresh.
    pub fn record_agent_spawn(
        &self,
        agent_id: &str,
        spec_id: &str,
        stage: &str,
        phase_type: &str,
        agent_name: &str,
        run_id: Option<&str>,
    ) -> Result<()> {
        self.check_spawn(agent_id, spec_id, stage, phase_type, agent_name)?;
        self.write_repeatable_as("record_agent_spawn", |tx| {
            insert_spawn(tx, agent_id, spec_id, stage, phase_type, agent_name, run_id)
        })
    }

    /// [`Database::record_agent_spawn`] without waiting (`Engine::submit_repeatable`):
    /// `on_done` gets the result from the thread that commits it.
    pub fn submit_agent_spawn(&self, spawn: NewSpawn, on_done: impl FnOnce(Result<()>) + Send + 'static) {
        let s = &spawn;
        if let Err(e) = self.check_spawn(&s.agent_id, &s.spec_id, &s.stage, &s.phase_type, &s.agent_name) {
            return on_done(Err(e));
        }
        self.submit_repeatable(
            move |tx| {
                let s = &spawn;
                insert_spawn(tx, &s.agent_id, &s.spec_id, &s.stage, &s.phase_type, &s.agent_name, s.run_id.as_deref())
            },
            on_done,
        )
    }

    fn check_spawn(
        &self,
        agent_id: &str,
        spec_id: &str,
        stage: &str,
        phase_type: &str,
        agent_name: &str,
    ) -> Result<()> {
        check_id("agent_id", agent_id)?;
        check_id("spec_id", spec_id)?;
        check_id("stage", stage)?;
        check_phase_type(phase_type)?;
        check_id("agent_name", agent_name)?;
        self.require_column(self.layout.columns.read().execution_run_id, "agent_executions.run_id")
    }

    /// `(phase_type, stage)` of a spawned agent — the completion-routing hot path.
    pub fn get_agent_spawn_info(&self, agent_id: &str) -> Result<Option<(String, String)>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached("SELECT phase_type, stage FROM agent_executions WHERE agent_id = ?1")?;
        Ok(stmt.query_row([agent_id], |r| Ok((r.get(0)?, r.get(1)?))).optional()?)
    }

    pub fn get_agent_name(&self, agent_id: &str) -> Result<Option<String>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached("SELECT agent_name FROM agent_executions WHERE agent_id = ?1")?;
        Ok(stmt.query_row([agent_id], |r| r.get(0)).optional()?)
    }

    /// Marks an agent completed. Returns whether the agent was known.
    pub fn record_agent_completion(&self, agent_id: &str, response_text: &str) -> Result<bool> {
        check_id("agent_id", agent_id)?;
        self.write_repeatable_as("record_agent_completion", |tx| complete_agent(tx, agent_id, response_text))
    }

    /// [`Database::record_agent_completion`] without waiting (`Engine::submit_repeatable`).
    pub fn submit_agent_completion(
        &self,
        agent_id: String,
        response_text: String,
        on_done: impl FnOnce(Result<bool>) + Send + 'static,
    ) {
        if let Err(e) = check_id("agent_id", &agent_id) {
            return on_done(Err(e));
        }
        self.submit_repeatable(move |tx| complete_agent(tx, &agent_id, &response_text), on_done)
    }

    /// Marks an agent completed with output that could not be parsed. Returns whether
    /// the agent was known.
    pub fn record_extraction_failure(
        &self,
        agent_id: &str,
        response_text: &str,
        extraction_error: &str,
    ) -> Result<bool> {
        check_id("agent_id", agent_id)?;
        check_id("extraction_error", extraction_error)?;
        let columns = *self.layout.columns.read();
        self.require_column(columns.execution_extraction_error, "agent_executions.extraction_error")?;
        self.write_repeatable_as("record_extraction_failure", |tx| {
            let n = tx
                .prepare_cached(&format!(
                    "UPDATE agent_executions SET completed_at = {NOW_TEXT}, response_text = ?2, extraction_error = ?3
                     WHERE agent_id = ?1"
                ))?
                .execute(params![agent_id, response_text, extraction_error])?;
            Ok(n > 0)
        })
    }

    /// Extraction failures of a spec, oldest spawn first.
    pub fn query_extraction_failures(&self, spec_id: &str) -> Result<Vec<ExtractionFailure>> {
        let columns = *self.layout.columns.read();
        if columns.execution_extraction_error == Columns::MISSING {
            return Ok(Vec::new()); // a file without the column has never recorded a failure
        }
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT agent_id, spec_id, stage, phase_type, agent_name, {}, spawned_at, completed_at,
                    response_text, extraction_error
             FROM agent_executions WHERE spec_id = ?1 AND extraction_error IS NOT NULL
             ORDER BY spawned_at, agent_id",
            columns.execution_run_id
        ))?;
        let rows = stmt.query_map([spec_id], |r| {
            Ok(ExtractionFailure {
                agent_id: r.get(0)?,
                spec_id: r.get(1)?,
                stage: r.get(2)?,
                phase_type: r.get(3)?,
                agent_name: r.get(4)?,
                run_id: r.get(5)?,
                spawned_at: r.get(6)?,
                completed_at: r.get(7)?,
                response_text: r.get(8)?,
                extraction_error: r.get(9)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Deletes executions spawned more than `days` days ago; returns how many.
    pub fn cleanup_old_executions(&self, days: i64) -> Result<usize> {
        // One DELETE: a busy attempt left nothing behind.
        self.with_lane("cleanup_old_executions", |conn| crate::sqlite::maintenance::cleanup_executions(conn, days))
    }
}

/// A spawn to record, owned (`Database::submit_agent_spawn`).
#[derive(Clone, Debug)]
pub struct NewSpawn {
    pub agent_id: String,
    pub spec_id: String,
    pub stage: String,
    pub phase_type: String,
    pub agent_name: String,
    pub run_id: Option<String>,
}

fn insert_spawn(
    tx: &Tx,
    agent_id: &str,
    spec_id: &str,
    stage: &str,
    phase_type: &str,
    agent_name: &str,
    run_id: Option<&str>,
) -> Result<()> {
    tx.prepare_cached(&format!(
        "INSERT INTO agent_executions (agent_id, spec_id, stage, phase_type, agent_name, run_id, spawned_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, {NOW_TEXT})
         ON CONFLICT(agent_id) DO UPDATE SET spec_id = excluded.spec_id, stage = excluded.stage,
           phase_type = excluded.phase_type, agent_name = excluded.agent_name, run_id = excluded.run_id,
           spawned_at = excluded.spawned_at, completed_at = NULL, response_text = NULL,
           extraction_error = NULL"
    ))?
    .execute(params![agent_id, spec_id, stage, phase_type, agent_name, run_id])?;
    Ok(())
}

fn complete_agent(tx: &Tx, agent_id: &str, response_text: &str) -> Result<bool> {
    let n = tx
        .prepare_cached(&format!(
            "UPDATE agent_executions SET completed_at = {NOW_TEXT}, response_text = ?2 WHERE agent_id = ?1"
        ))?
        .execute(params![agent_id, response_text])?;
    Ok(n > 0)
}
