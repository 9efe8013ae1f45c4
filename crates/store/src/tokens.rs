//! Personal access tokens: stored by digest, never by secret.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use datastack_core::id::{PrincipalId, TokenId, WorkspaceId};
use datastack_core::model::{Principal, Token, Workspace};

use crate::audit::{Trail, write_trail};
use crate::invalidation::Invalidation;
use crate::rows::{PrincipalRow, TokenRow, WorkspaceRow};
use crate::{Error, Page, PageRequest, Result, Store, announce, with_pool};

/// Which tokens a list returns.
#[derive(Debug, Clone)]
pub enum TokenFilter {
    /// The tokens of one principal.
    Owner(PrincipalId),
    /// Every token of the workspace.
    Workspace,
}

/// One observed use of a token, recorded in batches.
#[derive(Debug, Clone)]
pub struct TokenUse {
    /// The token.
    pub id: TokenId,
    /// When it was used.
    pub at: DateTime<Utc>,
    /// From where.
    pub ip: Option<IpAddr>,
}

/// The start of every token INSERT: the ten stored columns, in [`bind_token!`]'s order.
macro_rules! insert_token_columns {
    () => {
        "INSERT INTO tokens \
         (id, workspace_id, owner_id, label, digest, last_four, scopes, created_at, expires_at, kind) "
    };
}

/// Inserts one token; bind it with [`bind_token!`].
pub(crate) const INSERT_TOKEN: &str = concat!(
    insert_token_columns!(),
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
);

/// The SQL condition "the credential with id `$p` is unrevoked, its owner active, and its
/// owner's workspace and every ancestor of that workspace active": what a write made with a
/// credential checks in its own statement, so that a request authenticated just before a
/// revocation or a suspension (of the workspace or of any workspace above it) changes
/// nothing after it. The walk up the tree stops after 64 links, like
/// [`crate::MAX_CHAIN`].
macro_rules! caller_valid {
    ($p:literal) => {
        concat!(
            "EXISTS (SELECT 1 FROM tokens c JOIN principals p ON p.id = c.owner_id \
             WHERE c.id = ", $p, " AND c.revoked_at IS NULL AND p.status = 'active') \
             AND NOT EXISTS (WITH RECURSIVE up(id, parent_id, status, depth) AS ( \
               SELECT w.id, w.parent_id, w.status, 0 FROM tokens c \
                 JOIN principals p ON p.id = c.owner_id JOIN workspaces w ON w.id = p.workspace_id \
                 WHERE c.id = ", $p, " \
               UNION ALL \
               SELECT w.id, w.parent_id, w.status, up.depth + 1 FROM workspaces w \
                 JOIN up ON w.id = up.parent_id WHERE up.depth < 64) \
             SELECT 1 FROM up WHERE up.status <> 'active')"
        )
    };
}
pub(crate) use caller_valid;

/// Inserts one token only if the calling credential (`$11`) is still valid
/// ([`caller_valid!`]).
pub(crate) const INSERT_TOKEN_IF_CALLER_VALID: &str = concat!(
    insert_token_columns!(),
    "SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 WHERE ",
    caller_valid!("$11")
);

/// Binds a token's ten stored columns, in [`INSERT_TOKEN`]'s order, to `$query`.
macro_rules! bind_token {
    ($query:expr, $token:expr) => {
        $query
            .bind($token.id.as_str())
            .bind($token.workspace_id.as_str())
            .bind($token.owner_id.as_str())
            .bind(&$token.label)
            .bind(&$token.digest_hex)
            .bind(&$token.last_four)
            .bind($crate::rows::scopes_text(&$token.scopes))
            .bind($token.created_at)
            .bind($token.expires_at)
            .bind($token.kind.as_str())
    };
}
pub(crate) use bind_token;

/// A token whose owner was deleted meanwhile violates the foreign key: that is a 404.
pub(crate) fn owner_gone_is_not_found(e: sqlx::Error) -> Error {
    match e {
        sqlx::Error::Database(d) if d.is_foreign_key_violation() => Error::NotFound,
        other => other.into(),
    }
}

