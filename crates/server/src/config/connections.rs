//! The connection settings: how long a client may be slow or idle, how many connections
//! are open at once, how long a handler, a database statement or a proxied body may take,
//! and how long a shutdown waits. Kept apart from the rest of [`super::Config`] because
//! they are read by the serving loop, the store and the gateway together.

use std::time::Duration;

use super::{ConfigError, ConfigLayer, within};

/// Timeouts and limits against slow, idle and numerous connections. Every one is a
/// setting; see `docs/configuration.md`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// How long a client may take to send a request's line and headers, counted from the
    /// first byte of the request. A connection that is slower is closed. Default 5 s.
    pub header_read_timeout: Duration,
    /// How long a connection may stay open with no request in progress and no byte
    /// received: a new connection that sends nothing, or a keep-alive connection between
    /// requests. Default 5 s.
    pub idle_timeout: Duration,
    /// Client connections open at once at most. `None` (default) derives the cap from the
    /// process's soft open-file limit, keeping room for the store, Redis, upstream
    /// connections and files (see [`ConnectionLimits::connection_cap`]).
    pub max_client_connections: Option<usize>,
    /// How long an API handler may take before the request is answered 503 `UNAVAILABLE`.
    /// The gateway's proxied requests have their routes' upstream timeouts instead.
    /// Default 30 s.
    pub request_timeout: Duration,
    /// How long a graceful shutdown waits for in-flight requests before the remaining
    /// connections are dropped. Default 20 s.
    pub shutdown_drain_timeout: Duration,
    /// PostgreSQL `statement_timeout` of every pooled connection; zero turns it off.
    /// Default 15 s.
    pub database_statement_timeout: Duration,
    /// PostgreSQL `lock_timeout` of every pooled connection; zero turns it off. Default 5 s.
    pub database_lock_timeout: Duration,
    /// How long a proxied request or response body may go without a byte before the
    /// exchange is abandoned. Default 30 s.
    pub gateway_body_idle_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(5),
            max_client_connections: None,
            request_timeout: Duration::from_secs(30),
            shutdown_drain_timeout: Duration::from_secs(20),
            database_statement_timeout: Duration::from_secs(15),
            database_lock_timeout: Duration::from_secs(5),
            gateway_body_idle_timeout: Duration::from_secs(30),
        }
    }
}

/// Descriptors kept for everything that is not a client connection, besides the store's
/// pool: the listener, Redis, the revocation listener, key and log files, and some slack.
const RESERVED_DESCRIPTORS: u64 = 64;

/// The cap used when the open-file limit is unknown or unlimited.
const FALLBACK_CAP: usize = 10_000;

impl ConnectionLimits {
    /// The connection cap: the configured one, or, by default, half of what the soft
    /// open-file limit leaves after the store's pool (`database_pool`) and a reserve of
    /// 64, because a proxied request holds a second descriptor to its upstream. At least
    /// 16. `soft_limit` is `None` when the limit is unknown or unlimited.
    pub fn connection_cap(&self, soft_limit: Option<u64>, database_pool: u32) -> usize {
        if let Some(n) = self.max_client_connections {
            return n;
        }
        match soft_limit {
            Some(limit) => {
                let spare = limit.saturating_sub(u64::from(database_pool) + RESERVED_DESCRIPTORS);
                usize::try_from(spare / 2)
                    .unwrap_or(usize::MAX)
                    .clamp(16, 1_000_000)
            }
            None => FALLBACK_CAP,
        }
    }
}

/// One hour, the longest any of these timeouts may be.
const HOUR_MS: u64 = 3_600_000;

impl ConfigLayer {
    /// Validates this group over its defaults.
    pub(super) fn build_connections(&self) -> Result<ConnectionLimits, ConfigError> {
        let mut c = ConnectionLimits::default();
        let ms = |name: &str, v: Option<u64>, lo: u64, default: Duration| {
            v.map_or(Ok(default), |v| {
                within(name, v, lo, HOUR_MS).map(Duration::from_millis)
            })
        };
        // Below 100 ms a client on a slow network could not send a request at all.
        c.header_read_timeout = ms(
            "header_read_timeout_ms",
            self.header_read_timeout_ms,
            100,
            c.header_read_timeout,
        )?;
        c.idle_timeout = ms("idle_timeout_ms", self.idle_timeout_ms, 100, c.idle_timeout)?;
        c.request_timeout = ms(
            "request_timeout_ms",
            self.request_timeout_ms,
            100,
            c.request_timeout,
        )?;
        c.shutdown_drain_timeout = ms(
            "shutdown_drain_timeout_ms",
            self.shutdown_drain_timeout_ms,
            0,
            c.shutdown_drain_timeout,
        )?;
        c.database_statement_timeout = ms(
            "database_statement_timeout_ms",
            self.database_statement_timeout_ms,
            0,
            c.database_statement_timeout,
        )?;
        c.database_lock_timeout = ms(
            "database_lock_timeout_ms",
            self.database_lock_timeout_ms,
            0,
            c.database_lock_timeout,
        )?;
        c.gateway_body_idle_timeout = ms(
            "gateway_body_idle_timeout_ms",
            self.gateway_body_idle_timeout_ms,
            100,
            c.gateway_body_idle_timeout,
        )?;
        if let Some(n) = self.max_client_connections {
            c.max_client_connections =
                Some(within("max_client_connections", n, 1, 1_000_000)? as usize);
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_follows_the_file_limit_with_room_for_the_rest() {
        let limits = ConnectionLimits::default();
        assert_eq!(limits.connection_cap(Some(1024), 16), 472);
        assert_eq!(limits.connection_cap(Some(256), 16), 88);
        assert_eq!(limits.connection_cap(Some(50), 16), 16);
        assert_eq!(limits.connection_cap(None, 16), FALLBACK_CAP);
        let fixed = ConnectionLimits {
            max_client_connections: Some(7),
            ..ConnectionLimits::default()
        };
        assert_eq!(fixed.connection_cap(Some(1024), 16), 7);
    }

    #[test]
    fn settings_come_from_the_environment_and_are_checked() {
        let vars = [
            ("DATASTACK_HEADER_READ_TIMEOUT_MS", "1500"),
            ("DATASTACK_MAX_CLIENT_CONNECTIONS", "300"),
            ("DATASTACK_DATABASE_LOCK_TIMEOUT_MS", "0"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let config = ConfigLayer::from_env(vars)
            .and_then(ConfigLayer::build)
            .expect("valid settings");
        assert_eq!(
            config.connections.header_read_timeout,
            Duration::from_millis(1500)
        );
        assert_eq!(config.connections.max_client_connections, Some(300));
        assert_eq!(config.connections.database_lock_timeout, Duration::ZERO);
        assert_eq!(config.connections.idle_timeout, Duration::from_secs(5));
        let too_short = ConfigLayer {
            idle_timeout_ms: Some(5),
            ..ConfigLayer::default()
        };
        let message = too_short.build().expect_err("refused").to_string();
        assert!(
            message.contains("idle_timeout_ms must be between 100"),
            "{message}"
        );
        let none = ConfigLayer {
            max_client_connections: Some(0),
            ..ConfigLayer::default()
        };
        assert!(none.build().is_err());
        let words =
            [("DATASTACK_IDLE_TIMEOUT_MS", "soon")].map(|(k, v)| (k.to_owned(), v.to_owned()));
        assert!(ConfigLayer::from_env(words).is_err());
    }
}
