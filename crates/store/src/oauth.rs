//! OAuth 2.0 clients, and the access tokens issued to them (rows of `tokens`, kind
//! `oauth_access`, labelled with their client's id and linked to it in `oauth_tokens`).

use chrono::{DateTime, Utc};
use datastack_core::id::{OAuthClientId, PrincipalId, TokenId, WorkspaceId};
use datastack_core::model::Token;
use datastack_core::oauth::{ClientType, GrantType, OAuthClient};
use datastack_core::scope::ScopeSet;

use crate::audit::{Trail, write_trail};
use crate::invalidation::Invalidation;
use crate::rows::{json_list, json_text, scopes_of, scopes_text};
use crate::tokens::{bind_token, caller_valid, owner_gone_is_not_found};
use crate::{Error, Page, PageRequest, Result, Store, announce, with_pool};

/// Inserts one token (bound with [`bind_token!`]) only while its owner is active.
const INSERT_TOKEN_IF_OWNER_ACTIVE: &str = "INSERT INTO tokens \
     (id, workspace_id, owner_id, label, digest, last_four, scopes, created_at, expires_at, kind) \
     SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 \
     WHERE EXISTS (SELECT 1 FROM principals WHERE id = $3 AND status = 'active')";

const CLIENT_COLUMNS: &str = "id, workspace_id, name, client_type, grant_types, redirect_uris, scopes, \
     audiences, access_token_ttl_seconds, refresh_token_ttl_seconds, owner_id, secret_digest, \
     secret_last_four, previous_secret_expires_at, secret_rotated_at, created_by, created_at, \
     updated_at, last_used_at, previous_secret_digest, jwks, jwks_uri";

#[derive(sqlx::FromRow)]
struct ClientRow {
    id: String,
    workspace_id: String,
    name: String,
    client_type: String,
    grant_types: String,
    redirect_uris: String,
    scopes: String,
    audiences: String,
    access_token_ttl_seconds: i64,
    refresh_token_ttl_seconds: i64,
    owner_id: Option<String>,
    secret_digest: Option<String>,
    secret_last_four: Option<String>,
    previous_secret_expires_at: Option<DateTime<Utc>>,
    secret_rotated_at: Option<DateTime<Utc>>,
    created_by: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    last_used_at: Option<DateTime<Utc>>,
    previous_secret_digest: Option<String>,
    jwks: Option<String>,
    jwks_uri: Option<String>,
}

impl ClientRow {
    fn into_domain(self) -> Result<OAuthClient> {
        let grant_types = self
            .grant_types
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(|g| GrantType::parse(g).ok_or_else(|| Error::Corrupt(format!("grant type {g}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(OAuthClient {
            id: OAuthClientId::from_trusted(self.id),
            workspace_id: WorkspaceId::from_trusted(self.workspace_id),
            name: self.name,
            client_type: ClientType::from_name(&self.client_type)
                .ok_or_else(|| Error::Corrupt(format!("client type {}", self.client_type)))?,
            grant_types,
            redirect_uris: json_list(&self.redirect_uris, "oauth client list")?,
            scopes: scopes_of(&self.scopes)?,
            audiences: json_list(&self.audiences, "oauth client list")?,
            access_token_ttl_seconds: self.access_token_ttl_seconds,
            refresh_token_ttl_seconds: self.refresh_token_ttl_seconds,
            owner_id: self.owner_id.map(PrincipalId::from_trusted),
            secret_digest: self.secret_digest,
            secret_last_four: self.secret_last_four,
            previous_secret_digest: self.previous_secret_digest,
            previous_secret_expires_at: self.previous_secret_expires_at,
            secret_rotated_at: self.secret_rotated_at,
            created_by: self.created_by,
            created_at: self.created_at,
            updated_at: self.updated_at,
            last_used_at: self.last_used_at,
            jwks: self.jwks,
            jwks_uri: self.jwks_uri,
        })
    }
}

/// What a PATCH of a client changes (`None`: unchanged).
#[derive(Debug, Clone, Default)]
pub struct OAuthClientPatch {
    /// A new name.
    pub name: Option<String>,
    /// New redirect URIs.
    pub redirect_uris: Option<Vec<String>>,
    /// New allowed scopes.
    pub scopes: Option<ScopeSet>,
    /// New audiences.
    pub audiences: Option<Vec<String>>,
    /// New access-token lifetime.
    pub access_token_ttl_seconds: Option<i64>,
    /// New refresh-token lifetime.
    pub refresh_token_ttl_seconds: Option<i64>,
    /// A new JWK set (for a client that authenticates with `private_key_jwt`).
    pub jwks: Option<String>,
    /// A new JWK set URL (likewise).
    pub jwks_uri: Option<String>,
}

impl Store {
    /// Stores a new client, only if the calling credential `creator` is still valid.
    pub async fn insert_oauth_client(
        &self,
        client: &OAuthClient,
        creator: &TokenId,
        trail: &Trail,
    ) -> Result<()> {
        let sql = format!(
            "INSERT INTO oauth_clients ({CLIENT_COLUMNS}) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22 \
             WHERE {}",
            caller_valid!("$23")
        );
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let inserted = sqlx::query(&sql)
                .bind(client.id.as_str())
                .bind(client.workspace_id.as_str())
                .bind(&client.name)
                .bind(client.client_type.as_str())
                .bind(grant_text(&client.grant_types))
                .bind(json_text(&client.redirect_uris))
                .bind(scopes_text(&client.scopes))
                .bind(json_text(&client.audiences))
                .bind(client.access_token_ttl_seconds)
                .bind(client.refresh_token_ttl_seconds)
                .bind(client.owner_id.as_ref().map(PrincipalId::as_str))
                .bind(client.secret_digest.as_deref())
                .bind(client.secret_last_four.as_deref())
                .bind(client.previous_secret_expires_at)
                .bind(client.secret_rotated_at)
                .bind(client.created_by.as_deref())
                .bind(client.created_at)
                .bind(client.updated_at)
                .bind(client.last_used_at)
                .bind(client.previous_secret_digest.as_deref())
                .bind(client.jwks.as_deref())
                .bind(client.jwks_uri.as_deref())
                .bind(creator.as_str())
                .execute(&mut *tx)
                .await
                .map_err(owner_gone_is_not_found)?
                .rows_affected();
            if inserted == 0 {
                return Err(Error::CallerRevoked);
            }
            write_trail!(self, tx, trail);
            tx.commit().await?;
            Ok(())
        })
    }

