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
