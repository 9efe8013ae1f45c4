//! The forward-auth fast path answers exactly as the full pipeline does: the same run of
//! decisions with `fast_path` on and off gives the same statuses, identity headers, rate-limit
//! headers and penalties, request ids, audit counts and metrics.

use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::api_keys::create_key;
use crate::edge::audit_until;
use crate::helpers::{Backend, StoreLocation, TestApp, on_both_stores};

/// What a client and an operator can observe of one forward-auth answer.
#[derive(Debug, PartialEq)]
struct Seen {
    status: StatusCode,
    request_id: Option<String>,
    credential: Option<String>,
    scopes: Option<String>,
    principal: Option<String>,
    ratelimit: Option<String>,
    policy: Option<String>,
    has_assertion: bool,
    error_code: Option<String>,
    required_scope: Option<String>,
}

/// Asks nginx-style for a decision on `method uri`.
async fn verify(
    app: &TestApp,
    token: &str,
    method: &str,
    uri: &str,
    request_id: &str,
) -> reqwest::Response {
    app.http
        .get(format!("{}/auth/verify", app.base))
        .bearer_auth(token)
        .header("x-original-method", method)
        .header("x-original-uri", uri)
        .header("x-request-id", request_id)
        .send()
        .await
        .expect("verify")
}

async fn ask(app: &TestApp, token: &str, method: &str, uri: &str, request_id: &str) -> Seen {
    let r = verify(app, token, method, uri, request_id).await;
    let header = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let mut seen = Seen {
        status: r.status(),
        request_id: header("x-request-id"),
        // The credential id differs between the two runs; whether it is there does not.
        credential: header("x-datastack-credential").map(|v| v.len().to_string()),
        scopes: header("x-datastack-scopes"),
        principal: header("x-datastack-principal-type"),
        ratelimit: header("ratelimit"),
        policy: header("ratelimit-policy"),
        has_assertion: header("x-datastack-assertion").is_some(),
        error_code: None,
        required_scope: None,
    };
    let body: Value = r.json().await.unwrap_or(Value::Null);
    seen.error_code = body["error"]["code"].as_str().map(str::to_owned);
    seen.required_scope = body["error"]["requiredScope"].as_str().map(str::to_owned);
    seen
}

/// The `datastack_http_requests_total` counters of forward-auth, by status.
async fn verify_counters(app: &TestApp) -> Vec<String> {
    let text = app.metrics_text().await;
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| {
            l.starts_with("datastack_http_requests_total") && l.contains("route=\"/auth/verify\"")
        })
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