    /// A page of the workspace's clients, by id.
    pub async fn list_oauth_clients(
        &self,
        workspace: &WorkspaceId,
        page: &PageRequest,
    ) -> Result<Page<OAuthClient>> {
        let sql = format!(
            "SELECT {CLIENT_COLUMNS} FROM oauth_clients WHERE workspace_id = $1 AND id > $2 \
             ORDER BY id LIMIT $3"
        );
        let rows: Vec<ClientRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql)
                .bind(workspace.as_str())
                .bind(page.after.as_deref().unwrap_or(""))
                .bind(i64::from(page.limit) + 1)
                .fetch_all(pool)
                .await?
        });
        let items = rows
            .into_iter()
            .map(ClientRow::into_domain)
            .collect::<Result<Vec<_>>>()?;
        Ok(Page::from_overfetch(items, page.limit, |c| {
            c.id.to_string()
        }))
    }

    /// A client of the workspace (`None`: any workspace, for the token endpoint).
    pub async fn get_oauth_client(
        &self,
        workspace: Option<&WorkspaceId>,
        id: &OAuthClientId,
    ) -> Result<OAuthClient> {
        let sql = format!(
            "SELECT {CLIENT_COLUMNS} FROM oauth_clients WHERE id = $1 AND ($2 IS NULL OR workspace_id = $2)"
        );
        let row: Option<ClientRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql)
                .bind(id.as_str())
                .bind(workspace.map(WorkspaceId::as_str))
                .fetch_optional(pool)
                .await?
        });
        row.ok_or(Error::NotFound)?.into_domain()
    }

    /// Applies a PATCH, with its audit trail; returns the client as changed.
    pub async fn update_oauth_client(
        &self,
        workspace: &WorkspaceId,
        id: &OAuthClientId,
        patch: &OAuthClientPatch,
        trail: &Trail,
    ) -> Result<OAuthClient> {
        let channel = self.announce_channel();
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let affected = sqlx::query(
                "UPDATE oauth_clients SET name = COALESCE($3, name), \
                   redirect_uris = COALESCE($4, redirect_uris), scopes = COALESCE($5, scopes), \
                   audiences = COALESCE($6, audiences), \
                   access_token_ttl_seconds = COALESCE($7, access_token_ttl_seconds), \
                   refresh_token_ttl_seconds = COALESCE($8, refresh_token_ttl_seconds), \
                   updated_at = $9, \
                   jwks = CASE WHEN $10 IS NOT NULL THEN $10 WHEN $11 IS NOT NULL THEN NULL ELSE jwks END, \
                   jwks_uri = CASE WHEN $11 IS NOT NULL THEN $11 WHEN $10 IS NOT NULL THEN NULL ELSE jwks_uri END \
                 WHERE id = $1 AND workspace_id = $2",
            )
            .bind(id.as_str())
            .bind(workspace.as_str())
            .bind(patch.name.as_deref())
            .bind(patch.redirect_uris.as_deref().map(json_text))
            .bind(patch.scopes.as_ref().map(scopes_text))
            .bind(patch.audiences.as_deref().map(json_text))
            .bind(patch.access_token_ttl_seconds)
            .bind(patch.refresh_token_ttl_seconds)
            .bind(Utc::now())
            .bind(patch.jwks.as_deref())
            .bind(patch.jwks_uri.as_deref())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if affected == 0 {
                return Err(Error::NotFound);
            }
            // Every node forgets the client it cached for its token endpoint. (Tokens
            // already issued keep their scopes until they expire.)
            announce!(tx, channel, Invalidation::OAuthClientChanged(id.to_string()));
            write_trail!(self, tx, trail);
            tx.commit().await?;
            Ok::<(), Error>(())
        })?;
        self.get_oauth_client(Some(workspace), id).await
    }

    /// Replaces the client's secret with `digest_hex`; the old one keeps working until
    /// `previous_until` (or stops at once when `None`).
    pub async fn rotate_oauth_client_secret(
        &self,
        workspace: &WorkspaceId,
        id: &OAuthClientId,
        digest_hex: &str,
        last_four: &str,
        previous_until: Option<DateTime<Utc>>,
        trail: &Trail,
    ) -> Result<OAuthClient> {
        let now = Utc::now();
        let channel = self.announce_channel();
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let affected = sqlx::query(
                "UPDATE oauth_clients SET \
                   previous_secret_digest = CASE WHEN $5 IS NULL THEN NULL ELSE secret_digest END, \
                   previous_secret_expires_at = $5, \
                   secret_digest = $3, secret_last_four = $4, secret_rotated_at = $6, updated_at = $6 \
                 WHERE id = $1 AND workspace_id = $2 AND client_type = 'confidential'",
            )
            .bind(id.as_str())
            .bind(workspace.as_str())
            .bind(digest_hex)
            .bind(last_four)
            .bind(previous_until)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if affected == 0 {
                return Err(Error::NotFound);
            }
            announce!(tx, channel, Invalidation::OAuthClientChanged(id.to_string()));
            write_trail!(self, tx, trail);
            tx.commit().await?;
            Ok::<(), Error>(())
        })?;
        self.get_oauth_client(Some(workspace), id).await
    }

    /// Deletes a client and revokes every token issued to it, announcing it to every node.
    pub async fn delete_oauth_client(
        &self,
        workspace: &WorkspaceId,
        id: &OAuthClientId,
        trail: &Trail,
    ) -> Result<u64> {
        let channel = self.announce_channel();
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let revoked = sqlx::query(
                "UPDATE tokens SET revoked_at = $2 WHERE revoked_at IS NULL AND id IN \
                 (SELECT token_id FROM oauth_tokens WHERE client_id = $1)",
            )
            .bind(id.as_str())
            .bind(Utc::now())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            let affected = sqlx::query("DELETE FROM oauth_clients WHERE id = $1 AND workspace_id = $2")
                .bind(id.as_str())
                .bind(workspace.as_str())
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if affected == 0 {
                return Err(Error::NotFound);
            }
            announce!(tx, channel, Invalidation::OAuthClient(id.to_string()));
            write_trail!(self, tx, trail);
            tx.commit().await?;
            Ok(revoked)
        })
    }

    /// Stores issued access tokens (rows of `tokens` linked to their clients), each with
    /// its audit trail, in one transaction: the token endpoint's group commit, so that
    /// issuance does not pay one commit (on SQLite one `fsync`) per token. Notes each
    /// client's use. A token whose client was deleted meanwhile is not stored: its place in
    /// the answer is `false`.
    pub async fn insert_oauth_access_tokens(
        &self,
        items: &[(Token, OAuthClientId, Trail)],
    ) -> Result<Vec<bool>> {
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            // One write per client of the batch (a batch is mostly one client's tokens),
            // first: on SQLite it takes the write lock the way every writer does, and it
            // proves the client still exists.
            let mut last_use: Vec<(&str, DateTime<Utc>)> = Vec::new();
            for (token, client, _) in items {
                match last_use.iter_mut().find(|(id, _)| *id == client.as_str()) {
                    Some((_, at)) => *at = (*at).max(token.created_at),
                    None => last_use.push((client.as_str(), token.created_at)),
                }
            }
            let mut existing = Vec::with_capacity(last_use.len());
            for (client, at) in last_use {
                let found = sqlx::query("UPDATE oauth_clients SET last_used_at = $2 WHERE id = $1")
                    .bind(client)
                    .bind(at)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if found > 0 {
                    existing.push(client);
                }
            }
            let mut stored = Vec::with_capacity(items.len());
            let mut issued = Vec::with_capacity(items.len());
            let mut records = Vec::new();
            for (token, client, trail) in items {
                if !existing.contains(&client.as_str()) {
                    stored.push(false);
                    continue;
                }
                // Only while the owner exists and is active (checked in the statement: a
                // failed statement would abort a PostgreSQL transaction, and with it the
                // other tokens of the batch).
                let inserted = bind_token!(sqlx::query(INSERT_TOKEN_IF_OWNER_ACTIVE), token)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if inserted == 0 {
                    stored.push(false);
                    continue;
                }
                issued.push((token.id.as_str(), client.as_str()));
                records.extend(trail.records.iter());
                stored.push(true);
            }
            // Which client each token was issued to: one statement for the batch.
            for chunk in issued.chunks(500) {
                let mut q = sqlx::QueryBuilder::new("INSERT INTO oauth_tokens (token_id, client_id) ");
                q.push_values(chunk, |mut row, (token, client)| {
                    row.push_bind(*token).push_bind(*client);
                });
                q.build().execute(&mut *tx).await?;
            }
            let key = self.audit_key()?;
            crate::audit::append_audit!(tx, key, records.into_iter());
            for (_, _, trail) in items {
                crate::audit::insert_events!(tx, trail.events.iter());
            }
            tx.commit().await?;
            Ok(stored)
        })
    }

    /// Revokes the access token with `digest_hex` if `client` was issued it (RFC 7009: a
    /// client revokes only its own tokens), or whichever client it was issued to when
    /// `client` is `None` (its holder revokes it). Returns the token when one was revoked now.
    pub async fn revoke_oauth_access_token(
        &self,
        client: Option<&OAuthClientId>,
        digest_hex: &str,
        trail: &Trail,
    ) -> Result<Option<Token>> {
        let channel = self.announce_channel();
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            // The write comes first: on SQLite it waits for the write lock like every
            // writer, where a read first would fail at once if another writer held it.
            let revoked = sqlx::query(
                "UPDATE tokens SET revoked_at = $3 WHERE digest = $1 AND kind = 'oauth_access' \
                 AND revoked_at IS NULL \
                 AND ($2 IS NULL OR id IN (SELECT token_id FROM oauth_tokens WHERE client_id = $2))",
            )
            .bind(digest_hex)
            .bind(client.map(OAuthClientId::as_str))
            .bind(Utc::now())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if revoked == 0 {
                return Ok(None);
            }
            let select = format!("SELECT {} FROM tokens t WHERE t.digest = $1", crate::tokens::TOKEN_COLUMNS);
            let row: crate::rows::TokenRow = sqlx::query_as(&select).bind(digest_hex).fetch_one(&mut *tx).await?;
            let token = row.into_domain()?;
            announce!(tx, channel, Invalidation::of_token(&token));
            write_trail!(self, tx, trail);
            tx.commit().await?;
            Ok(Some(token))
        })
    }
}