pub(crate) const TOKEN_COLUMNS: &str = "t.id, t.workspace_id, t.owner_id, t.label, t.digest, t.last_four, t.scopes, \
     t.created_at, t.expires_at, t.revoked_at, t.last_used_at, t.last_used_ip, t.kind";

#[derive(sqlx::FromRow)]
struct TokenWithOwnerRow {
    #[sqlx(flatten)]
    token: TokenRow,
    p_id: String,
    p_workspace_id: String,
    p_kind: String,
    p_email: Option<String>,
    p_name: String,
    p_role: String,
    p_status: String,
    p_created_at: DateTime<Utc>,
    p_updated_at: DateTime<Utc>,
    w_id: String,
    w_name: String,
    w_parent_id: Option<String>,
    w_max_token_lifetime_days: Option<i64>,
    w_audit_retention_days: Option<i64>,
    w_auto_revoke_unused_days: Option<i64>,
    w_ip_access_lists_suspended: bool,
    w_data_retention_consent: bool,
    w_status: String,
    w_created_at: DateTime<Utc>,
    w_updated_at: DateTime<Utc>,
    #[sqlx(flatten)]
    key: crate::api_keys::JoinedKeyRow,
}

/// Ends a change to token `$id` inside transaction `$tx` (of a method of `$store`) that
/// updated `$affected` rows: `NotFound` when none, otherwise reads the token back, announces
/// it to every node, writes `$trail` and commits. Evaluates to the token as changed.
macro_rules! finish_token_change {
    ($store:expr, $tx:ident, $affected:expr, $id:expr, $channel:expr, $trail:expr) => {{
        if $affected == 0 {
            return Err(Error::NotFound);
        }
        let select = format!("SELECT {TOKEN_COLUMNS} FROM tokens t WHERE t.id = $1");
        let row: TokenRow = sqlx::query_as(&select)
            .bind($id.as_str())
            .fetch_one(&mut *$tx)
            .await?;
        let token = row.into_domain()?;
        announce!($tx, $channel, Invalidation::of_token(&token));
        write_trail!($store, $tx, $trail);
        $tx.commit().await?;
        token
    }};
}

/// A credential found by digest, with its owner and the owner's workspace.
#[derive(Debug, Clone)]
pub struct CredentialRecord {
    /// The token. For an API key's previous secret, its digest, last four characters and
    /// expiry are the previous secret's (the expiry is the earlier of the key's and the
    /// overlap's end).
    pub token: Token,
    /// An API key's limits, ranges and metadata.
    pub api_key: Option<datastack_core::apikey::ApiKeyPolicy>,
    /// Its owner.
    pub owner: Principal,
    /// The owner's workspace.
    pub workspace: Workspace,
}

