//! OAuth 2.0: clients (`/api/v1/oauth/clients`), the token endpoint (`/oauth2/token`,
//! RFC 6749) and token revocation (`/oauth2/revoke`, RFC 7009).
//!
//! Access tokens are JWTs per RFC 9068 (`typ: at+jwt`), signed with the node's Ed25519
//! key and published at `/.well-known/jwks.json`, so an upstream can verify them offline.
//! Each issued token is also stored like every credential (a row of `tokens`, kind
//! `oauth_access`, by the digest of the whole JWT): datastack accepts it as a Bearer
//! credential exactly like a personal access token (scope contract, IP lists, rate limits,
//! audit, the credential cache) and refuses it on every node within a second of its
//! revocation or its client's deletion, although the JWT itself has not expired.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use chrono::{DateTime, Duration, Utc};
use datastack_core::credential::{self, CredentialKind};
use datastack_core::id::{OAuthClientId, PrincipalId, TokenId};
use datastack_core::model::{Status, Token};
use datastack_core::oauth::{self, ClientType, GrantType, OAuthClient};
use datastack_core::scope::{Scope, ScopeSet};
use datastack_core::validate;
use datastack_store::{Invalidation, OAuthClientPatch};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{PageParams, page_of};
use crate::api::issuance;
use crate::audit::AuditContext;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::pipeline::authorize::{Authorized, ManageOauthClients, ReadOauthClients};
use crate::pipeline::extract::{Json, OAuthClientPath, PathId, Query};
use crate::state::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_oauth_clients, create_oauth_client))
        .routes(routes!(
            get_oauth_client,
            update_oauth_client,
            delete_oauth_client
        ))
        .routes(routes!(rotate_oauth_client_secret))
        .routes(routes!(token))
        .routes(routes!(revoke))
        .routes(routes!(introspect))
        .routes(routes!(metadata))
        .routes(routes!(json_token))
        .routes(routes!(json_revoke))
}

/// Default lifetime of access tokens: one hour.
const DEFAULT_ACCESS_TTL: i64 = 3600;
/// Access tokens live between one minute and one day.
const ACCESS_TTL_RANGE: std::ops::RangeInclusive<i64> = 60..=86_400;
/// Default lifetime of refresh tokens: thirty days.
const DEFAULT_REFRESH_TTL: i64 = 30 * 86_400;
/// Refresh tokens live between five minutes and one year.
const REFRESH_TTL_RANGE: std::ops::RangeInclusive<i64> = 300..=365 * 86_400;
/// The most redirect URIs and audiences a client may list.
const MAX_LIST: usize = 20;
/// The longest redirect URI or audience.
const MAX_URI_LEN: usize = 2000;
/// The longest overlap of a rotated secret: seven days.
const MAX_OVERLAP_SECONDS: i64 = 7 * 86_400;
/// The largest form body the OAuth endpoints read.
const MAX_FORM_BYTES: usize = 16 * 1024;

/// A client to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateOAuthClientRequest {
    /// A name for people, 1–200 characters.
    pub name: String,
    /// `confidential` (default: it gets a secret) or `public`.
    #[serde(rename = "type")]
    #[schema(value_type = Option<String>)]
    pub client_type: Option<ClientType>,
    /// The grants it may use; default `["client_credentials"]`. This server issues tokens
    /// for `client_credentials`.
    pub grant_types: Option<Vec<String>>,
    /// Exact redirect URIs (https, or http on a loopback address), at most 20.
    pub redirect_uris: Option<Vec<String>>,
    /// The most its tokens may carry, each held by the calling credential; default: the
    /// calling credential's scopes.
    pub scopes: Option<Vec<String>>,
    /// The `aud` values its tokens may be issued for (the first is the default), at most
    /// 20; default: this server's issuer.
    pub audiences: Option<Vec<String>>,
    /// Access-token lifetime, 60–86400 seconds (default 3600).
    pub access_token_ttl_seconds: Option<i64>,
    /// Refresh-token lifetime, 300–31536000 seconds (default 2592000).
    pub refresh_token_ttl_seconds: Option<i64>,
    /// The service principal (`sp_…`) its `client_credentials` tokens act as; required for
    /// that grant. Its role still limits what the tokens may do.
    pub owner_id: Option<String>,
}

/// A change to a client; absent fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateOAuthClientRequest {
    /// A new name.
    pub name: Option<String>,
    /// New redirect URIs.
    pub redirect_uris: Option<Vec<String>>,
    /// New allowed scopes (held by the calling credential). Tokens already issued keep
    /// theirs until they expire; delete the client to stop them at once.
    pub scopes: Option<Vec<String>>,
    /// New audiences.
    pub audiences: Option<Vec<String>>,
    /// New access-token lifetime.
    pub access_token_ttl_seconds: Option<i64>,
    /// New refresh-token lifetime.
    pub refresh_token_ttl_seconds: Option<i64>,
}

/// A secret rotation.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RotateOAuthClientSecretRequest {
    /// How long the old secret keeps working, 0–604800 seconds (default 0: it stops now).
    pub overlap_seconds: Option<i64>,
}

/// A client as listed: never its secret.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OAuthClientResponse {
    /// Its `client_id`, `ocl_…`.
    pub client_id: String,
    /// Its name.
    pub name: String,
    /// `confidential` or `public`.
    #[serde(rename = "type")]
    pub client_type: &'static str,
    /// The grants it may use.
    pub grant_types: Vec<&'static str>,
    /// Its redirect URIs.
    pub redirect_uris: Vec<String>,
    /// The most its tokens may carry.
    pub scopes: Vec<String>,
    /// The audiences its tokens may be issued for.
    pub audiences: Vec<String>,
    /// Access-token lifetime in seconds.
    pub access_token_ttl_seconds: i64,
    /// Refresh-token lifetime in seconds.
    pub refresh_token_ttl_seconds: i64,
    /// The service principal its `client_credentials` tokens act as.
    pub owner_id: Option<String>,
    /// The current secret's last four characters (confidential clients).
    pub secret_last_four: Option<String>,
    /// When the current secret was issued.
    #[serde(serialize_with = "crate::api::time::rfc3339_opt")]
    pub secret_rotated_at: Option<DateTime<Utc>>,
    /// Until when the previous secret still works, after a rotation with overlap.
    #[serde(serialize_with = "crate::api::time::rfc3339_opt")]
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    /// Who created it.
    pub created_by: Option<String>,
    /// Creation time.
    #[serde(serialize_with = "crate::api::time::rfc3339")]
    pub created_at: DateTime<Utc>,
    /// Last change.
    #[serde(serialize_with = "crate::api::time::rfc3339")]
    pub updated_at: DateTime<Utc>,
    /// When it last got a token.
    #[serde(serialize_with = "crate::api::time::rfc3339_opt")]
    pub last_used_at: Option<DateTime<Utc>>,
}

impl From<OAuthClient> for OAuthClientResponse {
    fn from(c: OAuthClient) -> Self {
        Self {
            client_id: c.id.to_string(),
            name: c.name,
            client_type: c.client_type.as_str(),
            grant_types: c.grant_types.iter().map(|g| g.as_str()).collect(),
            redirect_uris: c.redirect_uris,
            scopes: c.scopes.to_strings(),
            audiences: c.audiences,
            access_token_ttl_seconds: c.access_token_ttl_seconds,
            refresh_token_ttl_seconds: c.refresh_token_ttl_seconds,
            owner_id: c.owner_id.map(|o| o.to_string()),
            secret_last_four: c.secret_last_four,
            secret_rotated_at: c.secret_rotated_at,
            previous_secret_expires_at: c.previous_secret_expires_at,
            created_by: c.created_by,
            created_at: c.created_at,
            updated_at: c.updated_at,
            last_used_at: c.last_used_at,
        }
    }
}

