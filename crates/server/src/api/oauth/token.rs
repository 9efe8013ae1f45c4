//! The token endpoint (`/oauth2/token`) and its JSON form (`/api/v1/auth/token`), with the
//! holder's revocation (`/api/v1/auth/revoke`).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{Duration, Utc};
use datastack_core::credential::{self, CredentialKind};
use datastack_core::id::TokenId;
use datastack_core::model::Token;
use datastack_core::oauth::GrantType;
use datastack_core::scope::{Scope, ScopeSet};
use datastack_store::Invalidation;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::audit::AuditContext;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::pipeline::extract::Json;
use crate::state::AppState;

use super::*;

/// The form of a token request (RFC 6749 §4.4.2). The client authenticates with HTTP
/// Basic, or with `client_id` and `client_secret` here.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct TokenForm {
    /// `client_credentials`, `urn:ietf:params:oauth:grant-type:token-exchange`,
    /// `refresh_token` or `urn:ietf:params:oauth:grant-type:device_code`.
    grant_type: String,
    /// Refresh: the refresh token (it works once; the answer carries its successor).
    refresh_token: Option<String>,
    /// Device grant: the device code from `/oauth2/device_authorization`.
    device_code: Option<String>,
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
    /// A refresh token (device grant and refresh grant, when the client may refresh):
    /// exchange it at this endpoint for a new access token and a new refresh token. Each
    /// works once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
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
/// Basic (`client_secret_basic`) or in the body (`client_secret_post`); a public client
/// sends only `client_id`. Grants: `client_credentials`, token exchange (RFC 8693),
/// `refresh_token` (rotated at each use) and the device grant (RFC 8628).
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
        GrantType::RefreshToken => {
            return super::refresh::refresh(state, audit, form, &entry).await;
        }
        GrantType::DeviceCode => return super::device::redeem(state, audit, form, &entry).await,
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
    let scopes = asked_scopes(form, &bound)?;
    let audience = asked_audience(form, client)?;
    let now = Utc::now();
    // An exchanged token never outlives the token it came from.
    let expires_at = subject_expires.map_or(
        now + Duration::seconds(client.access_token_ttl_seconds),
        |e| e.min(now + Duration::seconds(client.access_token_ttl_seconds)),
    );
    let (jwt, token) = mint(
        state,
        client,
        Minted {
            subject: &subject,
            workspace: &subject_workspace,
            scopes,
            audience: &audience,
            now,
            expires_at,
            acting_client: grant == GrantType::TokenExchange,
        },
    )?;
    audit.set_detail(serde_json::json!({
        "grantType": grant.as_str(),
        "clientId": client.id,
        "tokenId": token.id,
        "subject": subject,
        "scopes": token.scopes,
        "audience": audience,
        "expiresAt": expires_at,
    }));
    let trail = audit.change_in(StatusCode::OK, &client.workspace_id);
    let scope_text = token.scopes.to_strings().join(" ");
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
        expires_in: (expires_at - now).num_seconds().max(0),
        scope: scope_text,
        refresh_token: None,
        issued_token_type: (grant == GrantType::TokenExchange).then_some(ACCESS_TOKEN_TYPE),
    })
}

/// The scopes a request asks for (`scope`, space-separated), each within `bound`; all of
/// `bound` when it names none.
pub(super) fn asked_scopes(form: &Form, bound: &ScopeSet) -> Result<ScopeSet, OAuthError> {
    let Some(asked) = form.get("scope") else {
        return Ok(bound.clone());
    };
    let list: Vec<&str> = asked.split(' ').filter(|s| !s.is_empty()).collect();
    let parsed =
        ScopeSet::parse(&list).map_err(|e| OAuthError::new("invalid_scope", e.to_string()))?;
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
    Ok(parsed)
}

/// The audience a request asks for: one of the client's; its first when it names none.
pub(super) fn asked_audience(
    form: &Form,
    client: &datastack_core::oauth::OAuthClient,
) -> Result<String, OAuthError> {
    match form.get("audience") {
        None => Ok(client.audiences.first().cloned().unwrap_or_default()),
        Some(a) if client.audiences.iter().any(|x| x == a) => Ok(a.to_owned()),
        Some(_) => Err(OAuthError::new(
            "invalid_target",
            "the audience is not one this client may get tokens for",
        )),
    }
}

