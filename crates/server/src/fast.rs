//! The fast path for forward-auth decisions (`/auth/verify`).
//!
//! A reverse proxy asks for a decision before every request it passes, so the decision is
//! the hottest path of a deployment. When everything it needs is in memory, the serving
//! loop answers it here without the router and its middleware stack (request-id span,
//! audit, authenticate, IP lists and rate-limit stages as separate layers): the same
//! checks run in the same order through the same functions, only without the layers.
//!
//! The fast path answers only when the request is one it can decide from memory:
//! - a bearer credential this node has cached and that is still valid (a new, refused,
//!   malformed or missing credential goes to the full pipeline, which looks it up,
//!   charges the address's bucket and records the refusal);
//! - an address the credential's workspace lists (and an API key's ranges) admit;
//! - batched audit durability with room in the audit queue (a full queue makes the full
//!   pipeline wait for room or refuse, as it does for every request);
//! - debug logging off (the full pipeline writes the per-request access line).
//!
//! Otherwise the request is handed to the router untouched, except that a refusal by
//! the rate limiter travels with it ([`crate::edge::Prechecked`]) so that its buckets
//! are not charged twice. From the rate limiter on, the fast path answers whatever the
//! outcome (a refused scope, no route, a spend limit) with [`decision`], the handler's
//! own code, and the same audit context, so the response, the audit entry and the
//! metrics are those of the full pipeline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::http::header::{AUTHORIZATION, USER_AGENT};
use axum::http::{Extensions, HeaderValue, Method, Request, Response, StatusCode};
use axum::response::IntoResponse;
use futures_util::FutureExt;
use hyper::body::Incoming;

use crate::api::gateway::decision;
use crate::audit::{AuditContext, DecisionKey, Pins};
use crate::edge::{Prechecked, client_ip, credential_buckets, rate_limit_headers};
use crate::error::ApiError;
use crate::metrics::Route;
use crate::pipeline::authenticate::{Authentication, ClientIp, bearer};
use crate::pipeline::request_id;
use crate::state::AppState;

/// What the fast path did with a request.
pub(crate) enum Outcome {
    /// It answered.
    Answered(Response<Body>),
    /// It cannot answer from memory: the router serves the request.
    Declined(Request<Incoming>),
}

/// The route label of a forward-auth request, as the router would match it.
pub(crate) fn forward_auth_route(path: &str) -> Option<&'static str> {
    if path == "/auth/verify" {
        Some("/auth/verify")
    } else if path.len() > "/auth/verify/".len() && path.starts_with("/auth/verify/") {
        Some("/auth/verify/{*path}")
    } else {
        None
    }
}

/// Serves a forward-auth request from memory, or declines it.
pub(crate) async fn forward_auth(
    state: &AppState,
    req: Request<Incoming>,
    peer: SocketAddr,
    route: &'static str,
) -> Outcome {
    if !state.audit.fast_path_open() || tracing::enabled!(tracing::Level::DEBUG) {
        return Outcome::Declined(req);
    }
    let started = Instant::now();
    let id = request_id::of(req.headers());
    let method = req.method().clone();
    let served = std::panic::AssertUnwindSafe(answer(state, req, peer, &id)).catch_unwind();
    let outcome = request_id::scoped(id.clone(), async move {
        match served.await {
            Ok(outcome) => outcome,
            Err(_) => {
                Outcome::Answered(ApiError::Internal("a handler panicked".into()).into_response())
            }
        }
    })
    .await;
    let Outcome::Answered(mut response) = outcome else {
        return outcome;
    };
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    state
        .metrics
        .observe_request(&method, Route::fixed(route), status, elapsed.as_secs_f64());
    if status >= 500 {
        let latency_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        tracing::warn!(request_id = %id, route, status, latency_us, "request failed");
    }
    Outcome::Answered(response)
}

async fn answer(
    state: &AppState,
    mut req: Request<Incoming>,
    peer: SocketAddr,
    request_id: &str,
) -> Outcome {
    let config = &state.config;
    let Some(secret) = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| bearer(v.as_bytes()))
    else {
        return Outcome::Declined(req);
    };
    let Some(found) = state.credentials.cached(&secret) else {
        return Outcome::Declined(req);
    };
    let identity = found.identity().clone();
    let ip = client_ip::resolve(
        Some(peer.ip()),
        req.headers(),
        &config.trusted_proxies,
        config.client_ip_header,
    );
    // The IP access list stage: an API key's own ranges, then the workspace's lists.
    if identity.api_key.as_ref().is_some_and(|k| !k.admits(ip)) {
        return Outcome::Declined(req);
    }
    if !identity.workspace.settings.ip_access_lists_suspended
        && !matches!(
            state.edge.ip_rules.check(&identity.workspace.id, ip).await,
            Ok(Ok(()))
        )
    {
        return Outcome::Declined(req);
    }
    // The rate-limit stage.
    let verdict = state
        .edge
        .limiter
        .check(&credential_buckets(config, &identity))
        .await;
    if !verdict.allowed() {
        req.extensions_mut().insert(Prechecked(verdict));
        return Outcome::Declined(req);
    }
    // From here on the fast path answers, whatever the decision.
    found.note(&state.credentials, ip);
    if verdict.applies() {
        state.metrics.ratelimit_decision(verdict.policy, "allowed");
    }
    let audit = AuditContext::new(
        request_id.to_owned(),
        req.method().clone(),
        None,
        req.uri().clone(),
        ip,
        req.headers().get(USER_AGENT).cloned(),
    );
    audit.set_identity(&identity);
    let mut extensions = Extensions::new();
    extensions.insert(audit.clone());
    extensions.insert(ClientIp(ip));
    extensions.insert(Authentication::Verified(identity.clone()));
    let (mut response, decided) = decision(
        state,
        &extensions,
        req.method().as_str(),
        req.uri().path(),
        req.headers(),
        request_id,
    )
    .await;
    if verdict.applies() {
        rate_limit_headers(response.headers_mut(), &verdict);
    }
    let status = response.status();
    let audited = match decided.and_then(|d| {
        let method = Method::from_bytes(d.method.as_bytes()).ok()?;
        (status == StatusCode::OK).then_some((d, method))
    }) {
        // An allowed decision: counted into its group of the second, as the full
        // pipeline does, but without building an entry once the group exists.
        Some((decided, method)) => {
            if !state.audit.records_allowed(&method) {
                Ok(())
            } else {
                let key = DecisionKey {
                    identity: Arc::as_ptr(&identity) as usize,
                    route: Arc::as_ptr(&decided.route) as usize,
                    method,
                    scope: decided.scope,
                    source: ip,
                };
                if state.audit.fold_decision(&key, request_id) {
                    Ok(())
                } else {
                    state
                        .audit
                        .finish_decision(&audit, status, key, Pins(identity, decided.route))
                        .await
                }
            }
        }
        None => state.audit.finish(&audit, req.method(), status).await,
    };
    if let Err(e) = audited {
        response = e.into_response();
    }
    Outcome::Answered(response)
}
