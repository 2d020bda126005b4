-- This store's fields beyond the seed layout: added columns, all nullable, so the
-- predecessor's inserts (which name their columns) keep working on the same file.
ALTER TABLE consensus_runs ADD COLUMN orchestrator_run_id TEXT;   -- the caller's run id string
ALTER TABLE consensus_runs ADD COLUMN synthesized_at INTEGER;      -- ms; NULL: the run's own timestamp
ALTER TABLE consensus_runs ADD COLUMN legacy_synthesis_id INTEGER; -- the legacy row this mirrors
ALTER TABLE agent_outputs ADD COLUMN response_text TEXT;           -- the agent's raw response
ALTER TABLE agent_outputs ADD COLUMN legacy_artifact_id INTEGER;   -- the legacy row this mirrors

-- The open-run lookup of a write: (spec_id, stage, orchestrator_run_id).
CREATE INDEX idx_consensus_orchestrator_run ON consensus_runs(spec_id, stage, orchestrator_run_id);
-- Partial: rows without a legacy twin cost no index work.
CREATE UNIQUE INDEX idx_consensus_legacy_synthesis ON consensus_runs(legacy_synthesis_id)
    WHERE legacy_synthesis_id IS NOT NULL;
CREATE UNIQUE INDEX idx_agent_outputs_legacy_artifact ON agent_outputs(legacy_artifact_id)
    WHERE legacy_artifact_id IS NOT NULL;

-- The layout revision of this store (user_version keeps the predecessor's meaning).
CREATE TABLE IF NOT EXISTS consensus_db_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
