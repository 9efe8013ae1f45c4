//! Listens for invalidations announced by other nodes (PostgreSQL LISTEN/NOTIFY) and drops
//! the named credentials from this node's cache.
//!
//! A listening connection can die without an error (a half-open TCP connection behind a
//! NAT or firewall). So when the channel has been quiet for [`IDLE`], the node announces a
//! heartbeat and expects to hear it (or anything else) within [`HEARTBEAT_DEADLINE`]; if it
//! does not, the connection is treated as lost. A lost connection empties the cache (announcements
//! may have been missed) and the listener reconnects, emptying the cache again once
//! subscribed.

use std::time::Duration;

use datastack_store::{Invalidation, InvalidationListener, Store};
use tokio::sync::watch;

use crate::state::AppState;

/// How long the channel may be quiet before the node checks it.
pub const IDLE: Duration = Duration::from_secs(2);
/// How long a heartbeat may take to come back.
pub const HEARTBEAT_DEADLINE: Duration = Duration::from_secs(1);

enum Heard {
    Notice(Invalidation),
    Lost(String),
    Quiet,
    Stop,
}

async fn hear(
    listener: &mut InvalidationListener,
    within: Duration,
    shutdown: &mut watch::Receiver<bool>,
) -> Heard {
    tokio::select! {
        r = tokio::time::timeout(within, listener.recv()) => match r {
            Ok(Ok(inv)) => Heard::Notice(inv),
            Ok(Err(e)) => Heard::Lost(e.to_string()),
            Err(_) => Heard::Quiet,
        },
        _ = shutdown.changed() => Heard::Stop,
    }
}

/// Runs until `shutdown` turns true. Takes an already-subscribed listener so the node is
/// subscribed before it starts serving.
pub async fn revocation_listener(
    store: Store,
    mut listener: InvalidationListener,
    state: AppState,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let lost = match hear(&mut listener, IDLE, &mut shutdown).await {
            Heard::Notice(inv) => {
                crate::edge::apply_invalidation(&state, &inv).await;
                continue;
            }
            Heard::Stop => return,
            Heard::Lost(e) => e,
            Heard::Quiet => {
                if let Err(e) = store.announce_heartbeat().await {
                    tracing::warn!(error = %e, "cannot send an invalidation heartbeat");
                }
                match hear(&mut listener, HEARTBEAT_DEADLINE, &mut shutdown).await {
                    Heard::Notice(inv) => {
                        crate::edge::apply_invalidation(&state, &inv).await;
                        continue;
                    }
                    Heard::Stop => return,
                    Heard::Lost(e) => e,
                    Heard::Quiet => "the heartbeat did not come back".to_owned(),
                }
            }
        };
        tracing::warn!(error = %lost, "lost the invalidation channel; emptying the credential cache and reconnecting");
        crate::edge::apply_invalidation(&state, &Invalidation::All).await;
        listener = loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = shutdown.changed() => return,
            }
            match store.listen_invalidations().await {
                Ok(Some(l)) => {
                    // Anything announced while disconnected is lost: start clean.
                    crate::edge::apply_invalidation(&state, &Invalidation::All).await;
                    tracing::info!("listening for invalidations again");
                    break l;
                }
                Ok(None) => return,
                Err(e) => tracing::warn!(error = %e, "still cannot listen for invalidations"),
            }
        };
    }
}
