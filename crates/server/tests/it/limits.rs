//! IP access lists behind a trusted proxy, and rate limits with abuse flags, through HTTP.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::edge::{audit_until, send};
use crate::helpers::{Backend, StoreLocation, TestApp, on_both_stores};

async fn ip_access_lists_behind_a_trusted_proxy(backend: Backend) {
    let store = std::sync::Arc::new(StoreLocation::new(backend).await);
    // The test client is the "proxy": it says which client it forwards for.
    let app = TestApp::spawn_on(store, |c| {
        c.trusted_proxies = vec!["127.0.0.1/32".parse().expect("net")];
    })
    .await;
    let admin = app.admin().to_owned();
    let from = |ip: &'static str, method: Method, path: String, body: Option<Value>| {
        let app = &app;
        let admin = admin.clone();
        async move {
            let scope = if path.contains("ip-access-lists") {
                if method == Method::GET {
                    "read:ip-access-lists"
                } else {
                    "manage:ip-access-lists"
                }
            } else {
                "read:workspaces"
            };
            let mut req = app
                .http
                .request(method, format!("{}{path}", app.base))
                .bearer_auth(admin)
                .header("x-datastack-scope", scope)
                .header("x-forwarded-for", ip);
            if let Some(b) = body {
                req = req.json(&b);
            }
            let r = req.send().await.expect("send");
            let status = r.status();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            (status, body)
        }
    };
    let lists = "/api/v1/ip-access-lists".to_owned();
    // Bad input: 400 naming the field, nothing created.
    for (body, field) in [
        (
            json!({"label": "x", "listType": "ALLOW", "ipAddresses": ["10.0.0.0/33"]}),
            "ipAddresses[0]",
        ),
        (
            json!({"label": "x", "listType": "MAYBE", "ipAddresses": ["10.0.0.1"]}),
            "listType",
        ),
        (
            json!({"label": "", "listType": "ALLOW", "ipAddresses": ["10.0.0.1"]}),
            "label",
        ),
        (
            json!({"label": "x", "listType": "ALLOW", "ipAddresses": []}),
            "ipAddresses",
        ),
    ] {
        let (status, reply) = from("203.0.113.5", Method::POST, lists.clone(), Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");
        assert!(
            reply["error"]["message"]
                .as_str()
                .expect("m")
                .contains(field),
            "{field}: {reply}"
        );
    }
    // An allow list that excludes the caller's own address is refused without the flag.
    let allow = json!({"label": "office", "listType": "ALLOW", "ipAddresses": ["203.0.113.0/24", "2001:db8::/32"]});
    let (status, reply) = from(
        "198.51.100.1",
        Method::POST,
        lists.clone(),
        Some(allow.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .expect("m")
            .contains("198.51.100.1")
    );
    let (status, reply) = from("198.51.100.1", Method::GET, lists.clone(), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        reply["items"].as_array().expect("items").len(),
        0,
        "nothing was created"
    );
    let (status, created) = from("203.0.113.5", Method::POST, lists.clone(), Some(allow)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["addressCount"], 2);
    let allow_id = created["id"].as_str().expect("id").to_owned();
    // Enforced at once: outside → 403 IP_NOT_ALLOWED; inside (v4 and v6) → allowed.
    let (status, reply) = from(
        "198.51.100.1",
        Method::GET,
        "/api/v1/workspaces".into(),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{reply}");
    assert_eq!(reply["error"]["code"], "IP_NOT_ALLOWED");
    assert_eq!(
        from(
            "203.0.113.77",
            Method::GET,
            "/api/v1/workspaces".into(),
            None
        )
        .await
        .0,
        StatusCode::OK
    );
    assert_eq!(
        from(
            "2001:db8::1",
            Method::GET,
            "/api/v1/workspaces".into(),
            None
        )
        .await
        .0,
        StatusCode::OK
    );
    // A client cannot prepend an allowed address: only what the trusted proxy appended counts.
    assert_eq!(
        from(
            "203.0.113.5, 198.51.100.1",
            Method::GET,
            "/api/v1/workspaces".into(),
            None
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    // Block lists win over allow lists.
    let (status, reply) = from(
        "203.0.113.5",
        Method::POST,
        lists.clone(),
        Some(json!({"label": "bad-host", "listType": "BLOCK", "ipAddresses": ["203.0.113.66"]})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{reply}");
    let block_id = reply["id"].as_str().expect("id").to_owned();
    assert_eq!(
        from(
            "203.0.113.66",
            Method::GET,
            "/api/v1/workspaces".into(),
            None
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        from(
            "203.0.113.65",
            Method::GET,
            "/api/v1/workspaces".into(),
            None
        )
        .await
        .0,
        StatusCode::OK
    );
    // Blocking yourself needs the explicit flag.
    let (status, _) = from(
        "203.0.113.66",
        Method::PATCH,
        format!("{lists}/{block_id}"),
        Some(json!({"enabled": true})),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "the blocked address cannot even reach the API"
    );
    let (status, _) = from(
        "203.0.113.5",
        Method::PATCH,
        format!("{lists}/{block_id}"),
        Some(json!({"ipAddresses": ["203.0.113.5"]})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    // Disabling the allow list lifts it.
    let (status, reply) = from(
        "203.0.113.5",
        Method::PATCH,
        format!("{lists}/{allow_id}"),
        Some(json!({"enabled": false})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(
        from(
            "198.51.100.1",
            Method::GET,
            "/api/v1/workspaces".into(),
            None
        )
        .await
        .0,
        StatusCode::OK
    );
    // Re-enable it, then suspend enforcement through the workspace setting.
    let (status, _) = from(
        "203.0.113.5",
        Method::PATCH,
        format!("{lists}/{allow_id}"),
        Some(json!({"enabled": true})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        from(
            "198.51.100.1",
            Method::GET,
            "/api/v1/workspaces".into(),
            None
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    let me = app
        .http
        .get(format!("{}/api/v1/me", app.base))
        .bearer_auth(&admin)
        .header("x-forwarded-for", "203.0.113.5")
        .send()
        .await
        .expect("me")
        .json::<Value>()
        .await
        .expect("json");
    let ws = me["workspace"]["id"]
        .as_str()
        .expect("workspace id")
        .to_owned();
    let r = app
        .http
        .patch(format!("{}/api/v1/workspaces/{ws}", app.base))
        .bearer_auth(&admin)
        .header("x-datastack-scope", "manage:workspaces")
        .header("x-forwarded-for", "203.0.113.5")
        .json(&json!({"settings": {"ipAccessListsSuspended": true}}))
        .send()
        .await
        .expect("patch");
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        crate::helpers::eventually(Duration::from_secs(3), || async {
            from(
                "198.51.100.1",
                Method::GET,
                "/api/v1/workspaces".into(),
                None,
            )
            .await
            .0 == StatusCode::OK
        })
        .await,
        "suspended enforcement admits every address"
    );
    // The refusals were audited with the client address from the trusted proxy.
    audit_until(
        &app,
        "/api/v1/audit/events?outcome=denied&sourceIp=198.51.100.1",
        |items| {
            items
                .iter()
                .any(|e| e["status"] == 403 && e["detail"]["ipAccess"] == "denied")
        },
    )
    .await;
    app.stop().await;
}

async fn rate_limits_throttle_credentials(backend: Backend) {
    let store = std::sync::Arc::new(StoreLocation::new(backend).await);
    let app = TestApp::spawn_on(store, |c| {
        c.rate_limit_credential_per_minute = 5;
        c.abuse_threshold = 3;
    })
    .await;
    let admin = app.admin().to_owned();
    let (limited, _) = app.create_token(&admin, json!({"label": "busy"})).await;
    let mut remaining = Vec::new();
    for _ in 0..5 {
        let r = app.me(&limited).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(
            r.header("ratelimit-policy"),
            Some("\"credential\";q=5;w=60")
        );
        remaining.push(r.header("ratelimit").expect("RateLimit").to_owned());
    }
    assert!(
        remaining[0].contains("r=4") && remaining[4].contains("r=0"),
        "{remaining:?}"
    );
    let over = app.me(&limited).await;
    assert_eq!(over.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(over.code(), "RATE_LIMITED");
    assert!(over.header("ratelimit").is_some_and(|v| v.contains("r=0")));
    let retry: u64 = over
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((1..=12).contains(&retry), "{retry}");
    // Keeping on while limited gets the credential flagged: a penalty longer than the
    // bucket's own wait.
    for _ in 0..3 {
        assert_eq!(app.me(&limited).await.status, StatusCode::TOO_MANY_REQUESTS);
    }
    let penalized = app.me(&limited).await;
    assert_eq!(penalized.status, StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = penalized
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!(retry > 12, "the penalty outlasts the bucket: {retry}");
    // Other credentials are not affected.
    assert_eq!(app.me(&admin).await.status, StatusCode::OK);
    app.stop().await;
}

async fn abusive_addresses_are_flagged_and_cleared(backend: Backend) {
    let store = std::sync::Arc::new(StoreLocation::new(backend).await);
    let app = TestApp::spawn_on(store, |c| {
        c.rate_limit_ip_per_minute = 3;
        c.abuse_threshold = 3;
        c.trusted_proxies = vec!["127.0.0.1/32".parse().expect("net")];
    })
    .await;
    let admin = app.admin().to_owned();
    let guess = |i: usize, ip: &'static str| {
        let app = &app;
        async move {
            app.http
                .get(format!("{}/api/v1/me", app.base))
                .bearer_auth(format!("dapi_guess_{i}"))
                .header("x-forwarded-for", ip)
                .send()
                .await
                .expect("send")
        }
    };
    // Guessing tokens from one address is throttled by address, then flagged.
    let mut statuses = Vec::new();
    for i in 0..8 {
        statuses.push(guess(i, "198.51.100.7").await.status());
    }
    assert_eq!(
        &statuses[..3],
        &[StatusCode::UNAUTHORIZED; 3],
        "{statuses:?}"
    );
    assert!(
        statuses[3..]
            .iter()
            .all(|s| *s == StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    let r = guess(99, "198.51.100.7").await;
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .expect("s")
        .parse()
        .expect("n");
    assert!(retry > 20, "penalized: {retry}");
    // Another address is not affected, nor is a valid credential from the same one.
    assert_eq!(
        guess(100, "198.51.100.8").await.status(),
        StatusCode::UNAUTHORIZED
    );
    let ok = app
        .http
        .get(format!("{}/api/v1/me", app.base))
        .bearer_auth(&admin)
        .header("x-forwarded-for", "198.51.100.7")
        .send()
        .await
        .expect("me");
    assert_eq!(ok.status(), StatusCode::OK);
    // The flag is listed, with its security event and audit entry.
    let mut flag = Value::Null;
    for _ in 0..100 {
        let r = app.get("/api/v1/abuse-flags", &admin, "read:gateway").await;
        if let Some(f) = r.body["items"].as_array().and_then(|i| i.first()) {
            flag = f.clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(flag["subjectKind"], "ip", "{flag}");
    assert_eq!(flag["subject"], "198.51.100.7");
    assert_eq!(flag["level"], 1);
    assert_eq!(flag["status"], "active");
    let events = app
        .get(
            "/api/v1/audit/security-events?type=ratelimit.abuse_flagged",
            &admin,
            "read:audit",
        )
        .await;
    assert!(events.text.contains("198.51.100.7"), "{}", events.text);
    audit_until(
        &app,
        "/api/v1/audit/events?action=ratelimit.abuse_flagged",
        |items| items.len() == 1,
    )
    .await;
    // Clearing needs manage:gateway and lifts the penalty at once.
    let (reader, _) = app
        .create_token(&admin, json!({"label": "r", "scopes": ["read:gateway"]}))
        .await;
    let id = flag["id"].as_str().expect("id");
    let r = app
        .post(
            &format!("/api/v1/abuse-flags/{id}/clear"),
            &reader,
            "read:gateway",
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = app
        .post(
            &format!("/api/v1/abuse-flags/{id}/clear"),
            &admin,
            "manage:gateway",
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status"], "cleared");
    let after = guess(101, "198.51.100.7").await;
    if after.status() == StatusCode::TOO_MANY_REQUESTS {
        let retry: u64 = after.headers()["retry-after"]
            .to_str()
            .expect("s")
            .parse()
            .expect("n");
        assert!(retry <= 20, "no penalty after clearing: {retry}");
    }
    let again = app
        .post(
            &format!("/api/v1/abuse-flags/{id}/clear"),
            &admin,
            "manage:gateway",
            json!({}),
        )
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    let active = app.get("/api/v1/abuse-flags", &admin, "read:gateway").await;
    assert_eq!(active.body["items"].as_array().expect("items").len(), 0);
    // Health and metrics are not limited.
    for _ in 0..10 {
        assert_eq!(
            send(&app, Method::GET, "/healthz", None).await.status,
            StatusCode::OK
        );
    }
    let metrics = send(&app, Method::GET, "/metrics", None).await;
    assert!(
        metrics.text.contains("datastack_ratelimit_decisions_total"),
        "{}",
        metrics.text
    );
    app.stop().await;
}

on_both_stores!(
    ip_access_lists_behind_a_trusted_proxy,
    rate_limits_throttle_credentials,
    abusive_addresses_are_flagged_and_cleared,
);
