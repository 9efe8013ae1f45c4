-- Trusted external token issuers (OAuth federation): whose access tokens datastack accepts
-- as Bearer credentials, and which of its principals their subjects are.
CREATE TABLE oauth_issuers (
    id TEXT PRIMARY KEY NOT NULL,
    workspace_id TEXT NOT NULL REFERENCES workspaces (id),
    issuer TEXT NOT NULL UNIQUE,
    jwks_uri TEXT,
    audiences TEXT NOT NULL,
    algorithms TEXT NOT NULL,
    subject_claim TEXT NOT NULL,
    provisioning TEXT NOT NULL,
    scope_claim TEXT NOT NULL,
    scopes TEXT NOT NULL,
    created_by TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX oauth_issuers_workspace ON oauth_issuers (workspace_id, id);
-- Which principal an issuer's subject is (by the issuer's subject claim): set by an admin,
-- or when a just-in-time provisioned principal is created.
CREATE TABLE oauth_issuer_subjects (
    issuer_id TEXT NOT NULL REFERENCES oauth_issuers (id) ON DELETE CASCADE,
    subject TEXT NOT NULL,
    principal_id TEXT NOT NULL REFERENCES principals (id) ON DELETE CASCADE,
    created_at TEXT NOT NULL,
    PRIMARY KEY (issuer_id, subject)
);
