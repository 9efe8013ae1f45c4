//! The first stage: gives the request its id, opens its span, runs the audit stage around
//! the rest of the pipeline, and on the way out stamps `x-request-id`, logs one access line
//! and records metrics.
//!
//! The id is kept in a task-local so that every error response built further down — by a
//! handler, an extractor or the panic guard — carries the same `requestId`.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use crate::metrics::Route;
use crate::state::AppState;

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The request id of the request being served, or `unknown` outside one.
pub fn current() -> String {
    REQUEST_ID
        .try_with(Clone::clone)
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Runs `f` as the request `id`: error responses built inside carry it (the fast path's
/// counterpart of this stage).
pub(crate) async fn scoped<F: std::future::Future>(id: String, f: F) -> F::Output {
    REQUEST_ID.scope(id, f).await
}

/// The id of a request: its own `x-request-id` when well formed, else a new one.
pub(crate) fn of(headers: &axum::http::HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| well_formed(v))
        .map_or_else(|| uuid::Uuid::now_v7().simple().to_string(), str::to_owned)
}

/// The request's id, also available to handlers as an extension.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Whether an incoming id is kept: 1–128 characters of `A-Z a-z 0-9 - _ . :`, without a
/// run of 64 or more hex digits. The id goes into logs, audit entries and events, so it
/// must not be able to carry a credential (whose random part is 72 hex digits).
pub(crate) fn well_formed(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        && id
            .split(|c: char| !c.is_ascii_hexdigit())
            .all(|run| run.len() < 64)
}

/// The middleware.
pub async fn request_id(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let id = of(req.headers());
    req.extensions_mut().insert(RequestId(id.clone()));
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(Route::unmatched, |p| Route::new(p.as_str()));
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %method,
        route = %route.as_str(),
        principal = tracing::field::Empty,
        decision = tracing::field::Empty,
    );
    let started = Instant::now();
    let mut response = REQUEST_ID
        .scope(
            id.clone(),
            super::audit::around(&state, req, next).instrument(span.clone()),
        )
        .await;
    let elapsed = started.elapsed();
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    let status = response.status().as_u16();
    state
        .metrics
        .observe_request(&method, route, status, elapsed.as_secs_f64());
    // The raw path is never logged, only the route template in the span: a path can carry
    // a secret someone pasted by mistake (`DELETE /api/v1/auth/tokens/dapi…`).
    // One access line per request at debug (the audit log is the durable record of
    // calls); server faults at warn so they are seen at the default level.
    let latency_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    span.in_scope(|| {
        if status >= 500 {
            tracing::warn!(status, latency_us, "request failed");
        } else {
            tracing::debug!(status, latency_us, "request finished");
        }
    });
    response
}

#[cfg(test)]
mod tests {
    #[test]
    fn well_formed_ids() {
        assert!(super::well_formed("abc-123_x.y:z"));
        assert!(!super::well_formed(""));
        assert!(!super::well_formed("a b"));
        assert!(!super::well_formed("a\nb"));
        assert!(!super::well_formed(&"a".repeat(129)));
        assert!(!super::well_formed(&format!("dapi{}", "0".repeat(72))));
        assert!(super::well_formed(&"0".repeat(32)));
    }
}
