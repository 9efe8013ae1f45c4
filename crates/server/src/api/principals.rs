//! Users and service principals: create, list, get, update, suspend, activate, delete.
//!
//! Both kinds share one implementation; the handlers differ only in the kind they serve
//! and in what a creation takes (users have an email).

use crate::pipeline::extract::{PathId, ServicePrincipalPath, UserPath};
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use datastack_core::authz::Role;
use datastack_core::id::PrincipalId;
use datastack_core::model::{Principal, PrincipalKind, Status};
use datastack_core::validate::{self, Email};
use datastack_store::{Invalidation, NewPrincipal, PrincipalFilter, PrincipalPatch};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{PageParams, page_of};
use crate::audit::AuditContext;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::pipeline::authorize::{Authorized, ManageUsers, ReadUsers};
use crate::pipeline::extract::{Json, Query};
use crate::state::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_users, create_user))
        .routes(routes!(get_user, update_user, delete_user))
        .routes(routes!(suspend_user))
        .routes(routes!(activate_user))
        .routes(routes!(list_service_principals, create_service_principal))
        .routes(routes!(
            get_service_principal,
            update_service_principal,
            delete_service_principal
        ))
        .routes(routes!(suspend_service_principal))
        .routes(routes!(activate_service_principal))
}

/// A user or service principal.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrincipalResponse {
    /// `usr_…` or `sp_…`.
    pub id: String,
    /// `user` or `service_principal`.
    pub kind: &'static str,
    /// Its workspace.
    pub workspace_id: String,
    /// A user's email (absent for service principals).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Display name.
    pub name: String,
    /// `admin`, `editor` or `viewer`.
    pub role: &'static str,
    /// `active` or `suspended`.
    pub status: &'static str,
    /// Creation time.
    #[serde(serialize_with = "crate::api::time::rfc3339")]
    pub created_at: DateTime<Utc>,
    /// Last change.
    #[serde(serialize_with = "crate::api::time::rfc3339")]
    pub updated_at: DateTime<Utc>,
}

impl From<Principal> for PrincipalResponse {
    fn from(p: Principal) -> Self {
        Self {
            id: p.id.to_string(),
            kind: p.kind.as_str(),
            workspace_id: p.workspace_id.to_string(),
            email: p.email.map(|e| e.as_str().to_owned()),
            name: p.name,
            role: p.role.as_str(),
            status: p.status.as_str(),
            created_at: p.created_at,
            updated_at: p.updated_at,
        }
    }
}

page_of!(PrincipalPage, PrincipalResponse);

/// A user to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateUserRequest {
    /// Email, unique in the workspace.
    pub email: String,
    /// Display name, 1–200 characters.
    pub name: String,
    /// `admin`, `editor` or `viewer` (default).
    pub role: Option<String>,
}

/// A service principal to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateServicePrincipalRequest {
    /// Display name, 1–200 characters.
    pub name: String,
    /// `admin`, `editor` or `viewer` (default).
    pub role: Option<String>,
}

/// A change; absent fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdatePrincipalRequest {
    /// New display name.
    pub name: Option<String>,
    /// New role.
    pub role: Option<String>,
    /// `active` or `suspended`.
    pub status: Option<String>,
}

/// List filters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ListPrincipalsParams {
    /// Only this role.
    pub role: Option<String>,
    /// Only this status.
    pub status: Option<String>,
    /// Page size, 1–200.
    pub limit: Option<i64>,
    /// Cursor.
    pub cursor: Option<String>,
}

fn not_found(kind: PrincipalKind) -> impl Fn(datastack_store::Error) -> ApiError {
    move |e| match e {
        datastack_store::Error::NotFound => ApiError::not_found(match kind {
            PrincipalKind::User => "user",
            PrincipalKind::ServicePrincipal => "service principal",
        }),
        other => other.into(),
    }
}

