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
