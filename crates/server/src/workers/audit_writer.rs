//! The audit writer: takes queued entries in group commits (everything waiting, up to a
//! batch limit, in one transaction), detects anomalies on the way (bursts of failed
//! authentications, credentials used from new networks) and writes the security events
//! they raise in the same transaction. A batch that cannot be written is retried, never
//! dropped; on shutdown the queue is drained.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use datastack_core::audit::{AuditRecord, SecurityEvent, network_of};
use datastack_store::{Sighting, Store};
use tokio::sync::{mpsc, watch};

use crate::audit::{AuditLog, Queued};
use crate::config::Config;
use crate::metrics::Metrics;

/// The most entries one commit carries.
const BATCH_MAX: usize = 2000;
/// A credential's use from a network is written at most this often.
const SIGHTING_REFRESH: chrono::Duration = chrono::Duration::hours(1);
/// How long a shutdown keeps retrying a batch the store refuses.
const SHUTDOWN_RETRY: Duration = Duration::from_secs(10);

/// Runs until `stop` turns true, then writes what is still queued and returns.
pub async fn audit_writer(
    store: Store,
    mut rx: mpsc::Receiver<Queued>,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    audit: Arc<AuditLog>,
    mut stop: watch::Receiver<bool>,
) {
    let mut detector = Detector::new(&config);
    // Aggregated forward-auth decisions are queued once a second (and at shutdown).
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let new_network_window = chrono::Duration::days(i64::from(config.new_network_window_days));
    let mut stopping = false;
    loop {
        let first = if stopping {
            rx.recv().await
        } else {
            tokio::select! {
                m = rx.recv() => m,
                _ = tick.tick() => {
                    audit.flush_aggregates();
                    continue;
                }
                _ = stop.wait_for(|s| *s) => {
                    // No new entries can be queued; drain what is there. Aggregated
                    // decisions the queue has no room for are written after it.
                    audit.flush_aggregates();
                    rx.close();
                    stopping = true;
                    continue;
                }
            }
        };
        let mut batch = match first {
            Some(q) => vec![q],
            None => {
                // Drained: what is still aggregated goes in a last batch of its own.
                let rest: Vec<Queued> = audit
                    .take_aggregates()
                    .into_iter()
                    .map(|record| Queued { record, ack: None })
                    .collect();
                if rest.is_empty() {
                    break;
                }
                rest
            }
        };
        while batch.len() < BATCH_MAX {
            match rx.try_recv() {
                Ok(q) => batch.push(q),
                Err(_) => break,
            }
        }
        let (records, acks): (Vec<AuditRecord>, Vec<_>) =
            batch.into_iter().map(|q| (q.record, q.ack)).unzip();
        let mut events = Vec::new();
        let mut sightings = Vec::new();
        for r in &records {
            detector.observe(r, &mut events, &mut sightings);
        }
        let mut backoff = Duration::from_millis(50);
        let mut retrying_since = None;
        loop {
            match store
                .record_audit_batch(&records, &events, &sightings, new_network_window)
                .await
            {
                Ok(raised) => {
                    metrics.audit_batch_written(records.len());
                    for e in events.iter().chain(raised.iter()) {
                        metrics.security_event(&e.event_type);
                        tracing::info!(event = %e.event_type, workspace = %e.workspace_id, "security event");
                    }
                    break;
                }
                Err(e) => {
                    metrics.audit_write_failed();
                    tracing::warn!(error = %e, entries = records.len(), "cannot write audit entries; retrying");
                    if stopping {
                        let since = *retrying_since.get_or_insert_with(std::time::Instant::now);
                        if since.elapsed() > SHUTDOWN_RETRY {
                            tracing::error!(
                                entries = records.len() + rx.len(),
                                "stopping with audit entries that could not be written"
                            );
                            return;
                        }
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        for ack in acks.into_iter().flatten() {
            let _ = ack.send(());
        }
    }
}

/// Counts failed authentications per client address and per credential in a fixed
/// window, and notes which networks credentials are used from.
struct Detector {
    threshold: u32,
    window: chrono::Duration,
    failures: HashMap<String, Window>,
    sighted: HashMap<(String, String), DateTime<Utc>>,
    last_prune: Option<DateTime<Utc>>,
}

struct Window {
    start: DateTime<Utc>,
    count: u32,
    raised: bool,
}

impl Detector {
    fn new(config: &Config) -> Self {
        Self {
            threshold: config.auth_failure_burst_threshold,
            window: chrono::Duration::from_std(config.auth_failure_burst_window)
                .unwrap_or(chrono::Duration::seconds(60)),
            failures: HashMap::new(),
            sighted: HashMap::new(),
            last_prune: None,
        }
    }

    fn observe(
        &mut self,
        r: &AuditRecord,
        events: &mut Vec<SecurityEvent>,
        sightings: &mut Vec<Sighting>,
    ) {
        if r.status == 401 {
            if let Some(ip) = &r.source_ip {
                // Counted per network (/24, /64), so rotating addresses inside one IPv6
                // prefix neither escapes the count nor grows the map.
                let network = ip
                    .parse::<IpAddr>()
                    .map_or_else(|_| ip.clone(), |a| network_of(a).to_string());
                let before = events.len();
                self.count_failure(format!("net {network}"), r, events, "network", &network);
                if events.len() > before
                    && let Some(e) = events.last_mut()
                {
                    e.payload["sourceIp"] = serde_json::Value::String(ip.clone());
                }
            }
            if let Some(credential) = &r.credential_id {
                self.count_failure(
                    format!("credential {credential}"),
                    r,
                    events,
                    "credentialId",
                    credential,
                );
            }
        } else if r.outcome == datastack_core::audit::Outcome::Allowed {
            self.sight(r, sightings);
        }
        self.prune(r.time);
    }

    fn count_failure(
        &mut self,
        key: String,
        r: &AuditRecord,
        events: &mut Vec<SecurityEvent>,
        field: &str,
        value: &str,
    ) {
        let window = self.window;
        let w = self.failures.entry(key).or_insert(Window {
            start: r.time,
            count: 0,
            raised: false,
        });
        if r.time - w.start >= window {
            *w = Window {
                start: r.time,
                count: 0,
                raised: false,
            };
        }
        w.count += 1;
        if w.count >= self.threshold && !w.raised {
            w.raised = true;
            let mut payload = serde_json::json!({
                "request_id": r.request_id,
                "failures": w.count,
                "windowSeconds": window.num_seconds(),
                "since": w.start,
            });
            payload[field] = serde_json::Value::String(value.to_owned());
            events.push(SecurityEvent::new(
                r.workspace_id.clone(),
                "auth.failure_burst",
                payload,
            ));
        }
    }

    fn sight(&mut self, r: &AuditRecord, sightings: &mut Vec<Sighting>) {
        let (Some(credential), Some(ip)) = (&r.credential_id, &r.source_ip) else {
            return;
        };
        let Ok(addr) = ip.parse::<IpAddr>() else {
            return;
        };
        let network = network_of(addr).to_string();
        let key = (credential.clone(), network.clone());
        if self
            .sighted
            .get(&key)
            .is_some_and(|t| r.time - *t < SIGHTING_REFRESH)
        {
            return;
        }
        self.sighted.insert(key, r.time);
        sightings.push(Sighting {
            credential_id: credential.clone(),
            workspace_id: r.workspace_id.clone(),
            network,
            ip: ip.clone(),
            at: r.time,
            request_id: r.request_id.clone(),
        });
    }

    /// Keeps the maps bounded: expired windows and old sightings go, at most once a
    /// second, and a map still over its limit is emptied (a flood of distinct keys loses
    /// only its own counts).
    fn prune(&mut self, now: DateTime<Utc>) {
        const LIMIT: usize = 100_000;
        if self.failures.len() <= LIMIT && self.sighted.len() <= LIMIT {
            return;
        }
        if self
            .last_prune
            .is_some_and(|t| now - t < chrono::Duration::seconds(1))
        {
            if self.failures.len() > 2 * LIMIT {
                self.failures.clear();
            }
            if self.sighted.len() > 2 * LIMIT {
                self.sighted.clear();
            }
            return;
        }
        self.last_prune = Some(now);
        if self.failures.len() > LIMIT {
            let window = self.window;
            self.failures.retain(|_, w| now - w.start < window);
            if self.failures.len() > LIMIT {
                self.failures.clear();
            }
        }
        if self.sighted.len() > LIMIT {
            self.sighted.retain(|_, t| now - *t < SIGHTING_REFRESH);
            if self.sighted.len() > LIMIT {
                self.sighted.clear();
            }
        }
    }
}
