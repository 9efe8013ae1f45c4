//! What every handler and stage shares.

use std::sync::Arc;

use datastack_store::Store;

use crate::config::Config;
use crate::credentials::CredentialVerifier;
use crate::metrics::Metrics;

/// The shared state of one server node.
#[derive(Clone)]
pub struct AppState {
    /// The store.
    pub store: Store,
    /// Credential verification and its cache.
    pub credentials: Arc<CredentialVerifier>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The validated configuration.
    pub config: Arc<Config>,
}
