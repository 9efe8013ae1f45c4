//! The audit log: query entries, export them as JSON Lines, verify the chain, list security
//! events. Everything here needs `read:audit`, which only admins' role allows.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use datastack_core::audit::{AuditEntry, ChainBreak, Outcome, SecurityEvent};
use datastack_core::audit_breaks::RecordedBreak;
use datastack_core::id::WorkspaceId;
use datastack_store::{AuditFilter, Store};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::pipeline::authorize::{Authorized, ReadAudit};
use crate::pipeline::extract::{Json, Query};
use crate::state::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(query_events))
        .routes(routes!(export))
        .routes(routes!(verify))
        .routes(routes!(security_events))
}

/// One audit entry.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntryResponse {
    /// `aud_…`.
    pub id: String,
    /// Its position in the workspace's chain.
    pub seq: i64,
    /// When it happened.
    #[serde(serialize_with = "crate::api::time::rfc3339")]
    pub time: DateTime<Utc>,
    /// The workspace.
    pub workspace_id: String,
    /// The request (`x-request-id`); `null` for the server's own actions.
    pub request_id: Option<String>,
    /// The acting principal.
    pub principal_id: Option<String>,
    /// The credential used (its id; never its secret).
    pub credential_id: Option<String>,
    /// What was done, e.g. `tokens.create`.
    pub action: String,
    /// The kind of resource, e.g. `tokens`.
    pub resource_type: Option<String>,
    /// The resource's id.
    pub resource_id: Option<String>,
    /// The scope the caller acted with.
    pub scope: Option<String>,
    /// The client address.
    pub source_ip: Option<String>,
    /// The client's `User-Agent`.
    pub user_agent: Option<String>,
    /// `allowed`, `denied` or `error`.
    pub outcome: &'static str,
    /// The HTTP status answered (0 for the server's own actions).
    pub status: u16,
    /// Microseconds the request had taken when the entry was made.
    pub latency_us: i64,
    /// Action-specific detail.
    #[schema(value_type = Option<Object>)]
    pub detail: Option<serde_json::Value>,
    /// The previous entry's hash.
    pub prev_hash: String,
    /// This entry's hash (HMAC-SHA256 under the audit key).
    pub hash: String,
}

impl From<AuditEntry> for AuditEntryResponse {
    fn from(e: AuditEntry) -> Self {
        let r = e.record;
        Self {
            id: r.id.to_string(),
            seq: e.seq,
            time: r.time,
            workspace_id: r.workspace_id.to_string(),
            request_id: r.request_id,
            principal_id: r.principal_id,
            credential_id: r.credential_id,
            action: r.action,
            resource_type: r.resource_type,
            resource_id: r.resource_id,
            scope: r.scope,
            source_ip: r.source_ip,
            user_agent: r.user_agent,
            outcome: r.outcome.as_str(),
            status: r.status,
            latency_us: r.latency_us,
            detail: r
                .detail
                .map(|d| serde_json::from_str(&d).unwrap_or(serde_json::Value::String(d))),
            prev_hash: e.prev_hash,
            hash: e.hash,
        }
    }
}

/// One page of audit entries, newest first.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditPage {
    /// The entries.
    pub items: Vec<AuditEntryResponse>,
    /// Pass as `cursor` for the next (older) page; `null` on the last.
    pub next_cursor: Option<String>,
}

/// Filters of an audit query. Every filter is optional; they combine with AND.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQueryParams {
    /// Entries at or after this time (RFC 3339).
    pub since: Option<String>,
    /// Entries before this time (RFC 3339).
    pub until: Option<String>,
    /// Acting principal id.
    pub principal_id: Option<String>,
    /// Credential id.
    pub credential_id: Option<String>,
    /// Action, e.g. `tokens.create`.
    pub action: Option<String>,
    /// Resource type, e.g. `tokens`.
    pub resource_type: Option<String>,
    /// Resource id.
    pub resource_id: Option<String>,
    /// `allowed`, `denied` or `error`.
    pub outcome: Option<String>,
    /// Client address.
    pub source_ip: Option<String>,
    /// A request id (`x-request-id`, as in error bodies): the request's entry, or the
    /// aggregated entry that counts it. Without `since` and `until`, an id that is a
    /// UUIDv7 (as the ids datastack generates) is searched within an hour of its time.
    pub request_id: Option<String>,
    /// Page size, 1–1000 (default 100).
    pub limit: Option<i64>,
    /// The `nextCursor` of the previous page.
    pub cursor: Option<String>,
}

