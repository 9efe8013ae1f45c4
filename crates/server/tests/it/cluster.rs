//! Cluster mode: two nodes on one PostgreSQL schema. A revocation or suspension through
//! node A is refused by node B within one second although B had the credential cached.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{Backend, StoreLocation, TestApp, require_postgres, require_redis};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(datastack_test_postgres),
    ignore = "needs PostgreSQL: set DATASTACK_TEST_DATABASE_URL"
)]
async fn revocation_through_one_node_reaches_the_other_within_a_second() {
    let store = Arc::new(StoreLocation::new(Backend::Postgres).await);
    // A long cache TTL: only the announcement can make node B forget.
    let a = TestApp::spawn_on(store.clone(), |c| c.cache_ttl = Duration::from_secs(3600)).await;
    let b = TestApp::spawn_on(store, |c| c.cache_ttl = Duration::from_secs(3600)).await;
    assert!(
        b.admin_token.is_none(),
        "the second node finds the store bootstrapped"
    );
    let admin = a.admin().to_owned();

    let (token, id) = a.create_token(&admin, json!({"label": "shared"})).await;
    // Node B verifies (and caches) the token.
    for _ in 0..3 {
        assert_eq!(b.me(&token).await.status, StatusCode::OK);
    }
    let r = a
        .delete(
            &format!("/api/v1/auth/tokens/{id}"),
            &admin,
            "manage:tokens",
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let revoked_at = Instant::now();
    loop {
        if b.me(&token).await.status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(1),
            "node B still accepts a revoked token after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The same for a suspended principal.
    let (user, user_token) = a.user_with_token("u@example.com", "editor").await;
    assert_eq!(b.me(&user_token).await.status, StatusCode::OK);
    let r = a
        .post(
            &format!("/api/v1/users/{user}/suspend"),
            &admin,
            "manage:users",
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let suspended_at = Instant::now();
    loop {
        if b.me(&user_token).await.status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(
            suspended_at.elapsed() < Duration::from_secs(1),
            "node B still accepts a suspended user's token after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(datastack_test_postgres),
    ignore = "needs PostgreSQL: set DATASTACK_TEST_DATABASE_URL"
)]
async fn a_node_whose_listening_connection_dies_reconnects_and_still_hears_revocations() {
    let base = require_postgres();
    let store = Arc::new(StoreLocation::new(Backend::Postgres).await);
    let StoreLocation::Postgres(url, _) = &*store else {
        unreachable!("a PostgreSQL location");
    };
    let schema = url
        .rsplit("search_path%3D")
        .next()
        .expect("schema")
        .to_owned();
    let a = TestApp::spawn_on(store.clone(), |c| c.cache_ttl = Duration::from_secs(3600)).await;
    let b = TestApp::spawn_on(store.clone(), |c| c.cache_ttl = Duration::from_secs(3600)).await;
    let admin = a.admin().to_owned();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&base)
        .await
        .expect("connect");
    let listeners = |pool: sqlx::PgPool, schema: String| async move {
        sqlx::query_scalar::<_, i32>(
            "SELECT pid FROM pg_stat_activity WHERE query LIKE 'LISTEN %' || $1 || '%'",
        )
        .bind(schema)
        .fetch_all(&pool)
        .await
        .expect("pg_stat_activity")
    };
    let before = listeners(pool.clone(), schema.clone()).await;
    assert_eq!(before.len(), 2, "each node listens on its own connection");
    for pid in &before {
        sqlx::query("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .execute(&pool)
            .await
            .expect("terminate");
    }
    // Both nodes notice, empty their caches and subscribe again on new connections.
    let reconnected = crate::helpers::eventually(Duration::from_secs(10), || {
        let (pool, schema, before) = (pool.clone(), schema.clone(), before.clone());
        async move {
            let now = listeners(pool, schema).await;
            now.len() == 2 && now.iter().all(|p| !before.contains(p))
        }
    })
    .await;
    assert!(reconnected, "the nodes did not listen again");

    let (token, id) = a
        .create_token(&admin, json!({"label": "after-reconnect"}))
        .await;
    assert_eq!(b.me(&token).await.status, StatusCode::OK);
    let r = a
        .delete(
            &format!("/api/v1/auth/tokens/{id}"),
            &admin,
            "manage:tokens",
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let revoked_at = Instant::now();
    while b.me(&token).await.status != StatusCode::UNAUTHORIZED {
        assert!(
            revoked_at.elapsed() < Duration::from_secs(1),
            "node B missed a revocation after reconnecting"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    pool.close().await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(datastack_test_postgres),
    ignore = "needs PostgreSQL: set DATASTACK_TEST_DATABASE_URL"
)]
async fn two_nodes_append_to_one_verifiable_audit_chain_and_a_foreign_key_is_refused() {
    let store = Arc::new(StoreLocation::new(Backend::Postgres).await);
    let a = TestApp::spawn_on(store.clone(), |_| {}).await;
    let b = TestApp::spawn_on(store.clone(), |_| {}).await;
    let admin = a.admin().to_owned();
    // Both nodes write changes (in their transactions) and reads (group-committed) at once.
    async fn work(node: &TestApp, admin: &str, name: &str) {
        for i in 0..15 {
            node.create_token(admin, json!({"label": format!("{name}-{i}")}))
                .await;
            assert_eq!(node.me(admin).await.status, StatusCode::OK);
        }
    }
    tokio::join!(work(&a, &admin, "a"), work(&b, &admin, "b"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let r = a.get("/api/v1/audit/export", &admin, "read:audit").await;
        assert_eq!(r.status, StatusCode::OK);
        let lines: Vec<serde_json::Value> = r
            .text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect();
        // An aggregated entry stands for `detail.count` reads.
        let reads: u64 = lines
            .iter()
            .filter(|e| e["action"] == "me.read")
            .map(|e| e["detail"]["count"].as_u64().unwrap_or(1))
            .sum();
        if reads >= 30 {
            break lines;
        }
        assert!(Instant::now() < deadline, "the reads were not all recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        lines
            .iter()
            .filter(|e| e["action"] == "tokens.create")
            .count(),
        30
    );
    for (i, w) in lines.windows(2).enumerate() {
        assert_eq!(
            w[1]["seq"].as_i64(),
            w[0]["seq"].as_i64().map(|s| s + 1),
            "at {i}"
        );
        assert_eq!(w[1]["prevHash"], w[0]["hash"], "at {i}");
    }
    for node in [&a, &b] {
        let r = node.get("/api/v1/audit/verify", &admin, "read:audit").await;
        assert_eq!(r.body["ok"], true, "{}", r.text);
    }

    // A node configured with another audit key would fork the chain: it does not start.
    let mut config = store.config();
    config.audit_key = Some(secrecy::SecretString::from("ab".repeat(32)));
    let refused = datastack_server::app::Application::build(config).await;
    let Err(e) = refused else {
        panic!("a node with a different audit key started");
    };
    assert!(e.to_string().contains("audit key"), "{e}");
    a.stop().await;
    b.stop().await;
}

async fn readiness(node: &TestApp) -> serde_json::Value {
    node.http
        .get(format!("{}/readyz", node.base))
        .send()
        .await
        .expect("readyz")
        .json()
        .await
        .expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(datastack_test_postgres, datastack_test_redis)),
    ignore = "needs PostgreSQL and Redis: set DATASTACK_TEST_DATABASE_URL and DATASTACK_TEST_REDIS_URL"
)]
async fn two_nodes_enforce_one_rate_limit_through_redis() {
    let redis = require_redis();
    let prefix = format!("t{}:", uuid::Uuid::now_v7().simple());
    let store = Arc::new(StoreLocation::new(Backend::Postgres).await);
    let setup = |c: &mut datastack_server::Config| {
        c.redis_url = Some(redis.clone());
        c.redis_key_prefix = prefix.clone();
        c.rate_limit_credential_per_minute = 6;
    };
    let a = TestApp::spawn_on(store.clone(), setup).await;
    let b = TestApp::spawn_on(store, setup).await;
    for node in [&a, &b] {
        let ready = readiness(node).await;
        assert_eq!(ready["checks"]["rateLimits"], "redis", "{ready}");
    }
    let admin = a.admin().to_owned();
    let (token, _) = a
        .create_token(&admin, json!({"label": "shared limit"}))
        .await;
    // Six requests in all, alternating nodes, pass; the next is refused on either node.
    for i in 0..6 {
        let node = if i % 2 == 0 { &a } else { &b };
        let r = node.me(&token).await;
        assert_eq!(r.status, StatusCode::OK, "request {i}: {}", r.text);
        let expected = format!("r={}", 5 - i);
        assert!(
            r.header("ratelimit").is_some_and(|v| v.contains(&expected)),
            "request {i}: {:?}",
            r.header("ratelimit")
        );
    }
    for node in [&a, &b] {
        let r = node.me(&token).await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text);
        assert!(r.header("retry-after").is_some());
    }
    let metrics = a
        .http
        .get(format!("{}/metrics", a.base))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("datastack_ratelimit_redis_available 1"),
        "{metrics}"
    );
    a.stop().await;
    b.stop().await;
}

/// One forward-auth decision for `GET /v1/jobs/42` with `token` through `node`.
async fn verify_job_read(node: &TestApp, token: &str) -> reqwest::Response {
    node.http
        .get(format!("{}/auth/verify", node.base))
        .bearer_auth(token)
        .header("x-original-uri", "/v1/jobs/42")
        .header("x-original-method", "GET")
        .send()
        .await
        .expect("verify")
}

/// Sends forward-auth decisions for `token` through `node` until one is refused; returns
/// how many were allowed.
async fn verify_until_refused(node: Arc<TestApp>, token: String) -> u64 {
    let mut allowed = 0;
    for _ in 0..50_000 {
        let r = verify_job_read(&node, &token).await;
        match r.status() {
            StatusCode::OK => allowed += 1,
            StatusCode::TOO_MANY_REQUESTS => return allowed,
            other => panic!("unexpected {other}: {}", r.text().await.unwrap_or_default()),
        }
    }
    panic!("never refused after {allowed} allowed decisions")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(datastack_test_postgres, datastack_test_redis)),
    ignore = "needs PostgreSQL and Redis: set DATASTACK_TEST_DATABASE_URL and DATASTACK_TEST_REDIS_URL"
)]
async fn leases_spare_redis_round_trips_and_hold_a_shared_limit_within_their_bound() {
    let redis = require_redis();
    let prefix = format!("t{}:", uuid::Uuid::now_v7().simple());
    let store = Arc::new(StoreLocation::new(Backend::Postgres).await);
    // 6000 a minute: a lease is at most 6 requests (a thousandth of the quota), so two
    // nodes may admit at most 2 × 6 requests beyond what one shared bucket would.
    const QUOTA: u64 = 6000;
    const HELD_PER_NODE: u64 = QUOTA / 1000;
    // A forward-auth route for /v1/jobs (no upstream).
    let route: datastack_core::edge::RouteSpec =
        serde_json::from_value(json!({"pathPrefix": "/v1/jobs", "resource": "jobs"}))
            .expect("route");
    let setup = |c: &mut datastack_server::Config| {
        c.redis_url = Some(redis.clone());
        c.redis_key_prefix = prefix.clone();
        c.rate_limit_credential_per_minute = QUOTA as u32;
        c.rate_limit_workspace_per_minute = 0;
        c.gateway_routes = vec![route.clone()];
    };
    let a = Arc::new(TestApp::spawn_on(store.clone(), setup).await);
    let b = Arc::new(TestApp::spawn_on(store, setup).await);
    let admin = a.admin().to_owned();
    let (token, _) = a.create_token(&admin, json!({"label": "leased"})).await;
    let started = Instant::now();
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let node = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(verify_until_refused(node, token.clone()))
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        admitted += t.await.expect("task");
    }
    // The bucket refills at QUOTA / 60 a second while the test runs.
    let refilled = (started.elapsed().as_secs_f64() * QUOTA as f64 / 60.0).ceil() as u64;
    assert!(
        admitted <= QUOTA + refilled + 2 * HELD_PER_NODE,
        "{admitted} admitted; one shared bucket allows {} and the leases {}",
        QUOTA + refilled,
        2 * HELD_PER_NODE
    );
    assert!(
        admitted >= QUOTA - 2 * HELD_PER_NODE,
        "only {admitted} admitted of a burst of {QUOTA}"
    );
    // Most decisions were admitted on a lease, without a script in Redis.
    let calls = a.metric("datastack_ratelimit_redis_calls_total").await
        + b.metric("datastack_ratelimit_redis_calls_total").await;
    assert!(
        calls > 0.0 && calls < admitted as f64 / 2.0,
        "{calls} Redis calls for {admitted} admitted decisions"
    );
    // A node with `rate_limit_lease_max = 1` asks Redis for every request.
    let exact = TestApp::spawn_on(Arc::new(StoreLocation::new(Backend::Postgres).await), |c| {
        setup(c);
        c.rate_limit_lease_max = 1;
    })
    .await;
    let (other, _) = exact
        .create_token(exact.admin(), json!({"label": "exact"}))
        .await;
    let before = exact.metric("datastack_ratelimit_redis_calls_total").await;
    for _ in 0..50 {
        assert_eq!(
            verify_job_read(&exact, &other).await.status(),
            StatusCode::OK
        );
    }
    let after = exact.metric("datastack_ratelimit_redis_calls_total").await;
    assert_eq!(after - before, 50.0, "one call per decision");
    let exact = Arc::new(exact);
    for node in [a, b, exact] {
        Arc::into_inner(node).expect("no other holder").stop().await;
    }
}

/// A TCP relay to Redis that the test can cut and restore, to play a Redis outage.
struct Relay {
    port: u16,
    tasks: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    async fn start(port: u16, target: String) -> Self {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the relay");
        let port = listener.local_addr().expect("addr").port();
        let tasks: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let spawned = tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                let conn = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                spawned.lock().expect("lock").push(conn);
            }
        });
        tasks.lock().expect("lock").push(accept);
        Self { port, tasks }
    }

    /// Closes the listener and every relayed connection.
    fn cut(&self) {
        for t in self.tasks.lock().expect("lock").drain(..) {
            t.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(datastack_test_redis),
    ignore = "needs Redis: set DATASTACK_TEST_REDIS_URL"
)]
async fn a_node_falls_back_to_local_limits_when_redis_is_unreachable_and_recovers() {
    let redis = require_redis();
    let target = redis
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .to_owned();
    let relay = Relay::start(0, target.clone()).await;
    let port = relay.port;
    let prefix = format!("t{}:", uuid::Uuid::now_v7().simple());
    let store = Arc::new(StoreLocation::new(Backend::Sqlite).await);
    let node = TestApp::spawn_on(store, |c| {
        c.redis_url = Some(format!("redis://127.0.0.1:{port}"));
        c.redis_key_prefix = prefix.clone();
        c.rate_limit_credential_per_minute = 4;
    })
    .await;
    let admin = node.admin().to_owned();
    let (token, _) = node.create_token(&admin, json!({"label": "t"})).await;
    assert_eq!(readiness(&node).await["checks"]["rateLimits"], "redis");
    assert_eq!(node.me(&token).await.status, StatusCode::OK);

    // Redis goes away: the node keeps serving, on its own limits, and says so.
    relay.cut();
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(node.me(&token).await.status);
    }
    assert!(
        statuses.contains(&StatusCode::OK),
        "still serving: {statuses:?}"
    );
    assert_eq!(
        statuses.last(),
        Some(&StatusCode::TOO_MANY_REQUESTS),
        "local limits still apply: {statuses:?}"
    );
    let ready = node
        .http
        .get(format!("{}/readyz", node.base))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), StatusCode::OK, "the node stays ready");
    let ready: serde_json::Value = ready.json().await.expect("json");
    assert_eq!(ready["checks"]["rateLimits"], "local (redis unreachable)");
    let metrics = node
        .http
        .get(format!("{}/metrics", node.base))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("datastack_ratelimit_redis_available 0"),
        "{metrics}"
    );

    // Redis comes back on the same address: the node returns to shared limits by itself.
    let _relay = Relay::start(port, target).await;
    let back = crate::helpers::eventually(Duration::from_secs(10), || async {
        let _ = node.me(&admin).await;
        readiness(&node).await["checks"]["rateLimits"] == "redis"
    })
    .await;
    assert!(back, "the node did not return to Redis");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(datastack_test_postgres, datastack_test_redis)),
    ignore = "needs PostgreSQL and Redis: set DATASTACK_TEST_DATABASE_URL and DATASTACK_TEST_REDIS_URL"
)]
async fn api_keys_on_two_nodes_share_one_spend_limit_and_revocations_reach_both() {
    let redis = require_redis();
    let prefix = format!("t{}:", uuid::Uuid::now_v7().simple());
    let store = Arc::new(StoreLocation::new(Backend::Postgres).await);
    let setup = |c: &mut datastack_server::Config| {
        c.redis_url = Some(redis.clone());
        c.redis_key_prefix = prefix.clone();
        c.cache_ttl = Duration::from_secs(3600);
    };
    let a = TestApp::spawn_on(store.clone(), setup).await;
    let b = TestApp::spawn_on(store, setup).await;
    let admin = a.admin().to_owned();
    let up = crate::api_keys::costly_upstream().await;
    let r = a
        .post(
            "/api/v1/gateway/routes",
            &admin,
            "manage:gateway",
            json!({"pathPrefix": "/v1/jobs", "upstream": format!("http://{up}"),
                   "resource": "jobs", "pricePerRequest": 1}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let created = crate::api_keys::create_key(
        &a,
        &admin,
        json!({"name": "shared", "scopes": ["read:jobs"], "spendLimit": {"units": 10, "period": "total"}}),
    )
    .await;
    let key = created["key"].as_str().expect("key").to_owned();
    let id = created["id"].as_str().expect("id").to_owned();
    // Node B learns the route through the announcement.
    assert!(
        crate::helpers::eventually(Duration::from_secs(5), || async {
            crate::edge::send(&b, reqwest::Method::GET, "/v1/jobs/x", Some(&key))
                .await
                .status
                != StatusCode::NOT_FOUND
        })
        .await
    );
    // One unit was spent finding that out. Alternate nodes: together they admit exactly
    // the limit (one Redis counter), then both refuse.
    let mut passed = 1;
    let mut refused = 0;
    for i in 0..16 {
        let node = if i % 2 == 0 { &a } else { &b };
        let r = crate::edge::send(node, reqwest::Method::GET, "/v1/jobs/x", Some(&key)).await;
        match r.status {
            StatusCode::OK => passed += 1,
            StatusCode::PAYMENT_REQUIRED => {
                assert_eq!(r.code(), "SPEND_LIMIT_EXCEEDED");
                assert!(
                    r.body["error"].get("resetsAt").is_none(),
                    "a total never resets"
                );
                refused += 1;
            }
            other => panic!("unexpected {other}: {}", r.text),
        }
    }
    assert_eq!(passed, 10, "the cluster admits exactly the limit");
    assert_eq!(refused, 7);
    // Both nodes' charges reach the store within a flush.
    assert!(
        crate::helpers::eventually(Duration::from_secs(5), || async {
            a.get(
                &format!("/api/v1/auth/api-keys/{id}/usage"),
                &admin,
                "read:api-keys",
            )
            .await
            .body["used"]
                == 10
        })
        .await,
        "usage recorded from both nodes"
    );

    // Rotation with no overlap and revocation through A reach B within a second, though B
    // has the key cached.
    let other = crate::api_keys::create_key(
        &a,
        &admin,
        json!({"name": "other", "scopes": ["read:users"]}),
    )
    .await;
    let other_key = other["key"].as_str().expect("key").to_owned();
    let other_id = other["id"].as_str().expect("id").to_owned();
    assert_eq!(b.me(&other_key).await.status, StatusCode::OK);
    let rotated = a
        .post(
            &format!("/api/v1/auth/api-keys/{other_id}/rotate"),
            &admin,
            "manage:api-keys",
            json!({"overlapSeconds": 0}),
        )
        .await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.text);
    let newest = rotated.body["key"].as_str().expect("key").to_owned();
    let started = Instant::now();
    assert!(
        crate::helpers::eventually(Duration::from_secs(1), || async {
            b.me(&other_key).await.status == StatusCode::UNAUTHORIZED
        })
        .await,
        "the old secret is refused on B within a second"
    );
    assert_eq!(b.me(&newest).await.status, StatusCode::OK);
    let r = a
        .delete(
            &format!("/api/v1/auth/api-keys/{other_id}"),
            &admin,
            "manage:api-keys",
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let revoked_at = Instant::now();
    assert!(
        crate::helpers::eventually(Duration::from_secs(1), || async {
            b.me(&newest).await.status == StatusCode::UNAUTHORIZED
        })
        .await,
        "the revoked key is refused on B within a second"
    );
    eprintln!(
        "rotation reached B in {:?}, revocation in {:?}",
        started.elapsed(),
        revoked_at.elapsed()
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(datastack_test_postgres),
    ignore = "needs PostgreSQL: set DATASTACK_TEST_DATABASE_URL"
)]
async fn suspending_a_workspace_on_one_node_refuses_its_grandchild_on_the_other_within_a_second() {
    require_postgres();
    let store = Arc::new(StoreLocation::new(Backend::Postgres).await);
    // A long cache TTL: only the announcement can make node 2 forget.
    let one = TestApp::spawn_on(store.clone(), |c| c.cache_ttl = Duration::from_secs(3600)).await;
    let two = TestApp::spawn_on(store, |c| c.cache_ttl = Duration::from_secs(3600)).await;
    let a = one.admin().to_owned();
    // A → B → C; node 2 verifies (and caches) C's admin token.
    let (b_id, b) = crate::workspaces::child_of(&one, &a, "b").await;
    let (_, c) = crate::workspaces::child_of(&two, &b, "c").await;
    for _ in 0..3 {
        assert_eq!(two.me(&c).await.status, StatusCode::OK);
    }
    let r = one
        .post(
            &format!("/api/v1/workspaces/{b_id}/suspend"),
            &a,
            "manage:workspaces",
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let refused = crate::helpers::eventually(Duration::from_secs(1), || async {
        two.me(&c).await.status == StatusCode::UNAUTHORIZED
    })
    .await;
    assert!(
        refused,
        "node 2 still accepts C's token 1 s after B's suspension"
    );
    let r = two.get("/api/v1/workspaces", &c, "read:workspaces").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    // Node 2 answers a refusal from its cache too: it keeps refusing.
    assert_eq!(two.me(&c).await.status, StatusCode::UNAUTHORIZED);
    let r = one
        .post(
            &format!("/api/v1/workspaces/{b_id}/activate"),
            &a,
            "manage:workspaces",
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let restored = crate::helpers::eventually(Duration::from_secs(1), || async {
        two.me(&c).await.status == StatusCode::OK
    })
    .await;
    assert!(
        restored,
        "node 2 still refuses C's token 1 s after B's activation"
    );
    one.stop().await;
    two.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(datastack_test_postgres),
    ignore = "needs PostgreSQL: set DATASTACK_TEST_DATABASE_URL"
)]
async fn oauth_tokens_revoked_or_of_a_deleted_client_are_refused_by_the_other_node_within_a_second()
{
    let store = Arc::new(StoreLocation::new(Backend::Postgres).await);
    let a = TestApp::spawn_on(store.clone(), |c| c.cache_ttl = Duration::from_secs(3600)).await;
    let b = TestApp::spawn_on(store, |c| c.cache_ttl = Duration::from_secs(3600)).await;
    let admin = a.admin().to_owned();
    let sp = a
        .post(
            "/api/v1/service-principals",
            &admin,
            "manage:users",
            json!({"name": "svc", "role": "viewer"}),
        )
        .await;
    let client = a
        .post(
            "/api/v1/oauth/clients",
            &admin,
            "manage:oauth-clients",
            json!({"name": "svc", "ownerId": sp.body["id"], "scopes": ["read:users"]}),
        )
        .await;
    assert_eq!(client.status, StatusCode::CREATED, "{}", client.text);
    let id = client.body["clientId"].as_str().expect("id").to_owned();
    let secret = client.body["clientSecret"]
        .as_str()
        .expect("secret")
        .to_owned();
    let token = |node: &TestApp, secret: &str| {
        let req = node
            .http
            .post(format!("{}/oauth2/token", node.base))
            .basic_auth(&id, Some(secret))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials");
        async move {
            let r = req.send().await.expect("token");
            assert_eq!(r.status(), StatusCode::OK);
            r.json::<serde_json::Value>().await.expect("json")["access_token"]
                .as_str()
                .expect("token")
                .to_owned()
        }
    };
    // Revoked through node A (RFC 7009), while node B has it cached.
    let first = token(&a, &secret).await;
    for _ in 0..3 {
        assert_eq!(b.me(&first).await.status, StatusCode::OK);
    }
    let r = a
        .http
        .post(format!("{}/oauth2/revoke", a.base))
        .basic_auth(&id, Some(&secret))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={first}"))
        .send()
        .await
        .expect("revoke");
    assert_eq!(r.status(), StatusCode::OK);
    refused_within_a_second(&b, first).await;

    // A secret rotated through node A without overlap: node B, which authenticated the
    // client with it, refuses it within a second.
    let rotated = a
        .post(
            &format!("/api/v1/oauth/clients/{id}/rotate-secret"),
            &admin,
            "manage:oauth-clients",
            json!({}),
        )
        .await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.text);
    let started = Instant::now();
    loop {
        let r = b
            .http
            .post(format!("{}/oauth2/token", b.base))
            .basic_auth(&id, Some(&secret))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials")
            .send()
            .await
            .expect("token");
        if r.status() == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "node B still accepts the old secret after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let secret = rotated.body["clientSecret"]
        .as_str()
        .expect("secret")
        .to_owned();

    // Every token of a client deleted through node A, issued by node B and cached there.
    let second = token(&b, &secret).await;
    assert_eq!(b.me(&second).await.status, StatusCode::OK);
    let r = a
        .delete(
            &format!("/api/v1/oauth/clients/{id}"),
            &admin,
            "manage:oauth-clients",
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    refused_within_a_second(&b, second).await;
    a.stop().await;
    b.stop().await;
}

/// Waits until `node` refuses `token` (401), failing after one second.
async fn refused_within_a_second(node: &TestApp, token: String) {
    let started = Instant::now();
    loop {
        if node.me(&token).await.status == StatusCode::UNAUTHORIZED {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "node B still accepts the token after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(datastack_test_postgres),
    ignore = "needs PostgreSQL: set DATASTACK_TEST_DATABASE_URL"
)]
async fn a_refresh_token_reused_on_one_node_revokes_its_family_on_the_other_within_a_second() {
    let store = Arc::new(StoreLocation::new(Backend::Postgres).await);
    let setup = |c: &mut datastack_server::config::Config| {
        c.cache_ttl = Duration::from_secs(3600);
        c.oauth_refresh_grace = Duration::ZERO;
    };
    let a = TestApp::spawn_on(store.clone(), setup).await;
    let b = TestApp::spawn_on(store, setup).await;
    let admin = a.admin().to_owned();
    let client = a
        .post(
            "/api/v1/oauth/clients",
            &admin,
            "manage:oauth-clients",
            json!({"name": "cli", "type": "public", "scopes": ["read:users"],
                   "grantTypes": ["urn:ietf:params:oauth:grant-type:device_code", "refresh_token"]}),
        )
        .await;
    assert_eq!(client.status, StatusCode::CREATED, "{}", client.text);
    let id = client.body["clientId"].as_str().expect("id").to_owned();
    let form = |node: &TestApp, path: &str, pairs: Vec<(&str, String)>| {
        let req = node.http.post(format!("{}{path}", node.base)).form(&pairs);
        async move {
            req.send()
                .await
                .expect("answer")
                .json::<serde_json::Value>()
                .await
                .expect("json")
        }
    };
    // The device asks node A; the user approves on node A; the device polls node B.
    let asked = form(
        &a,
        "/oauth2/device_authorization",
        vec![("client_id", id.clone())],
    )
    .await;
    let approved = a
        .post(
            "/api/v1/oauth/device/approve",
            &admin,
            "manage:tokens",
            json!({"userCode": asked["user_code"]}),
        )
        .await;
    assert_eq!(approved.status, StatusCode::OK, "{}", approved.text);
    let first = form(
        &b,
        "/oauth2/token",
        vec![
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:device_code".into(),
            ),
            (
                "device_code",
                asked["device_code"].as_str().expect("code").into(),
            ),
            ("client_id", id.clone()),
        ],
    )
    .await;
    let refresh = |node: &TestApp, token: String| {
        form(
            node,
            "/oauth2/token",
            vec![
                ("grant_type", "refresh_token".into()),
                ("refresh_token", token),
                ("client_id", id.clone()),
            ],
        )
    };
    let stolen = first["refresh_token"].as_str().expect("refresh").to_owned();
    // Node B rotates it and caches the new access token.
    let second = refresh(&b, stolen.clone()).await;
    let access = second["access_token"].as_str().expect("access").to_owned();
    for _ in 0..3 {
        assert_eq!(b.me(&access).await.status, StatusCode::OK);
    }
    // The used token replayed through node A: the family is revoked, and node B refuses
    // the access token it had cached within a second.
    let replay = refresh(&a, stolen).await;
    assert_eq!(replay["error"], "invalid_grant", "{replay}");
    refused_within_a_second(&b, access).await;
    a.stop().await;
    b.stop().await;
}
