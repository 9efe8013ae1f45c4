//! The authorize stage, as extractors: a handler's signature says what it requires.
//!
//! `Authorized<ManageTokens>` yields the caller's identity only when the request carries a
//! valid credential and an `x-datastack-scope` that is granted to it and covers
//! `manage:tokens`, and the owner's role allows `manage:tokens`. `Authenticated` requires
//! a valid credential and no scope (for `/api/v1/me`).

use std::marker::PhantomData;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use datastack_core::authz;
use datastack_core::scope::{Resource, Scope};

use crate::audit::AuditContext;
use crate::credentials::Identity;
use crate::edge::client_ip::ClientIp;
use crate::error::ApiError;
use crate::pipeline::authenticate::Authentication;
use crate::state::AppState;

/// The header naming the scope a call acts with.
pub const SCOPE_HEADER: &str = "x-datastack-scope";

/// A marker type naming the scope an operation requires.
pub trait RequiredScope: Send + Sync + 'static {
    /// The scope.
    const SCOPE: Scope;
}

macro_rules! required_scopes {
    ($($name:ident = $access:ident $resource:ident;)+) => {
        $(
            #[doc = concat!("Requires `", stringify!($access), ":", stringify!($resource), "`.")]
            pub struct $name;
            impl RequiredScope for $name {
                const SCOPE: Scope = Scope::$access(Resource::$resource);
            }
        )+
    };
}

required_scopes! {
    ReadTokens = read Tokens;
    ManageTokens = manage Tokens;
    ReadApiKeys = read ApiKeys;
    ManageApiKeys = manage ApiKeys;
    ReadOauthClients = read OauthClients;
    ManageOauthClients = manage OauthClients;
    ReadUsers = read Users;
    ManageUsers = manage Users;
    ReadWorkspaces = read Workspaces;
    ManageWorkspaces = manage Workspaces;
    ReadAudit = read Audit;
    ReadGateway = read Gateway;
    ManageGateway = manage Gateway;
    ReadIpLists = read IpAccessLists;
    ManageIpLists = manage IpAccessLists;
    ReadWebhooks = read Webhooks;
    ManageWebhooks = manage Webhooks;
}

/// A caller with a valid credential, and the client address.
pub struct Authenticated {
    /// Who is calling, with which credential (shared with the cache: cloning is cheap).
    pub identity: Arc<Identity>,
    /// From where.
    pub client_ip: ClientIp,
}

/// A caller allowed to perform an operation requiring `S::SCOPE`.
pub struct Authorized<S: RequiredScope> {
    /// Who is calling, with which credential (shared with the cache: cloning is cheap).
    pub identity: Arc<Identity>,
    /// The scope the caller acts with (from `x-datastack-scope`).
    pub acting_scope: Scope,
    _required: PhantomData<S>,
}

fn authenticated(parts: &Parts, state: &AppState) -> Result<Authenticated, ApiError> {
    authenticated_in(&parts.extensions, state)
}

/// The caller of a request with these extensions, or the 401 to answer.
pub fn authenticated_in(
    extensions: &axum::http::Extensions,
    state: &AppState,
) -> Result<Authenticated, ApiError> {
    let client_ip = extensions
        .get::<ClientIp>()
        .copied()
        .unwrap_or(ClientIp(None));
    let outcome = extensions.get::<Authentication>();
    let span = tracing::Span::current();
    match outcome {
        Some(Authentication::Verified(identity)) => {
            span.record("principal", identity.principal.id.as_str());
            Ok(Authenticated {
                identity: identity.clone(),
                client_ip,
            })
        }
        Some(Authentication::Rejected(rejection, _)) => {
            state.metrics.auth_decision("invalid_token");
            span.record("decision", rejection.as_str());
            Err(ApiError::InvalidToken)
        }
        Some(Authentication::MalformedHeader) | Some(Authentication::Anonymous) | None => {
            state.metrics.auth_decision("unauthenticated");
            span.record("decision", "unauthenticated");
            Err(ApiError::Unauthenticated)
        }
    }
}

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = authenticated(parts, state)?;
        state.metrics.auth_decision("allowed");
        tracing::Span::current().record("decision", "allowed");
        Ok(caller)
    }
}

impl<S: RequiredScope> FromRequestParts<AppState> for Authorized<S> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Authenticated { identity, .. } = authenticated(parts, state)?;
        let named = parts
            .headers
            .get(SCOPE_HEADER)
            .and_then(|v| v.to_str().ok());
        let acting_scope = decide_scope(
            state,
            parts.extensions.get::<AuditContext>(),
            &identity,
            named,
            S::SCOPE,
            || serde_json::json!({ "requiredScope": S::SCOPE.to_string() }),
        )?;
        Ok(Authorized {
            identity,
            acting_scope,
            _required: PhantomData,
        })
    }
}

/// Decides whether `identity` may act with the scope `named` (the `x-datastack-scope`
/// header) on an operation that requires `required`, and records the decision the same
/// way for the API and the edge: the acting scope in the audit entry (a refused one only
/// if it is a well-formed scope: the header could hold anything), `refused_detail` as the
/// entry's detail on a refusal, the metric and the span's `decision`.
pub(crate) fn decide_scope(
    state: &AppState,
    audit: Option<&AuditContext>,
    identity: &Identity,
    named: Option<&str>,
    required: Scope,
    refused_detail: impl FnOnce() -> serde_json::Value,
) -> Result<Scope, ApiError> {
    let span = tracing::Span::current();
    match authz::decide(
        named,
        required,
        &identity.token.scopes,
        identity.principal.role,
    ) {
        Ok(scope) => {
            if let Some(audit) = audit {
                audit.set_scope(scope);
            }
            state.metrics.auth_decision("allowed");
            span.record("decision", "allowed");
            Ok(scope)
        }
        Err(denial) => {
            if let Some(audit) = audit {
                if let Some(named) = named.and_then(|n| n.parse::<Scope>().ok()) {
                    audit.set_scope(named);
                }
                audit.set_detail(refused_detail());
            }
            state.metrics.auth_decision("insufficient_scope");
            span.record("decision", "insufficient_scope");
            Err(ApiError::InsufficientScope {
                required,
                message: denial.explain(required),
            })
        }
    }
}
