-- Edge enforcement: gateway routes, IP access lists, abuse flags, and the workspace
-- settings that go with them.
ALTER TABLE workspaces ADD COLUMN ip_access_lists_suspended BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE workspaces ADD COLUMN data_retention_consent BOOLEAN NOT NULL DEFAULT FALSE;
CREATE TABLE gateway_routes (
    id TEXT PRIMARY KEY NOT NULL,
    path_prefix TEXT NOT NULL UNIQUE,
    spec TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE ip_access_lists (
    id TEXT PRIMARY KEY NOT NULL,
    workspace_id TEXT NOT NULL REFERENCES workspaces (id),
    label TEXT NOT NULL,
    list_type TEXT NOT NULL CHECK (list_type IN ('ALLOW', 'BLOCK')),
    ip_addresses TEXT NOT NULL,
    enabled BOOLEAN NOT NULL,
    created_by TEXT,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    UNIQUE (workspace_id, label)
);
CREATE TABLE abuse_flags (
    id TEXT PRIMARY KEY NOT NULL,
    workspace_id TEXT NOT NULL,
    subject_kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    level BIGINT NOT NULL,
    rejected BIGINT NOT NULL,
    flagged_at TIMESTAMPTZ NOT NULL,
    penalty_until TIMESTAMPTZ NOT NULL,
    cleared_at TIMESTAMPTZ,
    cleared_by TEXT
);
CREATE INDEX abuse_flags_workspace ON abuse_flags (workspace_id, id);
