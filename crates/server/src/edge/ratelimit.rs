//! Rate limits: GCRA buckets per credential, per workspace and per client address (for
//! anonymous traffic and failed authentications), and the escalating penalty for clients
//! that keep sending while limited.
//!
//! Each policy is "N requests per minute", with a burst of N (the IETF `RateLimit-Policy`
//! `q=N;w=60`). On one node the buckets live in memory (`governor`); in cluster mode
//! (`redis_url`) they live in Redis and one Lua script checks and updates every bucket of
//! a request atomically, using the Redis server's clock, so all nodes enforce one limit.
//!
//! Leases: so that a busy credential does not cost one Redis round trip per request, the
//! script may grant a node several requests of a credential's or workspace's bucket at
//! once (a lease); the node admits that many requests on its own and renews the lease
//! ahead, when a quarter is left. A lease is at most `rate_limit_lease_max` requests and
//! a thousandth of the quota (so limits under 2000 per minute stay exact: one call per
//! request), starts at one request, doubles at each renewal within [`LEASE_TTL`], and is
//! dropped unused after it. Granted requests are taken from the shared bucket and a node
//! never holds more than one lease, so a cluster of N nodes admits in any interval at most
//! N × lease requests more than one shared bucket would. Addresses (anonymous traffic,
//! failed authentications) are never leased.
//!
//! When Redis cannot be reached the node falls back to its local buckets (each node then
//! enforces the limit on its own share of the traffic), logs the change once, shows it in
//! `/metrics` and `/readyz`, and tries Redis again every second until it answers. The
//! choice is to stay available: refusing all traffic because a counter store is down
//! would turn a Redis outage into an outage of every protected service.
//!
//! Abuse: a subject refused `abuse_threshold` times within one window is flagged; every
//! request of it is then refused for a penalty that starts at `abuse_penalty` and is
//! multiplied by 4 at each new flag within a day, up to `abuse_penalty_max`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use governor::clock::{Clock, QuantaClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

use crate::config::Config;
use crate::metrics::Metrics;

/// The window of every policy, in seconds.
pub const WINDOW_SECONDS: u64 = 60;
/// How long a flag level is remembered: a new flag within this time escalates.
const LEVEL_MEMORY: Duration = Duration::from_secs(24 * 3600);
/// How long a Redis call may take before the node falls back to local limits.
const REDIS_TIMEOUT: Duration = Duration::from_millis(250);
/// How often a node in fallback tries Redis again.
const REDIS_RETRY: Duration = Duration::from_secs(1);
/// How long a node keeps requests leased from a shared bucket before it drops them.
pub const LEASE_TTL: Duration = Duration::from_secs(2);
/// A lease is at most this fraction of its bucket's quota (1 / N).
pub const LEASE_QUOTA_DIVISOR: u32 = 1000;

/// What a bucket limits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    /// A credential (its id).
    Credential(String),
    /// A workspace (its id).
    Workspace(String),
    /// A client address, for traffic without a valid credential.
    Ip(IpAddr),
    /// The credential lookups of a client address that its own bucket already refuses
    /// (never flagged: it only bounds the store queries such an address can cause).
    Lookup(IpAddr),
}

impl Subject {
    /// `credential`, `workspace`, `ip` or `lookup` (only credentials and addresses are ever
    /// flagged).
    pub fn kind(&self) -> &'static str {
        match self {
            Subject::Credential(_) => "credential",
            Subject::Workspace(_) => "workspace",
            Subject::Ip(_) => "ip",
            Subject::Lookup(_) => "lookup",
        }
    }

    /// The id or address.
    pub fn value(&self) -> String {
        match self {
            Subject::Credential(s) | Subject::Workspace(s) => s.clone(),
            Subject::Ip(ip) | Subject::Lookup(ip) => ip.to_string(),
        }
    }

    /// `kind:value`, the key of its buckets and penalty.
    pub fn key(&self) -> String {
        use std::fmt::Write as _;
        let kind = self.kind();
        let mut key = String::with_capacity(kind.len() + 1 + 40);
        key.push_str(kind);
        key.push(':');
        match self {
            Subject::Credential(s) | Subject::Workspace(s) => key.push_str(s),
            Subject::Ip(ip) | Subject::Lookup(ip) => {
                let _ = write!(key, "{ip}");
            }
        }
        key
    }
}

/// One bucket a request must pass: a subject under a per-minute quota.
#[derive(Debug, Clone)]
pub struct Bucket {
    /// What it limits.
    pub subject: Subject,
    /// Requests per minute (and burst).
    pub per_minute: u32,
}

