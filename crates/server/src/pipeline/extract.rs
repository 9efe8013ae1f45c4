//! `Json`, `Query` and `Path` that answer malformed input with our error shape instead of
//! axum's plain-text rejections, and never echo submitted string values (which could be
//! secrets) back in the message.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::state::AppState;

/// A JSON body, or a 400/413 in the error shape.
pub struct Json<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Json(value)),
            Err(rejection) => Err(json_rejection(rejection, state.config.max_body_bytes)),
        }
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

fn json_rejection(rejection: JsonRejection, limit: usize) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::PayloadTooLarge(limit);
    }
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::InvalidRequest(
            "send the body as JSON with content-type: application/json".into(),
        ),
        JsonRejection::JsonSyntaxError(_) => {
            ApiError::InvalidRequest("the body is not valid JSON".into())
        }
        JsonRejection::JsonDataError(e) => ApiError::InvalidRequest(format!(
            "the body does not match the expected shape: {}",
            redact_quoted(
                &std::error::Error::source(&e)
                    .map(ToString::to_string)
                    .unwrap_or_else(|| e.body_text())
            )
        )),
        other => ApiError::InvalidRequest(format!(
            "the body could not be read: {}",
            redact_quoted(&other.body_text())
        )),
    }
}

/// Query-string parameters, or a 400 in the error shape.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => {
                Err(ApiError::InvalidRequest(format!(
                    "the query string is invalid: {}",
                    redact_quoted(&e.body_text())
                )))
            }
            Err(other) => Err(ApiError::InvalidRequest(redact_quoted(&other.body_text()))),
        }
    }
}

/// Path parameters, or a 400 in the error shape.
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => Err(ApiError::InvalidRequest(
                format!("the path is invalid: {}", redact_quoted(&e.body_text())),
            )),
            Err(other) => Err(ApiError::Internal(other.body_text())),
        }
    }
}

