//! Writes buffered token uses (`lastUsedAt`, `lastUsedIp`) every interval, so the hot path
//! never writes to the store. A clean shutdown flushes what is left.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::credentials::CredentialVerifier;
use crate::metrics::Metrics;

/// Runs until `shutdown` turns true, then flushes once more.
pub async fn usage_flusher(
    verifier: Arc<CredentialVerifier>,
    metrics: Arc<Metrics>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => break,
        }
        flush(&verifier, &metrics).await;
    }
    flush(&verifier, &metrics).await;
}

async fn flush(verifier: &CredentialVerifier, metrics: &Metrics) {
    match verifier.flush_uses().await {
        Ok(n) => metrics.usage_flushed(n),
        Err(e) => {
            tracing::warn!(error = %e, "could not record token uses; they are kept for the next flush")
        }
    }
}

/// How often API key spend is added to the store (the spend meter's flush).
pub const SPEND_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// Adds API key spend to the store every second until `shutdown` turns true, then once
/// more: a clean shutdown loses no charged unit.
pub async fn spend_flusher(edge: Arc<crate::edge::Edge>, mut shutdown: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(SPEND_FLUSH_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => break,
        }
        flush_spend(&edge).await;
    }
    // Retry a few times at shutdown: what is not written now is lost.
    for attempt in 0..5u32 {
        match edge.spend.flush(&edge.limiter).await {
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, attempt, "could not record API key spend at shutdown; retrying");
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
        }
    }
    tracing::error!("gave up recording API key spend at shutdown");
}

async fn flush_spend(edge: &crate::edge::Edge) {
    if let Err(e) = edge.spend.flush(&edge.limiter).await {
        tracing::warn!(error = %e, "could not record API key spend; it is kept for the next flush");
    }
}
