//! Personal access tokens (C2): create once, list without secrets, revoke, expiry,
//! workspace maximum lifetime, ownership rules, batched last use.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{Backend, TestApp, eventually, on_both_stores};

on_both_stores!(
    token_lifecycle_create_list_use_revoke,
    expired_tokens_are_refused,
    workspace_maximum_lifetime_is_enforced,
    users_manage_their_own_tokens_and_admins_anyones,
    last_use_is_recorded_in_batches,
    pagination_walks_every_token_once,
    a_token_cannot_mint_a_broader_token,
);

async fn token_lifecycle_create_list_use_revoke(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.admin().to_owned();
    let r = app
        .post(
            "/api/v1/auth/tokens",
            &admin,
            "manage:tokens",
            json!({"label": "ci-reader", "expiresInDays": 30, "scopes": ["read:jobs", "read:clusters", "read:jobs"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let secret = r.body["token"].as_str().expect("token").to_owned();
    let id = r.body["id"].as_str().expect("id").to_owned();
    assert!(secret.starts_with("dapi") && secret.len() == 76);
    assert_eq!(r.body["lastFour"], &secret[72..]);
    assert_eq!(r.body["prefix"], "dapi");
    assert_eq!(r.body["scopes"], json!(["read:clusters", "read:jobs"]));
    let expires =
        chrono::DateTime::parse_from_rfc3339(r.body["expiresAt"].as_str().expect("expiresAt"))
            .expect("rfc3339");
    let days = (expires.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_hours();
    assert!((29 * 24..=30 * 24).contains(&days), "{days}");

    // The list never shows a secret.
    let list = app.get("/api/v1/auth/tokens", &admin, "read:tokens").await;
    assert_eq!(list.status, StatusCode::OK);
    assert!(!list.text.contains(&secret));
    assert!(!list.text.contains(&admin));
    let item = list.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|t| t["id"] == id.as_str())
        .expect("listed")
        .clone();
    for field in [
        "label",
        "prefix",
        "lastFour",
        "scopes",
        "createdAt",
        "expiresAt",
        "lastUsedAt",
        "lastUsedIp",
    ] {
        assert!(item.get(field).is_some(), "{field}");
    }
    assert!(item.get("token").is_none());

    // It works, then it is revoked, then it is refused; revoking again is 404.
    assert_eq!(app.me(&secret).await.status, StatusCode::OK);
    let r = app
        .delete(
            &format!("/api/v1/auth/tokens/{id}"),
            &admin,
            "manage:tokens",
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = app.me(&secret).await;
    r.assert_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    assert!(
        r.header("www-authenticate")
            .expect("header")
            .contains("invalid_token")
    );
    let r = app
        .delete(
            &format!("/api/v1/auth/tokens/{id}"),
            &admin,
            "manage:tokens",
        )
        .await;
    r.assert_error(StatusCode::NOT_FOUND, "NOT_FOUND");
    let list = app.get("/api/v1/auth/tokens", &admin, "read:tokens").await;
    assert!(
        list.body["items"]
            .as_array()
            .expect("items")
            .iter()
            .all(|t| t["id"] != id.as_str())
    );
    // Malformed ids are a 400, not a 404.
    assert_eq!(
        app.delete("/api/v1/auth/tokens/nope", &admin, "manage:tokens")
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    app.stop().await;
}

async fn expired_tokens_are_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (short, _) = app
        .create_token(app.admin(), json!({"label": "short", "lifetimeSeconds": 1}))
        .await;
    // Whether or not it is still valid now, it must be refused within its lifetime plus slack,
    // including when it sits in the cache.
    let _ = app.me(&short).await;
    let refused = eventually(Duration::from_secs(5), || async {
        app.me(&short).await.status == StatusCode::UNAUTHORIZED
    })
    .await;
    assert!(refused, "an expired token must get 401");
    let r = app.me(&short).await;
    assert!(
        r.header("www-authenticate")
            .expect("header")
            .contains("invalid_token")
    );
    app.stop().await;
}

async fn workspace_maximum_lifetime_is_enforced(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.admin().to_owned();
    let ws = app.me(&admin).await.body["workspace"]["id"]
        .as_str()
        .expect("ws")
        .to_owned();
    let r = app
        .patch(
            &format!("/api/v1/workspaces/{ws}"),
            &admin,
            "manage:workspaces",
            json!({"settings": {"maxTokenLifetimeDays": 30}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["settings"]["maxTokenLifetimeDays"], 30);
    let before = app
        .get("/api/v1/auth/tokens", &admin, "read:tokens")
        .await
        .body["items"]
        .as_array()
        .expect("items")
        .len();
    for body in [
        json!({"label": "x", "expiresInDays": 31}),
        json!({"label": "x", "lifetimeSeconds": 31 * 86400}),
    ] {
        let r = app
            .post("/api/v1/auth/tokens", &admin, "manage:tokens", body)
            .await;
        r.assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
        assert_eq!(r.code(), "INVALID_REQUEST");
        assert!(
            r.body["error"]["message"]
                .as_str()
                .expect("message")
                .contains("30 days")
        );
    }
    let after = app
        .get("/api/v1/auth/tokens", &admin, "read:tokens")
        .await
        .body["items"]
        .as_array()
        .expect("items")
        .len();
    assert_eq!(before, after, "a refused creation changes nothing");
    // Without a lifetime, the token gets the maximum.
    let r = app
        .post(
            "/api/v1/auth/tokens",
            &admin,
            "manage:tokens",
            json!({"label": "default"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let expires =
        chrono::DateTime::parse_from_rfc3339(r.body["expiresAt"].as_str().expect("expiry"))
            .expect("rfc3339");
    let hours = (expires.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_hours();
    assert!((29 * 24..=30 * 24).contains(&hours), "{hours}");
    // Within the maximum is fine; null removes it.
    assert_eq!(
        app.post(
            "/api/v1/auth/tokens",
            &admin,
            "manage:tokens",
            json!({"label": "ok", "expiresInDays": 7})
        )
        .await
        .status,
        StatusCode::CREATED
    );
    let r = app
        .patch(
            &format!("/api/v1/workspaces/{ws}"),
            &admin,
            "manage:workspaces",
            json!({"settings": {"maxTokenLifetimeDays": null}}),
        )
        .await;
    assert_eq!(
        r.body["settings"]["maxTokenLifetimeDays"],
        serde_json::Value::Null
    );
    let r = app
        .post(
            "/api/v1/auth/tokens",
            &admin,
            "manage:tokens",
            json!({"label": "long", "expiresInDays": 365}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    app.stop().await;
}

async fn users_manage_their_own_tokens_and_admins_anyones(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.admin().to_owned();
    let (viewer_id, viewer) = app.user_with_token("v@example.com", "viewer").await;
    // A viewer creates and lists its own tokens only.
    let (own, own_id) = app.create_token(&viewer, json!({"label": "mine"})).await;
    let list = app.get("/api/v1/auth/tokens", &viewer, "read:tokens").await;
    let items = list.body["items"].as_array().expect("items");
    assert_eq!(items.len(), 2);
    assert!(items.iter().all(|t| t["ownerId"] == viewer_id.as_str()));
    let r = app
        .get("/api/v1/auth/tokens?ownerId=all", &viewer, "read:tokens")
        .await;
    r.assert_error(StatusCode::FORBIDDEN, "FORBIDDEN");
    // A viewer cannot create a token for someone else.
    let admin_id = app.me(&admin).await.body["principal"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let r = app
        .post(
            "/api/v1/auth/tokens",
            &viewer,
            "manage:tokens",
            json!({"label": "x", "ownerId": admin_id}),
        )
        .await;
    r.assert_error(StatusCode::FORBIDDEN, "FORBIDDEN");
    // A viewer cannot revoke the admin's token: it does not exist as far as they can tell.
    let admin_token_id = app.me(&admin).await.body["credential"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let r = app
        .delete(
            &format!("/api/v1/auth/tokens/{admin_token_id}"),
            &viewer,
            "manage:tokens",
        )
        .await;
    r.assert_error(StatusCode::NOT_FOUND, "NOT_FOUND");
    assert_eq!(app.me(&admin).await.status, StatusCode::OK);
    // Admins list everyone's tokens and revoke any.
    let all = app
        .get("/api/v1/auth/tokens?ownerId=all", &admin, "read:tokens")
        .await;
    assert_eq!(all.body["items"].as_array().expect("items").len(), 3);
    let theirs = app
        .get(
            &format!("/api/v1/auth/tokens?ownerId={viewer_id}"),
            &admin,
            "read:tokens",
        )
        .await;
    assert_eq!(theirs.body["items"].as_array().expect("items").len(), 2);
    let r = app
        .delete(
            &format!("/api/v1/auth/tokens/{own_id}"),
            &admin,
            "manage:tokens",
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    app.me(&own)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    assert_eq!(app.me(&viewer).await.status, StatusCode::OK);
    app.stop().await;
}

async fn last_use_is_recorded_in_batches(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.admin().to_owned();
    let (token, id) = app.create_token(&admin, json!({"label": "used"})).await;
    assert_eq!(app.me(&token).await.status, StatusCode::OK);
    let recorded = eventually(Duration::from_secs(5), || async {
        let list = app.get("/api/v1/auth/tokens", &admin, "read:tokens").await;
        list.body["items"]
            .as_array()
            .expect("items")
            .iter()
            .any(|t| {
                t["id"] == id.as_str()
                    && t["lastUsedAt"].is_string()
                    && t["lastUsedIp"] == "127.0.0.1"
            })
    })
    .await;
    assert!(
        recorded,
        "lastUsedAt and lastUsedIp are written by the usage flusher"
    );
    app.stop().await;
}

async fn pagination_walks_every_token_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.admin().to_owned();
    for i in 0..5 {
        app.create_token(&admin, json!({"label": format!("t{i}")}))
            .await;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/auth/tokens?limit=2&cursor={c}"),
            None => "/api/v1/auth/tokens?limit=2".to_owned(),
        };
        let page = app.get(&path, &admin, "read:tokens").await;
        assert_eq!(page.status, StatusCode::OK);
        let items = page.body["items"].as_array().expect("items");
        assert!(items.len() <= 2);
        seen.extend(
            items
                .iter()
                .map(|t| t["id"].as_str().expect("id").to_owned()),
        );
        match page.body["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 6);
    let mut dedup = seen.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(dedup.len(), 6);
    for bad in ["limit=0", "limit=201", "limit=x", "cursor=%27%20OR%201=1"] {
        let r = app
            .get(&format!("/api/v1/auth/tokens?{bad}"), &admin, "read:tokens")
            .await;
        r.assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    }
    app.stop().await;
}

async fn a_token_cannot_mint_a_broader_token(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.admin().to_owned();
    let (narrow, _) = app
        .create_token(&admin, json!({"label": "ci", "scopes": ["manage:tokens"]}))
        .await;
    let before = app
        .get("/api/v1/auth/tokens", &admin, "read:tokens")
        .await
        .body["items"]
        .as_array()
        .expect("items")
        .len();
    for scopes in [
        json!(["all-apis"]),
        json!(["manage:users"]),
        json!(["read:tokens", "read:audit"]),
    ] {
        let r = app
            .post(
                "/api/v1/auth/tokens",
                &narrow,
                "manage:tokens",
                json!({"label": "escalate", "scopes": scopes}),
            )
            .await;
        r.assert_error(StatusCode::FORBIDDEN, "FORBIDDEN");
        assert_eq!(r.code(), "FORBIDDEN");
    }
    // An admin's narrow token cannot mint a broad token for someone else either.
    let (user, _) = app.user_with_token("u@example.com", "admin").await;
    let r = app
        .post(
            "/api/v1/auth/tokens",
            &narrow,
            "manage:tokens",
            json!({"label": "x", "ownerId": user, "scopes": ["all-apis"]}),
        )
        .await;
    r.assert_error(StatusCode::FORBIDDEN, "FORBIDDEN");
    let after = app
        .get("/api/v1/auth/tokens", &admin, "read:tokens")
        .await
        .body["items"]
        .as_array()
        .expect("items")
        .len();
    assert_eq!(before, after, "nothing was created");
    // Without a list, the new token gets the creator's scopes; covered scopes are fine.
    let r = app
        .post(
            "/api/v1/auth/tokens",
            &narrow,
            "manage:tokens",
            json!({"label": "same"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.body["scopes"], json!(["manage:tokens"]));
    let minted = r.body["token"].as_str().expect("token").to_owned();
    assert_eq!(
        app.get("/api/v1/users", &minted, "read:users").await.status,
        StatusCode::FORBIDDEN
    );
    let r = app
        .post(
            "/api/v1/auth/tokens",
            &narrow,
            "manage:tokens",
            json!({"label": "narrower", "scopes": ["read:tokens"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    app.stop().await;
}
