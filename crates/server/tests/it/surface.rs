//! Health, readiness, metrics, the OpenAPI document, unknown paths, and restarts.

use std::sync::Arc;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{Backend, StoreLocation, TestApp, on_both_stores};

on_both_stores!(
    health_readiness_and_metrics,
    metrics_speak_prometheus_text_unless_openmetrics_is_preferred,
    openapi_describes_every_endpoint_with_its_scope_and_errors,
    every_documented_operation_is_served_with_a_unique_id_and_its_scope_as_default,
    a_malformed_id_is_refused_alike_by_every_endpoint,
    unknown_paths_and_methods_get_the_error_shape,
    a_restart_keeps_data_and_prints_no_token,
    a_clean_shutdown_flushes_buffered_last_use,
);

async fn health_readiness_and_metrics(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let r = app.call(Method::GET, "/healthz", None, None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = app.call(Method::GET, "/readyz", None, None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["checks"]["database"], "ok");
    let _ = app.me(app.admin()).await;
    let _ = app.me("dapi-nope").await;
    let r = app.call(Method::GET, "/metrics", None, None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    for metric in [
        "datastack_http_requests_total{method=\"GET\",route=\"/api/v1/me\",status=\"200\"}",
        "datastack_http_request_duration_seconds_bucket",
        "datastack_auth_decisions_total{outcome=\"allowed\"}",
        "datastack_auth_decisions_total{outcome=\"invalid_token\"}",
        "datastack_credential_cache_lookups_total{result=\"miss\"}",
    ] {
        assert!(
            r.text.contains(metric),
            "{metric} missing from:\n{}",
            r.text
        );
    }
    assert!(!r.text.contains(app.admin()));
    app.stop().await;
}

/// `/metrics` answers the Prometheus text format 0.0.4 by default, where every sample
/// belongs to the family its `# TYPE` names (counters with their `_total`), and
/// OpenMetrics when the scraper prefers it, as Prometheus does.
async fn metrics_speak_prometheus_text_unless_openmetrics_is_preferred(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let _ = app.me(app.admin()).await;
    let scrape = |accept: Option<&'static str>| {
        let mut req = app.http.get(format!("{}/metrics", app.base));
        if let Some(a) = accept {
            req = req.header("accept", a);
        }
        async move {
            let r = req.send().await.expect("metrics");
            let content_type = r.headers()["content-type"]
                .to_str()
                .expect("ascii")
                .to_owned();
            (content_type, r.text().await.expect("text"))
        }
    };
    for accept in [None, Some("*/*"), Some("text/plain;version=0.0.4")] {
        let (content_type, text) = scrape(accept).await;
        assert_eq!(
            content_type, "text/plain; version=0.0.4; charset=utf-8",
            "{accept:?}"
        );
        assert!(!text.contains("# EOF"));
        assert!(
            text.contains("# TYPE datastack_http_requests_total counter"),
            "{text}"
        );
        // The classic parser's rule: a sample belongs to the family declared before it.
        let mut family: Option<(String, String)> = None;
        let mut samples = 0;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("name and type");
                if kind == "counter" {
                    assert!(name.ends_with("_total"), "{line}");
                }
                family = Some((name.to_owned(), kind.to_owned()));
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let name = line.split(['{', ' ']).next().expect("a name");
            let (fam, kind) = family.as_ref().expect("a sample after its # TYPE");
            let belongs = match kind.as_str() {
                "histogram" => ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| name.strip_suffix(s) == Some(fam.as_str())),
                _ => name == fam,
            };
            assert!(belongs, "{name} outside its family {fam}");
            samples += 1;
        }
        assert!(samples > 20, "{samples} samples");
    }
    let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let (content_type, text) = scrape(Some(prometheus)).await;
    assert_eq!(
        content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(text.ends_with("# EOF\n"));
    assert!(text.contains("# TYPE datastack_http_requests counter"));
    assert!(text.contains("datastack_http_requests_total{"));
    app.stop().await;
}

