-- The legacy schema (version 0), exactly as databases in the field have it.
-- Used by tests and benchmarks to build "old" databases; never applied by migrations.
CREATE TABLE consensus_artifacts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    spec_id TEXT NOT NULL, stage TEXT NOT NULL, agent_name TEXT NOT NULL,
    content_json TEXT NOT NULL, response_text TEXT, run_id TEXT,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
CREATE INDEX idx_spec_stage ON consensus_artifacts(spec_id, stage);
CREATE TABLE consensus_synthesis (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    spec_id TEXT NOT NULL, stage TEXT NOT NULL, output_markdown TEXT NOT NULL,
    output_path TEXT, status TEXT NOT NULL, artifacts_count INTEGER,
    agreements TEXT, conflicts TEXT, degraded BOOLEAN DEFAULT 0, run_id TEXT,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
CREATE INDEX idx_synthesis_spec_stage ON consensus_synthesis(spec_id, stage);
CREATE TABLE agent_executions (
    agent_id TEXT PRIMARY KEY, spec_id TEXT NOT NULL, stage TEXT NOT NULL,
    phase_type TEXT NOT NULL, agent_name TEXT NOT NULL, run_id TEXT,
    spawned_at TEXT NOT NULL, completed_at TEXT, response_text TEXT,
    extraction_error TEXT);
CREATE INDEX idx_agent_executions_spec ON agent_executions(spec_id, stage);
CREATE INDEX idx_agent_executions_run ON agent_executions(run_id);
