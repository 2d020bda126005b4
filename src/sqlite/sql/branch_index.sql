-- The predecessor's index on its branch column, under its name and columns: a branch's
-- executions of a stage (its CREATE INDEX IF NOT EXISTS is then a no-op). Partial: a
-- spawn without a branch writes no entry (the full index cost every spawn a quarter of
-- its rate), and `branch_id = ?` (which implies NOT NULL) still uses it.
CREATE INDEX IF NOT EXISTS idx_agent_executions_branch ON agent_executions(spec_id, stage, branch_id)
    WHERE branch_id IS NOT NULL;
