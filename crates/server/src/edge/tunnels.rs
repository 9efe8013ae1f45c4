//! Open WebSocket tunnels, so that a revocation (of the credential, its owner, its
//! workspace or an ancestor of the workspace) or a change of the workspace's IP access
//! lists closes them as it refuses new requests: a tunnel must not outlive the decision
//! that opened it.

use std::sync::{Arc, Mutex};

use datastack_store::Invalidation;
use tokio::sync::Notify;

use crate::credentials::Identity;

struct Tunnel {
    digest: String,
    credential: String,
    principal: String,
    workspace: String,
    /// The workspace's ancestors: a status change of any of them closes the tunnel.
    ancestors: Vec<String>,
    /// The OAuth client an access token was issued to.
    oauth_client: Option<String>,
    close: Arc<Notify>,
}

/// The registry.
#[derive(Default)]
pub struct Tunnels {
    open: Mutex<Vec<Tunnel>>,
}

impl Tunnels {
    /// Registers a tunnel opened for `identity`; it is told to close through the
    /// returned notifier.
    pub fn register(&self, identity: &Identity) -> Arc<Notify> {
        let close = Arc::new(Notify::new());
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.push(Tunnel {
            digest: identity.token.digest_hex.clone(),
            credential: identity.token.id.to_string(),
            principal: identity.principal.id.to_string(),
            workspace: identity.workspace.id.to_string(),
            ancestors: identity.ancestors.iter().map(ToString::to_string).collect(),
            oauth_client: (identity.token.kind
                == datastack_core::credential::CredentialKind::OAuthAccessToken)
                .then(|| identity.token.label.clone()),
            close: close.clone(),
        });
        close
    }

    /// Forgets a tunnel that ended.
    pub fn forget(&self, close: &Arc<Notify>) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|t| !Arc::ptr_eq(&t.close, close));
    }

    /// Closes the tunnels an invalidation concerns.
    pub fn close_matching(&self, inv: &Invalidation) {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        for t in open.iter() {
            let hit = match inv {
                Invalidation::Token(digest) => t.digest == *digest,
                Invalidation::Credential(id) => t.credential == *id,
                Invalidation::Principal(id) => t.principal == *id,
                // An OAuth token's label: its client's id, or its trusted issuer's.
                Invalidation::OAuthClient(id) | Invalidation::Issuer(id) => {
                    t.oauth_client.as_ref() == Some(id)
                }
                Invalidation::Workspace(id) | Invalidation::IpLists(id) => t.workspace == *id,
                Invalidation::WorkspaceTree(id) => {
                    t.workspace == *id || t.ancestors.iter().any(|a| a == id)
                }
                Invalidation::All => true,
                Invalidation::Routes
                | Invalidation::Penalty(_)
                | Invalidation::Heartbeat
                | Invalidation::OAuthClientChanged(_) => false,
            };
            if hit {
                t.close.notify_one();
            }
        }
    }
}
