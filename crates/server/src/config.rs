//! Configuration: one [`Config`], loaded in layers (defaults < `datastack.toml` <
//! `DATASTACK_*` environment < command-line flags) and validated once at start with
//! messages that say what is wrong and how to fix it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

mod floods;
pub use floods::FloodLimits;
mod connections;
mod webhooks;
pub use connections::ConnectionLimits;
pub use webhooks::WebhookSettings;

/// The server's settings. See `docs/configuration.md` for each one.
#[derive(Debug, Clone)]
pub struct Config {
    /// The address to listen on. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Where the embedded SQLite store lives. Default `./.datastack`.
    pub data_dir: PathBuf,
    /// A PostgreSQL URL; when set, the store is PostgreSQL and `data_dir` is unused.
    pub database_url: Option<String>,
    /// PostgreSQL pool size. Default 16.
    pub database_max_connections: u32,
    /// A Redis URL for cluster-wide rate-limit counters (used by edge enforcement).
    pub redis_url: Option<String>,
    /// The largest request body accepted, in bytes. Default 1 MiB.
    pub max_body_bytes: usize,
    /// How many verified credentials each node keeps in memory. Default 100 000.
    pub cache_capacity: usize,
    /// How many levels of workspaces may exist below the root (the root is at depth 0, its
    /// children at 1). A deeper child is refused. Default 5, at most 32.
    pub workspace_max_depth: u32,
    /// How long a cached credential is trusted before it is read again, as a safety net
    /// behind revocation announcements. Default 60 s.
    pub cache_ttl: Duration,
    /// How often token `lastUsedAt`/`lastUsedIp` are written. Default 5 s.
    pub usage_flush_interval: Duration,
    /// The log filter, e.g. `info` or `datastack=debug,info`. Default `info`.
    pub log: String,
    /// The audit key, 64 hex characters (`DATASTACK_AUDIT_KEY`); overrides the key file.
    pub audit_key: Option<SecretString>,
    /// Where the audit key is kept; created on first start if missing. Default
    /// `<data_dir>/audit.key`.
    pub audit_key_file: Option<PathBuf>,
    /// Whether a response waits for its audit entry to be committed. Default batched.
    pub audit_durability: AuditDurability,
    /// How many audit entries may wait to be written. Default 8192.
    pub audit_queue_capacity: usize,
    /// How long a request waits for room in a full audit queue before it is refused with
    /// 503. Default 2 s.
    pub audit_enqueue_timeout: Duration,
    /// Whether successful `GET`/`HEAD` calls are audited (failures and changes always
    /// are). Default true.
    pub audit_successful_reads: bool,
    /// Whether successful reads that differ only in request id, time and latency are
    /// written as one entry per group commit that lists each request (batched durability
    /// only). Default true.
    pub audit_aggregate_reads: bool,
    /// Whether forward-auth decisions that can be made from memory skip the middleware
    /// stack (the same checks, answered by the serving loop). Default true; `false` sends
    /// every request through the full pipeline.
    pub fast_path: bool,
    /// How often retention purges and automatic revocations run. Default 1 h.
    pub audit_maintenance_interval: Duration,
    /// Where each maintenance pass appends every chain's signed head, outside the
    /// database. Default `<data_dir>/audit-heads.jsonl`.
    pub audit_heads_file: AuditHeadsFile,
    /// Failed authentications from one address, or against one credential, that raise
    /// `auth.failure_burst`. Default 10.
    pub auth_failure_burst_threshold: u32,
    /// The window of that count. Default 60 s.
    pub auth_failure_burst_window: Duration,
    /// A credential used from a network it has not used in this many days raises
    /// `credential.new_network`. Default 30.
    pub new_network_window_days: u32,
    /// How long before an automatic revocation its owner is warned (at most half the
    /// policy's period). Default 168 h.
    pub auto_revoke_notice: Duration,
    /// How long before a personal access token or API key expires its
    /// `token.expiring_soon` / `api_key.expiring_soon` event is raised (once). Zero turns
    /// the notice off. Default 7 days.
    pub expiry_notice: Duration,
    /// The shortest audit retention in force, whatever a workspace asks: a workspace admin
    /// cannot erase history by setting one day. Default 30 days.
    pub audit_min_retention_days: u32,
    /// Proxies whose `X-Forwarded-For` / `Forwarded` headers are believed (CIDRs). Default
    /// none: the socket peer is the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The header the trusted proxies append: `x-forwarded-for` (default) or
    /// `forwarded`. Only that one is read.
    pub client_ip_header: crate::edge::client_ip::ForwardedHeader,
    /// Requests per minute per credential (also its burst); 0 turns the limit off.
    /// Default 6000.
    pub rate_limit_credential_per_minute: u32,
    /// Requests per minute per workspace, all its credentials together. Default 60000.
    pub rate_limit_workspace_per_minute: u32,
    /// Requests per minute per client address without a valid credential (anonymous
    /// calls and failed authentications). Default 600.
    pub rate_limit_ip_per_minute: u32,
    /// In cluster mode, the most requests of a credential's or workspace's shared bucket a
    /// node may be granted at once and admit without asking Redis (also at most a
    /// thousandth of the quota); 1 asks Redis for every request. Default 100.
    pub rate_limit_lease_max: u32,
    /// Refused requests within one minute that flag a client as abusive. Default 50.
    pub abuse_threshold: u32,
    /// The first penalty of a flagged client; each new flag within a day multiplies it
    /// by 4. Default 60 s.
    pub abuse_penalty: Duration,
    /// The longest penalty. Default 24 h.
    pub abuse_penalty_max: Duration,
    /// The prefix of every Redis key this node uses. Default `datastack:`.
    pub redis_key_prefix: String,
    /// Gateway routes from the configuration file (read-only through the API).
    pub gateway_routes: Vec<datastack_core::edge::RouteSpec>,
    /// The largest request body the gateway forwards. Default 10 MiB.
    pub gateway_max_body_bytes: usize,
    /// The Ed25519 seed that signs identity assertions, 64 hex characters
    /// (`DATASTACK_SIGNING_KEY`); overrides the key file.
    pub signing_key: Option<SecretString>,
    /// Where the signing key is kept; created on first start if missing. Default
    /// `<data_dir>/signing.key`.
    pub signing_key_file: Option<PathBuf>,
    /// How long an identity assertion is valid. Default 60 s.
    pub assertion_ttl: Duration,
    /// What an assertion is bound to: `route` (default: credential, principal,
    /// workspace, scopes, route and method; reused for half its lifetime) or `request`
    /// (also the request id and path; signed for every request).
    pub assertion_binding: crate::edge::signer::Binding,
    /// The public base URL of this deployment (the assertions' issuer). Default unset:
    /// the issuer is `datastack`.
    pub public_url: Option<String>,
    /// The share of an API key's spend limit at which `api_key.spend_warning` is sent, in
    /// percent (1–100; 100 turns the warning off). Default 80.
    pub spend_warning_percent: u8,
    /// How long an API key's previous secret keeps working after a rotation when the
    /// request names no `overlapSeconds`. Default 24 h.
    pub api_key_rotation_overlap: Duration,
    /// The longest `overlapSeconds` a rotation may ask for. Default 30 days.
    pub api_key_max_rotation_overlap: Duration,
    /// How long after a refresh token's use the same client may present it again and get
    /// the same successor (a retried or concurrent refresh) instead of its family being
    /// revoked for reuse. Default 10 s; 0 turns it off.
    pub oauth_refresh_grace: Duration,
    /// The least time a device waits between two polls of the token endpoint (RFC 8628
    /// `interval`). Default 5 s.
    pub oauth_device_poll_interval: Duration,
    /// How long a device authorization waits for its user. Default 10 minutes.
    pub oauth_device_code_ttl: Duration,
    /// How often the key that signs OAuth access tokens changes; `None`: never (the
    /// assertion key signs them). Default 30 days.
    pub oauth_signing_key_rotation: Option<Duration>,
    /// How long a new signing key is published before it signs. Default 1 day.
    pub oauth_signing_key_publish_ahead: Duration,
    /// Bounds on what a flood of bad or limited requests costs (see `docs/operations.md`,
    /// "Floods of bad credentials").
    pub floods: FloodLimits,
    /// Timeouts and limits that protect the server from slow, idle and numerous
    /// connections (see `docs/operations.md`, "Hostile traffic").
    pub connections: ConnectionLimits,
    /// Webhook delivery: allowed networks, timeouts, retries, concurrency, retention.
    pub webhooks: WebhookSettings,
}

