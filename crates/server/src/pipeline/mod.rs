//! The request pipeline, one stage per module, composed in [`crate::app`] as one chain:
//! request id (span, access log, metrics) → panic guard → authenticate → [later: IP lists,
//! rate limit] → authorize (an extractor in each handler's signature) → handler.

/// Paths that probes, scrapers and anyone may read: health, readiness, metrics and the
/// public documents (`/openapi.json`, `/.well-known/…`). They need no credential, are not
/// rate-limited, and (when they exist) are not audited.
pub fn is_public(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics" | "/openapi.json")
        || path.starts_with("/.well-known/")
}

pub mod audit;
pub mod authenticate;
pub mod authorize;
pub mod deadline;
pub mod extract;
pub mod request_id;
