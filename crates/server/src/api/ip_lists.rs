//! IP access lists (the Databricks shape): `{label, listType: ALLOW|BLOCK, ipAddresses,
//! enabled}` per workspace. Block lists win; when an enabled allow list exists, a client
//! must match one. A change that would refuse the caller's own address is refused unless
//! the call says `?allowLockout=true`.

use crate::pipeline::extract::{IpListPath, PathId};
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use datastack_core::edge::{ListType, parse_ip_addresses};
use datastack_core::id::IpListId;
use datastack_core::validate;
use datastack_store::{Invalidation, IpAccessList};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::audit::AuditContext;
use crate::edge::client_ip::ClientIp;
use crate::edge::{self, ip_lists::compile};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::pipeline::authorize::{Authorized, ManageIpLists, ReadIpLists};
use crate::pipeline::extract::{Json, Query};
use crate::state::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(get_one, update, replace, remove))
}

/// A list to create, or the full replacement of one.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IpListBody {
    /// A name, unique in the workspace, 1–200 characters.
    pub label: String,
    /// `ALLOW` or `BLOCK`.
    pub list_type: String,
    /// IPv4/IPv6 addresses and CIDR ranges, 1–1000.
    pub ip_addresses: Vec<String>,
    /// Whether it is enforced. Default true.
    pub enabled: Option<bool>,
}

/// A partial change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IpListPatch {
    /// A new label.
    pub label: Option<String>,
    /// A new type.
    pub list_type: Option<String>,
    /// New addresses (replacing the old ones).
    pub ip_addresses: Option<Vec<String>>,
    /// Enable or disable.
    pub enabled: Option<bool>,
}

/// The lockout guard's override.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct LockoutParams {
    /// Apply the change even though it refuses the caller's own address.
    pub allow_lockout: Option<bool>,
}

/// A list.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IpListResponse {
    /// Its id, `ipl_…`.
    pub id: String,
    /// Its label.
    pub label: String,
    /// `ALLOW` or `BLOCK`.
    pub list_type: &'static str,
    /// Normalised addresses and ranges.
    pub ip_addresses: Vec<String>,
    /// How many.
    pub address_count: usize,
    /// Whether it is enforced.
    pub enabled: bool,
    /// Who created it.
    pub created_by: Option<String>,
    /// Creation time.
    #[serde(serialize_with = "crate::api::time::rfc3339")]
    pub created_at: DateTime<Utc>,
    /// Last change.
    #[serde(serialize_with = "crate::api::time::rfc3339")]
    pub updated_at: DateTime<Utc>,
}

impl From<&IpAccessList> for IpListResponse {
    fn from(l: &IpAccessList) -> Self {
        Self {
            id: l.id.to_string(),
            label: l.label.clone(),
            list_type: l.list_type.as_str(),
            address_count: l.ip_addresses.len(),
            ip_addresses: l.ip_addresses.clone(),
            enabled: l.enabled,
            created_by: l.created_by.clone(),
            created_at: l.created_at,
            updated_at: l.updated_at,
        }
    }
}

/// The lists of the workspace.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IpListPage {
    /// The lists.
    pub items: Vec<IpListResponse>,
    /// Always `null`: a workspace's lists come in one page.
    pub next_cursor: Option<String>,
    /// Whether the workspace suspended enforcement (setting `ipAccessListsSuspended`).
    pub enforcement_suspended: bool,
}

fn not_found(e: datastack_store::Error) -> ApiError {
    match e {
        datastack_store::Error::NotFound => ApiError::not_found("IP access list"),
        other => other.into(),
    }
}

fn validated(
    label: &str,
    list_type: &str,
    addresses: &[String],
) -> ApiResult<(String, ListType, Vec<String>)> {
    let label = validate::text("label", label, validate::MAX_LABEL_LEN)?;
    let list_type = ListType::parse(list_type)?;
    let nets = parse_ip_addresses("ipAddresses", addresses)?;
    Ok((
        label,
        list_type,
        nets.iter().map(ToString::to_string).collect(),
    ))
}

/// Refuses a change after which the caller's own address would be refused, unless
/// `allowLockout` is set.
async fn guard_lockout(
    state: &AppState,
    caller: &Authorized<ManageIpLists>,
    client_ip: ClientIp,
    after: impl FnOnce(Vec<IpAccessList>) -> Vec<IpAccessList>,
    params: &LockoutParams,
) -> ApiResult<()> {
    if params.allow_lockout == Some(true)
        || caller.identity.workspace.settings.ip_access_lists_suspended
    {
        return Ok(());
    }
    let current = state
        .store
        .list_ip_lists(&caller.identity.workspace.id)
        .await?;
    let rules = compile(&after(current));
    if rules.check(client_ip.0).is_err() {
        return Err(ApiError::Conflict(format!(
            "this change would refuse your own address ({}); fix the lists, or repeat with ?allowLockout=true if that is intended",
            client_ip
                .0
                .map_or_else(|| "unknown".to_owned(), |ip| ip.to_string())
        )));
    }
    Ok(())
}

