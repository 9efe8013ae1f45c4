//! Revocation (RFC 7009), introspection (RFC 7662) and metadata (RFC 8414).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use datastack_core::credential::{self, CredentialKind};
use datastack_core::oauth::{self, GrantType};
use datastack_core::scope::Scope;
use datastack_store::Invalidation;
use secrecy::ExposeSecret;
use serde::Serialize;
use utoipa::ToSchema;

use crate::audit::AuditContext;
use crate::state::AppState;

use super::*;

/// The form of a revocation request (RFC 7009 §2.1).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct RevokeForm {
    /// The access token or refresh token to revoke (a refresh token takes the access
    /// tokens issued from its grant with it).
    token: String,
    /// `access_token` or `refresh_token` (not needed: the token's form tells).
    token_type_hint: Option<String>,
    /// `client_secret_post`: the client id.
    client_id: Option<String>,
    /// `client_secret_post`: the client secret.
    client_secret: Option<String>,
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
        // A refresh token: its whole family goes, with the access tokens issued from it.
        if let Some(digest) = oauth::parse_refresh_token(presented.expose_secret()) {
            super::refresh::revoke_family(&state, &audit, client, &digest.to_hex()).await?;
            return Ok(None);
        }
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
        if let Some(digest) = oauth::parse_refresh_token(secret.expose_secret()) {
            return refresh_introspection(&state, client, &digest.to_hex()).await;
        }
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
        // A public client proves nothing but its id: it learns only about its own tokens.
        let foreign_to_public = client.client_type == datastack_core::oauth::ClientType::Public
            && identity.token.label != client.id.as_str();
        // A trusted issuer's token is that issuer's to describe.
        let external = identity.token.id.as_str().starts_with("xjt_");
        if !identity.in_subtree_of(client.workspace_id.as_str()) || foreign_to_public || external {
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

/// A refresh token described to the client it was issued to: active until it is used,
/// revoked or expired.
async fn refresh_introspection(
    state: &AppState,
    client: &datastack_core::oauth::OAuthClient,
    digest_hex: &str,
) -> Result<Introspection, OAuthError> {
    let Some(r) = state.store.get_refresh_token(digest_hex).await? else {
        return Ok(Introspection::inactive());
    };
    let live = r.client_id == client.id
        && r.used_at.is_none()
        && r.revoked_at.is_none()
        && r.expires_at > chrono::Utc::now();
    if !live {
        return Ok(Introspection::inactive());
    }
    Ok(Introspection {
        active: true,
        scope: Some(r.scopes.to_strings().join(" ")),
        client_id: Some(r.client_id.to_string()),
        token_type: None,
        exp: Some(r.expires_at.timestamp()),
        iat: Some(r.created_at.timestamp()),
        sub: Some(r.subject_id.to_string()),
        aud: Some(r.audience),
        iss: Some(state.edge.signer.issuer.clone()),
        jti: Some(r.id),
    })
}

/// Authorization server metadata (RFC 8414).
#[derive(Serialize, ToSchema)]
pub struct ServerMetadata {
    /// The `iss` of every token.
    pub issuer: String,
    /// `/oauth2/token`.
    pub token_endpoint: String,
    /// `/oauth2/device_authorization` (RFC 8628).
    pub device_authorization_endpoint: String,
    /// `/oauth2/revoke`.
    pub revocation_endpoint: String,
    /// `/oauth2/introspect`.
    pub introspection_endpoint: String,
    /// `/.well-known/jwks.json`.
    pub jwks_uri: String,
    /// The grants this server issues tokens for.
    pub grant_types_supported: Vec<&'static str>,
    /// `client_secret_basic`, `client_secret_post`, `private_key_jwt`, `none` (public
    /// clients).
    pub token_endpoint_auth_methods_supported: Vec<&'static str>,
    /// The algorithms a `private_key_jwt` assertion may be signed with.
    pub token_endpoint_auth_signing_alg_values_supported: Vec<&'static str>,
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
    let base = public_base(&state, &headers);
    let body = ServerMetadata {
        issuer: state.edge.signer.issuer.clone(),
        token_endpoint: format!("{base}/oauth2/token"),
        device_authorization_endpoint: format!("{base}/oauth2/device_authorization"),
        revocation_endpoint: format!("{base}/oauth2/revoke"),
        introspection_endpoint: format!("{base}/oauth2/introspect"),
        jwks_uri: format!("{base}/.well-known/jwks.json"),
        grant_types_supported: GrantType::ALL.iter().map(|g| g.as_str()).collect(),
        // `none`: a public client, which names itself and proves nothing (the device
        // grant and refresh tokens).
        token_endpoint_auth_methods_supported: vec![
            "client_secret_basic",
            "client_secret_post",
            "private_key_jwt",
            "none",
        ],
        token_endpoint_auth_signing_alg_values_supported:
            datastack_core::oauth::FEDERATION_ALGORITHMS.to_vec(),
        // A public client revokes and introspects only its own tokens.
        revocation_endpoint_auth_methods_supported: vec![
            "client_secret_basic",
            "client_secret_post",
            "private_key_jwt",
            "none",
        ],
        introspection_endpoint_auth_methods_supported: vec![
            "client_secret_basic",
            "client_secret_post",
            "private_key_jwt",
            "none",
        ],
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
