//! The gateway: requests under a route's prefix are decided on ([`super::decide`]) and, when
//! allowed, forwarded to the route's upstream with the identity headers, streaming bodies
//! both ways over pooled keep-alive connections; WebSocket upgrades are tunnelled once the
//! upstream agrees (other upgrades are refused), and a tunnel closes when its credential
//! is revoked.
//!
//! Only configured upstreams are reachable: the upstream URL comes from the route, never
//! from the request. Hop-by-hop headers (RFC 9110 §7.6.1) are dropped in both directions,
//! incoming identity, forwarding, underscore and override headers are removed (see
//! [`super::headers`]), and the client's `Authorization` is forwarded only when the route
//! says so.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use http_body_util::Limited;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::{Undecidable, decide, identity_headers};
use crate::edge::client_ip::ClientIp;
use crate::error::ApiError;
use crate::request_id::RequestId;
use crate::state::AppState;

mod body;

use body::{Side, Watched, client_body_error};

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// The largest cost an upstream may report for one request (a route's price has the same
/// ceiling); larger values count as this.
const MAX_REPORTED_COST: u64 = 1_000_000_000;

/// The pooled client to every upstream.
pub struct Upstreams {
    client: Client<Connector, Body>,
}

impl Default for Upstreams {
    fn default() -> Self {
        Self::new()
    }
}

impl Upstreams {
    /// A client with keep-alive pooling, HTTP and HTTPS (WebPKI roots).
    pub fn new() -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .build(connector);
        Self { client }
    }

    /// Sends `req` to its upstream. A pooled connection can be closed by the upstream
    /// (its idle timeout) just as a request is written to it; the client sends again only
    /// what was not written. A request that is idempotent (RFC 9110 §9.2.2) and has no
    /// body is also sent again, at most [`REPLAYS`] times, when the connection closed
    /// before any answer, as nginx does; anything else gets the error.
    async fn request(
        &self,
        req: axum::http::Request<Body>,
    ) -> Result<Response<hyper::body::Incoming>, hyper_util::client::legacy::Error> {
        let Some(head) = replayable(&req).then(|| head_of(&req)) else {
            return self.client.request(req).await;
        };
        let mut result = self.client.request(req).await;
        // Each further try takes another pooled connection (which may be stale too) or a
        // new one.
        for _ in 0..REPLAYS {
            match &result {
                Err(e) if closed_before_answer(e) => {}
                _ => break,
            }
            let again = axum::http::Request::from_parts(head.clone(), Body::empty());
            result = self.client.request(again).await;
        }
        result
    }
}

/// How many times an idempotent request without a body is sent again when its
/// connection closed before any answer.
const REPLAYS: usize = 2;

/// Whether a request may be sent again after its connection failed: idempotent and
/// without a body.
fn replayable(req: &axum::http::Request<Body>) -> bool {
    use axum::http::Method;
    matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    ) && hyper::body::Body::is_end_stream(req.body())
}

/// A copy of a request's head, to send it again.
fn head_of(req: &axum::http::Request<Body>) -> axum::http::request::Parts {
    let (mut head, ()) = axum::http::Request::new(()).into_parts();
    head.method = req.method().clone();
    head.uri = req.uri().clone();
    head.version = req.version();
    head.headers = req.headers().clone();
    head
}

/// Whether the connection closed before the upstream answered anything: hyper saw the end
/// of the stream before a response head, or the socket was reset (an upstream that closed
/// its idle connection answers a request that arrives after the close with a reset, which
/// can come before or after the request is written).
fn closed_before_answer(e: &hyper_util::client::legacy::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if s.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_incomplete_message)
        {
            return true;
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
            )
        {
            return true;
        }
        source = s.source();
    }
    false
}

/// Hop-by-hop headers, never forwarded (RFC 9110 §7.6.1).
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

/// Removes hop-by-hop headers, including those the `Connection` header names. Most
/// requests carry none: one pass over the names finds that without a lookup per name.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The upgrade protocol requested, when the request asks to switch protocols.
fn upgrade_of(headers: &HeaderMap) -> Option<HeaderValue> {
    let wants = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        });
    if wants {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    }
}

