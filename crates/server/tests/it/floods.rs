//! Floods of bad or limited requests: what they cost in audit rows, store size and store
//! queries, and that valid clients are not affected (`docs/operations.md`, "Floods of
//! bad credentials").

use std::sync::Arc;
use std::time::{Duration, Instant};

use datastack_core::credential::{CredentialKind, generate};
use reqwest::StatusCode;
use secrecy::ExposeSecret;
use serde_json::Value;

use crate::helpers::{Backend, StoreLocation, TestApp, eventually, on_both_stores};

/// The address the flood comes from, forwarded by the trusted proxy (loopback).
const FLOODER: &str = "203.0.113.7";
/// The address of a valid client during the flood.
const VALID: &str = "198.51.100.9";

/// The value of one sample of `/metrics` (0 when absent).
async fn metric(app: &TestApp, sample: &str) -> f64 {
    let text = app
        .http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    text.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// Sends `n` `GET /api/v1/me` with `token` from `ip`, `concurrency` at a time; returns
/// how many got each status.
async fn flood(app: &TestApp, token: &str, ip: &str, n: usize, concurrency: usize) -> Vec<u16> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (http, url, token, ip, next) = (
            app.http.clone(),
            format!("{}/api/v1/me", app.base),
            token.to_owned(),
            ip.to_owned(),
            next.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                let resp = http
                    .get(&url)
                    .bearer_auth(&token)
                    .header("x-forwarded-for", &ip)
                    .send()
                    .await
                    .expect("the server answers during the flood");
                statuses.push(resp.status().as_u16());
            }
            statuses
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("flood task"));
    }
    all
}

/// The number of rows, and of requests they stand for, recorded for `ip`.
async fn recorded(store: &StoreLocation, ip: &str) -> (usize, u64) {
    let details = store
        .strings(&format!(
            "SELECT COALESCE(detail, '{{}}') FROM audit_entries WHERE source_ip = '{ip}'"
        ))
        .await;
    let requests = details
        .iter()
        .map(|d| {
            serde_json::from_str::<Value>(d)
                .ok()
                .and_then(|v| v["count"].as_u64())
                .unwrap_or(1)
        })
        .sum();
    (details.len(), requests)
}

/// The logical size of the store's audit data, in bytes: the whole SQLite database as
/// seen through its WAL, or the audit table with its indexes on PostgreSQL.
async fn store_bytes(store: &StoreLocation) -> u64 {
    let sql = if store.is_postgres() {
        "SELECT CAST(pg_total_relation_size('audit_entries') AS TEXT)"
    } else {
        "SELECT CAST(page_count * page_size AS TEXT) FROM pragma_page_count(), pragma_page_size()"
    };
    store.strings(sql).await[0].parse().expect("a size")
}

async fn me_from(app: &TestApp, token: &str, ip: &str) -> StatusCode {
    app.http
        .get(format!("{}/api/v1/me", app.base))
        .bearer_auth(token)
        .header("x-forwarded-for", ip)
        .send()
        .await
        .expect("answer")
        .status()
}