/// A forward-auth route for `/v1/jobs`.
async fn jobs_route(app: &TestApp) {
    let r = app
        .post(
            "/api/v1/gateway/routes",
            app.admin(),
            "manage:gateway",
            json!({"pathPrefix": "/v1/jobs", "resource": "jobs"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
}

/// One run of decisions on a fresh node; returns everything observed.
async fn run(backend: Backend, fast_path: bool) -> (Vec<Seen>, Vec<(u64, u64)>, Vec<String>) {
    let store = Arc::new(StoreLocation::new(backend).await);
    let app = TestApp::spawn_on(store, |c| {
        c.fast_path = fast_path;
        c.abuse_threshold = 3;
    })
    .await;
    let admin = app.admin().to_owned();
    jobs_route(&app).await;
    let (pat, _) = app
        .create_token(&admin, json!({"label": "r", "scopes": ["read:jobs"]}))
        .await;
    // An API key with a rate limit of its own (the default per credential would throttle
    // the admin's calls too).
    let key = create_key(
        &app,
        &admin,
        json!({"name": "r", "scopes": ["read:jobs"], "rateLimit": 6}),
    )
    .await;
    let reader = key["key"].as_str().expect("key").to_owned();
    let reader_id = key["id"].as_str().expect("id").to_owned();
    let mut seen = Vec::new();
    for i in 0..3 {
        seen.push(ask(&app, &pat, "GET", "/v1/jobs", &format!("fp-pat-{i}")).await);
    }
    // Five allowed decisions (the first one loads the credential into the cache), one
    // refused for its scope, then the bucket runs dry: refused, and after three more
    // refusals the credential is penalised.
    for i in 0..5 {
        seen.push(
            ask(
                &app,
                &reader,
                "GET",
                "/v1/jobs/42?x=1",
                &format!("fp-ok-{i}"),
            )
            .await,
        );
    }
    seen.push(ask(&app, &reader, "POST", "/v1/jobs/42", "fp-scope").await);
    for i in 0..5 {
        seen.push(
            ask(
                &app,
                &reader,
                "GET",
                "/v1/jobs/42",
                &format!("fp-limited-{i}"),
            )
            .await,
        );
    }
    // The penalty outlasts the bucket's own wait (the same in both runs).
    let retry = verify(&app, &reader, "GET", "/v1/jobs/42", "fp-penalised").await;
    assert_eq!(retry.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = retry.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!(wait > 12, "the penalty outlasts the bucket: {wait}");
    // Revoked: refused at once, although the node had the credential cached.
    let del = app
        .delete(
            &format!("/api/v1/auth/api-keys/{reader_id}"),
            &admin,
            "manage:api-keys",
        )
        .await;
    assert_eq!(del.status, StatusCode::NO_CONTENT, "{}", del.text);
    seen.push(ask(&app, &reader, "GET", "/v1/jobs/42", "fp-revoked").await);
    // Every decision is in the audit log: the allowed ones counted into their group of
    // the second, each refusal on its own.
    let entries = audit_until(
        &app,
        "/api/v1/audit/events?action=forward_auth.verify&limit=200",
        |items| {
            let allowed: u64 = items
                .iter()
                .filter(|e| e["status"] == 200)
                .map(|e| e["detail"]["count"].as_u64().unwrap_or(1))
                .sum();
            allowed == 8 && items.iter().any(|e| e["status"] == 401)
        },
    )
    .await;
    let mut by_status: Vec<(u64, u64)> = Vec::new();
    for e in &entries {
        let status = e["status"].as_u64().expect("status");
        let count = e["detail"]["count"].as_u64().unwrap_or(1);
        match by_status.iter_mut().find(|(s, _)| *s == status) {
            Some((_, n)) => *n += count,
            None => by_status.push((status, count)),
        }
        assert!(
            !e.to_string().contains(&reader),
            "no secret in the audit log: {e}"
        );
    }
    by_status.sort();
    let counters = verify_counters(&app).await;
    app.stop().await;
    (seen, by_status, counters)
}

async fn fast_path_answers_as_the_full_pipeline(backend: Backend) {
    let (fast, fast_audit, fast_metrics) = run(backend, true).await;
    let (full, full_audit, full_metrics) = run(backend, false).await;
    // The run itself is what it should be …
    for s in &fast[..3] {
        assert_eq!(s.status, StatusCode::OK, "{s:?}");
        assert_eq!(s.scopes.as_deref(), Some("read:jobs"));
        assert!(s.has_assertion && s.credential.is_some(), "{s:?}");
    }
    let fast_key = &fast[3..];
    for (i, s) in fast_key.iter().take(5).enumerate() {
        assert_eq!(s.status, StatusCode::OK, "{s:?}");
        assert_eq!(s.request_id.as_deref(), Some(format!("fp-ok-{i}").as_str()));
        assert_eq!(s.scopes.as_deref(), Some("read:jobs"));
        assert!(s.has_assertion && s.credential.is_some(), "{s:?}");
        assert_eq!(s.policy.as_deref(), Some("\"credential\";q=6;w=60"));
        assert!(
            s.ratelimit
                .as_deref()
                .is_some_and(|v| v.contains(&format!("r={}", 5 - i))),
            "each decision is charged once: {s:?}"
        );
    }
    assert_eq!(fast_key[5].status, StatusCode::FORBIDDEN);
    assert_eq!(fast_key[5].required_scope.as_deref(), Some("manage:jobs"));
    assert_eq!(fast_key[6].status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(fast_key[6].error_code.as_deref(), Some("RATE_LIMITED"));
    assert_eq!(fast_key[6].request_id.as_deref(), Some("fp-limited-0"));
    assert_eq!(fast_key[11].status, StatusCode::UNAUTHORIZED);
    assert!(
        fast_audit.contains(&(200, 8)) && fast_audit.contains(&(403, 1)),
        "{fast_audit:?}"
    );
    assert!(
        fast_metrics
            .iter()
            .any(|l| l.contains("status=\"200\"") && l.ends_with(" 8")),
        "{fast_metrics:?}"
    );
    // … and the same with the fast path off.
    assert_eq!(fast, full);
    assert_eq!(fast_audit, full_audit);
    assert_eq!(fast_metrics, full_metrics);
}

/// An API key restricted to other addresses is refused on the fast path's node as on any:
/// its cached identity never skips the check of its ranges.
async fn fast_path_keeps_api_key_ranges(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.admin().to_owned();
    jobs_route(&app).await;
    let key = create_key(
        &app,
        &admin,
        json!({"name": "elsewhere", "scopes": ["read:jobs"], "allowedIpRanges": ["192.0.2.0/24"]}),
    )
    .await;
    let secret = key["key"].as_str().expect("key").to_owned();
    for _ in 0..3 {
        let s = ask(&app, &secret, "GET", "/v1/jobs", "fp-range").await;
        assert_eq!(s.status, StatusCode::FORBIDDEN, "{s:?}");
        assert!(s.credential.is_none(), "{s:?}");
    }
    app.stop().await;
}

on_both_stores!(
    fast_path_answers_as_the_full_pipeline,
    fast_path_keeps_api_key_ranges,
);
