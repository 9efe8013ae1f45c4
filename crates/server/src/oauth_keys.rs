//! The keys that sign OAuth access tokens, rotated on a schedule.
//!
//! Time is cut into slots of `oauth_signing_key_rotation_seconds`; each slot has one
//! Ed25519 key, created (and published at `/.well-known/jwks.json`) at least
//! `oauth_signing_key_publish_ahead_seconds` before its slot begins, so that every
//! verifier that refreshes its key set in that time knows the key before the first token
//! it signs. A key signs from its slot's start (once it has been published that long),
//! and stays published until the last token it may have signed has expired (its slot's
//! end, plus the publish-ahead time in case the next key came late, plus the longest
//! access-token lifetime). Keys are created by whichever node needs them first (one per
//! slot, the store keeps one), and every node reloads them on a short tick.
//!
//! The private halves sit in the store sealed with AES-256-GCM (the `kid` as associated
//! data) under a key derived with HKDF from the audit key, which every node holds and the
//! database never does: a copy of the database alone cannot sign tokens.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use chrono::{DateTime, TimeZone as _, Utc};
use datastack_store::{Store, StoredSigningKey};
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::zeroize::Zeroizing;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// The longest access-token lifetime a client may have (a key stays published this long
/// after it last signed).
const MAX_ACCESS_TOKEN_SECONDS: i64 = 86_400;

/// How a node signs access tokens: with the rotating keys, or (rotation off) with its
/// assertion key.
pub struct KeyRing {
    rotation: Option<Duration>,
    publish_ahead: Duration,
    sealing: Zeroizing<[u8; 32]>,
    ring: RwLock<Arc<Ring>>,
}

/// The keys a node has loaded.
#[derive(Default)]
struct Ring {
    keys: Vec<Loaded>,
    /// The published key set: the assertion key and every loaded key.
    jwks: Option<String>,
}

struct Loaded {
    kid: String,
    key: Arc<EncodingKey>,
    created_at: DateTime<Utc>,
    signs_from: DateTime<Utc>,
}

impl KeyRing {
    /// A ring rotating every `rotation` (`None`: off), publishing keys `publish_ahead`
    /// before they sign, sealing them with a key derived from `audit_key`.
    pub fn new(
        rotation: Option<Duration>,
        publish_ahead: Duration,
        audit_key: &datastack_core::audit::AuditKey,
    ) -> Self {
        Self {
            rotation,
            publish_ahead,
            sealing: audit_key.derive("oauth signing keys"),
            ring: RwLock::new(Arc::new(Ring::default())),
        }
    }

    /// How often a node should call [`Self::refresh`].
    pub fn tick(&self) -> Option<Duration> {
        let rotation = self.rotation?;
        Some(
            (self.publish_ahead / 4)
                .min(rotation / 4)
                .clamp(Duration::from_millis(100), Duration::from_secs(60)),
        )
    }

    fn current(&self) -> Arc<Ring> {
        self.ring.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Creates the keys this slot and (when its time has come) the next need, deletes
    /// those no longer published, and loads the rest, with the assertion key's JWK set
    /// `assertion_jwks`.
    pub async fn refresh(
        &self,
        store: &Store,
        assertion_jwks: &str,
    ) -> Result<(), datastack_store::Error> {
        let Some(rotation) = self.rotation else {
            return Ok(());
        };
        let period = rotation.as_secs().max(1) as i64;
        let ahead = self.publish_ahead.as_secs() as i64;
        let now = Utc::now();
        let slot = now.timestamp().div_euclid(period);
        let mut wanted = vec![slot];
        if now.timestamp() >= (slot + 1) * period - ahead {
            wanted.push(slot + 1);
        }
        let stored = store.signing_keys(now).await?;
        for s in wanted {
            if !stored.iter().any(|k| k.slot == s) {
                let key = self.create(s, period, ahead, now);
                match key {
                    Ok(key) => {
                        store.insert_signing_key(&key).await?;
                    }
                    Err(e) => tracing::error!(error = %e, "cannot create an OAuth signing key"),
                }
            }
        }
        let stored = store.signing_keys(now).await?;
        let mut keys = Vec::with_capacity(stored.len());
        let mut jwks: JwkSet =
            serde_json::from_str(assertion_jwks).unwrap_or(JwkSet { keys: vec![] });
        for k in &stored {
            match self.open(k) {
                Ok(key) => {
                    if let Ok(jwk) = serde_json::from_str::<Jwk>(&k.public_jwk) {
                        jwks.keys.push(jwk);
                    }
                    keys.push(Loaded {
                        kid: k.kid.clone(),
                        key: Arc::new(key),
                        created_at: k.created_at,
                        signs_from: k.signs_from,
                    });
                }
                Err(e) => {
                    tracing::error!(kid = %k.kid, error = %e, "cannot open an OAuth signing key; is the audit key the one it was sealed with?");
                }
            }
        }
        let jwks = serde_json::to_string(&jwks).ok();
        *self.ring.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Ring { keys, jwks });
        Ok(())
    }

