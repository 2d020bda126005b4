//! Coordination on SQLite: the expected sets of agents (`consensus_expected_agents`)
//! and the one query a waiter checks its set with (`wait.rs` runs the wait).

use rusqlite::{params, OptionalExtension};

use super::database::Database;
use super::legacy::Columns;
use crate::error::{Error, Result};
use crate::model::now_ms;
use crate::wait::{AgentSet, AgentsStatus, Expectation};

impl Database {
    /// Declares the agents a run of a stage waits for, in one transaction. Declaring
    /// the same agents again writes nothing; new agents extend the set; an agent id
    /// already expected by another set is refused ([`Expectation::conflict`]), and then
    /// nothing is written. Returns how many agents were added.
    pub fn expect_agents(&self, set: &Expectation) -> Result<usize> {
        if self.read_only {
            return Err(Error::ReadOnly(format!("expect_agents writes; {:?} is read-only", self.path)));
        }
        if !self.layout.columns.read().expected_agents {
            return Err(Error::Migration(format!(
                "database {:?} predates the table consensus_expected_agents (layout revision 5); call migrate() first",
                self.path
            )));
        }
        self.write_repeatable_as("expect_agents", |tx| {
            let mut find = tx.prepare_cached(
                "SELECT spec_id, stage, run_id, branch_id FROM consensus_expected_agents WHERE agent_id = ?1",
            )?;
            let mut insert = tx.prepare_cached(
                "INSERT INTO consensus_expected_agents (agent_id, spec_id, stage, run_id, branch_id, declared_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            let at = now_ms();
            let mut added = 0;
            for agent in &set.agent_ids {
                let found = find.query_row([agent], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))).optional()?;
                match found {
                    Some(row) if set.is(&row) => {}
                    Some(row) => return Err(set.conflict(agent, &row)),
                    None => {
                        insert.execute(params![agent, set.spec_id, set.stage, set.run_id, set.branch_key(), at])?;
                        added += 1;
                    }
                }
            }
            Ok(added)
        })
    }

    /// The state of a set's agents, read in one statement.
    pub fn agents_status(&self, spec_id: &str, stage: &str, set: &AgentSet) -> Result<AgentsStatus> {
        let columns = *self.layout.columns.read();
        let failed = Columns::of("e", columns.execution_extraction_error);
        let conn = self.conn()?;
        let row = |r: &rusqlite::Row| Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?, r.get::<_, bool>(2)?));
        let rows: Vec<(String, bool, bool)> = match set {
            AgentSet::Agents { agent_ids, branch_id } => {
                let branch = Columns::of("e", columns.execution_branch_id);
                let ids = serde_json::to_string(agent_ids).map_err(|e| Error::Internal(e.to_string()))?;
                let mut stmt = conn.prepare_cached(&format!(
                    "SELECT j.value, e.completed_at IS NOT NULL, {failed} IS NOT NULL
                     FROM json_each(?1) j LEFT JOIN agent_executions e
                       ON e.agent_id = j.value AND e.spec_id = ?2 AND e.stage = ?3 AND (?4 IS NULL OR {branch} = ?4)
                     ORDER BY j.key"
                ))?;
                let rows = stmt.query_map(params![ids, spec_id, stage, branch_id], row)?;
                rows.collect::<rusqlite::Result<_>>()?
            }
            AgentSet::Run { .. } if !columns.expected_agents => Vec::new(), // nothing declared, ever
            AgentSet::Run { run_id, branch_id } => {
                let mut stmt = conn.prepare_cached(&format!(
                    "SELECT x.agent_id, e.completed_at IS NOT NULL, {failed} IS NOT NULL
                     FROM consensus_expected_agents x LEFT JOIN agent_executions e
                       ON e.agent_id = x.agent_id AND e.spec_id = x.spec_id AND e.stage = x.stage
                     WHERE x.spec_id = ?1 AND x.stage = ?2 AND x.run_id = ?3 AND x.branch_id = ?4
                     ORDER BY x.declared_at_ms, x.rowid"
                ))?;
                let rows = stmt.query_map(params![spec_id, stage, run_id, branch_id.as_deref().unwrap_or("")], row)?;
                rows.collect::<rusqlite::Result<_>>()?
            }
        };
        Ok(AgentsStatus::from_rows(rows))
    }
}
