//! Webhooks (`read:webhooks` / `manage:webhooks`), published events (`manage:events`), and
//! [`WebhookVerifier`], which a receiver uses to check a delivery's signatures.

use chrono::{DateTime, Utc};
use reqwest::Method;
use reqwest::header::HeaderMap;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize};

use crate::client::{Auth, Client, append_query, decode};
use crate::error::Result;
use crate::types::Page;

const READ_WEBHOOKS: &str = "read:webhooks";
const MANAGE_WEBHOOKS: &str = "manage:webhooks";
const MANAGE_EVENTS: &str = "manage:events";

/// A webhook. Its secret is only in [`WebhookWithSecret`], once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Webhook {
    /// `wh_…`.
    pub id: String,
    /// Its workspace.
    pub workspace_id: String,
    /// Where deliveries go.
    pub url: String,
    /// Event filters: types, `group.*` or `*`.
    pub events: Vec<String>,
    /// For people.
    pub description: Option<String>,
    /// Deliveries per second at most.
    pub rate_limit: Option<i64>,
    /// The owner's metadata.
    pub metadata: Option<serde_json::Value>,
    /// `active`, `paused` or `disabled`.
    pub status: String,
    /// Why it is disabled.
    pub disabled_reason: Option<String>,
    /// Since when every attempt has failed.
    pub failing_since: Option<DateTime<Utc>>,
    /// The last successful delivery.
    pub last_success_at: Option<DateTime<Utc>>,
    /// Until when the previous secret also signs.
    pub previous_secret_valid_until: Option<DateTime<Utc>>,
    /// Who registered it.
    pub created_by: Option<String>,
    /// When.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// A registered or rotated webhook with its secret, shown once.
#[derive(Debug)]
pub struct WebhookWithSecret {
    /// The signing secret, `whsec_…`.
    pub secret: SecretString,
    /// The webhook.
    pub details: Webhook,
}

impl<'de> Deserialize<'de> for WebhookWithSecret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Wire {
            secret: String,
            #[serde(flatten)]
            details: Webhook,
        }
        let wire = Wire::deserialize(deserializer)?;
        Ok(Self {
            secret: SecretString::from(wire.secret),
            details: wire.details,
        })
    }
}

/// A webhook to register.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateWebhook {
    /// `https://…` (plain `http://` only to networks the operator allows).
    pub url: String,
    /// Event filters (at least one).
    pub events: Vec<String>,
    /// A chosen secret (`whsec_` + base64 of 24–64 bytes); default generated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// For people.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Deliveries per second at most.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<u32>,
    /// A JSON object.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Changes to a webhook. `None` leaves a field; `Some(None)` clears it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateWebhook {
    /// A new URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// New filters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<String>>,
    /// A new description, or `Some(None)` to clear it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<Option<String>>,
    /// A new rate limit, or `Some(None)` for none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<Option<u32>>,
    /// New metadata, or `Some(None)` to clear it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Option<serde_json::Map<String, serde_json::Value>>>,
}

/// One delivery: an event to a webhook, across its attempts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    /// The event id (`evt_…`): the body's `request_id` and the `webhook-id` header.
    pub id: String,
    /// The webhook.
    pub webhook_id: String,
    /// The event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// `pending`, `succeeded` or `failed`.
    pub status: String,
    /// Attempts made.
    pub attempts: i64,
    /// When the next attempt is due.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The last attempt's HTTP status.
    pub last_status_code: Option<i64>,
    /// The last attempt's error.
    pub last_error: Option<String>,
    /// The last attempt's latency.
    pub last_latency_ms: Option<i64>,
    /// When the last attempt was made.
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// When the event was queued.
    pub created_at: DateTime<Utc>,
}

/// One attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryAttempt {
    /// 1 for the first.
    pub attempt: i64,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// The HTTP status answered.
    pub status_code: Option<i64>,
    /// How long it took.
    pub latency_ms: i64,
    /// What went wrong.
    pub error: Option<String>,
    /// Whether it succeeded.
    pub succeeded: bool,
}

