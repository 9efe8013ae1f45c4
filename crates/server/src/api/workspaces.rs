//! Workspaces: list, get, create (with a first admin), update settings, suspend, activate.
//!
//! Workspaces form a tree. A caller sees and manages its own workspace and every workspace
//! below it (children, their children, …), never an ancestor or a sibling: a workspace
//! outside the caller's subtree answers 404 like one that does not exist.

use crate::pipeline::extract::{PathId, WorkspacePath};
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use datastack_core::authz::Role;
use datastack_core::credential::{self, CredentialKind};
use datastack_core::id::{PrincipalId, WorkspaceId};
use datastack_core::model::{Principal, PrincipalKind, Status, Workspace, WorkspaceSettings};
use datastack_core::validate::{self, Email};
use datastack_store::{WorkspaceFilter, WorkspacePatch};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::principals::PrincipalResponse;
use super::{PageParams, page_of};
use crate::api::issuance::new_token_record;
use crate::audit::AuditContext;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::pipeline::authorize::{Authorized, ManageWorkspaces, ReadWorkspaces};
use crate::pipeline::extract::{Json, Query};
use crate::state::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_workspaces, create_workspace))
        .routes(routes!(get_workspace, update_workspace))
        .routes(routes!(suspend_workspace))
        .routes(routes!(activate_workspace))
}

/// Workspace settings as shown.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SettingsResponse {
    /// The longest PAT lifetime in days; `null`: no maximum.
    pub max_token_lifetime_days: Option<u32>,
    /// How long audit entries are kept, in days.
    pub audit_retention_days: u32,
    /// Unused tokens are revoked after this many days; `null`: never.
    pub auto_revoke_unused_days: Option<u32>,
    /// Whether the enforcement of the workspace's IP access lists is suspended.
    pub ip_access_lists_suspended: bool,
    /// Whether the workspace opted in to data retention by upstream services (passed to
    /// them as `x-datastack-retention-consent`).
    pub data_retention_consent: bool,
}

/// A workspace.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceResponse {
    /// `ws_…`.
    pub id: String,
    /// Display name.
    pub name: String,
    /// The workspace it was created from, if any.
    pub parent_id: Option<String>,
    /// Credential policy.
    pub settings: SettingsResponse,
    /// `active`, or `suspended` by its parent (every credential in it is refused).
    pub status: &'static str,
    /// Creation time.
    #[serde(serialize_with = "crate::api::time::rfc3339")]
    pub created_at: DateTime<Utc>,
    /// Last change.
    #[serde(serialize_with = "crate::api::time::rfc3339")]
    pub updated_at: DateTime<Utc>,
}

impl From<Workspace> for WorkspaceResponse {
    fn from(w: Workspace) -> Self {
        Self {
            id: w.id.to_string(),
            name: w.name,
            parent_id: w.parent_id.map(|p| p.to_string()),
            settings: SettingsResponse {
                max_token_lifetime_days: w.settings.max_token_lifetime_days,
                audit_retention_days: w.settings.audit_retention_days(),
                auto_revoke_unused_days: w.settings.auto_revoke_unused_days,
                ip_access_lists_suspended: w.settings.ip_access_lists_suspended,
                data_retention_consent: w.settings.data_retention_consent,
            },
            status: w.status.as_str(),
            created_at: w.created_at,
            updated_at: w.updated_at,
        }
    }
}

page_of!(WorkspacePage, WorkspaceResponse);

/// Settings as submitted. In an update, an absent field keeps its value and `null` clears
/// it; in a creation both mean "not set".
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SettingsRequest {
    /// 1–36500 days, or `null` for no maximum.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>)]
    pub max_token_lifetime_days: Option<Option<i64>>,
    /// Audit retention, 1–36500 days; `null`: the default, 365.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>)]
    pub audit_retention_days: Option<Option<i64>>,
    /// Revoke personal access tokens unused for this many days (1–36500), after a
    /// `token.auto_revoke_scheduled` event; `null`: never.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>)]
    pub auto_revoke_unused_days: Option<Option<i64>>,
    /// Suspend (true) or resume (false) the enforcement of IP access lists. Default false.
    pub ip_access_lists_suspended: Option<bool>,
    /// Opt in (true) or out (false) of data retention by upstream services. Default false.
    pub data_retention_consent: Option<bool>,
}

