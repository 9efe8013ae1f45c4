//! The edge's HTTP surface: gateway routes (`/api/v1/gateway/routes`), the forward-auth
//! decision (`/auth/verify` for nginx, Traefik and Envoy) and the assertion key set
//! (`/.well-known/jwks.json`).

use crate::pipeline::extract::{PathId, RoutePath};
use std::collections::BTreeMap;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{Extensions, HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use chrono::{DateTime, Utc};
use datastack_core::edge::RouteSpec;
use datastack_core::id::RouteId;
use datastack_store::{Invalidation, StoredRoute};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::audit::AuditContext;
use crate::edge::routes::ActiveRoute;
use crate::edge::{self, Undecidable, identity_headers};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::pipeline::authorize::{Authorized, ManageGateway, ReadGateway};
use crate::pipeline::extract::Json;
use crate::request_id::RequestId;
use crate::state::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_routes, create_route))
        .routes(routes!(get_route, replace_route, delete_route))
        .routes(routes!(jwks))
}

/// The forward-auth decision. It answers from memory (credentials, routes, limits are
/// cached, the audit entry is queued), so it runs outside the API handlers' deadline,
/// which would cost a timer per decision on the proxy's hot path.
pub fn decision_routes() -> Router<AppState> {
    Router::new()
        .route("/auth/verify", any(verify))
        .route("/auth/verify/{*path}", any(verify))
}

/// A route to create or the full replacement of one.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct RouteBody {
    /// Requests whose path is this prefix or under it use the route (e.g. `/v1/clusters`).
    pub path_prefix: String,
    /// The upstream base URL (`http://127.0.0.1:9001`); omit for a forward-auth-only route.
    pub upstream: Option<String>,
    /// The resource of the route's scopes (`clusters`, `jobs`, `notebooks`, `pipelines`,
    /// `sql`, …): `GET`/`HEAD` need `read:<resource>`, other methods `manage:<resource>`.
    pub resource: String,
    /// Remove the prefix before forwarding. Default false.
    pub strip_prefix: Option<bool>,
    /// Upstream timeout in milliseconds, 1–300000. Default 30000.
    pub timeout_ms: Option<u32>,
    /// Spend units each request costs an API key. Default 0.
    pub price_per_request: Option<u64>,
    /// The upstream response header reporting a request's actual cost (an integer that
    /// replaces `pricePerRequest`). Default `x-datastack-cost`.
    pub cost_header: Option<String>,
    /// Forward the client's `Authorization` header. Default false.
    pub forward_authorization: Option<bool>,
    /// Per-method scope overrides, e.g. `{"POST": "read:jobs"}`.
    pub method_scopes: Option<BTreeMap<String, String>>,
    /// Forward client headers whose name contains `_` (`X_Custom`). Default false: they
    /// are dropped, as nginx does, because CGI/WSGI servers read `X_Datastack_Principal`
    /// as `X-Datastack-Principal`. Identity (`x-datastack-*`), forwarding (`x-forwarded-*`,
    /// `forwarded`, `x-real-ip`, …) and framing headers are dropped in every spelling
    /// even when this is true.
    pub allow_underscore_headers: Option<bool>,
    /// Forward path and method override headers (`X-Original-URL`, `X-Rewrite-URL`,
    /// `X-Original-URI`, `X-Original-Method`, `X-HTTP-Method-Override`, `X-HTTP-Method`,
    /// `X-Method-Override`, `X-Envoy-Original-Path`, `X-Envoy-Original-Url`). Default
    /// false: the upstream would serve another path or method than the one decided on.
    pub allow_override_headers: Option<bool>,
}

