-- The artifact pages' index: a run's outputs in time order. A page of a spec/stage
-- reads its keys (time, id) from here and idx_consensus_spec_stage alone, never the
-- rows it skips; the twin pairing finds a legacy row's candidates in a time window.
-- Only adds: the predecessor's inserts name their columns and never see it.
CREATE INDEX IF NOT EXISTS idx_agent_outputs_run_time ON agent_outputs(run_id, output_timestamp);
-- Every output by time: the pages of a stage of many runs walk it from the cursor
-- (a seek per run would cost more than the page), keeping the stage's rows.
CREATE INDEX IF NOT EXISTS idx_agent_outputs_time ON agent_outputs(output_timestamp);
