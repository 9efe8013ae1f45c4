-- Scoped API keys: credentials in the tokens table (kind 'api_key'), with their limits,
-- address ranges, metadata, rotation policy and previous secret here, and their metered
-- spend per period.
ALTER TABLE tokens ADD COLUMN kind TEXT NOT NULL DEFAULT 'pat';
CREATE TABLE api_keys (
    token_id TEXT PRIMARY KEY NOT NULL REFERENCES tokens (id) ON DELETE CASCADE,
    rate_limit_per_minute BIGINT,
    spend_limit_units BIGINT,
    spend_period TEXT,
    allowed_ip_ranges TEXT,
    metadata TEXT NOT NULL,
    rotation_interval_days BIGINT,
    rotated_at TEXT NOT NULL,
    rotation_due_at TEXT,
    rotation_due_notified_at TEXT,
    previous_digest TEXT UNIQUE,
    previous_last_four TEXT,
    previous_expires_at TEXT,
    created_by TEXT
);
CREATE TABLE api_key_usage (
    token_id TEXT NOT NULL REFERENCES tokens (id) ON DELETE CASCADE,
    period TEXT NOT NULL,
    period_start TEXT NOT NULL,
    units BIGINT NOT NULL,
    warned_at TEXT,
    reached_at TEXT,
    PRIMARY KEY (token_id, period, period_start)
);
CREATE INDEX tokens_kind ON tokens (workspace_id, kind, id);
