//! Edge enforcement: the client address behind trusted proxies, IP access lists, rate
//! limits and abuse flags, the gateway's routes and proxy, the forward-auth decision, and
//! the signed identity assertion.
//!
//! The gateway and forward-auth make the same decision ([`decide`]): the route for the
//! path, a valid credential, and a scope that covers what the route requires for the
//! method. The IP-list and rate-limit stages have run before either.

pub mod client_ip;
pub mod headers;
pub mod ip_lists;
pub mod proxy;
pub mod ratelimit;
pub mod refused;
pub mod routes;
pub mod signer;
pub mod spend;
pub mod tunnels;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{Extensions, HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use datastack_core::audit::AuditRecord;
use datastack_core::id::{AbuseFlagId, WorkspaceId};
use datastack_core::scope::Scope;
use datastack_store::{AbuseFlag, Invalidation, Store, Trail};

use crate::audit::AuditContext;
use crate::config::Config;
use crate::credentials::Identity;
use crate::edge::client_ip::ClientIp;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::pipeline::authenticate::Authentication;
use crate::pipeline::authorize::{SCOPE_HEADER, authenticated_in};
use crate::state::AppState;

use self::ip_lists::IpRuleCache;
use self::ratelimit::{Bucket, Flagged, Limiter, Subject, Verdict};
use self::routes::{ActiveRoute, RouteTable};
use self::signer::{Assertion, Signer};

/// The headers datastack sets on requests it lets through; incoming copies are removed.
pub const IDENTITY_HEADER_PREFIX: &str = "x-datastack-";

/// The edge state of a node.
pub struct Edge {
    /// The gateway routes.
    pub routes: RouteTable,
    /// IP access lists per workspace.
    pub ip_rules: IpRuleCache,
    /// Rate limits.
    pub limiter: Limiter,
    /// The assertion signer.
    pub signer: Signer,
    /// The upstream client.
    pub upstreams: proxy::Upstreams,
    /// Open WebSocket tunnels.
    pub tunnels: tunnels::Tunnels,
    /// API key spend metering.
    pub spend: spend::SpendMeter,
    /// Addresses their per-address bucket refuses at the moment.
    pub refused: refused::RefusedAddresses,
    /// The workspace that records what belongs to none (anonymous clients), known once
    /// the store is bootstrapped.
    root_workspace: std::sync::OnceLock<WorkspaceId>,
}

impl Edge {
    /// Builds the edge state and loads the routes.
    pub async fn new(
        store: &Store,
        config: &Config,
        metrics: Arc<Metrics>,
        seed: &[u8; 32],
    ) -> Result<Self, String> {
        let routes = RouteTable::new(store.clone(), &config.gateway_routes);
        routes
            .reload()
            .await
            .map_err(|e| format!("cannot load the gateway routes: {e}"))?;
        let issuer = config
            .public_url
            .clone()
            .unwrap_or_else(|| "datastack".to_owned());
        Ok(Self {
            routes,
            ip_rules: IpRuleCache::new(store.clone()),
            limiter: Limiter::new(config, metrics.clone()).await?,
            spend: spend::SpendMeter::new(store.clone(), config.spend_warning_percent, metrics),
            refused: refused::RefusedAddresses::default(),
            signer: Signer::new(
                seed,
                config.assertion_ttl.as_secs(),
                issuer,
                config.assertion_binding,
            )?,
            upstreams: proxy::Upstreams::new(),
            tunnels: tunnels::Tunnels::default(),
            root_workspace: std::sync::OnceLock::new(),
        })
    }

    /// Sets the root workspace (once, at start, after the bootstrap).
    pub fn set_root_workspace(&self, root: WorkspaceId) {
        let _ = self.root_workspace.set(root);
    }

    /// The root workspace: it manages gateway routes and records what belongs to no
    /// workspace.
    pub fn root_workspace(&self) -> WorkspaceId {
        self.root_workspace
            .get()
            .cloned()
            .unwrap_or_else(|| WorkspaceId::from_trusted(String::new()))
    }

