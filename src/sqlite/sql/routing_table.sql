-- agent_executions, the routing table: its legacy shape, in every version, with the
-- branch the predecessor's newest builds record (they ADD COLUMN it; a file that
-- predates it gets it from the migration before this runs); its index is branch_index.sql.
CREATE TABLE IF NOT EXISTS agent_executions (
    agent_id TEXT PRIMARY KEY, spec_id TEXT NOT NULL, stage TEXT NOT NULL,
    phase_type TEXT NOT NULL, agent_name TEXT NOT NULL, run_id TEXT,
    spawned_at TEXT NOT NULL, completed_at TEXT, response_text TEXT,
    extraction_error TEXT, branch_id TEXT);
CREATE INDEX IF NOT EXISTS idx_agent_executions_spec ON agent_executions(spec_id, stage);
CREATE INDEX IF NOT EXISTS idx_agent_executions_run ON agent_executions(run_id);
CREATE INDEX IF NOT EXISTS idx_agent_executions_spawned ON agent_executions(spawned_at);
