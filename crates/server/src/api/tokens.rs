//! Personal access tokens: create (the secret is shown once), list, revoke.

use crate::pipeline::extract::{PathId, TokenPath};
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use datastack_core::authz::Role;
use datastack_core::credential::{self, CredentialKind};
use datastack_core::id::PrincipalId;
use datastack_core::model::Token;
use datastack_core::scope::ScopeSet;
use datastack_core::validate;
use datastack_store::{Invalidation, TokenFilter};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{PageParams, page_of};
use crate::api::issuance::{self, new_token_record};
use crate::audit::AuditContext;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::pipeline::authorize::{Authorized, ManageTokens, ReadTokens};
use crate::pipeline::extract::{Json, Query};
use crate::state::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_tokens, create_token))
        .routes(routes!(revoke_token))
}

/// A token to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// What the token is for, 1–200 characters.
    pub label: String,
    /// Lifetime in days (1–36500). At most one of this and `lifetimeSeconds`.
    pub expires_in_days: Option<i64>,
    /// Lifetime in seconds (60–3153600000).
    pub lifetime_seconds: Option<i64>,
    /// Scopes to grant, each covered by the calling credential's scopes; default: the
    /// calling credential's scopes. The token acts with these ∩ the owner's role.
    pub scopes: Option<Vec<String>>,
    /// Admins only: create the token for this principal (a user or service principal of
    /// the workspace) instead of for the caller, e.g. a new user's first token.
    pub owner_id: Option<String>,
}

/// A token as listed: never its secret.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenResponse {
    /// Its id, `tok_…`.
    pub id: String,
    /// Its label.
    pub label: String,
    /// The secret's type prefix, `dapi`.
    pub prefix: &'static str,
    /// The secret's last four characters.
    pub last_four: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// The principal it acts for.
    pub owner_id: String,
    /// Creation time.
    #[serde(serialize_with = "crate::api::time::rfc3339")]
    pub created_at: DateTime<Utc>,
    /// Expiry; `null`: never.
    #[serde(serialize_with = "crate::api::time::rfc3339_opt")]
    pub expires_at: Option<DateTime<Utc>>,
    /// Last use (written every few seconds).
    #[serde(serialize_with = "crate::api::time::rfc3339_opt")]
    pub last_used_at: Option<DateTime<Utc>>,
    /// Client address of the last use.
    pub last_used_ip: Option<String>,
}

impl From<Token> for TokenResponse {
    fn from(t: Token) -> Self {
        Self {
            id: t.id.to_string(),
            label: t.label,
            prefix: CredentialKind::PersonalAccessToken.prefix(),
            last_four: t.last_four,
            scopes: t.scopes.to_strings(),
            owner_id: t.owner_id.to_string(),
            created_at: t.created_at,
            expires_at: t.expires_at,
            last_used_at: t.last_used_at,
            last_used_ip: t.last_used_ip,
        }
    }
}

/// A created token, with its secret: the only time the secret is shown.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedTokenResponse {
    /// The secret. Store it now; it cannot be shown again.
    pub token: String,
    /// The token's details.
    #[serde(flatten)]
    pub info: TokenResponse,
}

page_of!(TokenPage, TokenResponse);

/// Which tokens to list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ListTokensParams {
    /// Admins only: a principal id, or `all` for every token of the workspace. Default: yours.
    pub owner_id: Option<String>,
    /// Page size.
    pub limit: Option<i64>,
    /// Cursor.
    pub cursor: Option<String>,
}