async fn a_flood_of_an_unknown_credential_costs_a_few_rows(backend: Backend) {
    const N: usize = 5_000;
    const CONCURRENCY: usize = 32;
    let store = Arc::new(StoreLocation::new(backend).await);
    let app = TestApp::spawn_on(store, |c| {
        c.trusted_proxies = vec!["127.0.0.1/32".parse().expect("net")];
    })
    .await;
    let admin = app.admin().to_owned();
    assert_eq!(me_from(&app, &admin, VALID).await, StatusCode::OK);
    let unknown = generate(CredentialKind::PersonalAccessToken);
    let unknown = unknown.secret.expose_secret().to_owned();
    let misses = "datastack_credential_cache_lookups_total{result=\"miss\"}";
    let misses_before = metric(&app, misses).await;
    let bytes_before = store_bytes(app.store()).await;

    // The flood, and a valid client calling at the same time from another address.
    let started = Instant::now();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let valid = {
        let (http, base, admin, done) = (
            app.http.clone(),
            app.base.clone(),
            admin.clone(),
            done.clone(),
        );
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            while !done.load(std::sync::atomic::Ordering::Relaxed) && statuses.len() < 200 {
                let resp = http
                    .get(format!("{base}/api/v1/me"))
                    .bearer_auth(&admin)
                    .header("x-forwarded-for", VALID)
                    .send()
                    .await
                    .expect("answer");
                statuses.push(resp.status().as_u16());
            }
            statuses
        })
    };
    let statuses = flood(&app, &unknown, FLOODER, N, CONCURRENCY).await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let seconds = started.elapsed().as_secs() + 1;
    let valid = valid.await.expect("valid client");
    assert!(!valid.is_empty());
    assert!(
        valid.iter().all(|s| *s == 200),
        "a valid client is not affected by the flood: {valid:?}"
    );
    assert_eq!(statuses.len(), N);
    assert!(statuses.iter().all(|s| *s == 401 || *s == 429));
    assert!(statuses.contains(&429), "the address got limited");

    // Every refusal is counted in the log, in a few aggregated rows.
    assert!(
        eventually(Duration::from_secs(15), || async {
            recorded(app.store(), FLOODER).await.1 == N as u64
        })
        .await,
        "the rows count every refused request: {:?}",
        recorded(app.store(), FLOODER).await
    );
    let (rows, _) = recorded(app.store(), FLOODER).await;
    assert!(
        rows as u64 <= 6 * (seconds + 2),
        "{rows} rows for a {seconds}-second flood"
    );
    let first = app
        .store()
        .strings(&format!(
            "SELECT detail FROM audit_entries WHERE source_ip = '{FLOODER}' AND detail LIKE '%\"count\"%' LIMIT 1"
        ))
        .await;
    let detail: Value = serde_json::from_str(&first[0]).expect("detail");
    assert_eq!(detail["network"], "203.0.113.0/24", "{detail}");
    assert!(detail["lastRequestId"].is_string(), "{detail}");
    assert!(
        detail["aggregated"]
            .as_str()
            .is_some_and(|a| a.starts_with("refused requests")),
        "{detail}"
    );
    // The abuse flag is still recorded on its own, with its event.
    assert!(
        eventually(Duration::from_secs(10), || async {
            !app.store()
                .strings("SELECT id FROM security_events WHERE type = 'ratelimit.abuse_flagged'")
                .await
                .is_empty()
        })
        .await
    );
    // The burst detector counted the aggregated failures.
    assert!(
        !app.store()
            .strings("SELECT id FROM security_events WHERE type = 'auth.failure_burst'")
            .await
            .is_empty()
    );

    // The unknown digest cost a handful of store queries, not one per request.
    let lookups = metric(&app, misses).await - misses_before;
    assert!(
        lookups <= (CONCURRENCY as f64) + seconds as f64 + 2.0,
        "{lookups} store lookups for {N} requests"
    );
    assert!(
        metric(
            &app,
            "datastack_credential_cache_lookups_total{result=\"negative_hit\"}"
        )
        .await
            > 0.0
    );
    assert!(
        metric(
            &app,
            "datastack_credential_cache_lookups_total{result=\"skipped_limited\"}"
        )
        .await
            > 0.0
    );
    assert!(metric(&app, "datastack_audit_requests_aggregated_total").await >= (N / 2) as f64);

    // The store grew by little: documented as under 1 MiB for such a flood.
    let grown = store_bytes(app.store()).await.saturating_sub(bytes_before);
    eprintln!(
        "flood of {N} requests in {:?}: {rows} rows, {lookups} store lookups, {grown} bytes",
        started.elapsed()
    );
    assert!(grown < 1024 * 1024, "the store grew by {grown} bytes");
    app.stop().await;
}

