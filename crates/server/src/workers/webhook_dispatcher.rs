//! The webhook dispatcher: leases due deliveries from the outbox, sends them with bounded
//! concurrency (overall and per endpoint) and each endpoint's rate limit, and records every
//! attempt in group commits.
//!
//! A delivery is leased for longer than an attempt can take; a node that dies mid-delivery
//! leaves the lease to lapse and the delivery is taken again (at least once). On PostgreSQL
//! every node runs a dispatcher and `FOR UPDATE SKIP LOCKED` keeps two from taking the same
//! delivery.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use datastack_core::id::WebhookId;
use datastack_core::webhook::WebhookSecret;
use datastack_store::{AttemptResult, DueDelivery, Next, StoredWebhook, outbox_signal};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{Semaphore, mpsc, watch};

use crate::state::AppState;

/// How often the outbox is looked at when nothing wakes the dispatcher (retries falling
/// due, deliveries queued by another node); an idle node doubles it up to eight times.
const POLL: Duration = Duration::from_millis(500);
/// How soon to look again after a wake-up found nothing committed yet.
const EAGER_POLL: Duration = Duration::from_millis(20);
/// How long the recorder gathers results after the first before it commits them.
const GATHER: Duration = Duration::from_millis(3);
/// The most results recorded in one transaction.
const RECORD_BATCH: usize = 512;
/// The first retry comes this long after a failure; each next one twice as long.
const FIRST_BACKOFF: Duration = Duration::from_secs(5);
/// Retries are at most this far apart.
const MAX_BACKOFF: Duration = Duration::from_secs(2 * 3600);

/// What a lease adds to two attempt timeouts (waits for a webhook's rate limit, the
/// recording of the result).
const LEASE_MARGIN: Duration = Duration::from_secs(10);
/// How often finished deliveries past the retention are deleted.
const PURGE_EVERY: Duration = Duration::from_secs(3600);

/// An endpoint as the dispatcher uses it.
struct Endpoint {
    updated_at: DateTime<Utc>,
    /// While the previous secret still signs: reloaded after, to stop signing with it.
    overlap_until: Option<DateTime<Utc>>,
    url: String,
    secrets: Vec<WebhookSecret>,
    in_flight: Arc<Semaphore>,
    limiter: Option<Arc<DefaultDirectRateLimiter>>,
}

