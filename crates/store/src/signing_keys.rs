//! The keys that sign OAuth access tokens (their private halves sealed; see the server's
//! key ring).

use chrono::{DateTime, Utc};

use crate::{Result, Store, with_pool};

/// A signing key as stored: the private half sealed, never in plaintext.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredSigningKey {
    /// Its rotation slot (one key per slot).
    pub slot: i64,
    /// Its `kid`.
    pub kid: String,
    /// Its public JWK, as JSON.
    pub public_jwk: String,
    /// Its private key, sealed (nonce and AES-256-GCM ciphertext, base64).
    pub sealed_private: String,
    /// When it was created (and published).
    pub created_at: DateTime<Utc>,
    /// When it may start signing.
    pub signs_from: DateTime<Utc>,
    /// When it is no longer published (the last token it may have signed has expired).
    pub published_until: DateTime<Utc>,
}

impl Store {
    /// Stores a key for its slot, unless the slot has one already (`false`).
    pub async fn insert_signing_key(&self, key: &StoredSigningKey) -> Result<bool> {
        with_pool!(self, pool => {
            Ok(sqlx::query(
                "INSERT INTO oauth_signing_keys (slot, kid, public_jwk, sealed_private, created_at, \
                 signs_from, published_until) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (slot) DO NOTHING",
            )
            .bind(key.slot)
            .bind(&key.kid)
            .bind(&key.public_jwk)
            .bind(&key.sealed_private)
            .bind(key.created_at)
            .bind(key.signs_from)
            .bind(key.published_until)
            .execute(pool)
            .await?
            .rows_affected()
                == 1)
        })
    }

    /// The keys still published at `now`, oldest slot first; deletes the others.
    pub async fn signing_keys(&self, now: DateTime<Utc>) -> Result<Vec<StoredSigningKey>> {
        with_pool!(self, pool => {
            sqlx::query("DELETE FROM oauth_signing_keys WHERE published_until <= $1")
                .bind(now)
                .execute(pool)
                .await?;
            Ok(sqlx::query_as(
                "SELECT slot, kid, public_jwk, sealed_private, created_at, signs_from, published_until \
                 FROM oauth_signing_keys ORDER BY slot",
            )
            .fetch_all(pool)
            .await?)
        })
    }
}