/// Where the signed chain heads are anchored outside the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditHeadsFile {
    /// `<data_dir>/audit-heads.jsonl`.
    Default,
    /// This file.
    At(PathBuf),
    /// Nowhere (`off`).
    Off,
}

impl AuditHeadsFile {
    /// The file, if heads are anchored, for a node whose data directory is `data_dir`.
    pub fn path(&self, data_dir: &std::path::Path) -> Option<PathBuf> {
        match self {
            AuditHeadsFile::Default => Some(data_dir.join("audit-heads.jsonl")),
            AuditHeadsFile::At(path) => Some(path.clone()),
            AuditHeadsFile::Off => None,
        }
    }
}

/// Whether a response waits for its audit entry to be durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditDurability {
    /// Entries of reads and refusals are written in group commits right after the
    /// response: a crash can lose the last moments' entries (see `docs/audit.md`).
    Batched,
    /// Every response waits for its entry's group commit.
    Sync,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./.datastack"),
            database_url: None,
            database_max_connections: 16,
            redis_url: None,
            max_body_bytes: 1024 * 1024,
            cache_capacity: 100_000,
            workspace_max_depth: 5,
            cache_ttl: Duration::from_secs(60),
            usage_flush_interval: Duration::from_secs(5),
            log: "info".to_owned(),
            audit_key: None,
            audit_key_file: None,
            audit_durability: AuditDurability::Batched,
            audit_queue_capacity: 8192,
            audit_enqueue_timeout: Duration::from_secs(2),
            audit_successful_reads: true,
            audit_aggregate_reads: true,
            fast_path: true,
            audit_maintenance_interval: Duration::from_secs(3600),
            audit_heads_file: AuditHeadsFile::Default,
            auth_failure_burst_threshold: 10,
            auth_failure_burst_window: Duration::from_secs(60),
            new_network_window_days: 30,
            auto_revoke_notice: Duration::from_secs(7 * 24 * 3600),
            expiry_notice: Duration::from_secs(7 * 24 * 3600),
            audit_min_retention_days: 30,
            trusted_proxies: Vec::new(),
            client_ip_header: crate::edge::client_ip::ForwardedHeader::XForwardedFor,
            rate_limit_credential_per_minute: 6000,
            rate_limit_workspace_per_minute: 60_000,
            rate_limit_ip_per_minute: 600,
            rate_limit_lease_max: 100,
            abuse_threshold: 50,
            abuse_penalty: Duration::from_secs(60),
            abuse_penalty_max: Duration::from_secs(24 * 3600),
            redis_key_prefix: "datastack:".to_owned(),
            gateway_routes: Vec::new(),
            gateway_max_body_bytes: 10 * 1024 * 1024,
            signing_key: None,
            signing_key_file: None,
            assertion_ttl: Duration::from_secs(60),
            assertion_binding: crate::edge::signer::Binding::Route,
            public_url: None,
            spend_warning_percent: 80,
            api_key_rotation_overlap: Duration::from_secs(24 * 3600),
            api_key_max_rotation_overlap: Duration::from_secs(30 * 24 * 3600),
            oauth_refresh_grace: Duration::from_secs(10),
            oauth_device_poll_interval: Duration::from_secs(5),
            oauth_device_code_ttl: Duration::from_secs(600),
            oauth_signing_key_rotation: Some(Duration::from_secs(30 * 86_400)),
            oauth_signing_key_publish_ahead: Duration::from_secs(86_400),
            floods: FloodLimits::default(),
            connections: ConnectionLimits::default(),
            webhooks: WebhookSettings::default(),
        }
    }
}

