//! Scoped API keys: rows of the `tokens` table (kind `api_key`) with their policy in
//! `api_keys`, and their metered spend per period in `api_key_usage`.

use chrono::{DateTime, Utc};
use datastack_core::apikey::{ApiKeyPolicy, PreviousSecret, SpendLimit, SpendPeriod};
use datastack_core::id::{PrincipalId, TokenId, WorkspaceId};
use datastack_core::model::Token;

use crate::audit::{Trail, write_trail};
use crate::invalidation::Invalidation;
use crate::rows::TokenRow;
use crate::tokens::{
    INSERT_TOKEN_IF_CALLER_VALID, TOKEN_COLUMNS, bind_token, owner_gone_is_not_found,
};
use crate::{Error, Page, PageRequest, Result, Store, announce, with_pool};

/// The `api_keys` columns joined onto a credential lookup (all null for a token).
pub(crate) const JOINED_KEY_COLUMNS: &str = "k.rate_limit_per_minute AS k_rate_limit_per_minute, \
     k.spend_limit_units AS k_spend_limit_units, k.spend_period AS k_spend_period, \
     k.allowed_ip_ranges AS k_allowed_ip_ranges, k.metadata AS k_metadata, \
     k.rotation_interval_days AS k_rotation_interval_days, k.rotated_at AS k_rotated_at, \
     k.rotation_due_at AS k_rotation_due_at, \
     k.previous_last_four AS k_previous_last_four, k.previous_expires_at AS k_previous_expires_at";

/// An API key's policy as joined onto a token row.
#[derive(sqlx::FromRow)]
pub(crate) struct JoinedKeyRow {
    k_rate_limit_per_minute: Option<i64>,
    k_spend_limit_units: Option<i64>,
    k_spend_period: Option<String>,
    k_allowed_ip_ranges: Option<String>,
    k_metadata: Option<String>,
    k_rotation_interval_days: Option<i64>,
    k_rotated_at: Option<DateTime<Utc>>,
    k_rotation_due_at: Option<DateTime<Utc>>,
    k_previous_last_four: Option<String>,
    k_previous_expires_at: Option<DateTime<Utc>>,
}

fn corrupt(what: &str) -> Error {
    Error::Corrupt(format!("api key {what}"))
}

impl JoinedKeyRow {
    /// The policy, or `None` for a token (no `api_keys` row).
    pub(crate) fn into_policy(self) -> Result<Option<ApiKeyPolicy>> {
        let (Some(metadata), Some(rotated_at)) = (self.k_metadata, self.k_rotated_at) else {
            return Ok(None);
        };
        let metadata = match serde_json::from_str(&metadata) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => return Err(corrupt("metadata")),
        };
        let spend_limit = match (self.k_spend_limit_units, self.k_spend_period) {
            (Some(units), Some(period)) => Some(SpendLimit {
                units: u64::try_from(units).map_err(|_| corrupt("spend limit"))?,
                period: SpendPeriod::parse(&period).map_err(|_| corrupt("spend period"))?,
            }),
            _ => None,
        };
        let allowed_ip_ranges = match self.k_allowed_ip_ranges {
            None => None,
            Some(text) => {
                let list: Vec<String> =
                    serde_json::from_str(&text).map_err(|_| corrupt("ranges"))?;
                Some(datastack_core::apikey::ip_ranges(&list).map_err(|_| corrupt("ranges"))?)
            }
        };
        let previous = match (self.k_previous_last_four, self.k_previous_expires_at) {
            (Some(last_four), Some(expires_at)) => Some(PreviousSecret {
                last_four,
                expires_at,
            }),
            _ => None,
        };
        Ok(Some(ApiKeyPolicy {
            rate_limit: self
                .k_rate_limit_per_minute
                .map(|r| u32::try_from(r).map_err(|_| corrupt("rate limit")))
                .transpose()?,
            spend_limit,
            allowed_ip_ranges,
            metadata,
            rotation_interval_days: self
                .k_rotation_interval_days
                .map(|d| u32::try_from(d).map_err(|_| corrupt("rotation interval")))
                .transpose()?,
            rotated_at,
            rotation_due_at: self.k_rotation_due_at,
            previous,
        }))
    }
}