/// A client with its new secret: the only time the secret is shown.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OAuthClientWithSecret {
    /// The secret (`dcsk…`, confidential clients). Store it now; it cannot be shown again.
    pub client_secret: Option<String>,
    /// The client.
    #[serde(flatten)]
    pub client: OAuthClientResponse,
}

page_of!(OAuthClientPage, OAuthClientResponse);

fn ttl(
    value: Option<i64>,
    default: i64,
    range: std::ops::RangeInclusive<i64>,
    field: &str,
) -> ApiResult<i64> {
    let v = value.unwrap_or(default);
    if range.contains(&v) {
        Ok(v)
    } else {
        Err(ApiError::InvalidRequest(format!(
            "{field}: must be between {} and {}",
            range.start(),
            range.end()
        )))
    }
}

/// An exact redirect URI: https, or http to a loopback address (RFC 8252 §7.3), no
/// fragment (RFC 6749 §3.1.2).
fn redirect_uris(list: Option<Vec<String>>) -> ApiResult<Vec<String>> {
    let list = list.unwrap_or_default();
    if list.len() > MAX_LIST {
        return Err(ApiError::InvalidRequest(format!(
            "redirectUris: at most {MAX_LIST}"
        )));
    }
    for uri in &list {
        let parsed: Option<axum::http::Uri> = uri.parse().ok();
        let ok = uri.len() <= MAX_URI_LEN
            && !uri.contains('#')
            && parsed.as_ref().is_some_and(|u| {
                let host = u.host().unwrap_or_default();
                let loopback = host == "localhost"
                    || host
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback());
                match u.scheme_str() {
                    Some("https") => !host.is_empty(),
                    Some("http") => loopback,
                    _ => false,
                }
            });
        if !ok {
            return Err(ApiError::InvalidRequest(format!(
                "redirectUris: {} is not an https URI (or http to a loopback address) without a fragment",
                shown(uri)
            )));
        }
    }
    Ok(list)
}

fn audiences(list: Option<Vec<String>>, issuer: &str) -> ApiResult<Vec<String>> {
    let list = list.unwrap_or_else(|| vec![issuer.to_owned()]);
    if list.is_empty() || list.len() > MAX_LIST {
        return Err(ApiError::InvalidRequest(format!(
            "audiences: between 1 and {MAX_LIST}"
        )));
    }
    for a in &list {
        if a.is_empty() || a.len() > MAX_URI_LEN || a.chars().any(|c| c.is_control() || c == ' ') {
            return Err(ApiError::InvalidRequest(
                "audiences: each must be 1–2000 characters without spaces or control characters"
                    .into(),
            ));
        }
    }
    Ok(list)
}

