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

/// A signed assertion kept for reuse, and until when it may be reused.
struct Cached {
    value: axum::http::HeaderValue,
    reuse_until: std::time::Instant,
}

/// Signs assertions and publishes the public key.
pub struct Signer {
    /// Route-bound assertions, by what they attest.
    cache: quick_cache::sync::Cache<String, std::sync::Arc<Cached>>,
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
            cache: quick_cache::sync::Cache::new(100_000),
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

    /// The assertion for `claims` as a header value. With route binding, an assertion
    /// signed for the same claims (all but the times and `jti`) less than half its
    /// lifetime ago is reused.
    pub fn assertion(&self, claims: &Assertion<'_>) -> Result<axum::http::HeaderValue, String> {
        let encode = |claims: &Assertion<'_>| {
            let jwt = self.sign(claims)?;
            axum::http::HeaderValue::from_str(&jwt).map_err(|e| e.to_string())
        };
        if self.binding == Binding::Request {
            return encode(claims);
        }
        let key = format!(
            "{}\n{}\n{}\n{}\n{}\n{}\n{}",
            claims.cred,
            claims.sub,
            claims.ws,
            claims.scope,
            claims.aud,
            claims.htm,
            claims.consent
        );
        let now = std::time::Instant::now();
        if let Some(c) = self.cache.get(&key).filter(|c| c.reuse_until > now) {
            return Ok(c.value.clone());
        }
        let value = encode(claims)?;
        self.cache.insert(
            key,
            std::sync::Arc::new(Cached {
                value: value.clone(),
                reuse_until: now + std::time::Duration::from_secs(self.ttl / 2),
            }),
        );
        Ok(value)
    }
}
