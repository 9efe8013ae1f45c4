//! The audit log and the access review: query, export, verify, security events, review and
//! its bulk actions. Every call needs an admin's credential with `read:audit` (the bulk
//! actions `manage:tokens`).

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::Method;
use serde::{Deserialize, Serialize};

use crate::client::{Auth, Client, api_error, append_query, decode};
use crate::error::{Error, Result};
use crate::types::Page;

const READ_AUDIT: &str = "read:audit";
const MANAGE_TOKENS: &str = "manage:tokens";
/// An export may run long; it is not cut off by the client's usual 30 s.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(3600);

/// One audit entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    /// `aud_…`.
    pub id: String,
    /// Its position in the workspace's chain.
    pub seq: i64,
    /// When it happened.
    pub time: DateTime<Utc>,
    /// The workspace.
    pub workspace_id: String,
    /// The request's id; `None` for the server's own actions.
    pub request_id: Option<String>,
    /// The acting principal.
    pub principal_id: Option<String>,
    /// The credential used (its id).
    pub credential_id: Option<String>,
    /// What was done, e.g. `tokens.create`.
    pub action: String,
    /// The kind of resource.
    pub resource_type: Option<String>,
    /// The resource's id.
    pub resource_id: Option<String>,
    /// The scope the caller acted with.
    pub scope: Option<String>,
    /// The client address.
    pub source_ip: Option<String>,
    /// The client's user agent.
    pub user_agent: Option<String>,
    /// `allowed`, `denied` or `error`.
    pub outcome: String,
    /// The HTTP status (0 for the server's own actions).
    pub status: u16,
    /// Microseconds the request had taken.
    pub latency_us: i64,
    /// Action-specific detail.
    pub detail: Option<serde_json::Value>,
    /// The previous entry's hash.
    pub prev_hash: String,
    /// This entry's hash.
    pub hash: String,
}

/// The filters of `GET /api/v1/audit/events`; unset filters match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// At or after.
    pub since: Option<DateTime<Utc>>,
    /// Before.
    pub until: Option<DateTime<Utc>>,
    /// The acting principal.
    pub principal_id: Option<String>,
    /// The credential.
    pub credential_id: Option<String>,
    /// The action, e.g. `tokens.create`.
    pub action: Option<String>,
    /// The resource type.
    pub resource_type: Option<String>,
    /// The resource id.
    pub resource_id: Option<String>,
    /// `allowed`, `denied` or `error`.
    pub outcome: Option<String>,
    /// The client address.
    pub source_ip: Option<String>,
    /// A request id: the request's entry, or the aggregated entry that counts it.
    pub request_id: Option<String>,
    /// Page size, 1–1000 (server default 100).
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// The result of `GET /api/v1/audit/verify`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChainReport {
    /// The workspace.
    pub workspace_id: String,
    /// Whether the retained chain is intact.
    pub ok: bool,
    /// Entries found in place.
    pub checked: u64,
    /// The signed head's sequence number.
    pub head_seq: i64,
    /// Where the retained chain starts after purges.
    pub checkpoint: Option<serde_json::Value>,
    /// The first break: `problem` (`altered`, `removed`, `reordered`, `truncated`,
    /// `head_forged`, `head_missing`, `start_missing`, `checkpoint_forged`,
    /// `unacknowledged_break`) with the entry's `id` and `seq`.
    pub first_break: Option<serde_json::Value>,
    /// The breaks recorded in the chain, oldest first, acknowledged (`acknowledged` set) or
    /// not.
    #[serde(default)]
    pub breaks: Vec<serde_json::Value>,
}

/// A security event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecurityEvent {
    /// `evt_…`.
    pub id: String,
    /// e.g. `auth.failure_burst`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The workspace.
    pub workspace_id: String,
    /// When.
    pub time: DateTime<Utc>,
    /// Its data.
    pub payload: serde_json::Value,
}

/// The query of `GET /api/v1/access-review`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReviewQuery {
    /// Unused this many days → `stale` (server default 30).
    pub stale_days: Option<u32>,
    /// Older than this many days → `rotation_due` (default 90).
    pub rotation_days: Option<u32>,
    /// The audit window for `over_broad`, in days (default 30).
    pub window_days: Option<u32>,
    /// Only credentials with this flag.
    pub flag: Option<String>,
    /// Page size.
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A reviewed credential's owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReviewOwner {
    /// `usr_…` or `sp_…`.
    pub id: String,
    /// Display name.
    pub name: String,
    /// A user's email.
    pub email: Option<String>,
    /// `user` or `service_principal`.
    pub kind: String,
}

/// One credential in the access review.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReviewItem {
    /// The credential.
    pub credential_id: String,
    /// `personal_access_token`, …
    pub kind: String,
    /// Its label.
    pub label: String,
    /// Its owner.
    pub owner: Option<ReviewOwner>,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Expires.
    pub expires_at: Option<DateTime<Utc>>,
    /// Last use.
    pub last_used_at: Option<DateTime<Utc>>,
    /// Age in days.
    pub age_days: i64,
    /// `stale`, `rotation_due`, `never_expires`, `over_broad`.
    pub flags: Vec<String>,
    /// Scopes used in the window, with allowed calls.
    #[serde(default)]
    pub used_scopes: HashMap<String, i64>,
    /// The narrower grant for `over_broad`.
    pub suggested_scopes: Option<Vec<String>>,
}