async fn openapi_describes_every_endpoint_with_its_scope_and_errors(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let r = app
        .call(Method::GET, "/openapi.json", None, None, None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let doc = r.body;
    assert!(doc["openapi"].as_str().expect("version").starts_with("3."));
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let expected = [
        ("/api/v1/auth/tokens", "post", Some("manage:tokens")),
        ("/api/v1/auth/tokens", "get", Some("read:tokens")),
        ("/api/v1/auth/tokens/{id}", "delete", Some("manage:tokens")),
        ("/api/v1/users", "get", Some("read:users")),
        ("/api/v1/users", "post", Some("manage:users")),
        ("/api/v1/users/{id}", "get", Some("read:users")),
        ("/api/v1/users/{id}", "patch", Some("manage:users")),
        ("/api/v1/users/{id}", "delete", Some("manage:users")),
        ("/api/v1/users/{id}/suspend", "post", Some("manage:users")),
        ("/api/v1/users/{id}/activate", "post", Some("manage:users")),
        ("/api/v1/service-principals", "get", Some("read:users")),
        ("/api/v1/service-principals", "post", Some("manage:users")),
        (
            "/api/v1/service-principals/{id}",
            "patch",
            Some("manage:users"),
        ),
        (
            "/api/v1/service-principals/{id}/suspend",
            "post",
            Some("manage:users"),
        ),
        ("/api/v1/workspaces", "get", Some("read:workspaces")),
        ("/api/v1/workspaces", "post", Some("manage:workspaces")),
        ("/api/v1/workspaces/{id}", "get", Some("read:workspaces")),
        (
            "/api/v1/workspaces/{id}",
            "patch",
            Some("manage:workspaces"),
        ),
        ("/api/v1/me", "get", None),
        ("/healthz", "get", None),
        ("/readyz", "get", None),
        ("/metrics", "get", None),
        ("/openapi.json", "get", None),
    ];
    for (path, method, scope) in expected {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is not documented");
        if path.starts_with("/api/") {
            assert!(
                op["responses"]["401"].is_object(),
                "{method} {path} lacks its 401"
            );
            let security = &op["security"][0]["bearer"];
            match scope {
                Some(s) => {
                    assert_eq!(security, &json!([s]), "{method} {path}");
                    assert!(
                        op["responses"]["403"].is_object(),
                        "{method} {path} lacks its 403"
                    );
                    let params = op["parameters"].as_array().expect("parameters");
                    assert!(
                        params
                            .iter()
                            .any(|p| p["name"] == "x-datastack-scope" && p["in"] == "header")
                    );
                }
                None => assert_eq!(security, &json!([])),
            }
        }
    }
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
    app.stop().await;
}

/// The document and the router agree: every documented operation is answered by its
/// handler (neither 405 nor the gateway's 404 for paths without a route), every operation
/// id is unique, and every scope header defaults to the operation's required scope.
async fn every_documented_operation_is_served_with_a_unique_id_and_its_scope_as_default(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    let doc = app
        .call(Method::GET, "/openapi.json", None, None, None)
        .await
        .body;
    let mut ids = std::collections::BTreeSet::new();
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            operations += 1;
            let id = op["operationId"].as_str().expect("an operationId");
            assert!(ids.insert(id.to_owned()), "operationId {id} twice");
            let required = op["security"][0]["bearer"][0].as_str();
            if let Some(scope) = required {
                let header = op["parameters"]
                    .as_array()
                    .and_then(|ps| ps.iter().find(|p| p["name"] == "x-datastack-scope"))
                    .unwrap_or_else(|| panic!("{method} {path} lacks its scope header"));
                assert_eq!(header["schema"]["default"], scope, "{method} {path}");
                assert_eq!(header["required"], true, "{method} {path}");
            }
            let concrete = path.replace("{id}", "x").replace("{path}", "v1/x");
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            // The operation's own scope, so that the handler (not authorization) answers.
            let r = app
                .call(m, &concrete, Some(app.admin()), required, Some(json!({})))
                .await;
            assert_ne!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert_ne!(
                r.status,
                StatusCode::UNAUTHORIZED,
                "{method} {path}: {}",
                r.text
            );
            assert!(
                !(r.status == StatusCode::NOT_FOUND && r.text.contains("no such path")),
                "{method} {path} is documented but not routed: {}",
                r.text
            );
        }
    }
    assert!(operations >= 70, "only {operations} operations documented");
    app.stop().await;
}

