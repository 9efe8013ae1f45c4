//! Trusted external issuers (federation): `/api/v1/oauth/issuers`.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use datastack_core::id::{PrincipalId, TrustedIssuerId};
use datastack_core::oauth::{FEDERATION_ALGORITHMS, Provisioning, SubjectClaim, TrustedIssuer};
use datastack_core::scope::ScopeSet;
use datastack_store::{Invalidation, IssuerPatch};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::issuance;
use crate::api::{PageParams, page_of};
use crate::audit::AuditContext;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::pipeline::authorize::{Authorized, ManageOauthClients, ReadOauthClients};
use crate::pipeline::extract::{IssuerPath, Json, PathId, Query};
use crate::state::AppState;

use super::clients::https_or_loopback;
use super::*;

/// The most audiences, algorithms or subject links one request may give.
const MAX_LIST: usize = 20;
/// The most subject links one request may set.
const MAX_LINKS: usize = 100;
/// The longest audience or subject.
const MAX_VALUE_LEN: usize = 256;

/// A subject of the issuer's tokens, and the principal it is.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubjectLink {
    /// The value of the issuer's `sub` claim.
    pub subject: String,
    /// The principal (`usr_…` or `sp_…`) of this workspace it is.
    pub principal_id: String,
}

/// A trusted issuer to register.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateIssuerRequest {
    /// The exact `iss` of its tokens: an https URL (or http to a loopback address).
    pub issuer: String,
    /// Where its keys are; default: found by OIDC discovery
    /// (`{issuer}/.well-known/openid-configuration`).
    pub jwks_uri: Option<String>,
    /// The `aud` values accepted, 1–20: a token must carry one of them.
    pub audiences: Vec<String>,
    /// The signature algorithms accepted (default `["RS256", "ES256", "EdDSA"]`): among
    /// RS256/384/512, PS256/384/512, ES256/384 and EdDSA. HMAC and `none` never are.
    pub algorithms: Option<Vec<String>>,
    /// The claim that names the principal: `sub` (default; mapped through `subjects`, or
    /// provisioned) or `email` (a user of this workspace with that address).
    #[schema(value_type = Option<String>)]
    pub subject_claim: Option<SubjectClaim>,
    /// `existing` (default: unknown subjects are refused) or `jit` (created just in time
    /// with the viewer role).
    #[schema(value_type = Option<String>)]
    pub provisioning: Option<Provisioning>,
    /// The claim with the token's scopes: `scope` (default) or `scp`.
    pub scope_claim: Option<String>,
    /// The most its tokens may ever carry (each held by the calling credential); default:
    /// the calling credential's scopes.
    pub scopes: Option<Vec<String>>,
    /// Which principal each `sub` is, at most 100.
    pub subjects: Option<Vec<SubjectLink>>,
}

/// A change to a trusted issuer; absent fields stay as they are (`issuer` and
/// `subjectClaim` never change: register another issuer).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateIssuerRequest {
    /// A new key set URL; an empty string: use discovery.
    pub jwks_uri: Option<String>,
    /// New accepted audiences.
    pub audiences: Option<Vec<String>>,
    /// New accepted algorithms.
    pub algorithms: Option<Vec<String>>,
    /// New provisioning: `existing` or `jit`.
    #[schema(value_type = Option<String>)]
    pub provisioning: Option<Provisioning>,
    /// New scope claim.
    pub scope_claim: Option<String>,
    /// New most scopes.
    pub scopes: Option<Vec<String>>,
    /// Subject links to add (or to point elsewhere).
    pub subjects: Option<Vec<SubjectLink>>,
}

