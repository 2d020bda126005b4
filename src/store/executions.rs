//! Agent executions: the routing table (spawns, completions, extraction failures,
//! retention).

use std::sync::LazyLock;

use rusqlite::{params, OptionalExtension, Row};

use super::database::Database;
use super::legacy::Columns;
use super::validate::{check_id, check_phase_type};
use crate::cursor::{execution_after_sql, ExecutionKey, Page, Window};
use crate::error::{Error, Result};
use crate::model::{AgentExecution, AgentRoute, ExtractionFailure};
use crate::sqlite::transaction::Tx;

/// The routing table read through its covering index (`route_index.sql`). Named because
/// SQLite's planner prefers the unique primary key, whose lookup then reads the table row
/// with its KB-sized response; used only where the file has the index.
const ROUTED: &str = "agent_executions INDEXED BY idx_agent_executions_route";
const SPAWN_INFO_ROUTED: &str =
    "SELECT phase_type, stage FROM agent_executions INDEXED BY idx_agent_executions_route WHERE agent_id = ?1";
const SPAWN_INFO: &str = "SELECT phase_type, stage FROM agent_executions WHERE agent_id = ?1";

fn route_sql(branch: &str, routed: bool) -> String {
    let table = if routed { ROUTED } else { "agent_executions" };
    format!("SELECT phase_type, stage, {branch} FROM {table} WHERE agent_id = ?1")
}

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
        self.record_agent_spawn_on_branch(agent_id, spec_id, stage, phase_type, agent_name, run_id, None)
    }

    /// [`Database::record_agent_spawn`] with the pipeline branch the agent serves (the
    /// predecessor's `branch_id`; a re-spawn replaces it, None included). A branch on a
    /// file without the column is refused, naming it.
    #[allow(clippy::too_many_arguments)]
    pub fn record_agent_spawn_on_branch(
        &self,
        agent_id: &str,
        spec_id: &str,
        stage: &str,
        phase_type: &str,
        agent_name: &str,
        run_id: Option<&str>,
        branch_id: Option<&str>,
    ) -> Result<()> {
        let with_branch = self.check_spawn(agent_id, spec_id, stage, phase_type, agent_name, branch_id)?;
        self.write_repeatable_as("record_agent_spawn", |tx| {
            insert_spawn(tx, agent_id, spec_id, stage, phase_type, agent_name, run_id, branch_id, with_branch)
        })
    }

    /// [`Database::record_agent_spawn_on_branch`] without waiting (`Engine::submit_repeatable`):
    /// `on_done` gets the result from the thread that commits it.
    pub fn submit_agent_spawn(&self, spawn: NewSpawn, on_done: impl FnOnce(Result<()>) + Send + 'static) {
        let s = &spawn;
        let with_branch = match self.check_spawn(
            &s.agent_id,
            &s.spec_id,
            &s.stage,
            &s.phase_type,
            &s.agent_name,
            s.branch_id.as_deref(),
        ) {
            Ok(with_branch) => with_branch,
            Err(e) => return on_done(Err(e)),
        };
        self.submit_repeatable(
            move |tx| {
                let s = &spawn;
                insert_spawn(
                    tx,
                    &s.agent_id,
                    &s.spec_id,
                    &s.stage,
                    &s.phase_type,
                    &s.agent_name,
                    s.run_id.as_deref(),
                    s.branch_id.as_deref(),
                    with_branch,
                )
            },
            on_done,
        )
    }

    /// Checks a spawn's arguments; returns whether the file has the branch column.
    fn check_spawn(
        &self,
        agent_id: &str,
        spec_id: &str,
        stage: &str,
        phase_type: &str,
        agent_name: &str,
        branch_id: Option<&str>,
    ) -> Result<bool> {
        check_id("agent_id", agent_id)?;
        check_id("spec_id", spec_id)?;
        check_id("stage", stage)?;
        check_phase_type(phase_type)?;
        check_id("agent_name", agent_name)?;
        let columns = *self.layout.columns.read();
        self.require_column(columns.execution_run_id, "agent_executions.run_id")?;
        if let Some(branch) = branch_id {
            check_id("branch_id", branch)?;
            self.require_column(columns.execution_branch_id, "agent_executions.branch_id")?;
        }
        Ok(columns.execution_branch_id != Columns::MISSING)
    }

    /// `(phase_type, stage)` of a spawned agent — the completion-routing hot path.
    pub fn get_agent_spawn_info(&self, agent_id: &str) -> Result<Option<(String, String)>> {
        self.routing_read(|routed| {
            let conn = self.conn()?;
            let mut stmt = conn.prepare_cached(if routed { SPAWN_INFO_ROUTED } else { SPAWN_INFO })?;
            Ok(stmt.query_row([agent_id], |r| Ok((r.get(0)?, r.get(1)?))).optional()?)
        })
    }

    /// The predecessor's routing read: phase type, stage and branch of a spawned agent.
    /// On a file without the branch column the branch is None.
    pub fn get_agent_route(&self, agent_id: &str) -> Result<Option<AgentRoute>> {
        let branch = self.layout.columns.read().execution_branch_id;
        self.routing_read(|routed| {
            let conn = self.conn()?;
            let mut stmt = conn.prepare_cached(&route_sql(branch, routed))?;
            Ok(stmt
                .query_row([agent_id], |r| {
                    Ok(AgentRoute { phase_type: r.get(0)?, stage: r.get(1)?, branch_id: r.get(2)? })
                })
                .optional()?)
        })
    }

    /// Runs a routing read through the covering index where the file has it; if another
    /// program dropped the index while this store was open, once more without it (and
    /// without it from then on).
    fn routing_read<T>(&self, read: impl Fn(bool) -> Result<T>) -> Result<T> {
        if !self.layout.columns.read().routing_index {
            return read(false);
        }
        match read(true) {
            Err(Error::Sqlite(m)) if m.contains("no such index: idx_agent_executions_route") => {
                self.layout.columns.write().routing_index = false;
                read(false)
            }
            result => result,
        }
    }

    /// The executions of a spec's stage, newest spawn first (ties by agent id, last
    /// first) or, with `newest_first` false, the exact reverse; at most `limit`. With a
    /// `branch_id`, only that branch's; None: every execution of the stage, whatever its
    /// branch (as before branches existed). A file without the branch column has no
    /// execution on any branch.
    pub fn query_agent_executions(
        &self,
        spec_id: &str,
        stage: &str,
        branch_id: Option<&str>,
        newest_first: bool,
        limit: Option<usize>,
    ) -> Result<Vec<AgentExecution>> {
        self.query_agent_executions_page(spec_id, stage, branch_id, &Page { newest_first, limit, ..Page::default() })
    }

    /// [`Database::query_agent_executions`] as a page: in the page's order, at most
    /// `page.limit` rows after (or before) a cursor (`cursor.rs`).
    pub fn query_agent_executions_page(
        &self,
        spec_id: &str,
        stage: &str,
        branch_id: Option<&str>,
        page: &Page,
    ) -> Result<Vec<AgentExecution>> {
        let window = page.executions(spec_id, stage)?;
        let columns = *self.layout.columns.read();
        let branch_missing = columns.execution_branch_id == Columns::MISSING;
        if branch_missing && branch_id.is_some() {
            return Ok(Vec::new());
        }
        let on_branch = if branch_id.is_some() { "AND branch_id = ?3" } else { "AND ?3 IS NULL" };
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT agent_id, spec_id, stage, phase_type, agent_name, {}, {}, spawned_at, completed_at, response_text
             FROM agent_executions WHERE spec_id = ?1 AND stage = ?2 {on_branch} {}
             {} LIMIT ?4",
            columns.execution_run_id,
            columns.execution_branch_id,
            execution_bound(&window, ["?5", "?6"]),
            execution_order(&window)
        ))?;
        let rows = match &window.from {
            Some(k) => stmt.query_map(
                params![spec_id, stage, branch_id, window.sql_limit(), k.spawned_at, k.agent_id],
                execution_row,
            )?,
            None => stmt.query_map(params![spec_id, stage, branch_id, window.sql_limit()], execution_row)?,
        };
        Ok(window.finish(rows.collect::<Result<_, _>>()?))
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
        self.query_extraction_failures_page(spec_id, &Page::default())
    }

    /// [`Database::query_extraction_failures`] as a page (`cursor.rs`).
    pub fn query_extraction_failures_page(&self, spec_id: &str, page: &Page) -> Result<Vec<ExtractionFailure>> {
        let window = page.failures(spec_id)?;
        let columns = *self.layout.columns.read();
        if columns.execution_extraction_error == Columns::MISSING {
            return Ok(Vec::new()); // a file without the column has never recorded a failure
        }
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT agent_id, spec_id, stage, phase_type, agent_name, {}, spawned_at, completed_at,
                    response_text, extraction_error
             FROM agent_executions WHERE spec_id = ?1 AND extraction_error IS NOT NULL {}
             {} LIMIT ?2",
            columns.execution_run_id,
            execution_bound(&window, ["?3", "?4"]),
            execution_order(&window)
        ))?;
        let limit = window.sql_limit();
        let params: Vec<&dyn rusqlite::ToSql> = match &window.from {
            Some(k) => vec![&spec_id, &limit, &k.spawned_at, &k.agent_id],
            None => vec![&spec_id, &limit],
        };
        let rows = stmt.query_map(params.as_slice(), |r| {
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
        Ok(window.finish(rows.collect::<Result<_, _>>()?))
    }

    /// Deletes executions spawned more than `days` days ago; returns how many. The
    /// expected sets declared more than `days` days ago go too (not counted).
    pub fn cleanup_old_executions(&self, days: i64) -> Result<usize> {
        Ok(self.cleanup_old_executions_in_chunks(days, None)? as usize)
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
    pub branch_id: Option<String>,
}

/// SQL keeping the executions after the window's cursor (`params`: its time and id).
fn execution_bound(window: &Window<ExecutionKey>, params: [&str; 2]) -> String {
    match window.from {
        Some(_) => format!("AND {}", execution_after_sql(window.descending, params)),
        None => String::new(),
    }
}

fn execution_order(window: &Window<ExecutionKey>) -> &'static str {
    if window.descending {
        "ORDER BY spawned_at DESC, agent_id DESC"
    } else {
        "ORDER BY spawned_at, agent_id"
    }
}

