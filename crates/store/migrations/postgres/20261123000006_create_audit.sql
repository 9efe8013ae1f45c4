-- The audit trail (one hash chain per workspace), its signed heads and retention
-- checkpoints, the key fingerprint every node must share, security events, and the
-- networks each credential was used from.
ALTER TABLE workspaces ADD COLUMN audit_retention_days BIGINT;
ALTER TABLE workspaces ADD COLUMN auto_revoke_unused_days BIGINT;
ALTER TABLE tokens ADD COLUMN auto_revoke_notified_at TIMESTAMPTZ;
CREATE TABLE audit_entries (
    workspace_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    id TEXT NOT NULL UNIQUE,
    created_at TIMESTAMPTZ NOT NULL,
    request_id TEXT,
    principal_id TEXT,
    credential_id TEXT,
    action TEXT NOT NULL,
    resource_type TEXT,
    resource_id TEXT,
    scope TEXT,
    source_ip TEXT,
    user_agent TEXT,
    outcome TEXT NOT NULL,
    status BIGINT NOT NULL,
    latency_us BIGINT NOT NULL,
    detail TEXT,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (workspace_id, seq)
);
CREATE INDEX audit_entries_time ON audit_entries (workspace_id, created_at);
CREATE INDEX audit_entries_credential ON audit_entries (credential_id, created_at);
CREATE TABLE audit_heads (
    workspace_id TEXT PRIMARY KEY NOT NULL,
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL,
    signature TEXT NOT NULL
);
CREATE TABLE audit_checkpoints (
    workspace_id TEXT PRIMARY KEY NOT NULL,
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL,
    purged_before TIMESTAMPTZ NOT NULL,
    signature TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE audit_key (
    id INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    fingerprint TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE security_events (
    id TEXT PRIMARY KEY NOT NULL,
    workspace_id TEXT NOT NULL,
    type TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    payload TEXT NOT NULL
);
CREATE INDEX security_events_workspace ON security_events (workspace_id, id);
CREATE TABLE credential_networks (
    credential_id TEXT NOT NULL,
    network TEXT NOT NULL,
    last_seen_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (credential_id, network)
);
