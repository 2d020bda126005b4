//! The PostgreSQL backend's SQL and migrations.

use std::sync::LazyLock;

use super::pool::Session;
use super::PG_LAYOUT;
use crate::cursor::{after_sql, execution_after_sql, ArtifactKey, ExecutionKey, Window};
use crate::error::{Error, Result};
use crate::model::NewArtifact;

/// Key of `pg_advisory_lock` held while migrating ("cdb" + 1): several hosts may open
/// the store at once, and one migrates while the others wait, then find it done.
const MIGRATION_LOCK: i64 = 0x0063_6462_0001;

/// Layout revisions in order, each with the minimum reader layout it leaves (a step
/// that only adds keeps the one before, so the previous release still opens the
/// database); each runs in one transaction with its rows in `consensus_db_meta`.
const MIGRATIONS: &[(i64, i64, &str)] =
    &[(1, 1, include_str!("schema.sql")), (2, 1, include_str!("schema_2.sql")), (3, 1, include_str!("schema_3.sql"))];

fn meta(c: &mut Session, key: &str) -> Result<Option<i64>> {
    let exists: bool = c.client.query_one("SELECT to_regclass('consensus_db_meta') IS NOT NULL", &[])?.get(0);
    if !exists {
        return Ok(None);
    }
    let row = c.client.query_opt("SELECT value FROM consensus_db_meta WHERE key = $1", &[&key])?;
    Ok(row.map(|r| r.get(0)))
}

/// The minimum reader layout recorded in the database (`pg_layout`, the key every
/// release checks; 0: none yet).
fn min_reader_layout(c: &mut Session) -> Result<i64> {
    Ok(meta(c, "pg_layout")?.unwrap_or(0))
}

/// The layout revision the database was brought to (`pg_revision`, or — from a release
/// that predates the key — `pg_layout`; 0: none yet).
pub fn layout(c: &mut Session) -> Result<i64> {
    match meta(c, "pg_revision")? {
        Some(revision) => Ok(revision),
        None => min_reader_layout(c),
    }
}

/// Whether the routing table has the branch column (a database at revision 1 opened
/// without migrating has not).
pub fn has_branch_column(c: &mut Session) -> Result<bool> {
    Ok(c.client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()
               AND table_name = 'agent_executions' AND column_name = 'branch_id')",
            &[],
        )?
        .get(0))
}

/// Whether the coordination tables of revision 3 exist (a database at revision 2 opened
/// without migrating has none).
pub fn has_coordination_tables(c: &mut Session) -> Result<bool> {
    Ok(c.client.query_one("SELECT to_regclass('consensus_claims') IS NOT NULL", &[])?.get(0))
}

/// Checks the layout and, when `apply`, brings it up to date under the advisory lock.
/// Without `apply`, a database at an older revision that this build can still read
/// opens as it is (what it lacks reads as absent: no branch).
pub fn migrate(c: &mut Session, apply: bool) -> Result<()> {
    let reader = min_reader_layout(c)?;
    if reader > PG_LAYOUT {
        return Err(Error::LayoutTooNew { found: reader, supported: PG_LAYOUT });
    }
    let found = layout(c)?;
    if found == PG_LAYOUT || (!apply && found >= 1) {
        return Ok(());
    }
    if !apply {
        return Err(Error::Migration(format!(
            "the PostgreSQL database is at consensus-db layout revision {found}, this library needs {PG_LAYOUT}; \
             open it with migrate=True (or call migrate())"
        )));
    }
    c.client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])?;
    let result = migrate_locked(c);
    // Released even when migrating failed (a session lock outlives the transaction).
    let unlocked = c.client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]);
    result?;
    unlocked?;
    Ok(())
}

fn migrate_locked(c: &mut Session) -> Result<()> {
    c.client
        .batch_execute("CREATE TABLE IF NOT EXISTS consensus_db_meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL)")?;
    // Read again under the lock: another host may have migrated meanwhile.
    let reader = min_reader_layout(c)?;
    if reader > PG_LAYOUT {
        return Err(Error::LayoutTooNew { found: reader, supported: PG_LAYOUT });
    }
    let found = layout(c)?;
    for &(version, min_reader, sql) in MIGRATIONS.iter().filter(|(v, _, _)| *v > found) {
        let mut t = c.client.transaction()?;
        t.batch_execute(sql)
            .map_err(|e| Error::Migration(format!("layout revision {version}: {}", super::map_error(&e))))?;
        t.execute(
            "INSERT INTO consensus_db_meta (key, value) VALUES ('pg_layout', $1), ('pg_revision', $2)
             ON CONFLICT (key) DO UPDATE SET value = GREATEST(consensus_db_meta.value, excluded.value)",
            &[&min_reader, &version],
        )?;
        t.commit()?;
    }
    Ok(())
}

