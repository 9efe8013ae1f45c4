//! The audit stage: every API call leaves an entry. Before the request runs it checks that
//! the audit queue has room (a full queue refuses the request instead of running it
//! unaudited) and opens the request's [`AuditContext`], which the authenticate and
//! authorize stages and the handler fill in. After the response it queues the entry,
//! unless the handler already wrote it in the transaction of its change; an answer whose
//! entry cannot be queued in time becomes a 503.

use axum::extract::{MatchedPath, Request};
use axum::http::header::USER_AGENT;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::audit::{self, AuditContext};
use crate::request_id::RequestId;
use crate::state::AppState;

/// The stage, run by the request-id stage around the rest of the pipeline (one
/// middleware layer fewer on every request).
pub async fn around(state: &AppState, mut req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    if !audit::audited(route) {
        return next.run(req).await;
    }
    if let Err(e) = state.audit.admit().await {
        return e.into_response();
    }
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map_or_else(String::new, |id| id.0.clone());
    // The client address behind trusted proxies, resolved once for every later stage.
    let client = crate::pipeline::authenticate::resolve_client_ip(state, &req);
    req.extensions_mut().insert(client);
    let ip = client.0;
    let method = req.method().clone();
    let ctx = AuditContext::new(
        request_id,
        method.clone(),
        req.extensions().get::<MatchedPath>().cloned(),
        req.uri().clone(),
        ip,
        req.headers().get(USER_AGENT).cloned(),
    );
    req.extensions_mut().insert(ctx.clone());
    let response = next.run(req).await;
    match state.audit.finish(&ctx, &method, response.status()).await {
        Ok(()) => response,
        Err(e) => e.into_response(),
    }
}