async fn list(
    state: &AppState,
    caller: &Principal,
    kind: PrincipalKind,
    params: ListPrincipalsParams,
) -> ApiResult<Json<PrincipalPage>> {
    let filter = PrincipalFilter {
        kind,
        role: params.role.as_deref().map(Role::parse).transpose()?,
        status: params.status.as_deref().map(Status::parse).transpose()?,
    };
    let page = PageParams {
        limit: params.limit,
        cursor: params.cursor,
    }
    .to_request()?;
    let result = state
        .store
        .list_principals(&caller.workspace_id, &filter, &page)
        .await?;
    Ok(Json(PrincipalPage {
        items: result
            .items
            .into_iter()
            .map(PrincipalResponse::from)
            .collect(),
        next_cursor: result.next_cursor,
    }))
}

async fn create(
    state: &AppState,
    audit: &AuditContext,
    caller: &Principal,
    new: NewPrincipal,
) -> ApiResult<(StatusCode, Json<PrincipalResponse>)> {
    let created = state
        .store
        .create_principal(&new, |p| {
            audit.set_resource_id(p.id.as_str());
            audit.set_detail(
                serde_json::json!({ "role": p.role.as_str(), "kind": p.kind.as_str() }),
            );
            audit.change(StatusCode::CREATED)
        })
        .await?;
    audit.mark_recorded();
    tracing::info!(principal = %created.id, by = %caller.id, "principal created");
    Ok((StatusCode::CREATED, Json(PrincipalResponse::from(created))))
}

async fn get_one(
    state: &AppState,
    caller: &Principal,
    kind: PrincipalKind,
    id: &PrincipalId,
) -> ApiResult<Json<PrincipalResponse>> {
    let p = state
        .store
        .get_principal(&caller.workspace_id, kind, id)
        .await
        .map_err(not_found(kind))?;
    Ok(Json(PrincipalResponse::from(p)))
}

async fn update(
    state: &AppState,
    audit: &AuditContext,
    caller: &Principal,
    kind: PrincipalKind,
    id: &PrincipalId,
    patch: PrincipalPatch,
) -> ApiResult<Json<PrincipalResponse>> {
    audit.set_detail(serde_json::json!({
        "name": patch.name.is_some(),
        "role": patch.role.map(Role::as_str),
        "status": patch.status.map(Status::as_str),
    }));
    let result = state
        .store
        .update_principal(
            &caller.workspace_id,
            kind,
            id,
            &patch,
            &audit.change(StatusCode::OK),
        )
        .await;
    if result.is_ok() {
        audit.mark_recorded();
    }
    // Even when reading the result back failed, the change may have committed.
    crate::edge::apply_invalidation(state, &Invalidation::Principal(id.to_string())).await;
    let updated = result.map_err(not_found(kind))?;
    tracing::info!(principal = %id, by = %caller.id, "principal updated");
    Ok(Json(PrincipalResponse::from(updated)))
}

fn patch_from(body: UpdatePrincipalRequest) -> ApiResult<PrincipalPatch> {
    Ok(PrincipalPatch {
        name: body
            .name
            .map(|n| validate::text("name", &n, validate::MAX_NAME_LEN))
            .transpose()?,
        role: body.role.as_deref().map(Role::parse).transpose()?,
        status: body.status.as_deref().map(Status::parse).transpose()?,
    })
}

fn status_patch(status: Status) -> PrincipalPatch {
    PrincipalPatch {
        status: Some(status),
        ..PrincipalPatch::default()
    }
}