/// A delivery with its attempts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryDetail {
    /// The delivery.
    #[serde(flatten)]
    pub delivery: Delivery,
    /// Its attempts, oldest first.
    pub attempt_log: Vec<DeliveryAttempt>,
}

/// Which deliveries to list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListDeliveries {
    /// `pending`, `succeeded` or `failed`.
    pub status: Option<String>,
    /// One event type.
    pub event_type: Option<String>,
    /// Events queued at or after.
    pub since: Option<DateTime<Utc>>,
    /// Events queued before.
    pub until: Option<DateTime<Utc>>,
    /// Page size.
    pub limit: Option<u32>,
    /// Cursor.
    pub cursor: Option<String>,
}

/// A type of event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventType {
    /// `group.what`.
    pub name: String,
    /// What it means.
    pub description: String,
    /// `server` or `upstream` (publishable).
    pub source: String,
    /// A JSON Schema of its `data`.
    pub schema: serde_json::Value,
}

/// A published or test event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishedEvent {
    /// `evt_…`.
    pub id: String,
    /// Its type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Whether any webhook takes it.
    pub queued: bool,
}

#[derive(Deserialize)]
struct Items<T> {
    items: Vec<T>,
}

#[derive(Deserialize)]
struct Replayed {
    replayed: u64,
}

impl Client {
    /// `POST /api/v1/webhooks` (`manage:webhooks`): the answer holds the secret, once.
    pub async fn create_webhook(&self, request: &CreateWebhook) -> Result<WebhookWithSecret> {
        let url = self.url(&["api", "v1", "webhooks"]);
        self.post_json(url, MANAGE_WEBHOOKS, request).await
    }

    /// `GET /api/v1/webhooks` (`read:webhooks`): one page.
    pub async fn list_webhooks(
        &self,
        limit: Option<u32>,
        cursor: Option<String>,
    ) -> Result<Page<Webhook>> {
        let mut url = self.url(&["api", "v1", "webhooks"]);
        append_query(
            &mut url,
            &[("limit", limit.map(|l| l.to_string())), ("cursor", cursor)],
        );
        decode(self.get(url, READ_WEBHOOKS).await?).await
    }

    /// `GET /api/v1/webhooks/{id}` (`read:webhooks`).
    pub async fn get_webhook(&self, id: &str) -> Result<Webhook> {
        let url = self.url(&["api", "v1", "webhooks", id]);
        decode(self.get(url, READ_WEBHOOKS).await?).await
    }

    /// `PATCH /api/v1/webhooks/{id}` (`manage:webhooks`).
    pub async fn update_webhook(&self, id: &str, update: &UpdateWebhook) -> Result<Webhook> {
        let url = self.url(&["api", "v1", "webhooks", id]);
        self.send_json(Method::PATCH, url, MANAGE_WEBHOOKS, update)
            .await
    }

    /// `DELETE /api/v1/webhooks/{id}` (`manage:webhooks`).
    pub async fn delete_webhook(&self, id: &str) -> Result<()> {
        let url = self.url(&["api", "v1", "webhooks", id]);
        self.send(Method::DELETE, url, Auth::Scoped(MANAGE_WEBHOOKS), None)
            .await?;
        Ok(())
    }

    /// `POST /api/v1/webhooks/{id}/pause` (`manage:webhooks`): deliveries wait.
    pub async fn pause_webhook(&self, id: &str) -> Result<Webhook> {
        let url = self.url(&["api", "v1", "webhooks", id, "pause"]);
        self.post_json(url, MANAGE_WEBHOOKS, &serde_json::json!({}))
            .await
    }

    /// `POST /api/v1/webhooks/{id}/resume` (`manage:webhooks`).
    pub async fn resume_webhook(&self, id: &str) -> Result<Webhook> {
        let url = self.url(&["api", "v1", "webhooks", id, "resume"]);
        self.post_json(url, MANAGE_WEBHOOKS, &serde_json::json!({}))
            .await
    }

    /// `POST /api/v1/webhooks/{id}/test` (`manage:webhooks`): queues a `test.ping`.
    pub async fn test_webhook(&self, id: &str) -> Result<PublishedEvent> {
        let url = self.url(&["api", "v1", "webhooks", id, "test"]);
        self.post_json(url, MANAGE_WEBHOOKS, &serde_json::json!({}))
            .await
    }

