-- Refresh tokens (RFC 6749 §6) and device authorizations (RFC 8628). Neither secret is
-- stored: only SHA-256 digests. A refresh token belongs to a family (the tokens that
-- descend from one grant); reuse of a used one revokes the whole family, with the access
-- tokens issued from it (linked by oauth_tokens.family_id).
ALTER TABLE oauth_tokens ADD COLUMN family_id TEXT;
CREATE INDEX oauth_tokens_family ON oauth_tokens (family_id);
CREATE TABLE oauth_refresh_tokens (
    id TEXT PRIMARY KEY NOT NULL,
    family_id TEXT NOT NULL,
    client_id TEXT NOT NULL REFERENCES oauth_clients (id) ON DELETE CASCADE,
    subject_id TEXT NOT NULL REFERENCES principals (id) ON DELETE CASCADE,
    workspace_id TEXT NOT NULL REFERENCES workspaces (id),
    digest TEXT NOT NULL UNIQUE,
    scopes TEXT NOT NULL,
    audience TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    used_at TIMESTAMPTZ,
    successor_id TEXT,
    revoked_at TIMESTAMPTZ
);
CREATE INDEX oauth_refresh_tokens_family ON oauth_refresh_tokens (family_id);
CREATE INDEX oauth_refresh_tokens_expiry ON oauth_refresh_tokens (expires_at);
CREATE TABLE oauth_device_codes (
    id TEXT PRIMARY KEY NOT NULL,
    client_id TEXT NOT NULL REFERENCES oauth_clients (id) ON DELETE CASCADE,
    device_digest TEXT NOT NULL UNIQUE,
    user_code_digest TEXT NOT NULL UNIQUE,
    scopes TEXT NOT NULL,
    audience TEXT NOT NULL,
    status TEXT NOT NULL,
    subject_id TEXT REFERENCES principals (id) ON DELETE CASCADE,
    workspace_id TEXT REFERENCES workspaces (id),
    granted_scopes TEXT,
    interval_seconds BIGINT NOT NULL,
    last_polled_at TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX oauth_device_codes_client ON oauth_device_codes (client_id, expires_at);
CREATE INDEX oauth_device_codes_expiry ON oauth_device_codes (expires_at);