/// What a bulk action did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkResult {
    /// Changed credentials (with their scopes now, for `narrow`).
    pub changed: Vec<BulkChange>,
    /// Left as they were.
    #[serde(default)]
    pub unchanged: Vec<String>,
    /// Unknown or already revoked.
    #[serde(default)]
    pub not_found: Vec<String>,
}

/// One changed credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkChange {
    /// The credential.
    pub credential_id: String,
    /// Its scopes now (for `narrow`).
    pub scopes: Option<Vec<String>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BulkBody<'a> {
    credential_ids: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    window_days: Option<u32>,
}

fn time(t: Option<DateTime<Utc>>) -> Option<String> {
    t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
}

impl Client {
    /// `GET /api/v1/audit/events` (`read:audit`): one page of entries, newest first.
    pub async fn audit_events(&self, query: AuditQuery) -> Result<Page<AuditEntry>> {
        let mut url = self.url(&["api", "v1", "audit", "events"]);
        append_query(
            &mut url,
            &[
                ("since", time(query.since)),
                ("until", time(query.until)),
                ("principalId", query.principal_id),
                ("credentialId", query.credential_id),
                ("action", query.action),
                ("resourceType", query.resource_type),
                ("resourceId", query.resource_id),
                ("outcome", query.outcome),
                ("sourceIp", query.source_ip),
                ("requestId", query.request_id),
                ("limit", query.limit.map(|l| l.to_string())),
                ("cursor", query.cursor),
            ],
        );
        decode(self.get(url, READ_AUDIT).await?).await
    }

    /// `GET /api/v1/audit/export` (`read:audit`): writes the entries in `[since, until)`
    /// to `out` as JSON Lines, oldest first, as they arrive. Returns the bytes written.
    pub async fn audit_export(
        &self,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
        out: &mut (dyn std::io::Write + Send),
    ) -> Result<u64> {
        let mut url = self.url(&["api", "v1", "audit", "export"]);
        append_query(&mut url, &[("since", time(since)), ("until", time(until))]);
        self.renew_if_due().await?;
        let mut request = self.build(Method::GET, url, Auth::Scoped(READ_AUDIT), None)?;
        *request.timeout_mut() = Some(EXPORT_TIMEOUT);
        let mut response = self.http.execute(request).await?;
        if !response.status().is_success() {
            return Err(api_error(response).await);
        }
        let mut written = 0u64;
        while let Some(chunk) = response.chunk().await? {
            out.write_all(&chunk)
                .map_err(|e| Error::Config(format!("cannot write the export: {e}")))?;
            written += chunk.len() as u64;
        }
        Ok(written)
    }

    /// `GET /api/v1/audit/verify` (`read:audit`): walks the workspace's audit chain.
    pub async fn audit_verify(&self) -> Result<ChainReport> {
        let url = self.url(&["api", "v1", "audit", "verify"]);
        decode(self.get(url, READ_AUDIT).await?).await
    }

    /// `GET /api/v1/audit/security-events` (`read:audit`): one page, newest first.
    pub async fn security_events(
        &self,
        event_type: Option<String>,
        limit: Option<u32>,
        cursor: Option<String>,
    ) -> Result<Page<SecurityEvent>> {
        let mut url = self.url(&["api", "v1", "audit", "security-events"]);
        append_query(
            &mut url,
            &[
                ("type", event_type),
                ("limit", limit.map(|l| l.to_string())),
                ("cursor", cursor),
            ],
        );
        decode(self.get(url, READ_AUDIT).await?).await
    }

    /// `GET /api/v1/access-review` (`read:audit`): one page of reviewed credentials.
    pub async fn access_review(&self, query: ReviewQuery) -> Result<Page<ReviewItem>> {
        let mut url = self.url(&["api", "v1", "access-review"]);
        append_query(
            &mut url,
            &[
                ("staleDays", query.stale_days.map(|d| d.to_string())),
                ("rotationDays", query.rotation_days.map(|d| d.to_string())),
                ("windowDays", query.window_days.map(|d| d.to_string())),
                ("flag", query.flag),
                ("limit", query.limit.map(|l| l.to_string())),
                ("cursor", query.cursor),
            ],
        );
        decode(self.get(url, READ_AUDIT).await?).await
    }

    /// `POST /api/v1/access-review/revoke` (`manage:tokens`): revokes the credentials.
    pub async fn access_review_revoke(&self, credential_ids: &[String]) -> Result<BulkResult> {
        let url = self.url(&["api", "v1", "access-review", "revoke"]);
        let body = BulkBody {
            credential_ids,
            window_days: None,
        };
        self.post_json(url, MANAGE_TOKENS, &body).await
    }

    /// `POST /api/v1/access-review/narrow` (`manage:tokens`): narrows each credential to
    /// the scopes it used in the window.
    pub async fn access_review_narrow(
        &self,
        credential_ids: &[String],
        window_days: Option<u32>,
    ) -> Result<BulkResult> {
        let url = self.url(&["api", "v1", "access-review", "narrow"]);
        let body = BulkBody {
            credential_ids,
            window_days,
        };
        self.post_json(url, MANAGE_TOKENS, &body).await
    }
}