    /// `POST /api/v1/webhooks/{id}/rotate-secret` (`manage:webhooks`): a new secret (once);
    /// the previous one also signs for `overlap_seconds`.
    pub async fn rotate_webhook_secret(
        &self,
        id: &str,
        overlap_seconds: Option<u64>,
        secret: Option<&SecretString>,
    ) -> Result<WebhookWithSecret> {
        let url = self.url(&["api", "v1", "webhooks", id, "rotate-secret"]);
        let mut body = serde_json::Map::new();
        if let Some(s) = overlap_seconds {
            body.insert("overlapSeconds".into(), s.into());
        }
        if let Some(s) = secret {
            body.insert("secret".into(), s.expose_secret().into());
        }
        self.post_json(url, MANAGE_WEBHOOKS, &body).await
    }

    /// `GET /api/v1/webhooks/{id}/deliveries` (`read:webhooks`): newest first.
    pub async fn list_webhook_deliveries(
        &self,
        id: &str,
        request: ListDeliveries,
    ) -> Result<Page<Delivery>> {
        let mut url = self.url(&["api", "v1", "webhooks", id, "deliveries"]);
        append_query(
            &mut url,
            &[
                ("status", request.status),
                ("type", request.event_type),
                ("since", request.since.map(|t| t.to_rfc3339())),
                ("until", request.until.map(|t| t.to_rfc3339())),
                ("limit", request.limit.map(|l| l.to_string())),
                ("cursor", request.cursor),
            ],
        );
        decode(self.get(url, READ_WEBHOOKS).await?).await
    }

    /// `GET /api/v1/webhooks/{id}/deliveries/{deliveryId}` (`read:webhooks`).
    pub async fn get_webhook_delivery(&self, id: &str, delivery: &str) -> Result<DeliveryDetail> {
        let url = self.url(&["api", "v1", "webhooks", id, "deliveries", delivery]);
        decode(self.get(url, READ_WEBHOOKS).await?).await
    }

    /// `POST …/deliveries/{deliveryId}/redeliver` (`manage:webhooks`): sends it again now.
    pub async fn redeliver_webhook_delivery(&self, id: &str, delivery: &str) -> Result<()> {
        let url = self.url(&[
            "api",
            "v1",
            "webhooks",
            id,
            "deliveries",
            delivery,
            "redeliver",
        ]);
        self.send(
            Method::POST,
            url,
            Auth::Scoped(MANAGE_WEBHOOKS),
            Some(b"{}".to_vec()),
        )
        .await?;
        Ok(())
    }

    /// `POST /api/v1/webhooks/{id}/replay` (`manage:webhooks`): sends again every failed
    /// delivery of an event queued since `since`; returns how many.
    pub async fn replay_webhook(&self, id: &str, since: DateTime<Utc>) -> Result<u64> {
        let url = self.url(&["api", "v1", "webhooks", id, "replay"]);
        let r: Replayed = self
            .post_json(url, MANAGE_WEBHOOKS, &serde_json::json!({ "since": since }))
            .await?;
        Ok(r.replayed)
    }

    /// `GET /api/v1/webhooks/event-types` (`read:webhooks`): the catalogue.
    pub async fn webhook_event_types(&self) -> Result<Vec<EventType>> {
        let url = self.url(&["api", "v1", "webhooks", "event-types"]);
        let list: Items<EventType> = decode(self.get(url, READ_WEBHOOKS).await?).await?;
        Ok(list.items)
    }

    /// `POST /api/v1/events` (`manage:events`): publishes an upstream event.
    pub async fn publish_event(
        &self,
        event_type: &str,
        data: serde_json::Value,
    ) -> Result<PublishedEvent> {
        let url = self.url(&["api", "v1", "events"]);
        self.post_json(
            url,
            MANAGE_EVENTS,
            &serde_json::json!({ "type": event_type, "data": data }),
        )
        .await
    }
}