/// Flagging news from a decision.
#[derive(Debug, Clone)]
pub struct Flagged {
    /// The flagged subject.
    pub subject: Subject,
    /// The flag's level (1 for the first in a day).
    pub level: u32,
    /// The penalty imposed.
    pub penalty: Duration,
    /// Refusals that raised it.
    pub rejected: u64,
}

/// The outcome of checking a request's buckets.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// The bucket reported in the headers: the refusing one, else the one with the least
    /// room left.
    pub policy: &'static str,
    /// Its quota per window.
    pub quota: u32,
    /// Requests left in it.
    pub remaining: u32,
    /// Seconds until it is full again (or, refused, until a request may pass).
    pub reset: u64,
    /// `Some` when refused: how long to wait.
    pub retry_after: Option<Duration>,
    /// Refused because of an abuse penalty.
    pub penalized: bool,
    /// A flag raised by this request.
    pub flagged: Option<Flagged>,
    /// Refused by the bucket that addresses share while the node tracks as many as it
    /// may: the refusal says nothing about this client, so it is neither flagged nor
    /// remembered against its address.
    pub shared: bool,
}

impl Verdict {
    fn unlimited() -> Self {
        Verdict {
            policy: "none",
            quota: 0,
            remaining: 0,
            reset: 0,
            retry_after: None,
            penalized: false,
            flagged: None,
            shared: false,
        }
    }

    /// Whether the request may proceed.
    pub fn allowed(&self) -> bool {
        self.retry_after.is_none()
    }

    /// Whether the headers should be sent (a bucket applied).
    pub fn applies(&self) -> bool {
        self.quota > 0
    }
}

type Keyed =
    RateLimiter<String, DashMapStateStore<String>, QuantaClock, StateInformationMiddleware>;

#[derive(Default)]
struct Abuse {
    /// Refusals in the current window.
    rejected: u64,
    window_start: Option<Instant>,
    level: u32,
    level_until: Option<Instant>,
    penalty_until: Option<Instant>,
}

/// The in-process limiter: one keyed GCRA limiter per distinct quota, with addresses kept
/// apart from credentials and workspaces so that only the former, which a client can vary
/// at will, are bounded.
struct Local {
    limiters: std::sync::RwLock<HashMap<(bool, u32), std::sync::Arc<Keyed>>>,
    abuse: Mutex<HashMap<String, Abuse>>,
    /// Whether any penalty may be active (skips the lock on the common path).
    any_penalty: AtomicBool,
    /// The most addresses tracked per quota, and abuse counters in all.
    cap: usize,
    /// Milliseconds since `epoch` of the last trim of a full address map, and of the
    /// abuse counters.
    trimmed_at_ms: AtomicU64,
    abuse_trimmed_at_ms: AtomicU64,
    epoch: Instant,
}

/// The shared bucket of new addresses while the address map is full.
const OVERFLOW_KEY: &str = "ip:overflow";

impl Local {
    fn limiter(&self, addresses: bool, per_minute: u32) -> std::sync::Arc<Keyed> {
        if let Some(l) = self
            .limiters
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(addresses, per_minute))
        {
            return l.clone();
        }
        let mut map = self.limiters.write().unwrap_or_else(|p| p.into_inner());
        map.entry((addresses, per_minute))
            .or_insert_with(|| {
                let n = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
                std::sync::Arc::new(
                    RateLimiter::dashmap(Quota::per_minute(n))
                        .with_middleware::<StateInformationMiddleware>(),
                )
            })
            .clone()
    }

    fn penalty(&self, key: &str) -> Option<Duration> {
        if !self.any_penalty.load(Ordering::Relaxed) {
            return None;
        }
        let abuse = self.abuse.lock().unwrap_or_else(|p| p.into_inner());
        let until = abuse.get(key)?.penalty_until?;
        until.checked_duration_since(Instant::now())
    }
}

/// The Redis side: a connection manager (reconnects by itself) and the health flag.
struct Remote {
    cached: std::sync::RwLock<Option<redis::aio::ConnectionManager>>,
    connecting: tokio::sync::Mutex<()>,
    client: redis::Client,
    prefix: String,
    healthy: AtomicBool,
    /// Whether Redis has failed since the node started (only then is its return news).
    failed: AtomicBool,
    /// Milliseconds since `epoch` before which no Redis call is tried.
    retry_at_ms: AtomicU64,
    epoch: Instant,
}

/// Requests of a shared bucket granted to this node (cluster mode).
struct Lease {
    /// The bucket's quota when granted (a new quota asks Redis again).
    per_minute: u32,
    /// Requests this node may still admit without asking Redis.
    tokens: u32,
    /// The size of the last grant (the next one doubles it when this one is used up in
    /// time).
    size: u32,
    /// Requests left in the shared bucket after the grant.
    remaining: u32,
    /// When the shared bucket is full again, as of the grant.
    full_at: Instant,
    /// When the lease is dropped.
    expires: Instant,
    /// A request of this node is asking Redis for the next lease: the others ask for one
    /// request each meanwhile, so a node never holds more than one lease's worth.
    refilling: bool,
}