/// A trusted issuer.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerResponse {
    /// `oti_…`.
    pub id: String,
    /// The exact `iss` of its tokens.
    pub issuer: String,
    /// Its key set URL; `null`: found by discovery.
    pub jwks_uri: Option<String>,
    /// The accepted audiences.
    pub audiences: Vec<String>,
    /// The accepted algorithms.
    pub algorithms: Vec<String>,
    /// `sub` or `email`.
    #[schema(value_type = String)]
    pub subject_claim: SubjectClaim,
    /// `existing` or `jit`.
    #[schema(value_type = String)]
    pub provisioning: Provisioning,
    /// `scope` or `scp`.
    pub scope_claim: String,
    /// The most its tokens may carry.
    pub scopes: Vec<String>,
    /// Who registered it.
    pub created_by: Option<String>,
    /// When.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl From<TrustedIssuer> for IssuerResponse {
    fn from(i: TrustedIssuer) -> Self {
        Self {
            id: i.id.to_string(),
            issuer: i.issuer,
            jwks_uri: i.jwks_uri,
            audiences: i.audiences,
            algorithms: i.algorithms,
            subject_claim: i.subject_claim,
            provisioning: i.provisioning,
            scope_claim: i.scope_claim,
            scopes: i.scopes.to_strings(),
            created_by: i.created_by,
            created_at: i.created_at,
            updated_at: i.updated_at,
        }
    }
}

page_of!(IssuerPage, IssuerResponse);

fn url(field: &str, value: &str) -> ApiResult<String> {
    if https_or_loopback(value) {
        Ok(value.to_owned())
    } else {
        Err(ApiError::InvalidRequest(format!(
            "{field}: {} is not an https URL (or http to a loopback address) without a fragment",
            shown(value)
        )))
    }
}

fn values(field: &str, list: Vec<String>) -> ApiResult<Vec<String>> {
    if list.is_empty() || list.len() > MAX_LIST {
        return Err(ApiError::InvalidRequest(format!(
            "{field}: between 1 and {MAX_LIST}"
        )));
    }
    if let Some(bad) = list
        .iter()
        .find(|v| v.is_empty() || v.len() > MAX_VALUE_LEN || v.chars().any(char::is_control))
    {
        return Err(ApiError::InvalidRequest(format!(
            "{field}: {} is empty, too long or has control characters",
            shown(bad)
        )));
    }
    Ok(list)
}

fn algorithms(list: Option<Vec<String>>) -> ApiResult<Vec<String>> {
    let list = values(
        "algorithms",
        list.unwrap_or_else(|| vec!["RS256".into(), "ES256".into(), "EdDSA".into()]),
    )?;
    if let Some(bad) = list
        .iter()
        .find(|a| !FEDERATION_ALGORITHMS.contains(&a.as_str()))
    {
        return Err(ApiError::InvalidRequest(format!(
            "algorithms: {} is not one of {} (HMAC and none are never accepted from an issuer)",
            shown(bad),
            FEDERATION_ALGORITHMS.join(", ")
        )));
    }
    Ok(list)
}

fn scope_claim(value: Option<String>) -> ApiResult<String> {
    match value.as_deref() {
        None | Some("scope") => Ok("scope".into()),
        Some("scp") => Ok("scp".into()),
        Some(other) => Err(ApiError::InvalidRequest(format!(
            "scopeClaim: {} is neither scope nor scp",
            shown(other)
        ))),
    }
}

/// Checks subject links: each principal exists in the caller's workspace.
async fn links(
    state: &AppState,
    workspace: &datastack_core::id::WorkspaceId,
    list: Option<Vec<SubjectLink>>,
) -> ApiResult<Vec<(String, PrincipalId)>> {
    let list = list.unwrap_or_default();
    if list.len() > MAX_LINKS {
        return Err(ApiError::InvalidRequest(format!(
            "subjects: at most {MAX_LINKS} at once"
        )));
    }
    let mut out = Vec::with_capacity(list.len());
    for link in list {
        if link.subject.is_empty() || link.subject.len() > MAX_VALUE_LEN {
            return Err(ApiError::InvalidRequest(
                "subjects: a subject is empty or longer than 256 characters".into(),
            ));
        }
        let id = PrincipalId::parse(&link.principal_id).map_err(|_| {
            ApiError::InvalidRequest(format!(
                "subjects: {} is not a principal id",
                shown(&link.principal_id)
            ))
        })?;
        let found = state.store.get_principal_by_id(&id).await?;
        if found.is_none_or(|p| p.workspace_id != *workspace) {
            return Err(ApiError::InvalidRequest(format!(
                "subjects: no principal {} in this workspace",
                shown(&link.principal_id)
            )));
        }
        out.push((link.subject, id));
    }
    Ok(out)
}

fn issuer_not_found(e: datastack_store::Error) -> ApiError {
    match e {
        datastack_store::Error::NotFound => ApiError::not_found("trusted issuer"),
        other => other.into(),
    }
}

