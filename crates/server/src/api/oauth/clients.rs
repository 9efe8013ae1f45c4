//! The OAuth client endpoints: create, list, get, update, rotate the secret, delete.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Duration, Utc};
use datastack_core::id::OAuthClientId;
use datastack_core::oauth::{self, ClientType, GrantType, OAuthClient};
use datastack_core::scope::ScopeSet;
use datastack_core::validate;
use datastack_store::{Invalidation, OAuthClientPatch};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::issuance;
use crate::api::{PageParams, page_of};
use crate::audit::AuditContext;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::pipeline::authorize::{Authorized, ManageOauthClients, ReadOauthClients};
use crate::pipeline::extract::{Json, OAuthClientPath, PathId, Query};
use crate::state::AppState;

use super::*;

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
    /// The grants it may use; default `["client_credentials"]`. One or more of
    /// `client_credentials` and `urn:ietf:params:oauth:grant-type:token-exchange`
    /// (confidential clients only), `urn:ietf:params:oauth:grant-type:device_code`, and
    /// `refresh_token` (its device-grant tokens then come with refresh tokens).
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
    /// Its public keys, a JWK set (`{"keys": [...]}`, at most 10 keys, 16 KiB): the client
    /// then authenticates with `private_key_jwt` (RFC 7523) and gets no secret.
    #[schema(value_type = Option<Object>)]
    pub jwks: Option<serde_json::Value>,
    /// Where it publishes its JWK set (https, or http to a loopback address): likewise.
    pub jwks_uri: Option<String>,
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
    /// A new JWK set for `private_key_jwt` (replaces `jwksUri`): how a client rotates its
    /// keys (publish the new key beside the old one, switch, then drop the old one).
    #[schema(value_type = Option<Object>)]
    pub jwks: Option<serde_json::Value>,
    /// A new JWK set URL (replaces `jwks`).
    pub jwks_uri: Option<String>,
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
    /// How it authenticates at the token endpoint: `client_secret_basic` (or
    /// `client_secret_post`), `private_key_jwt`, or `none` (a public client).
    pub token_endpoint_auth_method: &'static str,
    /// Its public keys for `private_key_jwt`.
    #[schema(value_type = Option<Object>)]
    pub jwks: Option<serde_json::Value>,
    /// Where it publishes them.
    pub jwks_uri: Option<String>,
}

impl From<OAuthClient> for OAuthClientResponse {
    fn from(c: OAuthClient) -> Self {
        let token_endpoint_auth_method = if c.client_type == ClientType::Public {
            "none"
        } else if c.uses_private_key_jwt() {
            "private_key_jwt"
        } else {
            "client_secret_basic"
        };
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
            token_endpoint_auth_method,
            jwks: c.jwks.as_deref().and_then(|j| serde_json::from_str(j).ok()),
            jwks_uri: c.jwks_uri,
        }
    }
}

/// The most bytes of a client's JWK set.
const MAX_JWKS_BYTES: usize = 16 * 1024;
/// The most keys in a client's JWK set.
const MAX_JWKS_KEYS: usize = 10;

/// A client's keys for `private_key_jwt`: `(jwks, jwks_uri)`, at most one of them.
fn client_keys(
    jwks: Option<serde_json::Value>,
    jwks_uri: Option<String>,
) -> ApiResult<(Option<String>, Option<String>)> {
    match (jwks, jwks_uri) {
        (Some(_), Some(_)) => Err(ApiError::InvalidRequest(
            "jwks and jwksUri: give one of them".into(),
        )),
        (Some(set), None) => {
            let text = set.to_string();
            if text.len() > MAX_JWKS_BYTES {
                return Err(ApiError::InvalidRequest(format!(
                    "jwks: at most {MAX_JWKS_BYTES} bytes"
                )));
            }
            match crate::federation::check_jwks(&text) {
                Ok(n) if (1..=MAX_JWKS_KEYS).contains(&n) => Ok((Some(text), None)),
                Ok(_) => Err(ApiError::InvalidRequest(format!(
                    "jwks: between 1 and {MAX_JWKS_KEYS} keys"
                ))),
                Err(why) => Err(ApiError::InvalidRequest(format!("jwks: {why}"))),
            }
        }
        (None, Some(uri)) => {
            if https_or_loopback(&uri) {
                Ok((None, Some(uri)))
            } else {
                Err(ApiError::InvalidRequest(format!(
                    "jwksUri: {} is not an https URL (or http to a loopback address)",
                    shown(&uri)
                )))
            }
        }
        (None, None) => Ok((None, None)),
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
/// Whether `uri` is an https URI, or http to a loopback address, without a fragment and
/// at most [`MAX_URI_LEN`] long.
pub(super) fn https_or_loopback(uri: &str) -> bool {
    let parsed: Option<axum::http::Uri> = uri.parse().ok();
    uri.len() <= MAX_URI_LEN
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
        })
}

fn redirect_uris(list: Option<Vec<String>>) -> ApiResult<Vec<String>> {
    let list = list.unwrap_or_default();
    if list.len() > MAX_LIST {
        return Err(ApiError::InvalidRequest(format!(
            "redirectUris: at most {MAX_LIST}"
        )));
    }
    for uri in &list {
        if !https_or_loopback(uri) {
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
                        "grantTypes: {} is not a grant this server issues tokens for (client_credentials, urn:ietf:params:oauth:grant-type:token-exchange, urn:ietf:params:oauth:grant-type:device_code, refresh_token)",
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
    let (jwks, jwks_uri) = client_keys(body.jwks, body.jwks_uri)?;
    let uses_keys = jwks.is_some() || jwks_uri.is_some();
    if uses_keys && client_type != ClientType::Confidential {
        return Err(ApiError::InvalidRequest(
            "jwks: a public client has no keys to prove itself with".into(),
        ));
    }
    let now = Utc::now();
    // A client with keys proves itself with signed assertions: it gets no secret.
    let secret =
        (client_type == ClientType::Confidential && !uses_keys).then(oauth::generate_client_secret);
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
        jwks,
        jwks_uri,
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
    let (jwks, jwks_uri) = client_keys(body.jwks, body.jwks_uri)?;
    let patch = OAuthClientPatch {
        jwks,
        jwks_uri,
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
