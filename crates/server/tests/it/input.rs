//! Bad input gets a clear 4xx in the error shape and changes nothing.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{Backend, TestApp, on_both_stores};

on_both_stores!(
    bad_token_requests_are_rejected_and_change_nothing,
    oversized_bodies_are_413
);

async fn token_count(app: &TestApp) -> usize {
    app.get(
        "/api/v1/auth/tokens?ownerId=all",
        app.admin(),
        "read:tokens",
    )
    .await
    .body["items"]
        .as_array()
        .expect("items")
        .len()
}

async fn bad_token_requests_are_rejected_and_change_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.admin().to_owned();
    let before = token_count(&app).await;
    let cases = [
        (json!({"label": 5}), "label"),
        (json!({"label": ""}), "label"),
        (json!({"label": "x".repeat(201)}), "label"),
        (
            json!({"label": "x", "scopes": ["read:users", "write:everything"]}),
            "scopes[1]",
        ),
        (json!({"label": "x", "scopes": []}), "scopes"),
        (json!({"label": "x", "expiresInDays": -1}), "expiresInDays"),
        (json!({"label": "x", "expiresInDays": 0}), "expiresInDays"),
        (
            json!({"label": "x", "lifetimeSeconds": -10}),
            "lifetimeSeconds",
        ),
        (
            json!({"label": "x", "expiresInDays": 1, "lifetimeSeconds": 100}),
            "expiresInDays",
        ),
        (json!({"label": "x", "unknownField": true}), "unknownField"),
        (
            json!({"label": "x", "ownerId": "usr_00000000000000000000000000000000"}),
            "ownerId",
        ),
        (json!({"label": "x", "ownerId": "garbage"}), "ownerId"),
    ];
    for (body, field) in cases {
        let r = app
            .post("/api/v1/auth/tokens", &admin, "manage:tokens", body.clone())
            .await;
        r.assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
        assert_eq!(r.code(), "INVALID_REQUEST");
        let message = r.body["error"]["message"].as_str().expect("message");
        assert!(message.contains(field), "{body}: {message}");
        assert!(r.body["error"]["requestId"].is_string());
    }
    // Malformed JSON, wrong content type, a submitted value is never echoed.
    for (ct, raw) in [
        ("application/json", "{\"label\": "),
        ("text/plain", "{\"label\":\"x\"}"),
        ("application/json", "[1,2]"),
    ] {
        let r = app
            .http
            .post(format!("{}/api/v1/auth/tokens", app.base))
            .bearer_auth(&admin)
            .header("x-datastack-scope", "manage:tokens")
            .header("content-type", ct)
            .body(raw)
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{raw}");
        let body: serde_json::Value = r.json().await.expect("json");
        assert_eq!(body["error"]["code"], "INVALID_REQUEST");
    }
    let r = app
        .post(
            "/api/v1/auth/tokens",
            &admin,
            "manage:tokens",
            json!({"label": ["dapisecretvalue123"]}),
        )
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    let r = app
        .post(
            "/api/v1/auth/tokens",
            &admin,
            "manage:tokens",
            json!({"label": 1, "scopes": "dapisecretvalue123"}),
        )
        .await;
    assert!(!r.text.contains("dapisecretvalue123"), "{}", r.text);
    // Users: bad emails, bad roles.
    for body in [
        json!({"email": "not-an-email", "name": "x"}),
        json!({"email": "a@b.co", "name": "x", "role": "root"}),
        json!({"email": "a@b.co"}),
    ] {
        let r = app
            .post("/api/v1/users", &admin, "manage:users", body.clone())
            .await;
        r.assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    }
    assert_eq!(token_count(&app).await, before);
    let users = app.get("/api/v1/users", &admin, "read:users").await;
    assert_eq!(users.body["items"].as_array().expect("items").len(), 1);
    app.stop().await;
}

async fn oversized_bodies_are_413(backend: Backend) {
    // A small limit, so the whole body is sent before the server answers.
    let store = std::sync::Arc::new(crate::helpers::StoreLocation::new(backend).await);
    let app = TestApp::spawn_on(store, |c| c.max_body_bytes = 2048).await;
    let admin = app.admin().to_owned();
    let before = token_count(&app).await;
    let fits = app
        .post(
            "/api/v1/auth/tokens",
            &admin,
            "manage:tokens",
            json!({"label": "x".repeat(150)}),
        )
        .await;
    assert_eq!(fits.status, StatusCode::CREATED);
    let huge = json!({"label": "x".repeat(8 * 1024)});
    let r = app
        .post("/api/v1/auth/tokens", &admin, "manage:tokens", huge)
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.code(), "PAYLOAD_TOO_LARGE");
    assert_eq!(token_count(&app).await, before + 1);
    app.stop().await;
}