/// Trusts an external issuer: its access tokens are accepted as Bearer credentials of
/// this workspace's principals (`docs/oauth.md`, "Federation").
#[utoipa::path(post, operation_id = "createTrustedIssuer", path = "/api/v1/oauth/issuers", tag = "oauth",
    security(("bearer" = ["manage:oauth-clients"])),
    params(("x-datastack-scope" = String, Header, description = "manage:oauth-clients")),
    request_body = CreateIssuerRequest,
    responses((status = 201, body = IssuerResponse), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "the issuer is trusted already")))]
#[tracing::instrument(skip_all)]
pub async fn create_issuer(
    State(state): State<AppState>,
    caller: Authorized<ManageOauthClients>,
    audit: AuditContext,
    Json(body): Json<CreateIssuerRequest>,
) -> ApiResult<(StatusCode, Json<IssuerResponse>)> {
    let me = &caller.identity.principal;
    let granted = &caller.identity.token.scopes;
    let scopes = match &body.scopes {
        None => granted.clone(),
        Some(list) => issuance::within_granted(granted, ScopeSet::parse(list)?, "issuer")?,
    };
    let now = Utc::now();
    let issuer = TrustedIssuer {
        id: TrustedIssuerId::generate(),
        workspace_id: me.workspace_id.clone(),
        issuer: url("issuer", &body.issuer)?,
        jwks_uri: body
            .jwks_uri
            .as_deref()
            .map(|u| url("jwksUri", u))
            .transpose()?,
        audiences: values("audiences", body.audiences)?,
        algorithms: algorithms(body.algorithms)?,
        subject_claim: body.subject_claim.unwrap_or(SubjectClaim::Sub),
        provisioning: body.provisioning.unwrap_or(Provisioning::Existing),
        scope_claim: scope_claim(body.scope_claim)?,
        scopes,
        created_by: Some(me.id.to_string()),
        created_at: now,
        updated_at: now,
    };
    if issuer.issuer == state.edge.signer.issuer {
        return Err(ApiError::InvalidRequest(
            "issuer: this is the server's own issuer; its tokens need no trust".into(),
        ));
    }
    let links = links(&state, &me.workspace_id, body.subjects).await?;
    audit.set_resource_id(issuer.id.as_str());
    let detail = serde_json::json!({
        "issuer": issuer.issuer,
        "audiences": issuer.audiences,
        "algorithms": issuer.algorithms,
        "subjectClaim": issuer.subject_claim.as_str(),
        "provisioning": issuer.provisioning.as_str(),
        "scopes": issuer.scopes,
        "subjectLinks": links.len(),
    });
    audit.set_detail(detail.clone());
    let trail = audit.change(StatusCode::CREATED).with_event(audit.event(
        &me.workspace_id,
        "oauth_issuer.trusted",
        detail,
    ));
    state.store.insert_issuer(&issuer, &links, &trail).await?;
    audit.mark_recorded();
    crate::edge::apply_invalidation(&state, &Invalidation::Issuer(issuer.id.to_string())).await;
    tracing::info!(issuer_id = %issuer.id, "trusted issuer registered");
    Ok((StatusCode::CREATED, Json(issuer.into())))
}

