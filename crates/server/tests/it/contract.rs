//! The request contract (C3): 401 vs 403, `WWW-Authenticate`, `requiredScope`, request ids.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{Backend, TestApp, on_both_stores};

on_both_stores!(
    missing_or_malformed_authorization_is_401_without_error,
    unknown_or_tampered_tokens_are_401_invalid_token,
    scope_header_must_be_present_granted_and_covering,
    role_limits_what_an_all_apis_token_can_do,
    request_ids_are_kept_or_generated_and_echoed_in_errors,
);

async fn missing_or_malformed_authorization_is_401_without_error(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for auth in [
        None,
        Some("Basic YWRtaW46cGFzcw=="),
        Some("Bearer"),
        Some("Bearer a b"),
    ] {
        let mut req = app
            .http
            .get(format!("{}/api/v1/auth/tokens", app.base))
            .header("x-datastack-scope", "read:tokens");
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = req.send().await.expect("send");
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(
            r.headers()["www-authenticate"].to_str().expect("ascii"),
            r#"Bearer realm="datastack""#
        );
        let body: serde_json::Value = r.json().await.expect("json");
        assert_eq!(body["error"]["code"], "UNAUTHORIZED");
    }
    app.stop().await;
}

async fn unknown_or_tampered_tokens_are_401_invalid_token(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.admin().to_owned();
    // One character changed: the checksum fails.
    let mut tampered = admin.clone().into_bytes();
    tampered[10] = if tampered[10] == b'a' { b'b' } else { b'a' };
    let tampered = String::from_utf8(tampered).expect("ascii");
    // A well-formed token with a valid checksum that the server never issued.
    let (other, _) = {
        let second = TestApp::spawn(backend).await;
        let t = second.admin().to_owned();
        second.stop().await;
        (t, ())
    };
    for token in [
        tampered.as_str(),
        other.as_str(),
        "dapi",
        "not-a-token",
        &"x".repeat(5000),
    ] {
        let r = app
            .call(Method::GET, "/api/v1/me", Some(token), None, None)
            .await;
        r.assert_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
        let www = r.header("www-authenticate").expect("www-authenticate");
        assert!(
            www.starts_with(r#"Bearer realm="datastack", error="invalid_token""#),
            "{www}"
        );
        assert_eq!(r.code(), "UNAUTHORIZED");
        assert!(
            !r.text.contains(token),
            "the error must not echo the credential"
        );
    }
    assert_eq!(app.me(&admin).await.status, StatusCode::OK);
    app.stop().await;
}

async fn scope_header_must_be_present_granted_and_covering(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.admin().to_owned();
    // Missing header.
    let r = app
        .call(Method::GET, "/api/v1/auth/tokens", Some(&admin), None, None)
        .await;
    r.assert_error(StatusCode::FORBIDDEN, "FORBIDDEN");
    assert_eq!(r.code(), "FORBIDDEN");
    assert_eq!(r.body["error"]["requiredScope"], "read:tokens");
    assert_eq!(
        r.header("www-authenticate").expect("header"),
        r#"Bearer realm="datastack", error="insufficient_scope", scope="read:tokens""#
    );
    // A scope that does not cover the operation, or that is not a scope at all.
    for scope in ["read:users", "read:tokens2", "", "manage:clusters"] {
        let r = app.get("/api/v1/auth/tokens", &admin, scope).await;
        r.assert_error(StatusCode::FORBIDDEN, "FORBIDDEN");
        assert_eq!(r.body["error"]["requiredScope"], "read:tokens");
    }
    // manage covers read; all-apis covers everything.
    assert_eq!(
        app.get("/api/v1/auth/tokens", &admin, "manage:tokens")
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        app.get("/api/v1/auth/tokens", &admin, "all-apis")
            .await
            .status,
        StatusCode::OK
    );
    // A narrow token cannot act with a scope it was not granted, even a covering one.
    let (narrow, _) = app
        .create_token(
            &admin,
            json!({"label": "narrow", "scopes": ["read:tokens"]}),
        )
        .await;
    assert_eq!(
        app.get("/api/v1/auth/tokens", &narrow, "read:tokens")
            .await
            .status,
        StatusCode::OK
    );
    for scope in ["all-apis", "manage:tokens"] {
        let r = app.get("/api/v1/auth/tokens", &narrow, scope).await;
        r.assert_error(StatusCode::FORBIDDEN, "FORBIDDEN");
    }
    let r = app
        .post(
            "/api/v1/auth/tokens",
            &narrow,
            "read:tokens",
            json!({"label": "x"}),
        )
        .await;
    r.assert_error(StatusCode::FORBIDDEN, "FORBIDDEN");
    assert_eq!(r.body["error"]["requiredScope"], "manage:tokens");
    // /me needs a valid credential but no scope.
    assert_eq!(app.me(&narrow).await.status, StatusCode::OK);
    app.stop().await;
}

async fn role_limits_what_an_all_apis_token_can_do(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, viewer) = app.user_with_token("viewer@example.com", "viewer").await;
    let me = app.me(&viewer).await;
    assert_eq!(me.body["credential"]["scopes"], json!(["all-apis"]));
    let r = app
        .post(
            "/api/v1/users",
            &viewer,
            "all-apis",
            json!({"email": "x@example.com", "name": "x"}),
        )
        .await;
    r.assert_error(StatusCode::FORBIDDEN, "FORBIDDEN");
    assert_eq!(r.body["error"]["requiredScope"], "manage:users");
    let r = app
        .post(
            "/api/v1/users",
            &viewer,
            "manage:users",
            json!({"email": "x@example.com", "name": "x"}),
        )
        .await;
    r.assert_error(StatusCode::FORBIDDEN, "FORBIDDEN");
    // What the role allows works.
    assert_eq!(
        app.get("/api/v1/users", &viewer, "read:users").await.status,
        StatusCode::OK
    );
    assert_eq!(
        app.get("/api/v1/auth/tokens", &viewer, "read:tokens")
            .await
            .status,
        StatusCode::OK
    );
    // Only admins act with all-apis; a viewer names a scope its role holds.
    let r = app.get("/api/v1/auth/tokens", &viewer, "all-apis").await;
    r.assert_error(StatusCode::FORBIDDEN, "FORBIDDEN");
    assert_eq!(r.body["error"]["requiredScope"], "read:tokens");
    let r = app.get("/api/v1/users", &viewer, "manage:users").await;
    r.assert_error(StatusCode::FORBIDDEN, "FORBIDDEN");
    // Nothing was created by the refused calls.
    let users = app.get("/api/v1/users", app.admin(), "read:users").await;
    assert_eq!(users.body["items"].as_array().expect("items").len(), 2);
    // An editor cannot manage workspaces either.
    let (_, editor) = app.user_with_token("editor@example.com", "editor").await;
    let r = app
        .post(
            "/api/v1/workspaces",
            &editor,
            "all-apis",
            json!({"name": "x"}),
        )
        .await;
    r.assert_error(StatusCode::FORBIDDEN, "FORBIDDEN");
    app.stop().await;
}

