//! Cache invalidation across cluster nodes, through PostgreSQL LISTEN/NOTIFY.
//!
//! Writes that must reach every node's credential cache (a revoked token, a suspended or
//! deleted principal) call `pg_notify` in the same transaction as the change, so the
//! announcement is sent exactly when the change commits. Each node listens on its own
//! connection. When that connection drops, notifications may have been missed, so the
//! listener reports [`Invalidation::All`] and the node empties its cache.

use sqlx::postgres::PgListener;

use crate::{Result, Store};

/// What a node must drop from its caches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// The token with this digest (lowercase hex).
    Token(String),
    /// Every secret of the credential with this id (an API key's current and previous
    /// secrets).
    Credential(String),
    /// Every credential of this principal.
    Principal(String),
    /// Every access token issued to this OAuth client (it was deleted).
    OAuthClient(String),
    /// This OAuth client's record (its secret, scopes or lifetimes changed): only the copy
    /// a node keeps for its token endpoint, not the tokens already issued.
    OAuthClientChanged(String),
    /// This trusted issuer changed or was deleted: every node reloads the issuers and drops
    /// the verified tokens of this one.
    Issuer(String),
    /// Every credential whose owner belongs to this workspace (its settings changed).
    Workspace(String),
    /// Every credential whose owner belongs to this workspace or to any workspace below it
    /// (its status changed, which every descendant inherits).
    WorkspaceTree(String),
    /// The gateway routes changed.
    Routes,
    /// The IP access lists of this workspace changed.
    IpLists(String),
    /// The rate-limit penalty of this subject (`kind:subject`) was lifted.
    Penalty(String),
    /// Everything: announcements may have been missed.
    All,
    /// Nothing to drop: a node proving that the channel still delivers.
    Heartbeat,
}

impl Invalidation {
    /// What a change to `token` must drop: its one secret for a personal access token,
    /// every secret of the key for an API key (it may have two during a rotation).
    pub fn of_token(token: &datastack_core::model::Token) -> Self {
        match token.kind {
            datastack_core::credential::CredentialKind::PersonalAccessToken
            | datastack_core::credential::CredentialKind::OAuthAccessToken => {
                Invalidation::Token(token.digest_hex.clone())
            }
            datastack_core::credential::CredentialKind::ApiKey => {
                Invalidation::Credential(token.id.to_string())
            }
        }
    }

    pub(crate) fn encode(&self) -> String {
        match self {
            Invalidation::Token(d) => format!("token:{d}"),
            Invalidation::Credential(id) => format!("credential:{id}"),
            Invalidation::Principal(p) => format!("principal:{p}"),
            Invalidation::OAuthClient(c) => format!("oauth-client:{c}"),
            Invalidation::OAuthClientChanged(c) => format!("oauth-client-changed:{c}"),
            Invalidation::Issuer(i) => format!("issuer:{i}"),
            Invalidation::Workspace(w) => format!("workspace:{w}"),
            Invalidation::WorkspaceTree(w) => format!("subtree:{w}"),
            Invalidation::Routes => "routes".to_owned(),
            Invalidation::IpLists(w) => format!("iplists:{w}"),
            Invalidation::Penalty(s) => format!("penalty:{s}"),
            Invalidation::All => "all".to_owned(),
            Invalidation::Heartbeat => "heartbeat".to_owned(),
        }
    }

    fn decode(s: &str) -> Self {
        if s == "heartbeat" {
            return Invalidation::Heartbeat;
        }
        if s == "routes" {
            return Invalidation::Routes;
        }
        match s.split_once(':') {
            Some(("token", d)) => Invalidation::Token(d.to_owned()),
            Some(("credential", id)) => Invalidation::Credential(id.to_owned()),
            Some(("principal", p)) => Invalidation::Principal(p.to_owned()),
            Some(("oauth-client", c)) => Invalidation::OAuthClient(c.to_owned()),
            Some(("oauth-client-changed", c)) => Invalidation::OAuthClientChanged(c.to_owned()),
            Some(("issuer", i)) => Invalidation::Issuer(i.to_owned()),
            Some(("workspace", w)) => Invalidation::Workspace(w.to_owned()),
            Some(("subtree", w)) => Invalidation::WorkspaceTree(w.to_owned()),
            Some(("iplists", w)) => Invalidation::IpLists(w.to_owned()),
            Some(("penalty", s)) => Invalidation::Penalty(s.to_owned()),
            // Anything unexpected is treated as the safe choice.
            _ => Invalidation::All,
        }
    }
}

/// A subscription to the invalidations announced by every node.
pub struct InvalidationListener {
    listener: PgListener,
}

impl Store {
    /// Subscribes to invalidations. `None` on SQLite, which has one node only.
    pub async fn listen_invalidations(&self) -> Result<Option<InvalidationListener>> {
        let Some(url) = &self.pg_url else {
            return Ok(None);
        };
        let mut listener = PgListener::connect(url).await?;
        listener.listen(&self.channel).await?;
        Ok(Some(InvalidationListener { listener }))
    }
}

impl Store {
    /// Sends a heartbeat on the invalidation channel (PostgreSQL only): a listener that
    /// does not hear it is cut off without knowing it.
    pub async fn announce_heartbeat(&self) -> Result<()> {
        if let crate::Db::Postgres(pool) = &self.db {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(&self.channel)
                .bind(Invalidation::Heartbeat.encode())
                .execute(pool)
                .await?;
        }
        Ok(())
    }
}

impl InvalidationListener {
    /// Waits for the next invalidation. After a lost connection it reconnects and returns
    /// [`Invalidation::All`]; an error means the database cannot be reached at all.
    pub async fn recv(&mut self) -> Result<Invalidation> {
        match self.listener.try_recv().await? {
            Some(n) => Ok(Invalidation::decode(n.payload())),
            None => Ok(Invalidation::All),
        }
    }
}