/// Declares [`ConfigLayer`], one line per setting: its name (the TOML key), its type, and
/// the `DATASTACK_*` variable it is read from with how that variable's text is read (`-`:
/// the file only). The layer struct, the environment reader and the merge come from this
/// one table; validation is in [`ConfigLayer::build`].
macro_rules! config_layer {
    ($( $(#[$doc:meta])* $name:ident: $ty:ty = $env:tt $kind:ident; )*) => {
        /// One layer of settings: every field optional. The TOML file, the environment and
        /// the flags each produce one; later layers win.
        #[derive(Debug, Clone, Default, Deserialize)]
        #[serde(deny_unknown_fields, rename_all = "snake_case")]
        pub struct ConfigLayer {
            $( $(#[$doc])* pub $name: Option<$ty>, )*
        }

        impl ConfigLayer {
            /// Sets the setting whose variable is `DATASTACK_<name>` from `value`; other
            /// names (the client commands' and the tests' variables) are not settings.
            fn set_from_env(&mut self, key: &str, name: &str, value: String) -> Result<(), ConfigError> {
                $( config_layer!(@env self, key, name, value, $name, $env, $kind); )*
                Ok(())
            }

            /// Lays `other` over `self`: its set fields win.
            pub fn merge(mut self, other: ConfigLayer) -> Self {
                $( if other.$name.is_some() { self.$name = other.$name; } )*
                self
            }
        }
    };
    (@env $s:ident, $key:ident, $n:ident, $v:ident, $name:ident, -, $kind:ident) => {};
    (@env $s:ident, $key:ident, $n:ident, $v:ident, $name:ident, $env:literal, $kind:ident) => {
        if $n == $env {
            $s.$name = Some(env_value!($kind, $key, $v)?);
            return Ok(());
        }
    };
}

/// Reads a `DATASTACK_*` value (`key` names the variable in errors).
macro_rules! env_value {
    (text, $key:ident, $v:ident) => {
        Ok::<String, ConfigError>($v)
    };
    (path, $key:ident, $v:ident) => {
        Ok::<PathBuf, ConfigError>(PathBuf::from($v))
    };
    (secret, $key:ident, $v:ident) => {
        Ok::<SecretString, ConfigError>(SecretString::from($v))
    };
    (number, $key:ident, $v:ident) => {
        env_number($key, &$v)
    };
    (small_number, $key:ident, $v:ident) => {
        u32::try_from(env_number($key, &$v)?)
            .map_err(|_| ConfigError(format!("{} is too large", $key)))
    };
    (boolean, $key:ident, $v:ident) => {
        match $v.trim() {
            "true" | "1" => Ok(true),
            "false" | "0" => Ok(false),
            _ => Err(ConfigError(format!(
                "{}={:?} is not true or false",
                $key, $v
            ))),
        }
    };
    (list, $key:ident, $v:ident) => {
        Ok::<Vec<String>, ConfigError>(
            $v.split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
        )
    };
}

/// A whole number from a `DATASTACK_*` value.
fn env_number(key: &str, v: &str) -> Result<u64, ConfigError> {
    v.trim()
        .parse::<u64>()
        .map_err(|_| ConfigError(format!("{key}={v:?} is not a whole number")))
}

config_layer! {
    /// `listen`.
    listen: String = "LISTEN" text;
    /// `data_dir`.
    data_dir: PathBuf = "DATA_DIR" path;
    /// `database_url`.
    database_url: String = "DATABASE_URL" text;
    /// `database_max_connections`.
    database_max_connections: u32 = "DATABASE_MAX_CONNECTIONS" small_number;
    /// `redis_url`.
    redis_url: String = "REDIS_URL" text;
    /// `max_body_bytes`.
    max_body_bytes: u64 = "MAX_BODY_BYTES" number;
    /// `cache_capacity`.
    cache_capacity: u64 = "CACHE_CAPACITY" number;
    /// `workspace_max_depth`.
    workspace_max_depth: u64 = "WORKSPACE_MAX_DEPTH" number;
    /// `cache_ttl_seconds`.
    cache_ttl_seconds: u64 = "CACHE_TTL_SECONDS" number;
    /// `usage_flush_interval_ms`.
    usage_flush_interval_ms: u64 = "USAGE_FLUSH_INTERVAL_MS" number;
    /// `log`.
    log: String = "LOG" text;
    /// `audit_key` (kept secret: never printed by `Debug`).
    audit_key: SecretString = "AUDIT_KEY" secret;
    /// `audit_key_file`.
    audit_key_file: PathBuf = "AUDIT_KEY_FILE" path;
    /// `audit_durability`: `batched` or `sync`.
    audit_durability: String = "AUDIT_DURABILITY" text;
    /// `audit_queue_capacity`.
    audit_queue_capacity: u64 = "AUDIT_QUEUE_CAPACITY" number;
    /// `audit_enqueue_timeout_ms`.
    audit_enqueue_timeout_ms: u64 = "AUDIT_ENQUEUE_TIMEOUT_MS" number;
    /// `audit_successful_reads`.
    audit_successful_reads: bool = "AUDIT_SUCCESSFUL_READS" boolean;
    /// `audit_aggregate_reads`.
    audit_aggregate_reads: bool = "AUDIT_AGGREGATE_READS" boolean;
    /// `fast_path`.
    fast_path: bool = "FAST_PATH" boolean;
    /// `audit_maintenance_interval_seconds`.
    audit_maintenance_interval_seconds: u64 = "AUDIT_MAINTENANCE_INTERVAL_SECONDS" number;
    /// `audit_heads_file`: a path, or `off`.
    audit_heads_file: String = "AUDIT_HEADS_FILE" text;
    /// `auth_failure_burst_threshold`.
    auth_failure_burst_threshold: u64 = "AUTH_FAILURE_BURST_THRESHOLD" number;
    /// `auth_failure_burst_window_seconds`.
    auth_failure_burst_window_seconds: u64 = "AUTH_FAILURE_BURST_WINDOW_SECONDS" number;
    /// `new_network_window_days`.
    new_network_window_days: u64 = "NEW_NETWORK_WINDOW_DAYS" number;
    /// `auto_revoke_notice_hours`.
    auto_revoke_notice_hours: u64 = "AUTO_REVOKE_NOTICE_HOURS" number;
    /// `expiry_notice_hours`.
    expiry_notice_hours: u64 = "EXPIRY_NOTICE_HOURS" number;
    /// `audit_min_retention_days`.
    audit_min_retention_days: u64 = "AUDIT_MIN_RETENTION_DAYS" number;
    /// `trusted_proxies`.
    trusted_proxies: Vec<String> = "TRUSTED_PROXIES" list;
    /// `client_ip_header`.
    client_ip_header: String = "CLIENT_IP_HEADER" text;
    /// `rate_limit_credential_per_minute`.
    rate_limit_credential_per_minute: u64 = "RATE_LIMIT_CREDENTIAL_PER_MINUTE" number;
    /// `rate_limit_workspace_per_minute`.
    rate_limit_workspace_per_minute: u64 = "RATE_LIMIT_WORKSPACE_PER_MINUTE" number;
    /// `rate_limit_ip_per_minute`.
    rate_limit_ip_per_minute: u64 = "RATE_LIMIT_IP_PER_MINUTE" number;
    /// `rate_limit_lease_max`.
    rate_limit_lease_max: u64 = "RATE_LIMIT_LEASE_MAX" number;
    /// `abuse_threshold`.
    abuse_threshold: u64 = "ABUSE_THRESHOLD" number;
    /// `abuse_penalty_seconds`.
    abuse_penalty_seconds: u64 = "ABUSE_PENALTY_SECONDS" number;
    /// `abuse_penalty_max_seconds`.
    abuse_penalty_max_seconds: u64 = "ABUSE_PENALTY_MAX_SECONDS" number;
    /// `redis_key_prefix`.
    redis_key_prefix: String = "REDIS_KEY_PREFIX" text;
    /// `[[gateway_routes]]` tables (camelCase keys, as in the API).
    gateway_routes: Vec<datastack_core::edge::RouteSpec> = - none;
    /// `gateway_max_body_bytes`.
    gateway_max_body_bytes: u64 = "GATEWAY_MAX_BODY_BYTES" number;
    /// `signing_key` (kept secret).
    signing_key: SecretString = "SIGNING_KEY" secret;
    /// `signing_key_file`.
    signing_key_file: PathBuf = "SIGNING_KEY_FILE" path;
    /// `assertion_ttl_seconds`.
    assertion_ttl_seconds: u64 = "ASSERTION_TTL_SECONDS" number;
    /// `assertion_binding`: `route` or `request`.
    assertion_binding: String = "ASSERTION_BINDING" text;
    /// `public_url`.
    public_url: String = "PUBLIC_URL" text;
    /// `spend_warning_percent`.
    spend_warning_percent: u64 = "SPEND_WARNING_PERCENT" number;
    /// `api_key_rotation_overlap_seconds`.
    api_key_rotation_overlap_seconds: u64 = "API_KEY_ROTATION_OVERLAP_SECONDS" number;
    /// `api_key_max_rotation_overlap_seconds`.
    api_key_max_rotation_overlap_seconds: u64 = "API_KEY_MAX_ROTATION_OVERLAP_SECONDS" number;
    /// `oauth_refresh_grace_seconds`.
    oauth_refresh_grace_seconds: u64 = "OAUTH_REFRESH_GRACE_SECONDS" number;
    /// `oauth_device_poll_interval_seconds`.
    oauth_device_poll_interval_seconds: u64 = "OAUTH_DEVICE_POLL_INTERVAL_SECONDS" number;
    /// `oauth_device_code_ttl_seconds`.
    oauth_device_code_ttl_seconds: u64 = "OAUTH_DEVICE_CODE_TTL_SECONDS" number;
    /// `oauth_signing_key_rotation_seconds`: 0 turns rotation off.
    oauth_signing_key_rotation_seconds: u64 = "OAUTH_SIGNING_KEY_ROTATION_SECONDS" number;
    /// `oauth_signing_key_publish_ahead_seconds`.
    oauth_signing_key_publish_ahead_seconds: u64 = "OAUTH_SIGNING_KEY_PUBLISH_AHEAD_SECONDS" number;
    /// `credential_negative_cache_ttl_ms`.
    credential_negative_cache_ttl_ms: u64 = "CREDENTIAL_NEGATIVE_CACHE_TTL_MS" number;
    /// `max_tracked_clients`.
    max_tracked_clients: u64 = "MAX_TRACKED_CLIENTS" number;
    /// `audit_growth_alert_per_minute`.
    audit_growth_alert_per_minute: u64 = "AUDIT_GROWTH_ALERT_PER_MINUTE" number;
    /// `audit_refusal_groups`.
    audit_refusal_groups: u64 = "AUDIT_REFUSAL_GROUPS" number;
    /// `header_read_timeout_ms`.
    header_read_timeout_ms: u64 = "HEADER_READ_TIMEOUT_MS" number;
    /// `idle_timeout_ms`.
    idle_timeout_ms: u64 = "IDLE_TIMEOUT_MS" number;
    /// `max_client_connections`.
    max_client_connections: u64 = "MAX_CLIENT_CONNECTIONS" number;
    /// `request_timeout_ms`.
    request_timeout_ms: u64 = "REQUEST_TIMEOUT_MS" number;
    /// `shutdown_drain_timeout_ms`.
    shutdown_drain_timeout_ms: u64 = "SHUTDOWN_DRAIN_TIMEOUT_MS" number;
    /// `database_statement_timeout_ms`.
    database_statement_timeout_ms: u64 = "DATABASE_STATEMENT_TIMEOUT_MS" number;
    /// `database_lock_timeout_ms`.
    database_lock_timeout_ms: u64 = "DATABASE_LOCK_TIMEOUT_MS" number;
    /// `gateway_body_idle_timeout_ms`.
    gateway_body_idle_timeout_ms: u64 = "GATEWAY_BODY_IDLE_TIMEOUT_MS" number;
    /// `webhook_allow_networks`.
    webhook_allow_networks: Vec<String> = "WEBHOOK_ALLOW_NETWORKS" list;
    /// `webhook_timeout_ms`.
    webhook_timeout_ms: u64 = "WEBHOOK_TIMEOUT_MS" number;
    /// `webhook_retry_window_hours`.
    webhook_retry_window_hours: u64 = "WEBHOOK_RETRY_WINDOW_HOURS" number;
    /// `webhook_disable_after_hours`.
    webhook_disable_after_hours: u64 = "WEBHOOK_DISABLE_AFTER_HOURS" number;
    /// `webhook_concurrency`.
    webhook_concurrency: u64 = "WEBHOOK_CONCURRENCY" number;
    /// `webhook_endpoint_concurrency`.
    webhook_endpoint_concurrency: u64 = "WEBHOOK_ENDPOINT_CONCURRENCY" number;
    /// `webhook_retention_days`.
    webhook_retention_days: u64 = "WEBHOOK_RETENTION_DAYS" number;
}

/// A configuration problem, with where it came from and how to fix it.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(String);

impl ConfigLayer {
    /// Reads `datastack.toml` (or `path`), if it exists. A path given explicitly must exist.
    pub fn from_file(path: Option<&Path>) -> Result<Self, ConfigError> {
        let (path, required) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from("datastack.toml"), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Self::default());
            }
            Err(e) => {
                return Err(ConfigError(format!("cannot read {}: {e}", path.display())));
            }
        };
        toml::from_str(&text).map_err(|e| {
            ConfigError(format!(
                "{} is not valid: {e}; see docs/configuration.md for the keys",
                path.display()
            ))
        })
    }

    /// Reads the `DATASTACK_*` variables from `vars`.
    pub fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let mut layer = Self::default();
        for (key, value) in vars {
            if let Some(name) = key.strip_prefix("DATASTACK_") {
                layer.set_from_env(&key, name, value)?;
            }
        }
        Ok(layer)
    }

    /// Validates the merged layers over the defaults.
    pub fn build(self) -> Result<Config, ConfigError> {
        let mut c = Config::default();
        self.build_audit(&mut c)?;
        self.build_edge(&mut c)?;
        c.floods = self.build_floods()?;
        c.connections = self.build_connections()?;
        c.webhooks = self.build_webhooks()?;
        if let Some(listen) = self.listen {
            c.listen = listen.trim().parse().map_err(|_| {
                ConfigError(format!(
                    "listen = {listen:?} is not an address; use IP:PORT such as 127.0.0.1:8080 (port 0 picks a free one)"
                ))
            })?;
        }
        if let Some(dir) = self.data_dir {
            if dir.as_os_str().is_empty() {
                return Err(ConfigError(
                    "data_dir is empty; give a directory such as ./.datastack".into(),
                ));
            }
            c.data_dir = dir;
        }
        if let Some(url) = self.database_url.filter(|u| !u.trim().is_empty()) {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(ConfigError(
                    "database_url must be a PostgreSQL URL (postgres://user@host:5432/db); leave it unset for the embedded SQLite store".into(),
                ));
            }
            c.database_url = Some(url);
        }
        if let Some(n) = self.database_max_connections {
            if !(1..=1000).contains(&n) {
                return Err(ConfigError(
                    "database_max_connections must be between 1 and 1000".into(),
                ));
            }
            c.database_max_connections = n;
        }
        if let Some(url) = self.redis_url.filter(|u| !u.trim().is_empty()) {
            if url.starts_with("rediss://") {
                return Err(ConfigError(
                    "redis_url: TLS to Redis (rediss://) is not supported yet; reach Redis over a private network or a local TLS tunnel and use redis://".into(),
                ));
            }
            if !url.starts_with("redis://") {
                return Err(ConfigError("redis_url must start with redis://".into()));
            }
            c.redis_url = Some(url);
        }
        if let Some(n) = self.max_body_bytes {
            if !(1024..=64 * 1024 * 1024).contains(&n) {
                return Err(ConfigError(
                    "max_body_bytes must be between 1024 and 67108864 (64 MiB)".into(),
                ));
            }
            c.max_body_bytes = usize::try_from(n)
                .map_err(|_| ConfigError("max_body_bytes is too large".into()))?;
        }
        if let Some(n) = self.cache_capacity {
            if !(1..=10_000_000).contains(&n) {
                return Err(ConfigError(
                    "cache_capacity must be between 1 and 10000000".into(),
                ));
            }
            c.cache_capacity = usize::try_from(n)
                .map_err(|_| ConfigError("cache_capacity is too large".into()))?;
        }
        if let Some(n) = self.workspace_max_depth {
            // Recursive walks of the tree stop at 64 links; 32 keeps every chain well inside.
            if !(1..=32).contains(&n) {
                return Err(ConfigError(
                    "workspace_max_depth must be between 1 and 32 (the root workspace is at depth 0, its children at 1)".into(),
                ));
            }
            c.workspace_max_depth = n as u32;
        }
        if let Some(s) = self.cache_ttl_seconds {
            if !(1..=3600).contains(&s) {
                return Err(ConfigError(
                    "cache_ttl_seconds must be between 1 and 3600".into(),
                ));
            }
            c.cache_ttl = Duration::from_secs(s);
        }
        if let Some(ms) = self.usage_flush_interval_ms {
            if !(10..=600_000).contains(&ms) {
                return Err(ConfigError(
                    "usage_flush_interval_ms must be between 10 and 600000".into(),
                ));
            }
            c.usage_flush_interval = Duration::from_millis(ms);
        }
        if let Some(log) = self.log {
            log.parse::<tracing_filter::Targets>().map_err(|e| {
                ConfigError(format!(
                    "log = {log:?} is not a log filter ({e}); use e.g. info or datastack=debug,info"
                ))
            })?;
            c.log = log;
        }
        Ok(c)
    }

    fn build_edge(&self, c: &mut Config) -> Result<(), ConfigError> {
        if let Some(list) = &self.trusted_proxies {
            c.trusted_proxies = list
                .iter()
                .map(|s| {
                    let s = s.trim();
                    s.parse::<ipnet::IpNet>()
                        .map(|n| n.trunc())
                        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                        .map_err(|_| {
                            ConfigError(format!(
                                "trusted_proxies: {s:?} is not an address or CIDR range (e.g. 10.0.0.0/8)"
                            ))
                        })
                })
                .collect::<Result<_, _>>()?;
        }
        if let Some(h) = &self.client_ip_header {
            c.client_ip_header = match h.trim().to_ascii_lowercase().as_str() {
                "x-forwarded-for" => crate::edge::client_ip::ForwardedHeader::XForwardedFor,
                "forwarded" => crate::edge::client_ip::ForwardedHeader::Forwarded,
                _ => {
                    return Err(ConfigError(
                        "client_ip_header must be x-forwarded-for or forwarded".into(),
                    ));
                }
            };
        }
        let per_minute = |name: &str, v: Option<u64>, default: u32| -> Result<u32, ConfigError> {
            match v {
                None => Ok(default),
                Some(n) => Ok(within(name, n, 0, 100_000_000)? as u32),
            }
        };
        c.rate_limit_credential_per_minute = per_minute(
            "rate_limit_credential_per_minute",
            self.rate_limit_credential_per_minute,
            c.rate_limit_credential_per_minute,
        )?;
        c.rate_limit_workspace_per_minute = per_minute(
            "rate_limit_workspace_per_minute",
            self.rate_limit_workspace_per_minute,
            c.rate_limit_workspace_per_minute,
        )?;
        c.rate_limit_ip_per_minute = per_minute(
            "rate_limit_ip_per_minute",
            self.rate_limit_ip_per_minute,
            c.rate_limit_ip_per_minute,
        )?;
        if let Some(n) = self.rate_limit_lease_max {
            c.rate_limit_lease_max = within("rate_limit_lease_max", n, 1, 10_000)? as u32;
        }
        if let Some(n) = self.abuse_threshold {
            c.abuse_threshold = within("abuse_threshold", n, 1, 1_000_000)? as u32;
        }
        if let Some(s) = self.abuse_penalty_seconds {
            c.abuse_penalty =
                Duration::from_secs(within("abuse_penalty_seconds", s, 1, 7 * 24 * 3600)?);
        }
        if let Some(s) = self.abuse_penalty_max_seconds {
            c.abuse_penalty_max =
                Duration::from_secs(within("abuse_penalty_max_seconds", s, 1, 30 * 24 * 3600)?);
        }
        if c.abuse_penalty_max < c.abuse_penalty {
            return Err(ConfigError(
                "abuse_penalty_max_seconds must be at least abuse_penalty_seconds".into(),
            ));
        }
        if let Some(p) = &self.redis_key_prefix {
            if p.len() > 64 || p.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
                return Err(ConfigError(
                    "redis_key_prefix must be at most 64 characters without spaces".into(),
                ));
            }
            c.redis_key_prefix = p.clone();
        }
        if let Some(routes) = &self.gateway_routes {
            let mut seen = std::collections::HashSet::new();
            let mut valid = Vec::with_capacity(routes.len());
            for (i, r) in routes.iter().enumerate() {
                let r = r
                    .clone()
                    .validate()
                    .map_err(|e| ConfigError(format!("gateway_routes[{i}].{e}")))?;
                if !seen.insert(r.path_prefix.clone()) {
                    return Err(ConfigError(format!(
                        "gateway_routes[{i}]: pathPrefix {} appears twice",
                        r.path_prefix
                    )));
                }
                valid.push(r);
            }
            c.gateway_routes = valid;
        }
        if let Some(n) = self.gateway_max_body_bytes {
            c.gateway_max_body_bytes =
                within("gateway_max_body_bytes", n, 1024, 4 * 1024 * 1024 * 1024)? as usize;
        }
        if let Some(key) = self
            .signing_key
            .clone()
            .filter(|k| !k.expose_secret().trim().is_empty())
        {
            if parse_seed(key.expose_secret()).is_none() {
                return Err(ConfigError(
                    "signing_key must be 64 hexadecimal characters; generate one with `openssl rand -hex 32`"
                        .into(),
                ));
            }
            c.signing_key = Some(key);
        }
        if let Some(path) = &self.signing_key_file {
            c.signing_key_file = Some(path.clone());
        }
        if let Some(p) = self.spend_warning_percent {
            c.spend_warning_percent = within("spend_warning_percent", p, 1, 100)? as u8;
        }
        if let Some(s) = self.api_key_max_rotation_overlap_seconds {
            c.api_key_max_rotation_overlap = Duration::from_secs(within(
                "api_key_max_rotation_overlap_seconds",
                s,
                0,
                365 * 24 * 3600,
            )?);
        }
        if let Some(s) = self.api_key_rotation_overlap_seconds {
            c.api_key_rotation_overlap = Duration::from_secs(within(
                "api_key_rotation_overlap_seconds",
                s,
                0,
                365 * 24 * 3600,
            )?);
        }
        if c.api_key_rotation_overlap > c.api_key_max_rotation_overlap {
            return Err(ConfigError(
                "api_key_rotation_overlap_seconds must not exceed api_key_max_rotation_overlap_seconds".into(),
            ));
        }
        if let Some(s) = self.oauth_refresh_grace_seconds {
            c.oauth_refresh_grace =
                Duration::from_secs(within("oauth_refresh_grace_seconds", s, 0, 300)?);
        }
        if let Some(s) = self.oauth_device_poll_interval_seconds {
            c.oauth_device_poll_interval =
                Duration::from_secs(within("oauth_device_poll_interval_seconds", s, 1, 60)?);
        }
        if let Some(s) = self.oauth_device_code_ttl_seconds {
            c.oauth_device_code_ttl =
                Duration::from_secs(within("oauth_device_code_ttl_seconds", s, 60, 3600)?);
        }
        if let Some(s) = self.oauth_signing_key_rotation_seconds {
            c.oauth_signing_key_rotation = match s {
                0 => None,
                s => Some(Duration::from_secs(within(
                    "oauth_signing_key_rotation_seconds",
                    s,
                    3600,
                    365 * 86_400,
                )?)),
            };
        }
        if let Some(s) = self.oauth_signing_key_publish_ahead_seconds {
            c.oauth_signing_key_publish_ahead = Duration::from_secs(within(
                "oauth_signing_key_publish_ahead_seconds",
                s,
                60,
                30 * 86_400,
            )?);
        }
        if c.oauth_signing_key_rotation
            .is_some_and(|r| c.oauth_signing_key_publish_ahead >= r)
        {
            return Err(ConfigError(
                "oauth_signing_key_publish_ahead_seconds must be shorter than oauth_signing_key_rotation_seconds".into(),
            ));
        }
        if let Some(s) = self.assertion_ttl_seconds {
            c.assertion_ttl = Duration::from_secs(within("assertion_ttl_seconds", s, 5, 3600)?);
        }
        if let Some(b) = &self.assertion_binding {
            c.assertion_binding = match b.trim() {
                "route" => crate::edge::signer::Binding::Route,
                "request" => crate::edge::signer::Binding::Request,
                _ => {
                    return Err(ConfigError(
                        "assertion_binding must be route or request".into(),
                    ));
                }
            };
        }
        if let Some(url) = self.public_url.as_ref().filter(|u| !u.trim().is_empty()) {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(ConfigError("public_url must be an http(s):// URL".into()));
            }
            c.public_url = Some(url.trim_end_matches('/').to_owned());
        }
        Ok(())
    }

    fn build_audit(&self, c: &mut Config) -> Result<(), ConfigError> {
        if let Some(key) = self
            .audit_key
            .clone()
            .filter(|k| !k.expose_secret().trim().is_empty())
        {
            // Checked here so a bad key stops the start; the message never repeats it.
            datastack_core::audit::AuditKey::from_hex(key.expose_secret()).map_err(|_| {
                ConfigError(
                    "audit_key must be 64 hexadecimal characters; generate one with `openssl rand -hex 32`"
                        .into(),
                )
            })?;
            c.audit_key = Some(key);
        }
        if let Some(path) = &self.audit_key_file {
            c.audit_key_file = Some(path.clone());
        }
        if let Some(value) = &self.audit_heads_file {
            c.audit_heads_file = match value.trim() {
                "" => {
                    return Err(ConfigError(
                        "audit_heads_file must be a path, or off to write no heads file".into(),
                    ));
                }
                "off" => AuditHeadsFile::Off,
                path => AuditHeadsFile::At(PathBuf::from(path)),
            };
        }
        if let Some(d) = &self.audit_durability {
            c.audit_durability = match d.trim() {
                "batched" => AuditDurability::Batched,
                "sync" => AuditDurability::Sync,
                _ => {
                    return Err(ConfigError(
                        "audit_durability must be batched or sync".into(),
                    ));
                }
            };
        }
        if let Some(n) = self.audit_queue_capacity {
            c.audit_queue_capacity = within("audit_queue_capacity", n, 16, 1_000_000)? as usize;
        }
        if let Some(ms) = self.audit_enqueue_timeout_ms {
            c.audit_enqueue_timeout =
                Duration::from_millis(within("audit_enqueue_timeout_ms", ms, 1, 60_000)?);
        }
        if let Some(b) = self.audit_successful_reads {
            c.audit_successful_reads = b;
        }
        if let Some(b) = self.audit_aggregate_reads {
            c.audit_aggregate_reads = b;
        }
        if let Some(b) = self.fast_path {
            c.fast_path = b;
        }
        if let Some(s) = self.audit_maintenance_interval_seconds {
            c.audit_maintenance_interval = Duration::from_secs(within(
                "audit_maintenance_interval_seconds",
                s,
                1,
                7 * 24 * 3600,
            )?);
        }
        if let Some(n) = self.auth_failure_burst_threshold {
            c.auth_failure_burst_threshold =
                within("auth_failure_burst_threshold", n, 2, 1_000_000)? as u32;
        }
        if let Some(s) = self.auth_failure_burst_window_seconds {
            c.auth_failure_burst_window = Duration::from_secs(within(
                "auth_failure_burst_window_seconds",
                s,
                1,
                24 * 3600,
            )?);
        }
        if let Some(d) = self.new_network_window_days {
            c.new_network_window_days = within("new_network_window_days", d, 1, 3650)? as u32;
        }
        if let Some(d) = self.audit_min_retention_days {
            c.audit_min_retention_days = within("audit_min_retention_days", d, 1, 36_500)? as u32;
        }
        if let Some(h) = self.expiry_notice_hours {
            c.expiry_notice =
                Duration::from_secs(within("expiry_notice_hours", h, 0, 24 * 365)? * 3600);
        }
        if let Some(h) = self.auto_revoke_notice_hours {
            c.auto_revoke_notice =
                Duration::from_secs(within("auto_revoke_notice_hours", h, 0, 24 * 365)? * 3600);
        }
        Ok(())
    }
}