    /// Applies an invalidation to the edge caches. Returns whether the routes must be
    /// reloaded (which is async).
    pub fn invalidate(&self, inv: &Invalidation) -> bool {
        match inv {
            Invalidation::IpLists(ws) | Invalidation::Workspace(ws) => {
                self.ip_rules.invalidate(ws);
                false
            }
            Invalidation::Routes => true,
            Invalidation::All => {
                self.ip_rules.clear();
                true
            }
            _ => false,
        }
    }
}

/// Applies an invalidation to every cache of the node: credentials, edge rules, routes
/// and penalties.
pub async fn apply_invalidation(state: &AppState, inv: &Invalidation) {
    state.credentials.invalidate(inv);
    state.oauth.invalidate(inv);
    state.edge.tunnels.close_matching(inv);
    if state.edge.invalidate(inv)
        && let Err(e) = state.edge.routes.reload().await
    {
        tracing::warn!(error = %e, "cannot reload the gateway routes");
    }
    if let Invalidation::Penalty(key) = inv {
        state.edge.limiter.clear(key).await;
    }
    if matches!(inv, Invalidation::Issuer(_) | Invalidation::All)
        && let Err(e) = state.federation.reload().await
    {
        tracing::warn!(error = %e, "cannot reload the trusted issuers");
    }
}

/// The refusal of an address outside an API key's ranges.
pub const API_KEY_RANGES_DENIAL: &str = "this address is outside the API key's allowed IP ranges";

/// Why an address may not use a credential.
#[derive(Debug, Clone)]
pub enum IpRefusal {
    /// Outside the API key's own ranges.
    KeyRanges,
    /// Refused by the workspace's IP access lists.
    Lists(datastack_core::edge::IpDenial),
}

impl IpRefusal {
    /// The audit entry's detail of the refusal.
    pub fn detail(&self) -> serde_json::Value {
        match self {
            IpRefusal::KeyRanges => {
                serde_json::json!({ "ipAccess": "denied", "apiKeyRanges": true })
            }
            IpRefusal::Lists(denial) => {
                let list = match denial {
                    datastack_core::edge::IpDenial::Blocked(id) => Some(id.clone()),
                    _ => None,
                };
                serde_json::json!({ "ipAccess": "denied", "blockList": list })
            }
        }
    }