async fn remove(
    state: &AppState,
    audit: &AuditContext,
    caller: &Principal,
    kind: PrincipalKind,
    id: &PrincipalId,
) -> ApiResult<StatusCode> {
    let result = state
        .store
        .delete_principal(
            &caller.workspace_id,
            kind,
            id,
            &audit.change(StatusCode::NO_CONTENT),
        )
        .await;
    if result.is_ok() {
        audit.mark_recorded();
    }
    crate::edge::apply_invalidation(state, &Invalidation::Principal(id.to_string())).await;
    result.map_err(not_found(kind))?;
    tracing::info!(principal = %id, by = %caller.id, "principal deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Lists the workspace's users.
#[utoipa::path(get, operation_id = "listUsers", path = "/api/v1/users", tag = "users",
    security(("bearer" = ["read:users"])),
    params(("x-datastack-scope" = String, Header, description = "read:users"), ListPrincipalsParams),
    responses((status = 200, body = PrincipalPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn list_users(
    State(state): State<AppState>,
    caller: Authorized<ReadUsers>,
    Query(params): Query<ListPrincipalsParams>,
) -> ApiResult<Json<PrincipalPage>> {
    list(
        &state,
        &caller.identity.principal,
        PrincipalKind::User,
        params,
    )
    .await
}

/// Creates a user. A duplicate email → 409.
#[utoipa::path(post, operation_id = "createUser", path = "/api/v1/users", tag = "users",
    security(("bearer" = ["manage:users"])),
    params(("x-datastack-scope" = String, Header, description = "manage:users")),
    request_body = CreateUserRequest,
    responses((status = 201, body = PrincipalResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn create_user(
    State(state): State<AppState>,
    caller: Authorized<ManageUsers>,
    audit: AuditContext,
    Json(body): Json<CreateUserRequest>,
) -> ApiResult<(StatusCode, Json<PrincipalResponse>)> {
    let me = &caller.identity.principal;
    let new = NewPrincipal {
        workspace_id: me.workspace_id.clone(),
        kind: PrincipalKind::User,
        email: Some(Email::parse(&body.email)?),
        name: validate::text("name", &body.name, validate::MAX_NAME_LEN)?,
        role: body
            .role
            .as_deref()
            .map(Role::parse)
            .transpose()?
            .unwrap_or(Role::Viewer),
    };
    create(&state, &audit, me, new).await
}

/// Gets a user.
#[utoipa::path(get, operation_id = "getUser", path = "/api/v1/users/{id}", tag = "users",
    security(("bearer" = ["read:users"])),
    params(("x-datastack-scope" = String, Header, description = "read:users"), ("id" = String, Path, description = "usr_…")),
    responses((status = 200, body = PrincipalResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn get_user(
    State(state): State<AppState>,
    caller: Authorized<ReadUsers>,
    PathId(id): PathId<UserPath>,
) -> ApiResult<Json<PrincipalResponse>> {
    get_one(&state, &caller.identity.principal, PrincipalKind::User, &id).await
}

/// Updates a user's name, role or status. Leaving the workspace without an active admin → 409.
#[utoipa::path(patch, operation_id = "updateUser", path = "/api/v1/users/{id}", tag = "users",
    security(("bearer" = ["manage:users"])),
    params(("x-datastack-scope" = String, Header, description = "manage:users"), ("id" = String, Path, description = "usr_…")),
    request_body = UpdatePrincipalRequest,
    responses((status = 200, body = PrincipalResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn update_user(
    State(state): State<AppState>,
    caller: Authorized<ManageUsers>,
    audit: AuditContext,
    PathId(id): PathId<UserPath>,
    Json(body): Json<UpdatePrincipalRequest>,
) -> ApiResult<Json<PrincipalResponse>> {
    update(
        &state,
        &audit,
        &caller.identity.principal,
        PrincipalKind::User,
        &id,
        patch_from(body)?,
    )
    .await
}

/// Suspends a user: every token it owns is refused at once.
#[utoipa::path(post, operation_id = "suspendUser", path = "/api/v1/users/{id}/suspend", tag = "users",
    security(("bearer" = ["manage:users"])),
    params(("x-datastack-scope" = String, Header, description = "manage:users"), ("id" = String, Path, description = "usr_…")),
    responses((status = 200, body = PrincipalResponse), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn suspend_user(
    State(state): State<AppState>,
    caller: Authorized<ManageUsers>,
    audit: AuditContext,
    PathId(id): PathId<UserPath>,
) -> ApiResult<Json<PrincipalResponse>> {
    update(
        &state,
        &audit,
        &caller.identity.principal,
        PrincipalKind::User,
        &id,
        status_patch(Status::Suspended),
    )
    .await
}

/// Activates a suspended user.
#[utoipa::path(post, operation_id = "activateUser", path = "/api/v1/users/{id}/activate", tag = "users",
    security(("bearer" = ["manage:users"])),
    params(("x-datastack-scope" = String, Header, description = "manage:users"), ("id" = String, Path, description = "usr_…")),
    responses((status = 200, body = PrincipalResponse), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn activate_user(
    State(state): State<AppState>,
    caller: Authorized<ManageUsers>,
    audit: AuditContext,
    PathId(id): PathId<UserPath>,
) -> ApiResult<Json<PrincipalResponse>> {
    update(
        &state,
        &audit,
        &caller.identity.principal,
        PrincipalKind::User,
        &id,
        status_patch(Status::Active),
    )
    .await
}

/// Deletes a user and its tokens.
#[utoipa::path(delete, operation_id = "deleteUser", path = "/api/v1/users/{id}", tag = "users",
    security(("bearer" = ["manage:users"])),
    params(("x-datastack-scope" = String, Header, description = "manage:users"), ("id" = String, Path, description = "usr_…")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn delete_user(
    State(state): State<AppState>,
    caller: Authorized<ManageUsers>,
    audit: AuditContext,
    PathId(id): PathId<UserPath>,
) -> ApiResult<StatusCode> {
    remove(
        &state,
        &audit,
        &caller.identity.principal,
        PrincipalKind::User,
        &id,
    )
    .await
}

/// Lists the workspace's service principals.
#[utoipa::path(get, operation_id = "listServicePrincipals", path = "/api/v1/service-principals", tag = "service-principals",
    security(("bearer" = ["read:users"])),
    params(("x-datastack-scope" = String, Header, description = "read:users"), ListPrincipalsParams),
    responses((status = 200, body = PrincipalPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn list_service_principals(
    State(state): State<AppState>,
    caller: Authorized<ReadUsers>,
    Query(params): Query<ListPrincipalsParams>,
) -> ApiResult<Json<PrincipalPage>> {
    list(
        &state,
        &caller.identity.principal,
        PrincipalKind::ServicePrincipal,
        params,
    )
    .await
}

/// Creates a service principal.
#[utoipa::path(post, operation_id = "createServicePrincipal", path = "/api/v1/service-principals", tag = "service-principals",
    security(("bearer" = ["manage:users"])),
    params(("x-datastack-scope" = String, Header, description = "manage:users")),
    request_body = CreateServicePrincipalRequest,
    responses((status = 201, body = PrincipalResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn create_service_principal(
    State(state): State<AppState>,
    caller: Authorized<ManageUsers>,
    audit: AuditContext,
    Json(body): Json<CreateServicePrincipalRequest>,
) -> ApiResult<(StatusCode, Json<PrincipalResponse>)> {
    let me = &caller.identity.principal;
    let new = NewPrincipal {
        workspace_id: me.workspace_id.clone(),
        kind: PrincipalKind::ServicePrincipal,
        email: None,
        name: validate::text("name", &body.name, validate::MAX_NAME_LEN)?,
        role: body
            .role
            .as_deref()
            .map(Role::parse)
            .transpose()?
            .unwrap_or(Role::Viewer),
    };
    create(&state, &audit, me, new).await
}

/// Gets a service principal.
#[utoipa::path(get, operation_id = "getServicePrincipal", path = "/api/v1/service-principals/{id}", tag = "service-principals",
    security(("bearer" = ["read:users"])),
    params(("x-datastack-scope" = String, Header, description = "read:users"), ("id" = String, Path, description = "sp_…")),
    responses((status = 200, body = PrincipalResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn get_service_principal(
    State(state): State<AppState>,
    caller: Authorized<ReadUsers>,
    PathId(id): PathId<ServicePrincipalPath>,
) -> ApiResult<Json<PrincipalResponse>> {
    get_one(
        &state,
        &caller.identity.principal,
        PrincipalKind::ServicePrincipal,
        &id,
    )
    .await
}

/// Updates a service principal.
#[utoipa::path(patch, operation_id = "updateServicePrincipal", path = "/api/v1/service-principals/{id}", tag = "service-principals",
    security(("bearer" = ["manage:users"])),
    params(("x-datastack-scope" = String, Header, description = "manage:users"), ("id" = String, Path, description = "sp_…")),
    request_body = UpdatePrincipalRequest,
    responses((status = 200, body = PrincipalResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn update_service_principal(
    State(state): State<AppState>,
    caller: Authorized<ManageUsers>,
    audit: AuditContext,
    PathId(id): PathId<ServicePrincipalPath>,
    Json(body): Json<UpdatePrincipalRequest>,
) -> ApiResult<Json<PrincipalResponse>> {
    update(
        &state,
        &audit,
        &caller.identity.principal,
        PrincipalKind::ServicePrincipal,
        &id,
        patch_from(body)?,
    )
    .await
}

/// Suspends a service principal.
#[utoipa::path(post, operation_id = "suspendServicePrincipal", path = "/api/v1/service-principals/{id}/suspend", tag = "service-principals",
    security(("bearer" = ["manage:users"])),
    params(("x-datastack-scope" = String, Header, description = "manage:users"), ("id" = String, Path, description = "sp_…")),
    responses((status = 200, body = PrincipalResponse), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn suspend_service_principal(
    State(state): State<AppState>,
    caller: Authorized<ManageUsers>,
    audit: AuditContext,
    PathId(id): PathId<ServicePrincipalPath>,
) -> ApiResult<Json<PrincipalResponse>> {
    update(
        &state,
        &audit,
        &caller.identity.principal,
        PrincipalKind::ServicePrincipal,
        &id,
        status_patch(Status::Suspended),
    )
    .await
}

/// Activates a service principal.
#[utoipa::path(post, operation_id = "activateServicePrincipal", path = "/api/v1/service-principals/{id}/activate", tag = "service-principals",
    security(("bearer" = ["manage:users"])),
    params(("x-datastack-scope" = String, Header, description = "manage:users"), ("id" = String, Path, description = "sp_…")),
    responses((status = 200, body = PrincipalResponse), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn activate_service_principal(
    State(state): State<AppState>,
    caller: Authorized<ManageUsers>,
    audit: AuditContext,
    PathId(id): PathId<ServicePrincipalPath>,
) -> ApiResult<Json<PrincipalResponse>> {
    update(
        &state,
        &audit,
        &caller.identity.principal,
        PrincipalKind::ServicePrincipal,
        &id,
        status_patch(Status::Active),
    )
    .await
}

/// Deletes a service principal and its credentials.
#[utoipa::path(delete, operation_id = "deleteServicePrincipal", path = "/api/v1/service-principals/{id}", tag = "service-principals",
    security(("bearer" = ["manage:users"])),
    params(("x-datastack-scope" = String, Header, description = "manage:users"), ("id" = String, Path, description = "sp_…")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn delete_service_principal(
    State(state): State<AppState>,
    caller: Authorized<ManageUsers>,
    audit: AuditContext,
    PathId(id): PathId<ServicePrincipalPath>,
) -> ApiResult<StatusCode> {
    remove(
        &state,
        &audit,
        &caller.identity.principal,
        PrincipalKind::ServicePrincipal,
        &id,
    )
    .await
}