/// Every endpoint with an `{id}` answers a malformed id with the same 400, naming the
/// form it expects, and changes nothing.
async fn a_malformed_id_is_refused_alike_by_every_endpoint(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let doc = app
        .call(Method::GET, "/openapi.json", None, None, None)
        .await
        .body;
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        if !path.contains("{id}") {
            continue;
        }
        for (method, op) in item.as_object().expect("path item") {
            let scope = op["security"][0]["bearer"][0].as_str();
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            for bad in ["nope", "tok_zz", "usr_0195f0c0a0b07c3d8e9f0a1b2c3d4e5"] {
                let r = app
                    .call(
                        m.clone(),
                        &path.replace("{id}", bad),
                        Some(app.admin()),
                        scope,
                        Some(json!({})),
                    )
                    .await;
                r.assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
                let message = r.body["error"]["message"].as_str().unwrap_or_default();
                assert!(
                    message.starts_with("id: must be "),
                    "{method} {path}: {message}"
                );
                assert!(!message.contains(bad), "the id is not echoed: {message}");
                checked += 1;
            }
        }
    }
    assert!(checked >= 25 * 3, "only {checked} checks");
    // Nothing was changed: the admin can still act and there is one user.
    let users = app.get("/api/v1/users", app.admin(), "read:users").await;
    assert_eq!(users.body["items"].as_array().map(Vec::len), Some(1));
    app.stop().await;
}

async fn unknown_paths_and_methods_get_the_error_shape(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let r = app
        .call(Method::GET, "/api/v1/nothing-here", None, None, None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.code(), "NOT_FOUND");
    let r = app
        .call(
            Method::PUT,
            "/api/v1/auth/tokens",
            Some(app.admin()),
            Some("all-apis"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.code(), "METHOD_NOT_ALLOWED");
    app.stop().await;
}

async fn a_restart_keeps_data_and_prints_no_token(backend: Backend) {
    let store = Arc::new(StoreLocation::new(backend).await);
    let first = TestApp::spawn_on(store.clone(), |_| {}).await;
    let admin = first.admin().to_owned();
    let (token, _) = first
        .create_token(&admin, json!({"label": "survives"}))
        .await;
    first.stop().await;
    let second = TestApp::spawn_on(store, |_| {}).await;
    assert!(
        second.admin_token.is_none(),
        "a restart must not print a new admin token"
    );
    assert_eq!(second.me(&admin).await.status, StatusCode::OK);
    assert_eq!(second.me(&token).await.status, StatusCode::OK);
    second.stop().await;
}

async fn a_clean_shutdown_flushes_buffered_last_use(backend: Backend) {
    let store = Arc::new(StoreLocation::new(backend).await);
    // Only the flush at shutdown can write the use: the periodic one is an hour away.
    let hourly = |c: &mut datastack_server::Config| {
        c.usage_flush_interval = std::time::Duration::from_secs(3600);
    };
    let first = TestApp::spawn_on(store.clone(), hourly).await;
    let admin = first.admin().to_owned();
    assert_eq!(first.me(&admin).await.status, StatusCode::OK);
    first.stop().await;
    let second = TestApp::spawn_on(store, hourly).await;
    let list = second
        .get("/api/v1/auth/tokens", &admin, "read:tokens")
        .await;
    let token = &list.body["items"][0];
    assert!(token["lastUsedAt"].is_string(), "the use was lost: {token}");
    assert_eq!(token["lastUsedIp"], "127.0.0.1");
    second.stop().await;
}
