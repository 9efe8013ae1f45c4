//! Abuse flags: clients flagged for sending while rate-limited (`ratelimit.abuse_flagged`).
//! Admins list them and clear them, which lifts the penalty on every node at once.

use crate::pipeline::extract::{AbuseFlagPath, PathId};
use axum::extract::State;
use chrono::{DateTime, Utc};
use datastack_store::{AbuseFlag, Invalidation};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::audit::AuditContext;
use crate::edge;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::pipeline::authorize::{Authorized, ManageGateway, ReadGateway};
use crate::pipeline::extract::{Json, Query};
use crate::state::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(clear))
}

/// A flag.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AbuseFlagResponse {
    /// Its id, `abf_…`.
    pub id: String,
    /// The workspace it concerns (the root workspace for anonymous addresses).
    pub workspace_id: String,
    /// `credential` or `ip` (a workspace is never flagged).
    pub subject_kind: String,
    /// The credential id, workspace id or address.
    pub subject: String,
    /// 1 for the first flag in a day; the penalty is multiplied by 4 at each level.
    pub level: u32,
    /// Requests refused while limited that raised it.
    pub rejected: u64,
    /// When.
    #[serde(serialize_with = "crate::api::time::rfc3339")]
    pub flagged_at: DateTime<Utc>,
    /// Until when every request of the subject is refused.
    #[serde(serialize_with = "crate::api::time::rfc3339")]
    pub penalty_until: DateTime<Utc>,
    /// `active` (penalty running), `expired` (penalty over, not cleared) or `cleared`.
    pub status: &'static str,
    /// When an admin cleared it.
    #[serde(serialize_with = "crate::api::time::rfc3339_opt")]
    pub cleared_at: Option<DateTime<Utc>>,
    /// Who.
    pub cleared_by: Option<String>,
}

impl From<&AbuseFlag> for AbuseFlagResponse {
    fn from(f: &AbuseFlag) -> Self {
        let status = if f.cleared_at.is_some() {
            "cleared"
        } else if f.penalty_until > Utc::now() {
            "active"
        } else {
            "expired"
        };
        Self {
            id: f.id.to_string(),
            workspace_id: f.workspace_id.to_string(),
            subject_kind: f.subject_kind.clone(),
            subject: f.subject.clone(),
            level: f.level,
            rejected: f.rejected,
            flagged_at: f.flagged_at,
            penalty_until: f.penalty_until,
            status,
            cleared_at: f.cleared_at,
            cleared_by: f.cleared_by.clone(),
        }
    }
}

/// Flags, newest first.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AbuseFlagPage {
    /// The flags.
    pub items: Vec<AbuseFlagResponse>,
    /// Always `null`.
    pub next_cursor: Option<String>,
}

/// Which flags.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only flags not cleared (default true).
    pub active: Option<bool>,
    /// At most this many, 1–500 (default 100).
    pub limit: Option<u32>,
}

/// Lists flags: of every workspace for the root workspace's admins, else of the caller's.
#[utoipa::path(get, operation_id = "listAbuseFlags", path = "/api/v1/abuse-flags", tag = "gateway",
    security(("bearer" = ["read:gateway"])),
    params(ListParams, ("x-datastack-scope" = String, Header, description = "read:gateway")),
    responses((status = 200, body = AbuseFlagPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Authorized<ReadGateway>,
    Query(params): Query<ListParams>,
) -> ApiResult<Json<AbuseFlagPage>> {
    let limit = params.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::InvalidRequest(
            "limit: must be between 1 and 500".into(),
        ));
    }
    let ws = &caller.identity.workspace.id;
    let root = state.edge.root_workspace();
    let scope = (*ws != root).then_some(ws);
    let flags = state
        .store
        .list_abuse_flags(scope, params.active.unwrap_or(true), limit)
        .await?;
    Ok(Json(AbuseFlagPage {
        items: flags.iter().map(AbuseFlagResponse::from).collect(),
        next_cursor: None,
    }))
}

/// Clears a flag: the subject's penalty is lifted on every node and its level forgotten.
#[utoipa::path(post, operation_id = "clearAbuseFlag", path = "/api/v1/abuse-flags/{id}/clear", tag = "gateway",
    security(("bearer" = ["manage:gateway"])),
    params(("id" = String, Path), ("x-datastack-scope" = String, Header, description = "manage:gateway")),
    responses((status = 200, body = AbuseFlagResponse), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn clear(
    State(state): State<AppState>,
    caller: Authorized<ManageGateway>,
    audit: AuditContext,
    PathId(id): PathId<AbuseFlagPath>,
) -> ApiResult<Json<AbuseFlagResponse>> {
    let ws = &caller.identity.workspace.id;
    let root = state.edge.root_workspace();
    let scope = (*ws != root).then_some(ws);
    let flag = state
        .store
        .clear_abuse_flag(scope, &id, caller.identity.principal.id.as_str(), |flag| {
            audit.set_detail(serde_json::json!({
                "subjectKind": flag.subject_kind,
                "subject": flag.subject,
                "level": flag.level,
            }));
            audit.change(axum::http::StatusCode::OK)
        })
        .await
        .map_err(|e| match e {
            datastack_store::Error::NotFound => ApiError::not_found("abuse flag"),
            other => other.into(),
        })?;
    audit.mark_recorded();
    let key = format!("{}:{}", flag.subject_kind, flag.subject);
    edge::apply_invalidation(&state, &Invalidation::Penalty(key)).await;
    tracing::info!(flag = %flag.id, "abuse flag cleared");
    Ok(Json(AbuseFlagResponse::from(&flag)))
}
