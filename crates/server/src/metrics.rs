//! Prometheus metrics, served at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
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
        Self {
            registry,
            requests,
            latency,
            auth,
            cache,
            usage_buffered,
        }
    }

    /// Counts a finished request.
    pub fn observe_request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method.to_owned(),
                route: route.to_owned(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
            })
            .observe(seconds);
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

    /// Records how many uses the last flush wrote.
    pub fn usage_flushed(&self, n: usize) {
        self.usage_buffered
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
