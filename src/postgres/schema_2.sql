-- Layout revision 2: only adds (the minimum reader layout stays 1, so the previous
-- release keeps opening the database mid-rollout). The predecessor's branch column and
-- index on the routing table, under its names; consensus_ok as the predecessor writes
-- it (true on every run: it has an artifact or a synthesis; success is the synthesis
-- status), the runs written with false corrected and the two functions that wrote it
-- replaced (an older release calls them too).
ALTER TABLE agent_executions ADD COLUMN IF NOT EXISTS branch_id TEXT;
-- Partial, as on SQLite: a spawn without a branch writes no index entry.
CREATE INDEX IF NOT EXISTS idx_agent_executions_branch ON agent_executions (spec_id, stage, branch_id)
    WHERE branch_id IS NOT NULL;
UPDATE consensus_runs SET consensus_ok = true WHERE NOT consensus_ok;

CREATE OR REPLACE FUNCTION consensus_db_open_run(p_spec TEXT, p_stage TEXT, p_run TEXT) RETURNS BIGINT
LANGUAGE plpgsql AS $$
DECLARE
    r BIGINT;
    at BIGINT := consensus_db_now_ms();
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(p_spec || chr(1) || p_stage || chr(1) || coalesce(p_run, chr(2)), 17));
    SELECT id INTO r FROM consensus_runs
     WHERE spec_id = p_spec AND stage = p_stage AND orchestrator_run_id IS NOT DISTINCT FROM p_run
       AND synthesis_json IS NULL
     ORDER BY id DESC LIMIT 1;
    IF r IS NOT NULL THEN
        RETURN r;
    END IF;
    LOOP
        INSERT INTO consensus_runs (spec_id, stage, orchestrator_run_id, run_timestamp, consensus_ok, degraded)
        VALUES (p_spec, p_stage, p_run, at, true, false)
        ON CONFLICT (spec_id, stage, run_timestamp) DO NOTHING
        RETURNING id INTO r;
        IF r IS NOT NULL THEN
            RETURN r;
        END IF;
        at := at + 1;
    END LOOP;
END $$;

CREATE OR REPLACE FUNCTION consensus_db_store_synthesis(p_spec TEXT, p_stage TEXT, p_markdown TEXT, p_path TEXT,
    p_status TEXT, p_count BIGINT, p_agreements TEXT, p_conflicts TEXT, p_degraded BOOLEAN, p_run TEXT,
    p_token TEXT) RETURNS BIGINT
LANGUAGE plpgsql AS $$
DECLARE
    r BIGINT;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(p_spec || chr(1) || p_stage || chr(1) || coalesce(p_run, chr(2)), 17));
    SELECT id INTO r FROM consensus_runs WHERE synthesis_token = p_token;
    IF r IS NOT NULL THEN
        RETURN r;
    END IF;
    r := consensus_db_open_run(p_spec, p_stage, p_run);
    UPDATE consensus_runs
       SET synthesis_json = jsonb_build_object('output_markdown', p_markdown, 'output_path', p_path,
               'status', p_status, 'artifacts_count', p_count, 'agreements', p_agreements, 'conflicts', p_conflicts),
           consensus_ok = true, degraded = p_degraded,
           synthesized_at = consensus_db_now_ms(), synthesis_token = p_token
     WHERE id = r;
    RETURN r;
END $$;
