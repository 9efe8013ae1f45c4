-- The keys that sign OAuth access tokens, rotated on a schedule: one per rotation slot
-- (two nodes creating the next key at once keep one), published before they sign and
-- until the last token they signed has expired. The private half is sealed with
-- AES-256-GCM under a key derived from the audit key, which the database never holds.
CREATE TABLE oauth_signing_keys (
    slot BIGINT PRIMARY KEY NOT NULL,
    kid TEXT NOT NULL UNIQUE,
    public_jwk TEXT NOT NULL,
    sealed_private TEXT NOT NULL,
    created_at TEXT NOT NULL,
    signs_from TEXT NOT NULL,
    published_until TEXT NOT NULL
);
