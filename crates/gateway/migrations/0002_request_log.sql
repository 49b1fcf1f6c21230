-- The request log: one row per finished completion request (never prompt or completion text).
-- Portable between SQLite and PostgreSQL: TEXT and BIGINT only; times are Unix milliseconds, latency
-- microseconds, money nano-dollars; `estimated` is 0 or 1.
CREATE TABLE IF NOT EXISTS request_log (
    at_ms             BIGINT NOT NULL,
    request_id        TEXT NOT NULL,
    key_id            TEXT NOT NULL,
    model             TEXT NOT NULL,
    deployment        TEXT NOT NULL,
    tier              TEXT,
    route_reason      TEXT NOT NULL,
    cache_status      TEXT NOT NULL,
    status            BIGINT NOT NULL,
    latency_us        BIGINT NOT NULL,
    prompt_tokens     BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    cost_nanos        BIGINT NOT NULL,
    estimated         BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS request_log_at ON request_log (at_ms);
CREATE INDEX IF NOT EXISTS request_log_key_at ON request_log (key_id, at_ms);