impl Lease {
    fn live(&self, per_minute: u32, now: Instant) -> bool {
        self.per_minute == per_minute && now < self.expires
    }

    /// What the client sees: the shared bucket's remaining as of the grant plus what this
    /// node still holds, and the seconds until the shared bucket is full.
    fn view(&self, now: Instant) -> (u32, u64) {
        let reset = self.full_at.saturating_duration_since(now);
        (
            self.remaining.saturating_add(self.tokens),
            reset.as_secs_f64().ceil() as u64,
        )
    }
}

/// The leases of a node, per subject.
struct Leases {
    map: Mutex<HashMap<Subject, Lease>>,
    /// The largest lease (1: none, every request asks Redis).
    max: u32,
    /// The most subjects holding a lease.
    cap: usize,
}

impl Leases {
    /// The largest lease of a bucket: 1 for addresses, else a thousandth of the quota up
    /// to `max`.
    fn limit(&self, bucket: &Bucket) -> u32 {
        match bucket.subject {
            Subject::Credential(_) | Subject::Workspace(_) => {
                (bucket.per_minute / LEASE_QUOTA_DIVISOR).clamp(1, self.max.max(1))
            }
            Subject::Ip(_) | Subject::Lookup(_) => 1,
        }
    }
}

/// What a request asks of Redis after taking what it could from its leases.
struct Asked {
    /// Per bucket: requests asked of Redis. Positive: needed for this request (Redis
    /// refuses the request when it has none; one of them is this request's); negative: the
    /// next lease, asked ahead while this request uses this node's lease (Redis grants
    /// what it has, possibly nothing, and never refuses for it); 0: nothing asked.
    wants: Vec<i64>,
    /// Per bucket: whether this request took one of this node's leased requests.
    took: Vec<bool>,
    /// Per bucket: whether this request is the node's refill of the bucket's lease.
    refills: Vec<bool>,
}

impl Asked {
    /// Whether a refusal must be undone on the leases.
    fn leased(&self) -> bool {
        self.took.iter().chain(&self.refills).any(|b| *b)
    }
}

/// The limiter of a node.
pub struct Limiter {
    local: Local,
    remote: Option<Remote>,
    leases: Leases,
    script: redis::Script,
    abuse_threshold: u64,
    penalty_base: Duration,
    penalty_max: Duration,
    metrics: std::sync::Arc<Metrics>,
}

/// Checks every bucket (without changing any), then, if all pass, takes one request from
/// each; if one refuses, counts the refusal against its subject and flags the subject when
/// the count reaches the threshold. One call per request, atomic, on Redis's clock.
///
/// KEYS: for each bucket, 4 keys: tat, penalty, rejections, level.
/// ARGV[1] threshold, ARGV[2] penalty base ms, ARGV[3] penalty max ms, ARGV[4] window ms,
/// ARGV[5] level memory ms, ARGV[6] the bucket whose subject refusals are counted against
/// (1-based; 0: none), then for each bucket its per-minute quota, then for each bucket the
/// requests asked of it: positive, needed (refused when it has none; grants up to that
/// many, at least one); negative, a lease asked ahead (grants up to that many, possibly
/// none, never refuses); 0, not touched.
/// Returns {status, bucket index (1-based), remaining, ms, level, rejected}, status 0
/// allowed, 1 limited (ms to wait), 2 penalized (ms left), 3 flagged now (penalty ms);
/// when allowed, followed by {granted, remaining, ms until full} for each bucket.
const GCRA_LUA: &str = include_str!("ratelimit.lua");

fn policy_name(subject: &Subject) -> &'static str {
    subject.kind()
}