async fn client_strings_are_stored_bounded(backend: Backend) {
    let store = Arc::new(StoreLocation::new(backend).await);
    let app = TestApp::spawn_on(store, |c| {
        c.trusted_proxies = vec!["127.0.0.1/32".parse().expect("net")];
    })
    .await;
    let agent = "Mozilla/5.0 (X11; Linux) ".repeat(2_500);
    assert!(agent.len() > 60_000);
    let ip = "203.0.113.99";
    let resp = app
        .http
        .get(format!("{}/api/v1/users", app.base))
        .bearer_auth(app.admin())
        .header("x-forwarded-for", ip)
        .header("user-agent", &agent)
        .header("x-datastack-scope", "read:users ".repeat(6_000))
        .send()
        .await
        .expect("answer");
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "FORBIDDEN", "{body}");
    assert!(
        eventually(Duration::from_secs(10), || async {
            !app.store()
                .strings(&format!(
                    "SELECT id FROM audit_entries WHERE source_ip = '{ip}'"
                ))
                .await
                .is_empty()
        })
        .await
    );
    let stored = app
        .store()
        .strings(&format!(
            "SELECT user_agent || '|' || COALESCE(scope, '') || '|' || COALESCE(detail, '') FROM audit_entries WHERE source_ip = '{ip}'"
        ))
        .await;
    let row = &stored[0];
    assert!(row.len() < 2_000, "{} bytes stored: {row}", row.len());
    let ua = row.split('|').next().unwrap_or_default();
    assert!(ua.starts_with("Mozilla/5.0 (X11; Linux)"), "{ua}");
    assert!(ua.ends_with("…[truncated]"), "{ua}");
    assert_eq!(ua.chars().count(), 256);

    // A 60 KB method a proxy forwards to forward-auth is refused as unknown, and its
    // entry keeps nothing of it.
    let route = app
        .post(
            "/api/v1/gateway/routes",
            app.admin(),
            "manage:gateway",
            serde_json::json!({"pathPrefix": "/v1/jobs", "resource": "jobs"}),
        )
        .await;
    assert_eq!(route.status, StatusCode::CREATED, "{}", route.text);
    let method = "X".repeat(60_000);
    let resp = app
        .http
        .get(format!("{}/auth/verify", app.base))
        .header("x-forwarded-for", "203.0.113.98")
        .header("x-original-uri", "/v1/jobs/1")
        .header("x-original-method", &method)
        .send()
        .await
        .expect("answer");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = resp.json().await.expect("error body");
    assert_eq!(body["error"]["code"], "INVALID_REQUEST", "{body}");
    assert!(
        eventually(Duration::from_secs(10), || async {
            !app.store()
                .strings("SELECT id FROM audit_entries WHERE source_ip = '203.0.113.98'")
                .await
                .is_empty()
        })
        .await
    );
    let rows = app
        .store()
        .strings(
            "SELECT COALESCE(detail, '') || '|' || COALESCE(user_agent, '') || '|' || action \
             FROM audit_entries WHERE source_ip = '203.0.113.98'",
        )
        .await;
    for row in rows {
        assert!(!row.contains("XXXX"), "the method reached the entry: {row}");
        assert!(row.len() < 2_000, "{} bytes stored", row.len());
    }
    app.stop().await;
}

async fn a_credential_flooded_as_unknown_works_once_it_exists(backend: Backend) {
    let store = Arc::new(StoreLocation::new(backend).await);
    let app = TestApp::spawn_on(store, |c| {
        c.trusted_proxies = vec!["127.0.0.1/32".parse().expect("net")];
        c.floods.negative_cache_ttl = Duration::from_millis(1_000);
    })
    .await;
    let secret = generate(CredentialKind::PersonalAccessToken);
    let token = secret.secret.expose_secret().to_owned();
    let statuses = flood(&app, &token, FLOODER, 100, 8).await;
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    // A token created now works at once, from the flooded address too: its secret is new.
    let (created, _) = app
        .create_token(app.admin(), serde_json::json!({ "label": "fresh" }))
        .await;
    assert_eq!(me_from(&app, &created, FLOODER).await, StatusCode::OK);
    // The flooded secret appears in the store behind the server's back (a restored
    // backup): it is accepted once the negative cache's entry expires (1 s here).
    let digest = secret.digest.to_hex();
    let id = format!("tok_{}", uuid::Uuid::now_v7().simple());
    app.store()
        .execute(&[&format!(
            "INSERT INTO tokens (id, workspace_id, owner_id, label, digest, last_four, scopes, created_at, kind) \
             SELECT '{id}', workspace_id, owner_id, 'restored', '{digest}', 'abcd', scopes, created_at, kind \
             FROM tokens WHERE label <> 'restored' ORDER BY id LIMIT 1"
        )])
        .await;
    let restored_at = Instant::now();
    assert!(
        eventually(Duration::from_secs(3), || async {
            me_from(&app, &token, VALID).await == StatusCode::OK
        })
        .await,
        "the restored credential is accepted"
    );
    assert!(restored_at.elapsed() < Duration::from_millis(2_500));
    app.stop().await;
}

async fn the_limiter_tracks_a_bounded_number_of_addresses(backend: Backend) {
    let store = Arc::new(StoreLocation::new(backend).await);
    let app = TestApp::spawn_on(store, |c| {
        c.trusted_proxies = vec!["127.0.0.1/32".parse().expect("net")];
        c.floods.max_tracked_clients = 100;
    })
    .await;
    let admin = app.admin().to_owned();
    let mut answers = Vec::new();
    for i in 0..400u32 {
        let ip = format!("10.{}.{}.1", i / 200, i % 200);
        let resp = app
            .http
            .get(format!("{}/api/v1/me", app.base))
            .header("x-forwarded-for", &ip)
            .send()
            .await
            .expect("answer");
        answers.push(resp.status().as_u16());
    }
    assert!(answers.iter().all(|s| *s == 401), "{answers:?}");
    let tracked = metric(&app, "datastack_ratelimit_tracked_clients").await;
    // The cap, plus the one bucket the addresses beyond it share.
    assert!(
        tracked > 0.0 && tracked <= 101.0,
        "{tracked} addresses tracked with a cap of 100"
    );
    // Valid clients are unaffected.
    assert_eq!(me_from(&app, &admin, VALID).await, StatusCode::OK);
    app.stop().await;
}

