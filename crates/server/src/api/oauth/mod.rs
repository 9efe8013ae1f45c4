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
//!
//! The module: `clients` (the client endpoints), `issuer` (client authentication, the
//! clients kept in memory, issuance in group commits), `token` (the token endpoint and its
//! JSON form), `endpoints` (revocation, introspection, metadata); what they share is here.

mod clients;
mod device;
mod endpoints;
mod issuer;
mod issuers;
mod refresh;
mod token;

pub use issuer::Issuer;
use issuer::{ClientEntry, authenticate_client};

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use secrecy::SecretString;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::audit::AuditContext;
use crate::state::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(
            clients::list_oauth_clients,
            clients::create_oauth_client
        ))
        .routes(routes!(
            clients::get_oauth_client,
            clients::update_oauth_client,
            clients::delete_oauth_client
        ))
        .routes(routes!(clients::rotate_oauth_client_secret))
        .routes(routes!(token::token))
        .routes(routes!(endpoints::revoke))
        .routes(routes!(endpoints::introspect))
        .routes(routes!(endpoints::metadata))
        .routes(routes!(token::json_token))
        .routes(routes!(token::json_revoke))
        .routes(routes!(device::device_authorization))
        .routes(routes!(device::decide))
        .routes(routes!(issuers::list_issuers, issuers::create_issuer))
        .routes(routes!(
            issuers::get_issuer,
            issuers::update_issuer,
            issuers::delete_issuer
        ))
        .route("/oauth2/device", axum::routing::get(device::device_page))
}

/// The largest form body the OAuth endpoints read.
const MAX_FORM_BYTES: usize = 16 * 1024;

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

/// The base of this server's URLs: `public_url` when it is set, else the address the
/// request was sent to (only a well-formed authority is echoed back).
fn public_base(state: &AppState, headers: &HeaderMap) -> String {
    match state.config.public_url.as_deref().map(str::trim) {
        Some(url) if !url.is_empty() => url.trim_end_matches('/').to_owned(),
        _ => {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.parse::<axum::http::uri::Authority>().ok())
                .map(|a| a.to_string())
                .unwrap_or_else(|| state.config.listen.to_string());
            format!("http://{host}")
        }
    }
}

/// A value a client sent, quoted and cut short for an error message.
fn shown(value: &str) -> String {
    format!("`{}`", datastack_core::bounded::text(value, 100))
}