fn time_param(name: &str, value: Option<&str>) -> ApiResult<Option<DateTime<Utc>>> {
    value
        .map(|v| {
            DateTime::parse_from_rfc3339(v)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| {
                    ApiError::InvalidRequest(format!(
                        "{name}: must be an RFC 3339 time such as 2026-11-23T00:00:00Z"
                    ))
                })
        })
        .transpose()
}

/// A filter value: short printable text (ids, action names, addresses).
fn text_param(name: &str, value: Option<String>) -> ApiResult<Option<String>> {
    match value {
        Some(v) if v.is_empty() || v.len() > 200 || v.chars().any(char::is_control) => Err(
            ApiError::InvalidRequest(format!("{name}: must be 1–200 printable characters")),
        ),
        other => Ok(other),
    }
}

impl AuditQueryParams {
    fn filter(self) -> ApiResult<(AuditFilter, Option<i64>, u32)> {
        let since = time_param("since", self.since.as_deref())?;
        let until = time_param("until", self.until.as_deref())?;
        let outcome = self
            .outcome
            .as_deref()
            .map(|o| {
                Outcome::parse(o).ok_or_else(|| {
                    ApiError::InvalidRequest("outcome: must be allowed, denied or error".into())
                })
            })
            .transpose()?;
        let limit = match self.limit {
            None => 100,
            Some(n) if (1..=1000).contains(&n) => n as u32,
            Some(_) => {
                return Err(ApiError::InvalidRequest(
                    "limit: must be between 1 and 1000".into(),
                ));
            }
        };
        let cursor = self
            .cursor
            .as_deref()
            .map(|c| {
                c.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
                    ApiError::InvalidRequest("cursor: is not a cursor this server issued".into())
                })
            })
            .transpose()?;
        let request_id = match self.request_id {
            Some(id) if !crate::request_id::well_formed(&id) => {
                return Err(ApiError::InvalidRequest(
                    "requestId: must be 1–128 characters of A-Z a-z 0-9 - _ . : (a request id as datastack reports it)"
                        .into(),
                ));
            }
            other => other,
        };
        // A UUIDv7 carries its time: search around it rather than the whole log.
        let (since, until) = match (since, until, request_id.as_deref().and_then(v7_time)) {
            (None, None, Some(at)) => (
                Some(at - chrono::Duration::hours(1)),
                Some(at + chrono::Duration::hours(1)),
            ),
            (since, until, _) => (since, until),
        };
        let filter = AuditFilter {
            since,
            until,
            principal_id: text_param("principalId", self.principal_id)?,
            credential_id: text_param("credentialId", self.credential_id)?,
            action: text_param("action", self.action)?,
            resource_type: text_param("resourceType", self.resource_type)?,
            resource_id: text_param("resourceId", self.resource_id)?,
            outcome,
            source_ip: text_param("sourceIp", self.source_ip)?,
            request_id,
        };
        Ok((filter, cursor, limit))
    }
}

/// The time a UUIDv7 request id carries (32 hex digits or the hyphenated form).
fn v7_time(id: &str) -> Option<DateTime<Utc>> {
    let uuid = uuid::Uuid::try_parse(id).ok()?;
    if uuid.get_version() != Some(uuid::Version::SortRand) {
        return None;
    }
    let (secs, nanos) = uuid.get_timestamp()?.to_unix();
    DateTime::from_timestamp(i64::try_from(secs).ok()?, nanos)
}

/// Queries the workspace's audit entries, newest first.
#[utoipa::path(get, operation_id = "listAuditEvents", path = "/api/v1/audit/events", tag = "audit",
    security(("bearer" = ["read:audit"])),
    params(("x-datastack-scope" = String, Header, description = "read:audit"), AuditQueryParams),
    responses((status = 200, body = AuditPage), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn query_events(
    State(state): State<AppState>,
    caller: Authorized<ReadAudit>,
    Query(params): Query<AuditQueryParams>,
) -> ApiResult<Json<AuditPage>> {
    let (filter, cursor, limit) = params.filter()?;
    let (entries, next) = state
        .store
        .query_audit(&caller.identity.workspace.id, &filter, cursor, limit)
        .await?;
    Ok(Json(AuditPage {
        items: entries.into_iter().map(AuditEntryResponse::from).collect(),
        next_cursor: next.map(|n| n.to_string()),
    }))
}

/// The time range of an export.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExportParams {
    /// Entries at or after this time (RFC 3339); default: the oldest retained.
    pub since: Option<String>,
    /// Entries before this time (RFC 3339); default: now.
    pub until: Option<String>,
}