impl Limiter {
    /// A limiter configured by `config`; cluster mode when `redis_url` is set.
    pub async fn new(config: &Config, metrics: std::sync::Arc<Metrics>) -> Result<Self, String> {
        let remote = match &config.redis_url {
            None => None,
            Some(url) => {
                let client = redis::Client::open(url.as_str())
                    .map_err(|e| format!("redis_url is not usable: {e}"))?;
                let remote = Remote {
                    cached: std::sync::RwLock::new(None),
                    connecting: tokio::sync::Mutex::new(()),
                    client,
                    prefix: config.redis_key_prefix.clone(),
                    healthy: AtomicBool::new(false),
                    failed: AtomicBool::new(false),
                    retry_at_ms: AtomicU64::new(0),
                    epoch: Instant::now(),
                };
                Some(remote)
            }
        };
        let limiter = Self {
            local: Local {
                limiters: std::sync::RwLock::new(HashMap::new()),
                abuse: Mutex::new(HashMap::new()),
                any_penalty: AtomicBool::new(false),
                cap: config.floods.max_tracked_clients,
                trimmed_at_ms: AtomicU64::new(0),
                abuse_trimmed_at_ms: AtomicU64::new(0),
                epoch: Instant::now(),
            },
            remote,
            leases: Leases {
                map: Mutex::new(HashMap::new()),
                max: config.rate_limit_lease_max,
                cap: config.floods.max_tracked_clients,
            },
            script: redis::Script::new(GCRA_LUA),
            abuse_threshold: u64::from(config.abuse_threshold),
            penalty_base: config.abuse_penalty,
            penalty_max: config.abuse_penalty_max,
            metrics,
        };
        if limiter.remote.is_some() {
            // Connect now so a misconfiguration shows at start; a Redis that is down is
            // not fatal (the node starts on local limits and keeps trying).
            if limiter.connection().await.is_some() {
                tracing::info!("rate limits are shared through Redis");
            } else {
                tracing::warn!(
                    "Redis is unreachable at start: this node enforces rate limits on its own until it answers; retrying"
                );
            }
        }
        limiter.metrics.set_ratelimit_backend(limiter.backend());
        Ok(limiter)
    }

