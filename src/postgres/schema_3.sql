-- Layout revision 3: only adds (the minimum reader layout stays 1): the coordination
-- tables (docs/claims.md, docs/coordination.md) and the functions that use them. An older release keeps
-- calling the functions of revisions 1 and 2, which are unchanged.
--
-- Claims: one row per (spec_id, stage, branch_id; '' for no branch), never deleted, so
-- its token only grows. Times are Unix milliseconds on the server's clock.
CREATE TABLE IF NOT EXISTS consensus_claims (
    spec_id TEXT NOT NULL,
    stage TEXT NOT NULL,
    branch_id TEXT NOT NULL DEFAULT '',
    token BIGINT NOT NULL,
    owner TEXT NOT NULL,
    run_id TEXT,
    lease_ms BIGINT NOT NULL,
    claimed_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    released_at_ms BIGINT,
    PRIMARY KEY (spec_id, stage, branch_id));

-- Idempotency keys, store-wide: the first write's id and the SHA-256 of its canonical
-- JSON; kept idempotency_days after created_at_ms, past a delete of the row.
CREATE TABLE IF NOT EXISTS consensus_idempotency (
    key TEXT PRIMARY KEY,
    operation TEXT NOT NULL,
    digest TEXT NOT NULL,
    row_id BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL);
CREATE INDEX IF NOT EXISTS idx_consensus_idempotency_created ON consensus_idempotency (created_at_ms);

-- A key's first write: its row id, NULL when the key is unused (or expired), or SQLSTATE
-- CD001 when it was used by another operation or other content. Serialised per key by a
-- transaction-scoped advisory lock, so two writers of one key never both write.
CREATE OR REPLACE FUNCTION consensus_db_key_lookup(p_key TEXT, p_operation TEXT, p_digest TEXT, p_keep_ms BIGINT,
    p_offset_ms BIGINT) RETURNS BIGINT
LANGUAGE plpgsql AS $$
DECLARE
    k consensus_idempotency%ROWTYPE;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(p_key, 18));
    SELECT * INTO k FROM consensus_idempotency
     WHERE key = p_key AND created_at_ms > consensus_db_now_ms() + p_offset_ms - p_keep_ms;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF k.operation = p_operation AND k.digest = p_digest THEN
        RETURN k.row_id;
    END IF;
    RAISE EXCEPTION USING ERRCODE = 'CD001', MESSAGE = 'idempotency key used with other content',
        DETAIL = k.operation;
END $$;

CREATE OR REPLACE FUNCTION consensus_db_key_record(p_key TEXT, p_operation TEXT, p_digest TEXT, p_row BIGINT,
    p_offset_ms BIGINT) RETURNS VOID
LANGUAGE sql AS $$
    INSERT INTO consensus_idempotency (key, operation, digest, row_id, created_at_ms)
    VALUES (p_key, p_operation, p_digest, p_row, consensus_db_now_ms() + p_offset_ms)
    ON CONFLICT (key) DO UPDATE SET operation = excluded.operation, digest = excluded.digest,
        row_id = excluded.row_id, created_at_ms = excluded.created_at_ms
$$;

-- One artifact under an idempotency key: the key's first write, or a new one.
CREATE OR REPLACE FUNCTION consensus_db_store_artifact_keyed(p_spec TEXT, p_stage TEXT, p_agent TEXT, p_content TEXT,
    p_response TEXT, p_run TEXT, p_model TEXT, p_key TEXT, p_digest TEXT, p_keep_ms BIGINT, p_offset_ms BIGINT)
RETURNS BIGINT
LANGUAGE plpgsql AS $$
DECLARE
    o BIGINT := consensus_db_key_lookup(p_key, 'store_artifact', p_digest, p_keep_ms, p_offset_ms);
BEGIN
    IF o IS NOT NULL THEN
        RETURN o;
    END IF;
    o := consensus_db_store_artifact(p_spec, p_stage, p_agent, p_content, p_response, p_run, p_model, NULL);
    PERFORM consensus_db_key_record(p_key, 'store_artifact', p_digest, o, p_offset_ms);
    RETURN o;
END $$;

-- Claims a stage: (token, claimed_at_ms, expires_at_ms, took_over_from), or no row
-- while another owner's lease is live.
CREATE OR REPLACE FUNCTION consensus_db_claim_stage(p_spec TEXT, p_stage TEXT, p_branch TEXT, p_run TEXT, p_owner TEXT,
    p_lease_ms BIGINT, p_offset_ms BIGINT)
RETURNS TABLE (o_token BIGINT, o_claimed_at_ms BIGINT, o_expires_at_ms BIGINT, o_took_over_from TEXT)
LANGUAGE plpgsql AS $$
DECLARE
    at BIGINT := consensus_db_now_ms() + p_offset_ms;
    c consensus_claims%ROWTYPE;
