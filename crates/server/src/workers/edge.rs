//! Edge housekeeping: every 30 seconds, reload the gateway routes (a safety net behind the
//! change announcements), forget idle rate-limit buckets and expired penalties, and, in
//! cluster mode, probe Redis so a node on local limits returns to shared ones on its own.

use std::time::Duration;

use tokio::sync::watch;

use crate::state::AppState;

/// How often the housekeeping runs.
const PERIOD: Duration = Duration::from_secs(30);

/// Runs until `shutdown` turns true.
pub async fn edge_refresher(state: AppState, mut shutdown: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(PERIOD);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return,
        }
        if let Err(e) = state.edge.routes.reload().await {
            tracing::warn!(error = %e, "cannot reload the gateway routes");
        }
        state.edge.limiter.sweep();
        state.edge.limiter.probe().await;
    }
}
