-- private_key_jwt client authentication (RFC 7523): a client's public keys (a JWK set, or
-- where it publishes one), and the ids of the assertions already used (each works once).
ALTER TABLE oauth_clients ADD COLUMN jwks TEXT;
ALTER TABLE oauth_clients ADD COLUMN jwks_uri TEXT;
CREATE TABLE oauth_assertion_jtis (
    client_id TEXT NOT NULL,
    jti TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (client_id, jti)
);
CREATE INDEX oauth_assertion_jtis_expiry ON oauth_assertion_jtis (expires_at);