/// An API key as stored: the credential and its policy.
#[derive(Debug, Clone)]
pub struct StoredApiKey {
    /// The credential (id `key_…`, name in `label`).
    pub token: Token,
    /// Its limits, ranges, metadata, rotation.
    pub policy: ApiKeyPolicy,
    /// The principal who created it.
    pub created_by: Option<String>,
}

#[derive(sqlx::FromRow)]
struct StoredKeyRow {
    #[sqlx(flatten)]
    token: TokenRow,
    #[sqlx(flatten)]
    key: JoinedKeyRow,
    k_created_by: Option<String>,
}

impl StoredKeyRow {
    fn into_domain(self) -> Result<StoredApiKey> {
        Ok(StoredApiKey {
            token: self.token.into_domain()?,
            policy: self.key.into_policy()?.ok_or_else(|| corrupt("policy"))?,
            created_by: self.k_created_by,
        })
    }
}

/// The lifecycle state a list can filter on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiKeyStatus {
    /// Usable, and not due for rotation.
    Active,
    /// Usable, but its rotation policy asks for a new secret.
    RotationDue,
    /// Past its expiry.
    Expired,
    /// Revoked.
    Revoked,
}

impl ApiKeyStatus {
    /// The key's status at `now`.
    pub fn of(key: &StoredApiKey, now: DateTime<Utc>) -> Self {
        if key.token.revoked_at.is_some() {
            ApiKeyStatus::Revoked
        } else if key.token.expires_at.is_some_and(|e| e <= now) {
            ApiKeyStatus::Expired
        } else if key.policy.rotation_due_at().is_some_and(|d| d <= now) {
            ApiKeyStatus::RotationDue
        } else {
            ApiKeyStatus::Active
        }
    }

    /// The public name.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiKeyStatus::Active => "active",
            ApiKeyStatus::RotationDue => "rotation_due",
            ApiKeyStatus::Expired => "expired",
            ApiKeyStatus::Revoked => "revoked",
        }
    }

    /// Reads a public name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(ApiKeyStatus::Active),
            "rotation_due" => Some(ApiKeyStatus::RotationDue),
            "expired" => Some(ApiKeyStatus::Expired),
            "revoked" => Some(ApiKeyStatus::Revoked),
            _ => None,
        }
    }
}

/// The changes an update makes; `None` leaves a field as it is, `Some(None)` clears it.
#[derive(Debug, Clone, Default)]
pub struct ApiKeyPatch {
    /// A new name.
    pub name: Option<String>,
    /// A new rate limit, or none (the server default).
    pub rate_limit: Option<Option<u32>>,
    /// A new spend limit, or none.
    pub spend_limit: Option<Option<SpendLimit>>,
    /// New ranges, or none (anywhere).
    pub allowed_ip_ranges: Option<Option<Vec<ipnet::IpNet>>>,
    /// New metadata.
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// A new rotation interval, or none.
    pub rotation_interval_days: Option<Option<u32>>,
}

/// A key's spend in one period, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpendRecord {
    /// Units used.
    pub units: i64,
    /// Whether the warning was sent for this period.
    pub warned: bool,
    /// Whether the limit-reached event was sent for this period.
    pub reached: bool,
}

/// Units charged to a key on one node since the last flush.
#[derive(Debug, Clone)]
pub struct SpendDelta {
    /// The key.
    pub key: TokenId,
    /// The period kind.
    pub period: SpendPeriod,
    /// The period's start.
    pub period_start: DateTime<Utc>,
    /// Units to add (negative when reported costs were below the reservation).
    pub units: i64,
}

/// A spend threshold crossed once per key and period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpendThreshold {
    /// The warning percentage.
    Warning,
    /// The limit.
    Reached,
}

fn ranges_text(ranges: Option<&Vec<ipnet::IpNet>>) -> Option<String> {
    ranges.map(|r| {
        serde_json::Value::from(r.iter().map(ToString::to_string).collect::<Vec<_>>()).to_string()
    })
}

fn metadata_text(m: &serde_json::Map<String, serde_json::Value>) -> String {
    serde_json::Value::Object(m.clone()).to_string()
}

/// Units, warned at, reached at.
type SpendRow = (i64, Option<DateTime<Utc>>, Option<DateTime<Utc>>);

const KEY_SELECT: &str = "k.created_by AS k_created_by FROM tokens t \
     JOIN api_keys k ON k.token_id = t.id";

