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
use datastack_core::id::WorkspaceId;
use datastack_store::{Sighting, Store};
use tokio::sync::{mpsc, watch};

use crate::audit::{AuditLog, Queued};
use crate::config::Config;
use crate::metrics::Metrics;

/// The most entries one commit carries.
const BATCH_MAX: usize = 2000;
/// How long the writer waits after the first entry of a batch for others to join it.
/// Bounds what a crash can lose beyond the commit in progress (see `docs/audit.md`).
const GROUP_COMMIT_WINDOW: Duration = Duration::from_millis(2);
/// A credential's use from a network is written at most this often.
const SIGHTING_REFRESH: chrono::Duration = chrono::Duration::hours(1);
/// How long a shutdown keeps retrying a batch the store refuses.
const SHUTDOWN_RETRY: Duration = Duration::from_secs(10);

/// What woke the writer.
#[allow(
    clippy::large_enum_variant,
    reason = "one per batch, matched at once: boxing would allocate for nothing"
)]
enum Woken {
    /// An entry in the queue.
    Entry(Queued),
    /// A successful read that started a group.
    Reads,
    /// The queue is closed and empty.
    Drained,
}

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
    let mut growth = Growth::new(config.floods.audit_growth_alert_per_minute);
    // Aggregated forward-auth decisions are queued once a second (and at shutdown).
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let new_network_window = chrono::Duration::days(i64::from(config.new_network_window_days));
    let mut stopping = false;
    loop {
        let woken = if stopping {
            rx.recv().await.map_or(Woken::Drained, Woken::Entry)
        } else {
            tokio::select! {
                m = rx.recv() => m.map_or(Woken::Drained, Woken::Entry),
                () = audit.reads_started() => Woken::Reads,
                _ = tick.tick() => {
                    audit.flush_aggregates();
                    let counters = audit.take_aggregation_counters();
                    metrics.audit_aggregated(counters.folded, counters.overflowed);
                    // The gauge falls back too when nothing is written.
                    growth.advance(Utc::now().timestamp());
                    metrics.set_audit_entries_last_minute(growth.last_minute());
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
        let mut batch = match woken {
            // Group commit: entries that arrive within the window go in the same
            // transaction, and a request that queues an entry meanwhile wakes no one (the
            // writer sleeps on its timer, not on the queue). An entry whose request waits
            // for its commit (sync durability) is written at once.
            Woken::Entry(q) if q.ack.is_none() && !stopping => {
                tokio::time::sleep(GROUP_COMMIT_WINDOW).await;
                vec![q]
            }
            Woken::Entry(q) => vec![q],
            // A successful read started a group: the same window, then the groups.
            Woken::Reads => {
                tokio::time::sleep(GROUP_COMMIT_WINDOW).await;
                Vec::new()
            }
            Woken::Drained => {
                // Drained: what is still aggregated goes in a last batch of its own.
                let rest: Vec<Queued> = audit.take_aggregates();
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
        // The successful reads gathered so far go in this commit, one entry per group:
        // they wait no longer than an entry of their own would.
        batch.extend(audit.take_reads());
        if batch.is_empty() {
            continue;
        }
        let mut records = Vec::with_capacity(batch.len());
        let mut acks = Vec::with_capacity(batch.len());
        let mut events = Vec::new();
        let mut sightings = Vec::new();
        for q in batch {
            detector.observe(&q.record, q.count, &mut events, &mut sightings);
            records.push(q.record);
            acks.push(q.ack);
        }
        if let Some(event) = growth.observe(records.len(), audit.root_workspace()) {
            events.push(event);
        }
        metrics.set_audit_entries_last_minute(growth.last_minute());
        let mut backoff = Duration::from_millis(50);
        let mut retrying_since = None;
        let mut retried = false;
        loop {
            match store
                .record_audit_batch(&records, &events, &sightings, new_network_window, retried)
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
                    retried = true;
                }
            }
        }
        for ack in acks.into_iter().flatten() {
            let _ = ack.send(());
        }
    }
}

/// Counts failed authentications per client network and per credential in a window that
/// starts at each key's first failure, and notes which networks credentials are used from.
/// Both maps are bounded by `max_tracked_clients`: when one is full, expired keys go first,
/// then the keys with the fewest failures (or the oldest sightings), down to nine tenths
/// of the bound; no count is ever reset wholesale, so a flood of distinct networks cannot
/// wipe the count of the one that is attacking.
struct Detector {
    threshold: u32,
    window: chrono::Duration,
    cap: usize,
    failures: HashMap<String, Window>,
    sighted: HashMap<(String, String), DateTime<Utc>>,
}

struct Window {
    start: DateTime<Utc>,
    count: u64,
    raised: bool,
}

impl Detector {
    fn new(config: &Config) -> Self {
        Self {
            threshold: config.auth_failure_burst_threshold,
            window: chrono::Duration::from_std(config.auth_failure_burst_window)
                .unwrap_or(chrono::Duration::seconds(60)),
            cap: config.floods.max_tracked_clients.max(10),
            failures: HashMap::new(),
            sighted: HashMap::new(),
        }
    }

    /// Observes an entry standing for `count` requests (an aggregated entry counts each).
    fn observe(
        &mut self,
        r: &AuditRecord,
        count: u64,
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
                self.count_failure(
                    format!("net {network}"),
                    r,
                    count,
                    events,
                    "network",
                    &network,
                );
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
                    count,
                    events,
                    "credentialId",
                    credential,
                );
            }
        } else if r.outcome == datastack_core::audit::Outcome::Allowed {
            self.sight(r, sightings);
        }
    }

    fn count_failure(
        &mut self,
        key: String,
        r: &AuditRecord,
        count: u64,
        events: &mut Vec<SecurityEvent>,
        field: &str,
        value: &str,
    ) {
        let window = self.window;
        if !self.failures.contains_key(&key) && self.failures.len() >= self.cap {
            self.evict_failures(r.time);
        }
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
        w.count += count;
        if w.count >= u64::from(self.threshold) && !w.raised {
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

    /// Makes room in a full failure map: expired windows go, then the keys with the
    /// fewest failures (the oldest first among equals), down to nine tenths of the cap.
    fn evict_failures(&mut self, now: DateTime<Utc>) {
        let window = self.window;
        self.failures.retain(|_, w| now - w.start < window);
        let keep = self.cap - self.cap / 10;
        if self.failures.len() > keep {
            let mut ranked: Vec<(u64, DateTime<Utc>, String)> = self
                .failures
                .iter()
                .map(|(k, w)| (w.count, w.start, k.clone()))
                .collect();
            let drop = ranked.len() - keep;
            ranked.select_nth_unstable(drop - 1);
            for (_, _, k) in ranked.into_iter().take(drop) {
                self.failures.remove(&k);
            }
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
        if !self.sighted.contains_key(&key) && self.sighted.len() >= self.cap {
            self.evict_sightings(r.time);
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

    /// Makes room in a full sightings map: stale ones go, then the oldest, down to nine
    /// tenths of the cap (a forgotten sighting is only written to the store again).
    fn evict_sightings(&mut self, now: DateTime<Utc>) {
        self.sighted.retain(|_, t| now - *t < SIGHTING_REFRESH);
        let keep = self.cap - self.cap / 10;
        if self.sighted.len() > keep {
            let mut ranked: Vec<(DateTime<Utc>, (String, String))> =
                self.sighted.iter().map(|(k, t)| (*t, k.clone())).collect();
            let drop = ranked.len() - keep;
            ranked.select_nth_unstable(drop - 1);
            for (_, k) in ranked.into_iter().take(drop) {
                self.sighted.remove(&k);
            }
        }
    }
}

/// Counts the entries this node wrote in the last minute (per second, in a ring) and
/// raises `audit.growth_exceeded` when the count passes the threshold, at most once per
/// [`GROWTH_ALERT_INTERVAL`].
struct Growth {
    threshold: u64,
    seconds: [u64; 60],
    second: i64,
    last_alert: Option<std::time::Instant>,
}

/// The shortest time between two `audit.growth_exceeded` events of one node.
const GROWTH_ALERT_INTERVAL: Duration = Duration::from_secs(600);

impl Growth {
    fn new(threshold: u64) -> Self {
        Self {
            threshold,
            seconds: [0; 60],
            second: Utc::now().timestamp(),
            last_alert: None,
        }
    }

    fn advance(&mut self, now: i64) {
        let gap = now.saturating_sub(self.second).clamp(0, 60);
        for i in 1..=gap {
            self.seconds[((self.second + i).rem_euclid(60)) as usize] = 0;
        }
        self.second = self.second.max(now);
    }

    /// The entries written in the last 60 seconds.
    fn last_minute(&self) -> u64 {
        self.seconds.iter().sum()
    }

    /// Counts a batch of `n` entries; returns the event when the rate crosses the
    /// threshold and none was raised recently.
    fn observe(&mut self, n: usize, root: &WorkspaceId) -> Option<SecurityEvent> {
        self.advance(Utc::now().timestamp());
        self.seconds[self.second.rem_euclid(60) as usize] += n as u64;
        let total = self.last_minute();
        if self.threshold == 0
            || total <= self.threshold
            || self
                .last_alert
                .is_some_and(|t| t.elapsed() < GROWTH_ALERT_INTERVAL)
        {
            return None;
        }
        self.last_alert = Some(std::time::Instant::now());
        tracing::warn!(
            entries_last_minute = total,
            threshold = self.threshold,
            "the audit log grows faster than audit_growth_alert_per_minute"
        );
        Some(SecurityEvent::new(
            root.clone(),
            "audit.growth_exceeded",
            serde_json::json!({
                "entriesLastMinute": total,
                "thresholdPerMinute": self.threshold,
            }),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(ip: &str) -> AuditRecord {
        let mut r = AuditRecord::system(WorkspaceId::from_trusted("ws_r".into()), "me.read", "me");
        r.status = 401;
        r.outcome = datastack_core::audit::Outcome::Denied;
        r.source_ip = Some(ip.to_owned());
        r
    }

    #[test]
    fn a_flood_of_networks_does_not_reset_a_burst_in_progress() {
        let config = Config {
            auth_failure_burst_threshold: 10,
            floods: crate::config::FloodLimits {
                max_tracked_clients: 100,
                ..crate::config::FloodLimits::default()
            },
            ..Config::default()
        };
        let mut d = Detector::new(&config);
        let (mut events, mut sightings) = (Vec::new(), Vec::new());
        d.observe(&failure("203.0.113.1"), 9, &mut events, &mut sightings);
        for i in 0..5_000u32 {
            let ip = format!("10.{}.{}.1", i / 256, i % 256);
            d.observe(&failure(&ip), 1, &mut events, &mut sightings);
            assert!(d.failures.len() <= 100);
        }
        assert!(events.is_empty());
        d.observe(&failure("203.0.113.2"), 1, &mut events, &mut sightings);
        assert_eq!(
            events.len(),
            1,
            "the tenth failure of the network raises the event"
        );
        assert_eq!(events[0].payload["failures"], 10);
    }

    #[test]
    fn growth_past_the_threshold_raises_one_event() {
        let root = WorkspaceId::from_trusted("ws_r".into());
        let mut g = Growth::new(100);
        assert!(g.observe(100, &root).is_none());
        let e = g.observe(1, &root).expect("event");
        assert_eq!(e.event_type, "audit.growth_exceeded");
        assert_eq!(e.payload["entriesLastMinute"], 101);
        assert!(
            g.observe(1_000, &root).is_none(),
            "at most one per interval"
        );
        assert!(Growth::new(0).observe(1_000_000, &root).is_none());
    }
}
