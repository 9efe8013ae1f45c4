//! The one error type of the SDK.

use serde::Deserialize;

/// The result type of every SDK call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything a call through [`Client`](crate::Client) can fail with.
///
/// No variant ever carries a credential: the token is neither part of an error message nor
/// of a URL.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with an error status and (usually) the documented error body
    /// `{"error": {"code", "message", "requestId", "requiredScope"}}`.
    #[error("{code} {message} (status {status}{})", request_suffix(.request_id.as_deref()))]
    Api {
        /// The HTTP status code, e.g. 403.
        status: u16,
        /// The machine-readable error code, e.g. `FORBIDDEN`.
        code: String,
        /// The human-readable message.
        message: String,
        /// The request id the server logged the call under, from the body or the
        /// `x-request-id` header.
        request_id: Option<String>,
        /// For a 403 caused by a missing scope, the scope the call needs.
        required_scope: Option<String>,
    },
    /// The request could not be sent or the response could not be read.
    #[error("transport error: {0}")]
    Transport(#[from] reqwest::Error),
    /// The client is misconfigured (bad host URL, missing or malformed token).
    #[error("configuration error: {0}")]
    Config(String),
    /// A request body could not be encoded, or a response body did not have the expected
    /// shape.
    #[error("cannot decode the response: {0}")]
    Decode(String),
}

impl Error {
    /// The HTTP status of an [`Error::Api`], `None` for the other kinds.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Builds an [`Error::Api`] from a status, the raw body and the `x-request-id` header.
    ///
    /// A body that is not the documented error shape (a proxy's HTML page, say) still yields
    /// an error: its code is derived from the status and its message is the status' reason,
    /// never the body itself, which may be large or unrelated.
    pub(crate) fn from_response(
        status: u16,
        body: &[u8],
        header_request_id: Option<String>,
    ) -> Self {
        #[derive(Deserialize)]
        struct Envelope {
            error: Body,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Body {
            code: String,
            #[serde(default)]
            message: String,
            #[serde(default)]
            request_id: Option<String>,
            #[serde(default)]
            required_scope: Option<String>,
        }

        match serde_json::from_slice::<Envelope>(body) {
            Ok(Envelope { error }) => Self::Api {
                status,
                code: error.code,
                message: error.message,
                request_id: error.request_id.or(header_request_id),
                required_scope: error.required_scope,
            },
            Err(_) => Self::Api {
                status,
                code: code_for_status(status).to_owned(),
                message: reqwest::StatusCode::from_u16(status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("unexpected response")
                    .to_owned(),
                request_id: header_request_id,
                required_scope: None,
            },
        }
    }
}

/// The documented error code for a status, used when the body does not name one.
fn code_for_status(status: u16) -> &'static str {
    match status {
        400 => "INVALID_REQUEST",
        401 => "UNAUTHORIZED",
        402 => "SPEND_LIMIT_EXCEEDED",
        403 => "FORBIDDEN",
        404 => "NOT_FOUND",
        409 => "CONFLICT",
        413 => "PAYLOAD_TOO_LARGE",
        429 => "RATE_LIMITED",
        502..=504 => "UPSTREAM_UNAVAILABLE",
        500..=599 => "INTERNAL",
        _ => "UNEXPECTED_STATUS",
    }
}

fn request_suffix(request_id: Option<&str>) -> String {
    request_id
        .map(|id| format!(", request {id}"))
        .unwrap_or_default()
}