impl Store {
    /// Stores a new token, with its audit trail.
    pub async fn insert_token(&self, token: &Token, trail: &Trail) -> Result<()> {
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            bind_token!(sqlx::query(INSERT_TOKEN), token)
            .execute(&mut *tx)
            .await
            .map_err(owner_gone_is_not_found)?;
            write_trail!(self, tx, trail);
            tx.commit().await?;
            Ok(())
        })
    }

    /// Stores a token created through the API by the credential `creator`, only if that
    /// credential is still unrevoked and its owner active when the insert runs: a request
    /// authenticated just before a revocation cannot mint a token after it
    /// (`CallerRevoked`).
    pub async fn insert_token_created_by(
        &self,
        token: &Token,
        creator: &TokenId,
        trail: &Trail,
    ) -> Result<()> {
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let inserted = bind_token!(sqlx::query(INSERT_TOKEN_IF_CALLER_VALID), token)
                .bind(creator.as_str())
                .execute(&mut *tx)
                .await
                .map_err(owner_gone_is_not_found)?
                .rows_affected();
            if inserted == 0 {
                // Nothing was written; the transaction rolls back when dropped.
                return Err(Error::CallerRevoked);
            }
            write_trail!(self, tx, trail);
            tx.commit().await?;
            Ok(())
        })
    }

    /// The credential with this digest (of `kind`), its owner and their workspace, revoked
    /// or not; the caller decides. One query: this is the uncached verification path. An
    /// API key is also found by its previous secret while that is stored.
    pub async fn find_token_by_digest(
        &self,
        kind: datastack_core::credential::CredentialKind,
        digest_hex: &str,
    ) -> Result<Option<CredentialRecord>> {
        let base = format!(
            "SELECT {TOKEN_COLUMNS}, p.id AS p_id, p.workspace_id AS p_workspace_id, p.kind AS p_kind, \
               p.email AS p_email, p.name AS p_name, p.role AS p_role, p.status AS p_status, \
               p.created_at AS p_created_at, p.updated_at AS p_updated_at, \
               w.id AS w_id, w.name AS w_name, w.parent_id AS w_parent_id, \
               w.max_token_lifetime_days AS w_max_token_lifetime_days, w.status AS w_status, \
               w.audit_retention_days AS w_audit_retention_days, \
               w.auto_revoke_unused_days AS w_auto_revoke_unused_days, \
               w.ip_access_lists_suspended AS w_ip_access_lists_suspended, \
               w.data_retention_consent AS w_data_retention_consent, \
               w.created_at AS w_created_at, w.updated_at AS w_updated_at, {} \
             FROM tokens t JOIN principals p ON p.id = t.owner_id \
               JOIN workspaces w ON w.id = p.workspace_id \
               LEFT JOIN api_keys k ON k.token_id = t.id ",
            crate::api_keys::JOINED_KEY_COLUMNS
        );
        let current = format!("{base} WHERE t.digest = $1 AND t.kind = $2");
        let mut row: Option<TokenWithOwnerRow> = with_pool!(self, pool => {
            sqlx::query_as(&current).bind(digest_hex).bind(kind.as_str()).fetch_optional(pool).await?
        });
        let mut previous = false;
        if row.is_none() && kind == datastack_core::credential::CredentialKind::ApiKey {
            let by_previous = format!("{base} WHERE k.previous_digest = $1 AND t.kind = $2");
            row = with_pool!(self, pool => {
                sqlx::query_as(&by_previous).bind(digest_hex).bind(kind.as_str()).fetch_optional(pool).await?
            });
            previous = row.is_some();
        }
        let Some(row) = row else { return Ok(None) };
        let owner = PrincipalRow {
            id: row.p_id,
            workspace_id: row.p_workspace_id,
            kind: row.p_kind,
            email: row.p_email,
            name: row.p_name,
            role: row.p_role,
            status: row.p_status,
            created_at: row.p_created_at,
            updated_at: row.p_updated_at,
        }
        .into_domain()?;
        let workspace = WorkspaceRow {
            id: row.w_id,
            name: row.w_name,
            parent_id: row.w_parent_id,
            max_token_lifetime_days: row.w_max_token_lifetime_days,
            audit_retention_days: row.w_audit_retention_days,
            auto_revoke_unused_days: row.w_auto_revoke_unused_days,
            ip_access_lists_suspended: row.w_ip_access_lists_suspended,
            data_retention_consent: row.w_data_retention_consent,
            status: row.w_status,
            created_at: row.w_created_at,
            updated_at: row.w_updated_at,
        }
        .into_domain()?;
        let mut token = row.token.into_domain()?;
        let api_key = row.key.into_policy()?;
        if previous {
            // The previous secret stands in for the key: its digest, its last characters,
            // and its own end.
            let Some(prev) = api_key.as_ref().and_then(|k| k.previous.clone()) else {
                return Ok(None);
            };
            token.digest_hex = digest_hex.to_owned();
            token.last_four = prev.last_four;
            token.expires_at = Some(
                token
                    .expires_at
                    .map_or(prev.expires_at, |e| e.min(prev.expires_at)),
            );
        }
        Ok(Some(CredentialRecord {
            token,
            api_key,
            owner,
            workspace,
        }))
    }

    /// Unrevoked tokens of `workspace` matching `filter`, of `kind` (`None`: every kind
    /// but short-lived OAuth access tokens, which are reviewed through their clients),
    /// ordered by id. Expired tokens are listed (with their `expiresAt`) until revoked, so
    /// owners can see what lapsed.
    pub async fn list_tokens(
        &self,
        workspace: &WorkspaceId,
        filter: &TokenFilter,
        kind: Option<datastack_core::credential::CredentialKind>,
        page: &PageRequest,
    ) -> Result<Page<Token>> {
        let owner = match filter {
            TokenFilter::Owner(p) => Some(p.as_str()),
            TokenFilter::Workspace => None,
        };
        let sql = format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens t \
             WHERE t.workspace_id = $1 AND ($2 IS NULL OR t.owner_id = $2) AND t.revoked_at IS NULL \
               AND (t.kind = $5 OR ($5 IS NULL AND t.kind <> 'oauth_access')) \
               AND t.id > $3 ORDER BY t.id LIMIT $4"
        );
        let rows: Vec<TokenRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql)
                .bind(workspace.as_str())
                .bind(owner)
                .bind(page.after.as_deref().unwrap_or(""))
                .bind(i64::from(page.limit) + 1)
                .bind(kind.map(|k| k.as_str()))
                .fetch_all(pool)
                .await?
        });
        let items = rows
            .into_iter()
            .map(TokenRow::into_domain)
            .collect::<Result<Vec<_>>>()?;
        Ok(Page::from_overfetch(items, page.limit, |t| {
            t.id.to_string()
        }))
    }

    /// Revokes an unrevoked token of `workspace` (owned by `owner` when given) and announces
    /// it to every node in the same transaction. Returns the revoked token.
    pub async fn revoke_token(
        &self,
        workspace: &WorkspaceId,
        id: &TokenId,
        owner: Option<&PrincipalId>,
        trail: &Trail,
    ) -> Result<Token> {
        let channel = self.announce_channel();
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let affected = sqlx::query(
                "UPDATE tokens SET revoked_at = $1 WHERE id = $2 AND workspace_id = $3 \
                 AND ($4 IS NULL OR owner_id = $4) AND revoked_at IS NULL",
            )
            .bind(Utc::now())
            .bind(id.as_str())
            .bind(workspace.as_str())
            .bind(owner.map(PrincipalId::as_str))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            Ok(finish_token_change!(self, tx, affected, id, channel, trail))
        })
    }

    /// Records a batch of token uses in one transaction, keeping the latest use of each.
    pub async fn record_token_uses(&self, uses: &[TokenUse]) -> Result<()> {
        if uses.is_empty() {
            return Ok(());
        }
        // Update rows in id order, so concurrent flushes (or a flush and a principal
        // deletion) lock them in the same order and cannot deadlock.
        let mut ordered: Vec<&TokenUse> = uses.iter().collect();
        ordered.sort_by(|a, b| a.id.cmp(&b.id));
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            for u in ordered {
                sqlx::query(
                    "UPDATE tokens SET last_used_at = $1, last_used_ip = $2 \
                     WHERE id = $3 AND (last_used_at IS NULL OR last_used_at < $1)",
                )
                .bind(u.at)
                .bind(u.ip.map(|ip| ip.to_string()))
                .bind(u.id.as_str())
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }
}