/// The fallback handler: proxies requests under a route's prefix; 404 otherwise.
pub async fn gateway(State(state): State<AppState>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let allowed = match decide(
        &state,
        req.extensions(),
        req.headers(),
        method.as_str(),
        &path,
        "gateway.proxy",
    ) {
        Ok(a) => a,
        Err(Undecidable::NoRoute) => {
            return ApiError::NotFound("no such path".into()).into_response();
        }
        Err(Undecidable::Refused(e)) => return e.into_response(),
    };
    if allowed.route.spec.upstream.is_none() {
        return ApiError::NotFound(
            "this route is for forward-auth decisions only; it has no upstream".into(),
        )
        .into_response();
    }
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map_or_else(String::new, |r| r.0.clone());
    let reservation = match super::charge(&state, &allowed, req.extensions()).await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let route = allowed.route.clone();
    let result = forward(&state, &allowed, req, &request_id, &method, &path).await;
    if let Some(reservation) = reservation {
        // The upstream's reported cost replaces the price; a request the upstream never
        // received costs nothing.
        let actual = match &result {
            Ok(r) => r
                .headers()
                .get(route.spec.cost_header_name())
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                // The same ceiling as a route's price.
                .map(|cost| cost.min(MAX_REPORTED_COST)),
            Err(_) => Some(0),
        };
        if let Some(actual) = actual {
            state
                .edge
                .spend
                .settle(&state.edge.limiter, reservation, actual)
                .await;
        }
    }
    match result {
        Ok(r) | Err(r) => r,
    }
}