/// Lists the workspace's trusted issuers.
#[utoipa::path(get, operation_id = "listTrustedIssuers", path = "/api/v1/oauth/issuers", tag = "oauth",
    security(("bearer" = ["read:oauth-clients"])),
    params(("x-datastack-scope" = String, Header, description = "read:oauth-clients"), PageParams),
    responses((status = 200, body = IssuerPage), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn list_issuers(
    State(state): State<AppState>,
    caller: Authorized<ReadOauthClients>,
    Query(params): Query<PageParams>,
) -> ApiResult<Json<IssuerPage>> {
    let page = params.to_request()?;
    let result = state
        .store
        .list_issuers(&caller.identity.principal.workspace_id, &page)
        .await?;
    Ok(Json(IssuerPage {
        items: result.items.into_iter().map(Into::into).collect(),
        next_cursor: result.next_cursor,
    }))
}

/// One trusted issuer.
#[utoipa::path(get, operation_id = "getTrustedIssuer", path = "/api/v1/oauth/issuers/{id}", tag = "oauth",
    security(("bearer" = ["read:oauth-clients"])),
    params(("x-datastack-scope" = String, Header, description = "read:oauth-clients"), ("id" = String, Path, description = "oti_…")),
    responses((status = 200, body = IssuerResponse), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn get_issuer(
    State(state): State<AppState>,
    caller: Authorized<ReadOauthClients>,
    PathId(id): PathId<IssuerPath>,
) -> ApiResult<Json<IssuerResponse>> {
    let issuer = state
        .store
        .get_issuer(&caller.identity.principal.workspace_id, &id)
        .await
        .map_err(issuer_not_found)?;
    Ok(Json(issuer.into()))
}

/// Changes a trusted issuer; its tokens verified before are checked again on their next use.
#[utoipa::path(patch, operation_id = "updateTrustedIssuer", path = "/api/v1/oauth/issuers/{id}", tag = "oauth",
    security(("bearer" = ["manage:oauth-clients"])),
    params(("x-datastack-scope" = String, Header, description = "manage:oauth-clients"), ("id" = String, Path, description = "oti_…")),
    request_body = UpdateIssuerRequest,
    responses((status = 200, body = IssuerResponse), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn update_issuer(
    State(state): State<AppState>,
    caller: Authorized<ManageOauthClients>,
    audit: AuditContext,
    PathId(id): PathId<IssuerPath>,
    Json(body): Json<UpdateIssuerRequest>,
) -> ApiResult<Json<IssuerResponse>> {
    let me = &caller.identity.principal;
    let patch = IssuerPatch {
        jwks_uri: body
            .jwks_uri
            .as_deref()
            .map(|u| {
                if u.is_empty() {
                    Ok(None)
                } else {
                    url("jwksUri", u).map(Some)
                }
            })
            .transpose()?,
        audiences: body.audiences.map(|l| values("audiences", l)).transpose()?,
        algorithms: body.algorithms.map(|l| algorithms(Some(l))).transpose()?,
        provisioning: body.provisioning,
        scope_claim: body.scope_claim.map(|c| scope_claim(Some(c))).transpose()?,
        scopes: body
            .scopes
            .as_ref()
            .map(|list| {
                issuance::within_granted(
                    &caller.identity.token.scopes,
                    ScopeSet::parse(list)?,
                    "issuer",
                )
            })
            .transpose()?,
    };
    let links = links(&state, &me.workspace_id, body.subjects).await?;
    audit.set_resource_id(id.as_str());
    let trail = audit.change(StatusCode::OK);
    let issuer = state
        .store
        .update_issuer(&me.workspace_id, &id, &patch, &links, &trail)
        .await
        .map_err(issuer_not_found)?;
    audit.mark_recorded();
    crate::edge::apply_invalidation(&state, &Invalidation::Issuer(id.to_string())).await;
    Ok(Json(issuer.into()))
}

/// Stops trusting an issuer: its tokens are refused on every node within a second.
#[utoipa::path(delete, operation_id = "deleteTrustedIssuer", path = "/api/v1/oauth/issuers/{id}", tag = "oauth",
    security(("bearer" = ["manage:oauth-clients"])),
    params(("x-datastack-scope" = String, Header, description = "manage:oauth-clients"), ("id" = String, Path, description = "oti_…")),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn delete_issuer(
    State(state): State<AppState>,
    caller: Authorized<ManageOauthClients>,
    audit: AuditContext,
    PathId(id): PathId<IssuerPath>,
) -> ApiResult<StatusCode> {
    let me = &caller.identity.principal;
    audit.set_resource_id(id.as_str());
    let trail = audit.change(StatusCode::NO_CONTENT).with_event(audit.event(
        &me.workspace_id,
        "oauth_issuer.untrusted",
        serde_json::json!({ "issuerId": id, "deletedBy": me.id }),
    ));
    state
        .store
        .delete_issuer(&me.workspace_id, &id, &trail)
        .await
        .map_err(issuer_not_found)?;
    audit.mark_recorded();
    crate::edge::apply_invalidation(&state, &Invalidation::Issuer(id.to_string())).await;
    tracing::info!(issuer_id = %id, "trusted issuer deleted");
    Ok(StatusCode::NO_CONTENT)
}