fn execution_row(r: &Row) -> rusqlite::Result<AgentExecution> {
    Ok(AgentExecution {
        agent_id: r.get(0)?,
        spec_id: r.get(1)?,
        stage: r.get(2)?,
        phase_type: r.get(3)?,
        agent_name: r.get(4)?,
        run_id: r.get(5)?,
        branch_id: r.get(6)?,
        spawned_at: r.get(7)?,
        completed_at: r.get(8)?,
        response_text: r.get(9)?,
    })
}

/// The spawn upsert; `with_branch` when the file has the branch column (a file opened
/// without migrating may not: it then gets the spawn without it).
#[allow(clippy::too_many_arguments)]
fn insert_spawn(
    tx: &Tx,
    agent_id: &str,
    spec_id: &str,
    stage: &str,
    phase_type: &str,
    agent_name: &str,
    run_id: Option<&str>,
    branch_id: Option<&str>,
    with_branch: bool,
) -> Result<()> {
    static WITH_BRANCH: LazyLock<String> = LazyLock::new(|| spawn_sql(true));
    static WITHOUT_BRANCH: LazyLock<String> = LazyLock::new(|| spawn_sql(false));
    if with_branch {
        tx.prepare_cached(&WITH_BRANCH)?
            .execute(params![agent_id, spec_id, stage, phase_type, agent_name, run_id, branch_id])?;
    } else {
        tx.prepare_cached(&WITHOUT_BRANCH)?
            .execute(params![agent_id, spec_id, stage, phase_type, agent_name, run_id])?;
    }
    Ok(())
}

