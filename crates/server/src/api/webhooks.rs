//! Webhooks: register, list, get, update, delete, pause and resume endpoints; send a test;
//! rotate the secret with an overlap; list deliveries and their attempts, redeliver one,
//! replay the failed ones; the catalogue of event types; and `POST /api/v1/events`, through
//! which upstream services raise their own events.

use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use chrono::{DateTime, Duration, Utc};
use datastack_core::id::{EventId, WebhookId};
use datastack_core::scope::{Resource, Scope};
use datastack_core::validate;
use datastack_core::webhook::{self, CATALOGUE, Source, WebhookSecret};
use datastack_store::{DeliveryFilter, StoredAttempt, StoredDelivery, StoredWebhook, WebhookPatch};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{PageParams, page_of};
use crate::audit::AuditContext;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::pipeline::authorize::{
    Authorized, ManageWebhooks, ReadWebhooks, SCOPE_HEADER, authenticated_in, decide_scope,
};
use crate::pipeline::extract::{Json, Path, PathId, Query, WebhookPath};
use crate::state::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_webhooks, create_webhook))
        .routes(routes!(event_types))
        .routes(routes!(get_webhook, update_webhook, delete_webhook))
        .routes(routes!(pause_webhook))
        .routes(routes!(resume_webhook))
        .routes(routes!(test_webhook))
        .routes(routes!(rotate_webhook_secret))
        .routes(routes!(list_deliveries))
        .routes(routes!(get_delivery))
        .routes(routes!(redeliver))
        .routes(routes!(replay))
        .routes(routes!(publish_event))
}

/// Webhooks a workspace may have.
const MAX_WEBHOOKS: i64 = 50;
/// Filters one webhook may list.
const MAX_FILTERS: usize = 50;
/// The longest description.
const MAX_DESCRIPTION: usize = 500;
/// The largest metadata object, serialized.
const MAX_METADATA_BYTES: usize = 4096;
/// The largest `data` of a published event, serialized.
const MAX_EVENT_BYTES: usize = 64 * 1024;
/// The longest overlap of a rotated secret: seven days.
const MAX_OVERLAP_SECONDS: i64 = 7 * 86_400;

fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// A webhook to register.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateWebhookRequest {
    /// Where deliveries go: `https://…` (plain `http://` only to networks the operator
    /// allows). Addresses that are private, loopback, link-local, CGNAT, unique-local,
    /// multicast, unspecified or cloud metadata are refused unless allowed.
    pub url: String,
    /// Event types to deliver: `*`, `group.*`, or types from `GET
    /// /api/v1/webhooks/event-types`; at most 50.
    pub events: Vec<String>,
    /// The signing secret, `whsec_` + base64 of 24–64 bytes; default: generated and shown
    /// once in the answer.
    pub secret: Option<String>,
    /// For people, at most 500 characters.
    pub description: Option<String>,
    /// Deliveries per second at most (1–10 000); default: no limit beyond the concurrency.
    pub rate_limit: Option<i64>,
    /// A JSON object of at most 4 KiB, returned with the webhook.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
}

/// Changes to a webhook: absent fields stay; `null` clears a description, rate limit or
/// metadata.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateWebhookRequest {
    /// A new URL (checked as at registration).
    pub url: Option<String>,
    /// New event filters.
    pub events: Option<Vec<String>>,
    /// A new description; `null` clears it.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<String>>,
    /// A new rate limit; `null`: none.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<i64>)]
    pub rate_limit: Option<Option<i64>>,
    /// New metadata; `null` clears it.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Option<serde_json::Value>>,
}