/// Creates an OAuth client; a confidential client's secret is in the answer, once.
#[utoipa::path(post, operation_id = "createOAuthClient", path = "/api/v1/oauth/clients", tag = "oauth",
    security(("bearer" = ["manage:oauth-clients"])),
    params(("x-datastack-scope" = String, Header, description = "manage:oauth-clients")),
    request_body = CreateOAuthClientRequest,
    responses((status = 201, body = OAuthClientWithSecret), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn create_oauth_client(
    State(state): State<AppState>,
    caller: Authorized<ManageOauthClients>,
    audit: AuditContext,
    Json(body): Json<CreateOAuthClientRequest>,
) -> ApiResult<(StatusCode, Json<OAuthClientWithSecret>)> {
    let me = &caller.identity.principal;
    let name = validate::text("name", &body.name, validate::MAX_NAME_LEN)?;
    let client_type = body.client_type.unwrap_or(ClientType::Confidential);
    let grant_types = match &body.grant_types {
        None => vec![GrantType::ClientCredentials],
        Some(list) if list.is_empty() => {
            return Err(ApiError::InvalidRequest("grantTypes: at least one".into()));
        }
        Some(list) => {
            let mut grants = Vec::new();
            for g in list {
                let grant = GrantType::parse(g).ok_or_else(|| {
                    ApiError::InvalidRequest(format!(
                        "grantTypes: {} is not a grant this server issues tokens for (client_credentials, urn:ietf:params:oauth:grant-type:token-exchange)",
                        shown(g)
                    ))
                })?;
                if !grants.contains(&grant) {
                    grants.push(grant);
                }
            }
            grants
        }
    };
    let owner = match body.owner_id.as_deref() {
        None => None,
        Some(id) => Some(
            issuance::resolve_owner(&state, me, Some(id), issuance::Owners::ServicePrincipals)
                .await?,
        ),
    };
    if grant_types.contains(&GrantType::TokenExchange) && client_type != ClientType::Confidential {
        return Err(ApiError::InvalidRequest(
            "grantTypes: token exchange needs a confidential client (one with a secret)".into(),
        ));
    }
    if grant_types.contains(&GrantType::ClientCredentials) {
        if client_type != ClientType::Confidential {
            return Err(ApiError::InvalidRequest(
                "grantTypes: client_credentials needs a confidential client (one with a secret)"
                    .into(),
            ));
        }
        if owner.is_none() {
            return Err(ApiError::InvalidRequest(
                "ownerId: client_credentials needs the service principal (sp_…) the client acts as"
                    .into(),
            ));
        }
    }
    let granted = &caller.identity.token.scopes;
    let scopes = match &body.scopes {
        None => granted.clone(),
        Some(list) => issuance::within_granted(granted, ScopeSet::parse(list)?, "client")?,
    };
    let now = Utc::now();
    let secret = (client_type == ClientType::Confidential).then(oauth::generate_client_secret);
    let client = OAuthClient {
        id: OAuthClientId::generate(),
        workspace_id: me.workspace_id.clone(),
        name,
        client_type,
        grant_types,
        redirect_uris: redirect_uris(body.redirect_uris)?,
        scopes,
        audiences: audiences(body.audiences, &state.edge.signer.issuer)?,
        access_token_ttl_seconds: ttl(
            body.access_token_ttl_seconds,
            DEFAULT_ACCESS_TTL,
            ACCESS_TTL_RANGE,
            "accessTokenTtlSeconds",
        )?,
        refresh_token_ttl_seconds: ttl(
            body.refresh_token_ttl_seconds,
            DEFAULT_REFRESH_TTL,
            REFRESH_TTL_RANGE,
            "refreshTokenTtlSeconds",
        )?,
        owner_id: owner.map(|o| o.id),
        secret_digest: secret.as_ref().map(|s| s.digest.to_hex()),
        secret_last_four: secret.as_ref().map(|s| s.last_four.clone()),
        previous_secret_digest: None,
        previous_secret_expires_at: None,
        secret_rotated_at: secret.as_ref().map(|_| now),
        created_by: Some(me.id.to_string()),
        created_at: now,
        updated_at: now,
        last_used_at: None,
    };
    audit.set_resource_id(client.id.as_str());
    audit.set_detail(serde_json::json!({
        "name": client.name,
        "type": client.client_type.as_str(),
        "grantTypes": client.grant_types.iter().map(|g| g.as_str()).collect::<Vec<_>>(),
        "scopes": client.scopes,
        "ownerId": client.owner_id,
    }));
    let trail = audit.change(StatusCode::CREATED).with_event(audit.event(
        &client.workspace_id,
        "oauth_client.created",
        serde_json::json!({
            "clientId": client.id,
            "createdBy": me.id,
            "ownerId": client.owner_id,
            "scopes": client.scopes,
        }),
    ));
    state
        .store
        .insert_oauth_client(&client, &caller.identity.token.id, &trail)
        .await?;
    audit.mark_recorded();
    tracing::info!(client_id = %client.id, "oauth client created");
    Ok((
        StatusCode::CREATED,
        Json(OAuthClientWithSecret {
            client_secret: secret.map(|s| s.secret.expose_secret().to_owned()),
            client: OAuthClientResponse::from(client),
        }),
    ))
}

/// Lists the workspace's OAuth clients.
#[utoipa::path(get, operation_id = "listOAuthClients", path = "/api/v1/oauth/clients", tag = "oauth",
    security(("bearer" = ["read:oauth-clients"])),
    params(("x-datastack-scope" = String, Header, description = "read:oauth-clients"), PageParams),
    responses((status = 200, body = OAuthClientPage), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn list_oauth_clients(
    State(state): State<AppState>,
    caller: Authorized<ReadOauthClients>,
    Query(params): Query<PageParams>,
) -> ApiResult<Json<OAuthClientPage>> {
    let page = params.to_request()?;
    let result = state
        .store
        .list_oauth_clients(&caller.identity.principal.workspace_id, &page)
        .await?;
    Ok(Json(OAuthClientPage {
        items: result.items.into_iter().map(Into::into).collect(),
        next_cursor: result.next_cursor,
    }))
}

fn client_not_found(e: datastack_store::Error) -> ApiError {
    match e {
        datastack_store::Error::NotFound => ApiError::not_found("OAuth client"),
        other => other.into(),
    }
}

/// One OAuth client.
#[utoipa::path(get, operation_id = "getOAuthClient", path = "/api/v1/oauth/clients/{id}", tag = "oauth",
    security(("bearer" = ["read:oauth-clients"])),
    params(("x-datastack-scope" = String, Header, description = "read:oauth-clients"), ("id" = String, Path, description = "ocl_…")),
    responses((status = 200, body = OAuthClientResponse), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn get_oauth_client(
    State(state): State<AppState>,
    caller: Authorized<ReadOauthClients>,
    PathId(id): PathId<OAuthClientPath>,
) -> ApiResult<Json<OAuthClientResponse>> {
    let client = state
        .store
        .get_oauth_client(Some(&caller.identity.principal.workspace_id), &id)
        .await
        .map_err(client_not_found)?;
    Ok(Json(client.into()))
}

/// Changes an OAuth client.
#[utoipa::path(patch, operation_id = "updateOAuthClient", path = "/api/v1/oauth/clients/{id}", tag = "oauth",
    security(("bearer" = ["manage:oauth-clients"])),
    params(("x-datastack-scope" = String, Header, description = "manage:oauth-clients"), ("id" = String, Path, description = "ocl_…")),
    request_body = UpdateOAuthClientRequest,
    responses((status = 200, body = OAuthClientResponse), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn update_oauth_client(
    State(state): State<AppState>,
    caller: Authorized<ManageOauthClients>,
    audit: AuditContext,
    PathId(id): PathId<OAuthClientPath>,
    Json(body): Json<UpdateOAuthClientRequest>,
) -> ApiResult<Json<OAuthClientResponse>> {
    let me = &caller.identity.principal;
    let patch = OAuthClientPatch {
        name: body
            .name
            .as_deref()
            .map(|n| validate::text("name", n, validate::MAX_NAME_LEN))
            .transpose()?,
        redirect_uris: body
            .redirect_uris
            .map(|l| redirect_uris(Some(l)))
            .transpose()?,
        scopes: body
            .scopes
            .as_ref()
            .map(|list| {
                issuance::within_granted(
                    &caller.identity.token.scopes,
                    ScopeSet::parse(list)?,
                    "client",
                )
            })
            .transpose()?,
        audiences: body
            .audiences
            .map(|l| audiences(Some(l), &state.edge.signer.issuer))
            .transpose()?,
        access_token_ttl_seconds: body
            .access_token_ttl_seconds
            .map(|v| ttl(Some(v), v, ACCESS_TTL_RANGE, "accessTokenTtlSeconds"))
            .transpose()?,
        refresh_token_ttl_seconds: body
            .refresh_token_ttl_seconds
            .map(|v| ttl(Some(v), v, REFRESH_TTL_RANGE, "refreshTokenTtlSeconds"))
            .transpose()?,
    };
    audit.set_resource_id(id.as_str());
    let trail = audit.change(StatusCode::OK);
    let client = state
        .store
        .update_oauth_client(&me.workspace_id, &id, &patch, &trail)
        .await
        .map_err(client_not_found)?;
    audit.mark_recorded();
    crate::edge::apply_invalidation(&state, &Invalidation::OAuthClientChanged(id.to_string()))
        .await;
    Ok(Json(client.into()))
}

/// Deletes an OAuth client: every token issued to it is refused on every node within a
/// second.
#[utoipa::path(delete, operation_id = "deleteOAuthClient", path = "/api/v1/oauth/clients/{id}", tag = "oauth",
    security(("bearer" = ["manage:oauth-clients"])),
    params(("x-datastack-scope" = String, Header, description = "manage:oauth-clients"), ("id" = String, Path, description = "ocl_…")),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn delete_oauth_client(
    State(state): State<AppState>,
    caller: Authorized<ManageOauthClients>,
    audit: AuditContext,
    PathId(id): PathId<OAuthClientPath>,
) -> ApiResult<StatusCode> {
    let me = &caller.identity.principal;
    audit.set_resource_id(id.as_str());
    let trail = audit.change(StatusCode::NO_CONTENT).with_event(audit.event(
        &me.workspace_id,
        "oauth_client.deleted",
        serde_json::json!({ "clientId": id, "deletedBy": me.id }),
    ));
    let revoked = state
        .store
        .delete_oauth_client(&me.workspace_id, &id, &trail)
        .await
        .map_err(client_not_found)?;
    audit.mark_recorded();
    crate::edge::apply_invalidation(&state, &Invalidation::OAuthClient(id.to_string())).await;
    tracing::info!(client_id = %id, revoked, "oauth client deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Gives a confidential client a new secret (in the answer, once); the old one keeps
/// working for `overlapSeconds`.
#[utoipa::path(post, operation_id = "rotateOAuthClientSecret", path = "/api/v1/oauth/clients/{id}/rotate-secret", tag = "oauth",
    security(("bearer" = ["manage:oauth-clients"])),
    params(("x-datastack-scope" = String, Header, description = "manage:oauth-clients"), ("id" = String, Path, description = "ocl_…")),
    request_body = RotateOAuthClientSecretRequest,
    responses((status = 200, body = OAuthClientWithSecret), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn rotate_oauth_client_secret(
    State(state): State<AppState>,
    caller: Authorized<ManageOauthClients>,
    audit: AuditContext,
    PathId(id): PathId<OAuthClientPath>,
    Json(body): Json<RotateOAuthClientSecretRequest>,
) -> ApiResult<Json<OAuthClientWithSecret>> {
    let me = &caller.identity.principal;
    let overlap = body.overlap_seconds.unwrap_or(0);
    if !(0..=MAX_OVERLAP_SECONDS).contains(&overlap) {
        return Err(ApiError::InvalidRequest(format!(
            "overlapSeconds: must be between 0 and {MAX_OVERLAP_SECONDS}"
        )));
    }
    let secret = oauth::generate_client_secret();
    let previous_until = (overlap > 0).then(|| Utc::now() + Duration::seconds(overlap));
    audit.set_resource_id(id.as_str());
    audit.set_detail(serde_json::json!({ "overlapSeconds": overlap }));
    let trail = audit.change(StatusCode::OK).with_event(audit.event(
        &me.workspace_id,
        "oauth_client.secret_rotated",
        serde_json::json!({ "clientId": id, "rotatedBy": me.id, "previousValidUntil": previous_until }),
    ));
    let client = state
        .store
        .rotate_oauth_client_secret(
            &me.workspace_id,
            &id,
            &secret.digest.to_hex(),
            &secret.last_four,
            previous_until,
            &trail,
        )
        .await
        .map_err(|e| match e {
            datastack_store::Error::NotFound => ApiError::not_found("confidential OAuth client"),
            other => other.into(),
        })?;
    audit.mark_recorded();
    crate::edge::apply_invalidation(&state, &Invalidation::OAuthClientChanged(id.to_string()))
        .await;
    Ok(Json(OAuthClientWithSecret {
        client_secret: Some(secret.secret.expose_secret().to_owned()),
        client: client.into(),
    }))
}

// ---------------------------------------------------------------------------------------
// Issuance in group commits.

/// The most tokens one commit stores.
const ISSUE_BATCH_MAX: usize = 256;

type Issued = (Token, OAuthClientId, datastack_store::Trail);
type IssueReply = tokio::sync::oneshot::Sender<Result<bool, String>>;

/// Stores issued access tokens in group commits: the token endpoint hands each token to
/// one task, which writes every token waiting (up to [`ISSUE_BATCH_MAX`]) in one
/// transaction while the previous commit runs, and answers each request once its token is
/// committed. Nothing is answered before its commit, so a token in an answer is never lost.
pub struct Issuer {
    tx: tokio::sync::mpsc::Sender<(Issued, IssueReply)>,
    /// The clients the token endpoint authenticated lately, with their subject's state, so
    /// that a client asking again costs no store query (dropped by the announcements of a
    /// change to the client, its owner or its workspace, and after the credential cache's
    /// TTL).
    clients: quick_cache::sync::Cache<String, std::sync::Arc<ClientEntry>>,
    ttl: std::time::Duration,
}

/// A client as the token endpoint last read it.
pub struct ClientEntry {
    client: OAuthClient,
    /// The service principal its tokens act as, if it exists and it and its workspace are
    /// active; else why not.
    subject: Result<PrincipalId, &'static str>,
    fetched: std::time::Instant,
}

/// How many clients a node keeps for its token endpoint.
const CLIENT_CACHE_CAPACITY: usize = 10_000;

impl Issuer {
    /// Forgets what `inv` names.
    pub fn invalidate(&self, inv: &Invalidation) {
        match inv {
            Invalidation::OAuthClient(id) | Invalidation::OAuthClientChanged(id) => {
                self.clients.remove(id);
            }
            Invalidation::Principal(p) => {
                let victims: Vec<String> = self
                    .clients
                    .iter()
                    .filter(|(_, e)| e.client.owner_id.as_ref().is_some_and(|o| o.as_str() == p))
                    .map(|(k, _)| k)
                    .collect();
                for k in victims {
                    self.clients.remove(&k);
                }
            }
            Invalidation::Workspace(_) | Invalidation::WorkspaceTree(_) | Invalidation::All => {
                self.clients.clear();
            }
            Invalidation::Token(_)
            | Invalidation::Credential(_)
            | Invalidation::Routes
            | Invalidation::IpLists(_)
            | Invalidation::Penalty(_)
            | Invalidation::Heartbeat => {}
        }
    }

    fn cached(&self, id: &OAuthClientId) -> Option<std::sync::Arc<ClientEntry>> {
        self.clients
            .get(id.as_str())
            .filter(|e| e.fetched.elapsed() < self.ttl)
    }

    /// An issuer writing to `store`; its task ends when the issuer is dropped. Clients are
    /// kept for at most `ttl`.
    pub fn new(store: datastack_store::Store, ttl: std::time::Duration) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(Issued, IssueReply)>(4 * ISSUE_BATCH_MAX);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while batch.len() < ISSUE_BATCH_MAX {
                    match rx.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                let (items, replies): (Vec<Issued>, Vec<IssueReply>) = batch.into_iter().unzip();
                match store.insert_oauth_access_tokens(&items).await {
                    Ok(stored) => {
                        for (reply, ok) in replies.into_iter().zip(stored) {
                            let _ = reply.send(Ok(ok));
                        }
                    }
                    Err(e) => {
                        let message = e.to_string();
                        for reply in replies {
                            let _ = reply.send(Err(message.clone()));
                        }
                    }
                }
            }
        });
        Self {
            tx,
            clients: quick_cache::sync::Cache::new(CLIENT_CACHE_CAPACITY),
            ttl,
        }
    }

    /// Stores one token with its trail; `Ok(false)` when its client or owner is gone.
    async fn store(&self, item: Issued) -> Result<bool, OAuthError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let unavailable = || {
            OAuthError::new(
                "temporarily_unavailable",
                "the server cannot answer now; try again",
            )
        };
        self.tx
            .send((item, reply))
            .await
            .map_err(|_| unavailable())?;
        match answer.await {
            Ok(Ok(stored)) => Ok(stored),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "storing issued OAuth access tokens failed");
                Err(unavailable())
            }
            Err(_) => Err(unavailable()),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The token endpoint and revocation: form-encoded, RFC error bodies.

/// An RFC 6749 §5.2 error.
pub struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
    retry_after: Option<u64>,
}

impl OAuthError {
    fn new(error: &'static str, description: impl Into<String>) -> Self {
        let status = match error {
            "invalid_client" => StatusCode::UNAUTHORIZED,
            "server_error" => StatusCode::INTERNAL_SERVER_ERROR,
            "temporarily_unavailable" => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        };
        Self {
            status,
            error,
            description: description.into(),
            retry_after: None,
        }
    }
}

impl From<datastack_store::Error> for OAuthError {
    fn from(e: datastack_store::Error) -> Self {
        tracing::error!(error = %e, "the OAuth endpoint could not reach the store");
        OAuthError::new(
            "temporarily_unavailable",
            "the server cannot answer now; try again",
        )
    }
}

/// The body of an OAuth error (RFC 6749 §5.2).
#[derive(Serialize, ToSchema)]
pub struct OAuthErrorBody {
    /// `invalid_request`, `invalid_client`, `invalid_grant`, `unauthorized_client`,
    /// `unsupported_grant_type`, `invalid_scope`, `invalid_target`, …
    pub error: String,
    /// What was wrong, for the developer.
    pub error_description: String,
}

fn no_store(response: &mut Response) {
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            axum::Json(OAuthErrorBody {
                error: self.error.to_owned(),
                error_description: self.description,
            }),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"datastack\", charset=\"UTF-8\""),
            );
        }
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        no_store(&mut response);
        response
    }
}

