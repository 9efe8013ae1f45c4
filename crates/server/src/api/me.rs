//! `GET /api/v1/me`: who the credential belongs to.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::principals::PrincipalResponse;
use super::workspaces::WorkspaceResponse;
use crate::error::{ApiResult, ErrorBody};
use crate::pipeline::authorize::Authenticated;
use crate::pipeline::extract::Json;
use crate::state::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_me))
}

/// The caller, its workspace and the credential it used.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeResponse {
    /// The principal.
    pub principal: PrincipalResponse,
    /// Its workspace.
    pub workspace: WorkspaceResponse,
    /// The credential of this call.
    pub credential: CredentialSummary,
}

/// The credential of a call, never its secret.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialSummary {
    /// Its id.
    pub id: String,
    /// `pat`, `api_key` or `oauth_access`.
    pub kind: &'static str,
    /// Its scopes.
    pub scopes: Vec<String>,
    /// When it expires; `null`: never.
    #[serde(serialize_with = "crate::api::time::rfc3339_opt")]
    pub expires_at: Option<DateTime<Utc>>,
}

/// Who am I? Needs a valid credential and no scope.
#[utoipa::path(get, operation_id = "getMe", path = "/api/v1/me", tag = "identity",
    security(("bearer" = [])),
    responses((status = 200, body = MeResponse), (status = 401, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn get_me(caller: Authenticated) -> ApiResult<Json<MeResponse>> {
    // Everything comes from the verified (usually cached) credential: no store access.
    let identity = caller.identity;
    Ok(Json(MeResponse {
        principal: PrincipalResponse::from(identity.principal.clone()),
        workspace: WorkspaceResponse::from(identity.workspace.clone()),
        credential: CredentialSummary {
            id: identity.token.id.to_string(),
            kind: identity.kind.as_str(),
            scopes: identity.token.scopes.to_strings(),
            expires_at: identity.token.expires_at,
        },
    }))
}