pub const SPAWN: &str =
    "INSERT INTO agent_executions (agent_id, spec_id, stage, phase_type, agent_name, run_id, spawned_at)
     VALUES ($1, $2, $3, $4, $5, $6, consensus_db_now_text())
     ON CONFLICT (agent_id) DO UPDATE SET spec_id = excluded.spec_id, stage = excluded.stage,
       phase_type = excluded.phase_type, agent_name = excluded.agent_name, run_id = excluded.run_id,
       spawned_at = excluded.spawned_at, completed_at = NULL, response_text = NULL, extraction_error = NULL";

pub const SPAWN_ON_BRANCH: &str =
    "INSERT INTO agent_executions (agent_id, spec_id, stage, phase_type, agent_name, run_id, branch_id, spawned_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7, consensus_db_now_text())
     ON CONFLICT (agent_id) DO UPDATE SET spec_id = excluded.spec_id, stage = excluded.stage,
       phase_type = excluded.phase_type, agent_name = excluded.agent_name, run_id = excluded.run_id,
       branch_id = excluded.branch_id, spawned_at = excluded.spawned_at, completed_at = NULL, response_text = NULL,
       extraction_error = NULL";

/// The routing read, with the branch or (no column) NULL.
pub fn route(branch_column: bool) -> &'static str {
    if branch_column {
        "SELECT phase_type, stage, branch_id FROM agent_executions WHERE agent_id = $1"
    } else {
        "SELECT phase_type, stage, NULL::text FROM agent_executions WHERE agent_id = $1"
    }
}

/// The executions of a stage (`$3`: the branch, or NULL for all) in a page's order, at
/// most `$4` (NULL: all), after the cursor's (`$5`, `$6`) when the page has one.
pub fn executions(on_branch: bool, branch_column: bool, window: &Window<ExecutionKey>) -> &'static str {
    static SQL: LazyLock<Vec<String>> =
        LazyLock::new(|| (0..16).map(|i| executions_sql(i & 1 != 0, i & 2 != 0, i & 4 != 0, i & 8 != 0)).collect());
    let i = usize::from(on_branch)
        | usize::from(branch_column) << 1
        | usize::from(window.from.is_some()) << 2
        | usize::from(window.descending) << 3;
    &SQL[i]
}

fn executions_sql(on_branch: bool, branch_column: bool, bounded: bool, descending: bool) -> String {
    let branch = if branch_column { "branch_id" } else { "NULL::text" };
    let filter = if on_branch { "AND branch_id = $3" } else { "AND $3::text IS NULL" };
    format!(
        "SELECT agent_id, spec_id, stage, phase_type, agent_name, run_id, {branch}, spawned_at, completed_at,
                response_text
         FROM agent_executions WHERE spec_id = $1 AND stage = $2 {filter} {}
         {} LIMIT $4",
        execution_bound(bounded, descending, ["$5", "$6"]),
        execution_order(descending)
    )
}

/// A spec's extraction failures in a page's order, at most `$2`, after (`$3`, `$4`).
pub fn extraction_failures(window: &Window<ExecutionKey>) -> &'static str {
    static SQL: LazyLock<Vec<String>> =
        LazyLock::new(|| (0..4).map(|i| extraction_failures_sql(i & 1 != 0, i & 2 != 0)).collect());
    &SQL[usize::from(window.from.is_some()) | usize::from(window.descending) << 1]
}

fn extraction_failures_sql(bounded: bool, descending: bool) -> String {
    format!(
        "SELECT agent_id, spec_id, stage, phase_type, agent_name, run_id, spawned_at, completed_at, response_text,
                extraction_error
         FROM agent_executions WHERE spec_id = $1 AND extraction_error IS NOT NULL {}
         {} LIMIT $2",
        execution_bound(bounded, descending, ["$3", "$4"]),
        execution_order(descending)
    )
}

fn execution_bound(bounded: bool, descending: bool, params: [&str; 2]) -> String {
    if bounded {
        format!("AND {}", execution_after_sql(descending, params))
    } else {
        String::new()
    }
}