/// The parameters of a form body, each at most once (RFC 6749 §3.2).
struct Form(Vec<(String, String)>);

impl Form {
    fn parse(headers: &HeaderMap, body: &[u8]) -> Result<Self, OAuthError> {
        let form_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| {
                v.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            });
        if !form_type {
            return Err(OAuthError::new(
                "invalid_request",
                "the body must be application/x-www-form-urlencoded",
            ));
        }
        if body.len() > MAX_FORM_BYTES {
            return Err(OAuthError::new("invalid_request", "the body is too large"));
        }
        let mut pairs: Vec<(String, String)> = Vec::new();
        for (k, v) in form_urlencoded::parse(body) {
            if pairs.iter().any(|(seen, _)| *seen == k) {
                return Err(OAuthError::new(
                    "invalid_request",
                    format!("the parameter {k} appears more than once"),
                ));
            }
            pairs.push((k.into_owned(), v.into_owned()));
        }
        Ok(Form(pairs))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }
}

/// Authenticates the client of a token-endpoint request: `client_secret_basic` or
/// `client_secret_post`, never both. Every failure is the same `invalid_client`.
async fn authenticate_client(
    state: &AppState,
    headers: &HeaderMap,
    form: &Form,
    audit: &AuditContext,
) -> Result<std::sync::Arc<ClientEntry>, OAuthError> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"));
    let (client_id, secret): (String, Option<SecretString>) = match basic {
        Some((_, encoded)) => {
            if form.get("client_secret").is_some() {
                return Err(OAuthError::new(
                    "invalid_request",
                    "the client authenticated twice (Authorization: Basic and client_secret)",
                ));
            }
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    OAuthError::new(
                        "invalid_client",
                        "the Basic credentials are not base64 of id:secret",
                    )
                })?;
            let (id, secret) = decoded.split_once(':').ok_or_else(|| {
                OAuthError::new(
                    "invalid_client",
                    "the Basic credentials are not base64 of id:secret",
                )
            })?;
            // RFC 6749 §2.3.1: both halves are form-urlencoded first.
            let unescape = |s: &str| -> String {
                form_urlencoded::parse(format!("x={s}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            };
            (unescape(id), Some(SecretString::from(unescape(secret))))
        }
        None => (
            form.get("client_id").unwrap_or_default().to_owned(),
            form.get("client_secret")
                .map(|s| SecretString::from(s.to_owned())),
        ),
    };
    let failed = || OAuthError::new("invalid_client", "unknown client or wrong secret");
    let id = OAuthClientId::parse(&client_id).map_err(|_| failed())?;
    audit.set_resource_id(id.as_str());
    let (entry, from_cache) = match state.oauth.cached(&id) {
        Some(entry) => (entry, true),
        None => match load_client(state, &id).await? {
            Some(entry) => (entry, false),
            None => return Err(failed()),
        },
    };
    if entry.client.client_type == ClientType::Public {
        // A public client has no secret to prove; it may not use the grants this
        // endpoint issues today.
        return Err(OAuthError::new(
            "unauthorized_client",
            "a public client cannot use this grant",
        ));
    }
    // From here on, every failure is counted against the client, whatever the secret was.
    let Some(digest) = secret
        .as_ref()
        .and_then(|s| oauth::parse_client_secret(s.expose_secret()))
    else {
        return Err(client_failure(state, &id).await);
    };
    let now = Utc::now();
    if entry.client.secret_matches(&digest, now) {
        return Ok(entry);
    }
    // A cached copy may predate a rotation on another node whose announcement is still on
    // its way: a mismatch is checked against the store before it counts.
    if from_cache
        && let Some(fresh) = load_client(state, &id).await?
        && fresh.client.secret_matches(&digest, now)
    {
        return Ok(fresh);
    }
    Err(client_failure(state, &id).await)
}