/// Changes to (max token lifetime, audit retention, auto-revocation): `None` keeps a
/// setting, `Some(None)` clears it.
type SettingsChanges = (
    Option<Option<u32>>,
    Option<Option<u32>>,
    Option<Option<u32>>,
);

/// A field that is present, even as `null`, becomes `Some`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<i64>>, D::Error> {
    Option::<i64>::deserialize(d).map(Some)
}

impl SettingsRequest {
    fn days(value: Option<Option<i64>>, field: &str) -> ApiResult<Option<Option<u32>>> {
        match value {
            None => Ok(None),
            Some(None) => Ok(Some(None)),
            Some(Some(d)) if (1..=36_500).contains(&d) => Ok(Some(Some(d as u32))),
            Some(Some(_)) => Err(ApiError::InvalidRequest(format!(
                "settings.{field}: must be between 1 and 36500, or null"
            ))),
        }
    }

    /// The changes an update asks for.
    fn patch(&self) -> ApiResult<SettingsChanges> {
        Ok((
            Self::days(self.max_token_lifetime_days, "maxTokenLifetimeDays")?,
            Self::days(self.audit_retention_days, "auditRetentionDays")?,
            Self::days(self.auto_revoke_unused_days, "autoRevokeUnusedDays")?,
        ))
    }

    /// The settings of a new workspace.
    fn validate(&self) -> ApiResult<WorkspaceSettings> {
        let (max, retention, revoke) = self.patch()?;
        Ok(WorkspaceSettings {
            max_token_lifetime_days: max.flatten(),
            audit_retention_days: retention.flatten(),
            auto_revoke_unused_days: revoke.flatten(),
            ip_access_lists_suspended: self.ip_access_lists_suspended.unwrap_or(false),
            data_retention_consent: self.data_retention_consent.unwrap_or(false),
        })
    }
}

/// A workspace to create, with its first admin.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateWorkspaceRequest {
    /// Display name, 1–200 characters.
    pub name: String,
    /// The first admin's email (default `admin@datastack.local`).
    pub admin_email: Option<String>,
    /// The first admin's name (default `Administrator`).
    pub admin_name: Option<String>,
    /// Initial settings.
    pub settings: Option<SettingsRequest>,
}

/// A created workspace, its first admin, and that admin's token (shown once).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedWorkspaceResponse {
    /// The workspace.
    pub workspace: WorkspaceResponse,
    /// Its first admin.
    pub admin: PrincipalResponse,
    /// The admin's token, granted the scopes of the credential that created the workspace
    /// (never more). Store it now; it cannot be shown again.
    pub admin_token: String,
}

/// A change; absent fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateWorkspaceRequest {
    /// New display name.
    pub name: Option<String>,
    /// New settings (replace the old ones).
    pub settings: Option<SettingsRequest>,
}

fn not_found(e: datastack_store::Error) -> ApiError {
    match e {
        datastack_store::Error::NotFound => ApiError::not_found("workspace"),
        other => other.into(),
    }
}

/// Filters and pagination of the workspace list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ListWorkspacesParams {
    /// Only the direct children of this workspace (`ws_…`, the caller's or one below it).
    pub parent_id: Option<String>,
    /// Only workspaces with this status of their own: `active` or `suspended`.
    pub status: Option<String>,
    /// Page size, 1–200 (default 50).
    pub limit: Option<i64>,
    /// The `nextCursor` of the previous page.
    pub cursor: Option<String>,
}