/// Lists the workspace's IP access lists.
#[utoipa::path(get, operation_id = "listIpAccessLists", path = "/api/v1/ip-access-lists", tag = "ip-access-lists",
    security(("bearer" = ["read:ip-access-lists"])),
    params(("x-datastack-scope" = String, Header, description = "read:ip-access-lists")),
    responses((status = 200, body = IpListPage), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Authorized<ReadIpLists>,
) -> ApiResult<Json<IpListPage>> {
    let lists = state
        .store
        .list_ip_lists(&caller.identity.workspace.id)
        .await?;
    Ok(Json(IpListPage {
        items: lists.iter().map(IpListResponse::from).collect(),
        next_cursor: None,
        enforcement_suspended: caller.identity.workspace.settings.ip_access_lists_suspended,
    }))
}

/// Creates a list; enforced at once when enabled.
#[utoipa::path(post, operation_id = "createIpAccessList", path = "/api/v1/ip-access-lists", tag = "ip-access-lists",
    security(("bearer" = ["manage:ip-access-lists"])),
    params(LockoutParams, ("x-datastack-scope" = String, Header, description = "manage:ip-access-lists")),
    request_body = IpListBody,
    responses((status = 201, body = IpListResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Authorized<ManageIpLists>,
    client_ip: ClientIp,
    audit: AuditContext,
    Query(params): Query<LockoutParams>,
    Json(body): Json<IpListBody>,
) -> ApiResult<(StatusCode, Json<IpListResponse>)> {
    let (label, list_type, ip_addresses) =
        validated(&body.label, &body.list_type, &body.ip_addresses)?;
    let now = Utc::now();
    let list = IpAccessList {
        id: IpListId::generate(),
        workspace_id: caller.identity.workspace.id.clone(),
        label,
        list_type,
        ip_addresses,
        enabled: body.enabled.unwrap_or(true),
        created_by: Some(caller.identity.principal.id.to_string()),
        created_at: now,
        updated_at: now,
    };
    let added = list.clone();
    guard_lockout(
        &state,
        &caller,
        client_ip,
        |mut all| {
            all.push(added);
            all
        },
        &params,
    )
    .await?;
    audit.set_resource_id(list.id.as_str());
    audit.set_detail(detail(&list, params.allow_lockout));
    state
        .store
        .insert_ip_list(&list, &audit.change(StatusCode::CREATED))
        .await?;
    audit.mark_recorded();
    edge::apply_invalidation(
        &state,
        &Invalidation::IpLists(list.workspace_id.to_string()),
    )
    .await;
    Ok((StatusCode::CREATED, Json(IpListResponse::from(&list))))
}

fn detail(list: &IpAccessList, allow_lockout: Option<bool>) -> serde_json::Value {
    serde_json::json!({
        "label": list.label,
        "listType": list.list_type.as_str(),
        "ipAddresses": list.ip_addresses,
        "enabled": list.enabled,
        "allowLockout": allow_lockout.unwrap_or(false),
    })
}

/// One list.
#[utoipa::path(get, operation_id = "getIpAccessList", path = "/api/v1/ip-access-lists/{id}", tag = "ip-access-lists",
    security(("bearer" = ["read:ip-access-lists"])),
    params(("id" = String, Path), ("x-datastack-scope" = String, Header, description = "read:ip-access-lists")),
    responses((status = 200, body = IpListResponse), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn get_one(
    State(state): State<AppState>,
    caller: Authorized<ReadIpLists>,
    PathId(id): PathId<IpListPath>,
) -> ApiResult<Json<IpListResponse>> {
    let list = state
        .store
        .get_ip_list(&caller.identity.workspace.id, &id)
        .await
        .map_err(not_found)?;
    Ok(Json(IpListResponse::from(&list)))
}

async fn apply_change(
    state: &AppState,
    caller: &Authorized<ManageIpLists>,
    client_ip: ClientIp,
    audit: &AuditContext,
    params: &LockoutParams,
    id: &IpListId,
    change: impl FnOnce(&mut IpAccessList) -> ApiResult<()>,
) -> ApiResult<Json<IpListResponse>> {
    let mut list = state
        .store
        .get_ip_list(&caller.identity.workspace.id, id)
        .await
        .map_err(not_found)?;
    change(&mut list)?;
    list.updated_at = Utc::now();
    let changed = list.clone();
    guard_lockout(
        state,
        caller,
        client_ip,
        |all| {
            all.into_iter()
                .map(|l| {
                    if l.id == changed.id {
                        changed.clone()
                    } else {
                        l
                    }
                })
                .collect()
        },
        params,
    )
    .await?;
    audit.set_detail(detail(&list, params.allow_lockout));
    state
        .store
        .update_ip_list(&list, &audit.change(StatusCode::OK))
        .await
        .map_err(not_found)?;
    audit.mark_recorded();
    edge::apply_invalidation(state, &Invalidation::IpLists(list.workspace_id.to_string())).await;
    Ok(Json(IpListResponse::from(&list)))
}

/// Changes some fields of a list.
#[utoipa::path(patch, operation_id = "updateIpAccessList", path = "/api/v1/ip-access-lists/{id}", tag = "ip-access-lists",
    security(("bearer" = ["manage:ip-access-lists"])),
    params(("id" = String, Path), LockoutParams, ("x-datastack-scope" = String, Header, description = "manage:ip-access-lists")),
    request_body = IpListPatch,
    responses((status = 200, body = IpListResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    caller: Authorized<ManageIpLists>,
    client_ip: ClientIp,
    audit: AuditContext,
    PathId(id): PathId<IpListPath>,
    Query(params): Query<LockoutParams>,
    Json(body): Json<IpListPatch>,
) -> ApiResult<Json<IpListResponse>> {
    apply_change(&state, &caller, client_ip, &audit, &params, &id, |list| {
        let (label, list_type, addresses) = validated(
            body.label.as_deref().unwrap_or(&list.label),
            body.list_type.as_deref().unwrap_or(list.list_type.as_str()),
            body.ip_addresses.as_deref().unwrap_or(&list.ip_addresses),
        )?;
        list.label = label;
        list.list_type = list_type;
        list.ip_addresses = addresses;
        if let Some(enabled) = body.enabled {
            list.enabled = enabled;
        }
        Ok(())
    })
    .await
}

/// Replaces a list.
#[utoipa::path(put, operation_id = "replaceIpAccessList", path = "/api/v1/ip-access-lists/{id}", tag = "ip-access-lists",
    security(("bearer" = ["manage:ip-access-lists"])),
    params(("id" = String, Path), LockoutParams, ("x-datastack-scope" = String, Header, description = "manage:ip-access-lists")),
    request_body = IpListBody,
    responses((status = 200, body = IpListResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn replace(
    State(state): State<AppState>,
    caller: Authorized<ManageIpLists>,
    client_ip: ClientIp,
    audit: AuditContext,
    PathId(id): PathId<IpListPath>,
    Query(params): Query<LockoutParams>,
    Json(body): Json<IpListBody>,
) -> ApiResult<Json<IpListResponse>> {
    apply_change(&state, &caller, client_ip, &audit, &params, &id, |list| {
        let (label, list_type, addresses) =
            validated(&body.label, &body.list_type, &body.ip_addresses)?;
        list.label = label;
        list.list_type = list_type;
        list.ip_addresses = addresses;
        list.enabled = body.enabled.unwrap_or(true);
        Ok(())
    })
    .await
}

/// Deletes a list.
#[utoipa::path(delete, operation_id = "deleteIpAccessList", path = "/api/v1/ip-access-lists/{id}", tag = "ip-access-lists",
    security(("bearer" = ["manage:ip-access-lists"])),
    params(("id" = String, Path), LockoutParams, ("x-datastack-scope" = String, Header, description = "manage:ip-access-lists")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn remove(
    State(state): State<AppState>,
    caller: Authorized<ManageIpLists>,
    client_ip: ClientIp,
    audit: AuditContext,
    PathId(id): PathId<IpListPath>,
    Query(params): Query<LockoutParams>,
) -> ApiResult<StatusCode> {
    let ws = caller.identity.workspace.id.clone();
    let gone = id.clone();
    guard_lockout(
        &state,
        &caller,
        client_ip,
        |all| all.into_iter().filter(|l| l.id != gone).collect(),
        &params,
    )
    .await?;
    state
        .store
        .delete_ip_list(&ws, &id, &audit.change(StatusCode::NO_CONTENT))
        .await
        .map_err(not_found)?;
    audit.mark_recorded();
    edge::apply_invalidation(&state, &Invalidation::IpLists(ws.to_string())).await;
    Ok(StatusCode::NO_CONTENT)
}