/// A route in force.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteResponse {
    /// Its id (`rt_…`); `null` for a route from `datastack.toml`.
    pub id: Option<String>,
    /// `api` (managed here) or `config` (from `datastack.toml`, read-only).
    pub source: &'static str,
    /// The path prefix.
    pub path_prefix: String,
    /// The upstream base URL.
    pub upstream: Option<String>,
    /// The resource of its scopes.
    pub resource: String,
    /// Whether the prefix is removed before forwarding.
    pub strip_prefix: bool,
    /// Upstream timeout, ms.
    pub timeout_ms: u32,
    /// Spend units per request.
    pub price_per_request: u64,
    /// The header an upstream reports a request's actual cost in.
    pub cost_header: String,
    /// Whether `Authorization` is forwarded.
    pub forward_authorization: bool,
    /// Per-method scope overrides.
    pub method_scopes: BTreeMap<String, String>,
    /// Whether client headers whose name contains `_` are forwarded (identity,
    /// forwarding and framing headers never are).
    pub allow_underscore_headers: bool,
    /// Whether path and method override headers (`X-Original-URL`, `X-HTTP-Method-Override`,
    /// …) are forwarded.
    pub allow_override_headers: bool,
    /// Creation time (API routes).
    #[serde(serialize_with = "crate::api::time::rfc3339_opt")]
    pub created_at: Option<DateTime<Utc>>,
    /// Last change (API routes).
    #[serde(serialize_with = "crate::api::time::rfc3339_opt")]
    pub updated_at: Option<DateTime<Utc>>,
}

fn response_of(
    id: Option<&RouteId>,
    spec: &RouteSpec,
    created: Option<DateTime<Utc>>,
    updated: Option<DateTime<Utc>>,
) -> RouteResponse {
    RouteResponse {
        id: id.map(ToString::to_string),
        source: if id.is_some() { "api" } else { "config" },
        path_prefix: spec.path_prefix.clone(),
        upstream: spec.upstream.clone(),
        resource: spec.resource.as_str().to_owned(),
        strip_prefix: spec.strip_prefix,
        timeout_ms: spec.timeout_ms,
        price_per_request: spec.price_per_request,
        cost_header: spec.cost_header_name().to_owned(),
        forward_authorization: spec.forward_authorization,
        method_scopes: spec
            .method_scopes
            .iter()
            .map(|(m, s)| (m.clone(), s.to_string()))
            .collect(),
        allow_underscore_headers: spec.allow_underscore_headers,
        allow_override_headers: spec.allow_override_headers,
        created_at: created,
        updated_at: updated,
    }
}

impl From<&ActiveRoute> for RouteResponse {
    fn from(r: &ActiveRoute) -> Self {
        response_of(r.id.as_ref(), &r.spec, r.created_at, r.updated_at)
    }
}

impl From<&StoredRoute> for RouteResponse {
    fn from(r: &StoredRoute) -> Self {
        response_of(Some(&r.id), &r.spec, Some(r.created_at), Some(r.updated_at))
    }
}

/// Every route in force.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteList {
    /// The routes, configured ones first.
    pub items: Vec<RouteResponse>,
    /// Always `null`: the list is not paginated.
    pub next_cursor: Option<String>,
}

/// Routes apply to every workspace, so only the root workspace manages them.
fn require_root(state: &AppState, caller: &Authorized<ManageGateway>) -> ApiResult<()> {
    if caller.identity.workspace.id != state.edge.root_workspace() {
        return Err(ApiError::Forbidden(
            "gateway routes apply to every workspace and are managed from the root workspace"
                .into(),
        ));
    }
    Ok(())
}