/// Reads a client and its subject's state from the store and keeps them for the token
/// endpoint; `None` if there is no such client.
async fn load_client(
    state: &AppState,
    id: &OAuthClientId,
) -> Result<Option<std::sync::Arc<ClientEntry>>, OAuthError> {
    let client = match state.store.get_oauth_client(None, id).await {
        Ok(c) => c,
        Err(datastack_store::Error::NotFound) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let subject = match &client.owner_id {
        None => Err("the client has no service principal"),
        Some(owner_id) => {
            match state
                .store
                .get_principal(
                    &client.workspace_id,
                    datastack_core::model::PrincipalKind::ServicePrincipal,
                    owner_id,
                )
                .await
            {
                Ok(owner) => {
                    let workspace = state.store.get_workspace(&client.workspace_id).await?;
                    if owner.status == Status::Active && workspace.status == Status::Active {
                        Ok(owner.id)
                    } else {
                        Err("the client's service principal or its workspace is suspended")
                    }
                }
                Err(datastack_store::Error::NotFound) => {
                    Err("the client's service principal no longer exists")
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    let entry = std::sync::Arc::new(ClientEntry {
        client,
        subject,
        fetched: std::time::Instant::now(),
    });
    state.oauth.clients.insert(id.to_string(), entry.clone());
    Ok(Some(entry))
}

/// Failed authentications of one client allowed per minute, from all addresses together
/// (each address is limited on its own besides, as every request without a credential).
pub const CLIENT_FAILURES_PER_MINUTE: u32 = 30;

/// The answer to a failed authentication of a known client: counted in the client's
/// bucket of failures, and once that is empty answered 429 (with `Retry-After`) instead
/// of 401, so a guesser learns to stop; a client presenting its right secret is never
/// refused by it. The bucket's owner keeps sending: an abuse flag, as for a credential.
async fn client_failure(state: &AppState, client: &OAuthClientId) -> OAuthError {
    let verdict = state
        .edge
        .limiter
        .check(&[crate::edge::ratelimit::Bucket {
            subject: crate::edge::ratelimit::Subject::Credential(client.to_string()),
            per_minute: CLIENT_FAILURES_PER_MINUTE,
        }])
        .await;
    if verdict.allowed() {
        return OAuthError::new("invalid_client", "unknown client or wrong secret");
    }
    let mut refused = OAuthError::new(
        "invalid_client",
        "too many failed authentications of this client; wait before trying again",
    );
    refused.status = StatusCode::TOO_MANY_REQUESTS;
    refused.retry_after = Some(verdict.retry_after.map_or(60, |d| d.as_secs()));
    refused
}

/// The form of a token request (RFC 6749 §4.4.2). The client authenticates with HTTP
/// Basic, or with `client_id` and `client_secret` here.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct TokenForm {
    /// `client_credentials` or `urn:ietf:params:oauth:grant-type:token-exchange`.
    grant_type: String,
    /// Token exchange: the subject's token (a datastack credential).
    subject_token: Option<String>,
    /// Token exchange: `urn:ietf:params:oauth:token-type:access_token`.
    subject_token_type: Option<String>,
    /// Token exchange: `urn:ietf:params:oauth:token-type:access_token` (the only type issued).
    requested_token_type: Option<String>,
    /// Space-separated scopes, each allowed for the client; default: all of them.
    scope: Option<String>,
    /// One of the client's audiences; default: its first.
    audience: Option<String>,
    /// `client_secret_post`: the client id.
    client_id: Option<String>,
    /// `client_secret_post`: the client secret.
    client_secret: Option<String>,
}

/// The form of a revocation request (RFC 7009 §2.1).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct RevokeForm {
    /// The access token to revoke.
    token: String,
    /// `access_token`.
    token_type_hint: Option<String>,
    /// `client_secret_post`: the client id.
    client_id: Option<String>,
    /// `client_secret_post`: the client secret.
    client_secret: Option<String>,
}

/// A token response (RFC 6749 §5.1).
#[derive(Serialize, ToSchema)]
pub struct TokenResponse {
    /// The access token: a JWT (RFC 9068). Send it as `Authorization: Bearer …`.
    pub access_token: String,
    /// `Bearer`.
    pub token_type: &'static str,
    /// Seconds until it expires.
    pub expires_in: i64,
    /// The scopes it carries, space-separated.
    pub scope: String,
    /// For a token exchange (RFC 8693): `urn:ietf:params:oauth:token-type:access_token`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issued_token_type: Option<&'static str>,
}

/// The claims of an access token (RFC 9068 §2.2).
#[derive(Serialize)]
struct AccessClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: i64,
    iat: i64,
    jti: &'a str,
    client_id: &'a str,
    scope: &'a str,
    /// The subject's workspace.
    ws: &'a str,
    /// RFC 8693 §4.1: the party acting on the subject's behalf (an exchanged token).
    #[serde(skip_serializing_if = "Option::is_none")]
    act: Option<Actor<'a>>,
}

/// The `act` claim.
#[derive(Serialize)]
struct Actor<'a> {
    sub: &'a str,
}

/// RFC 8693's name of an access token.
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// The token endpoint (RFC 6749 §3.2). Form-encoded; the client authenticates with HTTP
/// Basic (`client_secret_basic`) or in the body (`client_secret_post`). Grants:
/// `client_credentials`.
#[utoipa::path(post, operation_id = "oauthToken", path = "/oauth2/token", tag = "oauth",
    request_body(content_type = "application/x-www-form-urlencoded", content = TokenForm),
    responses((status = 200, body = TokenResponse), (status = 400, body = OAuthErrorBody),
        (status = 401, body = OAuthErrorBody, description = "invalid_client, with WWW-Authenticate")))]