    /// The 403 of the refusal.
    pub fn error(&self) -> ApiError {
        match self {
            IpRefusal::KeyRanges => ApiError::IpNotAllowed(API_KEY_RANGES_DENIAL.to_owned()),
            IpRefusal::Lists(denial) => ApiError::IpNotAllowed(denial.explain().to_owned()),
        }
    }
}

/// Whether `ip` may use `identity`'s credential: an API key's own ranges apply whatever
/// the workspace's lists say; then the workspace's enabled lists, unless it suspended
/// their enforcement. The one rule of the IP access list stage, the fast path and
/// `POST /api/v1/auth/api-keys/verify`.
pub async fn ip_check(
    state: &AppState,
    identity: &Identity,
    ip: Option<std::net::IpAddr>,
) -> Result<Result<(), IpRefusal>, datastack_store::Error> {
    if identity.api_key.as_ref().is_some_and(|k| !k.admits(ip)) {
        return Ok(Err(IpRefusal::KeyRanges));
    }
    if identity.workspace.settings.ip_access_lists_suspended {
        return Ok(Ok(()));
    }
    Ok(state
        .edge
        .ip_rules
        .check(&identity.workspace.id, ip)
        .await?
        .map_err(IpRefusal::Lists))
}

/// The IP access list stage: a request with a valid credential must come from an address
/// [`ip_check`] admits.
pub async fn ip_lists_stage(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let identity = match req.extensions().get::<Authentication>() {
        Some(Authentication::Verified(identity)) => identity.clone(),
        _ => return next.run(req).await,
    };
    let ip = req.extensions().get::<ClientIp>().and_then(|c| c.0);
    match ip_check(&state, &identity, ip).await {
        Ok(Ok(())) => next.run(req).await,
        Ok(Err(refusal)) => {
            state.metrics.ip_denied();
            if let Some(audit) = req.extensions().get::<AuditContext>() {
                audit.set_detail(refusal.detail());
            }
            tracing::Span::current().record("decision", "ip_not_allowed");
            refusal.error().into_response()
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// Whether a route is subject to rate limits: every API call, forward-auth and proxied
/// traffic; not health, metrics and the public documents.
fn limited(path: &str) -> bool {
    !crate::pipeline::is_public(path)
}

/// The rate-limit stage.
pub async fn rate_limit_stage(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if !limited(req.uri().path()) {
        return next.run(req).await;
    }
    let config = &state.config;
    let buckets = match req.extensions().get::<Authentication>() {
        Some(Authentication::Verified(identity)) => credential_buckets(config, identity),
        _ => address_buckets(config, req.extensions().get::<ClientIp>().and_then(|c| c.0)),
    };
    let prechecked = req.extensions().get::<Prechecked>().map(|p| p.0.clone());
    let verdict = match (prechecked, req.extensions().get::<AddressChecked>()) {
        // The fast path charged the credential's buckets and handed the request over
        // with their verdict (a refusal): it is not charged twice.
        (Some(v), _) => v,
        // The authenticate stage already charged the address's bucket, before looking up
        // a credential this node did not know; a credential that turned out valid gets
        // its own buckets checked here.
        (None, Some(AddressChecked(v)))
            if !matches!(
                req.extensions().get::<Authentication>(),
                Some(Authentication::Verified(_))
            ) =>
        {
            v.clone()
        }
        _ => state.edge.limiter.check(&buckets).await,
    };
    if let Some(wait) = verdict.retry_after
        && !verdict.shared
        && !matches!(
            req.extensions().get::<Authentication>(),
            Some(Authentication::Verified(_))
        )
    {
        // The address's own bucket refused it: until it may send again, credentials this
        // node never verified are charged to it before they are looked up.
        let ip = req.extensions().get::<ClientIp>().and_then(|c| c.0);
        state.edge.refused.refused(address_network(ip), wait);
    }
    if !verdict.applies() {
        return next.run(req).await;
    }
    if verdict.allowed() {
        state.metrics.ratelimit_decision(verdict.policy, "allowed");
        let mut response = next.run(req).await;
        rate_limit_headers(response.headers_mut(), &verdict);
        return response;
    }
    state.metrics.ratelimit_decision(
        verdict.policy,
        if verdict.penalized {
            "penalized"
        } else {
            "limited"
        },
    );
    tracing::Span::current().record("decision", "rate_limited");
    let identity = match req.extensions().get::<Authentication>() {
        Some(Authentication::Verified(identity)) => Some(identity.clone()),
        _ => None,
    };
    if let Some(audit) = req.extensions().get::<AuditContext>() {
        audit.set_detail(serde_json::json!({
            "rateLimit": verdict.policy,
            "penalized": verdict.penalized,
        }));
        if let Some(flagged) = &verdict.flagged {
            record_flag(&state, audit, identity.as_deref(), flagged);
        }
    }
    let message = if verdict.penalized {
        "this client kept sending while rate-limited and is blocked for a while; wait for Retry-After"
    } else {
        "rate limit exceeded; retry after the time in Retry-After"
    };
    let mut response = ApiError::RateLimited(message.to_owned()).into_response();
    rate_limit_headers(response.headers_mut(), &verdict);
    response
}

/// The buckets of a request with a valid credential: its own (an API key's own limit
/// replaces the default per credential) and its workspace's.
pub fn credential_buckets(config: &Config, identity: &Identity) -> Vec<Bucket> {
    vec![
        Bucket {
            subject: Subject::Credential(identity.token.id.to_string()),
            per_minute: identity
                .api_key
                .as_ref()
                .and_then(|k| k.rate_limit)
                .unwrap_or(config.rate_limit_credential_per_minute),
        },
        Bucket {
            subject: Subject::Workspace(identity.workspace.id.to_string()),
            per_minute: config.rate_limit_workspace_per_minute,
        },
    ]
}

/// The verdict of a credential's buckets, taken by the fast path ([`crate::fast`]) before
/// it handed the request to the full pipeline: the rate-limit stage answers with it.
#[derive(Debug, Clone)]
pub struct Prechecked(pub Verdict);

/// The bucket of requests without a valid credential: per address (IPv6 per /64), and one
/// shared bucket for clients whose address cannot be known.
fn address_buckets(config: &Config, ip: Option<std::net::IpAddr>) -> Vec<Bucket> {
    vec![Bucket {
        subject: Subject::Ip(address_network(ip)),
        per_minute: config.rate_limit_ip_per_minute,
    }]
}

/// The network an address is counted as: its own for IPv4, its /64 for IPv6, and one
/// shared network for clients whose address cannot be known.
pub fn address_network(ip: Option<std::net::IpAddr>) -> std::net::IpAddr {
    match ip {
        Some(ip) => network_key(ip),
        None => std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
    }
}

/// The verdict of the per-address bucket, taken by the authenticate stage before it looks
/// up a credential this node has never verified (see [`check_address`]).
#[derive(Debug, Clone)]
pub struct AddressChecked(pub Verdict);

/// Credentials looked up per minute for an address its own bucket already refuses (under
/// a penalty or over its limit): enough for the valid users behind a shared address to
/// keep signing in, few enough that guessing costs the store next to nothing.
pub const LOOKUPS_WHILE_REFUSED_PER_MINUTE: u32 = 60;

/// Charges the per-address bucket of a request whose credential this node has never
/// verified, before the credential is looked up; the authenticate stage calls it only for
/// an address its bucket was refusing at its last check ([`refused::RefusedAddresses`]).
/// An address its bucket refuses (under a penalty or over its limit) may still have
/// [`LOOKUPS_WHILE_REFUSED_PER_MINUTE`] credentials a minute looked up, so a valid
/// credential from it still works; beyond that its requests get their 429 without costing
/// a store query. The rate-limit stage uses this verdict instead of charging the bucket
/// again. Returns the verdict and whether the lookup must be skipped.
pub async fn check_address(
    state: &AppState,
    ip: Option<std::net::IpAddr>,
) -> (AddressChecked, bool) {
    let verdict = state
        .edge
        .limiter
        .check(&address_buckets(&state.config, ip))
        .await;
    // A refusal by the bucket addresses share while the node tracks all it may is not
    // this address's doing: its credentials are still looked up.
    let refused = verdict.applies() && !verdict.allowed() && !verdict.shared;
    let skip = refused && {
        let subject = Subject::Lookup(address_network(ip));
        let budget = state
            .edge
            .limiter
            .check(&[Bucket {
                subject,
                per_minute: LOOKUPS_WHILE_REFUSED_PER_MINUTE,
            }])
            .await;
        !budget.allowed()
    };
    (AddressChecked(verdict), skip)
}

/// The address a per-address bucket counts: IPv4 as is, IPv6 by its /64 (one host
/// typically holds a whole /64, so single addresses would be free to rotate).
fn network_key(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip.to_canonical() {
        std::net::IpAddr::V6(v6) => std::net::IpAddr::V6(std::net::Ipv6Addr::from(
            u128::from(v6) & !((1u128 << 64) - 1),
        )),
        v4 => v4,
    }
}

/// `RateLimit-Policy`, `RateLimit` (draft-ietf-httpapi-ratelimit-headers) and, when
/// refused, `Retry-After`.
pub(crate) fn rate_limit_headers(headers: &mut HeaderMap, v: &Verdict) {
    use std::fmt::Write as _;
    // Both values written into one buffer and split: one allocation for the two headers.
    let mut buf = bytes::BytesMut::with_capacity(2 * (v.policy.len() + 32));
    let _ = write!(
        buf,
        "\"{}\";q={};w={}",
        v.policy,
        v.quota,
        ratelimit::WINDOW_SECONDS
    );
    let policy = buf.split().freeze();
    let _ = write!(buf, "\"{}\";r={};t={}", v.policy, v.remaining, v.reset);
    let state = buf.freeze();
    if let Ok(value) = HeaderValue::from_maybe_shared(policy) {
        headers.insert(HeaderName::from_static("ratelimit-policy"), value);
    }
    if let Ok(value) = HeaderValue::from_maybe_shared(state) {
        headers.insert(HeaderName::from_static("ratelimit"), value);
    }
    if let Some(wait) = v.retry_after {
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        headers.insert(
            axum::http::header::RETRY_AFTER,
            HeaderValue::from(seconds.max(1)),
        );
    }
}

/// Records a new abuse flag (audit entry and security event, in one transaction), in the
/// background so the refusal is not delayed.
pub(crate) fn record_flag(
    state: &AppState,
    audit: &AuditContext,
    identity: Option<&Identity>,
    flagged: &Flagged,
) {
    let workspace = match (&flagged.subject, identity) {
        (Subject::Ip(_), _) | (_, None) => state.edge.root_workspace(),
        (_, Some(i)) => i.workspace.id.clone(),
    };
    let now = Utc::now();
    let penalty = chrono::Duration::from_std(flagged.penalty).unwrap_or(chrono::Duration::zero());
    let flag = AbuseFlag {
        id: AbuseFlagId::generate(),
        workspace_id: workspace.clone(),
        subject_kind: flagged.subject.kind().to_owned(),
        subject: flagged.subject.value(),
        level: flagged.level,
        rejected: flagged.rejected,
        flagged_at: now,
        penalty_until: now + penalty,
        cleared_at: None,
        cleared_by: None,
    };
    let mut record =
        AuditRecord::system(workspace.clone(), "ratelimit.abuse_flagged", "abuse-flags");
    record.request_id = Some(audit.request_id());
    record.resource_id = Some(flag.id.to_string());
    record.status = 429;
    record.outcome = datastack_core::audit::Outcome::of_status(429);
    if let Some(i) = identity {
        record.principal_id = Some(i.principal.id.to_string());
        record.credential_id = Some(i.token.id.to_string());
    }
    let detail = serde_json::json!({
        "flagId": flag.id,
        "subjectKind": flag.subject_kind,
        "subject": flag.subject,
        "level": flag.level,
        "penaltySeconds": flagged.penalty.as_secs(),
        "rejected": flag.rejected,
    });
    record.detail = Some(detail.to_string());
    let event = audit.event(&workspace, "ratelimit.abuse_flagged", detail);
    let trail = Trail::of(record).with_event(event);
    tracing::warn!(
        subject_kind = %flag.subject_kind,
        level = flag.level,
        penalty_seconds = flagged.penalty.as_secs(),
        "flagged a client that kept sending while rate-limited"
    );
    state.metrics.security_event("ratelimit.abuse_flagged");
    let store = state.store.clone();
    tokio::spawn(async move {
        for attempt in 0..3u32 {
            match store.insert_abuse_flag(&flag, &trail).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "cannot record an abuse flag; retrying");
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
            }
        }
        tracing::error!("gave up recording an abuse flag");
    });
}

/// A request the edge lets through.
pub struct Allowed {
    /// Who.
    pub identity: Arc<Identity>,
    /// Through which route.
    pub route: Arc<ActiveRoute>,
    /// Acting with which scope.
    pub scope: Scope,
}

/// Why a path cannot be decided on.
pub enum Undecidable {
    /// No route covers it.
    NoRoute,
    /// The credential or scope is refused (or the path is unsafe).
    Refused(ApiError),
}

/// The gateway's and forward-auth's decision for `method` on `path` (without query).
pub fn decide(
    state: &AppState,
    extensions: &Extensions,
    headers: &HeaderMap,
    method: &str,
    path: &str,
    action: &str,
) -> Result<Allowed, Undecidable> {
    let audit = extensions.get::<AuditContext>();
    // One rule for every spelling: the path must be safe, and every reading an upstream
    // might make of it must fall under the route it matches as sent.
    let route = state
        .edge
        .routes
        .resolve(path)
        .map_err(|refusal| {
            Undecidable::Refused(ApiError::InvalidRequest(refusal.explain().into()))
        })?
        .ok_or(Undecidable::NoRoute)?;
    if let Some(audit) = audit {
        audit.set_action(action, route.spec.resource.as_str());
        audit.set_resource_id(&route.spec.path_prefix);
        audit.set_detail(serde_json::json!({ "route": route.spec.path_prefix, "method": method }));
    }
    let caller = authenticated_in(extensions, state).map_err(Undecidable::Refused)?;
    let identity = caller.identity;
    let required = route.spec.required_scope(method);
    let required_text = required.to_string();
    let named = headers
        .get(SCOPE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or(&required_text);
    let scope = crate::pipeline::authorize::decide_scope(
        state,
        audit,
        &identity,
        Some(named),
        required,
        || {
            serde_json::json!({
                "route": route.spec.path_prefix,
                "method": method,
                "requiredScope": required_text,
            })
        },
    )
    .map_err(Undecidable::Refused)?;
    Ok(Allowed {
        identity,
        route,
        scope,
    })
}

/// Charges an allowed request to its API key's spend (the route's price; nothing for
/// other credentials), or answers 402 when the key's limit for the period is reached.
pub async fn charge(
    state: &AppState,
    allowed: &Allowed,
    extensions: &Extensions,
) -> Result<Option<spend::Reservation>, ApiError> {
    if allowed.identity.api_key.is_none() {
        return Ok(None);
    }
    match state
        .edge
        .spend
        .reserve(
            &state.edge.limiter,
            &allowed.identity,
            allowed.route.spec.price_per_request,
        )
        .await
    {
        Ok(Ok(reservation)) => Ok(reservation),
        Ok(Err(exceeded)) => {
            if let Some(audit) = extensions.get::<AuditContext>() {
                audit.set_detail(serde_json::json!({
                    "route": allowed.route.spec.path_prefix,
                    "spendLimit": exceeded.limit,
                    "spendUsed": exceeded.used,
                    "resetsAt": exceeded.resets_at,
                }));
            }
            tracing::Span::current().record("decision", "spend_limit_exceeded");
            Err(spend_refusal(&exceeded))
        }
        Err(e) => Err(e.into()),
    }
}

/// The 402 of a key whose spend limit is reached.
pub fn spend_refusal(exceeded: &spend::Exceeded) -> ApiError {
    ApiError::SpendLimitExceeded {
        message: match exceeded.resets_at {
            Some(at) => format!(
                "the API key's spend limit of {} units for this period is reached; it resets at {}",
                exceeded.limit,
                at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            None => format!(
                "the API key's total spend limit of {} units is reached; raise the limit or use another key",
                exceeded.limit
            ),
        },
        resets_at: exceeded.resets_at,
    }
}

/// The identity headers of an allowed request, the signed assertion included.
///
/// With route binding (the default) every header but the request id is the same for all
/// requests of one credential through one route with one method, so they are rendered
/// (and the assertion signed) once and reused for half the assertion's lifetime: a request
/// then costs a cache lookup and reference counts, not a JWT and seven header values.
pub fn identity_headers(
    state: &AppState,
    allowed: &Allowed,
    request_id: &str,
    method: &str,
    path: &str,
) -> Result<Vec<(HeaderName, HeaderValue)>, ApiError> {
    let signer = &state.edge.signer;
    let request_id = HeaderValue::from_str(request_id)
        .map_err(|_| ApiError::Internal("unencodable identity header".into()))?;
    let rendered = if signer.binding == signer::Binding::Route {
        signer.rendered(&allowed.identity, &allowed.route, method, || {
            render_identity(state, allowed, None, method, None)
        })?
    } else {
        render_identity(
            state,
            allowed,
            Some(request_id.to_str().unwrap_or("")),
            method,
            Some(path),
        )?
    };
    let mut headers = Vec::with_capacity(rendered.len() + 1);
    headers.extend(rendered.iter().cloned());
    headers.push((
        HeaderName::from_static("x-datastack-request-id"),
        request_id,
    ));
    Ok(headers)
}

/// Renders the identity headers other than the request id, signing a new assertion (bound
/// to `request_id` and `path` with request binding).
fn render_identity(
    state: &AppState,
    allowed: &Allowed,
    request_id: Option<&str>,
    method: &str,
    path: Option<&str>,
) -> Result<signer::RenderedIdentity, ApiError> {
    let identity = &allowed.identity;
    let scopes = identity.token.scopes.to_strings().join(" ");
    let consent = identity.workspace.settings.data_retention_consent;
    let now = Signer::now();
    let signer = &state.edge.signer;
    let assertion = signer
        .sign(&Assertion {
            iss: &signer.issuer,
            aud: &allowed.route.spec.path_prefix,
            sub: identity.principal.id.as_str(),
            ws: identity.workspace.id.as_str(),
            cred: identity.token.id.as_str(),
            scope: &scopes,
            rid: request_id,
            consent,
            htm: method,
            htu: path,
            iat: now,
            exp: now + signer.ttl,
            jti: &uuid::Uuid::now_v7().simple().to_string(),
        })
        .map_err(|e| ApiError::Internal(format!("cannot sign the assertion: {e}")))?;
    let value = |s: &str| {
        HeaderValue::from_str(s)
            .map_err(|_| ApiError::Internal("unencodable identity header".into()))
    };
    Ok(std::sync::Arc::new([
        (
            HeaderName::from_static("x-datastack-principal"),
            value(identity.principal.id.as_str())?,
        ),
        (
            HeaderName::from_static("x-datastack-workspace"),
            value(identity.workspace.id.as_str())?,
        ),
        (
            HeaderName::from_static("x-datastack-scopes"),
            value(&scopes)?,
        ),
        (
            HeaderName::from_static("x-datastack-credential"),
            value(identity.token.id.as_str())?,
        ),
        (
            HeaderName::from_static("x-datastack-retention-consent"),
            HeaderValue::from_static(if consent { "true" } else { "false" }),
        ),
        (
            HeaderName::from_static("x-datastack-assertion"),
            value(&assertion)?,
        ),
    ]))
}
