//! The webhook dispatcher's settings: which private networks deliveries may reach, how
//! long an attempt may take, how long a delivery is retried, when a failing endpoint is
//! disabled, how many deliveries run at once, and how long history is kept.

use std::time::Duration;

use super::{ConfigError, ConfigLayer, within};

/// Webhook delivery settings; see `docs/configuration.md`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSettings {
    /// Networks deliveries may reach although the SSRF guard forbids them (private,
    /// loopback, …), and the only ones plain `http://` URLs may use. Default none.
    pub allow_networks: Vec<ipnet::IpNet>,
    /// How long one attempt may take (connect, send, answer). Default 10 s.
    pub timeout: Duration,
    /// How long after an event a failing delivery keeps being retried. Default 24 h.
    pub retry_window: Duration,
    /// An endpoint failing this long without a success is disabled. Default 5 days.
    pub disable_after: Duration,
    /// Deliveries in flight on this node at most. Default 64.
    pub concurrency: usize,
    /// Deliveries in flight to one endpoint at most. Default 8.
    pub endpoint_concurrency: usize,
    /// Finished deliveries and their attempts are deleted this long after the event.
    /// Default 30 days.
    pub retention: Duration,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            allow_networks: Vec::new(),
            timeout: Duration::from_secs(10),
            retry_window: Duration::from_secs(24 * 3600),
            disable_after: Duration::from_secs(5 * 24 * 3600),
            concurrency: 64,
            endpoint_concurrency: 8,
            retention: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

impl ConfigLayer {
    /// Validates this group over its defaults.
    pub(super) fn build_webhooks(&self) -> Result<WebhookSettings, ConfigError> {
        let mut c = WebhookSettings::default();
        if let Some(list) = &self.webhook_allow_networks {
            c.allow_networks = list
                .iter()
                .map(|s| s.trim())
                .filter(|s| !s.is_empty())
                .map(|s| {
                    s.parse::<ipnet::IpNet>()
                        .map(|n| n.trunc())
                        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                        .map_err(|_| {
                            ConfigError(format!(
                                "webhook_allow_networks: {s:?} is not an address or CIDR range (e.g. 10.0.0.0/8)"
                            ))
                        })
                })
                .collect::<Result<_, _>>()?;
        }
        if let Some(ms) = self.webhook_timeout_ms {
            c.timeout = Duration::from_millis(within("webhook_timeout_ms", ms, 100, 60_000)?);
        }
        if let Some(h) = self.webhook_retry_window_hours {
            c.retry_window =
                Duration::from_secs(within("webhook_retry_window_hours", h, 1, 168)? * 3600);
        }
        if let Some(h) = self.webhook_disable_after_hours {
            c.disable_after =
                Duration::from_secs(within("webhook_disable_after_hours", h, 1, 90 * 24)? * 3600);
        }
        if let Some(n) = self.webhook_concurrency {
            c.concurrency = within("webhook_concurrency", n, 1, 10_000)? as usize;
        }
        if let Some(n) = self.webhook_endpoint_concurrency {
            c.endpoint_concurrency = within("webhook_endpoint_concurrency", n, 1, 1_000)? as usize;
        }
        if let Some(d) = self.webhook_retention_days {
            c.retention =
                Duration::from_secs(within("webhook_retention_days", d, 1, 3650)? * 86_400);
        }
        Ok(c)
    }
}