/// A principal as the access review names it.
#[derive(Debug, Clone)]
pub struct OwnerSummary {
    /// Its id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// A user's email.
    pub email: Option<String>,
    /// `user` or `service_principal`.
    pub kind: String,
}

impl Store {
    /// Unrevoked tokens of `workspace` neither used nor created since `unused_since`, with
    /// when their owner was told they would be revoked (if that was after their last use).
    pub async fn auto_revoke_candidates(
        &self,
        workspace: &WorkspaceId,
        unused_since: DateTime<Utc>,
    ) -> Result<Vec<(Token, Option<DateTime<Utc>>)>> {
        #[derive(sqlx::FromRow)]
        struct Row {
            #[sqlx(flatten)]
            token: TokenRow,
            auto_revoke_notified_at: Option<DateTime<Utc>>,
        }
        let sql = format!(
            "SELECT {TOKEN_COLUMNS}, t.auto_revoke_notified_at FROM tokens t \
             WHERE t.workspace_id = $1 AND t.revoked_at IS NULL AND t.kind = 'pat' \
               AND COALESCE(t.last_used_at, t.created_at) < $2 ORDER BY t.id LIMIT 1000"
        );
        let rows: Vec<Row> = with_pool!(self, pool => {
            sqlx::query_as(&sql)
                .bind(workspace.as_str())
                .bind(unused_since)
                .fetch_all(pool)
                .await?
        });
        rows.into_iter()
            .map(|r| {
                let token = r.token.into_domain()?;
                let idle_since = token.last_used_at.unwrap_or(token.created_at);
                let notified = r.auto_revoke_notified_at.filter(|n| *n > idle_since);
                Ok((token, notified))
            })
            .collect()
    }