#[tracing::instrument(skip_all)]
pub async fn token(
    State(state): State<AppState>,
    audit: AuditContext,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    audit.set_action("oauth.token", "oauth-clients");
    oauth_answer(issue(&state, &audit, &headers, &body).await)
}

async fn issue(
    state: &AppState,
    audit: &AuditContext,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<TokenResponse, OAuthError> {
    let form = Form::parse(headers, body)?;
    issue_from(state, audit, headers, &form).await
}

/// Issues a token for a request's parameters (`headers` may carry HTTP Basic client
/// authentication).
async fn issue_from(
    state: &AppState,
    audit: &AuditContext,
    headers: &HeaderMap,
    form: &Form,
) -> Result<TokenResponse, OAuthError> {
    let grant_type = form
        .get("grant_type")
        .ok_or_else(|| OAuthError::new("invalid_request", "grant_type is missing"))?;
    let entry = authenticate_client(state, headers, form, audit).await?;
    let client = &entry.client;
    let grant = GrantType::parse(grant_type).ok_or_else(|| {
        OAuthError::new(
            "unsupported_grant_type",
            format!("{} is not a grant this server supports", shown(grant_type)),
        )
    })?;
    if !client.allows(grant) {
        return Err(OAuthError::new(
            "unauthorized_client",
            format!("the client may not use {}", grant.as_str()),
        ));
    }
    // The subject, and what bounds the token's scopes: for client_credentials the client's
    // service principal and the client's scopes; for a token exchange the subject token's
    // principal and what both the subject token and the client hold.
    let (subject, subject_workspace, bound, subject_expires) = match grant {
        GrantType::ClientCredentials => {
            let owner = entry
                .subject
                .clone()
                .map_err(|why| OAuthError::new("unauthorized_client", why))?;
            (
                owner,
                client.workspace_id.clone(),
                client.scopes.clone(),
                None,
            )
        }
        GrantType::TokenExchange => {
            if form.get("subject_token_type") != Some(ACCESS_TOKEN_TYPE) {
                return Err(OAuthError::new(
                    "invalid_request",
                    format!("subject_token_type must be {ACCESS_TOKEN_TYPE}"),
                ));
            }
            if form
                .get("requested_token_type")
                .is_some_and(|t| t != ACCESS_TOKEN_TYPE)
            {
                return Err(OAuthError::new(
                    "invalid_request",
                    format!("requested_token_type: only {ACCESS_TOKEN_TYPE} is issued"),
                ));
            }
            if form.get("actor_token").is_some() {
                return Err(OAuthError::new(
                    "invalid_request",
                    "actor_token is not supported: the authenticated client is the actor",
                ));
            }
            let subject_token = form
                .get("subject_token")
                .ok_or_else(|| OAuthError::new("invalid_request", "subject_token is missing"))?;
            let identity = match state
                .credentials
                .check(&SecretString::from(subject_token.to_owned()))
                .await
            {
                Ok(Ok(identity)) => identity,
                Ok(Err(_)) => {
                    return Err(OAuthError::new(
                        "invalid_grant",
                        "the subject token is not a valid credential of this server",
                    ));
                }
                Err(e) => return Err(OAuthError::from(e.0)),
            };
            // A client exchanges only tokens of its own workspace (or below it).
            if !identity.in_subtree_of(client.workspace_id.as_str()) {
                return Err(OAuthError::new(
                    "invalid_grant",
                    "the subject token is not a valid credential of this server",
                ));
            }
            let both: Vec<Scope> = identity
                .token
                .scopes
                .as_slice()
                .iter()
                .copied()
                .filter(|s| client.scopes.covers(*s))
                .chain(
                    client
                        .scopes
                        .as_slice()
                        .iter()
                        .copied()
                        .filter(|s| identity.token.scopes.covers(*s)),
                )
                .collect();
            let names: Vec<String> = both.iter().map(ToString::to_string).collect();
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let bound = ScopeSet::parse(&names).map_err(|_| {
                OAuthError::new(
                    "invalid_scope",
                    "the subject token and the client share no scope",
                )
            })?;
            (
                identity.principal.id.clone(),
                identity.workspace.id.clone(),
                bound,
                identity.token.expires_at,
            )
        }
    };
    // Scopes: what was asked (space-separated), each within the bound; or all of it.
    let scopes = match form.get("scope") {
        None => bound.clone(),
        Some(asked) => {
            let list: Vec<&str> = asked.split(' ').filter(|s| !s.is_empty()).collect();
            let parsed = ScopeSet::parse(&list)
                .map_err(|e| OAuthError::new("invalid_scope", e.to_string()))?;
            if let Some(beyond) = parsed
                .as_slice()
                .iter()
                .find(|s: &&Scope| !bound.covers(**s))
            {
                return Err(OAuthError::new(
                    "invalid_scope",
                    format!("the scope {beyond} is beyond what this grant may give"),
                ));
            }
            parsed
        }
    };
    let audience = match form.get("audience") {
        None => client.audiences.first().cloned().unwrap_or_default(),
        Some(a) if client.audiences.iter().any(|x| x == a) => a.to_owned(),
        Some(_) => {
            return Err(OAuthError::new(
                "invalid_target",
                "the audience is not one this client may get tokens for",
            ));
        }
    };
    let owner_id = subject;
    let now = Utc::now();
    // An exchanged token never outlives the token it came from.
    let expires_at = subject_expires.map_or(
        now + Duration::seconds(client.access_token_ttl_seconds),
        |e| e.min(now + Duration::seconds(client.access_token_ttl_seconds)),
    );
    let id = TokenId::generate_oauth_access();
    let scope_text = scopes.to_strings().join(" ");
    let signer = &state.edge.signer;
    let jwt = signer
        .sign_access_token(&AccessClaims {
            iss: &signer.issuer,
            sub: owner_id.as_str(),
            aud: &audience,
            exp: expires_at.timestamp(),
            iat: now.timestamp(),
            jti: id.as_str(),
            client_id: client.id.as_str(),
            scope: &scope_text,
            ws: subject_workspace.as_str(),
            act: (grant == GrantType::TokenExchange).then(|| Actor {
                sub: client.id.as_str(),
            }),
        })
        .map_err(|e| OAuthError::new("server_error", format!("cannot sign the token: {e}")))?;
    let presented = credential::parse_presented(&SecretString::from(jwt.clone()))
        .filter(|p| p.kind == CredentialKind::OAuthAccessToken)
        .ok_or_else(|| OAuthError::new("server_error", "the signed token is not well-formed"))?;
    let token = Token {
        id,
        kind: CredentialKind::OAuthAccessToken,
        owner_id: owner_id.clone(),
        workspace_id: subject_workspace.clone(),
        label: client.id.to_string(),
        digest_hex: presented.digest.to_hex(),
        last_four: jwt[jwt.len() - 4..].to_owned(),
        scopes,
        created_at: now,
        expires_at: Some(expires_at),
        revoked_at: None,
        last_used_at: None,
        last_used_ip: None,
    };
    audit.set_detail(serde_json::json!({
        "grantType": grant.as_str(),
        "clientId": client.id,
        "tokenId": token.id,
        "subject": owner_id,
        "scopes": token.scopes,
        "audience": audience,
        "expiresAt": expires_at,
    }));
    let trail = audit.change_in(StatusCode::OK, &client.workspace_id);
    let expires_in = (expires_at - now).num_seconds().max(0);
    if !state.oauth.store((token, client.id.clone(), trail)).await? {
        return Err(OAuthError::new(
            "invalid_client",
            "unknown client or wrong secret",
        ));
    }
    audit.mark_recorded();
    Ok(TokenResponse {
        access_token: jwt,
        token_type: "Bearer",
        expires_in,
        scope: scope_text,
        issued_token_type: (grant == GrantType::TokenExchange).then_some(ACCESS_TOKEN_TYPE),
    })
}

/// The common start of revocation and introspection: the form, its `token`, and the
/// client authenticated like at the token endpoint.
async fn token_and_client(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
    audit: &AuditContext,
) -> Result<(SecretString, std::sync::Arc<ClientEntry>), OAuthError> {
    let form = Form::parse(headers, body)?;
    let presented = form
        .get("token")
        .ok_or_else(|| OAuthError::new("invalid_request", "token is missing"))?
        .to_owned();
    let entry = authenticate_client(state, headers, &form, audit).await?;
    Ok((SecretString::from(presented), entry))
}

/// A JSON answer of an OAuth endpoint (with `Cache-Control: no-store`), or its RFC error.
fn oauth_answer<T: Serialize>(result: Result<T, OAuthError>) -> Response {
    match result {
        Ok(body) => {
            let mut response = axum::Json(body).into_response();
            no_store(&mut response);
            response
        }
        Err(e) => e.into_response(),
    }
}

/// Token revocation (RFC 7009). Form-encoded `token` (and an optional
/// `token_type_hint`), client-authenticated like the token endpoint; a client revokes
/// only tokens issued to it. Answers 200 whether or not the token was known.
#[utoipa::path(post, operation_id = "oauthRevoke", path = "/oauth2/revoke", tag = "oauth",
    request_body(content_type = "application/x-www-form-urlencoded", content = RevokeForm),
    responses((status = 200, description = "revoked, or not a token of this client"),
        (status = 400, body = OAuthErrorBody),
        (status = 401, body = OAuthErrorBody, description = "invalid_client, with WWW-Authenticate")))]
