-- Version 1: the normalized schema. agent_executions (the routing table) keeps its
-- legacy shape; IF NOT EXISTS because field databases already have it.
CREATE TABLE IF NOT EXISTS agent_executions (
    agent_id TEXT PRIMARY KEY, spec_id TEXT NOT NULL, stage TEXT NOT NULL,
    phase_type TEXT NOT NULL, agent_name TEXT NOT NULL, run_id TEXT,
    spawned_at TEXT NOT NULL, completed_at TEXT, response_text TEXT,
    extraction_error TEXT);
CREATE INDEX IF NOT EXISTS idx_agent_executions_spec ON agent_executions(spec_id, stage);
CREATE INDEX IF NOT EXISTS idx_agent_executions_run ON agent_executions(run_id);
CREATE INDEX IF NOT EXISTS idx_agent_executions_spawned ON agent_executions(spawned_at);

-- One row per spec/stage/run. A run collects agent outputs and is closed by its
-- synthesis; timestamps are integer Unix milliseconds (UTC).
CREATE TABLE consensus_runs (
    id INTEGER PRIMARY KEY,
    spec_id TEXT NOT NULL,
    stage TEXT NOT NULL,
    run_id TEXT,
    run_at_ms INTEGER NOT NULL,
    consensus_ok INTEGER,
    degraded INTEGER NOT NULL DEFAULT 0,
    synthesis TEXT,
    synthesis_status TEXT,
    output_path TEXT,
    artifacts_count INTEGER,
    agreements TEXT,
    conflicts TEXT,
    synthesized_at_ms INTEGER,
    legacy_synthesis_id INTEGER);
-- (spec_id, stage) first: serves spec/stage queries and the open-run lookup of a write.
CREATE INDEX idx_runs_spec_stage ON consensus_runs(spec_id, stage, run_id);
CREATE INDEX idx_runs_run_at ON consensus_runs(run_at_ms);
CREATE INDEX idx_runs_run_id ON consensus_runs(run_id);
-- Which legacy row a backfilled row mirrors. Partial: rows written by this library
-- (NULL here) cost no index work.
CREATE UNIQUE INDEX idx_runs_legacy ON consensus_runs(legacy_synthesis_id) WHERE legacy_synthesis_id IS NOT NULL;

CREATE TABLE agent_outputs (
    id INTEGER PRIMARY KEY,
    run_pk INTEGER NOT NULL REFERENCES consensus_runs(id) ON DELETE CASCADE,
    agent_name TEXT NOT NULL,
    model_version TEXT,
    content TEXT NOT NULL,
    response_text TEXT,
    output_at_ms INTEGER NOT NULL,
    legacy_artifact_id INTEGER);
CREATE INDEX idx_outputs_run ON agent_outputs(run_pk);
CREATE INDEX idx_outputs_agent ON agent_outputs(agent_name);
CREATE UNIQUE INDEX idx_outputs_legacy ON agent_outputs(legacy_artifact_id) WHERE legacy_artifact_id IS NOT NULL;
