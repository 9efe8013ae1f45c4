//! The settings that bound what a flood of bad or limited requests costs: how long an
//! unknown credential is remembered as unknown, how many clients the rate limiter and the
//! failure-burst detector track, and the audit growth rate that raises an alert. Kept
//! apart from the rest of [`super::Config`] because they work together
//! (`docs/operations.md`, "Floods of bad credentials").

use std::time::Duration;

use super::{ConfigError, ConfigLayer, within};

/// Bounds on the cost of floods. Every one is a setting; see `docs/configuration.md`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FloodLimits {
    /// How long a node remembers that a well-formed credential's digest is unknown, so a
    /// flood of one unknown credential costs one store query per this time; zero turns
    /// the negative cache off. Default 2 s.
    pub negative_cache_ttl: Duration,
    /// The most clients (addresses and credentials of the rate limiter, networks and
    /// credentials of the failure-burst detector) each node tracks in memory. Default
    /// 100 000.
    pub max_tracked_clients: usize,
    /// Audit entries written by one node within a minute that raise
    /// `audit.growth_exceeded`; zero turns the alert off. Default 50 000.
    pub audit_growth_alert_per_minute: u64,
    /// The most groups of refused requests a node aggregates each second before it folds
    /// further refusals into one overflow entry per workspace and status: the most rows a
    /// second a flood of refusals can cost a node. Default 1 000.
    pub audit_refusal_groups: usize,
}

impl Default for FloodLimits {
    fn default() -> Self {
        Self {
            negative_cache_ttl: Duration::from_secs(2),
            max_tracked_clients: 100_000,
            audit_growth_alert_per_minute: 50_000,
            audit_refusal_groups: 1_000,
        }
    }
}

impl ConfigLayer {
    /// Validates this group over its defaults.
    pub(super) fn build_floods(&self) -> Result<FloodLimits, ConfigError> {
        let mut c = FloodLimits::default();
        if let Some(ms) = self.credential_negative_cache_ttl_ms {
            // Longer than 10 s would keep refusing a credential inserted behind the
            // server's back (a restored backup) for too long.
            c.negative_cache_ttl =
                Duration::from_millis(within("credential_negative_cache_ttl_ms", ms, 0, 10_000)?);
        }
        if let Some(n) = self.max_tracked_clients {
            c.max_tracked_clients = within("max_tracked_clients", n, 100, 10_000_000)? as usize;
        }
        if let Some(n) = self.audit_growth_alert_per_minute {
            c.audit_growth_alert_per_minute =
                within("audit_growth_alert_per_minute", n, 0, 100_000_000)?;
        }
        if let Some(n) = self.audit_refusal_groups {
            c.audit_refusal_groups = within(
                "audit_refusal_groups",
                n,
                10,
                crate::audit::MAX_GROUPS as u64,
            )? as usize;
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_come_from_the_environment_and_are_checked() {
        let vars = [
            ("DATASTACK_CREDENTIAL_NEGATIVE_CACHE_TTL_MS", "500"),
            ("DATASTACK_MAX_TRACKED_CLIENTS", "1000"),
            ("DATASTACK_AUDIT_GROWTH_ALERT_PER_MINUTE", "0"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let config = ConfigLayer::from_env(vars)
            .and_then(ConfigLayer::build)
            .expect("valid settings");
        assert_eq!(config.floods.negative_cache_ttl, Duration::from_millis(500));
        assert_eq!(config.floods.max_tracked_clients, 1000);
        assert_eq!(config.floods.audit_growth_alert_per_minute, 0);
        for (key, value) in [
            ("DATASTACK_CREDENTIAL_NEGATIVE_CACHE_TTL_MS", "60000"),
            ("DATASTACK_MAX_TRACKED_CLIENTS", "5"),
        ] {
            let err = ConfigLayer::from_env([(key.to_owned(), value.to_owned())])
                .and_then(ConfigLayer::build)
                .expect_err("out of range");
            assert!(err.to_string().contains("must be between"), "{err}");
        }
    }
}