async fn request_ids_are_kept_or_generated_and_echoed_in_errors(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let r = app
        .http
        .get(format!("{}/healthz", app.base))
        .header("x-request-id", "trace-abc_123.4:5")
        .send()
        .await
        .expect("send");
    assert_eq!(r.headers()["x-request-id"], "trace-abc_123.4:5");
    for bad in ["has space", &"a".repeat(200), "semi;colon"] {
        let r = app
            .http
            .get(format!("{}/healthz", app.base))
            .header("x-request-id", bad)
            .send()
            .await
            .expect("send");
        let id = r.headers()["x-request-id"]
            .to_str()
            .expect("ascii")
            .to_owned();
        assert_ne!(id, bad);
        assert!(!id.is_empty());
    }
    // Errors carry the same id as the header, including on unknown paths.
    for path in ["/api/v1/auth/tokens", "/no/such/path"] {
        let r = app.call(Method::GET, path, None, None, None).await;
        let header = r.header("x-request-id").expect("x-request-id").to_owned();
        assert_eq!(r.body["error"]["requestId"], header.as_str(), "{path}");
    }
    let r = app
        .http
        .get(format!("{}/api/v1/me", app.base))
        .header("x-request-id", "client-chosen-1")
        .send()
        .await
        .expect("send");
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["error"]["requestId"], "client-chosen-1");
    app.stop().await;
}