/// What an access token is issued for.
pub(super) struct Minted<'a> {
    pub subject: &'a datastack_core::id::PrincipalId,
    pub workspace: &'a datastack_core::id::WorkspaceId,
    pub scopes: ScopeSet,
    pub audience: &'a str,
    pub now: chrono::DateTime<Utc>,
    pub expires_at: chrono::DateTime<Utc>,
    /// Whether the client acts on the subject's behalf (the `act` claim).
    pub acting_client: bool,
}

/// Signs an access token for `client` and builds its row (not stored yet).
pub(super) fn mint(
    state: &AppState,
    client: &datastack_core::oauth::OAuthClient,
    m: Minted<'_>,
) -> Result<(String, Token), OAuthError> {
    let id = TokenId::generate_oauth_access();
    let scope_text = m.scopes.to_strings().join(" ");
    let signer = &state.edge.signer;
    let claims = AccessClaims {
        iss: &signer.issuer,
        sub: m.subject.as_str(),
        aud: m.audience,
        exp: m.expires_at.timestamp(),
        iat: m.now.timestamp(),
        jti: id.as_str(),
        client_id: client.id.as_str(),
        scope: &scope_text,
        ws: m.workspace.as_str(),
        act: m.acting_client.then(|| Actor {
            sub: client.id.as_str(),
        }),
    };
    // The rotating access-token keys sign it; with rotation off, the assertion key.
    let jwt = state
        .oauth_keys
        .sign(&claims)
        .unwrap_or_else(|| signer.sign_access_token(&claims))
        .map_err(|e| OAuthError::new("server_error", format!("cannot sign the token: {e}")))?;
    let presented = credential::parse_presented(&SecretString::from(jwt.clone()))
        .filter(|p| p.kind == CredentialKind::OAuthAccessToken)
        .ok_or_else(|| OAuthError::new("server_error", "the signed token is not well-formed"))?;
    let token = Token {
        id,
        kind: CredentialKind::OAuthAccessToken,
        owner_id: m.subject.clone(),
        workspace_id: m.workspace.clone(),
        label: client.id.to_string(),
        digest_hex: presented.digest.to_hex(),
        last_four: jwt[jwt.len() - 4..].to_owned(),
        scopes: m.scopes,
        created_at: m.now,
        expires_at: Some(m.expires_at),
        revoked_at: None,
        last_used_at: None,
        last_used_ip: None,
    };
    Ok((jwt, token))
}

// ---------------------------------------------------------------------------------------
// The JSON forms of the token and revocation endpoints, for API clients that speak JSON.

/// A token request as JSON: the parameters of `/oauth2/token`, camelCase, with the client
/// authenticating in the body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JsonTokenRequest {
    /// `client_credentials`, `urn:ietf:params:oauth:grant-type:token-exchange`,
    /// `refresh_token` or `urn:ietf:params:oauth:grant-type:device_code`.
    pub grant_type: String,
    /// The client id, `ocl_…`.
    pub client_id: String,
    /// The client secret, `dcsk…` (none for a public client).
    pub client_secret: Option<String>,
    /// Scopes to ask for (default: all the grant may give).
    pub scopes: Option<Vec<String>>,
    /// One of the client's audiences.
    pub audience: Option<String>,
    /// Token exchange: the subject's token.
    pub subject_token: Option<String>,
    /// Token exchange: `urn:ietf:params:oauth:token-type:access_token`.
    pub subject_token_type: Option<String>,
    /// Refresh: the refresh token.
    pub refresh_token: Option<String>,
    /// Device grant: the device code.
    pub device_code: Option<String>,
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
    /// The refresh token to use next (device and refresh grants, when the client may
    /// refresh); each works once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
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
    let mut pairs = vec![
        ("grant_type".to_owned(), body.grant_type),
        ("client_id".to_owned(), body.client_id),
    ];
    let optional = [
        ("client_secret", body.client_secret),
        ("refresh_token", body.refresh_token),
        ("device_code", body.device_code),
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
        refresh_token: issued.refresh_token,
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
