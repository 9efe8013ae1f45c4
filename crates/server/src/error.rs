//! The one error type of the HTTP layer and its mapping to the public error shape:
//! `{"error": {"code", "message", "requestId", "requiredScope"?}}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use datastack_core::scope::Scope;
use serde::Serialize;
use utoipa::ToSchema;

use crate::request_id;

/// Everything a handler or a pipeline stage can answer with instead of success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the input is malformed; the message names the field.
    #[error("{0}")]
    InvalidRequest(String),
    /// 401: no credential, or a malformed `Authorization` header.
    #[error("authentication is required: send Authorization: Bearer <token>")]
    Unauthenticated,
    /// 401: an unknown, expired or revoked credential, or a suspended owner.
    #[error("the credential is invalid, expired or revoked")]
    InvalidToken,
    /// 403: the scope or role does not allow the operation.
    #[error("{message}")]
    InsufficientScope {
        /// The scope the operation requires.
        required: Scope,
        /// Why the call was refused.
        message: String,
    },
    /// 403: refused for a reason other than scope.
    #[error("{0}")]
    Forbidden(String),
    /// 403: the client address is refused by an IP access list.
    #[error("{0}")]
    IpNotAllowed(String),
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 405.
    #[error("this method is not allowed on this path")]
    MethodNotAllowed,
    /// 409: the change conflicts with existing data.
    #[error("{0}")]
    Conflict(String),
    /// 413: the body is over the configured limit.
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// 429: over a rate limit (or under an abuse penalty); the rate-limit stage adds
    /// `Retry-After` and the `RateLimit` headers.
    #[error("{0}")]
    RateLimited(String),
    /// 402: the API key's spend limit for the period is reached; `resets_at` is the
    /// period's end (`None` for a `total` limit).
    #[error("{message}")]
    SpendLimitExceeded {
        /// Why.
        message: String,
        /// When the period ends.
        resets_at: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// 502/503/504: the upstream of a gateway route failed, was unreachable or too slow.
    #[error("{1}")]
    Upstream(StatusCode, String),
    /// 503: the server cannot answer now (the store is unreachable).
    #[error("the service is unavailable; retry later")]
    Unavailable,
    /// 503: the request did not complete within `request_timeout_ms` (a slow store, a
    /// held lock); whether a change it made took effect is not known, so read before
    /// retrying it.
    #[error("the request did not complete within {} ms; retry later", .0.as_millis())]
    TimedOut(std::time::Duration),
    /// 500: a fault of the server. The detail goes to the log, never to the client.
    #[error("internal error")]
    Internal(String),
}

/// The error body of every non-2xx answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorDetail {
    /// A stable code: `INVALID_REQUEST`, `UNAUTHORIZED`, `FORBIDDEN`, `IP_NOT_ALLOWED`,
    /// `NOT_FOUND`, `METHOD_NOT_ALLOWED`, `CONFLICT`, `PAYLOAD_TOO_LARGE`, `RATE_LIMITED`,
    /// `SPEND_LIMIT_EXCEEDED`, `INTERNAL`, `UNAVAILABLE`, `UPSTREAM_UNAVAILABLE`.
    pub code: &'static str,
    /// A sentence for people; it never contains a secret.
    pub message: String,
    /// The request's id, also in the `x-request-id` header.
    pub request_id: String,
    /// For a scope refusal, the scope the operation requires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub required_scope: Option<String>,
    /// For `SPEND_LIMIT_EXCEEDED`, when the key's spend period ends (absent for a
    /// `total` limit, which never resets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resets_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::InvalidRequest(_) => (StatusCode::BAD_REQUEST, "INVALID_REQUEST"),
            ApiError::Unauthenticated | ApiError::InvalidToken => {
                (StatusCode::UNAUTHORIZED, "UNAUTHORIZED")
            }
            ApiError::InsufficientScope { .. } | ApiError::Forbidden(_) => {
                (StatusCode::FORBIDDEN, "FORBIDDEN")
            }
            ApiError::IpNotAllowed(_) => (StatusCode::FORBIDDEN, "IP_NOT_ALLOWED"),
            ApiError::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED"),
            ApiError::SpendLimitExceeded { .. } => {
                (StatusCode::PAYMENT_REQUIRED, "SPEND_LIMIT_EXCEEDED")
            }
            ApiError::Upstream(status, _) => (*status, "UPSTREAM_UNAVAILABLE"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "CONFLICT"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE"),
            ApiError::Unavailable | ApiError::TimedOut(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE")
            }
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL"),
        }
    }

    /// A 404 naming what was not found.
    pub fn not_found(what: &str) -> Self {
        ApiError::NotFound(format!("{what} not found"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let request_id = request_id::current();
        let message = match &self {
            ApiError::Internal(detail) => {
                tracing::error!(request_id = %request_id, detail = %detail, "internal error");
                "an internal error occurred; quote the request id when reporting it".to_owned()
            }
            other => other.to_string(),
        };
        let required_scope = match &self {
            ApiError::InsufficientScope { required, .. } => Some(required.to_string()),
            _ => None,
        };
        let resets_at = match &self {
            ApiError::SpendLimitExceeded { resets_at, .. } => *resets_at,
            _ => None,
        };
        let www_authenticate = match &self {
            ApiError::Unauthenticated => Some(r#"Bearer realm="datastack""#.to_owned()),
            ApiError::InvalidToken => Some(
                r#"Bearer realm="datastack", error="invalid_token", error_description="the credential is invalid, expired or revoked""#
                    .to_owned(),
            ),
            ApiError::InsufficientScope { required, .. } => Some(format!(
                r#"Bearer realm="datastack", error="insufficient_scope", scope="{required}""#
            )),
            _ => None,
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code,
                message,
                request_id,
                required_scope,
                resets_at,
            },
        };
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(at) = resets_at {
            let seconds = (at - chrono::Utc::now()).num_seconds().max(1);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Some(value) = www_authenticate.and_then(|v| HeaderValue::from_str(&v).ok()) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }
}

impl From<datastack_core::Error> for ApiError {
    fn from(e: datastack_core::Error) -> Self {
        ApiError::InvalidRequest(e.to_string())
    }
}

impl From<datastack_store::Error> for ApiError {
    fn from(e: datastack_store::Error) -> Self {
        use datastack_store::Error as E;
        match e {
            E::NotFound => ApiError::NotFound("not found".into()),
            E::Conflict(m) => ApiError::Conflict(m),
            E::CallerRevoked => ApiError::InvalidToken,
            E::Unavailable(cause) => {
                tracing::warn!(error = %cause, "the store is unavailable");
                ApiError::Unavailable
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// The result type of handlers.
pub type ApiResult<T> = Result<T, ApiError>;
