//! Scoped API keys through HTTP: lifecycle and bad input, use as a bearer credential with
//! scopes ∩ role, rotation with an overlap, rotation policy, per-key IP ranges and rate
//! limits, spend metering through the gateway (price, reported cost, 402, events, restart,
//! the concurrency bound), and `/verify` with every code.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::edge::{audit_until, send};
use crate::helpers::{Backend, StoreLocation, TestApp, eventually, on_both_stores};

on_both_stores!(
    api_key_lifecycle_and_bad_input,
    api_key_rotation_overlap_and_policy,
    api_key_ranges_and_rate_limit,
    api_key_spend_through_the_gateway,
    api_key_verify_codes,
);

pub async fn create_key(app: &TestApp, token: &str, body: Value) -> Value {
    let r = app
        .post("/api/v1/auth/api-keys", token, "manage:api-keys", body)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    r.body
}

/// An upstream that answers 200 and reports `?cost=N` in `x-datastack-cost`.
pub async fn costly_upstream() -> SocketAddr {
    async fn handle(req: Request) -> Response {
        let cost = req
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("cost="))
            .map(str::to_owned);
        match cost {
            Some(c) => ([("x-datastack-cost", c)], "ok").into_response(),
            None => "ok".into_response(),
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, axum::Router::new().fallback(handle)).await;
    });
    addr
}

