//! Webhooks through the public API, delivered to real receivers on loopback that verify
//! every signature with independent code: the Standard Webhooks reference library and a
//! plain HMAC-SHA256 of the body (the seed's receiver, in Rust).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use hmac::{Hmac, Mac};
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Backend, StoreLocation, TestApp, eventually, on_both_stores};
use crate::workspaces::child_of;

on_both_stores!(
    events_reach_subscribed_webhooks_signed_in_both_schemes,
    failures_are_retried_with_the_same_ids_and_final_errors_are_not,
    rotation_signs_with_both_secrets_during_the_overlap,
    paused_webhooks_hold_their_deliveries_until_resumed,
    registration_refuses_what_the_ssrf_guard_forbids,
    scopes_catalogue_and_workspaces_bound_webhooks_and_events,
    slow_endpoints_time_out_and_failing_ones_are_disabled,
    credentials_about_to_expire_are_announced_once,
    a_webhook_rate_limit_spaces_its_deliveries,
);

/// What a receiver answers next: a status, an optional `Retry-After`, and a delay.
#[derive(Clone, Copy)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<u64>,
    pub delay: Duration,
}

impl Answer {
    pub const OK: Answer = Answer {
        status: 200,
        retry_after: None,
        delay: Duration::ZERO,
    };

    pub fn status(status: u16) -> Self {
        Answer {
            status,
            ..Answer::OK
        }
    }
}

/// One request a receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// A webhook receiver on 127.0.0.1 that records what it gets and answers from a script
/// (200 once the script is used up).
#[derive(Clone, Default)]
pub struct Receiver {
    pub url: String,
    pub got: Arc<Mutex<Vec<Received>>>,
    script: Arc<Mutex<VecDeque<Answer>>>,
}

impl Receiver {
    pub async fn start() -> Self {
        let mut r = Receiver::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        r.url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let me = r.clone();
        let handle = move |headers: HeaderMap, body: Bytes| {
            let me = me.clone();
            async move {
                me.got
                    .lock()
                    .expect("lock")
                    .push(Received { headers, body });
                let answer = me
                    .script
                    .lock()
                    .expect("lock")
                    .pop_front()
                    .unwrap_or(Answer::OK);
                tokio::time::sleep(answer.delay).await;
                let mut h = HeaderMap::new();
                if let Some(s) = answer.retry_after {
                    h.insert("retry-after", s.to_string().parse().expect("value"));
                }
                (
                    StatusCode::from_u16(answer.status).expect("status"),
                    h,
                    "{\"ok\":true}",
                )
                    .into_response()
            }
        };
        tokio::spawn(async move {
            let _ = axum::serve(listener, axum::Router::new().fallback(handle)).await;
        });
        r
    }

    pub fn script(&self, answers: &[Answer]) {
        self.script.lock().expect("lock").extend(answers);
    }

    pub fn received(&self) -> Vec<Received> {
        self.got.lock().expect("lock").clone()
    }

    pub fn of_type(&self, t: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.json()["type"] == t)
            .collect()
    }

    pub async fn wait_for(&self, t: &str, n: usize, within: Duration) -> Vec<Received> {
        let ok = eventually(within, || async { self.of_type(t).len() >= n }).await;
        assert!(
            ok,
            "{n} deliveries of {t} within {within:?}; got {}",
            self.of_type(t).len()
        );
        self.of_type(t)
    }
}

/// Checks both signatures of a delivery with code that is not the server's: the Standard
/// Webhooks library, and HMAC-SHA256 of the raw body keyed with the secret's text (what the
/// seed's Python does).
pub fn assert_signed(r: &Received, secret: &str) {
    let wh = standardwebhooks::Webhook::new(secret).expect("a Standard Webhooks secret");
    wh.verify(&r.body, &r.headers)
        .expect("the Standard Webhooks signature verifies");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(&r.body);
    let expected = hex::encode(mac.finalize().into_bytes());
    assert_eq!(
        r.header("x-webhook-signature"),
        expected,
        "the seed's scheme"
    );
}

/// A node whose deliveries may reach loopback receivers.
pub async fn app_with_receivers(backend: Backend) -> TestApp {
    let store = Arc::new(StoreLocation::new(backend).await);
    TestApp::spawn_on(store, allow_loopback).await
}

pub fn allow_loopback(c: &mut datastack_server::Config) {
    c.webhooks.allow_networks = vec![
        "127.0.0.0/8".parse().expect("network"),
        "::1/128".parse().expect("network"),
    ];
}

