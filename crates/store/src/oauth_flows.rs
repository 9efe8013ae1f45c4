//! Refresh tokens (RFC 6749 §6, rotated on every use, in families) and device
//! authorizations (RFC 8628). Only digests of their secrets are stored.

use chrono::{DateTime, Utc};
use datastack_core::id::{OAuthClientId, PrincipalId, WorkspaceId};
use datastack_core::model::Token;
use datastack_core::scope::ScopeSet;

use crate::audit::{Trail, write_trail};
use crate::invalidation::Invalidation;
use crate::rows::{scopes_of, scopes_text};
use crate::tokens::bind_token;
use crate::{Error, Result, Store, announce, with_pool};

/// A refresh token as stored (never its secret).
#[derive(Debug, Clone)]
pub struct RefreshToken {
    /// `ort_…`.
    pub id: String,
    /// The family: every refresh token descending from one grant.
    pub family_id: String,
    /// The client it was issued to (only that client may use it).
    pub client_id: OAuthClientId,
    /// The principal its access tokens act as.
    pub subject_id: PrincipalId,
    /// The subject's workspace.
    pub workspace_id: WorkspaceId,
    /// SHA-256 of the secret, hex.
    pub digest_hex: String,
    /// The most its access tokens may carry.
    pub scopes: ScopeSet,
    /// The `aud` of its access tokens.
    pub audience: String,
    /// When it was issued.
    pub created_at: DateTime<Utc>,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
    /// When it was used (a refresh token works once; see the grace period).
    pub used_at: Option<DateTime<Utc>>,
    /// The id of the token its use issued.
    pub successor_id: Option<String>,
    /// When it (with its whole family) was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
}

const REFRESH_COLUMNS: &str = "id, family_id, client_id, subject_id, workspace_id, digest, scopes, \
     audience, created_at, expires_at, used_at, successor_id, revoked_at";

#[derive(sqlx::FromRow)]
struct RefreshRow {
    id: String,
    family_id: String,
    client_id: String,
    subject_id: String,
    workspace_id: String,
    digest: String,
    scopes: String,
    audience: String,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    used_at: Option<DateTime<Utc>>,
    successor_id: Option<String>,
    revoked_at: Option<DateTime<Utc>>,
}

impl RefreshRow {
    fn into_domain(self) -> Result<RefreshToken> {
        Ok(RefreshToken {
            scopes: scopes_of(&self.scopes)?,
            id: self.id,
            family_id: self.family_id,
            client_id: OAuthClientId::from_trusted(self.client_id),
            subject_id: PrincipalId::from_trusted(self.subject_id),
            workspace_id: WorkspaceId::from_trusted(self.workspace_id),
            digest_hex: self.digest,
            audience: self.audience,
            created_at: self.created_at,
            expires_at: self.expires_at,
            used_at: self.used_at,
            successor_id: self.successor_id,
            revoked_at: self.revoked_at,
        })
    }
}

/// Where a device authorization stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceStatus {
    /// Waiting for a user.
    Pending,
    /// A user approved it; the device has not collected its token yet.
    Approved,
    /// A user denied it.
    Denied,
    /// The device collected its token.
    Consumed,
}

impl DeviceStatus {
    fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Pending => "pending",
            DeviceStatus::Approved => "approved",
            DeviceStatus::Denied => "denied",
            DeviceStatus::Consumed => "consumed",
        }
    }

    fn from_name(s: &str) -> Result<Self> {
        Ok(match s {
            "pending" => DeviceStatus::Pending,
            "approved" => DeviceStatus::Approved,
            "denied" => DeviceStatus::Denied,
            "consumed" => DeviceStatus::Consumed,
            other => return Err(Error::Corrupt(format!("device status {other}"))),
        })
    }
}