fn execution_order(descending: bool) -> &'static str {
    if descending {
        "ORDER BY spawned_at DESC, agent_id DESC"
    } else {
        "ORDER BY spawned_at, agent_id"
    }
}

/// A page of a spec/stage's artifacts: at most `$3` (NULL: all), after the cursor's key
/// (`$4`-`$6`) when the page has one. One schema here: every row ranks as new-schema.
pub fn artifacts_page(window: &Window<ArtifactKey>) -> &'static str {
    static SQL: LazyLock<Vec<String>> =
        LazyLock::new(|| (0..4).map(|i| artifacts_page_sql(i & 1 != 0, i & 2 != 0)).collect());
    &SQL[usize::from(window.from.is_some()) | usize::from(window.descending) << 1]
}

fn artifacts_page_sql(bounded: bool, descending: bool) -> String {
    let bound = if bounded {
        let key = ["$4::bigint", "$5::bigint", "$6::bigint"];
        format!("AND {}", after_sql("o.output_timestamp", "o.id", 0, descending, key))
    } else {
        String::new()
    };
    let dir = if descending { "DESC" } else { "ASC" };
    format!(
        "SELECT o.id, o.agent_name, o.content_text, o.response_text, r.orchestrator_run_id, o.output_timestamp,
                o.model_version
         FROM consensus_runs r JOIN agent_outputs o ON o.run_id = r.id
         WHERE r.spec_id = $1 AND r.stage = $2 {bound}
         ORDER BY o.output_timestamp {dir}, o.id {dir} LIMIT $3"
    )
}

pub const SPAWN_INFO: &str = "SELECT phase_type, stage FROM agent_executions WHERE agent_id = $1";
pub const AGENT_NAME: &str = "SELECT agent_name FROM agent_executions WHERE agent_id = $1";
pub const COMPLETE: &str =
    "UPDATE agent_executions SET completed_at = consensus_db_now_text(), response_text = $2 WHERE agent_id = $1";
pub const FAIL_EXTRACTION: &str =
    "UPDATE agent_executions SET completed_at = consensus_db_now_text(), response_text = $2,
     extraction_error = $3 WHERE agent_id = $1";
/// The text timestamps compare as text, as on SQLite.
pub const CLEANUP: &str = "DELETE FROM agent_executions
     WHERE spawned_at < to_char((clock_timestamp() AT TIME ZONE 'UTC') - make_interval(days => $1::bigint::int),
                                'YYYY-MM-DD HH24:MI:SS')";
/// Retention's second half: the idempotency keys kept past `$1` ms.
pub const PRUNE_KEYS: &str = "DELETE FROM consensus_idempotency WHERE created_at_ms < consensus_db_now_ms() - $1";

pub const STORE_ARTIFACT_KEYED: &str =
    "SELECT consensus_db_store_artifact_keyed($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";
pub const STORE_SYNTHESIS_FENCED: &str = "SELECT consensus_db_store_synthesis_fenced($1, $2, $3, $4, $5, $6, $7, $8,
     $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)";
pub const CLAIM_STAGE: &str = "SELECT * FROM consensus_db_claim_stage($1, $2, $3, $4, $5, $6, $7)";
pub const RENEW_CLAIM: &str =
    "UPDATE consensus_claims SET expires_at_ms = consensus_db_now_ms() + $6 + $7, lease_ms = $7
     WHERE spec_id = $1 AND stage = $2 AND branch_id = $3 AND token = $4 AND owner = $5 AND released_at_ms IS NULL
       AND expires_at_ms > consensus_db_now_ms() + $6
     RETURNING expires_at_ms";
pub const CLAIM_ROW: &str = "SELECT token, owner, expires_at_ms, released_at_ms, consensus_db_now_ms() + $4
     FROM consensus_claims WHERE spec_id = $1 AND stage = $2 AND branch_id = $3";
pub const RELEASE_CLAIM: &str = "UPDATE consensus_claims SET released_at_ms = consensus_db_now_ms() + $6,
       expires_at_ms = LEAST(expires_at_ms, consensus_db_now_ms() + $6)
     WHERE spec_id = $1 AND stage = $2 AND branch_id = $3 AND token = $4 AND owner = $5 AND released_at_ms IS NULL";