    /// Records that a token's owner was told it will be revoked, with the event, once per
    /// idle period (`idle_since`): a notice already given since then is not repeated, even
    /// by another node running the same pass.
    pub async fn mark_auto_revoke_notified(
        &self,
        id: &TokenId,
        idle_since: DateTime<Utc>,
        trail: &Trail,
    ) -> Result<bool> {
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let affected = sqlx::query(
                "UPDATE tokens SET auto_revoke_notified_at = $1 WHERE id = $2 AND revoked_at IS NULL \
                 AND (auto_revoke_notified_at IS NULL OR auto_revoke_notified_at <= $3) \
                 AND COALESCE(last_used_at, created_at) <= $3",
            )
            .bind(datastack_core::audit::now_micros())
            .bind(id.as_str())
            .bind(idle_since)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if affected == 0 {
                return Ok(false);
            }
            write_trail!(self, tx, trail);
            tx.commit().await?;
            Ok(true)
        })
    }

    /// Every principal of `workspace`, for naming owners in the access review.
    pub async fn owner_summaries(&self, workspace: &WorkspaceId) -> Result<Vec<OwnerSummary>> {
        let rows: Vec<(String, String, Option<String>, String)> = with_pool!(self, pool => {
            sqlx::query_as("SELECT id, name, email, kind FROM principals WHERE workspace_id = $1")
                .bind(workspace.as_str())
                .fetch_all(pool)
                .await?
        });
        Ok(rows
            .into_iter()
            .map(|(id, name, email, kind)| OwnerSummary {
                id,
                name,
                email,
                kind,
            })
            .collect())
    }
}

impl Store {
    /// A token of `workspace` by id, revoked or not.
    pub async fn find_token(&self, workspace: &WorkspaceId, id: &TokenId) -> Result<Option<Token>> {
        let sql =
            format!("SELECT {TOKEN_COLUMNS} FROM tokens t WHERE t.id = $1 AND t.workspace_id = $2");
        let row: Option<TokenRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql)
                .bind(id.as_str())
                .bind(workspace.as_str())
                .fetch_optional(pool)
                .await?
        });
        row.map(TokenRow::into_domain).transpose()
    }
}

