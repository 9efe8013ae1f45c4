//! Webhooks, the outbox of their deliveries, and the attempts made.
//!
//! An event reaches the outbox in the transaction that records it ([`enqueue_event`]): a
//! message (the exact body every attempt sends) and one pending delivery per webhook of
//! the workspace whose filters take its type. The dispatcher leases due deliveries with one
//! statement (`FOR UPDATE SKIP LOCKED` on PostgreSQL, so two nodes never take the same
//! one), sends them, and records each attempt; a lease that lapses (its node died) makes the
//! delivery due again.

use chrono::{DateTime, Utc};
use datastack_core::id::{EventId, WebhookId, WorkspaceId};
use sqlx::Row;
use tokio::sync::Notify;

use crate::audit::{Trail, write_trail};
use crate::rows::json_list;
use crate::{Error, Page, PageRequest, Result, Store, with_pool};

/// Wakes every dispatcher of this process when an event was put in an outbox. Each then
/// looks in its own store; a wake-up that finds nothing costs one query.
static OUTBOX: Notify = Notify::const_new();

/// What dispatchers wait on between polls.
pub fn outbox_signal() -> &'static Notify {
    &OUTBOX
}

/// A webhook as stored. The secrets are sealed; the store never sees them in clear.
#[derive(Debug, Clone)]
pub struct StoredWebhook {
    /// Its id.
    pub id: WebhookId,
    /// Its workspace.
    pub workspace_id: WorkspaceId,
    /// Where deliveries go.
    pub url: String,
    /// A description for people.
    pub description: Option<String>,
    /// The event filters it takes.
    pub events: Vec<String>,
    /// Deliveries per second at most.
    pub rate_limit: Option<i64>,
    /// A JSON object the owner attached.
    pub metadata: Option<serde_json::Value>,
    /// `active`, `paused` or `disabled`.
    pub status: String,
    /// Why it was disabled.
    pub disabled_reason: Option<String>,
    /// The current secret, sealed.
    pub sealed_secret: String,
    /// The previous secret, sealed, while it still signs.
    pub previous_sealed_secret: Option<String>,
    /// Until when the previous secret signs.
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    /// Since when every attempt has failed (none succeeded since).
    pub failing_since: Option<DateTime<Utc>>,
    /// The last successful delivery.
    pub last_success_at: Option<DateTime<Utc>>,
    /// Who created it.
    pub created_by: Option<String>,
    /// When.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// Changes to a webhook: `None` keeps a field; the inner `None` of a nullable field clears it.
#[derive(Debug, Clone, Default)]
pub struct WebhookPatch {
    /// A new URL.
    pub url: Option<String>,
    /// A new description.
    pub description: Option<Option<String>>,
    /// New filters.
    pub events: Option<Vec<String>>,
    /// A new rate limit.
    pub rate_limit: Option<Option<i64>>,
    /// New metadata.
    pub metadata: Option<Option<serde_json::Value>>,
}

/// One delivery: an event to one webhook, across all its attempts.
#[derive(Debug, Clone)]
pub struct StoredDelivery {
    /// The webhook.
    pub webhook_id: WebhookId,
    /// The event (its `request_id` and `webhook-id`).
    pub message_id: EventId,
    /// The event's type.
    pub event_type: String,
    /// `pending`, `succeeded` or `failed`.
    pub status: String,
    /// Attempts made.
    pub attempts: i64,
    /// When the next attempt is due (pending only).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The last attempt's HTTP status.
    pub last_status_code: Option<i64>,
    /// The last attempt's error.
    pub last_error: Option<String>,
    /// The last attempt's latency.
    pub last_latency_ms: Option<i64>,
    /// When the last attempt was made.
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// When the event was queued.
    pub created_at: DateTime<Utc>,
}

/// One attempt of a delivery.
#[derive(Debug, Clone)]
pub struct StoredAttempt {
    /// 1 for the first.
    pub attempt: i64,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// The HTTP status answered, if any.
    pub status_code: Option<i64>,
    /// How long it took.
    pub latency_ms: i64,
    /// What went wrong.
    pub error: Option<String>,
    /// Whether it succeeded.
    pub succeeded: bool,
}

/// Which deliveries a list shows.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    /// Only this status.
    pub status: Option<String>,
    /// Only this event type.
    pub event_type: Option<String>,
    /// Only events queued at or after.
    pub since: Option<DateTime<Utc>>,
    /// Only events queued before.
    pub until: Option<DateTime<Utc>>,
}

/// A delivery the dispatcher leased, with what it needs to send it.
#[derive(Debug, Clone)]
pub struct DueDelivery {
    /// The webhook.
    pub webhook_id: WebhookId,
    /// The event.
    pub message_id: EventId,
    /// Attempts already made.
    pub attempts: i64,
    /// When the event was queued.
    pub created_at: DateTime<Utc>,
    /// The body to send.
    pub body: String,
    /// The webhook's last change (a dispatcher reloads what it cached when it differs).
    pub webhook_updated_at: DateTime<Utc>,
}