pub const LIVE_CLAIMS: &str = "SELECT spec_id, stage, NULLIF(branch_id, ''), run_id, owner, token, lease_ms,
       claimed_at_ms, expires_at_ms
     FROM consensus_claims
     WHERE ($1::text IS NULL OR spec_id = $1) AND released_at_ms IS NULL AND expires_at_ms > consensus_db_now_ms() + $2
     ORDER BY spec_id, stage, branch_id";

/// [`CLEANUP`] on a database with the table of expected agents: the sets declared
/// before the same cutoff go in the same statement (the count is the executions').
pub const CLEANUP_WITH_EXPECTED: &str = "WITH expired AS (DELETE FROM consensus_expected_agents
       WHERE declared_at_ms < consensus_db_now_ms() - $1::bigint * 86400000)
     DELETE FROM agent_executions
     WHERE spawned_at < to_char((clock_timestamp() AT TIME ZONE 'UTC') - make_interval(days => $1::bigint::int),
                                'YYYY-MM-DD HH24:MI:SS')";

pub const STORE_ARTIFACT: &str = "SELECT consensus_db_store_artifact($1, $2, $3, $4, $5, $6, $7, $8)";
pub const COUNT_ARTIFACTS: &str = "SELECT count(*) FROM consensus_runs r JOIN agent_outputs o ON o.run_id = r.id
     WHERE r.spec_id = $1 AND r.stage = $2";

pub const DELETE_OUTPUTS: &str = "DELETE FROM agent_outputs WHERE run_id IN (SELECT id FROM consensus_runs WHERE spec_id = $1 AND ($2::text IS NULL OR stage = $2))";
pub const DELETE_EMPTY_OPEN_RUNS: &str = "DELETE FROM consensus_runs r WHERE r.spec_id = $1 AND ($2::text IS NULL OR r.stage = $2) AND r.synthesis_json IS NULL
       AND NOT EXISTS (SELECT 1 FROM agent_outputs o WHERE o.run_id = r.id)";
pub const DELETE_RUNS: &str = "DELETE FROM consensus_runs WHERE spec_id = $1 AND ($2::text IS NULL OR stage = $2)";

pub const STORE_SYNTHESIS: &str = "SELECT consensus_db_store_synthesis($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";
pub const LATEST_SYNTHESIS: &str = "SELECT id, synthesis_json::text, COALESCE(degraded, false), orchestrator_run_id,
       COALESCE(synthesized_at, run_timestamp) AS at
     FROM consensus_runs WHERE spec_id = $1 AND stage = $2 AND synthesis_json IS NOT NULL
     ORDER BY at DESC, id DESC LIMIT 1";

/// A batch in one transaction: each group's open run once, then one multi-row INSERT
/// of every output (arrays unnested in input order). Tokens make a repetition after a
/// lost connection return the first attempt's ids instead of writing again.
pub fn store_batch(c: &mut Session, artifacts: &[NewArtifact], tokens: &[String], first: bool) -> Result<Vec<i64>> {
    // Only a repetition can find its rows already written.
    let found = if first {
        Vec::new()
    } else {
        c.client.query("SELECT id FROM agent_outputs WHERE write_token = ANY($1) ORDER BY id", &[&tokens])?
    };
    if found.len() == artifacts.len() {
        return Ok(found.iter().map(|r| r.get(0)).collect());
    }
    if !found.is_empty() {
        return Err(Error::Internal(format!(
            "store_artifacts: {} of the batch's {} rows are stored, which one transaction cannot leave",
            found.len(),
            artifacts.len()
        )));
    }
    let mut t = c.client.transaction()?;
    let mut runs: std::collections::HashMap<(&str, &str, Option<&str>), i64> = std::collections::HashMap::new();
    let mut run_of = Vec::with_capacity(artifacts.len());
    for a in artifacts {
        let key = (a.spec_id.as_str(), a.stage.as_str(), a.run_id.as_deref());
        let run = match runs.get(&key) {
            Some(&r) => r,
            None => {
                let r: i64 = t.query_one("SELECT consensus_db_open_run($1, $2, $3)", &[&key.0, &key.1, &key.2])?.get(0);
                runs.insert(key, r);
                r
            }
        };
        run_of.push(run);
    }
    let names: Vec<&str> = artifacts.iter().map(|a| a.agent_name.as_str()).collect();
    let models: Vec<Option<&str>> = artifacts.iter().map(|a| a.model_version.as_deref()).collect();
    let contents: Vec<&str> = artifacts.iter().map(|a| a.content_json.as_str()).collect();
    let responses: Vec<Option<&str>> = artifacts.iter().map(|a| a.response_text.as_deref()).collect();
    let rows = t
        .query(
            "INSERT INTO agent_outputs (run_id, agent_name, model_version, content, content_text, output_timestamp,
                                    response_text, write_token)
         SELECT u.run, u.agent, u.model, u.content::jsonb, u.content, now.ms, u.response, u.token
         FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
              WITH ORDINALITY AS u(run, agent, model, content, response, token, ord),
              (SELECT consensus_db_now_ms() AS ms) now
         ORDER BY u.ord
         RETURNING id",
            &[&run_of, &names, &models, &contents, &responses, &tokens],
        )
        .map_err(|e| match e.as_db_error() {
            // The first attempt, still running on a connection this side lost, wrote
            // the same tokens: try again, and the next attempt finds its rows.
            Some(db) if db.constraint() == Some("agent_outputs_write_token_key") => crate::error::Error::Busy(format!(
                "store_artifacts: an earlier attempt of this batch committed meanwhile: {}",
                db.message()
            )),
            _ => super::map_error(&e),
        })?;
    t.commit()?;
    // Identity values are drawn in row order, so ascending ids are the input order.
    let mut ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    ids.sort_unstable();
    if ids.len() != artifacts.len() {
        return Err(Error::Internal(format!("store_artifacts: {} ids for {} rows", ids.len(), artifacts.len())));
    }
    Ok(ids)
}