/// Writes an update's name and policy inside the transaction `$tx` (a macro: the same
/// statements on either engine's transaction type).
macro_rules! write_key_update {
    ($tx:ident, $workspace:expr, $id:expr, $name:expr, $current:expr, $policy:expr) => {{
        sqlx::query("UPDATE tokens SET label = $1 WHERE id = $2 AND workspace_id = $3")
            .bind($name)
            .bind($id.as_str())
            .bind($workspace.as_str())
            .execute(&mut *$tx)
            .await?;
        // The due date follows the interval; a new due date gets a new notice.
        let due_changed = $policy.rotation_due_at() != $current.policy.rotation_due_at();
        sqlx::query(
            "UPDATE api_keys SET rate_limit_per_minute = $1, spend_limit_units = $2, \
             spend_period = $3, allowed_ip_ranges = $4, metadata = $5, \
             rotation_interval_days = $6, rotation_due_at = $7, \
             rotation_due_notified_at = CASE WHEN $8 THEN NULL ELSE rotation_due_notified_at END \
             WHERE token_id = $9",
        )
        .bind($policy.rate_limit.map(i64::from))
        .bind($policy.spend_limit.map(|l| l.units as i64))
        .bind($policy.spend_limit.map(|l| l.period.as_str()))
        .bind(ranges_text($policy.allowed_ip_ranges.as_ref()))
        .bind(metadata_text(&$policy.metadata))
        .bind($policy.rotation_interval_days.map(i64::from))
        .bind($policy.rotation_due_at())
        .bind(due_changed)
        .bind($id.as_str())
        .execute(&mut *$tx)
        .await?;
    }};
}

