-- The agents a stage's run waits for (`expect_agents`): the expected set, persisted so a
-- wait by run id knows every agent before all of them are spawned, and survives the
-- orchestrator. One row per agent (an agent id belongs to one set); `branch_id` is ''
-- for a set without a branch (a key column cannot be NULL). Layout revision 5, only
-- added: the predecessor and earlier releases never read it.
CREATE TABLE IF NOT EXISTS consensus_expected_agents (
    agent_id TEXT PRIMARY KEY, spec_id TEXT NOT NULL, stage TEXT NOT NULL,
    run_id TEXT NOT NULL, branch_id TEXT NOT NULL DEFAULT '', declared_at_ms INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS idx_consensus_expected_agents_set
    ON consensus_expected_agents(spec_id, stage, run_id, branch_id);
-- Retention (`cleanup_old_executions`) deletes the sets declared before its cutoff.
CREATE INDEX IF NOT EXISTS idx_consensus_expected_agents_declared ON consensus_expected_agents(declared_at_ms);