/// Whether the database has the table of expected agents (revision 3).
pub fn has_expected_agents(c: &mut Session) -> Result<bool> {
    Ok(c.client.query_one("SELECT to_regclass('consensus_expected_agents') IS NOT NULL", &[])?.get(0))
}

/// The channel a completion's transaction notifies (`schema_3.sql`).
pub const AGENTS_CHANNEL: &str = "LISTEN consensus_db_agents";

/// `expect_agents`: `$1` the ids in order, then the set; new ids inserted in order.
pub const EXPECT_AGENTS: &str =
    "INSERT INTO consensus_expected_agents (agent_id, spec_id, stage, run_id, branch_id, declared_at_ms)
     SELECT a, $2, $3, $4, $5, consensus_db_now_ms() FROM unnest($1::text[]) WITH ORDINALITY AS t(a, n) ORDER BY n
     ON CONFLICT (agent_id) DO NOTHING";

/// After [`EXPECT_AGENTS`], in its transaction: one of the ids another set expects.
pub const EXPECTED_ELSEWHERE: &str = "SELECT agent_id, spec_id, stage, run_id, branch_id FROM consensus_expected_agents
     WHERE agent_id = ANY($1::text[]) AND (spec_id, stage, run_id, branch_id) IS DISTINCT FROM ($2, $3, $4, $5)
     ORDER BY agent_id LIMIT 1";

/// The state of listed agents' executions of a stage (`$4`: their branch, or NULL).
pub fn agents_status(branch_column: bool) -> &'static str {
    if branch_column {
        "SELECT a.id, e.completed_at IS NOT NULL, e.extraction_error IS NOT NULL
         FROM unnest($1::text[]) WITH ORDINALITY AS a(id, n) LEFT JOIN agent_executions e
           ON e.agent_id = a.id AND e.spec_id = $2 AND e.stage = $3 AND ($4::text IS NULL OR e.branch_id = $4)
         ORDER BY a.n"
    } else {
        "SELECT a.id, e.completed_at IS NOT NULL, e.extraction_error IS NOT NULL
         FROM unnest($1::text[]) WITH ORDINALITY AS a(id, n) LEFT JOIN agent_executions e
           ON e.agent_id = a.id AND e.spec_id = $2 AND e.stage = $3 AND $4::text IS NULL
         ORDER BY a.n"
    }
}

/// The state of a run's expected set, in the order declared.
pub const RUN_STATUS: &str = "SELECT x.agent_id, e.completed_at IS NOT NULL, e.extraction_error IS NOT NULL
     FROM consensus_expected_agents x LEFT JOIN agent_executions e
       ON e.agent_id = x.agent_id AND e.spec_id = x.spec_id AND e.stage = x.stage
     WHERE x.spec_id = $1 AND x.stage = $2 AND x.run_id = $3 AND x.branch_id = $4
     ORDER BY x.seq";