/// How an attempt ended, for the outbox.
#[derive(Debug, Clone)]
pub enum Next {
    /// Delivered.
    Succeeded,
    /// Try again at this time.
    RetryAt(DateTime<Utc>),
    /// Given up on.
    Failed,
}

/// The outcome of one attempt.
#[derive(Debug, Clone)]
pub struct AttemptResult {
    /// The webhook.
    pub webhook_id: WebhookId,
    /// The event.
    pub message_id: EventId,
    /// Its number (1 for the first).
    pub attempt: i64,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// The HTTP status answered, if any.
    pub status_code: Option<u16>,
    /// How long it took.
    pub latency_ms: i64,
    /// What went wrong (never a body or a secret).
    pub error: Option<String>,
    /// What happens next.
    pub next: Next,
}

const WEBHOOK_COLUMNS: &str = "id, workspace_id, url, description, events, rate_limit, metadata, status, \
     disabled_reason, sealed_secret, previous_sealed_secret, previous_secret_expires_at, \
     failing_since, last_success_at, created_by, created_at, updated_at";

const DELIVERY_COLUMNS: &str = "webhook_id, message_id, event_type, status, attempts, next_attempt_at, \
     last_status_code, last_error, last_latency_ms, last_attempt_at, created_at";

#[derive(sqlx::FromRow)]
struct WebhookRow {
    id: String,
    workspace_id: String,
    url: String,
    description: Option<String>,
    events: String,
    rate_limit: Option<i64>,
    metadata: Option<String>,
    status: String,
    disabled_reason: Option<String>,
    sealed_secret: String,
    previous_sealed_secret: Option<String>,
    previous_secret_expires_at: Option<DateTime<Utc>>,
    failing_since: Option<DateTime<Utc>>,
    last_success_at: Option<DateTime<Utc>>,
    created_by: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl WebhookRow {
    fn into_domain(self) -> Result<StoredWebhook> {
        Ok(StoredWebhook {
            id: WebhookId::from_trusted(self.id),
            workspace_id: WorkspaceId::from_trusted(self.workspace_id),
            url: self.url,
            description: self.description,
            events: json_list(&self.events, "webhook events")?,
            rate_limit: self.rate_limit,
            metadata: self
                .metadata
                .map(|m| serde_json::from_str(&m))
                .transpose()
                .map_err(|e| Error::Corrupt(format!("webhook metadata: {e}")))?,
            status: self.status,
            disabled_reason: self.disabled_reason,
            sealed_secret: self.sealed_secret,
            previous_sealed_secret: self.previous_sealed_secret,
            previous_secret_expires_at: self.previous_secret_expires_at,
            failing_since: self.failing_since,
            last_success_at: self.last_success_at,
            created_by: self.created_by,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct DeliveryRow {
    webhook_id: String,
    message_id: String,
    event_type: String,
    status: String,
    attempts: i64,
    next_attempt_at: Option<DateTime<Utc>>,
    last_status_code: Option<i64>,
    last_error: Option<String>,
    last_latency_ms: Option<i64>,
    last_attempt_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
}

impl From<DeliveryRow> for StoredDelivery {
    fn from(r: DeliveryRow) -> Self {
        Self {
            webhook_id: WebhookId::from_trusted(r.webhook_id),
            message_id: EventId::from_trusted(r.message_id),
            event_type: r.event_type,
            status: r.status,
            attempts: r.attempts,
            next_attempt_at: r.next_attempt_at,
            last_status_code: r.last_status_code,
            last_error: r.last_error,
            last_latency_ms: r.last_latency_ms,
            last_attempt_at: r.last_attempt_at,
            created_at: r.created_at,
        }
    }
}

/// The body every delivery of an event sends.
pub fn message_body(
    id: &str,
    workspace: &str,
    event_type: &str,
    time: DateTime<Utc>,
    data: &serde_json::Value,
) -> String {
    serde_json::json!({
        "type": event_type,
        "request_id": id,
        "timestamp": time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "workspaceId": workspace,
        "data": data,
    })
    .to_string()
}

/// Inside a `with_pool!` transaction `$tx`, puts an event in the outbox of every webhook of
/// its workspace that takes its type (nothing when none does). Evaluates to whether any did.
macro_rules! enqueue_event {
    ($tx:expr, $id:expr, $workspace:expr, $event_type:expr, $time:expr, $data:expr) => {{
        let [exact, group, all] = datastack_core::webhook::matching_filters($event_type);
        let body = $crate::webhooks::message_body($id, $workspace, $event_type, $time, $data);
        let stored = sqlx::query(
            "INSERT INTO webhook_messages (id, workspace_id, type, created_at, body) \
             SELECT $1, $2, $3, $4, $5 WHERE EXISTS (SELECT 1 FROM webhook_subscriptions s \
               JOIN webhooks w ON w.id = s.webhook_id \
               WHERE s.workspace_id = $2 AND s.event_type IN ($6, $7, $8) AND w.status <> 'disabled')",
        )
        .bind($id)
        .bind($workspace)
        .bind($event_type)
        .bind($time)
        .bind(&body)
        .bind(&exact)
        .bind(&group)
        .bind(&all)
        .execute(&mut *$tx)
        .await?
        .rows_affected();
        if stored > 0 {
            sqlx::query(
                "INSERT INTO webhook_deliveries (webhook_id, message_id, workspace_id, event_type, status, \
                   attempts, next_attempt_at, created_at, updated_at) \
                 SELECT DISTINCT w.id, $1, $2, $3, 'pending', 0, $4, $4, $4 FROM webhook_subscriptions s \
                   JOIN webhooks w ON w.id = s.webhook_id \
                 WHERE s.workspace_id = $2 AND s.event_type IN ($5, $6, $7) AND w.status <> 'disabled'",
            )
            .bind($id)
            .bind($workspace)
            .bind($event_type)
            .bind($time)
            .bind(&exact)
            .bind(&group)
            .bind(&all)
            .execute(&mut *$tx)
            .await?;
            $crate::webhooks::outbox_signal().notify_waiters();
        }
        stored > 0
    }};
}
pub(crate) use enqueue_event;

/// A webhook's last success and first failure in one batch of results.
type Streak = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// Results are recorded in statements of these sizes, so each connection caches a few
/// prepared statements rather than one per batch size.
const RECORD_SIZES: [usize; 4] = [128, 32, 8, 1];

/// `$first, $first+1, …` (`count` numbered placeholders), joined with commas.
fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|p| format!("${p}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `rows` tuples of `width` placeholders each, numbered from `first`: `($1, $2), ($3, $4)`.
fn value_rows(first: usize, rows: usize, width: usize) -> String {
    (0..rows)
        .map(|r| format!("({})", placeholders(first + r * width, width)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One statement text per size of [`RECORD_SIZES`], built once, and the one for `size`.
fn sized(
    cache: &'static std::sync::OnceLock<Vec<String>>,
    size: usize,
    build: fn(usize) -> String,
) -> &'static str {
    let all = cache.get_or_init(|| RECORD_SIZES.iter().map(|&n| build(n)).collect());
    let at = RECORD_SIZES
        .iter()
        .position(|s| *s == size)
        .expect("one of RECORD_SIZES");
    &all[at]
}

/// `UPDATE … FROM (VALUES …)` of `size` deliveries' new states (`$1` is the time; nine
/// parameters per delivery), returning the keys of those still pending before it.
fn record_sql(size: usize) -> &'static str {
    static SQL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    sized(&SQL, size, |n| {
        format!(
            "WITH v (webhook_id, message_id, status, attempt, next_at, code, error, latency, started) \
             AS (VALUES {}) \
             UPDATE webhook_deliveries SET status = v.status, attempts = v.attempt, \
               next_attempt_at = v.next_at, lease_until = NULL, last_status_code = v.code, \
               last_error = v.error, last_latency_ms = v.latency, last_attempt_at = v.started, \
               updated_at = $1 \
             FROM v WHERE webhook_deliveries.webhook_id = v.webhook_id \
               AND webhook_deliveries.message_id = v.message_id \
               AND webhook_deliveries.status = 'pending' \
             RETURNING webhook_deliveries.webhook_id, webhook_deliveries.message_id",
            value_rows(2, n, 9)
        )
    })
}

/// The multi-row `INSERT` of `size` attempts (nine parameters each).
fn attempts_sql(size: usize) -> &'static str {
    static SQL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    sized(&SQL, size, |n| {
        format!(
            "INSERT INTO webhook_attempts (id, webhook_id, message_id, attempt, started_at, \
               status_code, latency_ms, error, succeeded) VALUES {}",
            value_rows(1, n, 9)
        )
    })
}

fn not_found_if_zero(affected: u64) -> Result<()> {
    if affected == 0 {
        Err(Error::NotFound)
    } else {
        Ok(())
    }
}

impl Store {
    /// Stores a new webhook and its filters, with its trail.
    pub async fn insert_webhook(&self, w: &StoredWebhook, trail: &Trail) -> Result<()> {
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(&format!(
                "INSERT INTO webhooks ({WEBHOOK_COLUMNS}) VALUES \
                 ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)"
            ))
            .bind(w.id.as_str())
            .bind(w.workspace_id.as_str())
            .bind(&w.url)
            .bind(w.description.as_deref())
            .bind(crate::rows::json_text(&w.events))
            .bind(w.rate_limit)
            .bind(w.metadata.as_ref().map(|m| m.to_string()))
            .bind(&w.status)
            .bind(w.disabled_reason.as_deref())
            .bind(&w.sealed_secret)
            .bind(w.previous_sealed_secret.as_deref())
            .bind(w.previous_secret_expires_at)
            .bind(w.failing_since)
            .bind(w.last_success_at)
            .bind(w.created_by.as_deref())
            .bind(w.created_at)
            .bind(w.updated_at)
            .execute(&mut *tx)
            .await?;
            for e in &w.events {
                sqlx::query(
                    "INSERT INTO webhook_subscriptions (workspace_id, event_type, webhook_id) VALUES ($1, $2, $3)",
                )
                .bind(w.workspace_id.as_str())
                .bind(e)
                .bind(w.id.as_str())
                .execute(&mut *tx)
                .await?;
            }
            write_trail!(self, tx, trail);
            tx.commit().await?;
            Ok(())
        })
    }

    /// A webhook of `workspace` (any workspace when `None`).
    pub async fn get_webhook(
        &self,
        workspace: Option<&WorkspaceId>,
        id: &WebhookId,
    ) -> Result<StoredWebhook> {
        let sql = format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = $1 AND ($2 IS NULL OR workspace_id = $2)"
        );
        let row: Option<WebhookRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql)
                .bind(id.as_str())
                .bind(workspace.map(WorkspaceId::as_str))
                .fetch_optional(pool)
                .await?
        });
        row.ok_or(Error::NotFound)?.into_domain()
    }