/// Forwards an allowed request: `Ok` with what the upstream answered (or a failure after
/// it received the request), `Err` with the refusal when it was never sent.
async fn forward(
    state: &AppState,
    allowed: &super::Allowed,
    mut req: Request,
    request_id: &str,
    method: &axum::http::Method,
    path: &str,
) -> Result<Response, Response> {
    let route = allowed.route.clone();
    let Some(upstream) = route.spec.upstream.as_deref() else {
        return Err(ApiError::NotFound(
            "this route is for forward-auth decisions only; it has no upstream".into(),
        )
        .into_response());
    };
    let identity = match identity_headers(state, allowed, request_id, method.as_str(), path) {
        Ok(h) => h,
        Err(e) => return Err(e.into_response()),
    };
    // The upstream URI: its base, the path (without the prefix if so configured), the query.
    let forwarded_path = if route.spec.strip_prefix {
        let rest = &path[route.spec.path_prefix.len()..];
        if rest.is_empty() { "/" } else { rest }
    } else {
        path
    };
    let query = req
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let target: Uri = match format!("{upstream}{forwarded_path}{query}").parse() {
        Ok(u) => u,
        Err(_) => {
            return Err(
                ApiError::InvalidRequest("the request path cannot be forwarded".into())
                    .into_response(),
            );
        }
    };
    let max_body = state.config.gateway_max_body_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body as u64) {
        return Err(ApiError::PayloadTooLarge(max_body).into_response());
    }
    let upgrade = upgrade_of(req.headers());
    // Only WebSocket is tunnelled: another protocol (h2c, say) would carry requests the
    // edge never sees.
    if upgrade
        .as_ref()
        .is_some_and(|p| !p.as_bytes().eq_ignore_ascii_case(b"websocket"))
    {
        return Err(ApiError::InvalidRequest(
            "only WebSocket upgrades are proxied (Upgrade: websocket)".into(),
        )
        .into_response());
    }
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let client_ip = req.extensions().get::<ClientIp>().and_then(|c| c.0);
    let (parts, body) = req.into_parts();
    let mut headers = parts.headers;
    let original_host = headers.get(header::HOST).cloned();
    strip_hop_by_hop(&mut headers);
    headers.remove(header::HOST);
    // Identity and forwarding headers are ours to set: the client's copies (which no
    // trusted proxy vouched for beyond what the client-IP stage already used) are dropped
    // in every spelling, with underscore and override headers unless the route allows them.
    super::headers::filter_client_headers(&mut headers, &route.spec);
    if !route.spec.forward_authorization {
        headers.remove(header::AUTHORIZATION);
    }
    if let Some(ip) = client_ip
        && let Ok(v) = HeaderValue::from_str(&ip.to_string())
    {
        headers.insert("x-forwarded-for", v);
    }
    if let Some(host) = original_host {
        headers.insert("x-forwarded-host", host);
    }
    for (name, value) in identity {
        headers.insert(name, value);
    }
    if let Some(protocol) = &upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol.clone());
    }
    // No byte from the client for the idle timeout aborts the exchange, so a stalled
    // client holds neither this connection nor the upstream one.
    let body_idle = state.config.connections.gateway_body_idle_timeout;
    let body = Body::new(Watched::new(
        Limited::new(body, max_body),
        Side::Client,
        body_idle,
    ));
    let mut upstream_req = axum::http::Request::new(body);
    *upstream_req.method_mut() = method.clone();
    *upstream_req.uri_mut() = target;
    *upstream_req.headers_mut() = headers;
    let timeout = Duration::from_millis(u64::from(route.spec.timeout_ms));
    let started = std::time::Instant::now();
    let result = tokio::time::timeout(timeout, state.edge.upstreams.request(upstream_req)).await;
    let mut response = match result {
        Err(_) => {
            state.metrics.upstream("timeout");
            // The upstream may have done the work: the request stays charged.
            return Ok(ApiError::Upstream(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "the upstream did not answer within {} ms",
                    route.spec.timeout_ms
                ),
            )
            .into_response());
        }
        Ok(Err(e)) => {
            if is_body_limit(&e) {
                state.metrics.upstream("body_too_large");
                return Err(ApiError::PayloadTooLarge(max_body).into_response());
            }
            // The client's body was malformed (bad chunked framing), cut or stalled: the
            // client's fault, not the upstream's. Like an oversized body, not charged.
            if let Some(cause) = client_body_error(&e) {
                state.metrics.upstream("client_body_error");
                tracing::debug!(route = %route.spec.path_prefix, error = %cause, "the client's request body failed");
                return Err(ApiError::InvalidRequest(
                    "the request body is malformed, incomplete or stalled".into(),
                )
                .into_response());
            }
            state.metrics.upstream("unreachable");
            tracing::warn!(request_id, route = %route.spec.path_prefix, error = %e, "the upstream is unreachable");
            // Nothing listening (or no route to it): unavailable; a broken exchange: bad gateway.
            // Never reached, the request costs nothing; a broken exchange stays charged.
            let (status, reached) = if e.is_connect() {
                (StatusCode::SERVICE_UNAVAILABLE, false)
            } else {
                (StatusCode::BAD_GATEWAY, true)
            };
            let response = ApiError::Upstream(
                status,
                "the upstream could not be reached or failed to answer".into(),
            )
            .into_response();
            return if reached { Ok(response) } else { Err(response) };
        }
        Ok(Ok(r)) => r,
    };
    state.metrics.upstream("ok");
    let upstream_status = response.status();
    tracing::debug!(
        route = %route.spec.path_prefix,
        upstream_status = upstream_status.as_u16(),
        upstream_us = started.elapsed().as_micros() as u64,
        "proxied"
    );
    if upstream_status == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_side) = client_upgrade {
            let upstream_side = hyper::upgrade::on(&mut response);
            let close = state.edge.tunnels.register(&allowed.identity);
            let edge = state.edge.clone();
            tokio::spawn(async move {
                match (client_side.await, upstream_side.await) {
                    (Ok(client), Ok(upstream)) => {
                        let mut client = TokioIo::new(client);
                        let mut upstream = TokioIo::new(upstream);
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                            _ = close.notified() => {
                                tracing::info!("closed a WebSocket tunnel: its credential is no longer valid");
                            }
                        }
                        edge.tunnels.forget(&close);
                    }
                    (Err(e), _) | (_, Err(e)) => {
                        edge.tunnels.forget(&close);
                        tracing::debug!(error = %e, "a protocol upgrade did not complete");
                    }
                }
            });
            let (parts, _) = response.into_parts();
            return Ok(Response::from_parts(parts, Body::empty()));
        }
        return Ok(ApiError::Upstream(
            StatusCode::BAD_GATEWAY,
            "the upstream switched protocols without being asked".into(),
        )
        .into_response());
    }
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // The client is answered in HTTP/1.1 whatever version the upstream spoke (an HTTP/1.0
    // upstream would otherwise make hyper answer the client in HTTP/1.0).
    parts.version = axum::http::Version::HTTP_11;
    // An upstream that stops sending mid-body is cut off after the idle timeout: the
    // client's connection ends and the upstream connection is dropped, not pooled.
    Ok(Response::from_parts(
        parts,
        Body::new(Watched::new(body, Side::Upstream, body_idle)),
    ))
}

/// Whether a client error was caused by the request body going over the limit.
fn is_body_limit(e: &hyper_util::client::legacy::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}
