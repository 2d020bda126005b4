-- Layout revision 3: only adds (the minimum reader layout stays 1). The expected sets of
-- agents (`expect_agents`), as on SQLite (`branch_id` '' for a set without a branch;
-- `seq` keeps the order they were declared in, SQLite's rowid), and
-- the wake-up of waiters (`wait_for_agents`): a completion, an extraction failure or a
-- newly expected agent notifies channel `consensus_db_agents` in its own transaction
-- (payload: spec_id, chr(31), stage), whichever build or program wrote it.
CREATE TABLE IF NOT EXISTS consensus_expected_agents (
    agent_id TEXT PRIMARY KEY, spec_id TEXT NOT NULL, stage TEXT NOT NULL,
    run_id TEXT NOT NULL, branch_id TEXT NOT NULL DEFAULT '', declared_at_ms BIGINT NOT NULL,
    seq BIGINT GENERATED ALWAYS AS IDENTITY);
CREATE INDEX IF NOT EXISTS idx_consensus_expected_agents_set
    ON consensus_expected_agents (spec_id, stage, run_id, branch_id);
CREATE INDEX IF NOT EXISTS idx_consensus_expected_agents_declared ON consensus_expected_agents (declared_at_ms);

CREATE OR REPLACE FUNCTION consensus_db_notify_agents() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('consensus_db_agents', NEW.spec_id || chr(31) || NEW.stage);
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS consensus_db_agent_finished ON agent_executions;
CREATE TRIGGER consensus_db_agent_finished AFTER UPDATE OF completed_at ON agent_executions
    FOR EACH ROW WHEN (NEW.completed_at IS NOT NULL) EXECUTE FUNCTION consensus_db_notify_agents();
DROP TRIGGER IF EXISTS consensus_db_agent_expected ON consensus_expected_agents;
CREATE TRIGGER consensus_db_agent_expected AFTER INSERT ON consensus_expected_agents
    FOR EACH ROW EXECUTE FUNCTION consensus_db_notify_agents();
