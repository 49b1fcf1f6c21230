-- Retraining on the gateway's own traffic: user feedback per request, and the router's feature inputs
-- per request (opt-in, `[routing] log_features`; never prompt text).
-- Portable between SQLite and PostgreSQL: TEXT and BIGINT only; times are Unix milliseconds, scores
-- millionths of [0, 1].
--
-- Feedback is keyed by (key_id, request_id) with no foreign key: request ids come from clients and may
-- repeat across keys, and a rating may be stored before the request-log row (batched) is written; the
-- export joins the two. `key_id` is the key that made the request (the request-log row's key_id).
CREATE TABLE IF NOT EXISTS request_feedback (
    key_id       TEXT NOT NULL,
    request_id   TEXT NOT NULL,
    score_micros BIGINT NOT NULL,
    comment      TEXT,
    created_ms   BIGINT NOT NULL,
    updated_ms   BIGINT NOT NULL,
    PRIMARY KEY (key_id, request_id)
);
-- The learned scorer's inputs for `auto` requests: JSON (feature version, hash settings, dense
-- features, encoded hashed n-grams); NULL when not logged.
ALTER TABLE request_log ADD COLUMN features TEXT;
CREATE INDEX IF NOT EXISTS request_log_request_id ON request_log (request_id);
