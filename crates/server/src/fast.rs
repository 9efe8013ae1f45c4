//! The fast path: every request that needs a credential, when the credential is cached.
//!
//! A reverse proxy asks `/auth/verify` before every request it passes, the gateway
//! forwards every request of the services behind it, and clients call the API with the
//! same credential again and again, so requests with a credential the node has cached are
//! nearly all of a deployment's traffic. The serving loop hands them here, and they are
//! served without the router's stages as separate layers (request-id span, panic guard,
//! audit, authenticate, IP lists, rate limit): the same checks run in the same order
//! through the same functions, in one function, and the request then goes to the
//! handler: [`decision`] for forward-auth, [`crate::edge::proxy::gateway`] for the
//! gateway, and for the API the routes without the stages
//! ([`crate::app::fast_router`]).
//!
//! The fast path takes only requests it can start from memory:
//! - any path but health, metrics and the public documents, which need no credential;
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
//! are not charged twice. From the rate limiter on, the fast path serves the request
//! whatever the outcome (a refused scope, no route, a spend limit, a handler's error),
//! with the handler's own code and the same audit context, so the response, the audit
//! entry and the metrics are those of the full pipeline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::header::{AUTHORIZATION, USER_AGENT};
use axum::http::{Extensions, HeaderValue, Method, Request, Response, StatusCode};
use axum::response::IntoResponse;
use futures_util::FutureExt;
use hyper::body::Incoming;
use tower::ServiceExt;

use crate::api::gateway::decision;
use crate::audit::{AuditContext, DecisionKey, Pins};
use crate::edge::client_ip::ClientIp;
use crate::edge::{Prechecked, client_ip, credential_buckets, rate_limit_headers};
use crate::error::ApiError;
use crate::metrics::Route;
use crate::pipeline::authenticate::{Authentication, bearer};
use crate::request_id::{self, RequestId};
use crate::state::AppState;

/// What the fast path did with a request.
pub(crate) enum Outcome {
    /// It answered.
    Answered(Response<Body>),
    /// It cannot answer from memory: the router serves the request.
    Declined(Request<Incoming>),
}

/// What the fast path may serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A forward-auth decision, with the route template the router would match.
    ForwardAuth(&'static str),
    /// A path the router leaves to the gateway.
    Gateway,
    /// Any other path of the router's that needs a credential (the API).
    Api,
}

impl Kind {
    /// The metrics label of the request, as the router would give it (for the API, the
    /// route that matched, known once it has been served).
    fn route(self) -> Route {
        match self {
            Kind::ForwardAuth(template) => Route::fixed(template),
            Kind::Gateway | Kind::Api => Route::unmatched(),
        }
    }
}

/// The fast path of a node: its state, and the routes without the stages it runs itself.
#[derive(Clone)]
pub(crate) struct FastPath {
    state: AppState,
    routes: axum::Router,
}

impl FastPath {
    pub(crate) fn new(state: AppState) -> Self {
        let routes = crate::app::fast_router(state.clone());
        Self { state, routes }
    }

    /// Serves a request from memory, or declines it.
    pub(crate) async fn serve(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        kind: Kind,
    ) -> Outcome {
        serve(&self.state, &self.routes, req, peer, kind).await
    }
}

/// The layer of [`crate::app::fast_router`]: notes the route that matched in the request's
/// audit context, for its entry and the request metrics.
pub(crate) async fn note_route(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if let (Some(route), Some(audit)) = (
        req.extensions().get::<axum::extract::MatchedPath>(),
        req.extensions().get::<AuditContext>(),
    ) {
        audit.set_route(route.clone());
    }
    next.run(req).await
}

