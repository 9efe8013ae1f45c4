CREATE TABLE tokens (
    id TEXT PRIMARY KEY NOT NULL,
    workspace_id TEXT NOT NULL REFERENCES workspaces (id),
    owner_id TEXT NOT NULL REFERENCES principals (id) ON DELETE CASCADE,
    label TEXT NOT NULL,
    digest TEXT NOT NULL UNIQUE,
    last_four TEXT NOT NULL,
    scopes TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ,
    revoked_at TIMESTAMPTZ,
    last_used_at TIMESTAMPTZ,
    last_used_ip TEXT
);
CREATE INDEX tokens_owner ON tokens (owner_id, id);
CREATE INDEX tokens_workspace ON tokens (workspace_id, id);