    /// `local`, `redis`, or `local (redis unreachable)`.
    pub fn backend(&self) -> &'static str {
        match &self.remote {
            None => "local",
            Some(r) if r.healthy.load(Ordering::Relaxed) => "redis",
            Some(_) => "local (redis unreachable)",
        }
    }

    async fn connection(&self) -> Option<redis::aio::ConnectionManager> {
        let remote = self.remote.as_ref()?;
        let now_ms = remote.epoch.elapsed().as_millis() as u64;
        let due = remote.healthy.load(Ordering::Relaxed)
            || now_ms >= remote.retry_at_ms.load(Ordering::Relaxed);
        if !due {
            return None;
        }
        let cached = remote
            .cached
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if cached.is_some() {
            return cached;
        }
        // Not connected yet: one task connects, the others use local limits meanwhile.
        let Ok(_connecting) = remote.connecting.try_lock() else {
            return None;
        };
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1);
        // Boxed: connecting makes this future large, and every check awaits it.
        match Box::pin(tokio::time::timeout(
            REDIS_TIMEOUT * 4,
            remote.client.get_connection_manager_with_config(config),
        ))
        .await
        {
            Ok(Ok(c)) => {
                *remote.cached.write().unwrap_or_else(|p| p.into_inner()) = Some(c.clone());
                self.mark(true, None);
                Some(c)
            }
            Ok(Err(e)) => {
                self.mark(false, Some(&e.to_string()));
                None
            }
            Err(_) => {
                self.mark(false, Some("connection timed out"));
                None
            }
        }
    }

    /// The shared Redis connection and the key prefix, when in cluster mode and Redis is
    /// believed reachable (for other counters that must be shared, such as spend).
    pub(crate) async fn redis(&self) -> Option<(redis::aio::ConnectionManager, String)> {
        let prefix = self.remote.as_ref()?.prefix.clone();
        self.connection().await.map(|c| (c, prefix))
    }

    /// Reports a failed Redis call made through [`Self::redis`].
    pub(crate) fn redis_failed(&self, error: &str) {
        self.mark(false, Some(error));
    }

    fn mark(&self, healthy: bool, error: Option<&str>) {
        let Some(remote) = &self.remote else { return };
        let was = remote.healthy.swap(healthy, Ordering::Relaxed);
        // The first connection of a node that never lost Redis is not a recovery: `new`
        // says that limits are shared.
        let failed_before = if healthy {
            remote.failed.load(Ordering::Relaxed)
        } else {
            remote.failed.swap(true, Ordering::Relaxed);
            true
        };
        if !healthy {
            let at = remote.epoch.elapsed() + REDIS_RETRY;
            remote
                .retry_at_ms
                .store(at.as_millis() as u64, Ordering::Relaxed);
        }
        if was != healthy && failed_before {
            if healthy {
                tracing::info!("Redis answers again: rate limits are shared across nodes");
            } else {
                tracing::warn!(
                    error = error.unwrap_or("unknown"),
                    "Redis is unreachable: falling back to this node's own rate limits; retrying every second"
                );
            }
        }
        self.metrics.set_ratelimit_backend(self.backend());
    }

    /// Checks a request against its buckets (a quota of 0 turns a bucket off). Refusals
    /// count towards flagging the first credential or known address among them, never a
    /// workspace (one member must not get the whole workspace penalised) nor the shared
    /// bucket of unknown addresses.
    pub async fn check(&self, buckets: &[Bucket]) -> Verdict {
        let buckets: Vec<&Bucket> = buckets.iter().filter(|b| b.per_minute > 0).collect();
        if buckets.is_empty() {
            return Verdict::unlimited();
        }
        let flag = buckets.iter().position(|b| match &b.subject {
            Subject::Credential(_) => true,
            Subject::Ip(ip) => !ip.is_unspecified(),
            Subject::Workspace(_) | Subject::Lookup(_) => false,
        });
        let healthy = self
            .remote
            .as_ref()
            .is_some_and(|r| r.healthy.load(Ordering::Relaxed));
        // With Redis answering, a request this node's leases cover needs nothing else.
        let asked = if healthy {
            match self.take_leased(&buckets) {
                None => return self.leased_verdict(&buckets),
                asked => asked,
            }
        } else {
            None
        };
        if let Some(conn) = self.connection().await {
            let asked = match asked {
                Some(asked) => asked,
                None => match self.take_leased(&buckets) {
                    None => return self.leased_verdict(&buckets),
                    Some(asked) => asked,
                },
            };
            // Boxed: the Redis exchange makes this future large, and the in-process
            // limiter should not carry it.
            match Box::pin(self.check_remote(conn, &buckets, flag, &asked)).await {
                Ok(v) => {
                    if !v.allowed() && asked.leased() {
                        self.give_back(&buckets, &asked);
                    }
                    return v;
                }
                Err(e) => {
                    if asked.leased() {
                        self.give_back(&buckets, &asked);
                    }
                    self.mark(false, Some(&e.to_string()))
                }
            }
        } else if let Some(asked) = asked.filter(Asked::leased) {
            self.give_back(&buckets, &asked);
        }
        self.check_local(&buckets, flag)
    }

    /// Takes one request from this node's lease of every bucket that has one. `None` when
    /// every bucket had one and none needs its next lease yet: the request is admitted
    /// without Redis. Otherwise what to ask of Redis (the taken requests stay taken unless
    /// given back). A lease down to a quarter of its size is renewed ahead by the request
    /// that finds it so, to twice its size (up to the bucket's limit) minus what is left;
    /// an empty one by the next request, needing one for itself; while one request
    /// renews, the others ask for one request each.
    fn take_leased(&self, buckets: &[&Bucket]) -> Option<Asked> {
        let limits: Vec<u32> = buckets.iter().map(|b| self.leases.limit(b)).collect();
        if limits.iter().all(|&l| l <= 1) {
            return Some(Asked {
                wants: vec![1; buckets.len()],
                took: vec![false; buckets.len()],
                refills: vec![false; buckets.len()],
            });
        }
        let now = Instant::now();
        let mut map = self.leases.map.lock().unwrap_or_else(|p| p.into_inner());
        let mut asked = Asked {
            wants: Vec::with_capacity(buckets.len()),
            took: Vec::with_capacity(buckets.len()),
            refills: Vec::with_capacity(buckets.len()),
        };
        for (b, &limit) in buckets.iter().zip(&limits) {
            let (want, took, refill) = match map.get_mut(&b.subject) {
                Some(l) if limit > 1 && l.live(b.per_minute, now) => {
                    let next = i64::from(l.size.saturating_mul(2).min(limit));
                    if l.tokens > 0 {
                        l.tokens -= 1;
                        if l.refilling || l.tokens.saturating_mul(4) > l.size {
                            (0, true, false)
                        } else {
                            l.refilling = true;
                            (-(next - i64::from(l.tokens)).max(1), true, true)
                        }
                    } else if l.refilling {
                        (1, false, false)
                    } else {
                        l.refilling = true;
                        (next, false, true)
                    }
                }
                _ => (1, false, false),
            };
            asked.wants.push(want);
            asked.took.push(took);
            asked.refills.push(refill);
        }
        if asked.wants.iter().all(|w| *w == 0) {
            return None;
        }
        Some(asked)
    }

    /// Undoes what a request Redis did not admit took from leases: the requests taken are
    /// given back, the refills it made are no longer under way.
    fn give_back(&self, buckets: &[&Bucket], asked: &Asked) {
        let now = Instant::now();
        let mut map = self.leases.map.lock().unwrap_or_else(|p| p.into_inner());
        for (i, b) in buckets.iter().enumerate() {
            if let Some(l) = map.get_mut(&b.subject) {
                if asked.refills[i] {
                    l.refilling = false;
                }
                if asked.took[i] && l.live(b.per_minute, now) {
                    l.tokens = l.tokens.saturating_add(1).min(l.size);
                }
            }
        }
    }

    /// The verdict of a request admitted on leases alone: the bucket with the least room.
    fn leased_verdict(&self, buckets: &[&Bucket]) -> Verdict {
        let now = Instant::now();
        let map = self.leases.map.lock().unwrap_or_else(|p| p.into_inner());
        let mut best: Option<Verdict> = None;
        for b in buckets {
            let (remaining, reset) = map.get(&b.subject).map_or((0, 0), |l| l.view(now));
            if best.as_ref().is_none_or(|v| remaining < v.remaining) {
                best = Some(allowed_verdict(b, remaining, reset));
            }
        }
        best.unwrap_or_else(Verdict::unlimited)
    }

    /// Stores what Redis granted and returns the verdict over every bucket.
    fn store_grants(&self, buckets: &[&Bucket], asked: &Asked, grants: &[i64]) -> Verdict {
        let now = Instant::now();
        let mut map = self.leases.map.lock().unwrap_or_else(|p| p.into_inner());
        let mut best: Option<Verdict> = None;
        for (i, b) in buckets.iter().enumerate() {
            let at = |k: usize| grants.get(i * 3 + k).copied().unwrap_or(0);
            let want = asked.wants[i];
            let granted = u32::try_from(at(0)).unwrap_or(0);
            let shared_remaining = u32::try_from(at(1)).unwrap_or(0);
            let ms = u64::try_from(at(2)).unwrap_or(0);
            // What this request used of the grant: one when it needed one.
            let used = u32::from(want > 0);
            if want != 0 && self.leases.limit(b) > 1 {
                let fresh = Lease {
                    per_minute: b.per_minute,
                    tokens: 0,
                    size: granted.max(1),
                    remaining: shared_remaining,
                    full_at: now + Duration::from_millis(ms),
                    expires: now + LEASE_TTL,
                    refilling: false,
                };
                let room = map.len() < self.leases.cap;
                match map.get_mut(&b.subject) {
                    Some(l) if asked.refills[i] => {
                        // The node's one refill: it adds what Redis granted beyond this
                        // request's own to what is left, never more than the bucket's
                        // limit in all (it asked for the difference).
                        l.refilling = false;
                        l.tokens = l.tokens.saturating_add(granted.saturating_sub(used));
                        l.remaining = shared_remaining;
                        l.full_at = fresh.full_at;
                        if granted > 0 {
                            l.size = l.tokens.saturating_add(used).max(l.size);
                            l.expires = fresh.expires;
                        }
                    }
                    // A single request while another refills, or a first one.
                    Some(l) if l.live(b.per_minute, now) => {}
                    Some(l) => *l = fresh,
                    None if room => {
                        map.insert(b.subject.clone(), fresh);
                    }
                    None => {}
                }
            }
            let (remaining, reset) = match map.get(&b.subject) {
                Some(l) if asked.took[i] || asked.refills[i] => l.view(now),
                _ => (
                    shared_remaining.saturating_add(granted.saturating_sub(used)),
                    ms.div_ceil(1000),
                ),
            };
            if best.as_ref().is_none_or(|v| remaining < v.remaining) {
                best = Some(allowed_verdict(b, remaining, reset));
            }
        }
        best.unwrap_or_else(Verdict::unlimited)
    }

    async fn check_remote(
        &self,
        mut conn: redis::aio::ConnectionManager,
        buckets: &[&Bucket],
        flag: Option<usize>,
        asked: &Asked,
    ) -> Result<Verdict, redis::RedisError> {
        let Some(remote) = &self.remote else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "no redis",
            )));
        };
        let mut invocation = self.script.prepare_invoke();
        for b in buckets {
            let base = format!("{}rl:{}", remote.prefix, b.subject.key());
            invocation
                .key(format!("{base}:tat:{}", b.per_minute))
                .key(format!("{base}:penalty"))
                .key(format!("{base}:rejected"))
                .key(format!("{base}:level"));
        }
        invocation
            .arg(self.abuse_threshold)
            .arg(self.penalty_base.as_millis() as u64)
            .arg(self.penalty_max.as_millis() as u64)
            .arg(WINDOW_SECONDS * 1000)
            .arg(LEVEL_MEMORY.as_millis() as u64)
            .arg(flag.map_or(0, |i| i + 1));
        for b in buckets {
            invocation.arg(b.per_minute);
        }
        for w in &asked.wants {
            invocation.arg(*w);
        }
        self.metrics.ratelimit_redis_call();
        let reply: Vec<i64> =
            tokio::time::timeout(REDIS_TIMEOUT, invocation.invoke_async(&mut conn))
                .await
                .map_err(|_| {
                    redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "the rate-limit script timed out",
                    ))
                })??;
        if !remote.healthy.load(Ordering::Relaxed) {
            self.mark(true, None);
        }
        let field = |i: usize| reply.get(i).copied().unwrap_or(0);
        let (status, index, ms, level, rejected) =
            (field(0), field(1), field(3), field(4), field(5));
        if status == 0 {
            return Ok(self.store_grants(buckets, asked, reply.get(6..).unwrap_or_default()));
        }
        let bucket = buckets[(index.max(1) as usize - 1).min(buckets.len() - 1)];
        let ms = u64::try_from(ms).unwrap_or(0);
        let mut v = Verdict {
            policy: policy_name(&bucket.subject),
            quota: bucket.per_minute,
            remaining: 0,
            reset: ms.div_ceil(1000),
            retry_after: Some(Duration::from_millis(ms.max(1))),
            penalized: false,
            flagged: None,
            shared: false,
        };
        match status {
            1 => {}
            2 => v.penalized = true,
            _ => {
                v.penalized = true;
                v.flagged = Some(Flagged {
                    subject: bucket.subject.clone(),
                    level: u32::try_from(level).unwrap_or(1),
                    penalty: Duration::from_millis(ms),
                    rejected: u64::try_from(rejected).unwrap_or(0),
                });
            }
        }
        Ok(v)
    }

    fn check_local(&self, buckets: &[&Bucket], flag: Option<usize>) -> Verdict {
        // No key is built for the penalty check unless some penalty may be active.
        let penalties = self.local.any_penalty.load(Ordering::Relaxed);
        for b in buckets.iter().filter(|_| penalties) {
            if let Some(left) = self.local.penalty(&b.subject.key()) {
                return Verdict {
                    policy: policy_name(&b.subject),
                    quota: b.per_minute,
                    remaining: 0,
                    reset: left.as_secs().max(1),
                    retry_after: Some(left.max(Duration::from_millis(1))),
                    penalized: true,
                    flagged: None,
                    shared: false,
                };
            }
        }
        let mut best: Option<Verdict> = None;
        for b in buckets {
            let addresses = matches!(b.subject, Subject::Ip(_) | Subject::Lookup(_));
            let limiter = self.local.limiter(addresses, b.per_minute);
            let mut key = b.subject.key();
            if addresses && !self.room_for_addresses(&limiter) {
                // More addresses are active than the node tracks: new and old alike share
                // one bucket until idle ones can be forgotten, rather than growing the
                // map (a client varying its address must not cost memory per address).
                key = OVERFLOW_KEY.to_owned();
            }
            let per_request = Duration::from_secs(WINDOW_SECONDS) / b.per_minute;
            match limiter.check_key(&key) {
                Ok(snapshot) => {
                    let remaining = snapshot.remaining_burst_capacity();
                    let reset = per_request * (b.per_minute - remaining.min(b.per_minute));
                    if best.as_ref().is_none_or(|v| remaining < v.remaining) {
                        best = Some(Verdict {
                            policy: policy_name(&b.subject),
                            quota: b.per_minute,
                            remaining,
                            reset: reset.as_secs_f64().ceil() as u64,
                            retry_after: None,
                            penalized: false,
                            flagged: None,
                            shared: false,
                        });
                    }
                }
                Err(not_until) => {
                    let wait = not_until.wait_time_from(limiter.clock().now());
                    let shared = key == OVERFLOW_KEY;
                    // A refusal by the shared bucket is not this client's doing.
                    let flagged = flag
                        .filter(|_| !shared)
                        .and_then(|i| self.count_refusal(&buckets[i].subject));
                    let penalized = flagged.is_some();
                    let retry = flagged.as_ref().map_or(wait, |f| f.penalty);
                    return Verdict {
                        policy: policy_name(&b.subject),
                        quota: b.per_minute,
                        remaining: 0,
                        reset: retry.as_secs_f64().ceil() as u64,
                        retry_after: Some(retry.max(Duration::from_millis(1))),
                        penalized,
                        flagged,
                        shared,
                    };
                }
            }
        }
        best.unwrap_or_else(Verdict::unlimited)
    }

    /// Whether the address map of `limiter` has room; when it is full, idle addresses are
    /// forgotten first (at most once a second, as that walks the map).
    fn room_for_addresses(&self, limiter: &Keyed) -> bool {
        let len = limiter.len();
        self.metrics.set_ratelimit_tracked(len);
        if len < self.local.cap {
            return true;
        }
        let now_ms = self.local.epoch.elapsed().as_millis() as u64;
        let last = self.local.trimmed_at_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last) >= 1000
            && self
                .local
                .trimmed_at_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            limiter.retain_recent();
            let len = limiter.len();
            self.metrics.set_ratelimit_tracked(len);
            return len < self.local.cap;
        }
        false
    }

    fn count_refusal(&self, subject: &Subject) -> Option<Flagged> {
        let now = Instant::now();
        let window = Duration::from_secs(WINDOW_SECONDS);
        let mut abuse = self.local.abuse.lock().unwrap_or_else(|p| p.into_inner());
        let key = subject.key();
        if !abuse.contains_key(&key) && abuse.len() >= self.local.cap {
            // Full: forget what has expired (at most once a second, as that walks the
            // map); if that is not enough, the new subject is not counted (it stays
            // limited by its bucket), and no subject under a penalty is forgotten early.
            let now_ms = self.local.epoch.elapsed().as_millis() as u64;
            let last = self.local.abuse_trimmed_at_ms.load(Ordering::Relaxed);
            if now_ms.saturating_sub(last) >= 1000 {
                self.local
                    .abuse_trimmed_at_ms
                    .store(now_ms, Ordering::Relaxed);
                abuse.retain(|_, a| active(a, now));
            }
            if abuse.len() >= self.local.cap {
                return None;
            }
        }
        let a = abuse.entry(key).or_default();
        if a.window_start
            .is_none_or(|s| now.duration_since(s) >= window)
        {
            a.window_start = Some(now);
            a.rejected = 0;
        }
        a.rejected += 1;
        if a.rejected < self.abuse_threshold {
            return None;
        }
        if a.level_until.is_none_or(|u| u <= now) {
            a.level = 0;
        }
        a.level += 1;
        a.level_until = Some(now + LEVEL_MEMORY);
        let factor = 4u32.saturating_pow(a.level - 1);
        let penalty = self
            .penalty_base
            .checked_mul(factor)
            .unwrap_or(self.penalty_max)
            .min(self.penalty_max);
        a.penalty_until = Some(now + penalty);
        let rejected = a.rejected;
        a.rejected = 0;
        a.window_start = None;
        self.local.any_penalty.store(true, Ordering::Relaxed);
        Some(Flagged {
            subject: subject.clone(),
            level: a.level,
            penalty,
            rejected,
        })
    }

    /// Lifts the penalty and forgets the level of `key` (`kind:value`), on this node and
    /// in Redis.
    pub async fn clear(&self, key: &str) {
        {
            let mut abuse = self.local.abuse.lock().unwrap_or_else(|p| p.into_inner());
            abuse.remove(key);
        }
        if let (Some(remote), Some(mut conn)) = (&self.remote, self.connection().await) {
            let base = format!("{}rl:{key}", remote.prefix);
            let keys = [
                format!("{base}:penalty"),
                format!("{base}:rejected"),
                format!("{base}:level"),
            ];
            let cleared: Result<(), redis::RedisError> =
                redis::cmd("DEL").arg(&keys).query_async(&mut conn).await;
            if let Err(e) = cleared {
                tracing::warn!(error = %e, "cannot lift a penalty in Redis");
            }
        }
    }

    /// Forgets idle local buckets and expired penalties (called periodically).
    pub fn sweep(&self) {
        let limiters: Vec<_> = {
            let map = self
                .local
                .limiters
                .read()
                .unwrap_or_else(|p| p.into_inner());
            map.values().cloned().collect()
        };
        for l in limiters {
            l.retain_recent();
            l.shrink_to_fit();
        }
        let now = Instant::now();
        self.leases
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, l| now < l.expires);
        let mut abuse = self.local.abuse.lock().unwrap_or_else(|p| p.into_inner());
        abuse.retain(|_, a| active(a, now));
        if !abuse
            .values()
            .any(|a| a.penalty_until.is_some_and(|u| u > now))
        {
            self.local.any_penalty.store(false, Ordering::Relaxed);
        }
    }
}

/// An admitting verdict for `bucket` with `remaining` requests left, full in `reset` s.
fn allowed_verdict(bucket: &Bucket, remaining: u32, reset: u64) -> Verdict {
    Verdict {
        policy: policy_name(&bucket.subject),
        quota: bucket.per_minute,
        remaining,
        reset,
        retry_after: None,
        penalized: false,
        flagged: None,
        shared: false,
    }
}

/// Whether an abuse counter still matters: a penalty or a level in force, or a window of
/// refusals still open.
fn active(a: &Abuse, now: Instant) -> bool {
    a.penalty_until.is_some_and(|u| u > now)
        || a.level_until.is_some_and(|u| u > now)
        || a.window_start
            .is_some_and(|s| now.duration_since(s) < Duration::from_secs(WINDOW_SECONDS))
}

impl Limiter {
    /// In cluster mode on local limits, tries Redis (so recovery does not wait for traffic).
    pub async fn probe(&self) {
        if let Some(mut conn) = self.connection().await {
            let pong: Result<String, redis::RedisError> =
                redis::cmd("PING").query_async(&mut conn).await;
            match pong {
                Ok(_) => self.mark(true, None),
                Err(e) => self.mark(false, Some(&e.to_string())),
            }
        }
    }
}
