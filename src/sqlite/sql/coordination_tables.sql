-- Layout revision 5 (only adds): the store's coordination tables (docs/claims.md).
-- Predecessor builds never read them; nothing else refers to them.
--
-- Claims: one row per (spec_id, stage, branch_id), never deleted, so its token only
-- grows (a new claim takes token + 1; a release or an expiry keeps the row). ''
-- stands for "no branch" (ids are never empty) so the key is one PRIMARY KEY.
-- Times are Unix milliseconds on the database's clock.
CREATE TABLE IF NOT EXISTS consensus_claims (
    spec_id TEXT NOT NULL,
    stage TEXT NOT NULL,
    branch_id TEXT NOT NULL DEFAULT '',
    token INTEGER NOT NULL,
    owner TEXT NOT NULL,
    run_id TEXT,
    lease_ms INTEGER NOT NULL,
    claimed_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    released_at_ms INTEGER,
    PRIMARY KEY (spec_id, stage, branch_id));

-- Idempotency keys: store-wide, the first write's id and a digest of its content
-- (SHA-256 of canonical JSON), kept idempotency_days after created_at_ms; they outlive
-- the row they name (deletes leave them), retention prunes the expired.
CREATE TABLE IF NOT EXISTS consensus_idempotency (
    key TEXT PRIMARY KEY,
    operation TEXT NOT NULL,
    digest TEXT NOT NULL,
    row_id INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS idx_consensus_idempotency_created ON consensus_idempotency(created_at_ms);
