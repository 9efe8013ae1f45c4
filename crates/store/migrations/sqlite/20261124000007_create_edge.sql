-- Edge enforcement: gateway routes, IP access lists, abuse flags, and the workspace
-- settings that go with them.
ALTER TABLE workspaces ADD COLUMN ip_access_lists_suspended INTEGER NOT NULL DEFAULT 0;
ALTER TABLE workspaces ADD COLUMN data_retention_consent INTEGER NOT NULL DEFAULT 0;
CREATE TABLE gateway_routes (
    id TEXT PRIMARY KEY NOT NULL,
    path_prefix TEXT NOT NULL UNIQUE,
    spec TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE ip_access_lists (
    id TEXT PRIMARY KEY NOT NULL,
    workspace_id TEXT NOT NULL REFERENCES workspaces (id),
    label TEXT NOT NULL,
    list_type TEXT NOT NULL CHECK (list_type IN ('ALLOW', 'BLOCK')),
    ip_addresses TEXT NOT NULL,
    enabled INTEGER NOT NULL,
    created_by TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (workspace_id, label)
);
CREATE TABLE abuse_flags (
    id TEXT PRIMARY KEY NOT NULL,
    workspace_id TEXT NOT NULL,
    subject_kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    level INTEGER NOT NULL,
    rejected INTEGER NOT NULL,
    flagged_at TEXT NOT NULL,
    penalty_until TEXT NOT NULL,
    cleared_at TEXT,
    cleared_by TEXT
);
CREATE INDEX abuse_flags_workspace ON abuse_flags (workspace_id, id);
