//! The fast path (forward-auth decisions and gateway traffic) answers exactly as the full
//! pipeline does: the same run of requests with `fast_path` on and off gives the same
//! statuses, identity headers, rate-limit headers and penalties, request ids, audit counts
//! and metrics.

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

/// The `datastack_http_requests_total` lines whose labels contain `label`, sorted.
async fn request_counters(app: &TestApp, label: &str) -> Vec<String> {
    let text = app.metrics_text().await;
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("datastack_http_requests_total") && l.contains(label))
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

/// The requests that audit entries stand for, per status (an aggregated entry counts
/// each), checking that none of `secrets` appears in any entry.
fn requests_by_status(entries: &[Value], secrets: &[&str]) -> Vec<(u64, u64)> {
    let mut by_status: Vec<(u64, u64)> = Vec::new();
    for e in entries {
        let status = e["status"].as_u64().expect("status");
        let count = e["detail"]["count"].as_u64().unwrap_or(1);
        match by_status.iter_mut().find(|(s, _)| *s == status) {
            Some((_, n)) => *n += count,
            None => by_status.push((status, count)),
        }
        let text = e.to_string();
        for secret in secrets {
            assert!(!text.contains(secret), "no secret in the audit log: {e}");
        }
    }
    by_status.sort();
    by_status
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
        let mut s = ask(&app, &pat, "GET", "/v1/jobs", &format!("fp-pat-{i}")).await;
        // The token's bucket refills a request every 10 ms: how much is left depends on
        // the run's timing, that it is announced does not.
        s.ratelimit = s
            .ratelimit
            .map(|v| v.split(";r=").next().unwrap_or("").to_owned());
        seen.push(s);
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
    let by_status = requests_by_status(&entries, &[&reader]);
    let counters = request_counters(&app, "route=\"/auth/verify\"").await;
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

/// What a client and an operator can observe of one gateway request, and what the
/// upstream received.
#[derive(Debug, PartialEq)]
struct Proxied {
    status: StatusCode,
    request_id: Option<String>,
    ratelimit: Option<String>,
    error_code: Option<String>,
    upstream_path: Option<String>,
    upstream_query: Option<String>,
    upstream_body_length: Option<u64>,
    upstream_scopes: Option<String>,
    upstream_has_principal: bool,
    upstream_has_assertion: bool,
    upstream_forwarded_for: Option<String>,
    upstream_saw_authorization: bool,
}

async fn through(
    app: &TestApp,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<&str>,
    request_id: &str,
) -> Proxied {
    let mut req = app
        .http
        .request(method, format!("{}{path}", app.base))
        .bearer_auth(token)
        .header("x-request-id", request_id);
    if let Some(body) = body {
        req = req.body(body.to_owned());
    }
    let r = req.send().await.expect("gateway");
    let header = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let status = r.status();
    let request_id = header("x-request-id");
    let ratelimit = header("ratelimit");
    let body: Value = r.json().await.unwrap_or(Value::Null);
    let seen = &body["headers"];
    let text = |v: &Value| v.as_str().map(str::to_owned);
    Proxied {
        status,
        request_id,
        ratelimit,
        error_code: text(&body["error"]["code"]),
        upstream_path: text(&body["path"]),
        upstream_query: text(&body["query"]),
        upstream_body_length: body["bodyLength"].as_u64(),
        upstream_scopes: text(&seen["x-datastack-scopes"]),
        upstream_has_principal: seen["x-datastack-principal"].is_string(),
        upstream_has_assertion: seen["x-datastack-assertion"].is_string(),
        upstream_forwarded_for: text(&seen["x-forwarded-for"]),
        upstream_saw_authorization: seen["authorization"].is_string(),
    }
}

/// One run of gateway requests on a fresh node; returns everything observed.
async fn run_gateway(
    backend: Backend,
    fast_path: bool,
) -> (Vec<Proxied>, Vec<(u64, u64)>, Vec<String>) {
    let store = Arc::new(StoreLocation::new(backend).await);
    let app = TestApp::spawn_on(store, |c| {
        c.fast_path = fast_path;
        c.abuse_threshold = 3;
    })
    .await;
    let admin = app.admin().to_owned();
    let upstream = crate::edge::upstream().await;
    let r = app
        .post(
            "/api/v1/gateway/routes",
            &admin,
            "manage:gateway",
            json!({"pathPrefix": "/v1/clusters", "upstream": format!("http://{upstream}"),
                   "resource": "clusters", "stripPrefix": true}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let (writer, _) = app
        .create_token(
            &admin,
            json!({"label": "w", "scopes": ["read:clusters", "manage:clusters"]}),
        )
        .await;
    let key = create_key(
        &app,
        &admin,
        json!({"name": "r", "scopes": ["read:clusters"], "rateLimit": 5}),
    )
    .await;
    let reader = key["key"].as_str().expect("key").to_owned();
    let reader_id = key["id"].as_str().expect("id").to_owned();
    let get = reqwest::Method::GET;
    let post = reqwest::Method::POST;
    let mut seen = Vec::new();
    // The first request loads the credential into the cache; the others are served from it.
    for i in 0..3 {
        seen.push(
            through(
                &app,
                &writer,
                get.clone(),
                "/v1/clusters/c-1?view=full",
                None,
                &format!("gw-{i}"),
            )
            .await,
        );
    }
    seen.push(
        through(
            &app,
            &writer,
            post.clone(),
            "/v1/clusters",
            Some("{\"name\":\"c\"}"),
            "gw-post",
        )
        .await,
    );
    // A path under no route: the gateway's 404, not the API's.
    seen.push(
        through(
            &app,
            &writer,
            get.clone(),
            "/v1/nothing-here",
            None,
            "gw-none",
        )
        .await,
    );
    seen.push(through(&app, &writer, get.clone(), "/apix/v1/me", None, "gw-apix").await);
    // The token's bucket refills a request every 10 ms: how much is left depends on the
    // run's timing, that it is announced does not.
    for s in &mut seen {
        s.ratelimit = s
            .ratelimit
            .take()
            .map(|v| v.split(";r=").next().unwrap_or("").to_owned());
    }
    // The API key: allowed reads, a write refused for its scope, then its bucket runs dry.
    for i in 0..3 {
        seen.push(
            through(
                &app,
                &reader,
                get.clone(),
                "/v1/clusters/c-2",
                None,
                &format!("gw-key-{i}"),
            )
            .await,
        );
    }
    seen.push(
        through(
            &app,
            &reader,
            post.clone(),
            "/v1/clusters",
            Some("{}"),
            "gw-scope",
        )
        .await,
    );
    for i in 0..3 {
        seen.push(
            through(
                &app,
                &reader,
                get.clone(),
                "/v1/clusters/c-2",
                None,
                &format!("gw-limited-{i}"),
            )
            .await,
        );
    }
    // Revoked: refused at once, although the node had the credential cached.
    let del = app
        .delete(
            &format!("/api/v1/auth/api-keys/{reader_id}"),
            &admin,
            "manage:api-keys",
        )
        .await;
    assert_eq!(del.status, StatusCode::NO_CONTENT, "{}", del.text);
    seen.push(
        through(
            &app,
            &reader,
            get.clone(),
            "/v1/clusters/c-2",
            None,
            "gw-revoked",
        )
        .await,
    );
    // Every request is in the audit log (reads too, by default), none with a secret.
    let entries = audit_until(
        &app,
        "/api/v1/audit/events?action=gateway.proxy&limit=200",
        |items| {
            let n: u64 = items
                .iter()
                .map(|e| e["detail"]["count"].as_u64().unwrap_or(1))
                .sum();
            n >= 10
        },
    )
    .await;
    let by_status = requests_by_status(&entries, &[&reader, &writer]);
    let counters = request_counters(&app, "route=\"unmatched\"").await;
    app.stop().await;
    (seen, by_status, counters)
}

/// Gateway traffic with a cached credential skips the router on the fast path, and
/// everything observable is the same as through the full pipeline: the upstream's
/// answer, what the upstream received (identity, assertion, forwarded address, no
/// client credential), request ids, rate-limit headers, refusals, audit and metrics.
async fn gateway_fast_path_serves_as_the_full_pipeline(backend: Backend) {
    let (fast, fast_audit, fast_metrics) = run_gateway(backend, true).await;
    let (full, full_audit, full_metrics) = run_gateway(backend, false).await;
    for s in &fast[..3] {
        assert_eq!(s.status, StatusCode::OK, "{s:?}");
        assert_eq!(s.upstream_path.as_deref(), Some("/c-1"), "{s:?}");
        assert_eq!(s.upstream_query.as_deref(), Some("view=full"), "{s:?}");
        assert_eq!(
            s.upstream_scopes.as_deref(),
            Some("read:clusters manage:clusters")
        );
        assert!(s.upstream_has_principal, "{s:?}");
        assert!(s.upstream_has_assertion, "{s:?}");
        assert_eq!(
            s.upstream_forwarded_for.as_deref(),
            Some("127.0.0.1"),
            "{s:?}"
        );
        assert!(!s.upstream_saw_authorization, "{s:?}");
    }
    assert_eq!(fast[2].request_id.as_deref(), Some("gw-2"));
    assert_eq!(fast[3].status, StatusCode::OK);
    assert_eq!(fast[3].upstream_body_length, Some(12), "{:?}", fast[3]);
    assert_eq!(fast[4].status, StatusCode::NOT_FOUND);
    assert_eq!(fast[5].status, StatusCode::NOT_FOUND);
    assert!(fast[5].upstream_path.is_none(), "{:?}", fast[5]);
    for (i, s) in fast[6..9].iter().enumerate() {
        assert_eq!(s.status, StatusCode::OK, "{s:?}");
        assert!(
            s.ratelimit
                .as_deref()
                .is_some_and(|v| v.contains(&format!("r={}", 4 - i))),
            "each request is charged once: {s:?}"
        );
    }
    assert_eq!(fast[9].status, StatusCode::FORBIDDEN, "{:?}", fast[9]);
    assert_eq!(fast[10].status, StatusCode::OK, "{:?}", fast[10]);
    assert_eq!(
        fast[11].status,
        StatusCode::TOO_MANY_REQUESTS,
        "{:?}",
        fast[11]
    );
    assert_eq!(fast[11].error_code.as_deref(), Some("RATE_LIMITED"));
    assert_eq!(fast[13].status, StatusCode::UNAUTHORIZED, "{:?}", fast[13]);
    assert!(fast_audit.contains(&(200, 8)), "{fast_audit:?}");
    assert!(
        fast_metrics
            .iter()
            .any(|l| l.contains("GET") && l.contains("status=\"200\"") && l.ends_with(" 7")),
        "{fast_metrics:?}"
    );
    assert_eq!(fast, full);
    assert_eq!(fast_audit, full_audit);
    assert_eq!(fast_metrics, full_metrics);
}

/// What a client sees of one API call: status, error code, the shape of the body (its
/// keys, since ids and times differ between nodes), the rate-limit policy.
#[derive(Debug, PartialEq)]
struct Called {
    status: StatusCode,
    error_code: Option<String>,
    keys: Vec<String>,
    policy: Option<String>,
    has_request_id: bool,
}

fn called(r: &crate::helpers::Reply) -> Called {
    let mut keys: Vec<String> = r
        .body
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    keys.sort();
    Called {
        status: r.status,
        error_code: r.body["error"]["code"].as_str().map(str::to_owned),
        keys,
        policy: r.header("ratelimit-policy").map(str::to_owned),
        has_request_id: r.header("x-request-id").is_some(),
    }
}

/// One run of API calls on a fresh node; returns what the client saw, the audit entries
/// as (action, status) and the request counters.
async fn run_api(
    backend: Backend,
    fast_path: bool,
) -> (Vec<Called>, Vec<(String, u64)>, Vec<String>) {
    use reqwest::Method;
    let store = Arc::new(StoreLocation::new(backend).await);
    let app = TestApp::spawn_on(store, |c| c.fast_path = fast_path).await;
    let admin = app.admin().to_owned();
    let (reader, _) = app
        .create_token(
            &admin,
            json!({"label": "reader", "scopes": ["read:tokens"]}),
        )
        .await;
    let key = create_key(
        &app,
        &admin,
        json!({"name": "k", "scopes": ["read:tokens"], "rateLimit": 3}),
    )
    .await;
    let limited = key["key"].as_str().expect("key").to_owned();
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(called(&app.me(&admin).await));
    }
    seen.push(called(
        &app.get("/api/v1/auth/tokens", &reader, "read:tokens").await,
    ));
    // The reader's scopes do not cover creating tokens or reading users.
    seen.push(called(
        &app.post(
            "/api/v1/auth/tokens",
            &reader,
            "manage:tokens",
            json!({"label": "x"}),
        )
        .await,
    ));
    seen.push(called(
        &app.get("/api/v1/users", &reader, "read:users").await,
    ));
    seen.push(called(
        &app.post(
            "/api/v1/auth/tokens",
            &admin,
            "manage:tokens",
            json!({"label": "made", "lifetimeSeconds": 3600}),
        )
        .await,
    ));
    // Malformed input, a wrong method, a path under /api that is no route.
    seen.push(called(
        &app.post(
            "/api/v1/auth/tokens",
            &admin,
            "manage:tokens",
            json!({"label": 7}),
        )
        .await,
    ));
    seen.push(called(
        &app.call(Method::DELETE, "/api/v1/me", Some(&admin), None, None)
            .await,
    ));
    seen.push(called(
        &app.get("/api/v1/no-such-thing", &admin, "read:tokens")
            .await,
    ));
    // An id that is not one: refused before any lookup.
    seen.push(called(
        &app.get(
            "/api/v1/users/usr_doesnotexist0000000000",
            &admin,
            "read:users",
        )
        .await,
    ));
    // The key's bucket runs dry on its fourth call.
    for _ in 0..4 {
        seen.push(called(
            &app.get("/api/v1/auth/tokens", &limited, "read:tokens")
                .await,
        ));
    }
    // An aggregated entry (successful reads) stands for `detail.count` requests: how the
    // reads fall into groups depends on timing, the requests they stand for do not.
    let requests = |e: &Value| e["detail"]["count"].as_u64().unwrap_or(1);
    let entries = audit_until(&app, "/api/v1/audit/events?limit=200", |items| {
        items.iter().any(|e| e["status"] == 429)
            && items
                .iter()
                .filter(|e| e["status"] == 200)
                .map(requests)
                .sum::<u64>()
                >= 5
    })
    .await;
    let mut actions: Vec<(String, u64)> = entries
        .iter()
        .filter(|e| e["action"] != "audit.events")
        .flat_map(|e| {
            let one = (
                e["action"].as_str().unwrap_or("").to_owned(),
                e["status"].as_u64().unwrap_or(0),
            );
            std::iter::repeat_n(one, usize::try_from(requests(e)).unwrap_or(1))
        })
        .collect();
    actions.sort();
    let text = app.metrics_text().await;
    let mut counters: Vec<String> = text
        .lines()
        .filter(|l| {
            l.starts_with("datastack_http_requests_total")
                && !l.contains("/api/v1/audit/events")
                && !l.contains("/metrics")
        })
        .map(str::to_owned)
        .collect();
    counters.sort();
    app.stop().await;
    (seen, actions, counters)
}

/// API calls with a cached credential skip the router's stages on the fast path, and
/// everything observable is the same as through the full pipeline: statuses, error codes,
/// bodies, rate-limit headers, audit entries (action and status) and request metrics by
/// route template.
async fn api_fast_path_serves_as_the_full_pipeline(backend: Backend) {
    let (fast, fast_audit, fast_metrics) = run_api(backend, true).await;
    let (full, full_audit, full_metrics) = run_api(backend, false).await;
    let statuses: Vec<u16> = fast.iter().map(|c| c.status.as_u16()).collect();
    assert_eq!(
        statuses,
        [
            200, 200, 200, 403, 403, 201, 400, 405, 404, 400, 200, 200, 200, 429
        ],
        "{fast:?}"
    );
    assert!(fast.iter().all(|c| c.has_request_id), "{fast:?}");
    assert_eq!(fast[12].policy.as_deref(), Some("\"credential\";q=3;w=60"));
    assert!(
        fast_audit.iter().any(|(a, s)| a == "me.read" && *s == 200),
        "{fast_audit:?}"
    );
    assert!(
        fast_metrics
            .iter()
            .any(|l| l.contains("route=\"/api/v1/me\"")
                && l.contains("status=\"200\"")
                && l.ends_with(" 2")),
        "{fast_metrics:?}"
    );
    assert_eq!(fast, full);
    assert_eq!(fast_audit, full_audit);
    assert_eq!(fast_metrics, full_metrics);
}

on_both_stores!(
    api_fast_path_serves_as_the_full_pipeline,
    fast_path_answers_as_the_full_pipeline,
    fast_path_keeps_api_key_ranges,
    gateway_fast_path_serves_as_the_full_pipeline,
);