/// What the fast path may serve at `path`, as the router would route it.
pub(crate) fn kind_of(path: &str) -> Option<Kind> {
    if path == "/auth/verify" {
        Some(Kind::ForwardAuth("/auth/verify"))
    } else if path.len() > "/auth/verify/".len() && path.starts_with("/auth/verify/") {
        Some(Kind::ForwardAuth("/auth/verify/{*path}"))
    } else if crate::api::router_may_serve(path) {
        // Health, metrics and the public documents need no credential: the router.
        (!crate::pipeline::is_public(path)).then_some(Kind::Api)
    } else {
        Some(Kind::Gateway)
    }
}

async fn serve(
    state: &AppState,
    routes: &axum::Router,
    req: Request<Incoming>,
    peer: SocketAddr,
    kind: Kind,
) -> Outcome {
    if !state.audit.fast_path_open() || tracing::enabled!(tracing::Level::DEBUG) {
        return Outcome::Declined(req);
    }
    let started = Instant::now();
    let id = request_id::of(req.headers());
    let method = req.method().clone();
    // Boxed: the request's future is large (the gateway's holds the upstream exchange), and
    // on the stack each of the wrappers below would move it again.
    let served =
        std::panic::AssertUnwindSafe(Box::pin(answer(state, routes, req, peer, &id, kind)))
            .catch_unwind();
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
    let route = response
        .extensions_mut()
        .remove::<Route>()
        .unwrap_or_else(|| kind.route());
    state
        .metrics
        .observe_request(&method, route.clone(), status, elapsed.as_secs_f64());
    if status >= 500 {
        let latency_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        tracing::warn!(request_id = %id, route = route.as_str(), status, latency_us, "request failed");
    }
    Outcome::Answered(response)
}

async fn answer(
    state: &AppState,
    routes: &axum::Router,
    mut req: Request<Incoming>,
    peer: SocketAddr,
    request_id: &str,
    kind: Kind,
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
    // The IP access list stage: a refusal (or a store error) is the full pipeline's to
    // answer and record.
    if !matches!(
        crate::edge::ip_check(state, &identity, ip).await,
        Ok(Ok(()))
    ) {
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
    if matches!(kind, Kind::Gateway | Kind::Api) {
        return Outcome::Answered(
            through(
                state, routes, kind, req, identity, ip, audit, request_id, &verdict,
            )
            .await,
        );
    }
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

/// The gateway's and the API's part of the fast path: the handler (the gateway's, or the
/// routes without the stages) with the extensions the stages would have set, then what the
/// stages do on the way out: the rate-limit headers and the audit entry. A panic in the
/// handler is a 500 that is audited, as the full pipeline's panic guard makes it.
#[allow(clippy::too_many_arguments)]
async fn through(
    state: &AppState,
    routes: &axum::Router,
    kind: Kind,
    req: Request<Incoming>,
    identity: Arc<crate::credentials::Identity>,
    ip: Option<std::net::IpAddr>,
    audit: AuditContext,
    request_id: &str,
    verdict: &crate::edge::ratelimit::Verdict,
) -> Response<Body> {
    let method = req.method().clone();
    let mut req = req.map(Body::new);
    let extensions = req.extensions_mut();
    extensions.insert(RequestId(request_id.to_owned()));
    extensions.insert(audit.clone());
    extensions.insert(ClientIp(ip));
    extensions.insert(Authentication::Verified(identity));
    let handled = match kind {
        Kind::Api => {
            let routes = routes.clone();
            std::panic::AssertUnwindSafe(async move {
                match routes.oneshot(req).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                }
            })
            .catch_unwind()
            .await
        }
        _ => {
            std::panic::AssertUnwindSafe(crate::edge::proxy::gateway(State(state.clone()), req))
                .catch_unwind()
                .await
        }
    };
    let mut response =
        handled.unwrap_or_else(|_| ApiError::Internal("a handler panicked".into()).into_response());
    if verdict.applies() {
        rate_limit_headers(response.headers_mut(), verdict);
    }
    if kind == Kind::Api {
        response.extensions_mut().insert(audit.route_label());
    }
    match state.audit.finish(&audit, &method, response.status()).await {
        Ok(()) => response,
        Err(e) => e.into_response(),
    }
}