#[tracing::instrument(skip_all)]
pub async fn revoke(
    State(state): State<AppState>,
    audit: AuditContext,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    audit.set_action("oauth.revoke", "oauth-clients");
    let result = async {
        let (presented, entry) = token_and_client(&state, &headers, &body, &audit).await?;
        let client = &entry.client;
        let Some(p) = credential::parse_presented(&presented)
            .filter(|p| p.kind == CredentialKind::OAuthAccessToken)
        else {
            return Ok(None);
        };
        let trail = audit.change_in(StatusCode::OK, &client.workspace_id);
        let revoked = state
            .store
            .revoke_oauth_access_token(Some(&client.id), &p.digest.to_hex(), &trail)
            .await?;
        if revoked.is_some() {
            audit.mark_recorded();
        }
        Ok::<_, OAuthError>(revoked)
    }
    .await;
    match result {
        Ok(revoked) => {
            if let Some(token) = revoked {
                crate::edge::apply_invalidation(&state, &Invalidation::of_token(&token)).await;
                tracing::info!(token_id = %token.id, "oauth access token revoked");
            }
            let mut response = StatusCode::OK.into_response();
            no_store(&mut response);
            response
        }
        Err(e) => e.into_response(),
    }
}

/// The form of an introspection request (RFC 7662 §2.1).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct IntrospectForm {
    /// The token to describe.
    token: String,
    /// `access_token`.
    token_type_hint: Option<String>,
    /// `client_secret_post`: the client id.
    client_id: Option<String>,
    /// `client_secret_post`: the client secret.
    client_secret: Option<String>,
}

/// An introspection answer (RFC 7662 §2.2): `{"active": false}` alone for a token that is
/// not active, else the token's claims.
#[derive(Serialize, ToSchema)]
pub struct Introspection {
    /// Whether the token is valid now.
    pub active: bool,
    /// Its scopes, space-separated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The client it was issued to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// `Bearer`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_type: Option<&'static str>,
    /// Expiry (Unix seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    /// Issue time (Unix seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    /// The subject: the principal it acts as.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// The audience.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// The issuer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// The token's id, `oat_…`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
}

impl Introspection {
    fn inactive() -> Self {
        Self {
            active: false,
            scope: None,
            client_id: None,
            token_type: None,
            exp: None,
            iat: None,
            sub: None,
            aud: None,
            iss: None,
            jti: None,
        }
    }
}

/// Token introspection (RFC 7662). Form-encoded `token`, client-authenticated like the
/// token endpoint. Active only for an unexpired, unrevoked OAuth access token of this
/// server whose subject is in the introspecting client's workspace (or below it); every
/// other token, including another workspace's, answers `{"active": false}`.
#[utoipa::path(post, operation_id = "oauthIntrospect", path = "/oauth2/introspect", tag = "oauth",
    request_body(content_type = "application/x-www-form-urlencoded", content = IntrospectForm),
    responses((status = 200, body = Introspection), (status = 400, body = OAuthErrorBody),
        (status = 401, body = OAuthErrorBody, description = "invalid_client, with WWW-Authenticate")))]
#[tracing::instrument(skip_all)]
pub async fn introspect(
    State(state): State<AppState>,
    audit: AuditContext,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    audit.set_action("oauth.introspect", "oauth-clients");
    let result = async {
        let (secret, entry) = token_and_client(&state, &headers, &body, &audit).await?;
        let client = &entry.client;
        if credential::parse_presented(&secret)
            .is_none_or(|p| p.kind != CredentialKind::OAuthAccessToken)
        {
            return Ok(Introspection::inactive());
        }
        let identity = match state.credentials.check(&secret).await {
            Ok(Ok(identity)) => identity,
            Ok(Err(_)) => return Ok(Introspection::inactive()),
            Err(e) => return Err(OAuthError::from(e.0)),
        };
        if !identity.in_subtree_of(client.workspace_id.as_str()) {
            return Ok(Introspection::inactive());
        }
        // The token is one this server issued (its digest is stored), so its payload is
        // read without checking the signature again: only `aud` is not stored elsewhere.
        let aud = secret
            .expose_secret()
            .split('.')
            .nth(1)
            .and_then(|p| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(p)
                    .ok()
            })
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v.get("aud").and_then(|a| a.as_str()).map(str::to_owned));
        let token = &identity.token;
        Ok(Introspection {
            active: true,
            scope: Some(token.scopes.to_strings().join(" ")),
            client_id: Some(token.label.clone()),
            token_type: Some("Bearer"),
            exp: token.expires_at.map(|e| e.timestamp()),
            iat: Some(token.created_at.timestamp()),
            sub: Some(identity.principal.id.to_string()),
            aud,
            iss: Some(state.edge.signer.issuer.clone()),
            jti: Some(token.id.to_string()),
        })
    }
    .await;
    oauth_answer(result)
}

/// Authorization server metadata (RFC 8414).
#[derive(Serialize, ToSchema)]
pub struct ServerMetadata {
    /// The `iss` of every token.
    pub issuer: String,
    /// `/oauth2/token`.
    pub token_endpoint: String,
    /// `/oauth2/revoke`.
    pub revocation_endpoint: String,
    /// `/oauth2/introspect`.
    pub introspection_endpoint: String,
    /// `/.well-known/jwks.json`.
    pub jwks_uri: String,
    /// The grants this server issues tokens for.
    pub grant_types_supported: Vec<&'static str>,
    /// `client_secret_basic`, `client_secret_post`.
    pub token_endpoint_auth_methods_supported: Vec<&'static str>,
    /// The same, for revocation.
    pub revocation_endpoint_auth_methods_supported: Vec<&'static str>,
    /// The same, for introspection.
    pub introspection_endpoint_auth_methods_supported: Vec<&'static str>,
    /// Every scope a client may be given.
    pub scopes_supported: Vec<String>,
    /// None yet: the authorization endpoint is not served.
    pub response_types_supported: Vec<&'static str>,
}

