//! Prometheus metrics, served at `/metrics`.

use std::sync::Arc;

use axum::http::Method;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: Route,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: Route,
}

/// A route template (`/api/v1/auth/tokens/{id}`), shared rather than copied per request.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Route(Arc<str>);

impl Route {
    /// The label of requests that matched no route.
    pub fn unmatched() -> Self {
        static UNMATCHED: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
        Route(UNMATCHED.get_or_init(|| Arc::from("unmatched")).clone())
    }

    /// The label of a route the fast path serves, without an allocation per request.
    pub fn fixed(template: &'static str) -> Self {
        static VERIFY: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
        static VERIFY_PATH: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
        let cell = match template {
            "/auth/verify" => &VERIFY,
            "/auth/verify/{*path}" => &VERIFY_PATH,
            other => return Self::new(other),
        };
        Route(cell.get_or_init(|| Arc::from(template)).clone())
    }

    /// The label of a route template.
    pub fn new(template: &str) -> Self {
        Route(Arc::from(template))
    }

    /// The template.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl EncodeLabelValue for Route {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, &self.0)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    auth: Family<OutcomeLabels, Counter>,
    cache: Family<ResultLabels, Counter>,
    usage_buffered: Gauge,
    audit_written: Counter,
    audit_write_failures: Counter,
    audit_batch: Gauge,
    security_events: Family<EventLabels, Counter>,
    webhook_attempts: Family<AttemptLabels, Counter>,
    ratelimit: Family<RateLimitLabels, Counter>,
    ratelimit_redis: Gauge,
    ratelimit_redis_calls: Counter,
    ip_denied: Counter,
    upstream: Family<OutcomeLabels, Counter>,
    spend: Family<OutcomeLabels, Counter>,
    maintenance_passes: Counter,
    floods: FloodMetrics,
    /// The serving loop's connection counts.
    pub connections: ConnectionMetrics,
}

/// The metrics of what floods cost: aggregated audit entries, the audit growth rate, the
/// clients the rate limiter tracks.
struct FloodMetrics {
    aggregated: Counter,
    overflowed: Counter,
    last_minute: Gauge,
    tracked: Gauge,
}