/// A device authorization as stored (never its device code: only digests).
#[derive(Debug, Clone)]
pub struct DeviceAuthorization {
    /// `odv_…`.
    pub id: String,
    /// The client that asked.
    pub client_id: OAuthClientId,
    /// SHA-256 of the device code.
    pub device_digest_hex: String,
    /// SHA-256 of the normalised user code.
    pub user_code_digest_hex: String,
    /// The scopes asked for.
    pub scopes: ScopeSet,
    /// The `aud` of the token.
    pub audience: String,
    /// Where it stands.
    pub status: DeviceStatus,
    /// Who approved (or denied) it.
    pub subject_id: Option<PrincipalId>,
    /// The approver's workspace.
    pub workspace_id: Option<WorkspaceId>,
    /// What the approver granted (within what was asked and what the approver holds).
    pub granted_scopes: Option<ScopeSet>,
    /// The least time between two polls; grows by 5 s at each `slow_down`.
    pub interval_seconds: i64,
    /// When the device last polled.
    pub last_polled_at: Option<DateTime<Utc>>,
    /// When it was asked for.
    pub created_at: DateTime<Utc>,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
}

const DEVICE_COLUMNS: &str = "id, client_id, device_digest, user_code_digest, scopes, audience, \
     status, subject_id, workspace_id, granted_scopes, interval_seconds, last_polled_at, \
     created_at, expires_at";

#[derive(sqlx::FromRow)]
struct DeviceRow {
    id: String,
    client_id: String,
    device_digest: String,
    user_code_digest: String,
    scopes: String,
    audience: String,
    status: String,
    subject_id: Option<String>,
    workspace_id: Option<String>,
    granted_scopes: Option<String>,
    interval_seconds: i64,
    last_polled_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
}

impl DeviceRow {
    fn into_domain(self) -> Result<DeviceAuthorization> {
        Ok(DeviceAuthorization {
            scopes: scopes_of(&self.scopes)?,
            granted_scopes: self.granted_scopes.as_deref().map(scopes_of).transpose()?,
            status: DeviceStatus::from_name(&self.status)?,
            id: self.id,
            client_id: OAuthClientId::from_trusted(self.client_id),
            device_digest_hex: self.device_digest,
            user_code_digest_hex: self.user_code_digest,
            audience: self.audience,
            subject_id: self.subject_id.map(PrincipalId::from_trusted),
            workspace_id: self.workspace_id.map(WorkspaceId::from_trusted),
            interval_seconds: self.interval_seconds,
            last_polled_at: self.last_polled_at,
            created_at: self.created_at,
            expires_at: self.expires_at,
        })
    }
}

/// What a device's poll found (the store has recorded the poll).
#[derive(Debug)]
pub enum DevicePoll {
    /// No live authorization of this client has that device code.
    Unknown,
    /// It expired.
    Expired,
    /// Still waiting; `too_fast` when the device polled before its interval was over (the
    /// interval has then grown by 5 s).
    Pending {
        /// Whether to answer `slow_down`.
        too_fast: bool,
    },
    /// A user denied it.
    Denied,
    /// The token was collected already.
    Consumed,
    /// Approved: the token may be issued.
    Approved(Box<DeviceAuthorization>),
}

/// How a refresh token's rotation went.
#[derive(Debug, PartialEq, Eq)]
pub enum Rotation {
    /// The successor and the access token are stored.
    Rotated,
    /// Another request used the parent first (or it was revoked meanwhile): read it again.
    Raced,
    /// The subject is no longer active (or was deleted).
    SubjectGone,
}

/// Inserts an access token only while its owner is active.
const INSERT_ACCESS_IF_OWNER_ACTIVE: &str = "INSERT INTO tokens \
     (id, workspace_id, owner_id, label, digest, last_four, scopes, created_at, expires_at, kind) \
     SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 \
     WHERE EXISTS (SELECT 1 FROM principals WHERE id = $3 AND status = 'active')";