/// A webhook. Its secret is never shown again after creation or rotation.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookResponse {
    /// `wh_…`.
    pub id: String,
    /// The workspace whose events it receives.
    pub workspace_id: String,
    /// Where deliveries go.
    pub url: String,
    /// The event filters.
    pub events: Vec<String>,
    /// For people.
    pub description: Option<String>,
    /// Deliveries per second at most.
    pub rate_limit: Option<i64>,
    /// The owner's metadata.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    /// `active`, `paused` (deliveries wait) or `disabled` (failing for too long; new events
    /// are not queued until it is resumed).
    pub status: String,
    /// Why it is disabled.
    pub disabled_reason: Option<String>,
    /// Since when every attempt has failed.
    pub failing_since: Option<DateTime<Utc>>,
    /// The last successful delivery.
    pub last_success_at: Option<DateTime<Utc>>,
    /// Until when the previous secret also signs (after a rotation with an overlap).
    pub previous_secret_valid_until: Option<DateTime<Utc>>,
    /// Who registered it.
    pub created_by: Option<String>,
    /// When.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl From<StoredWebhook> for WebhookResponse {
    fn from(w: StoredWebhook) -> Self {
        let previous = w
            .previous_secret_expires_at
            .filter(|t| *t > Utc::now() && w.previous_sealed_secret.is_some());
        Self {
            id: w.id.to_string(),
            workspace_id: w.workspace_id.to_string(),
            url: w.url,
            events: w.events,
            description: w.description,
            rate_limit: w.rate_limit,
            metadata: w.metadata,
            status: w.status,
            disabled_reason: w.disabled_reason,
            failing_since: w.failing_since,
            last_success_at: w.last_success_at,
            previous_secret_valid_until: previous,
            created_by: w.created_by,
            created_at: w.created_at,
            updated_at: w.updated_at,
        }
    }
}

/// A webhook with its secret, shown once.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookWithSecret {
    /// The signing secret (`whsec_…`): store it now, it is not shown again.
    pub secret: String,
    /// The webhook.
    #[serde(flatten)]
    pub webhook: WebhookResponse,
}

page_of!(WebhookPage, WebhookResponse);

/// A rotation.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RotateWebhookSecretRequest {
    /// How long the old secret keeps signing too (0–604 800 s, default 0): deliveries
    /// carry two `v1,` signatures meanwhile.
    pub overlap_seconds: Option<i64>,
    /// The new secret; default: generated.
    pub secret: Option<String>,
}

/// A replay.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplayRequest {
    /// Re-send every failed delivery of an event queued at or after this time.
    pub since: DateTime<Utc>,
}

/// How many deliveries a replay queued again.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplayResponse {
    /// Deliveries queued again.
    pub replayed: u64,
}

/// One delivery: an event to this webhook, across all its attempts.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryResponse {
    /// The event's id: the body's `request_id` and the `webhook-id` header, the same on
    /// every attempt; also this delivery's id.
    pub id: String,
    /// The webhook.
    pub webhook_id: String,
    /// The event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// `pending`, `succeeded` or `failed` (given up: not retryable, or retried for the
    /// whole retry window).
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

impl From<StoredDelivery> for DeliveryResponse {
    fn from(d: StoredDelivery) -> Self {
        Self {
            id: d.message_id.to_string(),
            webhook_id: d.webhook_id.to_string(),
            event_type: d.event_type,
            status: d.status,
            attempts: d.attempts,
            next_attempt_at: d.next_attempt_at,
            last_status_code: d.last_status_code,
            last_error: d.last_error,
            last_latency_ms: d.last_latency_ms,
            last_attempt_at: d.last_attempt_at,
            created_at: d.created_at,
        }
    }
}

page_of!(DeliveryPage, DeliveryResponse);

/// One attempt of a delivery.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttemptResponse {
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
    /// Whether it succeeded (a 2xx).
    pub succeeded: bool,
}

impl From<StoredAttempt> for AttemptResponse {
    fn from(a: StoredAttempt) -> Self {
        Self {
            attempt: a.attempt,
            started_at: a.started_at,
            status_code: a.status_code,
            latency_ms: a.latency_ms,
            error: a.error,
            succeeded: a.succeeded,
        }
    }
}

/// A delivery with its attempts.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryDetail {
    /// The delivery.
    #[serde(flatten)]
    pub delivery: DeliveryResponse,
    /// Its attempts, oldest first.
    pub attempt_log: Vec<AttemptResponse>,
}

/// Filters of the delivery list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct DeliveryQuery {
    /// `pending`, `succeeded` or `failed`.
    pub status: Option<String>,
    /// One event type.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub event_type: Option<String>,
    /// Events queued at or after (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Events queued before (RFC 3339).
    pub until: Option<DateTime<Utc>>,
    /// Page size, 1–200 (default 50).
    pub limit: Option<i64>,
    /// The `nextCursor` of the previous page.
    pub cursor: Option<String>,
}