/// When an attempt that failed should be retried, or `None` to give up: exponential
/// backoff from five seconds, doubled per attempt up to two hours, with ±20% jitter, never
/// sooner than the endpoint's `Retry-After`, and never past the retry window.
pub fn retry_at(
    attempt: i64,
    now: DateTime<Utc>,
    queued: DateTime<Utc>,
    retry_after: Option<Duration>,
    window: Duration,
) -> Option<DateTime<Utc>> {
    let doublings = u32::try_from(attempt.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
    let base = FIRST_BACKOFF
        .saturating_mul(2u32.saturating_pow(doublings))
        .min(MAX_BACKOFF);
    let mut jitter = [0u8; 2];
    getrandom::fill(&mut jitter).unwrap_or_default();
    let factor = 0.8 + 0.4 * f64::from(u16::from_le_bytes(jitter)) / f64::from(u16::MAX);
    let mut delay = base.mul_f64(factor);
    if let Some(after) = retry_after {
        delay = delay.max(after.min(MAX_BACKOFF));
    }
    let at = now + chrono::Duration::from_std(delay).ok()?;
    let deadline = queued + chrono::Duration::from_std(window).ok()?;
    (at <= deadline).then_some(at)
}

/// Runs until `shutdown`; in-flight attempts are given the attempt timeout to finish and
/// their results are recorded.
pub async fn webhook_dispatcher(state: AppState, mut shutdown: watch::Receiver<bool>) {
    let settings = state.webhooks.settings.clone();
    let permits = Arc::new(Semaphore::new(settings.concurrency));
    let (done_tx, done_rx) = mpsc::channel::<AttemptResult>(settings.concurrency * 4);
    // Wakes the dispatcher when results are committed: their leases are released, so the
    // endpoints have room again (no wait for a transaction to commit, unlike `outbox`).
    let recorded = Arc::new(tokio::sync::Notify::new());
    // The earliest retry this node scheduled (Unix ms; i64::MAX: none): an idle node wakes
    // for it instead of waiting for its next poll.
    let next_retry = Arc::new(AtomicI64::new(i64::MAX));
    let recorder = tokio::spawn(record(
        state.clone(),
        done_rx,
        recorded.clone(),
        next_retry.clone(),
    ));
    let mut endpoints: HashMap<WebhookId, Arc<Endpoint>> = HashMap::new();
    // At most `endpoint_concurrency` deliveries per endpoint are leased at once, so a
    // lease outlasts one attempt, one wait for the endpoint's slot, and a margin.
    let lease = chrono::Duration::from_std(settings.timeout * 2 + LEASE_MARGIN)
        .unwrap_or(chrono::Duration::minutes(2));
    let mut failures = 0u32;
    let mut purged = tokio::time::Instant::now();
    // After a wake-up by a queued event, look again soon a few times: the transaction that
    // queued it may not have committed yet.
    let mut eager = 0u8;
    let mut idle = 0u32;
    loop {
        if *shutdown.borrow() {
            break;
        }
        if purged.elapsed() >= PURGE_EVERY {
            purged = tokio::time::Instant::now();
            purge(&state).await;
        }
        let notified = outbox_signal().notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let free = permits.available_permits();
        let mut leased = 0;
        if free > 0 {
            let now = Utc::now();
            match state
                .store
                .lease_due_deliveries(
                    now,
                    now + lease,
                    free.min(256) as i64,
                    settings.endpoint_concurrency as i64,
                )
                .await
            {
                Ok(due) => {
                    failures = 0;
                    leased = due.len();
                    for d in due {
                        let Some(endpoint) = endpoint(&state, &mut endpoints, &d).await else {
                            continue;
                        };
                        let Ok(permit) = permits.clone().acquire_owned().await else {
                            break;
                        };
                        let state = state.clone();
                        let done = done_tx.clone();
                        tokio::spawn(async move {
                            let result = attempt(&state, &endpoint, d).await;
                            drop(permit);
                            let _ = done.send(result).await;
                        });
                    }
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::warn!(error = %e, failures, "cannot lease webhook deliveries; retrying");
                    }
                }
            }
        }
        if leased > 0 && permits.available_permits() > 0 {
            // There may be more due now: look again at once.
            tokio::task::yield_now().await;
            continue;
        }
        if endpoints.len() > 10_000 {
            endpoints.clear();
        }
        // An idle node looks less and less often (0.5, 1, 2, 4 s): what it queues itself
        // wakes it at once, and only retries falling due and events another node queued
        // wait for a poll.
        idle = if leased > 0 {
            0
        } else {
            idle.saturating_add(1)
        };
        let mut wait = if eager > 0 {
            eager -= 1;
            EAGER_POLL
        } else {
            POLL * (1 << idle.saturating_sub(1).min(3))
        };
        let retry = next_retry.load(Ordering::Relaxed);
        if retry != i64::MAX {
            let now = Utc::now().timestamp_millis();
            if retry <= now {
                // Due now: this pass's lease takes it (or another node did).
                next_retry.store(i64::MAX, Ordering::Relaxed);
                wait = Duration::ZERO;
            } else {
                wait = wait.min(Duration::from_millis((retry - now) as u64 + 5));
            }
        }
        tokio::select! {
            _ = recorded.notified() => idle = 0,
            _ = &mut notified => {
                // Let the transaction that announced the event commit, and gather more.
                tokio::time::sleep(Duration::from_millis(2)).await;
                eager = 5;
                idle = 0;
            }
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => {}
        }
    }
    // Let the attempts in flight finish (each is bounded by the attempt timeout).
    let _ = tokio::time::timeout(
        settings.timeout + Duration::from_secs(1),
        permits.acquire_many(settings.concurrency as u32),
    )
    .await;
    drop(done_tx);
    // Attempts still waiting (for a rate limit, say) hold the channel open: do not wait
    // for them past a bound. Their deliveries stay leased until the lease lapses, then are
    // sent again.
    let _ = tokio::time::timeout(Duration::from_secs(2), recorder).await;
}

