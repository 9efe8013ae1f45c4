//! The identity assertion: a short-lived JWT (EdDSA over Ed25519) that datastack adds to
//! every request it lets through, so an upstream can check that the identity headers came
//! from datastack and were not forged by the client or altered on the way. Upstreams fetch
//! the public key from `/.well-known/jwks.json`.
//!
//! The key is a 32-byte Ed25519 seed: `signing_key` (hex) in the configuration, or the file
//! `signing_key_file` (default `<data_dir>/signing.key`, created on first start, mode
//! 0600). Every node of a cluster must use the same key.

use std::time::{SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// The claims of an assertion.
#[derive(Debug, Serialize)]
pub struct Assertion<'a> {
    /// The issuer (`public_url`, or `datastack`).
    pub iss: &'a str,
    /// The audience: the route's path prefix.
    pub aud: &'a str,
    /// The principal.
    pub sub: &'a str,
    /// The principal's workspace.
    pub ws: &'a str,
    /// The credential's id.
    pub cred: &'a str,
    /// The credential's scopes, space-separated.
    pub scope: &'a str,
    /// The request id (`assertion_binding = "request"` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rid: Option<&'a str>,
    /// The workspace's data-retention consent.
    pub consent: bool,
    /// The request's method.
    pub htm: &'a str,
    /// The request's path without query (`assertion_binding = "request"` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub htu: Option<&'a str>,
    /// Issued at (Unix seconds).
    pub iat: u64,
    /// Expires at.
    pub exp: u64,
    /// A unique id for this assertion.
    pub jti: &'a str,
}

/// What one assertion is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Binding {
    /// Credential, principal, workspace, scopes, route and method: one assertion serves
    /// every such request for half its lifetime, so signing is off the hot path.
    #[default]
    Route,
    /// The above plus the request id and path: signed for every request.
    Request,
}

/// The identity headers of one credential through one route with one method, all but
/// the request id, rendered once (see [`Signer::rendered`]).
pub type RenderedIdentity = std::sync::Arc<[(axum::http::HeaderName, axum::http::HeaderValue); 6]>;

/// What [`Signer::rendered`] looks entries up by: the addresses of the identity and route
/// the entry holds, and the method. An entry keeps its identity and route alive, so no
/// other identity or route can have their address while it exists: equal addresses mean
/// the same identity and route. A credential that changes in any way (revoked, scopes,
/// owner, workspace settings) is a new identity object after its invalidation, so its
/// entries are never found again.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RenderedKey {
    identity: usize,
    route: usize,
    method: axum::http::Method,
}

/// Rendered headers kept for reuse, and until when they may be reused.
struct Rendered {
    headers: RenderedIdentity,
    reuse_until: std::time::Instant,
    _identity: std::sync::Arc<crate::credentials::Identity>,
    _route: std::sync::Arc<super::routes::ActiveRoute>,
}

/// How many rendered header sets a node keeps (each holds its identity alive).
const RENDERED_CAPACITY: usize = 10_000;

/// Signs assertions and publishes the public key.
pub struct Signer {
    /// Route-bound identity headers, by identity, route and method.
    rendered: quick_cache::sync::Cache<RenderedKey, std::sync::Arc<Rendered>>,
    /// What an assertion is bound to.
    pub binding: Binding,
    key: EncodingKey,
    header: Header,
    jwks: String,
    kid: String,
    /// Seconds an assertion stays valid.
    pub ttl: u64,
    /// The `iss` claim.
    pub issuer: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("kid", &self.kid).finish()
    }
}

impl Signer {
    /// A signer over a 32-byte seed.
    pub fn new(
        seed: &[u8; 32],
        ttl: u64,
        issuer: String,
        binding: Binding,
    ) -> Result<Self, String> {
        let signing = SigningKey::from_bytes(seed);
        let public = signing.verifying_key().to_bytes();
        let kid = hex::encode(&Sha256::digest(public)[..8]);
        // PKCS#8 v1 (the private key alone), the form jsonwebtoken reads.
        let der = ed25519_dalek::pkcs8::KeypairBytes {
            secret_key: signing.to_bytes(),
            public_key: None,
        }
        .to_pkcs8_der()
        .map_err(|e| format!("cannot encode the signing key: {e}"))?;
        let key = EncodingKey::from_ed_der(der.as_bytes());
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::EdDSA)
            .map_err(|e| format!("cannot derive the public key: {e}"))?;
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        jwk.common.key_algorithm = Some(KeyAlgorithm::EdDSA);
        let jwks = serde_json::to_string(&JwkSet { keys: vec![jwk] })
            .map_err(|e| format!("cannot encode the JWKS: {e}"))?;
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.clone());
        header.typ = Some("datastack-assertion+jwt".to_owned());
        Ok(Self {
            rendered: quick_cache::sync::Cache::new(RENDERED_CAPACITY),
            binding,
            key,
            header,
            jwks,
            kid,
            ttl,
            issuer,
        })
    }

    /// The key set, as served at `/.well-known/jwks.json`.
    pub fn jwks(&self) -> &str {
        &self.jwks
    }

    /// Now, in Unix seconds.
    pub fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    /// Signs `claims`.
    pub fn sign(&self, claims: &Assertion<'_>) -> Result<String, String> {
        jsonwebtoken::encode(&self.header, claims, &self.key).map_err(|e| e.to_string())
    }

    /// Signs an OAuth access token (RFC 9068: `typ` `at+jwt`, so that neither kind of
    /// token signed with this key can pass for the other).
    pub fn sign_access_token<T: Serialize>(&self, claims: &T) -> Result<String, String> {
        let mut header = self.header.clone();
        header.typ = Some("at+jwt".to_owned());
        jsonwebtoken::encode(&header, claims, &self.key).map_err(|e| e.to_string())
    }

    /// The route-bound identity headers of `identity` through `route` with `method`:
    /// rendered by `render` at most once per half the assertion's lifetime.
    pub fn rendered<E>(
        &self,
        identity: &std::sync::Arc<crate::credentials::Identity>,
        route: &std::sync::Arc<super::routes::ActiveRoute>,
        method: &str,
        render: impl FnOnce() -> Result<RenderedIdentity, E>,
    ) -> Result<RenderedIdentity, E> {
        let Ok(method_key) = axum::http::Method::from_bytes(method.as_bytes()) else {
            return render();
        };
        let key = RenderedKey {
            identity: std::sync::Arc::as_ptr(identity) as usize,
            route: std::sync::Arc::as_ptr(route) as usize,
            method: method_key,
        };
        let now = std::time::Instant::now();
        if let Some(r) = self.rendered.get(&key).filter(|r| r.reuse_until > now) {
            return Ok(r.headers.clone());
        }
        let headers = render()?;
        self.rendered.insert(
            key,
            std::sync::Arc::new(Rendered {
                headers: headers.clone(),
                reuse_until: now + std::time::Duration::from_secs(self.ttl / 2),
                _identity: identity.clone(),
                _route: route.clone(),
            }),
        );
        Ok(headers)
    }
}
