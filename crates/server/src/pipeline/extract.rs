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

/// Replaces every quoted or backquoted value longer than a field name in a deserializer
/// message, so submitted strings are never echoed.
fn redact_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = rest.find('"') {
        out.push_str(&rest[..start]);
        match rest[start + 1..].find('"') {
            Some(len) => {
                out.push_str("\"…\"");
                rest = &rest[start + 1 + len + 1..];
            }
            None => {
                out.push_str("\"…");
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn quoted_values_are_redacted() {
        assert_eq!(
            super::redact_quoted(r#"label: invalid type: string "dapi123", expected u32"#),
            r#"label: invalid type: string "…", expected u32"#
        );
        assert_eq!(
            super::redact_quoted("unknown field `x`"),
            "unknown field `x`"
        );
        assert_eq!(super::redact_quoted(r#"a "b"#), r#"a "…"#);
    }
}