async fn security_events_as(app: &TestApp, admin: &str, event: &str) -> Vec<Value> {
    let r = app
        .get(
            &format!("/api/v1/audit/security-events?type={event}"),
            admin,
            "read:audit",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body["items"].as_array().cloned().unwrap_or_default()
}

async fn security_events(app: &TestApp, event: &str) -> Vec<Value> {
    security_events_as(app, app.admin(), event).await
}

async fn key_count(app: &TestApp) -> usize {
    let r = app
        .get("/api/v1/auth/api-keys", app.admin(), "read:api-keys")
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body["items"].as_array().expect("items").len()
}

async fn api_key_lifecycle_and_bad_input(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.admin().to_owned();

    // Bad input: 400 naming the field, nothing created.
    for (body, field) in [
        (json!({"name": "x", "scopes": ["read:nothing"]}), "scopes"),
        (json!({"name": "x", "scopes": []}), "scopes"),
        (json!({"name": "", "scopes": ["read:clusters"]}), "name"),
        (
            json!({"name": "x", "scopes": ["read:clusters"], "allowedIpRanges": ["10.0.0.0/33"]}),
            "allowedIpRanges[0]",
        ),
        (
            json!({"name": "x", "scopes": ["read:clusters"], "rateLimit": -5}),
            "rateLimit",
        ),
        (
            json!({"name": "x", "scopes": ["read:clusters"], "rateLimit": 100_000_000}),
            "rateLimit",
        ),
        (
            json!({"name": "x", "scopes": ["read:clusters"], "spendLimit": {"units": 0, "period": "day"}}),
            "spendLimit.units",
        ),
        (
            json!({"name": "x", "scopes": ["read:clusters"], "spendLimit": {"units": -1, "period": "day"}}),
            "spendLimit.units",
        ),
        (
            json!({"name": "x", "scopes": ["read:clusters"], "spendLimit": {"units": 5, "period": "week"}}),
            "spendLimit.period",
        ),
        (
            json!({"name": "x", "scopes": ["read:clusters"], "metadata": {"blob": "a".repeat(5000)}}),
            "metadata",
        ),
        (
            json!({"name": "x", "scopes": ["read:clusters"], "metadata": [1, 2]}),
            "metadata",
        ),
        (
            json!({"name": "x", "scopes": ["read:clusters"], "rotationPolicy": {"intervalDays": 0}}),
            "rotationPolicy.intervalDays",
        ),
        (
            json!({"name": "x", "scopes": ["read:clusters"], "expiresInDays": 0}),
            "expiresInDays",
        ),
        (
            json!({"name": "x", "scopes": ["read:clusters"], "ownerId": "usr_nope"}),
            "ownerId",
        ),
    ] {
        let r = app
            .post("/api/v1/auth/api-keys", &admin, "manage:api-keys", body)
            .await;
        r.assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
        let message = r.body["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains(field), "{field}: {message}");
    }
    assert_eq!(key_count(&app).await, 0, "bad input created nothing");

    // A user (editor) creates a key for themself; it is shown once, with dkey and checksum.
    let (user, user_token) = app.user_with_token("dev@example.com", "editor").await;
    let created = create_key(
        &app,
        &user_token,
        json!({
            "name": "ci deploy",
            "scopes": ["read:clusters", "manage:jobs", "read:users", "manage:users"],
            "expiresInDays": 30,
            "rateLimit": 600,
            "spendLimit": {"units": 10000, "period": "month"},
            "allowedIpRanges": ["127.0.0.1/32", "2001:db8::/32"],
            "metadata": {"env": "staging", "team": 7},
            "rotationPolicy": {"intervalDays": 90},
        }),
    )
    .await;
    let secret = created["key"].as_str().expect("key").to_owned();
    let id = created["id"].as_str().expect("id").to_owned();
    assert!(secret.starts_with("dkey") && secret.len() == 76, "{secret}");
    assert!(id.starts_with("key_"));
    assert_eq!(created["ownerId"], user);
    assert_eq!(created["status"], "active");
    assert_eq!(created["rateLimit"], 600);
    assert_eq!(
        created["spendLimit"],
        json!({"units": 10000, "period": "month"})
    );
    assert_eq!(
        created["allowedIpRanges"],
        json!(["127.0.0.1/32", "2001:db8::/32"])
    );
    assert_eq!(created["metadata"], json!({"env": "staging", "team": 7}));
    assert_eq!(created["rotationPolicy"], json!({"intervalDays": 90}));
    assert!(created["rotationDueAt"].is_string());

    // It works as a bearer credential; scopes ∩ role: an editor's key cannot manage users.
    let me = app.me(&secret).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.text);
    assert_eq!(me.body["principal"]["id"], user);
    let users = app.get("/api/v1/users", &secret, "read:users").await;
    assert_eq!(users.status, StatusCode::OK, "{}", users.text);
    let manage = app
        .post(
            "/api/v1/users",
            &secret,
            "manage:users",
            json!({"email": "x@example.com", "name": "x", "role": "viewer"}),
        )
        .await;
    manage.assert_error(StatusCode::FORBIDDEN, "FORBIDDEN");
    // Not among its scopes.
    let tokens = app.get("/api/v1/auth/tokens", &secret, "read:tokens").await;
    tokens.assert_error(StatusCode::FORBIDDEN, "FORBIDDEN");
    // A tampered key is refused like any unknown credential.
    let mut tampered = secret.clone().into_bytes();
    tampered[10] = if tampered[10] == b'0' { b'1' } else { b'0' };
    let tampered = String::from_utf8(tampered).expect("ascii");
    app.me(&tampered)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");

    // A key cannot be given more than its creator holds, nor be owned by another user.
    let narrow = app
        .create_token(
            &user_token,
            json!({"label": "narrow", "scopes": ["manage:api-keys"]}),
        )
        .await
        .0;
    let r = app
        .post(
            "/api/v1/auth/api-keys",
            &narrow,
            "manage:api-keys",
            json!({"name": "wide", "scopes": ["all-apis"]}),
        )
        .await;
    r.assert_error(StatusCode::FORBIDDEN, "FORBIDDEN");
    let sp = app
        .post(
            "/api/v1/service-principals",
            &admin,
            "manage:users",
            json!({"name": "etl", "role": "editor"}),
        )
        .await;
    assert_eq!(sp.status, StatusCode::CREATED, "{}", sp.text);
    let sp_id = sp.body["id"].as_str().expect("sp id").to_owned();
    let r = app
        .post(
            "/api/v1/auth/api-keys",
            &user_token,
            "manage:api-keys",
            json!({"name": "for sp", "scopes": ["read:jobs"], "ownerId": sp_id}),
        )
        .await;
    r.assert_error(StatusCode::FORBIDDEN, "FORBIDDEN");
    let r = app
        .post(
            "/api/v1/auth/api-keys",
            &admin,
            "manage:api-keys",
            json!({"name": "for user", "scopes": ["read:jobs"], "ownerId": user}),
        )
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    let sp_key = create_key(
        &app,
        &admin,
        json!({"name": "etl prod", "scopes": ["read:jobs"], "ownerId": sp_id}),
    )
    .await;
    assert_eq!(sp_key["ownerId"], sp_id);

    // Lists never show secrets; non-admins see their own; filters by owner and status.
    let mine = app
        .get("/api/v1/auth/api-keys", &user_token, "read:api-keys")
        .await;
    assert_eq!(mine.status, StatusCode::OK, "{}", mine.text);
    assert_eq!(mine.body["items"].as_array().expect("items").len(), 1);
    assert!(!mine.text.contains(&secret[4..]));
    let all = app
        .get("/api/v1/auth/api-keys?limit=1", &admin, "read:api-keys")
        .await;
    assert_eq!(all.body["items"].as_array().expect("items").len(), 1);
    let cursor = all.body["nextCursor"].as_str().expect("a second page");
    let next = app
        .get(
            &format!("/api/v1/auth/api-keys?limit=1&cursor={cursor}"),
            &admin,
            "read:api-keys",
        )
        .await;
    assert_eq!(next.body["items"].as_array().expect("items").len(), 1);
    assert_ne!(next.body["items"][0]["id"], all.body["items"][0]["id"]);
    let by_owner = app
        .get(
            &format!("/api/v1/auth/api-keys?ownerId={sp_id}"),
            &admin,
            "read:api-keys",
        )
        .await;
    assert_eq!(by_owner.body["items"][0]["id"], sp_key["id"]);
    let other = app
        .get(
            &format!("/api/v1/auth/api-keys?ownerId={sp_id}"),
            &user_token,
            "read:api-keys",
        )
        .await;
    other.assert_error(StatusCode::FORBIDDEN, "FORBIDDEN");
    let hidden = app
        .get(
            &format!(
                "/api/v1/auth/api-keys/{}",
                sp_key["id"].as_str().expect("id")
            ),
            &user_token,
            "read:api-keys",
        )
        .await;
    hidden.assert_error(StatusCode::NOT_FOUND, "NOT_FOUND");
    // API keys are not personal access tokens.
    let pats = app
        .get("/api/v1/auth/tokens?ownerId=all", &admin, "read:tokens")
        .await;
    assert!(!pats.text.contains(&id));
    let r = app
        .delete(
            &format!("/api/v1/auth/tokens/{id}"),
            &admin,
            "manage:tokens",
        )
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");

    // Update: name, limits, ranges, metadata; bad input changes nothing.
    let r = app
        .patch(
            &format!("/api/v1/auth/api-keys/{id}"),
            &user_token,
            "manage:api-keys",
            json!({"rateLimit": 0}),
        )
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    let r = app
        .patch(
            &format!("/api/v1/auth/api-keys/{id}"),
            &user_token,
            "manage:api-keys",
            json!({"name": "ci deploy v2", "rateLimit": null, "spendLimit": {"units": 50, "period": "day"},
                   "metadata": {"env": "prod"}, "rotationPolicy": null}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["name"], "ci deploy v2");
    assert_eq!(r.body["rateLimit"], Value::Null);
    assert_eq!(r.body["spendLimit"], json!({"units": 50, "period": "day"}));
    assert_eq!(
        r.body["allowedIpRanges"],
        json!(["127.0.0.1/32", "2001:db8::/32"])
    );
    assert_eq!(r.body["metadata"], json!({"env": "prod"}));
    assert_eq!(r.body["rotationPolicy"], Value::Null);
    let got = app
        .get(
            &format!("/api/v1/auth/api-keys/{id}"),
            &admin,
            "read:api-keys",
        )
        .await;
    assert_eq!(got.body["name"], "ci deploy v2");
    assert_eq!(got.body["secrets"].as_array().expect("secrets").len(), 1);

    // The access review lists the key as an api_key with the same flags.
    let review = app.get("/api/v1/access-review", &admin, "read:audit").await;
    assert_eq!(review.status, StatusCode::OK, "{}", review.text);
    let item = review.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|i| i["credentialId"] == id)
        .cloned()
        .expect("the key is reviewed");
    assert_eq!(item["kind"], "api_key");
    assert_eq!(item["label"], "ci deploy v2");
    let never = review.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|i| i["credentialId"] == sp_key["id"])
        .cloned()
        .expect("the service principal's key is reviewed");
    assert!(
        never["flags"]
            .as_array()
            .expect("flags")
            .contains(&json!("never_expires"))
    );

    // Revoke: refused at once; listed as revoked; audited.
    let r = app
        .delete(
            &format!("/api/v1/auth/api-keys/{id}"),
            &user_token,
            "manage:api-keys",
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    app.me(&secret)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    let revoked = app
        .get(
            "/api/v1/auth/api-keys?status=revoked",
            &admin,
            "read:api-keys",
        )
        .await;
    assert_eq!(revoked.body["items"][0]["id"], id);
    assert_eq!(revoked.body["items"][0]["status"], "revoked");
    let r = app
        .get(
            "/api/v1/auth/api-keys?status=bogus",
            &admin,
            "read:api-keys",
        )
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    for event in ["api_key.created", "api_key.updated", "api_key.revoked"] {
        let events = security_events(&app, event).await;
        assert!(
            events.iter().any(|e| e["payload"]["keyId"] == id),
            "{event}: {events:?}"
        );
        assert!(
            !serde_json::to_string(&events)
                .expect("json")
                .contains(&secret[4..])
        );
    }
    let entries = audit_until(
        &app,
        "/api/v1/audit/events?resourceType=api-keys",
        |items| items.len() >= 4,
    )
    .await;
    assert!(
        !serde_json::to_string(&entries)
            .expect("json")
            .contains(&secret[4..])
    );
    app.stop().await;
}

async fn api_key_rotation_overlap_and_policy(backend: Backend) {
    let store = std::sync::Arc::new(StoreLocation::new(backend).await);
    let app = TestApp::spawn_on(store.clone(), |c| {
        c.audit_maintenance_interval = Duration::from_millis(300);
    })
    .await;
    let admin = app.admin().to_owned();
    let created = create_key(
        &app,
        &admin,
        json!({"name": "svc", "scopes": ["read:users"], "spendLimit": {"units": 100, "period": "total"}}),
    )
    .await;
    let old = created["key"].as_str().expect("key").to_owned();
    let id = created["id"].as_str().expect("id").to_owned();
    assert_eq!(app.me(&old).await.status, StatusCode::OK);

    let r = app
        .post(
            &format!("/api/v1/auth/api-keys/{id}/rotate"),
            &admin,
            "manage:api-keys",
            json!({"overlapSeconds": 99_999_999}),
        )
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    assert_eq!(
        app.me(&old).await.status,
        StatusCode::OK,
        "a refused rotation changes nothing"
    );

    let rotated = app
        .post(
            &format!("/api/v1/auth/api-keys/{id}/rotate"),
            &admin,
            "manage:api-keys",
            json!({"overlapSeconds": 2}),
        )
        .await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.text);
    let new = rotated.body["key"].as_str().expect("key").to_owned();
    assert_ne!(new, old);
    assert_eq!(rotated.body["id"], id, "same key");
    assert_eq!(rotated.body["spendLimit"]["units"], 100, "same limits");
    let secrets = rotated.body["secrets"].as_array().expect("secrets").clone();
    assert_eq!(secrets.len(), 2, "{secrets:?}");
    assert_eq!(secrets[0]["current"], true);
    assert_eq!(secrets[1]["current"], false);
    assert_eq!(secrets[1]["lastFour"], old[old.len() - 4..]);
    assert!(secrets[1]["expiresAt"].is_string());
    // Both work during the overlap; the old one stops by itself after it.
    assert_eq!(app.me(&new).await.status, StatusCode::OK);
    assert_eq!(app.me(&old).await.status, StatusCode::OK);
    // The old secret stops by itself when the overlap ends.
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.me(&old).await.status == StatusCode::UNAUTHORIZED
        })
        .await,
        "the old secret still works after the overlap"
    );
    let refused = app.me(&old).await;
    assert_eq!(refused.code(), "UNAUTHORIZED", "{}", refused.text);
    assert_eq!(app.me(&new).await.status, StatusCode::OK);
    let got = app
        .get(
            &format!("/api/v1/auth/api-keys/{id}"),
            &admin,
            "read:api-keys",
        )
        .await;
    assert_eq!(got.body["secrets"].as_array().expect("secrets").len(), 1);

    // Overlap 0: the previous secret stops at once.
    let again = app
        .post(
            &format!("/api/v1/auth/api-keys/{id}/rotate"),
            &admin,
            "manage:api-keys",
            json!({"overlapSeconds": 0}),
        )
        .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    let newest = again.body["key"].as_str().expect("key").to_owned();
    app.me(&new)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    assert_eq!(app.me(&newest).await.status, StatusCode::OK);
    // No body: the default overlap (24 h) keeps the previous secret working.
    let r = app
        .call(
            Method::POST,
            &format!("/api/v1/auth/api-keys/{id}/rotate"),
            Some(&admin),
            Some("manage:api-keys"),
            Some(json!({})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(app.me(&newest).await.status, StatusCode::OK);
    // Revocation ends both secrets.
    let latest = r.body["key"].as_str().expect("key").to_owned();
    let r = app
        .delete(
            &format!("/api/v1/auth/api-keys/{id}"),
            &admin,
            "manage:api-keys",
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    app.me(&newest)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    app.me(&latest)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    let events = security_events(&app, "api_key.rotated").await;
    assert_eq!(events.len(), 3, "{events:?}");

    // A rotation policy that is due marks the key and sends one event.
    let due = create_key(
        &app,
        &admin,
        json!({"name": "due", "scopes": ["read:users"], "rotationPolicy": {"intervalDays": 30}}),
    )
    .await;
    let due_id = due["id"].as_str().expect("id").to_owned();
    app.store()
        .execute(&[&format!(
            "UPDATE api_keys SET rotation_due_at = rotated_at WHERE token_id = '{due_id}'"
        )])
        .await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            security_events(&app, "api_key.rotation_due")
                .await
                .iter()
                .any(|e| e["payload"]["keyId"] == due_id)
        })
        .await,
        "api_key.rotation_due is sent"
    );
    let listed = app
        .get(
            "/api/v1/auth/api-keys?status=rotation_due",
            &admin,
            "read:api-keys",
        )
        .await;
    assert_eq!(listed.body["items"][0]["id"], due_id, "{}", listed.text);
    assert_eq!(listed.body["items"][0]["status"], "rotation_due");
    // The access review flags it by its own policy (it is minutes old, not 90 days).
    let review = app
        .get(
            "/api/v1/access-review?flag=rotation_due",
            &admin,
            "read:audit",
        )
        .await;
    assert_eq!(review.status, StatusCode::OK, "{}", review.text);
    assert!(
        review.body["items"]
            .as_array()
            .expect("items")
            .iter()
            .any(|i| i["credentialId"] == due_id && i["kind"] == "api_key"),
        "{}",
        review.text
    );
    // Two more passes had the chance to send it again.
    app.wait_for_maintenance_passes(2).await;
    assert_eq!(
        security_events(&app, "api_key.rotation_due").await.len(),
        1,
        "sent once"
    );
    // Rotating clears it.
    let r = app
        .post(
            &format!("/api/v1/auth/api-keys/{due_id}/rotate"),
            &admin,
            "manage:api-keys",
            json!({"overlapSeconds": 0}),
        )
        .await;
    assert_eq!(r.body["status"], "active", "{}", r.text);
    app.stop().await;
}

