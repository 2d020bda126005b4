-- The predecessor's index on its branch column, under its name and columns exactly:
-- a branch's executions of a stage (its CREATE INDEX IF NOT EXISTS is then a no-op).
CREATE INDEX IF NOT EXISTS idx_agent_executions_branch ON agent_executions(spec_id, stage, branch_id);
