//! Scoped API keys (`read:api-keys` / `manage:api-keys`): create, list, get, update,
//! revoke, rotate, usage and verify.

use chrono::{DateTime, Utc};
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize};

use crate::client::{Auth, Client, append_query, decode};
use crate::error::Result;
use crate::types::Page;

const READ_API_KEYS: &str = "read:api-keys";
const MANAGE_API_KEYS: &str = "manage:api-keys";

/// A spend limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendLimit {
    /// Units per period.
    pub units: u64,
    /// `day`, `month` or `total`.
    pub period: String,
}

/// A rotation policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RotationPolicy {
    /// Rotate every this many days.
    pub interval_days: u32,
}

/// One secret of a key: the current one, or the previous during a rotation's overlap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeySecret {
    /// Its last four characters.
    pub last_four: String,
    /// Whether it is the current secret.
    pub current: bool,
    /// When it was issued (the current one).
    pub created_at: Option<DateTime<Utc>>,
    /// When it stops working.
    pub expires_at: Option<DateTime<Utc>>,
}

/// An API key as listed: never its secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiKey {
    /// `key_…`.
    pub id: String,
    /// Its name.
    pub name: String,
    /// `dkey`.
    pub prefix: String,
    /// The current secret's last four characters.
    pub last_four: String,
    /// `active`, `rotation_due`, `expired` or `revoked`.
    pub status: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Who it acts for.
    pub owner_id: String,
    /// Who created it.
    pub created_by: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Expiry.
    pub expires_at: Option<DateTime<Utc>>,
    /// Revocation time.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Last use.
    pub last_used_at: Option<DateTime<Utc>>,
    /// Address of the last use.
    pub last_used_ip: Option<String>,
    /// Requests per minute; `None`: the server's default.
    pub rate_limit: Option<u32>,
    /// The spend limit.
    pub spend_limit: Option<SpendLimit>,
    /// Allowed client ranges; `None`: anywhere.
    pub allowed_ip_ranges: Option<Vec<String>>,
    /// Metadata.
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// The rotation policy.
    pub rotation_policy: Option<RotationPolicy>,
    /// When the current secret was issued.
    pub rotated_at: DateTime<Utc>,
    /// When the next rotation is due.
    pub rotation_due_at: Option<DateTime<Utc>>,
    /// The current secret and, during an overlap, the previous one.
    #[serde(default)]
    pub secrets: Vec<KeySecret>,
}

/// A created or rotated key, with its secret (shown once).
#[derive(Debug)]
pub struct CreatedApiKey {
    /// The secret, `dkey…`.
    pub key: SecretString,
    /// The key's details.
    pub details: ApiKey,
}

impl<'de> Deserialize<'de> for CreatedApiKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Wire {
            key: String,
            #[serde(flatten)]
            details: ApiKey,
        }
        let wire = Wire::deserialize(deserializer)?;
        Ok(Self {
            key: SecretString::from(wire.key),
            details: wire.details,
        })
    }
}

/// A key to create.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateApiKey {
    /// What it is for.
    pub name: String,
    /// Scopes (at least one).
    pub scopes: Vec<String>,
    /// Lifetime in days.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in_days: Option<u32>,
    /// Requests per minute.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<u32>,
    /// Spend limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spend_limit: Option<SpendLimit>,
    /// Allowed client ranges (CIDRs or addresses).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_ip_ranges: Option<Vec<String>>,
    /// Metadata (a JSON object).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// Rotation policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotation_policy: Option<RotationPolicy>,
    /// The owner: a service principal (admins), default the caller.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner_id: Option<String>,
}

/// Changes to a key. `None` leaves a field; `Some(None)` clears a limit, the ranges or
/// the policy.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateApiKey {
    /// A new name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A new rate limit, or `Some(None)` for the server default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<Option<u32>>,
    /// A new spend limit, or `Some(None)` for none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spend_limit: Option<Option<SpendLimit>>,
    /// New ranges, or `Some(None)` for anywhere.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_ip_ranges: Option<Option<Vec<String>>>,
    /// New metadata.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// A new policy, or `Some(None)` for none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotation_policy: Option<Option<RotationPolicy>>,
}

/// Which keys to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListApiKeys {
    /// One owner's keys.
    pub owner_id: Option<String>,
    /// `active`, `rotation_due`, `expired` or `revoked`.
    pub status: Option<String>,
    /// Page size.
    pub limit: Option<u32>,
    /// Cursor.
    pub cursor: Option<String>,
}

/// A key's usage in its current period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyUsage {
    /// The key.
    pub key_id: String,
    /// `day`, `month` or `total`.
    pub period: String,
    /// The period's start.
    pub period_start: DateTime<Utc>,
    /// Its end; `None` for `total`.
    pub period_end: Option<DateTime<Utc>>,
    /// Units used.
    pub used: i64,
    /// The limit.
    pub limit: Option<u64>,
    /// Units left.
    pub remaining: Option<u64>,
}

/// A key to check.
#[derive(Debug, Clone, Default)]
pub struct VerifyApiKey {
    /// The key's secret.
    pub key: Option<SecretString>,
    /// A scope it must hold.
    pub scope: Option<String>,
    /// The address it was presented from.
    pub ip: Option<String>,
    /// Units to charge.
    pub cost: Option<u64>,
}