impl Store {
    /// Revokes a token for the auto-revocation policy only if it is still idle since before
    /// `idle_before` and its notice (`noticed_at`) is the one recorded, checked in the same
    /// statement: a use recorded meanwhile keeps it. Announces it like any revocation.
    pub async fn revoke_idle_token(
        &self,
        workspace: &WorkspaceId,
        id: &TokenId,
        idle_before: DateTime<Utc>,
        noticed_at: DateTime<Utc>,
        trail: &Trail,
    ) -> Result<Token> {
        let channel = self.announce_channel();
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let affected = sqlx::query(
                "UPDATE tokens SET revoked_at = $1 WHERE id = $2 AND workspace_id = $3 \
                 AND revoked_at IS NULL AND COALESCE(last_used_at, created_at) < $4 \
                 AND auto_revoke_notified_at = $5",
            )
            .bind(Utc::now())
            .bind(id.as_str())
            .bind(workspace.as_str())
            .bind(idle_before)
            .bind(noticed_at)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            Ok(finish_token_change!(self, tx, affected, id, channel, trail))
        })
    }

    /// Replaces a token's scopes only if they are still `expected` (compare-and-set), with
    /// the audit trail, and announces it. `NotFound` when the token changed meanwhile.
    pub async fn narrow_token_scopes(
        &self,
        workspace: &WorkspaceId,
        id: &TokenId,
        expected: &datastack_core::scope::ScopeSet,
        scopes: &datastack_core::scope::ScopeSet,
        trail: &Trail,
    ) -> Result<Token> {
        let channel = self.announce_channel();
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let affected = sqlx::query(
                "UPDATE tokens SET scopes = $1 WHERE id = $2 AND workspace_id = $3 \
                 AND revoked_at IS NULL AND scopes = $4",
            )
            .bind(crate::rows::scopes_text(scopes))
            .bind(id.as_str())
            .bind(workspace.as_str())
            .bind(crate::rows::scopes_text(expected))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            Ok(finish_token_change!(self, tx, affected, id, channel, trail))
        })
    }
}

/// A credential about to expire that has not been told so yet.
#[derive(Debug, Clone)]
pub struct ExpiringCredential {
    /// `tok_…` or `key_…`.
    pub id: TokenId,
    /// Its workspace.
    pub workspace_id: WorkspaceId,
    /// Its owner.
    pub owner_id: String,
    /// Its label or name.
    pub label: String,
    /// When it expires.
    pub expires_at: DateTime<Utc>,
}

impl Store {
    /// Personal access tokens and API keys, not revoked, expiring after `now` and no later
    /// than `until`, that have had no expiry notice; at most `limit`, soonest first.
    pub async fn expiring_credentials(
        &self,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<ExpiringCredential>> {
        let rows: Vec<(String, String, String, String, DateTime<Utc>)> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT t.id, t.workspace_id, t.owner_id, t.label, t.expires_at FROM tokens t \
                 WHERE t.revoked_at IS NULL AND t.expires_at IS NOT NULL \
                   AND t.expires_at > $1 AND t.expires_at <= $2 \
                   AND substr(t.id, 1, 4) IN ('tok_', 'key_') \
                   AND NOT EXISTS (SELECT 1 FROM credential_expiry_notices n WHERE n.credential_id = t.id) \
                 ORDER BY t.expires_at LIMIT $3",
            )
            .bind(now)
            .bind(until)
            .bind(limit)
            .fetch_all(pool)
            .await?
        });
        Ok(rows
            .into_iter()
            .map(|(id, ws, owner, label, expires_at)| ExpiringCredential {
                id: TokenId::from_trusted(id),
                workspace_id: WorkspaceId::from_trusted(ws),
                owner_id: owner,
                label,
                expires_at,
            })
            .collect())
    }

    /// Records that `id` was told it expires soon, with the trail that tells it; `false`
    /// (and nothing written) when it already was.
    pub async fn mark_expiry_notified(&self, id: &TokenId, trail: &Trail) -> Result<bool> {
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let affected = sqlx::query(
                "INSERT INTO credential_expiry_notices (credential_id, notified_at) VALUES ($1, $2) \
                 ON CONFLICT (credential_id) DO NOTHING",
            )
            .bind(id.as_str())
            .bind(Utc::now())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if affected == 0 {
                return Ok(false);
            }
            write_trail!(self, tx, trail);
            tx.commit().await?;
            Ok(true)
        })
    }
}
