//! Persistence for datastack on SQLite (embedded) or PostgreSQL (cluster).
//!
//! One [`Store`] type serves both engines: every query is written once, in SQL both
//! understand (`$N` placeholders, `ON CONFLICT`), and run against whichever pool the store
//! was opened with. Migrations for both live side by side in `migrations/` and run at start.
//! This crate never speaks HTTP and holds no request-level policy beyond the integrity
//! rules a transaction must enforce (such as "a workspace keeps an active admin").
#![forbid(unsafe_code)]

mod api_keys;
mod audit;
mod audit_heads;
mod edge;
mod invalidation;
mod issuers;
mod oauth;
mod oauth_flows;
mod principals;
mod rows;
mod signing_keys;
mod tokens;
mod webhooks;
mod workspaces;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

pub use api_keys::{
    ApiKeyPatch, ApiKeyStatus, SpendDelta, SpendRecord, SpendThreshold, StoredApiKey,
};
pub use audit::{AuditFilter, ChainReport, Purge, ScopeUse, Sighting, Trail, WorkspacePolicy};
pub use audit_heads::{HeadCheck, HeadDiscrepancy};
pub use edge::{AbuseFlag, IpAccessList, StoredRoute};
pub use invalidation::{Invalidation, InvalidationListener};
pub use issuers::IssuerPatch;
pub use oauth::OAuthClientPatch;
pub use oauth_flows::{DeviceAuthorization, DevicePoll, DeviceStatus, RefreshToken, Rotation};
pub use principals::{NewPrincipal, PrincipalFilter, PrincipalPatch};
pub use signing_keys::StoredSigningKey;
pub use tokens::{CredentialRecord, ExpiringCredential, OwnerSummary, TokenFilter, TokenUse};
pub use webhooks::{
    AttemptResult, DeliveryFilter, DueDelivery, Next, StoredAttempt, StoredDelivery, StoredWebhook,
    WebhookPatch, message_body, outbox_signal,
};
pub use workspaces::{MAX_CHAIN, WorkspaceFilter, WorkspacePatch};

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The record does not exist (or is not visible to the caller).
    #[error("not found")]
    NotFound,
    /// The change conflicts with existing data; the message says how, for the caller.
    #[error("{0}")]
    Conflict(String),
    /// The database cannot answer now (pool exhausted or closed, connection lost, a
    /// statement or lock timeout).
    #[error("the database is unavailable: {0}")]
    Unavailable(sqlx::Error),
    /// The database failed.
    #[error("database error: {0}")]
    Database(sqlx::Error),
    /// Migrations failed.
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The credential making the call was revoked (or its owner suspended) meanwhile.
    #[error("the calling credential is no longer valid")]
    CallerRevoked,
    /// The audit key differs from the one the store's audit trail was written with.
    #[error(
        "the audit key (fingerprint {configured}) differs from the one this store's audit log \
         was written with (fingerprint {stored}); every node must use the same key"
    )]
    AuditKeyMismatch {
        /// The stored fingerprint.
        stored: String,
        /// The configured key's fingerprint.
        configured: String,
    },
    /// A stored value could not be read back into a domain type.
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                Error::Unavailable(e)
            }
            // 57014: cancelled by statement_timeout; 55P03: lock_timeout. The database is
            // too busy (or a lock is held too long) to answer now, which a retry may fix.
            sqlx::Error::Database(ref db)
                if matches!(db.code().as_deref(), Some("57014" | "55P03")) =>
            {
                Error::Unavailable(e)
            }
            other => Error::Database(other),
        }
    }
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One page of a list, ordered by id.
#[derive(Debug, Clone)]
pub struct Page<T> {
    /// The records of this page.
    pub items: Vec<T>,
    /// The id to pass as the next page's cursor; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// Where a list page starts and how long it is.
#[derive(Debug, Clone, Default)]
pub struct PageRequest {
    /// Return records whose id sorts after this one.
    pub after: Option<String>,
    /// How many records at most (already clamped by the caller).
    pub limit: u32,
}

impl<T> Page<T> {
    fn from_overfetch(mut items: Vec<T>, limit: u32, id_of: impl Fn(&T) -> String) -> Self {
        let next_cursor = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(&id_of)
        } else {
            None
        };
        Page { items, next_cursor }
    }
}

/// Which engine a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite, embedded.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

#[derive(Clone)]
enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to the store's pool, whichever engine it is.
///
/// The body is compiled once per engine, so one query text serves both.
macro_rules! with_pool {
    ($self:expr, $pool:ident => $body:expr) => {
        match &$self.db {
            $crate::Db::Sqlite($pool) => $body,
            $crate::Db::Postgres($pool) => $body,
        }
    };
}
pub(crate) use with_pool;

/// Inside a `with_pool!` transaction `$tx`, announces `$inv` to every node when `$channel`
/// (from [`Store::announce_channel`]) is `Some`, i.e. on PostgreSQL. The announcement is sent
/// exactly when the transaction commits.
macro_rules! announce {
    ($tx:expr, $channel:expr, $inv:expr) => {
        if let Some(channel) = $channel {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(channel)
                .bind($inv.encode())
                .execute(&mut *$tx)
                .await?;
        }
    };
}
pub(crate) use announce;

/// How to open a store.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// SQLite in `dir/datastack.db`; the directory is created if missing.
    Sqlite {
        /// The data directory.
        dir: std::path::PathBuf,
    },
    /// PostgreSQL at a `postgres://` URL.
    Postgres {
        /// The connection URL (may carry `options=-c search_path=…`).
        url: String,
        /// Pool size.
        max_connections: u32,
        /// `statement_timeout` of every pooled connection: a statement running longer is
        /// cancelled and the call fails with [`Error::Unavailable`]. Zero turns it off.
        statement_timeout: Duration,
        /// `lock_timeout` of every pooled connection: a statement waiting longer for a
        /// lock fails with [`Error::Unavailable`]. Zero turns it off.
        lock_timeout: Duration,
    },
}