/// An event as a receiver gets it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookEvent {
    /// Its type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Its id: the same on every retry and redelivery; deduplicate on it.
    pub request_id: String,
    /// When it happened.
    pub timestamp: DateTime<Utc>,
    /// Its workspace.
    #[serde(rename = "workspaceId")]
    pub workspace_id: String,
    /// Its data.
    pub data: serde_json::Value,
}

/// Why a delivery was refused by [`WebhookVerifier`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A signature header is missing or not text.
    #[error("the {0} header is missing")]
    MissingHeader(&'static str),
    /// No signature matches (wrong secret, or a changed body).
    #[error("the signature does not match")]
    BadSignature,
    /// The timestamp is too old or too far ahead: possibly a replay.
    #[error("the timestamp is outside the tolerance")]
    Stale,
    /// The body is not an event.
    #[error("the body is not a datastack event: {0}")]
    Body(String),
}

/// Checks deliveries of one webhook: both schemes (`X-Webhook-Signature` and Standard
/// Webhooks), constant-time, with a timestamp tolerance against replays (five minutes by
/// default).
#[derive(Debug, Clone)]
pub struct WebhookVerifier {
    secrets: Vec<datastack_core::webhook::WebhookSecret>,
    tolerance_seconds: i64,
}

impl WebhookVerifier {
    /// A verifier for `secret` (`whsec_…`).
    pub fn new(secret: &SecretString) -> Result<Self> {
        let s = datastack_core::webhook::WebhookSecret::parse(secret.expose_secret())
            .map_err(|e| crate::Error::Config(e.to_string()))?;
        Ok(Self {
            secrets: vec![s],
            tolerance_seconds: 300,
        })
    }

    /// Also accepts deliveries signed with `secret` (the other side of a rotation).
    pub fn or_secret(mut self, secret: &SecretString) -> Result<Self> {
        let s = datastack_core::webhook::WebhookSecret::parse(secret.expose_secret())
            .map_err(|e| crate::Error::Config(e.to_string()))?;
        self.secrets.push(s);
        Ok(self)
    }

    /// Sets the timestamp tolerance.
    pub fn tolerance_seconds(mut self, seconds: i64) -> Self {
        self.tolerance_seconds = seconds;
        self
    }

    /// Verifies a delivery's Standard Webhooks signature (over its id, timestamp and raw
    /// body, so a replayed or altered delivery fails) and returns the event. Use this one:
    /// it also works during a rotation's overlap with either secret.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
    ) -> std::result::Result<WebhookEvent, VerifyError> {
        let id = header(headers, "webhook-id")?;
        let timestamp = header(headers, "webhook-timestamp")?;
        let signatures = header(headers, "webhook-signature")?;
        let now = Utc::now().timestamp();
        let mut stale = false;
        let mut matched = false;
        for s in &self.secrets {
            match s.verify_standard(id, timestamp, body, signatures, now, self.tolerance_seconds) {
                Ok(()) => matched = true,
                Err(datastack_core::webhook::VerifyError::OutsideTolerance) => stale = true,
                Err(_) => {}
            }
        }
        if !matched {
            return Err(if stale {
                VerifyError::Stale
            } else {
                VerifyError::BadSignature
            });
        }
        serde_json::from_slice(body).map_err(|e| VerifyError::Body(e.to_string()))
    }

    /// Verifies only `X-Webhook-Signature` (hex HMAC-SHA256 of the raw body with the
    /// current secret), for receivers written against that scheme alone. It carries no
    /// timestamp: deduplicate on `request_id` to resist replays.
    pub fn verify_body_signature(
        &self,
        headers: &HeaderMap,
        body: &[u8],
    ) -> std::result::Result<WebhookEvent, VerifyError> {
        let signature = header(headers, "x-webhook-signature")?;
        if !self.secrets.iter().any(|s| s.verify_body(body, signature)) {
            return Err(VerifyError::BadSignature);
        }
        serde_json::from_slice(body).map_err(|e| VerifyError::Body(e.to_string()))
    }
}

fn header<'a>(
    headers: &'a HeaderMap,
    name: &'static str,
) -> std::result::Result<&'a str, VerifyError> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .ok_or(VerifyError::MissingHeader(name))
}