    /// A new key for `slot`, sealed.
    fn create(
        &self,
        slot: i64,
        period: i64,
        ahead: i64,
        now: DateTime<Utc>,
    ) -> Result<StoredSigningKey, String> {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::fill(seed.as_mut()).map_err(|e| format!("no randomness: {e}"))?;
        let signing = SigningKey::from_bytes(&seed);
        let kid = format!(
            "oauth-{}",
            hex::encode(&Sha256::digest(signing.verifying_key().to_bytes())[..8])
        );
        let encoding = encoding_key(&seed)?;
        let mut jwk = Jwk::from_encoding_key(&encoding, Algorithm::EdDSA)
            .map_err(|e| format!("cannot derive the public key: {e}"))?;
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        jwk.common.key_algorithm = Some(KeyAlgorithm::EdDSA);
        let public_jwk = serde_json::to_string(&jwk).map_err(|e| e.to_string())?;
        let slot_start = Utc
            .timestamp_opt(slot * period, 0)
            .single()
            .ok_or("a slot out of range")?;
        let published_until =
            slot_start + chrono::Duration::seconds(period + ahead + MAX_ACCESS_TOKEN_SECONDS + 300);
        Ok(StoredSigningKey {
            slot,
            sealed_private: self.seal(&kid, seed.as_ref())?,
            kid,
            public_jwk,
            created_at: now,
            signs_from: slot_start,
            published_until,
        })
    }

    fn cipher(&self) -> Result<Aes256Gcm, String> {
        Aes256Gcm::new_from_slice(self.sealing.as_ref()).map_err(|e| e.to_string())
    }

    fn seal(&self, kid: &str, seed: &[u8]) -> Result<String, String> {
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce).map_err(|e| format!("no randomness: {e}"))?;
        let sealed = self
            .cipher()?
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: seed,
                    aad: kid.as_bytes(),
                },
            )
            .map_err(|_| "cannot seal the key".to_owned())?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(base64::engine::general_purpose::STANDARD.encode(out))
    }

    fn open(&self, k: &StoredSigningKey) -> Result<EncodingKey, String> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&k.sealed_private)
            .map_err(|_| "not base64".to_owned())?;
        if bytes.len() < 12 {
            return Err("too short".into());
        }
        let (nonce, sealed) = bytes.split_at(12);
        let seed = Zeroizing::new(
            self.cipher()?
                .decrypt(
                    Nonce::from_slice(nonce),
                    Payload {
                        msg: sealed,
                        aad: k.kid.as_bytes(),
                    },
                )
                .map_err(|_| "the seal does not open".to_owned())?,
        );
        let seed: &[u8; 32] = seed
            .as_slice()
            .try_into()
            .map_err(|_| "not a 32-byte seed".to_owned())?;
        encoding_key(seed)
    }

    /// The key access tokens are signed with now: the newest whose slot has begun and
    /// that has been published for the publish-ahead time; else (a key created late) the
    /// newest already signing, else the first one. `None` when rotation is off (or no key
    /// could be loaded): the assertion key signs.
    fn signing_key(&self) -> Option<(String, Arc<EncodingKey>)> {
        let ring = self.current();
        let now = Utc::now();
        let ahead = chrono::Duration::from_std(self.publish_ahead).unwrap_or_default();
        let started: Vec<&Loaded> = ring.keys.iter().filter(|k| k.signs_from <= now).collect();
        let chosen = started
            .iter()
            .rev()
            .find(|k| k.created_at + ahead <= now)
            .or_else(|| started.first())
            .copied()
            .or_else(|| ring.keys.first())?;
        Some((chosen.kid.clone(), chosen.key.clone()))
    }

    /// Signs an access token (RFC 9068: `typ` `at+jwt`) with the current key; `None` when
    /// the assertion key must sign it.
    pub fn sign<T: Serialize>(&self, claims: &T) -> Option<Result<String, String>> {
        let (kid, key) = self.signing_key()?;
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid);
        header.typ = Some("at+jwt".to_owned());
        Some(jsonwebtoken::encode(&header, claims, &key).map_err(|e| e.to_string()))
    }

    /// The published key set (the assertion key and the rotating keys); `None` when
    /// rotation is off.
    pub fn jwks(&self) -> Option<String> {
        self.current().jwks.clone()
    }
}

/// The signing key of a seed, in the PKCS#8 form jsonwebtoken reads.
fn encoding_key(seed: &[u8; 32]) -> Result<EncodingKey, String> {
    let der = ed25519_dalek::pkcs8::KeypairBytes {
        secret_key: *seed,
        public_key: None,
    }
    .to_pkcs8_der()
    .map_err(|e| format!("cannot encode the key: {e}"))?;
    Ok(EncodingKey::from_ed_der(der.as_bytes()))
}
