//! The authenticate stage: resolves the client address and the bearer credential, if any,
//! and records the outcome in the request's extensions. It refuses nothing by itself:
//! whether a route needs a credential is decided by the extractor in its handler's
//! signature ([`super::authorize`]), and later stages (rate limits) read the outcome too.
//! From an address its rate-limit bucket is refusing (too many failed authentications, or
//! an abuse penalty), a credential the node has never verified first charges that bucket
//! ([`crate::edge::check_address`]), so that guessing credentials costs no store query once
//! the address is refused; the rate-limit stage then answers with that verdict. Other
//! addresses are looked up at once and charged only when the credential is refused.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use secrecy::SecretString;

use crate::audit::AuditContext;
use crate::credentials::{Identity, Rejection, Screened};
use crate::edge::client_ip::ClientIp;
use crate::error::ApiError;
use crate::state::AppState;

/// Resolves the client address of `req` (once per request).
pub fn resolve_client_ip(state: &AppState, req: &Request) -> ClientIp {
    if let Some(ip) = req.extensions().get::<ClientIp>() {
        return *ip;
    }
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    ClientIp(crate::edge::client_ip::resolve(
        peer,
        req.headers(),
        &state.config.trusted_proxies,
        state.config.client_ip_header,
    ))
}

/// What the request proved about its caller.
#[derive(Debug, Clone)]
pub enum Authentication {
    /// No `Authorization` header.
    Anonymous,
    /// An `Authorization` header that is not `Bearer <credential>`.
    MalformedHeader,
    /// A bearer credential that was refused (with its identity when it exists).
    Rejected(Rejection, Option<Arc<Identity>>),
    /// A verified credential.
    Verified(Arc<Identity>),
}

/// The middleware.
pub async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    // Probes, scrapers and public documents need no credential: none is looked up (these
    // paths are not rate-limited, so a lookup here would be an unlimited store query).
    if super::is_public(req.uri().path()) {
        return next.run(req).await;
    }
    let client = resolve_client_ip(&state, &req);
    let ip = client.0;
    req.extensions_mut().insert(client);
    let outcome = match req.headers().get(AUTHORIZATION) {
        None => Authentication::Anonymous,
        Some(value) => match bearer(value.as_bytes()) {
            None => Authentication::MalformedHeader,
            Some(secret) => {
                // A credential this node never verified costs a store query: from an
                // address already refused (penalty, limit) the address is charged first
                // and gets only a small budget of lookups, so a flood of unknown
                // credentials is refused without querying the store. The cheap check of
                // the address comes first: the common path parses the credential once.
                let skip = if state
                    .edge
                    .refused
                    .refusing(crate::edge::address_network(ip))
                    && state.credentials.screen(&secret) == Screened::New
                {
                    let (checked, skip) = crate::edge::check_address(&state, ip).await;
                    req.extensions_mut().insert(checked);
                    skip
                } else {
                    false
                };
                if skip {
                    state.metrics.lookup_skipped();
                    // Not looked up, so treated as unknown; the rate-limit stage answers
                    // 429 with the verdict taken above before anything reads this.
                    Authentication::Rejected(Rejection::Unknown, None)
                } else {
                    match state.credentials.verify(&secret, ip).await {
                        Ok(Ok(identity)) => Authentication::Verified(identity),
                        Ok(Err((rejection, identity))) => {
                            Authentication::Rejected(rejection, identity)
                        }
                        Err(e) => return ApiError::from(e.0).into_response(),
                    }
                }
            }
        },
    };
    if let Some(audit) = req.extensions().get::<AuditContext>() {
        match &outcome {
            Authentication::Verified(identity) | Authentication::Rejected(_, Some(identity)) => {
                audit.set_identity(identity);
            }
            _ => {}
        }
    }
    req.extensions_mut().insert(outcome);
    next.run(req).await
}

/// Extracts the credential of `Bearer <credential>` (scheme case-insensitive, RFC 6750).
pub(crate) fn bearer(value: &[u8]) -> Option<SecretString> {
    let value = std::str::from_utf8(value).ok()?;
    let (scheme, credential) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let credential = credential.trim();
    if credential.is_empty() || credential.contains(' ') {
        return None;
    }
    Some(SecretString::from(credential.to_owned()))
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    #[test]
    fn bearer_header_parsing() {
        let ok = super::bearer(b"Bearer abc").expect("bearer");
        assert_eq!(ok.expose_secret(), "abc");
        assert!(super::bearer(b"bearer abc").is_some());
        assert!(super::bearer(b"Basic abc").is_none());
        assert!(super::bearer(b"Bearer").is_none());
        assert!(super::bearer(b"Bearer ").is_none());
        assert!(super::bearer(b"Bearer a b").is_none());
        assert!(super::bearer(&[0xff, 0xfe]).is_none());
    }
}