/// Lists every route in force (configured and managed).
#[utoipa::path(get, operation_id = "listGatewayRoutes", path = "/api/v1/gateway/routes", tag = "gateway",
    security(("bearer" = ["read:gateway"])),
    params(("x-datastack-scope" = String, Header, description = "read:gateway")),
    responses((status = 200, body = RouteList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_routes(
    State(state): State<AppState>,
    _caller: Authorized<ReadGateway>,
) -> Json<RouteList> {
    let routes = state.edge.routes.all();
    Json(RouteList {
        items: routes
            .iter()
            .map(|r| RouteResponse::from(r.as_ref()))
            .collect(),
        next_cursor: None,
    })
}

/// Creates a route. Admins of the root workspace only.
#[utoipa::path(post, operation_id = "createGatewayRoute", path = "/api/v1/gateway/routes", tag = "gateway",
    security(("bearer" = ["manage:gateway"])),
    params(("x-datastack-scope" = String, Header, description = "manage:gateway")),
    request_body = RouteBody,
    responses((status = 201, body = RouteResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_route(
    State(state): State<AppState>,
    caller: Authorized<ManageGateway>,
    audit: AuditContext,
    Json(spec): Json<RouteSpec>,
) -> ApiResult<(StatusCode, Json<RouteResponse>)> {
    require_root(&state, &caller)?;
    let spec = spec.validate()?;
    if state.edge.routes.configured(&spec.path_prefix) {
        return Err(ApiError::Conflict(
            "datastack.toml already configures a route with this pathPrefix".into(),
        ));
    }
    let now = Utc::now();
    let route = StoredRoute {
        id: RouteId::generate(),
        spec,
        created_at: now,
        updated_at: now,
    };
    audit.set_resource_id(route.id.as_str());
    audit.set_detail(serde_json::to_value(&route.spec).unwrap_or_default());
    state
        .store
        .insert_route(&route, &audit.change(StatusCode::CREATED))
        .await?;
    audit.mark_recorded();
    edge::apply_invalidation(&state, &Invalidation::Routes).await;
    tracing::info!(route = %route.id, prefix = %route.spec.path_prefix, "gateway route created");
    Ok((StatusCode::CREATED, Json(RouteResponse::from(&route))))
}

/// One route.
#[utoipa::path(get, operation_id = "getGatewayRoute", path = "/api/v1/gateway/routes/{id}", tag = "gateway",
    security(("bearer" = ["read:gateway"])),
    params(("id" = String, Path), ("x-datastack-scope" = String, Header, description = "read:gateway")),
    responses((status = 200, body = RouteResponse), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn get_route(
    State(state): State<AppState>,
    _caller: Authorized<ReadGateway>,
    PathId(id): PathId<RoutePath>,
) -> ApiResult<Json<RouteResponse>> {
    let route = state.store.get_route(&id).await.map_err(|e| match e {
        datastack_store::Error::NotFound => ApiError::not_found("route"),
        other => other.into(),
    })?;
    Ok(Json(RouteResponse::from(&route)))
}

/// Replaces a route. Admins of the root workspace only.
#[utoipa::path(put, operation_id = "replaceGatewayRoute", path = "/api/v1/gateway/routes/{id}", tag = "gateway",
    security(("bearer" = ["manage:gateway"])),
    params(("id" = String, Path), ("x-datastack-scope" = String, Header, description = "manage:gateway")),
    request_body = RouteBody,
    responses((status = 200, body = RouteResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn replace_route(
    State(state): State<AppState>,
    caller: Authorized<ManageGateway>,
    audit: AuditContext,
    PathId(id): PathId<RoutePath>,
    Json(spec): Json<RouteSpec>,
) -> ApiResult<Json<RouteResponse>> {
    require_root(&state, &caller)?;
    let spec = spec.validate()?;
    if state.edge.routes.configured(&spec.path_prefix) {
        return Err(ApiError::Conflict(
            "datastack.toml already configures a route with this pathPrefix".into(),
        ));
    }
    audit.set_detail(serde_json::to_value(&spec).unwrap_or_default());
    let route = state
        .store
        .update_route(&id, &spec, &audit.change(StatusCode::OK))
        .await
        .map_err(|e| match e {
            datastack_store::Error::NotFound => ApiError::not_found("route"),
            other => other.into(),
        })?;
    audit.mark_recorded();
    edge::apply_invalidation(&state, &Invalidation::Routes).await;
    Ok(Json(RouteResponse::from(&route)))
}

/// Deletes a route. Admins of the root workspace only.
#[utoipa::path(delete, operation_id = "deleteGatewayRoute", path = "/api/v1/gateway/routes/{id}", tag = "gateway",
    security(("bearer" = ["manage:gateway"])),
    params(("id" = String, Path), ("x-datastack-scope" = String, Header, description = "manage:gateway")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_route(
    State(state): State<AppState>,
    caller: Authorized<ManageGateway>,
    audit: AuditContext,
    PathId(id): PathId<RoutePath>,
) -> ApiResult<StatusCode> {
    require_root(&state, &caller)?;
    state
        .store
        .delete_route(&id, &audit.change(StatusCode::NO_CONTENT))
        .await
        .map_err(|e| match e {
            datastack_store::Error::NotFound => ApiError::not_found("route"),
            other => other.into(),
        })?;
    audit.mark_recorded();
    edge::apply_invalidation(&state, &Invalidation::Routes).await;
    Ok(StatusCode::NO_CONTENT)
}

/// The headers that describe the original request to forward-auth.
const DESCRIPTION_HEADERS: &[&str] = &[
    "x-original-uri",
    "x-original-method",
    "x-forwarded-uri",
    "x-forwarded-method",
];

/// The methods forward-auth decides on: RFC 9110's, `PATCH` (RFC 5789), and WebDAV's
/// (RFC 4918), which gateways in front of file services pass.
const KNOWN_METHODS: &[&str] = &[
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "DELETE",
    "CONNECT",
    "OPTIONS",
    "TRACE",
    "PATCH",
    "PROPFIND",
    "PROPPATCH",
    "MKCOL",
    "COPY",
    "MOVE",
    "LOCK",
    "UNLOCK",
];

/// The original method in upper case, when it is one of [`KNOWN_METHODS`] in any letter
/// case (nginx and Traefik send it as the client did; methods are upper case in practice,
/// and deciding `delete` as `DELETE` is what a case-insensitive upstream would do). The
/// refusal does not repeat the value: it may be anything, a credential included.
fn known_method(method: &str) -> Result<String, &'static str> {
    KNOWN_METHODS
        .iter()
        .find(|m| m.eq_ignore_ascii_case(method))
        .map(|m| (*m).to_owned())
        .ok_or("the original method is not a known HTTP method (GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH, or a WebDAV method)")
}

/// The original method and path of a forward-auth request: nginx `auth_request`
/// (`X-Original-Method`, `X-Original-URI`), Traefik ForwardAuth (`X-Forwarded-Method`,
/// `X-Forwarded-Uri`), or Envoy ext_authz (the request's own method, and the original path
/// appended after `/auth/verify`).
///
/// Exactly one source may name it: a request carrying two (a client that added
/// `X-Forwarded-Uri` to a request nginx forwards with `X-Original-URI`, say) is refused,
/// since the proxy may have passed the client's copy through untouched.
pub(crate) fn original_request(
    method: &str,
    uri_path: &str,
    headers: &HeaderMap,
) -> Result<(String, String), &'static str> {
    // A repeated header has no single meaning: proxies and frameworks differ on which
    // copy wins (a `GET` before a `DELETE` would be decided as a read).
    for name in DESCRIPTION_HEADERS {
        if headers.get_all(*name).iter().count() > 1 {
            return Err(
                "X-Original-URI, X-Original-Method, X-Forwarded-Uri and X-Forwarded-Method may each appear once; configure the proxy to replace the client's copies",
            );
        }
    }
    // A header that is present counts as present whatever it holds: one that could not be
    // read must not pass for absent, or a client's own copy of another source's header
    // would decide the request. Bytes above ASCII (nginx copies a raw request line into
    // `X-Original-URI`) are percent-encoded, as the upstream will see them; control bytes
    // are refused.
    let get = |name: &str| -> Result<Option<String>, &'static str> {
        let Some(value) = headers.get(name) else {
            return Ok(None);
        };
        let mut text = String::with_capacity(value.len());
        for &b in value.as_bytes() {
            match b {
                0x20..=0x7e => text.push(char::from(b)),
                0x80..=0xff => text.push_str(&format!("%{b:02X}")),
                _ => {
                    return Err(
                        "X-Original-URI, X-Original-Method, X-Forwarded-Uri and X-Forwarded-Method may not hold control characters",
                    );
                }
            }
        }
        Ok(Some(text))
    };
    // The path of the URI: an origin-form target (`/path?query`), or an absolute URI
    // (`http://host/path`, which some proxies send) whose scheme and authority are dropped.
    // Anything else is refused rather than guessed at.
    let path_of = |u: String| -> Result<String, &'static str> {
        let without = u.split(['?', '#']).next().unwrap_or_default();
        let lower = without.to_ascii_lowercase();
        let rest = if lower.starts_with("http://") {
            Some(&without[7..])
        } else if lower.starts_with("https://") {
            Some(&without[8..])
        } else {
            None
        };
        let path = match rest {
            Some(rest) => rest.find('/').map_or("/", |i| &rest[i..]),
            None => without,
        };
        if path.starts_with('/') {
            Ok(path.to_owned())
        } else {
            Err("the original URI is neither a path nor an http(s) URL")
        }
    };
    // The proxy must name the method with the URI: defaulting to GET would let a write
    // be decided as a read.
    let method_of = |name: &str| -> Result<String, &'static str> {
        let method = get(name)?
            .ok_or("the original method is missing: send X-Original-Method with X-Original-URI, or X-Forwarded-Method with X-Forwarded-Uri")?;
        known_method(&method)
    };
    let nginx = get("x-original-uri")?;
    let traefik = get("x-forwarded-uri")?;
    let envoy = uri_path
        .strip_prefix("/auth/verify")
        .filter(|rest| rest.starts_with('/'));
    let sources = usize::from(nginx.is_some())
        + usize::from(traefik.is_some())
        + usize::from(envoy.is_some());
    if sources > 1 {
        return Err(
            "the original request is named more than once (X-Original-URI, X-Forwarded-Uri, a path after /auth/verify); configure the proxy to send one and to drop the client's copies",
        );
    }
    if let Some(uri) = nginx {
        return Ok((method_of("x-original-method")?, path_of(uri)?));
    }
    if let Some(uri) = traefik {
        return Ok((method_of("x-forwarded-method")?, path_of(uri)?));
    }
    match envoy {
        Some(rest) => Ok((known_method(method)?, rest.to_owned())),
        None => Err(
            "name the original request: X-Original-URI (nginx), X-Forwarded-Uri (Traefik), or a path after /auth/verify (Envoy)",
        ),
    }
}

/// The forward-auth decision: 200 with the identity headers when the original request may
/// pass, otherwise 401/403/429 with the error body (and `WWW-Authenticate`).
#[utoipa::path(get, operation_id = "forwardAuthVerify", path = "/auth/verify", tag = "gateway",
    security(("bearer" = [])),
    params(
        ("X-Original-URI" = Option<String>, Header, description = "nginx auth_request: the original URI"),
        ("X-Original-Method" = Option<String>, Header, description = "nginx: the original method (required with X-Original-URI)"),
        ("X-Forwarded-Uri" = Option<String>, Header, description = "Traefik ForwardAuth: the original URI"),
        ("X-Forwarded-Method" = Option<String>, Header, description = "Traefik: the original method (required with X-Forwarded-Uri)")),
    responses((status = 200, description = "allowed; the identity headers are set"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 402, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn verify(State(state): State<AppState>, req: Request) -> Response {
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map_or_else(String::new, |r| r.0.clone());
    decision(
        &state,
        req.extensions(),
        req.method().as_str(),
        req.uri().path(),
        req.headers(),
        &request_id,
    )
    .await
    .0
}

/// What an allowed decision was about, for the fast path's audit.
pub(crate) struct Decided {
    /// The route.
    pub route: std::sync::Arc<ActiveRoute>,
    /// The scope the caller acts with.
    pub scope: datastack_core::scope::Scope,
    /// The method decided on.
    pub method: String,
}

/// The decision itself, for the handler above and for the fast path ([`crate::fast`]),
/// which calls it with the same extensions (audit context, authentication, client
/// address) the pipeline's stages would have set.
pub(crate) async fn decision(
    state: &AppState,
    extensions: &Extensions,
    request_method: &str,
    uri_path: &str,
    headers: &HeaderMap,
    request_id: &str,
) -> (Response, Option<Decided>) {
    let audit = extensions.get::<AuditContext>();
    if let Some(audit) = audit {
        audit.set_action("forward_auth.verify", "gateway");
    }
    let (method, path) = match original_request(request_method, uri_path, headers) {
        Ok(original) => original,
        Err(why) => return (ApiError::InvalidRequest(why.into()).into_response(), None),
    };
    if let Some(audit) = audit {
        audit.set_decided_method(&method);
        audit.aggregate();
    }
    let allowed = match edge::decide(
        state,
        extensions,
        headers,
        &method,
        &path,
        "forward_auth.verify",
    ) {
        Ok(a) => a,
        Err(Undecidable::NoRoute) => {
            return (
                ApiError::Forbidden("no gateway route covers this path".into()).into_response(),
                None,
            );
        }
        Err(Undecidable::Refused(e)) => return (e.into_response(), None),
    };
    // The decision is the request's only sight of datastack: it is charged the route's
    // price here (an upstream behind a forward-auth proxy cannot report a cost).
    if let Err(e) = edge::charge(state, &allowed, extensions).await {
        return (e.into_response(), None);
    }
    match identity_headers(state, &allowed, request_id, &method, &path) {
        Ok(headers) => {
            let mut response = StatusCode::OK.into_response();
            // The identity headers, the assertion, the rate-limit headers and the request
            // id, without the map growing three times on the way.
            response.headers_mut().reserve(16);
            for (name, value) in headers {
                response.headers_mut().insert(name, value);
            }
            let decided = Decided {
                route: allowed.route,
                scope: allowed.scope,
                method,
            };
            (response, Some(decided))
        }
        Err(e) => (e.into_response(), None),
    }
}

/// The public keys that sign `x-datastack-assertion` and OAuth access tokens, as a JWK
/// set (the rotating access-token keys are published before they sign and until their
/// last token has expired).
#[utoipa::path(get, operation_id = "getJwks", path = "/.well-known/jwks.json", tag = "gateway",
    responses((status = 200, content_type = "application/json", body = crate::openapi::JwkSet,
        description = "the key set; cached for five minutes (`Cache-Control: public, max-age=300`)")))]
pub async fn jwks(State(state): State<AppState>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        state
            .oauth_keys
            .jwks()
            .unwrap_or_else(|| state.edge.signer.jwks().to_owned()),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderMap;

    #[test]
    fn original_request_from_each_proxy() {
        // No method header: refused, not defaulted to GET.
        let mut h = HeaderMap::new();
        h.insert("x-original-uri", "/v1/x".parse().expect("v"));
        assert!(super::original_request("GET", "/auth/verify", &h).is_err());
        // `://` inside a path is not an absolute URI.
        h.insert("x-original-method", "GET".parse().expect("v"));
        h.insert(
            "x-original-uri",
            "/v1/admin/42;x=http://a/v1/public".parse().expect("v"),
        );
        assert_eq!(
            super::original_request("GET", "/auth/verify", &h),
            Ok(("GET".into(), "/v1/admin/42;x=http://a/v1/public".into()))
        );
        h.insert("x-original-uri", "HTTPS://host/v1/y?q".parse().expect("v"));
        assert_eq!(
            super::original_request("GET", "/auth/verify", &h),
            Ok(("GET".into(), "/v1/y".into()))
        );
        h.insert("x-original-uri", "v1/relative".parse().expect("v"));
        assert!(super::original_request("GET", "/auth/verify", &h).is_err());
        let mut h = HeaderMap::new();
        h.insert("x-original-uri", "/v1/clusters/1?x=1".parse().expect("v"));
        h.insert("x-original-method", "post".parse().expect("v"));
        assert_eq!(
            super::original_request("GET", "/auth/verify", &h),
            Ok(("POST".into(), "/v1/clusters/1".into()))
        );
        // Two sources: refused (a client's copy passed through).
        let mut both = h.clone();
        both.insert("x-forwarded-uri", "/v1/other".parse().expect("v"));
        assert!(super::original_request("GET", "/auth/verify", &both).is_err());
        assert!(super::original_request("GET", "/auth/verify/v1/x", &h).is_err());
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-uri", "/v1/jobs".parse().expect("v"));
        h.insert("x-forwarded-method", "DELETE".parse().expect("v"));
        assert_eq!(
            super::original_request("GET", "/auth/verify", &h),
            Ok(("DELETE".into(), "/v1/jobs".into()))
        );
        assert_eq!(
            super::original_request("PUT", "/auth/verify/v1/sql/q", &HeaderMap::new()),
            Ok(("PUT".into(), "/v1/sql/q".into()))
        );
        assert!(super::original_request("GET", "/auth/verify", &HeaderMap::new()).is_err());
    }

    #[test]
    fn an_unreadable_description_header_is_never_taken_for_absent() {
        use axum::http::HeaderValue;
        // nginx copies a raw request line with bytes above ASCII; a client adds its own
        // Traefik headers. The nginx source is still there: two sources, refused.
        let mut h = HeaderMap::new();
        h.insert(
            "x-original-uri",
            HeaderValue::from_bytes(b"/v1/admin/keys/\xc3\xa9").expect("v"),
        );
        h.insert("x-original-method", "DELETE".parse().expect("v"));
        h.insert("x-forwarded-uri", "/v1/public".parse().expect("v"));
        h.insert("x-forwarded-method", "GET".parse().expect("v"));
        assert!(super::original_request("GET", "/auth/verify", &h).is_err());
        // Alone, it is decided on its percent-encoded spelling, as the upstream sees it.
        h.remove("x-forwarded-uri");
        h.remove("x-forwarded-method");
        assert_eq!(
            super::original_request("GET", "/auth/verify", &h),
            Ok(("DELETE".to_owned(), "/v1/admin/keys/%C3%A9".to_owned()))
        );
        // Control characters (a tab is the one a header value may hold) are refused.
        h.insert(
            "x-original-uri",
            HeaderValue::from_bytes(b"/v1/admin\tx").expect("v"),
        );
        assert!(super::original_request("GET", "/auth/verify", &h).is_err());
    }

    #[test]
    fn repeated_descriptions_and_unknown_methods_are_refused() {
        for name in [
            "x-original-uri",
            "x-original-method",
            "x-forwarded-uri",
            "x-forwarded-method",
        ] {
            let mut h = HeaderMap::new();
            h.insert("x-original-uri", "/v1/jobs".parse().expect("v"));
            h.insert("x-original-method", "GET".parse().expect("v"));
            h.append(name, "DELETE".parse().expect("v"));
            h.append(name, "DELETE".parse().expect("v"));
            assert!(
                super::original_request("GET", "/auth/verify", &h).is_err(),
                "{name}"
            );
        }
        let secret = "ds_tok_0123456789abcdef";
        for bad in ["FOO", "GETS", "", secret, &"A".repeat(60_000)] {
            let mut h = HeaderMap::new();
            h.insert("x-original-uri", "/v1/jobs".parse().expect("v"));
            h.insert("x-original-method", bad.parse().expect("v"));
            let e = super::original_request("GET", "/auth/verify", &h).expect_err(bad);
            assert!(!e.contains(secret), "{e}");
        }
        assert!(
            super::original_request("BREW", "/auth/verify/v1/jobs", &HeaderMap::new()).is_err()
        );
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-uri", "/v1/jobs".parse().expect("v"));
        h.insert("x-forwarded-method", "propfind".parse().expect("v"));
        assert_eq!(
            super::original_request("GET", "/auth/verify", &h),
            Ok(("PROPFIND".into(), "/v1/jobs".into()))
        );
    }
}