pub async fn register(app: &TestApp, token: &str, url: &str, events: Value) -> (String, String) {
    let r = app
        .post(
            "/api/v1/webhooks",
            token,
            "manage:webhooks",
            json!({"url": url, "events": events, "description": "test receiver"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let secret = r.body["secret"].as_str().expect("secret").to_owned();
    assert!(secret.starts_with("whsec_"));
    (r.body["id"].as_str().expect("id").to_owned(), secret)
}

pub async fn publish(app: &TestApp, token: &str, t: &str, data: Value) -> Value {
    let r = app
        .post(
            "/api/v1/events",
            token,
            "manage:events",
            json!({"type": t, "data": data}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    r.body
}

async fn delivery(app: &TestApp, webhook: &str, event: &str) -> Value {
    delivery_as(app, app.admin(), webhook, event).await
}

async fn delivery_as(app: &TestApp, token: &str, webhook: &str, event: &str) -> Value {
    let r = app
        .get(
            &format!("/api/v1/webhooks/{webhook}/deliveries/{event}"),
            token,
            "read:webhooks",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body
}

/// The delivery once its first attempt is recorded.
async fn after_first_attempt(app: &TestApp, token: &str, webhook: &str, event: &str) -> Value {
    let ok = eventually(Duration::from_secs(10), || async {
        delivery_as(app, token, webhook, event).await["attempts"]
            .as_i64()
            .unwrap_or(0)
            >= 1
    })
    .await;
    assert!(ok, "no attempt of {event} to {webhook} was recorded");
    delivery_as(app, token, webhook, event).await
}

async fn events_reach_subscribed_webhooks_signed_in_both_schemes(backend: Backend) {
    let app = app_with_receivers(backend).await;
    let jobs = Receiver::start().await;
    let all = Receiver::start().await;
    let (jobs_id, jobs_secret) = register(&app, app.admin(), &jobs.url, json!(["job.*"])).await;
    let (all_id, all_secret) = register(&app, app.admin(), &all.url, json!(["*"])).await;

    let published = publish(
        &app,
        app.admin(),
        "job.completed",
        json!({"jobId": "j-1", "runId": 7}),
    )
    .await;
    assert_eq!(published["queued"], true);
    let event_id = published["id"].as_str().expect("id").to_owned();
    let got = jobs
        .wait_for("job.completed", 1, Duration::from_secs(10))
        .await;
    let r = &got[0];
    assert_signed(r, &jobs_secret);
    let body = r.json();
    assert_eq!(body["request_id"], event_id.as_str());
    assert_eq!(r.header("webhook-id"), event_id);
    assert_eq!(body["data"]["jobId"], "j-1");
    assert_eq!(body["data"]["runId"], 7);
    assert!(
        body["workspaceId"]
            .as_str()
            .is_some_and(|w| w.starts_with("ws_"))
    );
    assert!(body["timestamp"].as_str().is_some());
    assert_eq!(r.header("content-type"), "application/json");
    // The same event reaches the catch-all webhook, signed with its own secret.
    let got = all
        .wait_for("job.completed", 1, Duration::from_secs(10))
        .await;
    assert_signed(&got[0], &all_secret);
    assert_eq!(got[0].json()["request_id"], event_id.as_str());

    // An event the first webhook does not take reaches only the catch-all.
    publish(
        &app,
        app.admin(),
        "cluster.terminated",
        json!({"clusterId": "c-1"}),
    )
    .await;
    all.wait_for("cluster.terminated", 1, Duration::from_secs(10))
        .await;
    assert!(jobs.of_type("cluster.terminated").is_empty());
    // An event nobody takes is not queued.
    app.delete(
        &format!("/api/v1/webhooks/{all_id}"),
        app.admin(),
        "manage:webhooks",
    )
    .await;
    let none = publish(
        &app,
        app.admin(),
        "pipeline.failed",
        json!({"pipelineId": "p"}),
    )
    .await;
    assert_eq!(none["queued"], false);

    // Events the server raises go out through the same outbox: an API key's creation.
    let (_, secret) = register(&app, app.admin(), &all.url, json!(["api_key.*"])).await;
    let key = app
        .post(
            "/api/v1/auth/api-keys",
            app.admin(),
            "manage:api-keys",
            json!({"name": "for a webhook", "scopes": ["read:clusters"]}),
        )
        .await;
    assert_eq!(key.status, StatusCode::CREATED, "{}", key.text);
    let got = all
        .wait_for("api_key.created", 1, Duration::from_secs(10))
        .await;
    assert_signed(&got[0], &secret);
    let key_secret = key.body["key"].as_str().expect("key").as_bytes();
    assert!(
        !got[0]
            .body
            .windows(key_secret.len())
            .any(|w| w == key_secret),
        "no key secret in a delivery"
    );

    // The delivery and its attempt are listed.
    let detail = delivery(&app, &jobs_id, &event_id).await;
    assert_eq!(detail["status"], "succeeded");
    assert_eq!(detail["attempts"], 1);
    assert_eq!(detail["lastStatusCode"], 200);
    assert_eq!(detail["attemptLog"][0]["succeeded"], true);
    let list = app
        .get(
            &format!("/api/v1/webhooks/{jobs_id}/deliveries?status=succeeded&type=job.completed"),
            app.admin(),
            "read:webhooks",
        )
        .await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    assert_eq!(list.body["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(list.body["items"][0]["id"], event_id.as_str());
    let none = app
        .get(
            &format!("/api/v1/webhooks/{jobs_id}/deliveries?status=failed"),
            app.admin(),
            "read:webhooks",
        )
        .await;
    assert_eq!(none.body["items"].as_array().map(Vec::len), Some(0));
    // The secret is never listed or shown again.
    let listed = app
        .get("/api/v1/webhooks", app.admin(), "read:webhooks")
        .await;
    assert!(!listed.text.contains(&jobs_secret));
    assert!(!listed.text.contains("whsec_"));
    let one = app
        .get(
            &format!("/api/v1/webhooks/{jobs_id}"),
            app.admin(),
            "read:webhooks",
        )
        .await;
    assert!(!one.text.contains("whsec_"));
    // Nor is it in the audit trail.
    let audit = app
        .get("/api/v1/audit/events?limit=200", app.admin(), "read:audit")
        .await;
    assert_eq!(audit.status, StatusCode::OK, "{}", audit.text);
    assert!(!audit.text.contains(&jobs_secret));
    app.stop().await;
}

async fn failures_are_retried_with_the_same_ids_and_final_errors_are_not(backend: Backend) {
    let app = app_with_receivers(backend).await;
    let rx = Receiver::start().await;
    let (id, secret) = register(&app, app.admin(), &rx.url, json!(["job.failed"])).await;
    // 503 asking for a retry after one second, then success.
    rx.script(&[Answer {
        status: 503,
        retry_after: Some(1),
        delay: Duration::ZERO,
    }]);
    let first = publish(&app, app.admin(), "job.failed", json!({"jobId": "j-9"})).await;
    let got = rx.wait_for("job.failed", 2, Duration::from_secs(20)).await;
    assert_eq!(got[0].json()["request_id"], got[1].json()["request_id"]);
    assert_eq!(got[0].header("webhook-id"), got[1].header("webhook-id"));
    assert_eq!(
        got[0].body, got[1].body,
        "every attempt sends the same bytes"
    );
    for r in &got {
        assert_signed(r, &secret);
    }
    let event = first["id"].as_str().expect("id");
    let ok = eventually(Duration::from_secs(5), || async {
        delivery(&app, &id, event).await["status"] == "succeeded"
    })
    .await;
    assert!(ok);
    let detail = delivery(&app, &id, event).await;
    assert_eq!(detail["attempts"], 2);
    assert_eq!(detail["attemptLog"][0]["statusCode"], 503);
    assert_eq!(detail["attemptLog"][0]["succeeded"], false);
    assert_eq!(detail["attemptLog"][1]["succeeded"], true);

    // A 400 is final: one attempt, then `failed`.
    rx.script(&[Answer::status(400)]);
    let second = publish(&app, app.admin(), "job.failed", json!({"jobId": "j-10"})).await;
    let event2 = second["id"].as_str().expect("id").to_owned();
    let ok = eventually(Duration::from_secs(10), || async {
        delivery(&app, &id, &event2).await["status"] == "failed"
    })
    .await;
    assert!(ok, "a 400 fails the delivery");
    tokio::time::sleep(Duration::from_secs(6)).await;
    let detail = delivery(&app, &id, &event2).await;
    assert_eq!(
        detail["attempts"], 1,
        "a 4xx other than 408/429 is not retried"
    );
    assert_eq!(detail["lastStatusCode"], 400);
    assert!(
        detail["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("400"))
    );

    // A redirect is not followed and is final too.
    rx.script(&[Answer::status(302)]);
    let third = publish(&app, app.admin(), "job.failed", json!({"jobId": "j-11"})).await;
    let event3 = third["id"].as_str().expect("id").to_owned();
    let ok = eventually(Duration::from_secs(10), || async {
        delivery(&app, &id, &event3).await["status"] == "failed"
    })
    .await;
    assert!(ok, "a redirect fails the delivery");
    assert_eq!(delivery(&app, &id, &event3).await["attempts"], 1);

    // Redelivery sends it again, with the same ids, and it succeeds now.
    let before = rx.of_type("job.failed").len();
    let r = app
        .post(
            &format!("/api/v1/webhooks/{id}/deliveries/{event2}/redeliver"),
            app.admin(),
            "manage:webhooks",
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let got = rx
        .wait_for("job.failed", before + 1, Duration::from_secs(10))
        .await;
    assert_eq!(
        got.last().expect("one").json()["request_id"],
        event2.as_str()
    );
    let ok = eventually(Duration::from_secs(5), || async {
        delivery(&app, &id, &event2).await["status"] == "succeeded"
    })
    .await;
    assert!(ok);
    assert_eq!(delivery(&app, &id, &event2).await["attempts"], 2);

    // Replay re-sends every failed delivery since a time (only failed ones).
    rx.script(&[Answer::status(410), Answer::status(410)]);
    let since = chrono::Utc::now();
    let a = publish(&app, app.admin(), "job.failed", json!({"jobId": "a"})).await;
    let b = publish(&app, app.admin(), "job.failed", json!({"jobId": "b"})).await;
    for e in [&a, &b] {
        let e = e["id"].as_str().expect("id").to_owned();
        let ok = eventually(Duration::from_secs(10), || async {
            delivery(&app, &id, &e).await["status"] == "failed"
        })
        .await;
        assert!(ok);
    }
    let r = app
        .post(
            &format!("/api/v1/webhooks/{id}/replay"),
            app.admin(),
            "manage:webhooks",
            json!({"since": since}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(r.body["replayed"], 2);
    for e in [&a, &b] {
        let e = e["id"].as_str().expect("id").to_owned();
        let ok = eventually(Duration::from_secs(10), || async {
            delivery(&app, &id, &e).await["status"] == "succeeded"
        })
        .await;
        assert!(ok, "replayed deliveries succeed");
    }
    // Unknown deliveries and malformed ids are refused clearly.
    let r = app
        .post(
            &format!(
                "/api/v1/webhooks/{id}/deliveries/evt_00000000000000000000000000000000/redeliver"
            ),
            app.admin(),
            "manage:webhooks",
            json!({}),
        )
        .await;
    r.assert_error(StatusCode::NOT_FOUND, "NOT_FOUND");
    let r = app
        .get(
            &format!("/api/v1/webhooks/{id}/deliveries/nope"),
            app.admin(),
            "read:webhooks",
        )
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    app.stop().await;
}

async fn rotation_signs_with_both_secrets_during_the_overlap(backend: Backend) {
    let app = app_with_receivers(backend).await;
    let rx = Receiver::start().await;
    let (id, old) = register(&app, app.admin(), &rx.url, json!(["test.ping"])).await;
    let r = app
        .post(
            &format!("/api/v1/webhooks/{id}/rotate-secret"),
            app.admin(),
            "manage:webhooks",
            json!({"overlapSeconds": 3600}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let new = r.body["secret"].as_str().expect("secret").to_owned();
    assert_ne!(new, old);
    assert!(r.body["previousSecretValidUntil"].as_str().is_some());
    let r = app
        .post(
            &format!("/api/v1/webhooks/{id}/test"),
            app.admin(),
            "manage:webhooks",
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let got = rx.wait_for("test.ping", 1, Duration::from_secs(10)).await;
    let sigs = got[0].header("webhook-signature").to_owned();
    assert_eq!(
        sigs.split(' ').filter(|s| s.starts_with("v1,")).count(),
        2,
        "{sigs}"
    );
    // A receiver with either secret accepts it; the seed's header is signed with the new one.
    assert_signed(&got[0], &new);
    standardwebhooks::Webhook::new(&old)
        .expect("secret")
        .verify(&got[0].body, &got[0].headers)
        .expect("the old secret verifies during the overlap");

    // Without an overlap, the old secret stops at once.
    let r = app
        .post(
            &format!("/api/v1/webhooks/{id}/rotate-secret"),
            app.admin(),
            "manage:webhooks",
            json!({}),
        )
        .await;
    let newest = r.body["secret"].as_str().expect("secret").to_owned();
    app.post(
        &format!("/api/v1/webhooks/{id}/test"),
        app.admin(),
        "manage:webhooks",
        json!({}),
    )
    .await;
    let got = rx.wait_for("test.ping", 2, Duration::from_secs(10)).await;
    assert_signed(&got[1], &newest);
    assert!(
        standardwebhooks::Webhook::new(&new)
            .expect("secret")
            .verify(&got[1].body, &got[1].headers)
            .is_err(),
        "a replaced secret no longer signs"
    );
    // A chosen secret must have the Standard Webhooks form; the error does not echo it.
    let r = app
        .post(
            &format!("/api/v1/webhooks/{id}/rotate-secret"),
            app.admin(),
            "manage:webhooks",
            json!({"secret": "hunter2-is-my-password"}),
        )
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    assert!(!r.text.contains("hunter2"));
    // A tampered body fails both verifications.
    let mut tampered = got[1].clone();
    let flipped = String::from_utf8(got[1].body.to_vec())
        .expect("UTF-8")
        .replace("test.ping", "test.pinG");
    tampered.body = Bytes::from(flipped);
    assert!(
        standardwebhooks::Webhook::new(&newest)
            .expect("secret")
            .verify(&tampered.body, &tampered.headers)
            .is_err()
    );
    app.stop().await;
}

async fn paused_webhooks_hold_their_deliveries_until_resumed(backend: Backend) {
    let app = app_with_receivers(backend).await;
    let rx = Receiver::start().await;
    let (id, _) = register(&app, app.admin(), &rx.url, json!(["pipeline.completed"])).await;
    let r = app
        .post(
            &format!("/api/v1/webhooks/{id}/pause"),
            app.admin(),
            "manage:webhooks",
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status"], "paused");
    let e = publish(
        &app,
        app.admin(),
        "pipeline.completed",
        json!({"pipelineId": "p1"}),
    )
    .await;
    assert_eq!(e["queued"], true, "a paused webhook still takes events");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(rx.received().is_empty(), "nothing is sent while paused");
    let r = app
        .post(
            &format!("/api/v1/webhooks/{id}/resume"),
            app.admin(),
            "manage:webhooks",
            json!({}),
        )
        .await;
    assert_eq!(r.body["status"], "active");
    let got = rx
        .wait_for("pipeline.completed", 1, Duration::from_secs(10))
        .await;
    assert_eq!(got[0].json()["request_id"], e["id"]);
    app.stop().await;
}

async fn registration_refuses_what_the_ssrf_guard_forbids(backend: Backend) {
    // No network allowed: the default.
    let app = TestApp::spawn(backend).await;
    let cases = [
        ("https://127.0.0.1/hook", "loopback"),
        ("https://[::1]/hook", "loopback"),
        ("https://169.254.169.254/latest/meta-data", "link-local"),
        ("https://10.0.0.5/hook", "private"),
        ("https://100.64.1.1/hook", "carrier-grade"),
        ("https://[fd00:ec2::254]/", "unique-local"),
        ("https://[::ffff:127.0.0.1]/hook", "loopback"),
        ("https://0.0.0.0/hook", "unspecified"),
        ("https://localhost/hook", "loopback"),
        ("https://2130706433/hook", "loopback"),
        ("https://0x7f.1/hook", "loopback"),
        ("http://93.184.216.34/hook", "plain http"),
        ("ftp://93.184.216.34/hook", "https"),
        ("https://user:pw@93.184.216.34/hook", "credentials"),
        ("not a url", "absolute URL"),
    ];
    for (url, why) in cases {
        let r = app
            .post(
                "/api/v1/webhooks",
                app.admin(),
                "manage:webhooks",
                json!({"url": url, "events": ["*"]}),
            )
            .await;
        r.assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
        assert!(r.text.contains(why), "{url}: {}", r.text);
    }
    let long = format!("https://93.184.216.34/{}", "a".repeat(3000));
    let r = app
        .post(
            "/api/v1/webhooks",
            app.admin(),
            "manage:webhooks",
            json!({"url": long, "events": ["*"]}),
        )
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    let listed = app
        .get("/api/v1/webhooks", app.admin(), "read:webhooks")
        .await;
    assert_eq!(
        listed.body["items"].as_array().map(Vec::len),
        Some(0),
        "nothing was stored"
    );

    // A public address is accepted; changing it to a forbidden one is refused and changes
    // nothing.
    let (id, _) = register(
        &app,
        app.admin(),
        "https://93.184.216.34/hook",
        json!(["*"]),
    )
    .await;
    let r = app
        .patch(
            &format!("/api/v1/webhooks/{id}"),
            app.admin(),
            "manage:webhooks",
            json!({"url": "https://192.168.1.1/x"}),
        )
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    let one = app
        .get(
            &format!("/api/v1/webhooks/{id}"),
            app.admin(),
            "read:webhooks",
        )
        .await;
    assert_eq!(one.body["url"], "https://93.184.216.34/hook");
    app.stop().await;

    // The guard judges the address at connect time, not only at registration: a webhook
    // registered while loopback was allowed gets nothing once the node no longer allows it.
    let store = Arc::new(StoreLocation::new(backend).await);
    let first = TestApp::spawn_on(store.clone(), allow_loopback).await;
    let admin = first.admin().to_owned();
    let rx = Receiver::start().await;
    let (id, _) = register(&first, &admin, &rx.url, json!(["job.completed"])).await;
    // A name, judged through the resolver on each attempt (DNS rebinding cannot help).
    let by_name = rx.url.replace("127.0.0.1", "localhost");
    let (named, _) = register(&first, &admin, &by_name, json!(["job.completed"])).await;
    first.stop().await;
    let second = TestApp::spawn_on(store, |_| {}).await;
    let e = publish(&second, &admin, "job.completed", json!({"jobId": "x"})).await;
    let event = e["id"].as_str().expect("id").to_owned();
    let d = after_first_attempt(&second, &admin, &id, &event).await;
    assert_eq!(
        d["status"], "pending",
        "a refused connection is retried later"
    );
    assert!(
        d["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("loopback")),
        "{d}"
    );
    let d = after_first_attempt(&second, &admin, &named, &event).await;
    assert!(
        d["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("loopback")),
        "the name resolved to loopback is refused at connect time: {d}"
    );
    assert!(
        rx.received().is_empty(),
        "no request reached the forbidden address"
    );
    second.stop().await;
}

async fn scopes_catalogue_and_workspaces_bound_webhooks_and_events(backend: Backend) {
    let app = app_with_receivers(backend).await;
    // The catalogue lists every type with a schema; upstream types are publishable.
    let cat = app
        .get("/api/v1/webhooks/event-types", app.admin(), "read:webhooks")
        .await;
    assert_eq!(cat.status, StatusCode::OK, "{}", cat.text);
    let items = cat.body["items"].as_array().expect("items");
    let job = items
        .iter()
        .find(|t| t["name"] == "job.completed")
        .expect("job.completed is listed");
    assert_eq!(job["source"], "upstream");
    assert_eq!(job["schema"]["required"][0], "jobId");
    assert!(
        items
            .iter()
            .any(|t| t["name"] == "webhook.disabled" && t["source"] == "server")
    );

    // Publishing: unknown types, server types and incomplete data are refused.
    for (t, data) in [
        ("job.exploded", json!({"jobId": "j"})),
        ("api_key.created", json!({})),
        ("job.completed", json!({"runId": 1})),
        ("job.completed", json!("not an object")),
    ] {
        let r = app
            .post(
                "/api/v1/events",
                app.admin(),
                "manage:events",
                json!({"type": t, "data": data}),
            )
            .await;
        r.assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    }
    let big = json!({"jobId": "j", "blob": "x".repeat(70 * 1024)});
    let r = app
        .post(
            "/api/v1/events",
            app.admin(),
            "manage:events",
            json!({"type": "job.completed", "data": big}),
        )
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    // Registration refuses unknown filters and bad limits.
    for body in [
        json!({"url": "https://93.184.216.34/", "events": ["job.exploded"]}),
        json!({"url": "https://93.184.216.34/", "events": []}),
        json!({"url": "https://93.184.216.34/", "events": ["*"], "rateLimit": 0}),
        json!({"url": "https://93.184.216.34/", "events": ["*"], "metadata": [1]}),
        json!({"url": "https://93.184.216.34/", "events": ["*"], "unknown": 1}),
    ] {
        let r = app
            .post("/api/v1/webhooks", app.admin(), "manage:webhooks", body)
            .await;
        r.assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    }

    // A viewer reads webhooks but cannot register or publish; an editor publishes with
    // manage:events (or manage:webhooks).
    let (_, viewer) = app.user_with_token("viewer@example.com", "viewer").await;
    let r = app.get("/api/v1/webhooks", &viewer, "read:webhooks").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = app
        .post(
            "/api/v1/webhooks",
            &viewer,
            "manage:webhooks",
            json!({"url": "https://93.184.216.34/", "events": ["*"]}),
        )
        .await;
    r.assert_error(StatusCode::FORBIDDEN, "FORBIDDEN");
    let r = app
        .post(
            "/api/v1/events",
            &viewer,
            "manage:events",
            json!({"type": "job.completed", "data": {"jobId": "j"}}),
        )
        .await;
    r.assert_error(StatusCode::FORBIDDEN, "FORBIDDEN");
    let (_, editor) = app.user_with_token("editor@example.com", "editor").await;
    publish(&app, &editor, "job.completed", json!({"jobId": "j"})).await;
    let r = app
        .post(
            "/api/v1/events",
            &editor,
            "manage:webhooks",
            json!({"type": "job.completed", "data": {"jobId": "j"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let r = app
        .post(
            "/api/v1/events",
            &editor,
            "read:webhooks",
            json!({"type": "job.completed", "data": {"jobId": "j"}}),
        )
        .await;
    r.assert_error(StatusCode::FORBIDDEN, "FORBIDDEN");
    let r = app
        .call(
            Method::POST,
            "/api/v1/events",
            Some("dsp_not-a-real-token"),
            Some("manage:events"),
            Some(json!({"type": "job.completed", "data": {"jobId": "j"}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // A webhook sees only its workspace's events, and another workspace cannot see it.
    let parent_rx = Receiver::start().await;
    let child_rx = Receiver::start().await;
    let (parent_hook, _) = register(&app, app.admin(), &parent_rx.url, json!(["job.*"])).await;
    let (_, child_admin) = child_of(&app, app.admin(), "child").await;
    let (child_hook, _) = register(&app, &child_admin, &child_rx.url, json!(["job.*"])).await;
    let e = publish(
        &app,
        &child_admin,
        "job.completed",
        json!({"jobId": "child"}),
    )
    .await;
    child_rx
        .wait_for("job.completed", 1, Duration::from_secs(10))
        .await;
    publish(&app, app.admin(), "job.failed", json!({"jobId": "parent"})).await;
    parent_rx
        .wait_for("job.failed", 1, Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(child_rx.of_type("job.failed").is_empty());
    assert!(
        parent_rx
            .received()
            .iter()
            .all(|r| r.json()["request_id"] != e["id"]),
        "the parent's webhook does not get the child's events"
    );
    let r = app
        .get(
            &format!("/api/v1/webhooks/{parent_hook}"),
            &child_admin,
            "read:webhooks",
        )
        .await;
    r.assert_error(StatusCode::NOT_FOUND, "NOT_FOUND");
    let r = app
        .delete(
            &format!("/api/v1/webhooks/{parent_hook}"),
            &child_admin,
            "manage:webhooks",
        )
        .await;
    r.assert_error(StatusCode::NOT_FOUND, "NOT_FOUND");
    let r = app
        .get(
            &format!("/api/v1/webhooks/{child_hook}/deliveries"),
            app.admin(),
            "read:webhooks",
        )
        .await;
    r.assert_error(StatusCode::NOT_FOUND, "NOT_FOUND");
    app.stop().await;
}

async fn slow_endpoints_time_out_and_failing_ones_are_disabled(backend: Backend) {
    let store = Arc::new(StoreLocation::new(backend).await);
    let app = TestApp::spawn_on(store.clone(), |c| {
        allow_loopback(c);
        c.webhooks.timeout = Duration::from_millis(300);
    })
    .await;
    let slow = Receiver::start().await;
    let watcher = Receiver::start().await;
    let (id, _) = register(&app, app.admin(), &slow.url, json!(["job.completed"])).await;
    let (_, watcher_secret) = register(&app, app.admin(), &watcher.url, json!(["webhook.*"])).await;
    // The endpoint hangs past the timeout: the attempt fails and is retried later.
    slow.script(&[Answer {
        status: 200,
        retry_after: None,
        delay: Duration::from_secs(3),
    }]);
    let e = publish(&app, app.admin(), "job.completed", json!({"jobId": "slow"})).await;
    let event = e["id"].as_str().expect("id").to_owned();
    let d = after_first_attempt(&app, app.admin(), &id, &event).await;
    assert_eq!(d["attempts"], 1);
    assert_eq!(d["status"], "pending");
    assert!(
        d["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("timed out")),
        "{d}"
    );
    assert!(d["nextAttemptAt"].as_str().is_some());
    assert!(d["lastLatencyMs"].as_i64().is_some_and(|l| l < 2500), "{d}");

    // It has failed without a success for longer than the threshold: the next failure
    // disables it and says so through the webhooks that take webhook.* events.
    let aged = store
        .execute(&[&format!(
            "UPDATE webhooks SET failing_since = '2020-01-01T00:00:00Z' WHERE id = '{id}'"
        )])
        .await;
    assert_eq!(aged, 1);
    slow.script(&[Answer::status(500)]);
    let r = app
        .post(
            &format!("/api/v1/webhooks/{id}/deliveries/{event}/redeliver"),
            app.admin(),
            "manage:webhooks",
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let got = watcher
        .wait_for("webhook.disabled", 1, Duration::from_secs(10))
        .await;
    assert_signed(&got[0], &watcher_secret);
    assert_eq!(got[0].json()["data"]["webhookId"], id.as_str());
    let w = app
        .get(
            &format!("/api/v1/webhooks/{id}"),
            app.admin(),
            "read:webhooks",
        )
        .await;
    assert_eq!(w.body["status"], "disabled");
    assert_eq!(w.body["disabledReason"], "failing");
    // A disabled webhook takes no new events; resumed, it does again.
    let none = publish(&app, app.admin(), "job.completed", json!({"jobId": "x"})).await;
    assert_eq!(none["queued"], false);
    let r = app
        .post(
            &format!("/api/v1/webhooks/{id}/resume"),
            app.admin(),
            "manage:webhooks",
            json!({}),
        )
        .await;
    assert_eq!(r.body["status"], "active");
    assert_eq!(r.body["failingSince"], Value::Null);
    let again = publish(&app, app.admin(), "job.completed", json!({"jobId": "y"})).await;
    assert_eq!(again["queued"], true);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(datastack_test_postgres),
    ignore = "needs PostgreSQL: set DATASTACK_TEST_DATABASE_URL"
)]
async fn two_nodes_deliver_each_event_once() {
    let store = Arc::new(StoreLocation::new(Backend::Postgres).await);
    let a = TestApp::spawn_on(store.clone(), allow_loopback).await;
    let b = TestApp::spawn_on(store, allow_loopback).await;
    let admin = a.admin().to_owned();
    let rx = Receiver::start().await;
    // A little latency so both dispatchers have deliveries in flight at once.
    rx.script(
        &(0..40)
            .map(|_| Answer {
                status: 200,
                retry_after: None,
                delay: Duration::from_millis(20),
            })
            .collect::<Vec<_>>(),
    );
    let (_, secret) = register(&a, &admin, &rx.url, json!(["job.completed"])).await;
    let mut ids = std::collections::BTreeSet::new();
    for i in 0..120 {
        let node = if i % 2 == 0 { &a } else { &b };
        let e = publish(
            node,
            &admin,
            "job.completed",
            json!({"jobId": format!("j{i}")}),
        )
        .await;
        ids.insert(e["id"].as_str().expect("id").to_owned());
    }
    let got = rx
        .wait_for("job.completed", ids.len(), Duration::from_secs(30))
        .await;
    // Time for any duplicate to arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got_now = rx.of_type("job.completed");
    assert_eq!(
        got_now.len(),
        ids.len(),
        "each event once, no duplicate fan-out"
    );
    let seen: std::collections::BTreeSet<String> = got
        .iter()
        .map(|r| r.json()["request_id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(seen, ids);
    for r in got.iter().take(5) {
        assert_signed(r, &secret);
    }
    a.stop().await;
    b.stop().await;
}

async fn credentials_about_to_expire_are_announced_once(backend: Backend) {
    let store = Arc::new(StoreLocation::new(backend).await);
    let app = TestApp::spawn_on(store, |c| {
        allow_loopback(c);
        c.audit_maintenance_interval = Duration::from_millis(200);
        c.expiry_notice = Duration::from_secs(2 * 86_400);
    })
    .await;
    let rx = Receiver::start().await;
    let (_, secret) = register(&app, app.admin(), &rx.url, json!(["token.*", "api_key.*"])).await;
    // Expires within the notice: announced. Expires later, or never: not.
    let (_, soon) = app
        .create_token(app.admin(), json!({"label": "soon", "expiresInDays": 1}))
        .await;
    app.create_token(app.admin(), json!({"label": "later", "expiresInDays": 30}))
        .await;
    let key = app
        .post(
            "/api/v1/auth/api-keys",
            app.admin(),
            "manage:api-keys",
            json!({"name": "short", "scopes": ["read:jobs"], "expiresInDays": 1}),
        )
        .await;
    assert_eq!(key.status, StatusCode::CREATED, "{}", key.text);
    let got = rx
        .wait_for("token.expiring_soon", 1, Duration::from_secs(15))
        .await;
    assert_signed(&got[0], &secret);
    assert_eq!(got[0].json()["data"]["tokenId"], soon.as_str());
    assert!(got[0].json()["data"]["expiresAt"].as_str().is_some());
    let keys = rx
        .wait_for("api_key.expiring_soon", 1, Duration::from_secs(15))
        .await;
    assert_eq!(keys[0].json()["data"]["keyId"], key.body["id"]);
    // Further passes do not repeat it.
    app.wait_for_maintenance_passes(3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.of_type("token.expiring_soon").len(), 1);
    assert_eq!(rx.of_type("api_key.expiring_soon").len(), 1);
    app.stop().await;
}

async fn a_webhook_rate_limit_spaces_its_deliveries(backend: Backend) {
    let app = app_with_receivers(backend).await;
    let rx = Receiver::start().await;
    let r = app
        .post(
            "/api/v1/webhooks",
            app.admin(),
            "manage:webhooks",
            json!({"url": rx.url, "events": ["job.completed"], "rateLimit": 4}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["rateLimit"], 4);
    let id = r.body["id"].as_str().expect("id").to_owned();
    // Queue twelve while paused, then let them go: four at once, then four a second.
    app.post(
        &format!("/api/v1/webhooks/{id}/pause"),
        app.admin(),
        "manage:webhooks",
        json!({}),
    )
    .await;
    for i in 0..12 {
        publish(
            &app,
            app.admin(),
            "job.completed",
            json!({"jobId": format!("r{i}")}),
        )
        .await;
    }
    app.post(
        &format!("/api/v1/webhooks/{id}/resume"),
        app.admin(),
        "manage:webhooks",
        json!({}),
    )
    .await;
    rx.wait_for("job.completed", 1, Duration::from_secs(10))
        .await;
    let started = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let early = rx.of_type("job.completed").len();
    assert!(
        early <= 8,
        "at most the burst and a few more within 0.7 s, got {early} after {:?}",
        started.elapsed()
    );
    rx.wait_for("job.completed", 12, Duration::from_secs(15))
        .await;
    // Clearing the limit lifts it.
    let r = app
        .patch(
            &format!("/api/v1/webhooks/{id}"),
            app.admin(),
            "manage:webhooks",
            json!({"rateLimit": null}),
        )
        .await;
    assert_eq!(r.body["rateLimit"], Value::Null, "{}", r.text);
    app.stop().await;
}
