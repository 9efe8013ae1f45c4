//! What every handler and stage shares.

use std::ops::Deref;
use std::sync::Arc;

use datastack_store::Store;

use crate::audit::AuditLog;
use crate::config::Config;
use crate::credentials::CredentialVerifier;
use crate::metrics::Metrics;

/// The shared state of one server node. Cloned by every stage and extractor of every
/// request, so it is one reference count, not one per part.
#[derive(Clone)]
pub struct AppState(Arc<NodeState>);

/// The parts of [`AppState`].
pub struct NodeState {
    /// The store.
    pub store: Store,
    /// Credential verification and its cache.
    pub credentials: Arc<CredentialVerifier>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The validated configuration.
    pub config: Arc<Config>,
    /// The audit log's queue and policy.
    pub audit: Arc<AuditLog>,
    /// Edge enforcement: routes, IP lists, rate limits, the assertion signer.
    pub edge: Arc<crate::edge::Edge>,
    /// OAuth access tokens' group commits.
    pub oauth: Arc<crate::api::oauth::Issuer>,
    /// Trusted external issuers and their keys.
    pub federation: Arc<crate::federation::Federation>,
    /// The rotating keys that sign OAuth access tokens.
    pub oauth_keys: Arc<crate::oauth_keys::KeyRing>,
    /// Webhook sending: sealed secrets, the SSRF guard, the HTTP clients.
    pub webhooks: Arc<crate::webhooks::Webhooks>,
}

impl AppState {
    /// Wraps the parts.
    pub fn new(parts: NodeState) -> Self {
        Self(Arc::new(parts))
    }
}

impl Deref for AppState {
    type Target = NodeState;

    fn deref(&self) -> &NodeState {
        &self.0
    }
}
