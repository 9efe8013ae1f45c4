-- OAuth 2.0 clients, and which client each issued access token belongs to. Access tokens
-- are rows of `tokens` (kind 'oauth_access', id = the JWT's jti, digest = SHA-256 of the
-- whole JWT), so they are verified, cached, revoked and invalidated like every credential.
CREATE TABLE oauth_clients (
    id TEXT PRIMARY KEY NOT NULL,
    workspace_id TEXT NOT NULL REFERENCES workspaces (id),
    name TEXT NOT NULL,
    client_type TEXT NOT NULL,
    grant_types TEXT NOT NULL,
    redirect_uris TEXT NOT NULL,
    scopes TEXT NOT NULL,
    audiences TEXT NOT NULL,
    access_token_ttl_seconds BIGINT NOT NULL,
    refresh_token_ttl_seconds BIGINT NOT NULL,
    owner_id TEXT REFERENCES principals (id) ON DELETE CASCADE,
    secret_digest TEXT UNIQUE,
    secret_last_four TEXT,
    previous_secret_digest TEXT UNIQUE,
    previous_secret_expires_at TIMESTAMPTZ,
    secret_rotated_at TIMESTAMPTZ,
    created_by TEXT,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    last_used_at TIMESTAMPTZ
);
CREATE INDEX oauth_clients_workspace ON oauth_clients (workspace_id, id);
CREATE TABLE oauth_tokens (
    token_id TEXT PRIMARY KEY NOT NULL REFERENCES tokens (id) ON DELETE CASCADE,
    client_id TEXT NOT NULL
);
CREATE INDEX oauth_tokens_client ON oauth_tokens (client_id);