fn spawn_sql(with_branch: bool) -> String {
    let (column, value, update) =
        if with_branch { (", branch_id", ", ?7", ", branch_id = excluded.branch_id") } else { ("", "", "") };
    format!(
        "INSERT INTO agent_executions (agent_id, spec_id, stage, phase_type, agent_name, run_id{column}, spawned_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6{value}, {NOW_TEXT})
         ON CONFLICT(agent_id) DO UPDATE SET spec_id = excluded.spec_id, stage = excluded.stage,
           phase_type = excluded.phase_type, agent_name = excluded.agent_name, run_id = excluded.run_id{update},
           spawned_at = excluded.spawned_at, completed_at = NULL, response_text = NULL,
           extraction_error = NULL"
    )
}

fn complete_agent(tx: &Tx, agent_id: &str, response_text: &str) -> Result<bool> {
    let n = tx
        .prepare_cached(&format!(
            "UPDATE agent_executions SET completed_at = {NOW_TEXT}, response_text = ?2 WHERE agent_id = ?1"
        ))?
        .execute(params![agent_id, response_text])?;
    Ok(n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Options;

    fn plan(db: &Database, sql: &str) -> String {
        let conn = db.conn().unwrap();
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let rows = stmt.query_map(["a"], |r| r.get::<_, String>(3)).unwrap();
        rows.map(|r| r.unwrap()).collect::<Vec<_>>().join("; ")
    }

    #[test]
    fn the_routing_reads_walk_the_covering_index_alone() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path().join("r.db"), Options::default()).unwrap();
        db.record_agent_spawn_on_branch("a", "S", "plan", "regular_stage", "gemini", None, Some("b1")).unwrap();
        assert!(db.layout.columns.read().routing_index);
        let covering = "SEARCH agent_executions USING COVERING INDEX idx_agent_executions_route (agent_id=?)";
        assert_eq!(plan(&db, SPAWN_INFO_ROUTED), covering);
        assert_eq!(plan(&db, &route_sql("branch_id", true)), covering);
        // Without the hint SQLite takes the primary key, which then reads the table row.
        assert_eq!(
            plan(&db, SPAWN_INFO),
            "SEARCH agent_executions USING INDEX sqlite_autoindex_agent_executions_1 (agent_id=?)"
        );
        assert_eq!(db.get_agent_spawn_info("a").unwrap(), Some(("regular_stage".into(), "plan".into())));
        let route = db.get_agent_route("a").unwrap().unwrap();
        assert_eq!((route.stage.as_str(), route.branch_id.as_deref()), ("plan", Some("b1")));
    }

    #[test]
    fn an_index_dropped_by_another_program_leaves_the_reads_working() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let db = Database::open(&path, Options::default()).unwrap();
        db.record_agent_spawn("a", "S", "plan", "regular_stage", "gemini", None).unwrap();
        assert!(db.get_agent_spawn_info("a").unwrap().is_some()); // the routed statement is cached
        rusqlite::Connection::open(&path).unwrap().execute_batch("DROP INDEX idx_agent_executions_route").unwrap();
        assert_eq!(db.get_agent_spawn_info("a").unwrap(), Some(("regular_stage".into(), "plan".into())));
        assert_eq!(db.get_agent_route("a").unwrap().map(|r| r.stage), Some("plan".into()));
        assert!(!db.layout.columns.read().routing_index);
    }
}