macro_rules! insert_refresh {
    ($tx:expr, $r:expr) => {
        sqlx::query(
            "INSERT INTO oauth_refresh_tokens (id, family_id, client_id, subject_id, workspace_id, \
             digest, scopes, audience, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&$r.id)
        .bind(&$r.family_id)
        .bind($r.client_id.as_str())
        .bind($r.subject_id.as_str())
        .bind($r.workspace_id.as_str())
        .bind(&$r.digest_hex)
        .bind(scopes_text(&$r.scopes))
        .bind(&$r.audience)
        .bind($r.created_at)
        .bind($r.expires_at)
        .execute(&mut *$tx)
        .await?
    };
}

/// Stores an access token of `family` (when the owner is active); `false` when it is not.
macro_rules! insert_access {
    ($tx:expr, $token:expr, $client:expr, $family:expr) => {{
        let inserted = bind_token!(sqlx::query(INSERT_ACCESS_IF_OWNER_ACTIVE), $token)
            .execute(&mut *$tx)
            .await?
            .rows_affected();
        if inserted == 1 {
            sqlx::query(
                "INSERT INTO oauth_tokens (token_id, client_id, family_id) VALUES ($1, $2, $3)",
            )
            .bind($token.id.as_str())
            .bind($client.as_str())
            .bind($family)
            .execute(&mut *$tx)
            .await?;
            sqlx::query("UPDATE oauth_clients SET last_used_at = $2 WHERE id = $1")
                .bind($client.as_str())
                .bind($token.created_at)
                .execute(&mut *$tx)
                .await?;
        }
        inserted == 1
    }};
}

impl Store {
    /// The refresh token with `digest_hex`, if there is one.
    pub async fn get_refresh_token(&self, digest_hex: &str) -> Result<Option<RefreshToken>> {
        let sql = format!("SELECT {REFRESH_COLUMNS} FROM oauth_refresh_tokens WHERE digest = $1");
        let row: Option<RefreshRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql).bind(digest_hex).fetch_optional(pool).await?
        });
        row.map(RefreshRow::into_domain).transpose()
    }

    /// The refresh token with id `id`, if there is one.
    pub async fn get_refresh_token_by_id(&self, id: &str) -> Result<Option<RefreshToken>> {
        let sql = format!("SELECT {REFRESH_COLUMNS} FROM oauth_refresh_tokens WHERE id = $1");
        let row: Option<RefreshRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql).bind(id).fetch_optional(pool).await?
        });
        row.map(RefreshRow::into_domain).transpose()
    }

    /// Uses the refresh token `parent`: marks it used (only if nobody did first and it is
    /// not revoked), stores its `successor` and the access token issued with it, in one
    /// transaction with the audit trail.
    pub async fn rotate_refresh_token(
        &self,
        parent_id: &str,
        successor: &RefreshToken,
        access: &Token,
        trail: &Trail,
    ) -> Result<Rotation> {
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let used = sqlx::query(
                "UPDATE oauth_refresh_tokens SET used_at = $2, successor_id = $3 \
                 WHERE id = $1 AND used_at IS NULL AND revoked_at IS NULL",
            )
            .bind(parent_id)
            .bind(access.created_at)
            .bind(&successor.id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if used == 0 {
                return Ok(Rotation::Raced);
            }
            if !insert_access!(tx, access, successor.client_id, &successor.family_id) {
                // Dropping the transaction rolls the use back.
                return Ok(Rotation::SubjectGone);
            }
            insert_refresh!(tx, successor);
            write_trail!(self, tx, trail);
            tx.commit().await?;
            Ok(Rotation::Rotated)
        })
    }

    /// Stores an access token of a refresh-token family without rotating (a concurrent
    /// refresh inside the grace period gets the successor already issued). `false` when
    /// the subject is no longer active or the family was revoked meanwhile.
    pub async fn insert_family_access_token(
        &self,
        family_id: &str,
        client: &OAuthClientId,
        access: &Token,
        trail: &Trail,
    ) -> Result<bool> {
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            // A write first (the write lock on SQLite), which also proves the family live.
            let live = sqlx::query(
                "UPDATE oauth_clients SET last_used_at = $2 WHERE id = $1 AND NOT EXISTS \
                 (SELECT 1 FROM oauth_refresh_tokens WHERE family_id = $3 AND revoked_at IS NOT NULL)",
            )
            .bind(client.as_str())
            .bind(access.created_at)
            .bind(family_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if live == 0 || !insert_access!(tx, access, client, family_id) {
                return Ok(false);
            }
            write_trail!(self, tx, trail);
            tx.commit().await?;
            Ok(true)
        })
    }

    /// Revokes a whole refresh-token family: every refresh token of it and every access
    /// token issued from it, announced to every node. Returns the digests of the access
    /// tokens revoked now (for this node's caches); the trail is written whether or not
    /// anything was left to revoke.
    pub async fn revoke_refresh_family(
        &self,
        family_id: &str,
        trail: &Trail,
    ) -> Result<Vec<String>> {
        let channel = self.announce_channel();
        let now = Utc::now();
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "UPDATE oauth_refresh_tokens SET revoked_at = $2 WHERE family_id = $1 AND revoked_at IS NULL",
            )
            .bind(family_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let digests: Vec<(String,)> = sqlx::query_as(
                "SELECT digest FROM tokens WHERE revoked_at IS NULL AND id IN \
                 (SELECT token_id FROM oauth_tokens WHERE family_id = $1)",
            )
            .bind(family_id)
            .fetch_all(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE tokens SET revoked_at = $2 WHERE revoked_at IS NULL AND id IN \
                 (SELECT token_id FROM oauth_tokens WHERE family_id = $1)",
            )
            .bind(family_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let digests: Vec<String> = digests.into_iter().map(|(d,)| d).collect();
            for d in &digests {
                announce!(tx, channel, Invalidation::Token(d.clone()));
            }
            write_trail!(self, tx, trail);
            tx.commit().await?;
            Ok(digests)
        })
    }

    /// Stores a new device authorization, unless its client has `max_pending` live ones
    /// already (`false`).
    pub async fn insert_device_authorization(
        &self,
        d: &DeviceAuthorization,
        max_pending: i64,
        trail: &Trail,
    ) -> Result<bool> {
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let inserted = sqlx::query(
                "INSERT INTO oauth_device_codes (id, client_id, device_digest, user_code_digest, \
                 scopes, audience, status, interval_seconds, created_at, expires_at) \
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 \
                 WHERE (SELECT COUNT(*) FROM oauth_device_codes WHERE client_id = $2 AND expires_at > $9) < $11",
            )
            .bind(&d.id)
            .bind(d.client_id.as_str())
            .bind(&d.device_digest_hex)
            .bind(&d.user_code_digest_hex)
            .bind(scopes_text(&d.scopes))
            .bind(&d.audience)
            .bind(d.status.as_str())
            .bind(d.interval_seconds)
            .bind(d.created_at)
            .bind(d.expires_at)
            .bind(max_pending)
            .execute(&mut *tx)
            .await
            .map_err(|e| match e {
                sqlx::Error::Database(ref db) if db.is_unique_violation() => {
                    Error::Conflict("a user code collided; ask again".into())
                }
                other => other.into(),
            })?
            .rows_affected();
            if inserted == 0 {
                return Ok(false);
            }
            write_trail!(self, tx, trail);
            tx.commit().await?;
            Ok(true)
        })
    }

    /// The live (pending, unexpired) device authorization a user code names.
    pub async fn find_pending_device(
        &self,
        user_code_digest_hex: &str,
    ) -> Result<Option<DeviceAuthorization>> {
        let sql = format!(
            "SELECT {DEVICE_COLUMNS} FROM oauth_device_codes WHERE user_code_digest = $1 \
             AND status = 'pending' AND expires_at > $2"
        );
        let row: Option<DeviceRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql)
                .bind(user_code_digest_hex)
                .bind(Utc::now())
                .fetch_optional(pool)
                .await?
        });
        row.map(DeviceRow::into_domain).transpose()
    }

    /// Records a user's decision on a pending device authorization: approved for
    /// `subject` with `granted` scopes, or denied (`granted` is `None`). `false` if it is
    /// no longer pending.
    pub async fn decide_device(
        &self,
        id: &str,
        subject: &PrincipalId,
        workspace: &WorkspaceId,
        granted: Option<&ScopeSet>,
        trail: &Trail,
    ) -> Result<bool> {
        let status = if granted.is_some() {
            DeviceStatus::Approved
        } else {
            DeviceStatus::Denied
        };
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let changed = sqlx::query(
                "UPDATE oauth_device_codes SET status = $2, subject_id = $3, workspace_id = $4, \
                 granted_scopes = $5 WHERE id = $1 AND status = 'pending' AND expires_at > $6",
            )
            .bind(id)
            .bind(status.as_str())
            .bind(subject.as_str())
            .bind(workspace.as_str())
            .bind(granted.map(scopes_text))
            .bind(Utc::now())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if changed == 0 {
                return Ok(false);
            }
            write_trail!(self, tx, trail);
            tx.commit().await?;
            Ok(true)
        })
    }

    /// A device's poll with its device code: records it, and says what to answer.
    pub async fn poll_device(
        &self,
        client: &OAuthClientId,
        device_digest_hex: &str,
        now: DateTime<Utc>,
    ) -> Result<DevicePoll> {
        let sql = format!(
            "SELECT {DEVICE_COLUMNS} FROM oauth_device_codes WHERE device_digest = $1 AND client_id = $2"
        );
        let row: Option<DeviceRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql)
                .bind(device_digest_hex)
                .bind(client.as_str())
                .fetch_optional(pool)
                .await?
        });
        let Some(d) = row.map(DeviceRow::into_domain).transpose()? else {
            return Ok(DevicePoll::Unknown);
        };
        match d.status {
            DeviceStatus::Consumed => return Ok(DevicePoll::Consumed),
            DeviceStatus::Denied => return Ok(DevicePoll::Denied),
            _ if d.expires_at <= now => return Ok(DevicePoll::Expired),
            DeviceStatus::Approved => return Ok(DevicePoll::Approved(Box::new(d))),
            DeviceStatus::Pending => {}
        }
        // RFC 8628 §3.5: a poll before the interval is over is answered `slow_down`, and
        // the interval grows by 5 seconds for the rest of the flow.
        let too_fast = d
            .last_polled_at
            .is_some_and(|last| now < last + chrono::Duration::seconds(d.interval_seconds));
        with_pool!(self, pool => {
            sqlx::query(
                "UPDATE oauth_device_codes SET last_polled_at = $2, \
                 interval_seconds = interval_seconds + $3 WHERE id = $1",
            )
            .bind(&d.id)
            .bind(now)
            .bind(if too_fast { 5_i64 } else { 0 })
            .execute(pool)
            .await?;
        });
        Ok(DevicePoll::Pending { too_fast })
    }

    /// Collects an approved device authorization's token: marks it consumed (only once)
    /// and stores the access token and, when given, the first refresh token of a new
    /// family, in one transaction. `false` when it was collected already or the subject
    /// is no longer active.
    pub async fn redeem_device(
        &self,
        id: &str,
        access: &Token,
        client: &OAuthClientId,
        family_id: &str,
        refresh: Option<&RefreshToken>,
        trail: &Trail,
    ) -> Result<bool> {
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let consumed = sqlx::query(
                "UPDATE oauth_device_codes SET status = 'consumed' WHERE id = $1 AND status = 'approved'",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if consumed == 0 || !insert_access!(tx, access, client, family_id) {
                return Ok(false);
            }
            if let Some(r) = refresh {
                insert_refresh!(tx, r);
            }
            write_trail!(self, tx, trail);
            tx.commit().await?;
            Ok(true)
        })
    }

    /// Deletes refresh tokens, device authorizations and used client-assertion ids that
    /// expired before `before`
    /// (in batches, like the access tokens). Returns how many.
    pub async fn purge_expired_oauth_grants(&self, before: DateTime<Utc>) -> Result<u64> {
        with_pool!(self, pool => {
            let refresh = sqlx::query(
                "DELETE FROM oauth_refresh_tokens WHERE id IN (SELECT id FROM oauth_refresh_tokens \
                 WHERE expires_at < $1 LIMIT 10000)",
            )
            .bind(before)
            .execute(pool)
            .await?
            .rows_affected();
            let devices = sqlx::query(
                "DELETE FROM oauth_device_codes WHERE id IN (SELECT id FROM oauth_device_codes \
                 WHERE expires_at < $1 LIMIT 10000)",
            )
            .bind(before)
            .execute(pool)
            .await?
            .rows_affected();
            let jtis = sqlx::query(
                "DELETE FROM oauth_assertion_jtis WHERE expires_at < $1",
            )
            .bind(before)
            .execute(pool)
            .await?
            .rows_affected();
            Ok(refresh + devices + jtis)
        })
    }
}