BEGIN
    INSERT INTO consensus_claims (spec_id, stage, branch_id, token, owner, run_id, lease_ms, claimed_at_ms,
                                  expires_at_ms)
    VALUES (p_spec, p_stage, p_branch, 1, p_owner, p_run, p_lease_ms, at, at + p_lease_ms)
    ON CONFLICT (spec_id, stage, branch_id) DO NOTHING;
    IF FOUND THEN
        RETURN QUERY SELECT 1::BIGINT, at, at + p_lease_ms, NULL::TEXT;
        RETURN;
    END IF;
    SELECT * INTO c FROM consensus_claims WHERE spec_id = p_spec AND stage = p_stage AND branch_id = p_branch
       FOR UPDATE;
    IF c.released_at_ms IS NULL AND c.expires_at_ms > at AND c.owner <> p_owner THEN
        RETURN;
    END IF;
    UPDATE consensus_claims SET token = c.token + 1, owner = p_owner, run_id = p_run, lease_ms = p_lease_ms,
           claimed_at_ms = at, expires_at_ms = at + p_lease_ms, released_at_ms = NULL
     WHERE spec_id = p_spec AND stage = p_stage AND branch_id = p_branch;
    RETURN QUERY SELECT c.token + 1, at, at + p_lease_ms, CASE WHEN c.released_at_ms IS NULL THEN c.owner END;
END $$;

-- The fence of a write that advances a stage (SQLSTATE CD002 when refused; DETAIL: the
-- stage's newest token, HINT: why). With a claim it must be the newest live one; without,
-- no owner may hold a live claim on the stage. The claim's row stays locked to COMMIT,
-- so no takeover lands between the check and the write.
CREATE OR REPLACE FUNCTION consensus_db_check_fence(p_spec TEXT, p_stage TEXT, p_branch TEXT, p_token BIGINT, p_owner TEXT,
    p_offset_ms BIGINT) RETURNS VOID
LANGUAGE plpgsql AS $$
DECLARE
    at BIGINT := consensus_db_now_ms() + p_offset_ms;
    c consensus_claims%ROWTYPE;
BEGIN
    IF p_token IS NULL THEN
        SELECT * INTO c FROM consensus_claims
         WHERE spec_id = p_spec AND stage = p_stage AND released_at_ms IS NULL AND expires_at_ms > at
         ORDER BY token DESC LIMIT 1 FOR SHARE;
        IF FOUND THEN
            RAISE EXCEPTION USING ERRCODE = 'CD002', MESSAGE = 'the stage has a live claim',
                DETAIL = c.token::TEXT, HINT = 'required:' || c.owner || chr(1) || c.branch_id;
        END IF;
        RETURN;
    END IF;
    SELECT * INTO c FROM consensus_claims WHERE spec_id = p_spec AND stage = p_stage AND branch_id = p_branch
       FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'CD002', MESSAGE = 'stale claim', DETAIL = '', HINT = 'none';
    END IF;
    IF c.token <> p_token OR c.owner <> p_owner THEN
        RAISE EXCEPTION USING ERRCODE = 'CD002', MESSAGE = 'stale claim', DETAIL = c.token::TEXT,
            HINT = 'taken:' || CASE WHEN c.released_at_ms IS NULL AND c.expires_at_ms > at THEN 'live' ELSE 'dead' END
                   || chr(1) || c.owner;
    END IF;
    IF c.released_at_ms IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'CD002', MESSAGE = 'stale claim', DETAIL = c.token::TEXT, HINT = 'released';
    END IF;
    IF c.expires_at_ms <= at THEN
        RAISE EXCEPTION USING ERRCODE = 'CD002', MESSAGE = 'stale claim', DETAIL = c.token::TEXT,
            HINT = 'expired:' || (at - c.expires_at_ms)::TEXT;
    END IF;
END $$;

-- A synthesis with a key and a fence: the internal write token (a repetition within one
-- call) or the key (a repetition by the caller) answers first, then the fence, then the
-- write of revision 2.
CREATE OR REPLACE FUNCTION consensus_db_store_synthesis_fenced(p_spec TEXT, p_stage TEXT, p_markdown TEXT, p_path TEXT,
    p_status TEXT, p_count BIGINT, p_agreements TEXT, p_conflicts TEXT, p_degraded BOOLEAN, p_run TEXT,
    p_token TEXT, p_key TEXT, p_digest TEXT, p_keep_ms BIGINT, p_claim_branch TEXT, p_claim_token BIGINT,
    p_claim_owner TEXT, p_offset_ms BIGINT) RETURNS BIGINT
LANGUAGE plpgsql AS $$
DECLARE
    r BIGINT;
BEGIN
    IF p_token IS NOT NULL THEN
        SELECT id INTO r FROM consensus_runs WHERE synthesis_token = p_token;
        IF r IS NOT NULL THEN
            RETURN r;
        END IF;
    END IF;
    IF p_key IS NOT NULL THEN
        r := consensus_db_key_lookup(p_key, 'store_synthesis', p_digest, p_keep_ms, p_offset_ms);
        IF r IS NOT NULL THEN
            RETURN r;
        END IF;
    END IF;
    PERFORM consensus_db_check_fence(p_spec, p_stage, p_claim_branch, p_claim_token, p_claim_owner, p_offset_ms);
    r := consensus_db_store_synthesis(p_spec, p_stage, p_markdown, p_path, p_status, p_count, p_agreements,
                                      p_conflicts, p_degraded, p_run, p_token);
    IF p_key IS NOT NULL THEN
        PERFORM consensus_db_key_record(p_key, 'store_synthesis', p_digest, r, p_offset_ms);
    END IF;
    RETURN r;
END $$;

-- The expected sets of
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