/// What is left of a key's limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Remaining {
    /// Requests left in the window.
    pub rate_limit: Option<u32>,
    /// Spend units left.
    pub spend: Option<u64>,
}

/// The verdict on a key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyVerdict {
    /// Whether it may be used.
    pub valid: bool,
    /// `VALID`, `NOT_FOUND`, `EXPIRED`, `REVOKED`, `INSUFFICIENT_SCOPE`,
    /// `IP_NOT_ALLOWED`, `RATE_LIMITED` or `SPEND_LIMIT_EXCEEDED`.
    pub code: String,
    /// The key.
    pub key_id: Option<String>,
    /// Who it acts for.
    pub owner: Option<String>,
    /// Its name.
    pub name: Option<String>,
    /// Its scopes.
    pub scopes: Option<Vec<String>>,
    /// Its metadata.
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// What is left.
    pub remaining: Option<Remaining>,
    /// Its expiry.
    pub expires_at: Option<DateTime<Utc>>,
    /// When a spent period resets.
    pub resets_at: Option<DateTime<Utc>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct VerifyWire<'a> {
    key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ip: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cost: Option<u64>,
}

impl Client {
    /// `POST /api/v1/auth/api-keys` (`manage:api-keys`): the answer holds the secret,
    /// which the server never shows again.
    pub async fn create_api_key(&self, request: &CreateApiKey) -> Result<CreatedApiKey> {
        let url = self.url(&["api", "v1", "auth", "api-keys"]);
        self.post_json(url, MANAGE_API_KEYS, request).await
    }

    /// `GET /api/v1/auth/api-keys` (`read:api-keys`): one page of keys.
    pub async fn list_api_keys(&self, request: ListApiKeys) -> Result<Page<ApiKey>> {
        let mut url = self.url(&["api", "v1", "auth", "api-keys"]);
        append_query(
            &mut url,
            &[
                ("limit", request.limit.map(|l| l.to_string())),
                ("cursor", request.cursor),
                ("ownerId", request.owner_id),
                ("status", request.status),
            ],
        );
        decode(self.get(url, READ_API_KEYS).await?).await
    }

    /// `GET /api/v1/auth/api-keys/{id}` (`read:api-keys`).
    pub async fn get_api_key(&self, id: &str) -> Result<ApiKey> {
        let url = self.url(&["api", "v1", "auth", "api-keys", id]);
        decode(self.get(url, READ_API_KEYS).await?).await
    }

    /// `PATCH /api/v1/auth/api-keys/{id}` (`manage:api-keys`).
    pub async fn update_api_key(&self, id: &str, update: &UpdateApiKey) -> Result<ApiKey> {
        let url = self.url(&["api", "v1", "auth", "api-keys", id]);
        self.send_json(Method::PATCH, url, MANAGE_API_KEYS, update)
            .await
    }

    /// `DELETE /api/v1/auth/api-keys/{id}` (`manage:api-keys`): both secrets are refused
    /// from the next request, on every node.
    pub async fn revoke_api_key(&self, id: &str) -> Result<()> {
        let url = self.url(&["api", "v1", "auth", "api-keys", id]);
        self.send(Method::DELETE, url, Auth::Scoped(MANAGE_API_KEYS), None)
            .await?;
        Ok(())
    }

    /// `POST /api/v1/auth/api-keys/{id}/rotate` (`manage:api-keys`): a new secret; the
    /// previous keeps working for `overlap_seconds` (the server's default when `None`).
    pub async fn rotate_api_key(
        &self,
        id: &str,
        overlap_seconds: Option<u64>,
    ) -> Result<CreatedApiKey> {
        let url = self.url(&["api", "v1", "auth", "api-keys", id, "rotate"]);
        let body = match overlap_seconds {
            Some(s) => serde_json::json!({ "overlapSeconds": s }),
            None => serde_json::json!({}),
        };
        self.post_json(url, MANAGE_API_KEYS, &body).await
    }

    /// `GET /api/v1/auth/api-keys/{id}/usage` (`read:api-keys`).
    pub async fn api_key_usage(&self, id: &str) -> Result<ApiKeyUsage> {
        let url = self.url(&["api", "v1", "auth", "api-keys", id, "usage"]);
        decode(self.get(url, READ_API_KEYS).await?).await
    }

    /// `POST /api/v1/auth/api-keys/verify` (`read:api-keys`): the verdict on a key, with
    /// what is left of its limits. The check counts as a use of the key.
    pub async fn verify_api_key(&self, request: &VerifyApiKey) -> Result<KeyVerdict> {
        let url = self.url(&["api", "v1", "auth", "api-keys", "verify"]);
        let key = request
            .key
            .as_ref()
            .map(|k| k.expose_secret().to_owned())
            .unwrap_or_default();
        let body = VerifyWire {
            key: &key,
            scope: request.scope.as_deref(),
            ip: request.ip.as_deref(),
            cost: request.cost,
        };
        self.post_json(url, READ_API_KEYS, &body).await
    }
}