/// Streams the workspace's entries in `[since, until)` as JSON Lines, oldest first, one
/// entry (the shape of `/audit/events` items) per line. The export is read page by page
/// while it is sent, never held in memory whole.
#[utoipa::path(get, operation_id = "exportAuditEvents", path = "/api/v1/audit/export", tag = "audit",
    security(("bearer" = ["read:audit"])),
    params(("x-datastack-scope" = String, Header, description = "read:audit"), ExportParams),
    responses((status = 200, content_type = "application/x-ndjson", body = AuditEntryResponse,
        description = "newline-delimited JSON: one audit entry (this schema) per line, oldest first"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn export(
    State(state): State<AppState>,
    caller: Authorized<ReadAudit>,
    Query(params): Query<ExportParams>,
) -> ApiResult<Response> {
    let since = time_param("since", params.since.as_deref())?;
    let until = time_param("until", params.until.as_deref())?.or_else(|| Some(Utc::now()));
    let pages = ExportPages {
        store: state.store.clone(),
        workspace: caller.identity.workspace.id.clone(),
        since,
        until,
        after: 0,
        done: false,
    };
    let stream = futures_util::stream::unfold(pages, |mut pages| async move {
        if pages.done {
            return None;
        }
        match pages.next_chunk().await {
            Ok(Some(bytes)) => Some((Ok::<Bytes, std::io::Error>(bytes), pages)),
            Ok(None) => None,
            Err(e) => {
                // The status line is gone; ending the body early is the only signal left.
                tracing::warn!(error = %e, "audit export interrupted");
                pages.done = true;
                Some((
                    Err(std::io::Error::other("audit export interrupted")),
                    pages,
                ))
            }
        }
    });
    let mut response = Body::from_stream(stream).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(response)
}

struct ExportPages {
    store: Store,
    workspace: WorkspaceId,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    after: i64,
    done: bool,
}

impl ExportPages {
    const PAGE: u32 = 500;

    async fn next_chunk(&mut self) -> Result<Option<Bytes>, datastack_store::Error> {
        let entries = self
            .store
            .audit_export_page(
                &self.workspace,
                self.since,
                self.until,
                self.after,
                Self::PAGE,
            )
            .await?;
        if entries.is_empty() {
            return Ok(None);
        }
        if entries.len() < Self::PAGE as usize {
            self.done = true;
        }
        let mut out = Vec::with_capacity(entries.len() * 512);
        for e in entries {
            self.after = e.seq;
            // Serializing plain data to a Vec cannot fail.
            let _ = serde_json::to_writer(&mut out, &AuditEntryResponse::from(e));
            out.push(b'\n');
        }
        Ok(Some(Bytes::from(out)))
    }
}

/// The result of verifying the workspace's chain.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerifyResponse {
    /// The workspace.
    pub workspace_id: String,
    /// Whether the whole retained chain is intact.
    pub ok: bool,
    /// Entries found in place (up to the first break).
    pub checked: u64,
    /// The signed head's sequence number (the chain's length since it began).
    pub head_seq: i64,
    /// Where the retained chain starts after retention purges.
    pub checkpoint: Option<CheckpointResponse>,
    /// The first break: `{problem: altered|removed|reordered|start_missing, id, seq}`,
    /// `{problem: truncated, afterId, headSeq}`, `{problem: head_forged}`,
    /// `{problem: head_missing}`, `{problem: checkpoint_forged}` or
    /// `{problem: unacknowledged_break, id, seq, reason, resumedAfterSeq}` (a break a node
    /// recorded in the chain that no operator has acknowledged).
    #[schema(value_type = Option<Object>)]
    pub first_break: Option<ChainBreak>,
    /// Every break recorded in the chain, oldest first, with its acknowledgement
    /// (`null` until acknowledged): `{id, seq, time, reason, resumedAfterSeq,
    /// knownHeadSeq, acknowledged: {id, seq, time, by, reason}}`.
    #[schema(value_type = Vec<Object>)]
    pub breaks: Vec<RecordedBreak>,
}

/// A retention checkpoint.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointResponse {
    /// The last purged entry's sequence number.
    pub seq: i64,
    /// Entries older than this were purged.
    #[serde(serialize_with = "crate::api::time::rfc3339")]
    pub purged_before: DateTime<Utc>,
}

