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
use crate::request_id::{RequestId, of, scoped};
use crate::state::AppState;

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
    let mut response = scoped(
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