/// Replaces every quoted (`"…"`) or backquoted (`` `…` ``) value in a deserializer message
/// unless it is a short identifier (a field name such as `expiresInDays`), so submitted
/// strings, which could be secrets, are never echoed. Escaped quotes inside a value do not
/// end it.
fn redact_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut chars = message.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        if c != '"' && c != '`' {
            out.push(c);
            continue;
        }
        let mut value = String::new();
        let mut closed = false;
        while let Some((_, d)) = chars.next() {
            if d == '\\' {
                if let Some((_, escaped)) = chars.next() {
                    value.push('\\');
                    value.push(escaped);
                }
                continue;
            }
            if d == c {
                closed = true;
                break;
            }
            value.push(d);
        }
        let identifier = value.len() <= 40
            && !value.to_ascii_lowercase().starts_with("dapi")
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
        out.push(c);
        out.push_str(if identifier { &value } else { "…" });
        if closed {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redact_quoted;

    #[test]
    fn quoted_values_are_redacted() {
        assert_eq!(
            redact_quoted(r#"label: invalid type: string "dapi123", expected u32"#),
            r#"label: invalid type: string "…", expected u32"#
        );
        assert_eq!(
            redact_quoted(r#"invalid type: string "has a space", expected u32"#),
            r#"invalid type: string "…", expected u32"#
        );
        assert_eq!(
            redact_quoted("unknown field `lifetime`"),
            "unknown field `lifetime`"
        );
        assert_eq!(
            redact_quoted(&format!("unknown field `dapi{}`", "0".repeat(72))),
            "unknown field `…`"
        );
        assert_eq!(
            redact_quoted(r#"string "x\"TAIL", expected"#),
            r#"string "…", expected"#
        );
        assert_eq!(redact_quoted(r#"a "b c"#), r#"a "…"#);
    }
}

/// What an id in a path names: how it is spelt and parsed. One implementation per kind
/// of resource, so that every endpoint answers a malformed id the same way.
pub trait IdKind {
    /// The parsed id.
    type Id: Send;
    /// What the id names, for the message (`a token id (tok_…)`).
    const EXPECTED: &'static str;
    /// The id, if `raw` is one of this kind.
    fn parse(raw: &str) -> Option<Self::Id>;
}

/// The `{id}` segment of a path, parsed as a `K` before the handler runs (after the
/// credential and scope checks, which come first in every handler): a malformed id is a
/// 400 `INVALID_REQUEST` naming the expected form, for every resource alike; a well-formed
/// id that names nothing is the handler's 404.
pub struct PathId<K: IdKind>(pub K::Id);

impl<K: IdKind> FromRequestParts<AppState> for PathId<K> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state).await?;
        K::parse(&raw)
            .map(PathId)
            .ok_or_else(|| ApiError::InvalidRequest(format!("id: must be {}", K::EXPECTED)))
    }
}

/// Declares an [`IdKind`].
macro_rules! id_kind {
    ($(#[$doc:meta])* $name:ident, $id:ty, $expected:literal, $parse:expr) => {
        $(#[$doc])*
        pub enum $name {}

        impl IdKind for $name {
            type Id = $id;
            const EXPECTED: &'static str = $expected;
            fn parse(raw: &str) -> Option<$id> {
                let parse: fn(&str) -> Option<$id> = $parse;
                parse(raw)
            }
        }
    };
}

use datastack_core::id::{
    AbuseFlagId, IpListId, OAuthClientId, PrincipalId, RouteId, TokenId, TrustedIssuerId,
    WebhookId, WorkspaceId,
};

id_kind!(
    /// A personal access token (`tok_…`).
    TokenPath, TokenId, "a token id (tok_…); API keys are at /api/v1/auth/api-keys/{id}",
    |raw| TokenId::parse(raw).ok().filter(|id| id.as_str().starts_with(TokenId::PREFIX))
);
id_kind!(
    /// An OAuth client (`ocl_…`).
    OAuthClientPath, OAuthClientId, "an OAuth client id (ocl_…)",
    |raw| OAuthClientId::parse(raw).ok()
);
id_kind!(
    /// A trusted issuer (`oti_…`).
    IssuerPath, TrustedIssuerId, "a trusted issuer id (oti_…)",
    |raw| TrustedIssuerId::parse(raw).ok()
);
id_kind!(
    /// An API key (`key_…`).
    ApiKeyPath, TokenId, "an API key id (key_…)",
    |raw| TokenId::parse(raw).ok().filter(TokenId::is_api_key)
);
id_kind!(
    /// A user (`usr_…`).
    UserPath, PrincipalId, "a user id (usr_…)",
    |raw| PrincipalId::parse(raw).ok().filter(|id| id.as_str().starts_with("usr_"))
);
id_kind!(
    /// A service principal (`sp_…`).
    ServicePrincipalPath, PrincipalId, "a service principal id (sp_…)",
    |raw| PrincipalId::parse(raw).ok().filter(|id| id.as_str().starts_with("sp_"))
);
id_kind!(
    /// A workspace (`ws_…`).
    WorkspacePath, WorkspaceId, "a workspace id (ws_…)",
    |raw| WorkspaceId::parse(raw).ok()
);
id_kind!(
    /// A gateway route (`rt_…`).
    RoutePath, RouteId, "a route id (rt_…)",
    |raw| RouteId::parse(raw).ok()
);
id_kind!(
    /// An IP access list (`ipl_…`).
    IpListPath, IpListId, "an IP access list id (ipl_…)",
    |raw| IpListId::parse(raw).ok()
);
id_kind!(
    /// An abuse flag (`abf_…`).
    AbuseFlagPath, AbuseFlagId, "an abuse flag id (abf_…)",
    |raw| AbuseFlagId::parse(raw).ok()
);
id_kind!(
    /// A webhook (`wh_…`).
    WebhookPath, WebhookId, "a webhook id (wh_…)",
    |raw| WebhookId::parse(raw).ok()
);
