-- The routing read's covering index: agent_id -> phase type, stage and branch. A lookup
-- walks this small tree alone instead of the primary key's and then the table's, whose
-- leaves carry the KB-sized responses (at 1M executions the table is gigabytes and no
-- page cache holds it; this index is tens of megabytes). The predecessor never sees it.
CREATE INDEX IF NOT EXISTS idx_agent_executions_route ON agent_executions(agent_id, phase_type, stage, branch_id);