/// RFC 8414 metadata: exactly what this server supports. The URLs start with
/// `public_url` when it is set, else with the address the request was sent to.
#[utoipa::path(get, operation_id = "oauthServerMetadata", path = "/.well-known/oauth-authorization-server", tag = "oauth",
    responses((status = 200, body = ServerMetadata)))]
pub async fn metadata(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let base = match state.config.public_url.as_deref().map(str::trim) {
        Some(url) if !url.is_empty() => url.trim_end_matches('/').to_owned(),
        _ => {
            // Only a well-formed authority is echoed back.
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.parse::<axum::http::uri::Authority>().ok())
                .map(|a| a.to_string())
                .unwrap_or_else(|| state.config.listen.to_string());
            format!("http://{host}")
        }
    };
    let methods = vec!["client_secret_basic", "client_secret_post"];
    let body = ServerMetadata {
        issuer: state.edge.signer.issuer.clone(),
        token_endpoint: format!("{base}/oauth2/token"),
        revocation_endpoint: format!("{base}/oauth2/revoke"),
        introspection_endpoint: format!("{base}/oauth2/introspect"),
        jwks_uri: format!("{base}/.well-known/jwks.json"),
        grant_types_supported: GrantType::ALL.iter().map(|g| g.as_str()).collect(),
        token_endpoint_auth_methods_supported: methods.clone(),
        revocation_endpoint_auth_methods_supported: methods.clone(),
        introspection_endpoint_auth_methods_supported: methods,
        scopes_supported: std::iter::once("all-apis".to_owned())
            .chain(
                datastack_core::scope::Resource::ALL
                    .iter()
                    .flat_map(|r| [Scope::read(*r).to_string(), Scope::manage(*r).to_string()]),
            )
            .collect(),
        response_types_supported: Vec::new(),
    };
    (
        [(header::CACHE_CONTROL, "public, max-age=300")],
        axum::Json(body),
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------
// The JSON forms of the token and revocation endpoints, for API clients that speak JSON.

/// A token request as JSON: the parameters of `/oauth2/token`, camelCase, with the client
/// authenticating in the body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JsonTokenRequest {
    /// `client_credentials` or `urn:ietf:params:oauth:grant-type:token-exchange`.
    pub grant_type: String,
    /// The client id, `ocl_…`.
    pub client_id: String,
    /// The client secret, `dcsk…`.
    pub client_secret: String,
    /// Scopes to ask for (default: all the grant may give).
    pub scopes: Option<Vec<String>>,
    /// One of the client's audiences.
    pub audience: Option<String>,
    /// Token exchange: the subject's token.
    pub subject_token: Option<String>,
    /// Token exchange: `urn:ietf:params:oauth:token-type:access_token`.
    pub subject_token_type: Option<String>,
    /// Not supported by any grant this server issues yet: refused.
    pub refresh_token: Option<String>,
}

/// The token, as JSON.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JsonTokenResponse {
    /// The access token (a JWT): send it as `Authorization: Bearer …`.
    pub access_token: String,
    /// `Bearer`.
    pub token_type: &'static str,
    /// Seconds until it expires.
    pub expires_in: i64,
    /// The scopes it carries.
    pub scopes: Vec<String>,
    /// For a token exchange: `urn:ietf:params:oauth:token-type:access_token`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issued_token_type: Option<&'static str>,
}

/// A token to revoke, as JSON.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JsonRevokeRequest {
    /// The access token.
    pub token: String,
}

impl From<OAuthError> for ApiError {
    fn from(e: OAuthError) -> Self {
        let message = format!("{}: {}", e.error, e.description);
        match e.status {
            StatusCode::UNAUTHORIZED => ApiError::Forbidden(message),
            StatusCode::TOO_MANY_REQUESTS => ApiError::RateLimited(message),
            StatusCode::SERVICE_UNAVAILABLE => ApiError::Unavailable,
            StatusCode::INTERNAL_SERVER_ERROR => ApiError::Internal(message),
            _ => ApiError::InvalidRequest(message),
        }
    }
}

/// `POST /oauth2/token` as JSON: the same grants and checks, the client authenticating
/// with `clientId` and `clientSecret`. Errors have the API's shape; their message starts
/// with the RFC 6749 error code (`invalid_client: …`), and a failed client authentication
/// is a 403 (the API's 401 is for the `Authorization` header).
#[utoipa::path(post, operation_id = "issueToken", path = "/api/v1/auth/token", tag = "oauth",
    request_body = JsonTokenRequest,
    responses((status = 200, body = JsonTokenResponse), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 429, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn json_token(
    State(state): State<AppState>,
    audit: AuditContext,
    Json(body): Json<JsonTokenRequest>,
) -> ApiResult<Response> {
    audit.set_action("oauth.token", "oauth-clients");
    if body.refresh_token.is_some() {
        return Err(ApiError::InvalidRequest(
            "refreshToken: no grant this server issues yet gives refresh tokens".into(),
        ));
    }
    let mut pairs = vec![
        ("grant_type".to_owned(), body.grant_type),
        ("client_id".to_owned(), body.client_id),
        ("client_secret".to_owned(), body.client_secret),
    ];
    let optional = [
        ("scope", body.scopes.map(|s| s.join(" "))),
        ("audience", body.audience),
        ("subject_token", body.subject_token),
        ("subject_token_type", body.subject_token_type),
    ];
    pairs.extend(
        optional
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v))),
    );
    // No HTTP Basic here: the body authenticates the client.
    let issued = issue_from(&state, &audit, &HeaderMap::new(), &Form(pairs)).await?;
    let mut response = axum::Json(JsonTokenResponse {
        access_token: issued.access_token,
        token_type: "Bearer",
        expires_in: issued.expires_in,
        scopes: issued
            .scope
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        issued_token_type: issued.issued_token_type,
    })
    .into_response();
    no_store(&mut response);
    Ok(response)
}

/// Revokes an OAuth access token its holder presents: possessing a token is enough to
/// give it up. 204 whether or not it was a live token of this server (as RFC 7009), so the
/// answer tells nothing about other tokens; refused on every node within a second.
#[utoipa::path(post, operation_id = "revokeAccessToken", path = "/api/v1/auth/revoke", tag = "oauth",
    request_body = JsonRevokeRequest,
    responses((status = 204), (status = 400, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn json_revoke(
    State(state): State<AppState>,
    audit: AuditContext,
    Json(body): Json<JsonRevokeRequest>,
) -> ApiResult<StatusCode> {
    audit.set_action("oauth.revoke", "oauth-clients");
    let presented = SecretString::from(body.token);
    let Some(p) = credential::parse_presented(&presented)
        .filter(|p| p.kind == CredentialKind::OAuthAccessToken)
    else {
        return Ok(StatusCode::NO_CONTENT);
    };
    // The entry goes to the token's workspace: found as any credential is (a token that
    // is not live has nothing left to revoke).
    let workspace = match state.credentials.check(&presented).await {
        Ok(Ok(identity)) => identity.workspace.id.clone(),
        Ok(Err(_)) => return Ok(StatusCode::NO_CONTENT),
        Err(e) => return Err(e.0.into()),
    };
    let trail = audit.change_in(StatusCode::NO_CONTENT, &workspace);
    if let Some(token) = state
        .store
        .revoke_oauth_access_token(None, &p.digest.to_hex(), &trail)
        .await?
    {
        audit.mark_recorded();
        crate::edge::apply_invalidation(&state, &Invalidation::of_token(&token)).await;
        tracing::info!(token_id = %token.id, "oauth access token revoked by its holder");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// A value a client sent, quoted and cut short for an error message.
fn shown(value: &str) -> String {
    format!("`{}`", datastack_core::bounded::text(value, 100))
}