impl FloodMetrics {
    fn register(registry: &mut Registry) -> Self {
        let aggregated = Counter::default();
        registry.register(
            "audit_requests_aggregated",
            "Requests counted into an aggregated audit entry instead of costing an entry of their own",
            aggregated.clone(),
        );
        let overflowed = Counter::default();
        registry.register(
            "audit_refusals_overflowed",
            "Refused requests folded into an overflow entry because the aggregation map was full",
            overflowed.clone(),
        );
        let last_minute = Gauge::default();
        registry.register(
            "audit_entries_last_minute",
            "Audit entries this node wrote in the last 60 seconds (compared with audit_growth_alert_per_minute)",
            last_minute.clone(),
        );
        let tracked = Gauge::default();
        registry.register(
            "ratelimit_tracked_clients",
            "Addresses and credentials the in-memory rate limiter tracks (bounded by max_tracked_clients)",
            tracked.clone(),
        );
        Self {
            aggregated,
            overflowed,
            last_minute,
            tracked,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RateLimitLabels {
    policy: &'static str,
    decision: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AttemptLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EventLabels {
    event_type: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("datastack");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by method, route and status",
            requests.clone(),
        );
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
                5.0,
            ])
        });
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route",
            latency.clone(),
        );
        let auth = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "auth_decisions",
            "Authentication and authorization decisions by outcome",
            auth.clone(),
        );
        let cache = Family::<ResultLabels, Counter>::default();
        registry.register(
            "credential_cache_lookups",
            "Credential cache lookups by result",
            cache.clone(),
        );
        let usage_buffered = Gauge::default();
        registry.register(
            "token_uses_last_flush",
            "Token uses written by the last usage flush",
            usage_buffered.clone(),
        );
        let audit_written = Counter::default();
        registry.register(
            "audit_entries_written",
            "Audit entries written by the group-commit writer",
            audit_written.clone(),
        );
        let audit_write_failures = Counter::default();
        registry.register(
            "audit_write_failures",
            "Failed audit batch writes (the batch is retried, not dropped)",
            audit_write_failures.clone(),
        );
        let audit_batch = Gauge::default();
        registry.register(
            "audit_last_batch_size",
            "Entries in the writer's last group commit",
            audit_batch.clone(),
        );
        let security_events = Family::<EventLabels, Counter>::default();
        registry.register(
            "security_events",
            "Security events raised by the audit writer, by type",
            security_events.clone(),
        );
        let webhook_attempts = Family::<AttemptLabels, Counter>::default();
        registry.register(
            "webhook_attempts",
            "Webhook delivery attempts, by outcome (succeeded, retrying, failed)",
            webhook_attempts.clone(),
        );
        let ratelimit = Family::<RateLimitLabels, Counter>::default();
        registry.register(
            "ratelimit_decisions",
            "Rate-limit decisions by policy (credential, workspace, ip) and decision",
            ratelimit.clone(),
        );
        let ratelimit_redis = Gauge::default();
        registry.register(
            "ratelimit_redis_available",
            "1 when rate-limit counters are shared through Redis, 0 when this node runs on local limits (no redis_url, or Redis unreachable)",
            ratelimit_redis.clone(),
        );
        let ratelimit_redis_calls = Counter::default();
        registry.register(
            "ratelimit_redis_calls",
            "Rate-limit scripts run in Redis (cluster mode); requests admitted on a node's lease do not run one",
            ratelimit_redis_calls.clone(),
        );
        let ip_denied = Counter::default();
        registry.register(
            "ip_access_denied",
            "Requests refused by an IP access list",
            ip_denied.clone(),
        );
        let upstream = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "gateway_upstream_responses",
            "Proxied requests by outcome (ok, timeout, unreachable, body_too_large, client_body_error)",
            upstream.clone(),
        );
        let spend = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "apikey_spend_decisions",
            "API key spend checks by outcome (admitted, exceeded)",
            spend.clone(),
        );
        let maintenance_passes = Counter::default();
        registry.register(
            "maintenance_passes",
            "Completed maintenance passes (retention, rotation due, unused-token policy)",
            maintenance_passes.clone(),
        );
        let floods = FloodMetrics::register(&mut registry);
        let connections = ConnectionMetrics::register(&mut registry);
        Self {
            maintenance_passes,
            floods,
            connections,
            spend,
            ratelimit,
            ratelimit_redis,
            ratelimit_redis_calls,
            ip_denied,
            upstream,
            registry,
            requests,
            latency,
            auth,
            cache,
            usage_buffered,
            audit_written,
            audit_write_failures,
            audit_batch,
            security_events,
            webhook_attempts,
        }
    }

    /// Counts a finished request.
    pub fn observe_request(&self, method: &Method, route: Route, status: u16, seconds: f64) {
        let method = match *method {
            Method::GET => "GET",
            Method::POST => "POST",
            Method::PUT => "PUT",
            Method::PATCH => "PATCH",
            Method::DELETE => "DELETE",
            Method::HEAD => "HEAD",
            Method::OPTIONS => "OPTIONS",
            // Arbitrary methods would let a client create unbounded label sets.
            _ => "OTHER",
        };
        self.latency
            .get_or_create(&RouteLabels {
                route: route.clone(),
            })
            .observe(seconds);
        self.requests
            .get_or_create(&RequestLabels {
                method,
                route,
                status,
            })
            .inc();
    }

    /// Counts an authentication or authorization decision.
    pub fn auth_decision(&self, outcome: &'static str) {
        self.auth.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Counts a cache hit.
    pub fn cache_hit(&self) {
        self.cache
            .get_or_create(&ResultLabels { result: "hit" })
            .inc();
    }

    /// Counts a cache miss.
    pub fn cache_miss(&self) {
        self.cache
            .get_or_create(&ResultLabels { result: "miss" })
            .inc();
    }

    /// Counts a lookup the negative cache answered (a credential known to be unknown).
    pub fn cache_negative_hit(&self) {
        self.cache
            .get_or_create(&ResultLabels {
                result: "negative_hit",
            })
            .inc();
    }

    /// Counts a lookup not made because the client's address was already refused by the
    /// rate limit.
    pub fn lookup_skipped(&self) {
        self.cache
            .get_or_create(&ResultLabels {
                result: "skipped_limited",
            })
            .inc();
    }

    /// Counts requests aggregated into entries, and refusals folded into overflow entries.
    pub fn audit_aggregated(&self, folded: u64, overflowed: u64) {
        self.floods.aggregated.inc_by(folded);
        self.floods.overflowed.inc_by(overflowed);
    }

    /// Records the entries written in the last minute.
    pub fn set_audit_entries_last_minute(&self, n: u64) {
        self.floods
            .last_minute
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Records how many clients the rate limiter tracks.
    pub fn set_ratelimit_tracked(&self, n: usize) {
        self.floods
            .tracked
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Records how many uses the last flush wrote.
    pub fn usage_flushed(&self, n: usize) {
        self.usage_buffered
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Records a committed audit batch.
    pub fn audit_batch_written(&self, n: usize) {
        self.audit_written.inc_by(n as u64);
        self.audit_batch.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Counts a completed maintenance pass.
    pub fn maintenance_pass(&self) {
        self.maintenance_passes.inc();
    }

    /// Counts a failed audit batch write.
    pub fn audit_write_failed(&self) {
        self.audit_write_failures.inc();
    }

    /// Counts a webhook delivery attempt, by outcome.
    pub fn webhook_attempt(&self, outcome: &'static str) {
        self.webhook_attempts
            .get_or_create(&AttemptLabels { outcome })
            .inc();
    }

    /// Counts a security event raised, by type.
    pub fn security_event(&self, event_type: &str) {
        self.security_events
            .get_or_create(&EventLabels {
                event_type: event_type.to_owned(),
            })
            .inc();
    }

    /// Counts a rate-limit decision.
    pub fn ratelimit_decision(&self, policy: &'static str, decision: &'static str) {
        self.ratelimit
            .get_or_create(&RateLimitLabels { policy, decision })
            .inc();
    }

    /// Records whether counters are shared through Redis.
    pub fn set_ratelimit_backend(&self, backend: &str) {
        self.ratelimit_redis.set(i64::from(backend == "redis"));
    }

    /// Counts a rate-limit script run in Redis.
    pub fn ratelimit_redis_call(&self) {
        self.ratelimit_redis_calls.inc();
    }

    /// Counts a spend check of an API key.
    pub fn spend_decision(&self, outcome: &'static str) {
        self.spend.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Counts an IP access list refusal.
    pub fn ip_denied(&self) {
        self.ip_denied.inc();
    }

    /// Counts a proxied request's outcome.
    pub fn upstream(&self, outcome: &'static str) {
        self.upstream
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// The metrics in the OpenMetrics 1.0 text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The metrics in the Prometheus text format 0.0.4, which the classic parsers read
    /// (the registry's encoder writes OpenMetrics only).
    pub fn render_prometheus(&self) -> String {
        openmetrics_to_prometheus(&self.render())
    }
}

/// Rewrites this registry's OpenMetrics text as Prometheus text 0.0.4. The two differ, for
/// the metric types registered here (counters, gauges, histograms), only in that an
/// OpenMetrics counter family is named without its samples' `_total` suffix, which the
/// classic format wants in `# HELP` and `# TYPE`, and in the `# UNIT` and `# EOF` lines
/// the classic format does not have.
fn openmetrics_to_prometheus(open: &str) -> String {
    let mut out = String::with_capacity(open.len() + 512);
    // The `# HELP` line of the family whose `# TYPE` comes next: (name, text).
    let mut help: Option<(&str, &str)> = None;
    for line in open.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            if let Some((name, text)) = help.take() {
                push_help(&mut out, name, text);
            }
            help = rest.split_once(' ').or(Some((rest, "")));
            continue;
        }
        if let Some((name, kind)) = line
            .strip_prefix("# TYPE ")
            .and_then(|rest| rest.split_once(' '))
        {
            let (suffix, kind) = match kind {
                "counter" => ("_total", "counter"),
                "info" => ("_info", "gauge"),
                "histogram" | "summary" | "gauge" => ("", kind),
                _ => ("", "untyped"),
            };
            let renamed = format!("{name}{suffix}");
            if let Some((_, text)) = help.take() {
                push_help(&mut out, &renamed, text);
            }
            out.push_str("# TYPE ");
            out.push_str(&renamed);
            out.push(' ');
            out.push_str(kind);
            out.push('\n');
            continue;
        }
        if let Some((name, text)) = help.take() {
            push_help(&mut out, name, text);
        }
        out.push_str(line);
        out.push('\n');
    }
    if let Some((name, text)) = help.take() {
        push_help(&mut out, name, text);
    }
    out
}

/// A `# HELP` line of the classic format, where only `\\` and `\n` are escapes.
fn push_help(out: &mut String, name: &str, text: &str) {
    out.push_str("# HELP ");
    out.push_str(name);
    out.push(' ');
    out.push_str(&text.replace("\\\"", "\""));
    out.push('\n');
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// What the serving loop counts: open client connections, connections it closed and why,
/// and the times it stopped accepting.
pub struct ConnectionMetrics {
    open: Gauge,
    closed: Family<ReasonLabels, Counter>,
    accept_paused: Family<ReasonLabels, Counter>,
}

impl ConnectionMetrics {
    fn register(registry: &mut Registry) -> Self {
        let open = Gauge::default();
        registry.register(
            "http_connections_open",
            "Client connections open now",
            open.clone(),
        );
        let closed = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "http_connections_closed_by_server",
            "Client connections the server closed (idle, header_timeout, evicted, shutdown)",
            closed.clone(),
        );
        let accept_paused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "http_accept_paused",
            "Times accepting paused: at_capacity (the connection cap was reached) or \
             accept_error (the system refused, e.g. out of file descriptors; accepting backs off)",
            accept_paused.clone(),
        );
        Self {
            open,
            closed,
            accept_paused,
        }
    }

    /// Counts an accepted connection as open.
    pub fn opened(&self) {
        self.open.inc();
    }

    /// Counts a connection, accepted earlier, as closed.
    pub fn released(&self) {
        self.open.dec();
    }

    /// Counts a connection the server closed, by reason.
    pub fn closed_by_server(&self, reason: &'static str) {
        self.closed.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// Counts a pause of accepting, by reason.
    pub fn accept_paused(&self, reason: &'static str) {
        self.accept_paused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }
}