impl Store {
    /// Stores a new API key created by the credential `creator`, only if that credential
    /// is still valid when the insert runs (`CallerRevoked` otherwise), with its trail.
    pub async fn insert_api_key(
        &self,
        token: &Token,
        policy: &ApiKeyPolicy,
        creator: &TokenId,
        created_by: &PrincipalId,
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
                return Err(Error::CallerRevoked);
            }
            sqlx::query(
                "INSERT INTO api_keys (token_id, rate_limit_per_minute, spend_limit_units, \
                 spend_period, allowed_ip_ranges, metadata, rotation_interval_days, rotated_at, \
                 rotation_due_at, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(token.id.as_str())
            .bind(policy.rate_limit.map(i64::from))
            .bind(policy.spend_limit.map(|l| l.units as i64))
            .bind(policy.spend_limit.map(|l| l.period.as_str()))
            .bind(ranges_text(policy.allowed_ip_ranges.as_ref()))
            .bind(metadata_text(&policy.metadata))
            .bind(policy.rotation_interval_days.map(i64::from))
            .bind(policy.rotated_at)
            .bind(policy.rotation_due_at())
            .bind(created_by.as_str())
            .execute(&mut *tx)
            .await?;
            write_trail!(self, tx, trail);
            tx.commit().await?;
            Ok(())
        })
    }

    /// An API key of `workspace` by id, revoked or not.
    pub async fn get_api_key(
        &self,
        workspace: &WorkspaceId,
        id: &TokenId,
    ) -> Result<Option<StoredApiKey>> {
        let sql = format!(
            "SELECT {TOKEN_COLUMNS}, {JOINED_KEY_COLUMNS}, {KEY_SELECT} \
             WHERE t.id = $1 AND t.workspace_id = $2 AND t.kind = 'api_key'"
        );
        let row: Option<StoredKeyRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql)
                .bind(id.as_str())
                .bind(workspace.as_str())
                .fetch_optional(pool)
                .await?
        });
        row.map(StoredKeyRow::into_domain).transpose()
    }

    /// API keys of `workspace` (of `owner` when given, in `status` when given), by id.
    pub async fn list_api_keys(
        &self,
        workspace: &WorkspaceId,
        owner: Option<&PrincipalId>,
        status: Option<ApiKeyStatus>,
        page: &PageRequest,
    ) -> Result<Page<StoredApiKey>> {
        let status_sql = match status {
            None => "",
            Some(ApiKeyStatus::Revoked) => "AND t.revoked_at IS NOT NULL",
            Some(ApiKeyStatus::Expired) => {
                "AND t.revoked_at IS NULL AND t.expires_at IS NOT NULL AND t.expires_at <= $5"
            }
            Some(ApiKeyStatus::RotationDue) => {
                "AND t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > $5) \
                 AND k.rotation_due_at IS NOT NULL AND k.rotation_due_at <= $5"
            }
            Some(ApiKeyStatus::Active) => {
                "AND t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > $5) \
                 AND (k.rotation_due_at IS NULL OR k.rotation_due_at > $5)"
            }
        };
        let sql = format!(
            "SELECT {TOKEN_COLUMNS}, {JOINED_KEY_COLUMNS}, {KEY_SELECT} \
             WHERE t.workspace_id = $1 AND t.kind = 'api_key' AND ($2 IS NULL OR t.owner_id = $2) \
               AND t.id > $3 {status_sql} ORDER BY t.id LIMIT $4"
        );
        let now = Utc::now();
        let rows: Vec<StoredKeyRow> = with_pool!(self, pool => {
            let q = sqlx::query_as(&sql)
                .bind(workspace.as_str())
                .bind(owner.map(PrincipalId::as_str))
                .bind(page.after.as_deref().unwrap_or(""))
                .bind(i64::from(page.limit) + 1);
            let q = if status.is_some_and(|s| s != ApiKeyStatus::Revoked) { q.bind(now) } else { q };
            q.fetch_all(pool).await?
        });
        let items = rows
            .into_iter()
            .map(StoredKeyRow::into_domain)
            .collect::<Result<Vec<_>>>()?;
        Ok(Page::from_overfetch(items, page.limit, |k| {
            k.token.id.to_string()
        }))
    }

    /// The policies of the API keys among `ids` (for the access review).
    pub async fn api_key_policies(
        &self,
        ids: &[String],
    ) -> Result<std::collections::HashMap<String, StoredApiKey>> {
        let keys: Vec<&String> = ids
            .iter()
            .filter(|i| i.starts_with(TokenId::API_KEY_PREFIX))
            .collect();
        if keys.is_empty() {
            return Ok(std::collections::HashMap::new());
        }
        // One query for the page: `t.id IN ($1, …, $n)`.
        let placeholders: Vec<String> = (1..=keys.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT {TOKEN_COLUMNS}, {JOINED_KEY_COLUMNS}, {KEY_SELECT} WHERE t.id IN ({})",
            placeholders.join(", ")
        );
        let rows: Vec<StoredKeyRow> = with_pool!(self, pool => {
            let mut query = sqlx::query_as(&sql);
            for id in &keys {
                query = query.bind(id.as_str());
            }
            query.fetch_all(pool).await?
        });
        rows.into_iter()
            .map(|row| {
                let key = row.into_domain()?;
                Ok((key.token.id.to_string(), key))
            })
            .collect()
    }

    /// Applies `patch` to an unrevoked key of `workspace` (owned by `owner` when given),
    /// with its trail, and announces it. Returns the key as changed.
    pub async fn update_api_key(
        &self,
        workspace: &WorkspaceId,
        id: &TokenId,
        owner: Option<&PrincipalId>,
        patch: &ApiKeyPatch,
        trail: &Trail,
    ) -> Result<StoredApiKey> {
        let channel = self.announce_channel();
        let select = format!(
            "SELECT {TOKEN_COLUMNS}, {JOINED_KEY_COLUMNS}, {KEY_SELECT} \
             WHERE t.id = $1 AND t.workspace_id = $2 AND t.kind = 'api_key'"
        );
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            // Lock the key's row first (and, on SQLite, take the write lock before reading),
            // so a concurrent update or rotation cannot be undone by this one.
            sqlx::query("UPDATE api_keys SET rotated_at = rotated_at WHERE token_id = $1")
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
            let row: Option<StoredKeyRow> = sqlx::query_as(&select)
                .bind(id.as_str())
                .bind(workspace.as_str())
                .fetch_optional(&mut *tx)
                .await?;
            let current = row
                .map(StoredKeyRow::into_domain)
                .transpose()?
                .filter(|k| k.token.revoked_at.is_none())
                .filter(|k| owner.is_none_or(|o| *o == k.token.owner_id))
                .ok_or(Error::NotFound)?;
            let (name, policy) = patch_policy(&current, patch);
            write_key_update!(tx, workspace, id, &name, current, policy);
            announce!(tx, channel, Invalidation::Credential(id.to_string()));
            write_trail!(self, tx, trail);
            tx.commit().await?;
            let mut token = current.token;
            token.label = name;
            Ok(StoredApiKey {
                token,
                policy,
                created_by: current.created_by,
            })
        })
    }
}