    /// The webhooks of a workspace, by id.
    pub async fn list_webhooks(
        &self,
        workspace: &WorkspaceId,
        page: &PageRequest,
    ) -> Result<Page<StoredWebhook>> {
        let sql = format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE workspace_id = $1 AND ($2 IS NULL OR id > $2) \
             ORDER BY id LIMIT $3"
        );
        let rows: Vec<WebhookRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql)
                .bind(workspace.as_str())
                .bind(page.after.as_deref())
                .bind(i64::from(page.limit) + 1)
                .fetch_all(pool)
                .await?
        });
        let items = rows
            .into_iter()
            .map(WebhookRow::into_domain)
            .collect::<Result<Vec<_>>>()?;
        Ok(Page::from_overfetch(items, page.limit, |w| {
            w.id.to_string()
        }))
    }

    /// How many webhooks a workspace has.
    pub async fn count_webhooks(&self, workspace: &WorkspaceId) -> Result<i64> {
        Ok(with_pool!(self, pool => {
            sqlx::query_scalar("SELECT COUNT(*) FROM webhooks WHERE workspace_id = $1")
                .bind(workspace.as_str())
                .fetch_one(pool)
                .await?
        }))
    }

    /// Changes a webhook, with its trail.
    pub async fn update_webhook(
        &self,
        workspace: &WorkspaceId,
        id: &WebhookId,
        patch: &WebhookPatch,
        trail: &Trail,
    ) -> Result<StoredWebhook> {
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let affected = sqlx::query(
                "UPDATE webhooks SET url = COALESCE($3, url), \
                   description = CASE WHEN $4 THEN $5 ELSE description END, \
                   events = COALESCE($6, events), \
                   rate_limit = CASE WHEN $7 THEN $8 ELSE rate_limit END, \
                   metadata = CASE WHEN $9 THEN $10 ELSE metadata END, updated_at = $11 \
                 WHERE id = $1 AND workspace_id = $2",
            )
            .bind(id.as_str())
            .bind(workspace.as_str())
            .bind(patch.url.as_deref())
            .bind(patch.description.is_some())
            .bind(patch.description.clone().flatten())
            .bind(patch.events.as_deref().map(crate::rows::json_text))
            .bind(patch.rate_limit.is_some())
            .bind(patch.rate_limit.flatten())
            .bind(patch.metadata.is_some())
            .bind(patch.metadata.clone().flatten().map(|m| m.to_string()))
            .bind(Utc::now())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            not_found_if_zero(affected)?;
            if let Some(events) = &patch.events {
                sqlx::query("DELETE FROM webhook_subscriptions WHERE webhook_id = $1")
                    .bind(id.as_str())
                    .execute(&mut *tx)
                    .await?;
                for e in events {
                    sqlx::query(
                        "INSERT INTO webhook_subscriptions (workspace_id, event_type, webhook_id) VALUES ($1, $2, $3)",
                    )
                    .bind(workspace.as_str())
                    .bind(e)
                    .bind(id.as_str())
                    .execute(&mut *tx)
                    .await?;
                }
            }
            write_trail!(self, tx, trail);
            tx.commit().await?;
            Ok::<(), Error>(())
        })?;
        self.get_webhook(Some(workspace), id).await
    }

    /// Deletes a webhook with its subscriptions, deliveries and attempts.
    pub async fn delete_webhook(
        &self,
        workspace: &WorkspaceId,
        id: &WebhookId,
        trail: &Trail,
    ) -> Result<()> {
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let affected = sqlx::query("DELETE FROM webhooks WHERE id = $1 AND workspace_id = $2")
                .bind(id.as_str())
                .bind(workspace.as_str())
                .execute(&mut *tx)
                .await?
                .rows_affected();
            not_found_if_zero(affected)?;
            write_trail!(self, tx, trail);
            tx.commit().await?;
            Ok(())
        })
    }

    /// Sets a webhook's status (`active` clears the failure streak and the reason).
    pub async fn set_webhook_status(
        &self,
        workspace: &WorkspaceId,
        id: &WebhookId,
        status: &str,
        trail: &Trail,
    ) -> Result<StoredWebhook> {
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let affected = sqlx::query(
                "UPDATE webhooks SET status = $3, updated_at = $4, \
                   disabled_reason = CASE WHEN $3 = 'active' THEN NULL ELSE disabled_reason END, \
                   failing_since = CASE WHEN $3 = 'active' THEN NULL ELSE failing_since END \
                 WHERE id = $1 AND workspace_id = $2",
            )
            .bind(id.as_str())
            .bind(workspace.as_str())
            .bind(status)
            .bind(Utc::now())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            not_found_if_zero(affected)?;
            write_trail!(self, tx, trail);
            tx.commit().await?;
            Ok::<(), Error>(())
        })?;
        if status == "active" {
            OUTBOX.notify_waiters();
        }
        self.get_webhook(Some(workspace), id).await
    }

    /// Replaces a webhook's secret; the old one keeps signing until `previous_until`.
    pub async fn rotate_webhook_secret(
        &self,
        workspace: &WorkspaceId,
        id: &WebhookId,
        sealed: &str,
        previous_sealed: Option<&str>,
        previous_until: Option<DateTime<Utc>>,
        trail: &Trail,
    ) -> Result<StoredWebhook> {
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let affected = sqlx::query(
                "UPDATE webhooks SET sealed_secret = $3, previous_sealed_secret = $4, \
                   previous_secret_expires_at = $5, updated_at = $6 WHERE id = $1 AND workspace_id = $2",
            )
            .bind(id.as_str())
            .bind(workspace.as_str())
            .bind(sealed)
            .bind(previous_sealed)
            .bind(previous_until)
            .bind(Utc::now())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            not_found_if_zero(affected)?;
            write_trail!(self, tx, trail);
            tx.commit().await?;
            Ok::<(), Error>(())
        })?;
        self.get_webhook(Some(workspace), id).await
    }

    /// Publishes an event raised upstream: its trail and, in the same transaction, its
    /// deliveries. Returns whether any webhook takes it.
    pub async fn publish_event(
        &self,
        id: &EventId,
        workspace: &WorkspaceId,
        event_type: &str,
        time: DateTime<Utc>,
        data: &serde_json::Value,
        trail: &Trail,
    ) -> Result<bool> {
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let queued = enqueue_event!(tx, id.as_str(), workspace.as_str(), event_type, time, data);
            write_trail!(self, tx, trail);
            tx.commit().await?;
            Ok(queued)
        })
    }

    /// Queues an event for one webhook only (the test ping), with its trail.
    pub async fn enqueue_for_webhook(
        &self,
        webhook: &StoredWebhook,
        id: &EventId,
        event_type: &str,
        time: DateTime<Utc>,
        data: &serde_json::Value,
        trail: &Trail,
    ) -> Result<()> {
        let body = message_body(
            id.as_str(),
            webhook.workspace_id.as_str(),
            event_type,
            time,
            data,
        );
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "INSERT INTO webhook_messages (id, workspace_id, type, created_at, body) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(id.as_str())
            .bind(webhook.workspace_id.as_str())
            .bind(event_type)
            .bind(time)
            .bind(&body)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO webhook_deliveries (webhook_id, message_id, workspace_id, event_type, status, \
                   attempts, next_attempt_at, created_at, updated_at) VALUES ($1, $2, $3, $4, 'pending', 0, $5, $5, $5)",
            )
            .bind(webhook.id.as_str())
            .bind(id.as_str())
            .bind(webhook.workspace_id.as_str())
            .bind(event_type)
            .bind(time)
            .execute(&mut *tx)
            .await?;
            write_trail!(self, tx, trail);
            tx.commit().await?;
            Ok::<(), Error>(())
        })?;
        OUTBOX.notify_waiters();
        Ok(())
    }

    /// Leases up to `limit` due deliveries of active webhooks until `lease_until`, oldest
    /// due first, and at most `per_endpoint` leased at once per webhook across every node
    /// (a webhook with that many leases already is skipped, so one slow endpoint's backlog
    /// does not hold the others back). On PostgreSQL rows another node is leasing are
    /// skipped, not waited for.
    pub async fn lease_due_deliveries(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: i64,
        per_endpoint: i64,
    ) -> Result<Vec<DueDelivery>> {
        let lock = match self.backend() {
            crate::Backend::Postgres => " FOR UPDATE OF d SKIP LOCKED",
            crate::Backend::Sqlite => "",
        };
        let sql = format!(
            "WITH busy AS (SELECT webhook_id, COUNT(*) AS n FROM webhook_deliveries \
               WHERE status = 'pending' AND lease_until > $1 GROUP BY webhook_id) \
             UPDATE webhook_deliveries SET lease_until = $2 \
             WHERE (webhook_id, message_id) IN ( \
               SELECT webhook_id, message_id FROM ( \
                 SELECT c.webhook_id, c.message_id, c.next_attempt_at, c.busy, \
                   ROW_NUMBER() OVER (PARTITION BY c.webhook_id ORDER BY c.next_attempt_at) AS rn \
                 FROM ( \
                   SELECT d.webhook_id, d.message_id, d.next_attempt_at, COALESCE(b.n, 0) AS busy \
                   FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id \
                     LEFT JOIN busy b ON b.webhook_id = d.webhook_id \
                   WHERE d.status = 'pending' AND d.next_attempt_at <= $1 \
                     AND (d.lease_until IS NULL OR d.lease_until < $1) AND w.status = 'active' \
                     AND COALESCE(b.n, 0) < $4 \
                   ORDER BY d.next_attempt_at LIMIT $5{lock} \
                 ) c \
               ) r WHERE r.rn + r.busy <= $4 ORDER BY r.next_attempt_at LIMIT $3 \
             ) \
             RETURNING webhook_id, message_id, attempts, created_at"
        );
        let leased: Vec<(String, String, i64, DateTime<Utc>)> = with_pool!(self, pool => {
            sqlx::query_as(&sql)
                .bind(now)
                .bind(lease_until)
                .bind(limit)
                .bind(per_endpoint)
                .bind(limit)
                .fetch_all(pool)
                .await?
        });
        if leased.is_empty() {
            return Ok(Vec::new());
        }
        let mut ids: Vec<&str> = leased.iter().map(|l| l.1.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        let sql = format!(
            "SELECT id, body FROM webhook_messages WHERE id IN ({})",
            placeholders(1, ids.len())
        );
        let bodies: Vec<(String, String)> = with_pool!(self, pool => {
            let mut q = sqlx::query_as(&sql);
            for id in &ids {
                q = q.bind(*id);
            }
            q.fetch_all(pool).await?
        });
        let bodies: std::collections::HashMap<String, String> = bodies.into_iter().collect();
        let mut hooks: Vec<&str> = leased.iter().map(|l| l.0.as_str()).collect();
        hooks.sort_unstable();
        hooks.dedup();
        let sql = format!(
            "SELECT id, updated_at FROM webhooks WHERE id IN ({})",
            placeholders(1, hooks.len())
        );
        let changed: Vec<(String, DateTime<Utc>)> = with_pool!(self, pool => {
            let mut q = sqlx::query_as(&sql);
            for id in &hooks {
                q = q.bind(*id);
            }
            q.fetch_all(pool).await?
        });
        let changed: std::collections::HashMap<String, DateTime<Utc>> =
            changed.into_iter().collect();
        Ok(leased
            .into_iter()
            .filter_map(|(webhook_id, message_id, attempts, created_at)| {
                let body = bodies.get(&message_id)?.clone();
                let webhook_updated_at = *changed.get(&webhook_id)?;
                Some(DueDelivery {
                    webhook_updated_at,
                    webhook_id: WebhookId::from_trusted(webhook_id),
                    message_id: EventId::from_trusted(message_id),
                    attempts,
                    created_at,
                    body,
                })
            })
            .collect())
    }

    /// Records attempts in one transaction: each delivery's new state and each attempt's
    /// row (a few multi-row statements per batch, whatever its size), then each webhook's
    /// streak. A webhook whose every attempt has failed since before `disable_before` is
    /// disabled, with `webhook.disabled` raised; those are returned.
    pub async fn record_attempts(
        &self,
        results: &[AttemptResult],
        disable_before: DateTime<Utc>,
    ) -> Result<Vec<StoredWebhook>> {
        if results.is_empty() {
            return Ok(Vec::new());
        }
        let now = Utc::now();
        let mut disabled = Vec::new();
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let mut recorded: Vec<&AttemptResult> = Vec::with_capacity(results.len());
            let mut rest = results;
            while !rest.is_empty() {
                let size = RECORD_SIZES.into_iter().find(|s| *s <= rest.len()).unwrap_or(1);
                let (chunk, tail) = rest.split_at(size);
                rest = tail;
                let mut update = sqlx::query(record_sql(size));
                update = update.bind(now);
                for r in chunk {
                    let (status, next_at) = match &r.next {
                        Next::Succeeded => ("succeeded", None),
                        Next::RetryAt(at) => ("pending", Some(*at)),
                        Next::Failed => ("failed", None),
                    };
                    update = update
                        .bind(r.webhook_id.as_str())
                        .bind(r.message_id.as_str())
                        .bind(status)
                        .bind(r.attempt)
                        .bind(next_at)
                        .bind(r.status_code.map(i64::from))
                        .bind(r.error.as_deref())
                        .bind(r.latency_ms)
                        .bind(r.started_at);
                }
                let updated: Vec<(String, String)> = update
                    .fetch_all(&mut *tx)
                    .await?
                    .into_iter()
                    .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
                    .collect::<Result<_, sqlx::Error>>()?;
                // Deliveries deleted (with their webhook) meanwhile have nothing to record.
                let updated: std::collections::HashSet<(String, String)> =
                    updated.into_iter().collect();
                recorded.extend(chunk.iter().filter(|r| {
                    updated.contains(&(r.webhook_id.to_string(), r.message_id.to_string()))
                }));
            }
            let mut rest: &[&AttemptResult] = &recorded;
            while !rest.is_empty() {
                let size = RECORD_SIZES.into_iter().find(|s| *s <= rest.len()).unwrap_or(1);
                let (chunk, tail) = rest.split_at(size);
                rest = tail;
                let mut insert = sqlx::query(attempts_sql(size));
                for r in chunk {
                    insert = insert
                        .bind(attempt_id())
                        .bind(r.webhook_id.as_str())
                        .bind(r.message_id.as_str())
                        .bind(r.attempt)
                        .bind(r.started_at)
                        .bind(r.status_code.map(i64::from))
                        .bind(r.latency_ms)
                        .bind(r.error.as_deref())
                        .bind(matches!(r.next, Next::Succeeded));
                }
                insert.execute(&mut *tx).await?;
            }
            // Each webhook's streak, once per batch: its last success, or since when it fails.
            let mut streaks: std::collections::BTreeMap<&str, Streak> =
                std::collections::BTreeMap::new();
            for r in &recorded {
                let e = streaks.entry(r.webhook_id.as_str()).or_default();
                if matches!(r.next, Next::Succeeded) {
                    e.0 = e.0.max(Some(r.started_at));
                } else {
                    e.1 = Some(e.1.map_or(r.started_at, |t: DateTime<Utc>| t.min(r.started_at)));
                }
            }
            for (webhook, (success, failure)) in streaks {
                if let Some(at) = success {
                    sqlx::query(
                        "UPDATE webhooks SET last_success_at = $2, failing_since = NULL WHERE id = $1",
                    )
                    .bind(webhook)
                    .bind(at)
                    .execute(&mut *tx)
                    .await?;
                    continue;
                }
                let Some(at) = failure else { continue };
                sqlx::query(
                    "UPDATE webhooks SET failing_since = $2 WHERE id = $1 AND failing_since IS NULL",
                )
                .bind(webhook)
                .bind(at)
                .execute(&mut *tx)
                .await?;
                let row: Option<WebhookRow> = sqlx::query_as(&format!(
                    "UPDATE webhooks SET status = 'disabled', disabled_reason = 'failing', updated_at = $3 \
                     WHERE id = $1 AND status = 'active' AND failing_since < $2 \
                     RETURNING {WEBHOOK_COLUMNS}"
                ))
                .bind(webhook)
                .bind(disable_before)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(row) = row {
                    let w = row.into_domain()?;
                    let event = datastack_core::audit::SecurityEvent::new(
                        w.workspace_id.clone(),
                        "webhook.disabled",
                        serde_json::json!({
                            "webhookId": w.id,
                            "failingSince": w.failing_since,
                            "lastSuccessAt": w.last_success_at,
                        }),
                    );
                    crate::audit::insert_events!(tx, std::iter::once(&event));
                    disabled.push(w);
                }
            }
            tx.commit().await?;
            Ok::<(), Error>(())
        })?;
        Ok(disabled)
    }

    /// The deliveries of a webhook, newest first.
    pub async fn list_deliveries(
        &self,
        workspace: &WorkspaceId,
        webhook: &WebhookId,
        filter: &DeliveryFilter,
        page: &PageRequest,
    ) -> Result<Page<StoredDelivery>> {
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries \
             WHERE workspace_id = $1 AND webhook_id = $2 AND ($3 IS NULL OR message_id < $3) \
               AND ($4 IS NULL OR status = $4) AND ($5 IS NULL OR event_type = $5) \
               AND ($6 IS NULL OR created_at >= $6) AND ($7 IS NULL OR created_at < $7) \
             ORDER BY message_id DESC LIMIT $8"
        );
        let rows: Vec<DeliveryRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql)
                .bind(workspace.as_str())
                .bind(webhook.as_str())
                .bind(page.after.as_deref())
                .bind(filter.status.as_deref())
                .bind(filter.event_type.as_deref())
                .bind(filter.since)
                .bind(filter.until)
                .bind(i64::from(page.limit) + 1)
                .fetch_all(pool)
                .await?
        });
        let items = rows.into_iter().map(StoredDelivery::from).collect();
        Ok(Page::from_overfetch(items, page.limit, |d| {
            d.message_id.to_string()
        }))
    }

    /// One delivery with its attempts, oldest first.
    pub async fn get_delivery(
        &self,
        workspace: &WorkspaceId,
        webhook: &WebhookId,
        message: &EventId,
    ) -> Result<(StoredDelivery, Vec<StoredAttempt>)> {
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries \
             WHERE workspace_id = $1 AND webhook_id = $2 AND message_id = $3"
        );
        with_pool!(self, pool => {
            let row: Option<DeliveryRow> = sqlx::query_as(&sql)
                .bind(workspace.as_str())
                .bind(webhook.as_str())
                .bind(message.as_str())
                .fetch_optional(pool)
                .await?;
            let delivery = StoredDelivery::from(row.ok_or(Error::NotFound)?);
            let rows = sqlx::query(
                "SELECT attempt, started_at, status_code, latency_ms, error, succeeded FROM webhook_attempts \
                 WHERE webhook_id = $1 AND message_id = $2 ORDER BY attempt LIMIT 100",
            )
            .bind(webhook.as_str())
            .bind(message.as_str())
            .fetch_all(pool)
            .await?;
            let mut attempts = Vec::with_capacity(rows.len());
            for row in rows {
                attempts.push(StoredAttempt {
                    attempt: row.try_get("attempt")?,
                    started_at: row.try_get("started_at")?,
                    status_code: row.try_get("status_code")?,
                    latency_ms: row.try_get("latency_ms")?,
                    error: row.try_get("error")?,
                    succeeded: row.try_get("succeeded")?,
                });
            }
            Ok((delivery, attempts))
        })
    }

    /// Makes one delivery due again now (its attempts are kept; the count goes on).
    pub async fn redeliver(
        &self,
        workspace: &WorkspaceId,
        webhook: &WebhookId,
        message: &EventId,
        trail: &Trail,
    ) -> Result<()> {
        let now = Utc::now();
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let affected = sqlx::query(
                "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = $4, lease_until = NULL, \
                   updated_at = $4 WHERE workspace_id = $1 AND webhook_id = $2 AND message_id = $3",
            )
            .bind(workspace.as_str())
            .bind(webhook.as_str())
            .bind(message.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            not_found_if_zero(affected)?;
            write_trail!(self, tx, trail);
            tx.commit().await?;
            Ok::<(), Error>(())
        })?;
        OUTBOX.notify_waiters();
        Ok(())
    }

    /// Makes every failed delivery of a webhook queued since `since` due again; returns
    /// how many.
    pub async fn replay_failed(
        &self,
        workspace: &WorkspaceId,
        webhook: &WebhookId,
        since: DateTime<Utc>,
        trail: &Trail,
    ) -> Result<u64> {
        let now = Utc::now();
        let replayed = with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let exists: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM webhooks WHERE id = $1 AND workspace_id = $2",
            )
            .bind(webhook.as_str())
            .bind(workspace.as_str())
            .fetch_one(&mut *tx)
            .await?;
            not_found_if_zero(exists as u64)?;
            let replayed = sqlx::query(
                "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = $4, lease_until = NULL, \
                   updated_at = $4 WHERE workspace_id = $1 AND webhook_id = $2 AND status = 'failed' \
                   AND created_at >= $3",
            )
            .bind(workspace.as_str())
            .bind(webhook.as_str())
            .bind(since)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            write_trail!(self, tx, trail);
            tx.commit().await?;
            replayed
        });
        OUTBOX.notify_waiters();
        Ok(replayed)
    }

    /// Deletes finished deliveries (and their attempts) of events queued before `before`,
    /// and messages no delivery needs any more. Returns how many deliveries went.
    pub async fn purge_webhook_history(&self, before: DateTime<Utc>) -> Result<u64> {
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "DELETE FROM webhook_attempts WHERE message_id IN (SELECT id FROM webhook_messages \
                 WHERE created_at < $1) AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d \
                 WHERE d.webhook_id = webhook_attempts.webhook_id AND d.message_id = webhook_attempts.message_id \
                 AND d.status = 'pending')",
            )
            .bind(before)
            .execute(&mut *tx)
            .await?;
            let gone = sqlx::query(
                "DELETE FROM webhook_deliveries WHERE created_at < $1 AND status <> 'pending'",
            )
            .bind(before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            sqlx::query(
                "DELETE FROM webhook_messages WHERE created_at < $1 AND NOT EXISTS \
                 (SELECT 1 FROM webhook_deliveries d WHERE d.message_id = webhook_messages.id)",
            )
            .bind(before)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(gone)
        })
    }
}

/// A new attempt row id, `wha_…` (time-ordered like every id).
fn attempt_id() -> String {
    let id = EventId::generate();
    format!("wha_{}", &id.as_str()[EventId::PREFIX.len()..])
}