async fn api_key_ranges_and_rate_limit(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.admin().to_owned();
    let created = create_key(
        &app,
        &admin,
        json!({"name": "ranged", "scopes": ["read:users"], "allowedIpRanges": ["10.0.0.0/8", "2001:db8::/32"]}),
    )
    .await;
    let key = created["key"].as_str().expect("key").to_owned();
    let id = created["id"].as_str().expect("id").to_owned();
    // The test client connects from 127.0.0.1: outside the ranges.
    let r = app.me(&key).await;
    r.assert_error(StatusCode::FORBIDDEN, "IP_NOT_ALLOWED");
    audit_until(&app, "/api/v1/audit/events?outcome=denied", |items| {
        items
            .iter()
            .any(|e| e["credentialId"] == id && e["status"] == 403)
    })
    .await;
    // Widening the ranges takes effect at once.
    let r = app
        .patch(
            &format!("/api/v1/auth/api-keys/{id}"),
            &admin,
            "manage:api-keys",
            json!({"allowedIpRanges": ["10.0.0.0/8", "127.0.0.0/8"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(app.me(&key).await.status, StatusCode::OK);
    let r = app
        .patch(
            &format!("/api/v1/auth/api-keys/{id}"),
            &admin,
            "manage:api-keys",
            json!({"allowedIpRanges": null}),
        )
        .await;
    assert_eq!(r.body["allowedIpRanges"], Value::Null);

    // The key's own rate limit replaces the default per credential.
    let limited = create_key(
        &app,
        &admin,
        json!({"name": "slow", "scopes": ["read:users"], "rateLimit": 3}),
    )
    .await;
    let slow = limited["key"].as_str().expect("key").to_owned();
    for _ in 0..3 {
        let r = app.me(&slow).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert!(
            r.header("ratelimit-policy")
                .expect("policy")
                .contains("q=3")
        );
    }
    let r = app.me(&slow).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text);
    assert_eq!(r.code(), "RATE_LIMITED");
    assert!(r.header("retry-after").is_some());
    // Other credentials are unaffected.
    assert_eq!(app.me(&admin).await.status, StatusCode::OK);
    app.stop().await;
}

async fn api_key_spend_through_the_gateway(backend: Backend) {
    let store = std::sync::Arc::new(StoreLocation::new(backend).await);
    let app = TestApp::spawn_on(store.clone(), |_| {}).await;
    let admin = app.admin().to_owned();
    let up = costly_upstream().await;
    for (prefix, price) in [("/v1/jobs", 3), ("/v1/sql", 1)] {
        let r = app
            .post(
                "/api/v1/gateway/routes",
                &admin,
                "manage:gateway",
                json!({"pathPrefix": prefix, "upstream": format!("http://{up}"),
                       "resource": if prefix == "/v1/jobs" { "jobs" } else { "sql" },
                       "pricePerRequest": price}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    }
    let created = create_key(
        &app,
        &admin,
        json!({"name": "metered", "scopes": ["read:jobs", "read:sql"],
               "spendLimit": {"units": 10, "period": "day"}}),
    )
    .await;
    let key = created["key"].as_str().expect("key").to_owned();
    let id = created["id"].as_str().expect("id").to_owned();

    // Concurrent requests at 3 units each against a limit of 10: admitted while the
    // count is below 10 (0, 3, 6, 9), so exactly four pass (12 units: the overspend is
    // less than one request's price) and the rest get 402.
    let mut calls = Vec::new();
    for _ in 0..12 {
        let app = &app;
        let key = key.clone();
        calls.push(async move { send(app, Method::GET, "/v1/jobs/list", Some(&key)).await });
    }
    let replies = futures_util::future::join_all(calls).await;
    let passed = replies
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .count();
    let refused: Vec<_> = replies
        .iter()
        .filter(|r| r.status == StatusCode::PAYMENT_REQUIRED)
        .collect();
    assert_eq!(
        passed,
        4,
        "{:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert_eq!(refused.len(), 8);
    let r = refused[0];
    assert_eq!(r.code(), "SPEND_LIMIT_EXCEEDED");
    let resets: chrono::DateTime<chrono::Utc> = r.body["error"]["resetsAt"]
        .as_str()
        .expect("resetsAt")
        .parse()
        .expect("a time");
    let tomorrow = (chrono::Utc::now() + chrono::Duration::days(1))
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .expect("midnight")
        .and_utc();
    assert_eq!(resets, tomorrow);
    // The message names the time, as a person reads it.
    let when = tomorrow.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.ends_with(&format!("it resets at {when}"))),
        "{}",
        r.text
    );
    assert!(r.header("retry-after").is_some());

    let usage = app
        .get(
            &format!("/api/v1/auth/api-keys/{id}/usage"),
            &admin,
            "read:api-keys",
        )
        .await;
    assert_eq!(usage.status, StatusCode::OK, "{}", usage.text);
    assert_eq!(usage.body["used"], 12);
    assert_eq!(usage.body["limit"], 10);
    assert_eq!(usage.body["remaining"], 0);
    assert_eq!(usage.body["period"], "day");
    assert!(
        usage.body["periodStart"]
            .as_str()
            .expect("start")
            .ends_with("T00:00:00Z")
    );

    // Both thresholds raised one event each (warning at 80 %, then the limit).
    for event in ["api_key.spend_warning", "api_key.spend_limit_reached"] {
        assert!(
            eventually(Duration::from_secs(5), || async {
                security_events(&app, event)
                    .await
                    .iter()
                    .any(|e| e["payload"]["keyId"] == id)
            })
            .await,
            "{event} is sent"
        );
    }

    // Usage survives a restart: still refused after it.
    app.stop().await;
    let app = TestApp::spawn_on(store.clone(), |_| {}).await;
    let r = send(&app, Method::GET, "/v1/jobs/x", Some(&key)).await;
    assert_eq!(r.status, StatusCode::PAYMENT_REQUIRED, "{}", r.text);
    let usage = app
        .get(
            &format!("/api/v1/auth/api-keys/{id}/usage"),
            &admin,
            "read:api-keys",
        )
        .await;
    assert_eq!(usage.body["used"], 12);
    for event in ["api_key.spend_warning", "api_key.spend_limit_reached"] {
        assert_eq!(
            security_events_as(&app, &admin, event).await.len(),
            1,
            "{event} once"
        );
    }

    // Raising the limit lets it spend again; the upstream's reported cost replaces the price.
    let r = app
        .patch(
            &format!("/api/v1/auth/api-keys/{id}"),
            &admin,
            "manage:api-keys",
            json!({"spendLimit": {"units": 100, "period": "day"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = send(&app, Method::GET, "/v1/sql/q?cost=25", Some(&key)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = send(&app, Method::GET, "/v1/sql/q", Some(&key)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let usage = app
        .get(
            &format!("/api/v1/auth/api-keys/{id}/usage"),
            &admin,
            "read:api-keys",
        )
        .await;
    assert_eq!(usage.body["used"], 12 + 25 + 1, "{}", usage.text);
    assert_eq!(usage.body["remaining"], 100 - 38);

    // Forward-auth decisions are charged the route's price too.
    let r = app
        .call(Method::GET, "/auth/verify", Some(&key), None, None)
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    let r = app
        .http
        .get(format!("{}/auth/verify/v1/jobs/run", app.base))
        .bearer_auth(&key)
        .send()
        .await
        .expect("verify");
    assert_eq!(r.status(), StatusCode::OK);
    let usage = app
        .get(
            &format!("/api/v1/auth/api-keys/{id}/usage"),
            &admin,
            "read:api-keys",
        )
        .await;
    assert_eq!(usage.body["used"], 41, "{}", usage.text);

    // Personal access tokens are not metered.
    let r = send(&app, Method::GET, "/v1/jobs/x", Some(&admin)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    // A key whose owner is deleted with charges not yet flushed does not stop the node
    // recording the other keys' spend.
    let sp = app
        .post(
            "/api/v1/service-principals",
            &admin,
            "manage:users",
            json!({"name": "short-lived", "role": "editor"}),
        )
        .await;
    assert_eq!(sp.status, StatusCode::CREATED, "{}", sp.text);
    let sp_id = sp.body["id"].as_str().expect("id").to_owned();
    let doomed = create_key(
        &app,
        &admin,
        json!({"name": "doomed", "scopes": ["read:jobs"], "ownerId": sp_id,
               "spendLimit": {"units": 100, "period": "day"}}),
    )
    .await;
    let doomed = doomed["key"].as_str().expect("key").to_owned();
    let r = send(&app, Method::GET, "/v1/jobs/x", Some(&doomed)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = app
        .delete(
            &format!("/api/v1/service-principals/{sp_id}"),
            &admin,
            "manage:users",
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let r = send(&app, Method::GET, "/v1/jobs/x", Some(&key)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    app.stop().await;
    // Recorded by the flush at shutdown: the restarted node reads it back.
    let app = TestApp::spawn_on(store, |_| {}).await;
    let usage = app
        .get(
            &format!("/api/v1/auth/api-keys/{id}/usage"),
            &admin,
            "read:api-keys",
        )
        .await;
    assert_eq!(usage.body["used"], 44, "{}", usage.text);
    app.stop().await;
}

async fn verify(app: &TestApp, caller: &str, body: Value) -> Value {
    let r = app
        .post(
            "/api/v1/auth/api-keys/verify",
            caller,
            "read:api-keys",
            body,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body
}

async fn api_key_verify_codes(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.admin().to_owned();
    let created = create_key(
        &app,
        &admin,
        json!({"name": "checked", "scopes": ["read:clusters"], "rateLimit": 4,
               "spendLimit": {"units": 5, "period": "month"},
               "allowedIpRanges": ["203.0.113.0/24"], "metadata": {"tier": "gold"}}),
    )
    .await;
    let key = created["key"].as_str().expect("key").to_owned();
    let id = created["id"].as_str().expect("id").to_owned();

    let v = verify(
        &app,
        &admin,
        json!({"key": key, "scope": "read:clusters", "ip": "203.0.113.7", "cost": 2}),
    )
    .await;
    assert_eq!(v["valid"], true, "{v}");
    assert_eq!(v["code"], "VALID");
    assert_eq!(v["keyId"], id);
    assert!(v["owner"].as_str().expect("owner").starts_with("usr_"));
    assert_eq!(v["scopes"], json!(["read:clusters"]));
    assert_eq!(v["metadata"], json!({"tier": "gold"}));
    assert_eq!(v["remaining"]["spend"], 3);
    assert_eq!(v["remaining"]["rateLimit"], 3);

    let v = verify(
        &app,
        &admin,
        json!({"key": key, "scope": "manage:clusters", "ip": "203.0.113.7"}),
    )
    .await;
    assert_eq!(v["code"], "INSUFFICIENT_SCOPE");
    assert_eq!(v["valid"], false);
    let v = verify(&app, &admin, json!({"key": key, "ip": "198.51.100.1"})).await;
    assert_eq!(v["code"], "IP_NOT_ALLOWED");
    let v = verify(&app, &admin, json!({"key": key})).await;
    assert_eq!(
        v["code"], "IP_NOT_ALLOWED",
        "an unknown address is outside the ranges"
    );
    let v = verify(
        &app,
        &admin,
        json!({"key": key, "ip": "203.0.113.7", "cost": 3}),
    )
    .await;
    assert_eq!(v["code"], "VALID");
    assert_eq!(v["remaining"]["spend"], 0);
    let v = verify(
        &app,
        &admin,
        json!({"key": key, "ip": "203.0.113.7", "cost": 1}),
    )
    .await;
    assert_eq!(v["code"], "SPEND_LIMIT_EXCEEDED", "{v}");
    assert!(v["resetsAt"].is_string());
    // Four checks per minute reach the rate limit (refusals of scope and address come
    // first and do not count): the fifth is refused.
    let v = verify(&app, &admin, json!({"key": key, "ip": "203.0.113.7"})).await;
    assert_eq!(v["code"], "SPEND_LIMIT_EXCEEDED", "{v}");
    let v = verify(&app, &admin, json!({"key": key, "ip": "203.0.113.7"})).await;
    assert_eq!(v["code"], "RATE_LIMITED", "{v}");
    assert_eq!(v["remaining"]["rateLimit"], 0);

    // Unknown, malformed, a token, another workspace's key: NOT_FOUND, nothing revealed.
    let unknown = format!("dkey{}", "0".repeat(72));
    for bogus in [unknown.as_str(), "dkey-nope", admin.as_str(), ""] {
        let v = verify(&app, &admin, json!({"key": bogus})).await;
        assert_eq!(v["code"], "NOT_FOUND", "{bogus}: {v}");
        assert_eq!(v["keyId"], Value::Null);
    }
    let ws = app
        .post(
            "/api/v1/workspaces",
            &admin,
            "manage:workspaces",
            json!({"name": "other"}),
        )
        .await;
    assert_eq!(ws.status, StatusCode::CREATED, "{}", ws.text);
    let other_admin = ws.body["adminToken"].as_str().map(str::to_owned);
    if let Some(other_admin) = other_admin {
        let v = verify(&app, &other_admin, json!({"key": key})).await;
        assert_eq!(v["code"], "NOT_FOUND", "{v}");
    }

    // Expired and revoked.
    let short = create_key(
        &app,
        &admin,
        json!({"name": "short", "scopes": ["read:clusters"]}),
    )
    .await;
    let short_key = short["key"].as_str().expect("key").to_owned();
    let short_id = short["id"].as_str().expect("id").to_owned();
    app.store()
        .execute(&[&format!(
            "UPDATE tokens SET expires_at = created_at WHERE id = '{short_id}'"
        )])
        .await;
    let v = verify(&app, &admin, json!({"key": short_key})).await;
    assert_eq!(v["code"], "EXPIRED", "{v}");
    let gone = create_key(
        &app,
        &admin,
        json!({"name": "gone", "scopes": ["read:clusters"]}),
    )
    .await;
    let gone_key = gone["key"].as_str().expect("key").to_owned();
    assert_eq!(
        verify(&app, &admin, json!({"key": gone_key})).await["code"],
        "VALID"
    );
    let r = app
        .delete(
            &format!("/api/v1/auth/api-keys/{}", gone["id"].as_str().expect("id")),
            &admin,
            "manage:api-keys",
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(
        verify(&app, &admin, json!({"key": gone_key})).await["code"],
        "REVOKED"
    );

    // A key cannot loosen its own settings, even holding manage:api-keys.
    let manager = create_key(
        &app,
        &admin,
        json!({"name": "manager", "scopes": ["manage:api-keys"], "rateLimit": 100}),
    )
    .await;
    let manager_key = manager["key"].as_str().expect("key").to_owned();
    let manager_id = manager["id"].as_str().expect("id").to_owned();
    let r = app
        .patch(
            &format!("/api/v1/auth/api-keys/{manager_id}"),
            &manager_key,
            "manage:api-keys",
            json!({"rateLimit": null}),
        )
        .await;
    r.assert_error(StatusCode::FORBIDDEN, "FORBIDDEN");
    let got = app
        .get(
            &format!("/api/v1/auth/api-keys/{manager_id}"),
            &admin,
            "read:api-keys",
        )
        .await;
    assert_eq!(got.body["rateLimit"], 100);

    // Bad input is a 400; the scope read:api-keys is required.
    let r = app
        .post(
            "/api/v1/auth/api-keys/verify",
            &admin,
            "read:api-keys",
            json!({"key": key, "ip": "not-an-ip"}),
        )
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    let r = app
        .post(
            "/api/v1/auth/api-keys/verify",
            &admin,
            "read:api-keys",
            json!({"key": key, "scope": "read:everything"}),
        )
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    let r = app
        .post(
            "/api/v1/auth/api-keys/verify",
            &gone_key,
            "read:api-keys",
            json!({"key": key}),
        )
        .await;
    r.assert_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    // The key itself is never in the audit log.
    let entries = audit_until(
        &app,
        "/api/v1/audit/events?resourceType=api-keys",
        |items| {
            items
                .iter()
                .any(|e| e["action"].as_str().is_some_and(|a| a.contains("verify")))
        },
    )
    .await;
    assert!(
        !serde_json::to_string(&entries)
            .expect("json")
            .contains(&key[4..])
    );
    app.stop().await;
}