/// The `audit.growth_exceeded` events, through the API.
async fn growth_events(app: &TestApp, admin: &str) -> Vec<Value> {
    let r = app
        .get(
            "/api/v1/audit/security-events?type=audit.growth_exceeded",
            admin,
            "read:audit",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body["items"].as_array().cloned().unwrap_or_default()
}

async fn audit_growth_past_the_threshold_raises_one_event(backend: Backend) {
    let store = Arc::new(StoreLocation::new(backend).await);
    // Growth is counted in rows: one per read here.
    let app = TestApp::spawn_on(store, |c| {
        c.floods.audit_growth_alert_per_minute = 20;
        c.audit_aggregate_reads = false;
    })
    .await;
    let admin = app.admin().to_owned();
    // Below the threshold: nothing.
    for _ in 0..10 {
        assert_eq!(app.me(&admin).await.status, StatusCode::OK);
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            metric(&app, "datastack_audit_entries_last_minute").await >= 10.0
        })
        .await
    );
    assert!(growth_events(&app, &admin).await.is_empty());
    // Past it: one event, however far past.
    for _ in 0..40 {
        assert_eq!(app.me(&admin).await.status, StatusCode::OK);
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            !growth_events(&app, &admin).await.is_empty()
        })
        .await,
        "audit.growth_exceeded is raised"
    );
    let raised = growth_events(&app, &admin).await;
    assert_eq!(raised.len(), 1, "{raised:?}");
    assert_eq!(
        raised[0]["payload"]["thresholdPerMinute"], 20,
        "{}",
        raised[0]
    );
    assert!(
        raised[0]["payload"]["entriesLastMinute"]
            .as_u64()
            .is_some_and(|n| n > 20),
        "{}",
        raised[0]
    );
    for _ in 0..40 {
        assert_eq!(app.me(&admin).await.status, StatusCode::OK);
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            metric(&app, "datastack_audit_entries_last_minute").await >= 90.0
        })
        .await
    );
    assert_eq!(
        growth_events(&app, &admin).await.len(),
        1,
        "at most one event per interval"
    );
    app.stop().await;
}

/// Many valid credentials first used from one address (a service holding many keys, a
/// node with a cold cache behind one proxy) are looked up and accepted however many there
/// are: only failed authentications count against the address before a lookup.
async fn many_new_valid_credentials_from_one_address_are_not_throttled(backend: Backend) {
    let store = Arc::new(StoreLocation::new(backend).await);
    let app = TestApp::spawn_on(store, |c| {
        c.trusted_proxies = vec!["127.0.0.1/32".parse().expect("net")];
        c.rate_limit_ip_per_minute = 5;
    })
    .await;
    let admin = app.admin().to_owned();
    let mut tokens = Vec::new();
    for i in 0..12 {
        let (token, _) = app
            .create_token(&admin, serde_json::json!({"label": format!("svc {i}")}))
            .await;
        tokens.push(token);
    }
    for token in &tokens {
        assert_eq!(me_from(&app, token, "192.0.2.50").await, StatusCode::OK);
    }
    // Failed authentications do count: after five, the address is refused...
    let unknown = generate(CredentialKind::PersonalAccessToken);
    let unknown = unknown.secret.expose_secret().to_owned();
    let mut statuses = Vec::new();
    for _ in 0..7 {
        statuses.push(me_from(&app, &unknown, "192.0.2.50").await);
    }
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::UNAUTHORIZED)
            .count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(statuses[6], StatusCode::TOO_MANY_REQUESTS, "{statuses:?}");
    // ...and a valid credential it never used before still gets through the small
    // budget of lookups a refused address keeps.
    let (late, _) = app
        .create_token(&admin, serde_json::json!({"label": "late"}))
        .await;
    assert_eq!(me_from(&app, &late, "192.0.2.50").await, StatusCode::OK);
    app.stop().await;
}

on_both_stores!(
    many_new_valid_credentials_from_one_address_are_not_throttled,
    audit_growth_past_the_threshold_raises_one_event,
    a_flood_of_an_unknown_credential_costs_a_few_rows,
    client_strings_are_stored_bounded,
    a_credential_flooded_as_unknown_works_once_it_exists,
    the_limiter_tracks_a_bounded_number_of_addresses,
);