/// `v` when it lies in `lo..=hi`, else an error naming the setting and the range.
fn within(name: &str, v: u64, lo: u64, hi: u64) -> Result<u64, ConfigError> {
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(ConfigError(format!("{name} must be between {lo} and {hi}")))
    }
}

/// A 32-byte key from 64 hex characters.
pub fn parse_seed(hex_text: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(hex_text.trim()).ok()?;
    bytes.try_into().ok()
}

/// The log filter type, re-exported so the binary and this validation agree.
pub mod tracing_filter {
    pub use tracing_subscriber::filter::Targets;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// Every key the file accepts, as serde lists them for an unknown one.
    fn file_keys() -> Vec<String> {
        let err = toml::from_str::<ConfigLayer>("no_such_setting = 1")
            .expect_err("an unknown key is refused")
            .to_string();
        let expected = err.split("expected one of").nth(1).expect("the keys");
        expected
            .split(',')
            .map(|k| k.trim().trim_matches(|c| c == '`' || c == '\n').to_owned())
            .filter(|k| !k.is_empty())
            .collect()
    }

    #[test]
    fn layers_apply_in_order_file_then_environment_then_flags() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("datastack.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:1111\"\nlog = \"warn\"\nrate_limit_ip_per_minute = 5\nabuse_threshold = 9\n",
        )
        .expect("write");
        let file = ConfigLayer::from_file(Some(&path)).expect("the file parses");
        let environment = ConfigLayer::from_env(env(&[
            ("DATASTACK_LISTEN", "127.0.0.1:2222"),
            ("DATASTACK_RATE_LIMIT_IP_PER_MINUTE", "7"),
            // The client commands' and the tests' variables are not settings.
            ("DATASTACK_TOKEN", "dapi_not_a_setting"),
            ("DATASTACK_TEST_DATABASE_URL", "postgres://x"),
            ("HOME", "/root"),
        ]))
        .expect("the environment parses");
        let flags = ConfigLayer {
            listen: Some("127.0.0.1:3333".into()),
            ..ConfigLayer::default()
        };
        let c = file.merge(environment).merge(flags).build().expect("valid");
        assert_eq!(c.listen.to_string(), "127.0.0.1:3333", "flags win");
        assert_eq!(
            c.rate_limit_ip_per_minute, 7,
            "the environment beats the file"
        );
        assert_eq!(c.log, "warn", "the file beats the defaults");
        assert_eq!(c.abuse_threshold, 9);
        assert_eq!(
            c.rate_limit_credential_per_minute, 6000,
            "the default stays"
        );
    }

    #[test]
    fn errors_name_the_setting_and_where_it_came_from() {
        let err = |pairs: &[(&str, &str)]| {
            ConfigLayer::from_env(env(pairs))
                .expect_err("refused")
                .to_string()
        };
        assert_eq!(
            err(&[("DATASTACK_MAX_BODY_BYTES", "lots")]),
            "configuration error: DATASTACK_MAX_BODY_BYTES=\"lots\" is not a whole number"
        );
        assert_eq!(
            err(&[("DATASTACK_FAST_PATH", "maybe")]),
            "configuration error: DATASTACK_FAST_PATH=\"maybe\" is not true or false"
        );
        assert_eq!(
            err(&[("DATASTACK_DATABASE_MAX_CONNECTIONS", "99999999999")]),
            "configuration error: DATASTACK_DATABASE_MAX_CONNECTIONS is too large"
        );
        // A value out of range names the setting, whichever layer set it.
        let out_of_range = ConfigLayer::from_env(env(&[("DATASTACK_RATE_LIMIT_LEASE_MAX", "0")]))
            .expect("a number")
            .build()
            .expect_err("out of range")
            .to_string();
        assert!(
            out_of_range.contains("rate_limit_lease_max"),
            "{out_of_range}"
        );
        // The file: its path and the key.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "rate_limit_ip_per_minute = \"many\"\n").expect("write");
        let file = ConfigLayer::from_file(Some(&path))
            .expect_err("refused")
            .to_string();
        assert!(
            file.contains("bad.toml") && file.contains("rate_limit_ip_per_minute"),
            "{file}"
        );
        assert!(ConfigLayer::from_file(Some(&dir.path().join("missing.toml"))).is_err());
    }

    /// Each key the file accepts is documented with its variable, and that variable sets
    /// it (the one table cannot leave a setting without its variable).
    #[test]
    fn every_setting_is_documented_and_read_from_its_variable() {
        let docs = include_str!("../../../docs/configuration.md");
        let keys = file_keys();
        assert!(keys.len() > 50, "{keys:?}");
        for key in keys {
            let variable = format!("DATASTACK_{}", key.to_ascii_uppercase());
            if key == "gateway_routes" {
                assert!(
                    docs.contains("| `gateway_routes` | none (TOML only)"),
                    "{key}"
                );
                continue;
            }
            assert!(
                docs.contains(&format!("| `{key}` | `{variable}` |")),
                "docs/configuration.md lacks the row of {key}"
            );
            // "1" reads as every kind of value: text, path, number, boolean, list.
            let layer = ConfigLayer::from_env(env(&[(&variable, "1")])).expect("parses");
            assert!(
                format!("{layer:?}").contains(&format!("{key}: Some(")),
                "{variable} does not set {key}"
            );
        }
    }
}