/// The endpoint of a due delivery, loaded again when the webhook changed. `None` (and the
/// lease left to lapse) when it cannot be loaded now.
async fn endpoint(
    state: &AppState,
    cache: &mut HashMap<WebhookId, Arc<Endpoint>>,
    due: &DueDelivery,
) -> Option<Arc<Endpoint>> {
    if let Some(e) = cache.get(&due.webhook_id)
        && e.updated_at == due.webhook_updated_at
        && e.overlap_until.is_none_or(|t| t > Utc::now())
    {
        return Some(e.clone());
    }
    let webhook = match state.store.get_webhook(None, &due.webhook_id).await {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(webhook_id = %due.webhook_id, error = %e, "cannot load a webhook to deliver to");
            return None;
        }
    };
    let loaded = Arc::new(load(state, &webhook)?);
    cache.insert(webhook.id.clone(), loaded.clone());
    Some(loaded)
}

fn load(state: &AppState, w: &StoredWebhook) -> Option<Endpoint> {
    let mut secrets = Vec::with_capacity(2);
    match state.webhooks.open(&w.id, &w.sealed_secret) {
        Ok(s) => secrets.push(s),
        Err(e) => {
            tracing::error!(webhook_id = %w.id, error = %e, "cannot open a webhook's secret");
            return None;
        }
    }
    if let (Some(sealed), Some(until)) = (&w.previous_sealed_secret, w.previous_secret_expires_at)
        && until > Utc::now()
        && let Ok(s) = state.webhooks.open(&w.id, sealed)
    {
        secrets.push(s);
    }
    let limiter = w
        .rate_limit
        .and_then(|n| NonZeroU32::new(u32::try_from(n).ok()?))
        .map(|n| Arc::new(RateLimiter::direct(Quota::per_second(n))));
    let overlap_until = (secrets.len() > 1)
        .then_some(w.previous_secret_expires_at)
        .flatten();
    Some(Endpoint {
        updated_at: w.updated_at,
        overlap_until,
        url: w.url.clone(),
        secrets,
        in_flight: Arc::new(Semaphore::new(state.webhooks.settings.endpoint_concurrency)),
        limiter,
    })
}

async fn attempt(state: &AppState, endpoint: &Endpoint, due: DueDelivery) -> AttemptResult {
    let _slot = endpoint.in_flight.acquire().await;
    if let Some(limiter) = &endpoint.limiter {
        limiter.until_ready().await;
    }
    let started_at = Utc::now();
    let sent = state
        .webhooks
        .send(
            &endpoint.url,
            due.message_id.as_str(),
            &due.body,
            &endpoint.secrets,
        )
        .await;
    let number = due.attempts + 1;
    let next = if sent.succeeded() {
        Next::Succeeded
    } else if sent.retryable() {
        match retry_at(
            number,
            Utc::now(),
            due.created_at,
            sent.retry_after,
            state.webhooks.settings.retry_window,
        ) {
            Some(at) => Next::RetryAt(at),
            None => Next::Failed,
        }
    } else {
        Next::Failed
    };
    state.metrics.webhook_attempt(if sent.succeeded() {
        "succeeded"
    } else if matches!(next, Next::RetryAt(_)) {
        "retrying"
    } else {
        "failed"
    });
    tracing::debug!(
        webhook_id = %due.webhook_id,
        event_id = %due.message_id,
        attempt = number,
        status = sent.status,
        latency_ms = sent.latency.as_millis() as u64,
        "webhook attempt"
    );
    AttemptResult {
        webhook_id: due.webhook_id,
        message_id: due.message_id,
        attempt: number,
        started_at,
        status_code: sent.status,
        latency_ms: i64::try_from(sent.latency.as_millis()).unwrap_or(i64::MAX),
        error: sent.error,
        next,
    }
}

