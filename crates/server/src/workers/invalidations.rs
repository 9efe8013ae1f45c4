//! Listens for invalidations announced by other nodes (PostgreSQL LISTEN/NOTIFY) and drops
//! the named credentials from this node's cache. When the listening connection fails, the
//! cache is emptied (announcements may have been missed) and the listener reconnects.

use std::sync::Arc;
use std::time::Duration;

use datastack_store::{Invalidation, InvalidationListener, Store};
use tokio::sync::watch;

use crate::credentials::CredentialVerifier;

/// Runs until `shutdown` turns true. Takes an already-subscribed listener so the node is
/// subscribed before it starts serving.
pub async fn revocation_listener(
    store: Store,
    mut listener: InvalidationListener,
    verifier: Arc<CredentialVerifier>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let received = tokio::select! {
            r = listener.recv() => r,
            _ = shutdown.changed() => return,
        };
        match received {
            Ok(inv) => verifier.invalidate(&inv),
            Err(e) => {
                tracing::warn!(error = %e, "lost the invalidation channel; emptying the credential cache and reconnecting");
                verifier.invalidate(&Invalidation::All);
                listener = loop {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = shutdown.changed() => return,
                    }
                    match store.listen_invalidations().await {
                        Ok(Some(l)) => {
                            // Anything announced while disconnected is lost: start clean.
                            verifier.invalidate(&Invalidation::All);
                            break l;
                        }
                        Ok(None) => return,
                        Err(e) => {
                            tracing::warn!(error = %e, "still cannot listen for invalidations")
                        }
                    }
                };
            }
        }
    }
}