/// The name and policy `patch` makes of `current`.
fn patch_policy(current: &StoredApiKey, patch: &ApiKeyPatch) -> (String, ApiKeyPolicy) {
    let mut policy = current.policy.clone();
    if let Some(r) = patch.rate_limit {
        policy.rate_limit = r;
    }
    if let Some(l) = patch.spend_limit {
        policy.spend_limit = l;
    }
    if let Some(r) = &patch.allowed_ip_ranges {
        policy.allowed_ip_ranges = r.clone();
    }
    if let Some(m) = &patch.metadata {
        policy.metadata = m.clone();
    }
    if let Some(d) = patch.rotation_interval_days {
        policy.rotation_interval_days = d;
        policy.rotation_due_at = policy.due_after(d);
    }
    let name = patch.name.clone().unwrap_or(current.token.label.clone());
    (name, policy)
}

impl Store {
    /// Gives an unrevoked key of `workspace` (owned by `owner` when given) a new secret:
    /// the current one becomes the previous, valid until `previous_until` (an older
    /// previous secret stops at once). Announced to every node, with the trail.
    #[allow(clippy::too_many_arguments)]
    pub async fn rotate_api_key(
        &self,
        workspace: &WorkspaceId,
        id: &TokenId,
        owner: Option<&PrincipalId>,
        new_digest: &str,
        new_last_four: &str,
        previous_until: DateTime<Utc>,
        trail: &Trail,
    ) -> Result<StoredApiKey> {
        let channel = self.announce_channel();
        let now = Utc::now();
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            // Write first: on SQLite a transaction that reads before it writes fails when
            // another connection committed in between (SQLITE_BUSY_SNAPSHOT).
            sqlx::query("UPDATE api_keys SET rotated_at = rotated_at WHERE token_id = $1")
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
            let current: Option<(String, String, Option<i64>)> = sqlx::query_as(
                "SELECT t.digest, t.last_four, k.rotation_interval_days FROM tokens t \
                 JOIN api_keys k ON k.token_id = t.id WHERE t.id = $1 AND t.workspace_id = $2 \
                 AND t.kind = 'api_key' AND t.revoked_at IS NULL \
                 AND ($3 IS NULL OR t.owner_id = $3)",
            )
            .bind(id.as_str())
            .bind(workspace.as_str())
            .bind(owner.map(PrincipalId::as_str))
            .fetch_optional(&mut *tx)
            .await?;
            let Some((old_digest, old_last_four, interval)) = current else {
                return Err(Error::NotFound);
            };
            let affected = sqlx::query(
                "UPDATE tokens SET digest = $1, last_four = $2 WHERE id = $3 AND digest = $4",
            )
            .bind(new_digest)
            .bind(new_last_four)
            .bind(id.as_str())
            .bind(&old_digest)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if affected == 0 {
                return Err(Error::Conflict("the key was rotated meanwhile; try again".into()));
            }
            // The next due date is the interval after this rotation, with a new notice.
            let due = interval.map(|days| now + chrono::Duration::days(days));
            sqlx::query(
                "UPDATE api_keys SET previous_digest = $1, previous_last_four = $2, \
                 previous_expires_at = $3, rotated_at = $4, rotation_due_at = $5, \
                 rotation_due_notified_at = NULL WHERE token_id = $6",
            )
            .bind(&old_digest)
            .bind(&old_last_four)
            .bind(previous_until)
            .bind(now)
            .bind(due)
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
            announce!(tx, channel, Invalidation::Credential(id.to_string()));
            write_trail!(self, tx, trail);
            tx.commit().await?;
        });
        self.get_api_key(workspace, id)
            .await?
            .ok_or(Error::NotFound)
    }

    /// Keys whose rotation is due at `now` and whose owner was not yet told.
    pub async fn rotation_due_keys(&self, now: DateTime<Utc>) -> Result<Vec<StoredApiKey>> {
        let sql = format!(
            "SELECT {TOKEN_COLUMNS}, {JOINED_KEY_COLUMNS}, {KEY_SELECT} \
             WHERE t.kind = 'api_key' AND t.revoked_at IS NULL \
               AND k.rotation_due_at IS NOT NULL AND k.rotation_due_at <= $1 \
               AND k.rotation_due_notified_at IS NULL ORDER BY t.id LIMIT 1000"
        );
        let rows: Vec<StoredKeyRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql).bind(now).fetch_all(pool).await?
        });
        rows.into_iter().map(StoredKeyRow::into_domain).collect()
    }

    /// Records that a key's rotation-due notice was given, with its trail, once (another
    /// node's pass finds it done).
    pub async fn mark_rotation_due_notified(&self, id: &TokenId, trail: &Trail) -> Result<bool> {
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let affected = sqlx::query(
                "UPDATE api_keys SET rotation_due_notified_at = $1 WHERE token_id = $2 \
                 AND rotation_due_notified_at IS NULL",
            )
            .bind(Utc::now())
            .bind(id.as_str())
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

    /// A key's spend in the `period` starting at `period_start`.
    pub async fn spend_of(
        &self,
        id: &TokenId,
        period: SpendPeriod,
        period_start: DateTime<Utc>,
    ) -> Result<SpendRecord> {
        let row: Option<SpendRow> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT units, warned_at, reached_at FROM api_key_usage \
                 WHERE token_id = $1 AND period_start = $2 AND period = $3",
            )
            .bind(id.as_str())
            .bind(period_start)
            .bind(period.as_str())
            .fetch_optional(pool)
            .await?
        });
        Ok(
            row.map_or_else(SpendRecord::default, |(units, w, r)| SpendRecord {
                units,
                warned: w.is_some(),
                reached: r.is_some(),
            }),
        )
    }

    /// Adds a batch of spend in one transaction (in key order, so concurrent flushes of
    /// several nodes cannot deadlock) and returns each key's total after it; `None` for a
    /// key that no longer exists (its units are dropped, the rest of the batch is kept).
    pub async fn add_spend(&self, deltas: &[SpendDelta]) -> Result<Vec<Option<SpendRecord>>> {
        let mut order: Vec<usize> = (0..deltas.len()).collect();
        order.sort_by(|a, b| deltas[*a].key.cmp(&deltas[*b].key));
        let mut totals = vec![None; deltas.len()];
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            for i in order {
                let d = &deltas[i];
                let row: Option<SpendRow> = sqlx::query_as(
                    "INSERT INTO api_key_usage (token_id, period, period_start, units) \
                     SELECT $1, $4, $2, $3 WHERE EXISTS (SELECT 1 FROM tokens WHERE id = $1) \
                     ON CONFLICT (token_id, period, period_start) \
                     DO UPDATE SET units = api_key_usage.units + excluded.units \
                     RETURNING units, warned_at, reached_at",
                )
                .bind(d.key.as_str())
                .bind(d.period_start)
                .bind(d.units)
                .bind(d.period.as_str())
                .fetch_optional(&mut *tx)
                .await?;
                totals[i] = row.map(|row| SpendRecord {
                    units: row.0,
                    warned: row.1.is_some(),
                    reached: row.2.is_some(),
                });
            }
            tx.commit().await?;
        });
        Ok(totals)
    }

    /// Records that a key crossed `threshold` in a period, with its trail (the event),
    /// once: false when it was already recorded (by this node or another).
    pub async fn mark_spend_threshold(
        &self,
        id: &TokenId,
        period: SpendPeriod,
        period_start: DateTime<Utc>,
        threshold: SpendThreshold,
        trail: &Trail,
    ) -> Result<bool> {
        let sql = match threshold {
            SpendThreshold::Warning => {
                "UPDATE api_key_usage SET warned_at = $1 WHERE token_id = $2 AND period_start = $3 \
                 AND period = $4 AND warned_at IS NULL"
            }
            SpendThreshold::Reached => {
                "UPDATE api_key_usage SET reached_at = $1 WHERE token_id = $2 AND period_start = $3 \
                 AND period = $4 AND reached_at IS NULL"
            }
        };
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let affected = sqlx::query(sql)
                .bind(Utc::now())
                .bind(id.as_str())
                .bind(period_start)
                .bind(period.as_str())
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