/// Creates a personal access token for the caller (or, for admins, for `ownerId`).
#[utoipa::path(post, operation_id = "createToken", path = "/api/v1/auth/tokens", tag = "tokens",
    security(("bearer" = ["manage:tokens"])),
    params(("x-datastack-scope" = String, Header, description = "manage:tokens")),
    request_body = CreateTokenRequest,
    responses((status = 201, body = CreatedTokenResponse), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 413, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn create_token(
    State(state): State<AppState>,
    caller: Authorized<ManageTokens>,
    audit: AuditContext,
    Json(body): Json<CreateTokenRequest>,
) -> ApiResult<(StatusCode, Json<CreatedTokenResponse>)> {
    let me = &caller.identity.principal;
    let owner = issuance::resolve_owner(
        &state,
        me,
        body.owner_id.as_deref(),
        issuance::Owners::AnyPrincipal,
    )
    .await?;
    let label = validate::text("label", &body.label, validate::MAX_LABEL_LEN)?;
    // Without a list, the new token gets the creator's scopes.
    let granted = &caller.identity.token.scopes;
    let scopes = match &body.scopes {
        None => granted.clone(),
        Some(list) => issuance::within_granted(granted, ScopeSet::parse(list)?, "token")?,
    };
    let requested = validate::token_lifetime(body.expires_in_days, body.lifetime_seconds)?;
    let workspace = state.store.get_workspace(&owner.workspace_id).await?;
    let lifetime = issuance::bounded_lifetime(
        requested,
        workspace.settings.max_token_lifetime_days,
        if body.expires_in_days.is_some() {
            "expiresInDays"
        } else {
            "lifetimeSeconds"
        },
    )?;
    let secret = credential::generate(CredentialKind::PersonalAccessToken);
    let token = new_token_record(
        &owner,
        &label,
        scopes,
        lifetime.map(|l| Utc::now() + l),
        &secret,
    );
    audit.set_resource_id(token.id.as_str());
    audit.set_detail(serde_json::json!({
        "ownerId": token.owner_id,
        "scopes": token.scopes,
        "expiresAt": token.expires_at,
    }));
    let trail = audit.change(StatusCode::CREATED).with_event(audit.event(
        &token.workspace_id,
        "token.created",
        serde_json::json!({
            "tokenId": token.id,
            "ownerId": token.owner_id,
            "createdBy": caller.identity.principal.id,
            "scopes": token.scopes,
            "expiresAt": token.expires_at,
        }),
    ));
    state
        .store
        .insert_token_created_by(&token, &caller.identity.token.id, &trail)
        .await?;
    audit.mark_recorded();
    tracing::info!(token_id = %token.id, owner = %owner.id, "token created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedTokenResponse {
            token: secret.secret.expose_secret().to_owned(),
            info: TokenResponse::from(token),
        }),
    ))
}

/// Lists unrevoked tokens: the caller's own, or (admins) another principal's or all.
#[utoipa::path(get, operation_id = "listTokens", path = "/api/v1/auth/tokens", tag = "tokens",
    security(("bearer" = ["read:tokens"])),
    params(("x-datastack-scope" = String, Header, description = "read:tokens"), ListTokensParams),
    responses((status = 200, body = TokenPage), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn list_tokens(
    State(state): State<AppState>,
    caller: Authorized<ReadTokens>,
    Query(params): Query<ListTokensParams>,
) -> ApiResult<Json<TokenPage>> {
    let me = &caller.identity.principal;
    let page = PageParams {
        limit: params.limit,
        cursor: params.cursor,
    }
    .to_request()?;
    let filter = match params.owner_id.as_deref() {
        None => TokenFilter::Owner(me.id.clone()),
        Some(owner) if owner == me.id.as_str() => TokenFilter::Owner(me.id.clone()),
        Some(_) if me.role != Role::Admin => {
            return Err(ApiError::Forbidden(
                "only admins may list other principals' tokens".into(),
            ));
        }
        Some("all") => TokenFilter::Workspace,
        Some(owner) => TokenFilter::Owner(PrincipalId::parse(owner).map_err(|_| {
            ApiError::InvalidRequest("ownerId: must be a principal id or all".into())
        })?),
    };
    let result = state
        .store
        .list_tokens(
            &me.workspace_id,
            &filter,
            Some(CredentialKind::PersonalAccessToken),
            &page,
        )
        .await?;
    Ok(Json(TokenPage {
        items: result.items.into_iter().map(TokenResponse::from).collect(),
        next_cursor: result.next_cursor,
    }))
}

/// Revokes a token: the caller's own, or (admins) any token of the workspace. The token is
/// refused on every node from the next request.
#[utoipa::path(delete, operation_id = "revokeToken", path = "/api/v1/auth/tokens/{id}", tag = "tokens",
    security(("bearer" = ["manage:tokens"])),
    params(("x-datastack-scope" = String, Header, description = "manage:tokens"), ("id" = String, Path, description = "tok_…")),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn revoke_token(
    State(state): State<AppState>,
    caller: Authorized<ManageTokens>,
    audit: AuditContext,
    PathId(id): PathId<TokenPath>,
) -> ApiResult<StatusCode> {
    let me = &caller.identity.principal;
    let owner = (me.role != Role::Admin).then_some(&me.id);
    let trail = audit.change(StatusCode::NO_CONTENT).with_event(audit.event(
        &me.workspace_id,
        "token.revoked",
        serde_json::json!({ "tokenId": id, "revokedBy": me.id, "reason": "api" }),
    ));
    let revoked = state
        .store
        .revoke_token(&me.workspace_id, &id, owner, &trail)
        .await
        .map_err(|e| match e {
            datastack_store::Error::NotFound => ApiError::not_found("token"),
            other => other.into(),
        })?;
    audit.mark_recorded();
    crate::edge::apply_invalidation(&state, &Invalidation::of_token(&revoked)).await;
    tracing::info!(token_id = %revoked.id, "token revoked");
    Ok(StatusCode::NO_CONTENT)
}
