-- Webhooks and their durable outbox. An event is written (message and one delivery per
-- subscribed webhook) in the transaction of the change that raised it; the dispatcher
-- leases due deliveries (lease_until), so a node that dies mid-delivery leaves them to be
-- taken again once the lease lapses: delivery is at least once, never lost.
CREATE TABLE webhooks (
    id TEXT PRIMARY KEY NOT NULL,
    workspace_id TEXT NOT NULL REFERENCES workspaces (id),
    url TEXT NOT NULL,
    description TEXT,
    events TEXT NOT NULL,
    rate_limit BIGINT,
    metadata TEXT,
    status TEXT NOT NULL CHECK (status IN ('active', 'paused', 'disabled')),
    disabled_reason TEXT,
    -- The signing secret, sealed with AES-256-GCM under a key derived from the audit key
    -- (the id in the associated data); the previous one signs too until it expires.
    sealed_secret TEXT NOT NULL,
    previous_sealed_secret TEXT,
    previous_secret_expires_at TIMESTAMPTZ,
    failing_since TIMESTAMPTZ,
    last_success_at TIMESTAMPTZ,
    created_by TEXT,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX webhooks_workspace ON webhooks (workspace_id, id);
-- One row per event type a webhook takes ('*': every type), for the fan-out's lookup.
CREATE TABLE webhook_subscriptions (
    workspace_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    webhook_id TEXT NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    PRIMARY KEY (workspace_id, event_type, webhook_id)
);
CREATE INDEX webhook_subscriptions_webhook ON webhook_subscriptions (webhook_id);
-- The exact body every delivery of an event sends (so its signatures are over the same
-- bytes on every attempt). Written only when a webhook takes the event.
CREATE TABLE webhook_messages (
    id TEXT PRIMARY KEY NOT NULL,
    workspace_id TEXT NOT NULL,
    type TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX webhook_messages_created ON webhook_messages (created_at);
CREATE TABLE webhook_deliveries (
    webhook_id TEXT NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    message_id TEXT NOT NULL REFERENCES webhook_messages (id) ON DELETE CASCADE,
    workspace_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempts BIGINT NOT NULL,
    next_attempt_at TIMESTAMPTZ,
    lease_until TIMESTAMPTZ,
    last_status_code BIGINT,
    last_error TEXT,
    last_latency_ms BIGINT,
    last_attempt_at TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (webhook_id, message_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_leased ON webhook_deliveries (webhook_id, lease_until) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_message ON webhook_deliveries (message_id);
CREATE TABLE webhook_attempts (
    id TEXT PRIMARY KEY NOT NULL,
    webhook_id TEXT NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    message_id TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    started_at TIMESTAMPTZ NOT NULL,
    status_code BIGINT,
    latency_ms BIGINT NOT NULL,
    error TEXT,
    succeeded BOOLEAN NOT NULL
);
CREATE INDEX webhook_attempts_delivery ON webhook_attempts (webhook_id, message_id, attempt);
-- Credentials told once that they expire soon (token.expiring_soon, api_key.expiring_soon).
CREATE TABLE credential_expiry_notices (
    credential_id TEXT PRIMARY KEY NOT NULL REFERENCES tokens (id) ON DELETE CASCADE,
    notified_at TIMESTAMPTZ NOT NULL
);