/// Deletes finished deliveries, attempts and bodies older than the retention.
async fn purge(state: &AppState) {
    let Ok(retention) = chrono::Duration::from_std(state.webhooks.settings.retention) else {
        return;
    };
    match state
        .store
        .purge_webhook_history(Utc::now() - retention)
        .await
    {
        Ok(0) => {}
        Ok(n) => tracing::info!(deliveries = n, "webhook history past its retention deleted"),
        Err(e) => tracing::warn!(error = %e, "cannot delete old webhook history; will try again"),
    }
}

/// Records results in group commits until every sender is gone.
async fn record(
    state: AppState,
    mut rx: mpsc::Receiver<AttemptResult>,
    recorded: Arc<tokio::sync::Notify>,
    next_retry: Arc<AtomicI64>,
) {
    let mut batch = Vec::with_capacity(RECORD_BATCH);
    while rx.recv_many(&mut batch, RECORD_BATCH).await > 0 {
        // Results arrive one by one as endpoints answer: gather those of the next moment
        // too, so one commit records many and releases their leases together (a commit
        // per result would bound a busy endpoint's throughput by the commit rate).
        let until = tokio::time::Instant::now() + GATHER;
        while batch.len() < RECORD_BATCH {
            match tokio::time::timeout_at(until, rx.recv_many(&mut batch, RECORD_BATCH)).await {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
        let disable_before = Utc::now()
            - chrono::Duration::from_std(state.webhooks.settings.disable_after)
                .unwrap_or(chrono::Duration::days(5));
        let mut tries = 0;
        loop {
            match state.store.record_attempts(&batch, disable_before).await {
                Ok(disabled) => {
                    for w in disabled {
                        state.metrics.security_event("webhook.disabled");
                        tracing::warn!(webhook_id = %w.id, "a webhook failed for too long and was disabled");
                    }
                    break;
                }
                Err(e) => {
                    tries += 1;
                    if tries >= 5 {
                        // The leases lapse and the deliveries are attempted again.
                        tracing::error!(error = %e, results = batch.len(), "cannot record webhook attempts; they will be made again");
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200 * tries)).await;
                }
            }
        }
        for r in &batch {
            if let Next::RetryAt(at) = r.next {
                next_retry.fetch_min(at.timestamp_millis(), Ordering::Relaxed);
            }
        }
        batch.clear();
        // Leases were released (and a retry may fall due sooner than the poll): wake the
        // dispatcher. `notify_one` keeps the wake-up if it is busy leasing right now.
        recorded.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_exponentially_within_the_window() {
        let queued = Utc::now();
        let day = Duration::from_secs(86_400);
        let first = retry_at(1, queued, queued, None, day).expect("retried");
        let secs = (first - queued).num_milliseconds();
        assert!((4_000..=6_000).contains(&secs), "{secs}");
        let fifth = retry_at(5, queued, queued, None, day).expect("retried");
        let secs = (fifth - queued).num_seconds();
        assert!((64..=96).contains(&secs), "{secs}");
        let late = retry_at(30, queued, queued, None, day).expect("retried");
        assert!((late - queued).num_seconds() <= 2 * 3600 * 12 / 10);
        let honoured =
            retry_at(1, queued, queued, Some(Duration::from_secs(600)), day).expect("retried");
        assert!((honoured - queued).num_seconds() >= 600);
        assert_eq!(
            retry_at(3, queued + chrono::Duration::hours(24), queued, None, day),
            None
        );
    }
}