/// One type of event.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventTypeResponse {
    /// `group.what`.
    pub name: String,
    /// What it means.
    pub description: String,
    /// `server` (raised by datastack) or `upstream` (published with `POST /api/v1/events`).
    pub source: String,
    /// A JSON Schema of the event's `data`.
    #[schema(value_type = Object)]
    pub schema: serde_json::Value,
}

/// The catalogue.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventTypeList {
    /// Every type, by name.
    pub items: Vec<EventTypeResponse>,
}

/// An event an upstream service raises.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PublishEventRequest {
    /// A type from the catalogue whose source is `upstream` (`job.completed`, …).
    #[serde(rename = "type")]
    pub event_type: String,
    /// The event's data: a JSON object of at most 64 KiB with the type's required fields.
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

/// A published event.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PublishedEvent {
    /// `evt_…`: the deliveries' `request_id` and `webhook-id`.
    pub id: String,
    /// Its type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Whether any webhook takes it (it was queued for delivery).
    pub queued: bool,
}

fn filters(list: &[String]) -> ApiResult<Vec<String>> {
    if list.is_empty() || list.len() > MAX_FILTERS {
        return Err(ApiError::InvalidRequest(format!(
            "events: between 1 and {MAX_FILTERS} event types, `group.*` or `*`"
        )));
    }
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for f in list {
        let f = webhook::parse_filter(f)?;
        if !out.contains(&f) {
            out.push(f);
        }
    }
    Ok(out)
}

fn description(d: Option<String>) -> ApiResult<Option<String>> {
    d.map(|d| validate::text("description", &d, MAX_DESCRIPTION))
        .transpose()
        .map_err(Into::into)
}

fn rate_limit(r: Option<i64>) -> ApiResult<Option<i64>> {
    match r {
        Some(n) if !(1..=10_000).contains(&n) => Err(ApiError::InvalidRequest(
            "rateLimit: deliveries per second, 1–10000".into(),
        )),
        other => Ok(other),
    }
}

fn metadata(m: Option<serde_json::Value>) -> ApiResult<Option<serde_json::Value>> {
    match m {
        None => Ok(None),
        Some(v) if v.is_object() && v.to_string().len() <= MAX_METADATA_BYTES => Ok(Some(v)),
        Some(_) => Err(ApiError::InvalidRequest(
            "metadata: a JSON object of at most 4 KiB".into(),
        )),
    }
}

fn secret(s: Option<&str>) -> ApiResult<WebhookSecret> {
    match s {
        None => Ok(WebhookSecret::generate()),
        Some(s) => Ok(WebhookSecret::parse(s)?),
    }
}

async fn checked_url(state: &AppState, url: &str) -> ApiResult<String> {
    state
        .webhooks
        .check_url(url)
        .await
        .map(|u| u.to_string())
        .map_err(|e| ApiError::InvalidRequest(e.0))
}

fn webhook_not_found(e: datastack_store::Error) -> ApiError {
    match e {
        datastack_store::Error::NotFound => ApiError::not_found("webhook"),
        other => other.into(),
    }
}