impl Store {
    /// Records the use of a client assertion's `jti` until it expires: `false` when it was
    /// used before (a replay).
    pub async fn use_assertion_jti(
        &self,
        client: &OAuthClientId,
        jti: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<bool> {
        with_pool!(self, pool => {
            Ok(sqlx::query(
                "INSERT INTO oauth_assertion_jtis (client_id, jti, expires_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (client_id, jti) DO NOTHING",
            )
            .bind(client.as_str())
            .bind(jti)
            .bind(expires_at)
            .execute(pool)
            .await?
            .rows_affected()
                == 1)
        })
    }

    /// Deletes OAuth access tokens that expired before `before` (in batches of 10 000 per
    /// call, so one pass never holds the write lock long). Returns how many.
    pub async fn purge_expired_oauth_tokens(&self, before: DateTime<Utc>) -> Result<u64> {
        with_pool!(self, pool => {
            Ok(sqlx::query(
                "DELETE FROM tokens WHERE id IN (SELECT id FROM tokens \
                 WHERE kind = 'oauth_access' AND expires_at < $1 LIMIT 10000)",
            )
            .bind(before)
            .execute(pool)
            .await?
            .rows_affected())
        })
    }
}

fn grant_text(grants: &[GrantType]) -> String {
    grants
        .iter()
        .map(|g| g.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}
