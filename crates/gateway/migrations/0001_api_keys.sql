-- Virtual API keys: only the SHA-256 hash of a key is stored, plus a short non-secret prefix for display.
-- Portable between SQLite and PostgreSQL: TEXT and BIGINT only; times are Unix seconds, money nano-dollars.
CREATE TABLE IF NOT EXISTS api_keys (
    id                 TEXT PRIMARY KEY,
    name               TEXT NOT NULL,
    key_hash           TEXT NOT NULL UNIQUE,
    key_prefix         TEXT NOT NULL,
    allowed_models     TEXT NOT NULL DEFAULT '[]',
    rpm                BIGINT,
    tpm                BIGINT,
    max_concurrent     BIGINT,
    budget_nanos       BIGINT,
    budget_period      TEXT NOT NULL DEFAULT 'total',
    expires_at         BIGINT,
    metadata           TEXT NOT NULL DEFAULT '{}',
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL,
    revoked_at         BIGINT,
    spent_nanos        BIGINT NOT NULL DEFAULT 0,
    spend_period_start BIGINT NOT NULL DEFAULT 0
);