/// Registers a webhook; its secret is in the answer, once.
#[utoipa::path(post, operation_id = "createWebhook", path = "/api/v1/webhooks", tag = "webhooks",
    security(("bearer" = ["manage:webhooks"])),
    params(("x-datastack-scope" = String, Header, description = "manage:webhooks")),
    request_body = CreateWebhookRequest,
    responses((status = 201, body = WebhookWithSecret), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn create_webhook(
    State(state): State<AppState>,
    caller: Authorized<ManageWebhooks>,
    audit: AuditContext,
    Json(body): Json<CreateWebhookRequest>,
) -> ApiResult<(StatusCode, Json<WebhookWithSecret>)> {
    let me = &caller.identity.principal;
    let events = filters(&body.events)?;
    let description = description(body.description)?;
    let rate_limit = rate_limit(body.rate_limit)?;
    let metadata = metadata(body.metadata)?;
    let secret = secret(body.secret.as_deref())?;
    let url = checked_url(&state, &body.url).await?;
    if state.store.count_webhooks(&me.workspace_id).await? >= MAX_WEBHOOKS {
        return Err(ApiError::Conflict(format!(
            "a workspace has at most {MAX_WEBHOOKS} webhooks; delete one first"
        )));
    }
    let now = Utc::now();
    let id = WebhookId::generate();
    let webhook = StoredWebhook {
        sealed_secret: state.webhooks.seal(&id, &secret),
        id,
        workspace_id: me.workspace_id.clone(),
        url,
        description,
        events,
        rate_limit,
        metadata,
        status: "active".into(),
        disabled_reason: None,
        previous_sealed_secret: None,
        previous_secret_expires_at: None,
        failing_since: None,
        last_success_at: None,
        created_by: Some(me.id.to_string()),
        created_at: now,
        updated_at: now,
    };
    audit.set_resource_id(webhook.id.as_str());
    // The origin only: a URL's path or query can itself be a secret (capability URLs).
    audit.set_detail(serde_json::json!({
        "origin": crate::webhooks::origin(&webhook.url),
        "events": webhook.events,
    }));
    let trail = audit.change(StatusCode::CREATED);
    state.store.insert_webhook(&webhook, &trail).await?;
    audit.mark_recorded();
    tracing::info!(webhook_id = %webhook.id, "webhook registered");
    Ok((
        StatusCode::CREATED,
        Json(WebhookWithSecret {
            secret: secret.expose().to_owned(),
            webhook: webhook.into(),
        }),
    ))
}

/// Lists the workspace's webhooks.
#[utoipa::path(get, operation_id = "listWebhooks", path = "/api/v1/webhooks", tag = "webhooks",
    security(("bearer" = ["read:webhooks"])),
    params(("x-datastack-scope" = String, Header, description = "read:webhooks"), PageParams),
    responses((status = 200, body = WebhookPage), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn list_webhooks(
    State(state): State<AppState>,
    caller: Authorized<ReadWebhooks>,
    Query(params): Query<PageParams>,
) -> ApiResult<Json<WebhookPage>> {
    let page = params.to_request()?;
    let result = state
        .store
        .list_webhooks(&caller.identity.principal.workspace_id, &page)
        .await?;
    Ok(Json(WebhookPage {
        items: result.items.into_iter().map(Into::into).collect(),
        next_cursor: result.next_cursor,
    }))
}

/// The event types webhooks can subscribe to, with a JSON Schema of each one's `data`.
#[utoipa::path(get, operation_id = "listWebhookEventTypes", path = "/api/v1/webhooks/event-types", tag = "webhooks",
    security(("bearer" = ["read:webhooks"])),
    params(("x-datastack-scope" = String, Header, description = "read:webhooks")),
    responses((status = 200, body = EventTypeList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn event_types(_caller: Authorized<ReadWebhooks>) -> Json<EventTypeList> {
    Json(EventTypeList {
        items: CATALOGUE
            .iter()
            .map(|t| EventTypeResponse {
                name: t.name.to_owned(),
                description: t.description.to_owned(),
                source: t.source.as_str().to_owned(),
                schema: t.schema(),
            })
            .collect(),
    })
}

/// One webhook.
#[utoipa::path(get, operation_id = "getWebhook", path = "/api/v1/webhooks/{id}", tag = "webhooks",
    security(("bearer" = ["read:webhooks"])),
    params(("x-datastack-scope" = String, Header, description = "read:webhooks"), ("id" = String, Path, description = "wh_…")),
    responses((status = 200, body = WebhookResponse), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn get_webhook(
    State(state): State<AppState>,
    caller: Authorized<ReadWebhooks>,
    PathId(id): PathId<WebhookPath>,
) -> ApiResult<Json<WebhookResponse>> {
    let w = state
        .store
        .get_webhook(Some(&caller.identity.principal.workspace_id), &id)
        .await
        .map_err(webhook_not_found)?;
    Ok(Json(w.into()))
}

/// Changes a webhook.
#[utoipa::path(patch, operation_id = "updateWebhook", path = "/api/v1/webhooks/{id}", tag = "webhooks",
    security(("bearer" = ["manage:webhooks"])),
    params(("x-datastack-scope" = String, Header, description = "manage:webhooks"), ("id" = String, Path, description = "wh_…")),
    request_body = UpdateWebhookRequest,
    responses((status = 200, body = WebhookResponse), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn update_webhook(
    State(state): State<AppState>,
    caller: Authorized<ManageWebhooks>,
    audit: AuditContext,
    PathId(id): PathId<WebhookPath>,
    Json(body): Json<UpdateWebhookRequest>,
) -> ApiResult<Json<WebhookResponse>> {
    let me = &caller.identity.principal;
    let url = match body.url.as_deref() {
        Some(u) => Some(checked_url(&state, u).await?),
        None => None,
    };
    let patch = WebhookPatch {
        url,
        events: body.events.as_deref().map(filters).transpose()?,
        description: body.description.map(description).transpose()?,
        rate_limit: body.rate_limit.map(rate_limit).transpose()?,
        metadata: body.metadata.map(metadata).transpose()?,
    };
    audit.set_resource_id(id.as_str());
    let trail = audit.change(StatusCode::OK);
    let w = state
        .store
        .update_webhook(&me.workspace_id, &id, &patch, &trail)
        .await
        .map_err(webhook_not_found)?;
    audit.mark_recorded();
    Ok(Json(w.into()))
}

/// Deletes a webhook with its deliveries; nothing more is sent to it.
#[utoipa::path(delete, operation_id = "deleteWebhook", path = "/api/v1/webhooks/{id}", tag = "webhooks",
    security(("bearer" = ["manage:webhooks"])),
    params(("x-datastack-scope" = String, Header, description = "manage:webhooks"), ("id" = String, Path, description = "wh_…")),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn delete_webhook(
    State(state): State<AppState>,
    caller: Authorized<ManageWebhooks>,
    audit: AuditContext,
    PathId(id): PathId<WebhookPath>,
) -> ApiResult<StatusCode> {
    audit.set_resource_id(id.as_str());
    let trail = audit.change(StatusCode::NO_CONTENT);
    state
        .store
        .delete_webhook(&caller.identity.principal.workspace_id, &id, &trail)
        .await
        .map_err(webhook_not_found)?;
    audit.mark_recorded();
    Ok(StatusCode::NO_CONTENT)
}

async fn set_status(
    state: &AppState,
    caller: &Authorized<ManageWebhooks>,
    audit: &AuditContext,
    id: &WebhookId,
    status: &str,
) -> ApiResult<Json<WebhookResponse>> {
    audit.set_resource_id(id.as_str());
    let trail = audit.change(StatusCode::OK);
    let w = state
        .store
        .set_webhook_status(&caller.identity.principal.workspace_id, id, status, &trail)
        .await
        .map_err(webhook_not_found)?;
    audit.mark_recorded();
    Ok(Json(w.into()))
}

/// Pauses a webhook: events are still queued for it, and sent once it is resumed.
#[utoipa::path(post, operation_id = "pauseWebhook", path = "/api/v1/webhooks/{id}/pause", tag = "webhooks",
    security(("bearer" = ["manage:webhooks"])),
    params(("x-datastack-scope" = String, Header, description = "manage:webhooks"), ("id" = String, Path, description = "wh_…")),
    responses((status = 200, body = WebhookResponse), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn pause_webhook(
    State(state): State<AppState>,
    caller: Authorized<ManageWebhooks>,
    audit: AuditContext,
    PathId(id): PathId<WebhookPath>,
) -> ApiResult<Json<WebhookResponse>> {
    set_status(&state, &caller, &audit, &id, "paused").await
}

/// Resumes a paused or disabled webhook (its failure streak starts again).
#[utoipa::path(post, operation_id = "resumeWebhook", path = "/api/v1/webhooks/{id}/resume", tag = "webhooks",
    security(("bearer" = ["manage:webhooks"])),
    params(("x-datastack-scope" = String, Header, description = "manage:webhooks"), ("id" = String, Path, description = "wh_…")),
    responses((status = 200, body = WebhookResponse), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn resume_webhook(
    State(state): State<AppState>,
    caller: Authorized<ManageWebhooks>,
    audit: AuditContext,
    PathId(id): PathId<WebhookPath>,
) -> ApiResult<Json<WebhookResponse>> {
    set_status(&state, &caller, &audit, &id, "active").await
}

/// Queues a `test.ping` for this webhook only; its delivery is listed like any other.
#[utoipa::path(post, operation_id = "testWebhook", path = "/api/v1/webhooks/{id}/test", tag = "webhooks",
    security(("bearer" = ["manage:webhooks"])),
    params(("x-datastack-scope" = String, Header, description = "manage:webhooks"), ("id" = String, Path, description = "wh_…")),
    responses((status = 202, body = PublishedEvent), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn test_webhook(
    State(state): State<AppState>,
    caller: Authorized<ManageWebhooks>,
    audit: AuditContext,
    PathId(id): PathId<WebhookPath>,
) -> ApiResult<(StatusCode, Json<PublishedEvent>)> {
    let me = &caller.identity.principal;
    let w = state
        .store
        .get_webhook(Some(&me.workspace_id), &id)
        .await
        .map_err(webhook_not_found)?;
    let event = EventId::generate();
    audit.set_resource_id(id.as_str());
    audit.set_detail(serde_json::json!({ "eventId": event }));
    let trail = audit.change(StatusCode::ACCEPTED);
    let data = serde_json::json!({ "webhookId": w.id, "sentBy": me.id });
    state
        .store
        .enqueue_for_webhook(
            &w,
            &event,
            "test.ping",
            datastack_core::audit::now_micros(),
            &data,
            &trail,
        )
        .await
        .map_err(webhook_not_found)?;
    audit.mark_recorded();
    Ok((
        StatusCode::ACCEPTED,
        Json(PublishedEvent {
            id: event.to_string(),
            event_type: "test.ping".into(),
            queued: true,
        }),
    ))
}

/// Gives a webhook a new secret (in the answer, once); with `overlapSeconds`, deliveries
/// are signed with both meanwhile.
#[utoipa::path(post, operation_id = "rotateWebhookSecret", path = "/api/v1/webhooks/{id}/rotate-secret", tag = "webhooks",
    security(("bearer" = ["manage:webhooks"])),
    params(("x-datastack-scope" = String, Header, description = "manage:webhooks"), ("id" = String, Path, description = "wh_…")),
    request_body = RotateWebhookSecretRequest,
    responses((status = 200, body = WebhookWithSecret), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn rotate_webhook_secret(
    State(state): State<AppState>,
    caller: Authorized<ManageWebhooks>,
    audit: AuditContext,
    PathId(id): PathId<WebhookPath>,
    Json(body): Json<RotateWebhookSecretRequest>,
) -> ApiResult<Json<WebhookWithSecret>> {
    let me = &caller.identity.principal;
    let overlap = body.overlap_seconds.unwrap_or(0);
    if !(0..=MAX_OVERLAP_SECONDS).contains(&overlap) {
        return Err(ApiError::InvalidRequest(format!(
            "overlapSeconds: must be between 0 and {MAX_OVERLAP_SECONDS}"
        )));
    }
    let secret = secret(body.secret.as_deref())?;
    let current = state
        .store
        .get_webhook(Some(&me.workspace_id), &id)
        .await
        .map_err(webhook_not_found)?;
    let (previous, until) = if overlap > 0 {
        (
            Some(current.sealed_secret.as_str()),
            Some(Utc::now() + Duration::seconds(overlap)),
        )
    } else {
        (None, None)
    };
    audit.set_resource_id(id.as_str());
    audit.set_detail(serde_json::json!({ "overlapSeconds": overlap }));
    let trail = audit.change(StatusCode::OK);
    let w = state
        .store
        .rotate_webhook_secret(
            &me.workspace_id,
            &id,
            &state.webhooks.seal(&id, &secret),
            previous,
            until,
            &trail,
        )
        .await
        .map_err(webhook_not_found)?;
    audit.mark_recorded();
    Ok(Json(WebhookWithSecret {
        secret: secret.expose().to_owned(),
        webhook: w.into(),
    }))
}

/// The webhook's deliveries, newest first.
#[utoipa::path(get, operation_id = "listWebhookDeliveries", path = "/api/v1/webhooks/{id}/deliveries", tag = "webhooks",
    security(("bearer" = ["read:webhooks"])),
    params(("x-datastack-scope" = String, Header, description = "read:webhooks"), ("id" = String, Path, description = "wh_…"), DeliveryQuery),
    responses((status = 200, body = DeliveryPage), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn list_deliveries(
    State(state): State<AppState>,
    caller: Authorized<ReadWebhooks>,
    PathId(id): PathId<WebhookPath>,
    Query(q): Query<DeliveryQuery>,
) -> ApiResult<Json<DeliveryPage>> {
    let ws = &caller.identity.principal.workspace_id;
    let page = PageParams {
        limit: q.limit,
        cursor: q.cursor,
    }
    .to_request()?;
    if let Some(s) = &q.status
        && !matches!(s.as_str(), "pending" | "succeeded" | "failed")
    {
        return Err(ApiError::InvalidRequest(
            "status: pending, succeeded or failed".into(),
        ));
    }
    if let Some(t) = &q.event_type
        && webhook::lookup(t).is_none()
    {
        return Err(ApiError::InvalidRequest(
            "type: not an event type of the catalogue".into(),
        ));
    }
    state
        .store
        .get_webhook(Some(ws), &id)
        .await
        .map_err(webhook_not_found)?;
    let filter = DeliveryFilter {
        status: q.status,
        event_type: q.event_type,
        since: q.since,
        until: q.until,
    };
    let result = state.store.list_deliveries(ws, &id, &filter, &page).await?;
    Ok(Json(DeliveryPage {
        items: result.items.into_iter().map(Into::into).collect(),
        next_cursor: result.next_cursor,
    }))
}

fn delivery_ids(raw: (String, String)) -> ApiResult<(WebhookId, EventId)> {
    let webhook = WebhookId::parse(&raw.0)
        .map_err(|_| ApiError::InvalidRequest("id: must be a webhook id (wh_…)".into()))?;
    let event = EventId::parse(&raw.1).map_err(|_| {
        ApiError::InvalidRequest("deliveryId: must be a delivery (event) id (evt_…)".into())
    })?;
    Ok((webhook, event))
}

fn delivery_not_found(e: datastack_store::Error) -> ApiError {
    match e {
        datastack_store::Error::NotFound => ApiError::not_found("delivery"),
        other => other.into(),
    }
}

/// One delivery with every attempt.
#[utoipa::path(get, operation_id = "getWebhookDelivery", path = "/api/v1/webhooks/{id}/deliveries/{deliveryId}", tag = "webhooks",
    security(("bearer" = ["read:webhooks"])),
    params(("x-datastack-scope" = String, Header, description = "read:webhooks"), ("id" = String, Path, description = "wh_…"),
        ("deliveryId" = String, Path, description = "evt_…")),
    responses((status = 200, body = DeliveryDetail), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn get_delivery(
    State(state): State<AppState>,
    caller: Authorized<ReadWebhooks>,
    Path(raw): Path<(String, String)>,
) -> ApiResult<Json<DeliveryDetail>> {
    let (webhook, event) = delivery_ids(raw)?;
    let (delivery, attempts) = state
        .store
        .get_delivery(&caller.identity.principal.workspace_id, &webhook, &event)
        .await
        .map_err(delivery_not_found)?;
    Ok(Json(DeliveryDetail {
        delivery: delivery.into(),
        attempt_log: attempts.into_iter().map(Into::into).collect(),
    }))
}

/// Sends a delivery again now (same `request_id` and `webhook-id`).
#[utoipa::path(post, operation_id = "redeliverWebhookDelivery", path = "/api/v1/webhooks/{id}/deliveries/{deliveryId}/redeliver", tag = "webhooks",
    security(("bearer" = ["manage:webhooks"])),
    params(("x-datastack-scope" = String, Header, description = "manage:webhooks"), ("id" = String, Path, description = "wh_…"),
        ("deliveryId" = String, Path, description = "evt_…")),
    responses((status = 202), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn redeliver(
    State(state): State<AppState>,
    caller: Authorized<ManageWebhooks>,
    audit: AuditContext,
    Path(raw): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let (webhook, event) = delivery_ids(raw)?;
    audit.set_resource_id(webhook.as_str());
    audit.set_detail(serde_json::json!({ "eventId": event }));
    let trail = audit.change(StatusCode::ACCEPTED);
    state
        .store
        .redeliver(
            &caller.identity.principal.workspace_id,
            &webhook,
            &event,
            &trail,
        )
        .await
        .map_err(delivery_not_found)?;
    audit.mark_recorded();
    Ok(StatusCode::ACCEPTED)
}

/// Sends again every failed delivery of an event queued since a time.
#[utoipa::path(post, operation_id = "replayWebhook", path = "/api/v1/webhooks/{id}/replay", tag = "webhooks",
    security(("bearer" = ["manage:webhooks"])),
    params(("x-datastack-scope" = String, Header, description = "manage:webhooks"), ("id" = String, Path, description = "wh_…")),
    request_body = ReplayRequest,
    responses((status = 202, body = ReplayResponse), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn replay(
    State(state): State<AppState>,
    caller: Authorized<ManageWebhooks>,
    audit: AuditContext,
    PathId(id): PathId<WebhookPath>,
    Json(body): Json<ReplayRequest>,
) -> ApiResult<(StatusCode, Json<ReplayResponse>)> {
    audit.set_resource_id(id.as_str());
    audit.set_detail(serde_json::json!({ "since": body.since }));
    let trail = audit.change(StatusCode::ACCEPTED);
    let replayed = state
        .store
        .replay_failed(
            &caller.identity.principal.workspace_id,
            &id,
            body.since,
            &trail,
        )
        .await
        .map_err(webhook_not_found)?;
    audit.mark_recorded();
    Ok((StatusCode::ACCEPTED, Json(ReplayResponse { replayed })))
}

/// A caller allowed to publish events: acting with `manage:events` or `manage:webhooks`.
pub struct Publisher {
    identity: std::sync::Arc<crate::credentials::Identity>,
}

impl FromRequestParts<AppState> for Publisher {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = authenticated_in(&parts.extensions, state)?;
        let named = parts
            .headers
            .get(SCOPE_HEADER)
            .and_then(|v| v.to_str().ok());
        // Whichever of the two the named scope is about; manage:events otherwise.
        let required = match named.and_then(|n| n.parse::<Scope>().ok()) {
            Some(Scope::On(_, Resource::Webhooks)) => Scope::manage(Resource::Webhooks),
            _ => Scope::manage(Resource::Events),
        };
        decide_scope(
            state,
            parts.extensions.get::<AuditContext>(),
            &caller.identity,
            named,
            required,
            || serde_json::json!({ "requiredScope": "manage:events or manage:webhooks" }),
        )?;
        Ok(Publisher {
            identity: caller.identity,
        })
    }
}

/// Publishes an event from an upstream service to the webhooks of the caller's workspace
/// that take its type.
#[utoipa::path(post, operation_id = "publishEvent", path = "/api/v1/events", tag = "webhooks",
    security(("bearer" = ["manage:events"])),
    params(("x-datastack-scope" = String, Header, description = "manage:events")),
    request_body = PublishEventRequest,
    responses((status = 202, body = PublishedEvent), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn publish_event(
    State(state): State<AppState>,
    caller: Publisher,
    audit: AuditContext,
    Json(body): Json<PublishEventRequest>,
) -> ApiResult<(StatusCode, Json<PublishedEvent>)> {
    let kind = webhook::lookup(&body.event_type)
        .filter(|t| t.source == Source::Upstream)
        .ok_or_else(|| {
            ApiError::InvalidRequest(
                "type: not an event type upstream services may publish (see GET /api/v1/webhooks/event-types, source `upstream`)"
                    .into(),
            )
        })?;
    kind.check(&body.data)?;
    if body.data.to_string().len() > MAX_EVENT_BYTES {
        return Err(ApiError::InvalidRequest("data: at most 64 KiB".into()));
    }
    let ws = &caller.identity.principal.workspace_id;
    let id = EventId::generate();
    audit.set_resource_id(id.as_str());
    audit.set_detail(serde_json::json!({ "type": kind.name }));
    let trail = audit.change(StatusCode::ACCEPTED);
    let queued = state
        .store
        .publish_event(
            &id,
            ws,
            kind.name,
            datastack_core::audit::now_micros(),
            &body.data,
            &trail,
        )
        .await?;
    audit.mark_recorded();
    Ok((
        StatusCode::ACCEPTED,
        Json(PublishedEvent {
            id: id.to_string(),
            event_type: kind.name.to_owned(),
            queued,
        }),
    ))
}
