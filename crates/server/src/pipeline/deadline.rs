//! The deadline of API handlers: a request whose handler has not answered within
//! `request_timeout_ms` is answered 503 `UNAVAILABLE`, and the handler is dropped (its
//! open transaction, if any, rolls back). Only the time to the response's head counts: a
//! streamed body is not cut.

use std::time::Duration;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// Runs the rest of the chain with a deadline.
pub async fn deadline(timeout: Duration, req: Request, next: Next) -> Response {
    match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            // The request's span names the route and the request id.
            tracing::warn!(
                timeout_ms = timeout.as_millis() as u64,
                "a request exceeded the request timeout"
            );
            ApiError::TimedOut(timeout).into_response()
        }
    }
}