/// The persistence of datastack.
#[derive(Clone)]
pub struct Store {
    db: Db,
    /// The PostgreSQL channel on which invalidations are announced to other nodes.
    channel: String,
    pg_url: Option<String>,
    /// The key the audit chain is signed with.
    audit_key: Option<std::sync::Arc<datastack_core::audit::AuditKey>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend())
            .finish()
    }
}

impl Store {
    /// Opens the store (without migrating).
    pub async fn open(config: &StoreConfig) -> Result<Self> {
        match config {
            StoreConfig::Sqlite { dir } => Self::open_sqlite(dir).await,
            StoreConfig::Postgres {
                url,
                max_connections,
                statement_timeout,
                lock_timeout,
            } => {
                Self::open_postgres(url, *max_connections, *statement_timeout, *lock_timeout).await
            }
        }
    }

    async fn open_sqlite(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::Database(sqlx::Error::Configuration(
                format!("cannot create the data directory {}: {e}", dir.display()).into(),
            ))
        })?;
        let options = SqliteConnectOptions::new()
            .filename(dir.join("datastack.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL keeps every committed transaction across a power loss, not only a
            // process crash: nothing accepted is lost.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .min_connections(1)
            // An embedded connection cannot be lost the way a network one can, so the
            // ping sqlx sends before lending each connection (a round trip to the
            // connection's worker thread, on every query) buys nothing.
            .test_before_acquire(false)
            .connect_with(options)
            .await?;
        Ok(Self {
            db: Db::Sqlite(pool),
            channel: String::new(),
            pg_url: None,
            audit_key: None,
        })
    }

    async fn open_postgres(
        url: &str,
        max_connections: u32,
        statement_timeout: Duration,
        lock_timeout: Duration,
    ) -> Result<Self> {
        // Set at connection start, after the URL's own `options` (a search_path, say), so
        // no statement of the server waits on a lock or runs without bound.
        let options = PgConnectOptions::from_str(url)?.options([
            (
                "statement_timeout",
                format!("{}ms", statement_timeout.as_millis()),
            ),
            ("lock_timeout", format!("{}ms", lock_timeout.as_millis())),
            // No NOTICE in the node's log for what is expected (the migrations' `IF NOT
            // EXISTS` on every start); warnings and errors still arrive.
            ("client_min_messages", "warning".to_owned()),
        ]);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        // Nodes sharing a schema share a channel; deployments in other schemas of the same
        // database do not hear each other.
        let schema: String = sqlx::query_scalar("SELECT current_schema()")
            .fetch_one(&pool)
            .await?;
        let channel = invalidation_channel(&schema);
        Ok(Self {
            db: Db::Postgres(pool),
            channel,
            pg_url: Some(url.to_owned()),
            audit_key: None,
        })
    }

    /// The store, signing its audit trail with `key`.
    pub fn with_audit_key(mut self, key: std::sync::Arc<datastack_core::audit::AuditKey>) -> Self {
        self.audit_key = Some(key);
        self
    }

    /// The channel invalidations are announced on: `Some` on PostgreSQL, where other nodes
    /// listen; `None` on SQLite, which has one node.
    pub(crate) fn announce_channel(&self) -> Option<&str> {
        (self.backend() == Backend::Postgres).then_some(self.channel.as_str())
    }

    /// Which engine this store runs on.
    pub fn backend(&self) -> Backend {
        match self.db {
            Db::Sqlite(_) => Backend::Sqlite,
            Db::Postgres(_) => Backend::Postgres,
        }
    }

    /// Applies the migrations this build carries that the database has not seen.
    pub async fn migrate(&self) -> Result<()> {
        match &self.db {
            Db::Sqlite(pool) => sqlx::migrate!("migrations/sqlite").run(pool).await?,
            Db::Postgres(pool) => sqlx::migrate!("migrations/postgres").run(pool).await?,
        }
        Ok(())
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<()> {
        with_pool!(self, pool => {
            sqlx::query("SELECT 1").execute(pool).await?;
        });
        Ok(())
    }

    /// Closes the pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        match &self.db {
            Db::Sqlite(pool) => pool.close().await,
            Db::Postgres(pool) => pool.close().await,
        }
    }
}

/// The LISTEN/NOTIFY channel of a schema. PostgreSQL identifiers hold at most 63 bytes, so
/// a long schema name is shortened and made unique again with a CRC-32 of the whole name.
fn invalidation_channel(schema: &str) -> String {
    const PREFIX: &str = "datastack_invalidations_";
    let clean: String = schema
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    if PREFIX.len() + clean.len() <= 63 && clean == schema {
        return format!("{PREFIX}{clean}");
    }
    let head: String = clean.chars().take(63 - PREFIX.len() - 9).collect();
    format!("{PREFIX}{head}_{:08x}", crc32fast::hash(schema.as_bytes()))
}

pub(crate) fn unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

#[cfg(test)]
mod tests {
    #[test]
    fn invalidation_channels_fit_postgres_identifiers_and_stay_distinct() {
        assert_eq!(
            super::invalidation_channel("public"),
            "datastack_invalidations_public"
        );
        let long_a = format!("{}a", "s".repeat(80));
        let long_b = format!("{}b", "s".repeat(80));
        let a = super::invalidation_channel(&long_a);
        let b = super::invalidation_channel(&long_b);
        assert!(a.len() <= 63 && b.len() <= 63);
        assert_ne!(a, b);
        let odd = super::invalidation_channel("My-Schema");
        assert!(odd.len() <= 63 && odd != super::invalidation_channel("MySchema"));
    }
}