/// Lists the caller's workspace and every workspace below it, ordered by id.
#[utoipa::path(get, operation_id = "listWorkspaces", path = "/api/v1/workspaces", tag = "workspaces",
    security(("bearer" = ["read:workspaces"])),
    params(("x-datastack-scope" = String, Header, description = "read:workspaces"), ListWorkspacesParams),
    responses((status = 200, body = WorkspacePage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn list_workspaces(
    State(state): State<AppState>,
    caller: Authorized<ReadWorkspaces>,
    Query(params): Query<ListWorkspacesParams>,
) -> ApiResult<Json<WorkspacePage>> {
    let filter = WorkspaceFilter {
        parent: params
            .parent_id
            .as_deref()
            .map(|p| {
                WorkspaceId::parse(p).map_err(|_| {
                    ApiError::InvalidRequest("parentId: must be a workspace id (ws_…)".into())
                })
            })
            .transpose()?,
        status: params.status.as_deref().map(Status::parse).transpose()?,
    };
    let page = PageParams {
        limit: params.limit,
        cursor: params.cursor,
    }
    .to_request()?;
    let result = state
        .store
        .list_workspaces(&caller.identity.principal.workspace_id, &filter, &page)
        .await?;
    Ok(Json(WorkspacePage {
        items: result
            .items
            .into_iter()
            .map(WorkspaceResponse::from)
            .collect(),
        next_cursor: result.next_cursor,
    }))
}

/// Gets a workspace the caller can see.
#[utoipa::path(get, operation_id = "getWorkspace", path = "/api/v1/workspaces/{id}", tag = "workspaces",
    security(("bearer" = ["read:workspaces"])),
    params(("x-datastack-scope" = String, Header, description = "read:workspaces"), ("id" = String, Path, description = "ws_…")),
    responses((status = 200, body = WorkspaceResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn get_workspace(
    State(state): State<AppState>,
    caller: Authorized<ReadWorkspaces>,
    PathId(id): PathId<WorkspacePath>,
) -> ApiResult<Json<WorkspaceResponse>> {
    let ws = state
        .store
        .get_visible_workspace(&caller.identity.principal.workspace_id, &id)
        .await
        .map_err(not_found)?;
    Ok(Json(WorkspaceResponse::from(ws)))
}

/// Creates a workspace under the caller's, with a first admin and its token. The token is
/// granted the calling credential's own scopes, so creating a workspace never yields a
/// broader credential than the one that created it. A workspace deeper than
/// `workspace_max_depth` below the root is refused with 409.
#[utoipa::path(post, operation_id = "createWorkspace", path = "/api/v1/workspaces", tag = "workspaces",
    security(("bearer" = ["manage:workspaces"])),
    params(("x-datastack-scope" = String, Header, description = "manage:workspaces")),
    request_body = CreateWorkspaceRequest,
    responses((status = 201, body = CreatedWorkspaceResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn create_workspace(
    State(state): State<AppState>,
    caller: Authorized<ManageWorkspaces>,
    audit: AuditContext,
    Json(body): Json<CreateWorkspaceRequest>,
) -> ApiResult<(StatusCode, Json<CreatedWorkspaceResponse>)> {
    // The workspace's first admin token is a personal access token: minted by an API key,
    // it would carry none of the key's IP ranges, rate limit or spend limit.
    if caller.identity.api_key.is_some() {
        return Err(ApiError::Forbidden(
            "an API key cannot create a workspace; use a personal access token".into(),
        ));
    }
    let name = validate::text("name", &body.name, validate::MAX_NAME_LEN)?;
    // The new workspace sits one level below the caller's; the root is at depth 0.
    let max_depth = state.config.workspace_max_depth;
    if caller.identity.workspace_depth() + 1 > max_depth as usize {
        return Err(ApiError::Conflict(format!(
            "the new workspace would be at depth {}, deeper than workspace_max_depth = {max_depth} (the root workspace is at depth 0)",
            caller.identity.workspace_depth() + 1
        )));
    }
    let settings = body
        .settings
        .as_ref()
        .map(SettingsRequest::validate)
        .transpose()?
        .unwrap_or_default();
    let admin_email = match &body.admin_email {
        Some(e) => Email::parse(e)
            .map_err(|_| ApiError::InvalidRequest("adminEmail: must be an email address".into()))?,
        None => Email::from_trusted("admin@datastack.local".to_owned()),
    };
    let admin_name = match &body.admin_name {
        Some(n) => validate::text("adminName", n, validate::MAX_NAME_LEN)?,
        None => "Administrator".to_owned(),
    };
    let now = Utc::now();
    let ws = Workspace {
        id: WorkspaceId::generate(),
        name,
        parent_id: Some(caller.identity.principal.workspace_id.clone()),
        settings,
        status: Status::Active,
        created_at: now,
        updated_at: now,
    };
    let admin = Principal {
        id: PrincipalId::generate_user(),
        kind: PrincipalKind::User,
        workspace_id: ws.id.clone(),
        email: Some(admin_email),
        name: admin_name,
        role: Role::Admin,
        status: Status::Active,
        created_at: now,
        updated_at: now,
    };
    let secret = credential::generate(CredentialKind::PersonalAccessToken);
    // Nor does it outlive the creating credential: the workspace's maximum lifetime is the
    // caller's to choose, the caller's own expiry is not.
    let lifetime = [
        ws.settings
            .max_token_lifetime_days
            .map(|d| now + chrono::Duration::days(i64::from(d))),
        caller.identity.token.expires_at,
    ]
    .into_iter()
    .flatten()
    .min();
    // The first admin's token gets the creating credential's scopes, never more: a
    // narrowly scoped credential must not be able to mint an all-apis one by creating a
    // workspace. The new admin can mint tokens only within these scopes.
    let token = new_token_record(
        &admin,
        "workspace admin token",
        caller.identity.token.scopes.clone(),
        lifetime,
        &secret,
    );
    audit.set_resource_id(ws.id.as_str());
    audit.set_detail(
        serde_json::json!({ "name": ws.name, "adminId": admin.id, "adminTokenId": token.id }),
    );
    let trail = audit.change_in(StatusCode::CREATED, &ws.id).with_event(audit.event(
        &ws.id,
        "token.created",
        serde_json::json!({ "tokenId": token.id, "ownerId": admin.id, "scopes": token.scopes, "expiresAt": token.expires_at, "createdBy": caller.identity.principal.id }),
    ));
    state
        .store
        .create_workspace_with_admin(&ws, &admin, &token, &caller.identity.token.id, &trail)
        .await?;
    audit.mark_recorded();
    tracing::info!(workspace = %ws.id, by = %caller.identity.principal.id, "workspace created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedWorkspaceResponse {
            workspace: WorkspaceResponse::from(ws),
            admin: PrincipalResponse::from(admin),
            admin_token: secret.secret.expose_secret().to_owned(),
        }),
    ))
}

/// Updates a workspace's name or settings.
#[utoipa::path(patch, operation_id = "updateWorkspace", path = "/api/v1/workspaces/{id}", tag = "workspaces",
    security(("bearer" = ["manage:workspaces"])),
    params(("x-datastack-scope" = String, Header, description = "manage:workspaces"), ("id" = String, Path, description = "ws_…")),
    request_body = UpdateWorkspaceRequest,
    responses((status = 200, body = WorkspaceResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn update_workspace(
    State(state): State<AppState>,
    caller: Authorized<ManageWorkspaces>,
    audit: AuditContext,
    PathId(id): PathId<WorkspacePath>,
    Json(body): Json<UpdateWorkspaceRequest>,
) -> ApiResult<Json<WorkspaceResponse>> {
    let (max, retention, revoke) = match &body.settings {
        Some(s) => s.patch()?,
        None => (None, None, None),
    };
    let patch = WorkspacePatch {
        name: body
            .name
            .map(|n| validate::text("name", &n, validate::MAX_NAME_LEN))
            .transpose()?,
        max_token_lifetime_days: max,
        audit_retention_days: retention,
        auto_revoke_unused_days: revoke,
        ip_access_lists_suspended: body
            .settings
            .as_ref()
            .and_then(|s| s.ip_access_lists_suspended),
        data_retention_consent: body
            .settings
            .as_ref()
            .and_then(|s| s.data_retention_consent),
    };
    audit.set_detail(serde_json::json!({
        "ipAccessListsSuspended": patch.ip_access_lists_suspended,
        "dataRetentionConsent": patch.data_retention_consent,
        "name": patch.name.is_some(),
        "maxTokenLifetimeDays": max,
        "auditRetentionDays": retention,
        "autoRevokeUnusedDays": revoke,
    }));
    let result = state
        .store
        .update_workspace(
            &caller.identity.principal.workspace_id,
            &id,
            &patch,
            &audit.change_in(StatusCode::OK, &id),
        )
        .await;
    if result.is_ok() {
        audit.mark_recorded();
    }
    // Even when reading the result back failed, the change may have committed.
    crate::edge::apply_invalidation(
        &state,
        &datastack_store::Invalidation::Workspace(id.to_string()),
    )
    .await;
    let ws = result.map_err(not_found)?;
    Ok(Json(WorkspaceResponse::from(ws)))
}

async fn set_status(
    state: &AppState,
    audit: &AuditContext,
    caller: &Principal,
    id: &WorkspaceId,
    status: Status,
) -> ApiResult<Json<WorkspaceResponse>> {
    let result = state
        .store
        .set_workspace_status(
            &caller.workspace_id,
            id,
            status,
            &audit.change_in(StatusCode::OK, id),
        )
        .await;
    if result.is_ok() {
        audit.mark_recorded();
    }
    // Even when reading the result back failed, the change may have committed. Every
    // workspace below inherits the status, so the whole subtree is dropped.
    crate::edge::apply_invalidation(
        state,
        &datastack_store::Invalidation::WorkspaceTree(id.to_string()),
    )
    .await;
    let ws = result.map_err(not_found)?;
    tracing::info!(workspace = %ws.id, status = ws.status.as_str(), by = %caller.id, "workspace status changed");
    Ok(Json(WorkspaceResponse::from(ws)))
}

/// Suspends a workspace below the caller's (a child or any descendant): every credential
/// in it and in every workspace below it is refused at once, on every node, until it is
/// activated again. A workspace cannot suspend itself.
#[utoipa::path(post, operation_id = "suspendWorkspace", path = "/api/v1/workspaces/{id}/suspend", tag = "workspaces",
    security(("bearer" = ["manage:workspaces"])),
    params(("x-datastack-scope" = String, Header, description = "manage:workspaces"), ("id" = String, Path, description = "ws_…")),
    responses((status = 200, body = WorkspaceResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn suspend_workspace(
    State(state): State<AppState>,
    caller: Authorized<ManageWorkspaces>,
    audit: AuditContext,
    PathId(id): PathId<WorkspacePath>,
) -> ApiResult<Json<WorkspaceResponse>> {
    set_status(
        &state,
        &audit,
        &caller.identity.principal,
        &id,
        Status::Suspended,
    )
    .await
}

/// Activates a suspended workspace below the caller's. Credentials below it work again
/// unless another workspace on their chain is still suspended.
#[utoipa::path(post, operation_id = "activateWorkspace", path = "/api/v1/workspaces/{id}/activate", tag = "workspaces",
    security(("bearer" = ["manage:workspaces"])),
    params(("x-datastack-scope" = String, Header, description = "manage:workspaces"), ("id" = String, Path, description = "ws_…")),
    responses((status = 200, body = WorkspaceResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn activate_workspace(
    State(state): State<AppState>,
    caller: Authorized<ManageWorkspaces>,
    audit: AuditContext,
    PathId(id): PathId<WorkspacePath>,
) -> ApiResult<Json<WorkspaceResponse>> {
    set_status(
        &state,
        &audit,
        &caller.identity.principal,
        &id,
        Status::Active,
    )
    .await
}