/// Walks the workspace's audit chain, recomputing every entry's hash under the audit key,
/// and reports the first altered, removed or reordered entry by id.
#[utoipa::path(get, operation_id = "verifyAuditChain", path = "/api/v1/audit/verify", tag = "audit",
    security(("bearer" = ["read:audit"])),
    params(("x-datastack-scope" = String, Header, description = "read:audit")),
    responses((status = 200, body = VerifyResponse), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn verify(
    State(state): State<AppState>,
    caller: Authorized<ReadAudit>,
) -> ApiResult<Json<VerifyResponse>> {
    let ws = &caller.identity.workspace.id;
    let report = state.store.verify_audit_chain(ws).await?;
    if let Some(b) = &report.broken {
        tracing::warn!(workspace = %ws, problem = ?b, "the audit chain is broken");
    }
    Ok(Json(verify_response(ws, report)))
}

/// The answer of a verification of `workspace`'s chain, online (`GET /api/v1/audit/verify`)
/// or offline (`datastack audit verify --offline`): one shape for both.
pub fn verify_response(
    workspace: &WorkspaceId,
    report: datastack_store::ChainReport,
) -> VerifyResponse {
    VerifyResponse {
        workspace_id: workspace.to_string(),
        ok: report.broken.is_none(),
        checked: report.checked,
        head_seq: report.head_seq,
        checkpoint: report
            .checkpoint
            .map(|(seq, purged_before)| CheckpointResponse { seq, purged_before }),
        first_break: report.broken,
        breaks: report.breaks,
    }
}

/// A security event.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecurityEventResponse {
    /// `evt_…`.
    pub id: String,
    /// e.g. `auth.failure_burst`, `credential.new_network`, `token.created`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The workspace.
    pub workspace_id: String,
    /// When.
    #[serde(serialize_with = "crate::api::time::rfc3339")]
    pub time: DateTime<Utc>,
    /// The event's data, with the `request_id` that caused it when there was one.
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
}

impl From<SecurityEvent> for SecurityEventResponse {
    fn from(e: SecurityEvent) -> Self {
        Self {
            id: e.id.to_string(),
            event_type: e.event_type,
            workspace_id: e.workspace_id.to_string(),
            time: e.time,
            payload: e.payload,
        }
    }
}

/// One page of security events, newest first.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecurityEventPage {
    /// The events.
    pub items: Vec<SecurityEventResponse>,
    /// Pass as `cursor` for the next (older) page; `null` on the last.
    pub next_cursor: Option<String>,
}

/// Which security events to list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SecurityEventParams {
    /// Only this type.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub event_type: Option<String>,
    /// Page size, 1–1000 (default 100).
    pub limit: Option<i64>,
    /// The `nextCursor` of the previous page.
    pub cursor: Option<String>,
}

/// Lists the workspace's security events, newest first.
#[utoipa::path(get, operation_id = "listSecurityEvents", path = "/api/v1/audit/security-events", tag = "audit",
    security(("bearer" = ["read:audit"])),
    params(("x-datastack-scope" = String, Header, description = "read:audit"), SecurityEventParams),
    responses((status = 200, body = SecurityEventPage), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn security_events(
    State(state): State<AppState>,
    caller: Authorized<ReadAudit>,
    Query(params): Query<SecurityEventParams>,
) -> ApiResult<Json<SecurityEventPage>> {
    let limit = match params.limit {
        None => 100,
        Some(n) if (1..=1000).contains(&n) => n as u32,
        Some(_) => {
            return Err(ApiError::InvalidRequest(
                "limit: must be between 1 and 1000".into(),
            ));
        }
    };
    let event_type = text_param("type", params.event_type)?;
    let cursor = match params.cursor {
        Some(c) if datastack_core::id::EventId::parse(&c).is_err() => {
            return Err(ApiError::InvalidRequest(
                "cursor: is not a cursor this server issued".into(),
            ));
        }
        other => other,
    };
    let (events, next) = state
        .store
        .list_security_events(
            &caller.identity.workspace.id,
            event_type.as_deref(),
            cursor.as_deref(),
            limit,
        )
        .await?;
    Ok(Json(SecurityEventPage {
        items: events
            .into_iter()
            .map(SecurityEventResponse::from)
            .collect(),
        next_cursor: next,
    }))
}
