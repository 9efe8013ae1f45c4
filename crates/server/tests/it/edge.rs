//! Edge enforcement through HTTP: the gateway proxying to a real upstream with signed
//! identity headers, route management, and forward-auth for nginx/Traefik/Envoy. IP
//! access lists and rate limits are in `limits.rs`.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{Backend, StoreLocation, TestApp, on_both_stores};

/// A test upstream: echoes what it received as JSON; `/slow` sleeps 3 s; `/ws` accepts a
/// protocol upgrade and echoes bytes.
pub async fn upstream() -> SocketAddr {
    async fn handle(mut req: Request) -> Response {
        let path = req.uri().path().to_owned();
        if path.ends_with("/slow") {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        if path.ends_with("/ws") {
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(io) = upgrade.await {
                    let mut io = hyper_util::rt::TokioIo::new(io);
                    let mut buf = [0u8; 64];
                    while let Ok(n) = io.read(&mut buf).await {
                        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            });
            return Response::builder()
                .status(101)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .body(Body::empty())
                .expect("response");
        }
        let headers: serde_json::Map<String, Value> = req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    Value::String(v.to_str().unwrap_or("").to_owned()),
                )
            })
            .collect();
        let method = req.method().to_string();
        let query = req.uri().query().unwrap_or("").to_owned();
        let body = axum::body::to_bytes(req.into_body(), usize::MAX)
            .await
            .unwrap_or_default();
        (
            [
                ("x-upstream", "yes"),
                ("connection", "x-secret-hop"),
                ("x-secret-hop", "1"),
            ],
            axum::Json(json!({
                "method": method,
                "path": path,
                "query": query,
                "headers": headers,
                "bodyLength": body.len(),
            })),
        )
            .into_response()
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let app = axum::Router::new().fallback(handle);
        let _ = axum::serve(listener, app).await;
    });
    addr
}

async fn create_route(app: &TestApp, body: Value) -> Value {
    let r = app
        .post(
            "/api/v1/gateway/routes",
            app.admin(),
            "manage:gateway",
            body,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    r.body
}

pub async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    token: Option<&str>,
) -> crate::helpers::Reply {
    app.call(method, path, token, None, None).await
}

/// Checks an assertion against the published JWKS, for audience `aud`.
async fn verify_assertion(app: &TestApp, assertion: &str, aud: &str) -> Value {
    crate::helpers::verify_with_jwks(app, assertion, aud)
        .await
        .1
}

async fn gateway_proxies_with_signed_identity(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.admin().to_owned();
    let up = upstream().await;
    let route = create_route(
        &app,
        json!({"pathPrefix": "/v1/clusters", "upstream": format!("http://{up}"), "resource": "clusters",
               "timeoutMs": 1000, "pricePerRequest": 1}),
    )
    .await;
    assert_eq!(route["source"], "api");
    assert!(route["id"].as_str().expect("id").starts_with("rt_"));
    let me = app.me(&admin).await;
    let admin_id = me.body["principal"]["id"]
        .as_str()
        .expect("principal id")
        .to_owned();

    // Allowed: proxied with identity headers; spoofed copies and Authorization removed.
    let r = app
        .http
        .get(format!("{}/v1/clusters/c-1?view=full", app.base))
        .bearer_auth(&admin)
        .header("x-datastack-principal", "usr_spoofed")
        .header("x-datastack-assertion", "forged")
        .header("x-request-id", "gw-test-1")
        .send()
        .await
        .expect("proxied");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-upstream"], "yes");
    assert!(
        r.headers().get("x-secret-hop").is_none(),
        "a header named in Connection is hop-by-hop"
    );
    assert!(r.headers().get("ratelimit").is_some());
    let seen: Value = r.json().await.expect("json");
    let h = &seen["headers"];
    assert_eq!(seen["path"], "/v1/clusters/c-1");
    assert_eq!(seen["query"], "view=full");
    assert_eq!(h["x-datastack-principal"], admin_id.as_str());
    assert!(
        h["x-datastack-credential"]
            .as_str()
            .expect("cred")
            .starts_with("tok_")
    );
    assert!(
        h["x-datastack-workspace"]
            .as_str()
            .expect("ws")
            .starts_with("ws_")
    );
    assert_eq!(h["x-datastack-scopes"], "all-apis");
    assert_eq!(h["x-datastack-request-id"], "gw-test-1");
    assert_eq!(h["x-datastack-retention-consent"], "false");
    assert!(
        h.get("authorization").is_none(),
        "the client's credential is not forwarded"
    );
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    let claims = verify_assertion(
        &app,
        h["x-datastack-assertion"].as_str().expect("assertion"),
        "/v1/clusters",
    )
    .await;
    assert_eq!(claims["sub"], admin_id.as_str());
    assert_eq!(claims["htm"], "GET");
    assert_eq!(claims["cred"], h["x-datastack-credential"]);
    // Route binding (the default): no per-request claims, so it can be reused.
    assert!(claims.get("rid").is_none() && claims.get("htu").is_none());
    // A tampered assertion does not verify.
    let mut tampered = h["x-datastack-assertion"].as_str().expect("a").to_owned();
    let flip = if tampered.ends_with('A') { 'B' } else { 'A' };
    tampered.pop();
    tampered.push(flip);
    let jwks: jsonwebtoken::jwk::JwkSet = app
        .http
        .get(format!("{}/.well-known/jwks.json", app.base))
        .send()
        .await
        .expect("jwks")
        .json()
        .await
        .expect("json");
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwks.keys[0]).expect("key");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_audience(&["/v1/clusters"]);
    assert!(jsonwebtoken::decode::<Value>(&tampered, &key, &validation).is_err());

    // Scopes by method: a read-only token may GET but not POST.
    let (reader, _) = app
        .create_token(
            &admin,
            json!({"label": "reader", "scopes": ["read:clusters"]}),
        )
        .await;
    assert_eq!(
        send(&app, Method::GET, "/v1/clusters", Some(&reader))
            .await
            .status,
        StatusCode::OK
    );
    let denied = send(&app, Method::POST, "/v1/clusters", Some(&reader)).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN, "{}", denied.text);
    assert_eq!(denied.body["error"]["requiredScope"], "manage:clusters");
    let (writer, _) = app
        .create_token(
            &admin,
            json!({"label": "writer", "scopes": ["manage:clusters"]}),
        )
        .await;
    let body = "x".repeat(200_000);
    let r = app
        .http
        .post(format!("{}/v1/clusters", app.base))
        .bearer_auth(&writer)
        .body(body)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::OK);
    let seen: Value = r.json().await.expect("json");
    assert_eq!(
        seen["bodyLength"], 200_000,
        "the body is streamed through whole"
    );
    // A token for another resource is refused.
    let (jobs, _) = app
        .create_token(&admin, json!({"label": "jobs", "scopes": ["manage:jobs"]}))
        .await;
    assert_eq!(
        send(&app, Method::GET, "/v1/clusters", Some(&jobs))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    // No credential, a wrong one, an unknown path.
    let anon = send(&app, Method::GET, "/v1/clusters", None).await;
    assert_eq!(anon.status, StatusCode::UNAUTHORIZED);
    assert_eq!(anon.code(), "UNAUTHORIZED");
    let wrong = send(
        &app,
        Method::GET,
        "/v1/clusters",
        Some("dapi_not_a_real_token"),
    )
    .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        send(&app, Method::GET, "/v1/clustersx", Some(&admin))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        send(&app, Method::GET, "/elsewhere", Some(&admin))
            .await
            .status,
        StatusCode::NOT_FOUND
    );

    // Upstream failures: too slow → 504, nothing listening → 503, both UPSTREAM_UNAVAILABLE.
    let slow = send(&app, Method::GET, "/v1/clusters/slow", Some(&admin)).await;
    assert_eq!(slow.status, StatusCode::GATEWAY_TIMEOUT, "{}", slow.text);
    assert_eq!(slow.code(), "UPSTREAM_UNAVAILABLE");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead = closed.local_addr().expect("addr");
    drop(closed);
    create_route(&app, json!({"pathPrefix": "/v1/jobs", "upstream": format!("http://{dead}"), "resource": "jobs", "stripPrefix": true})).await;
    let down = send(&app, Method::GET, "/v1/jobs/1", Some(&admin)).await;
    assert_eq!(
        down.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        down.text
    );
    assert_eq!(down.code(), "UPSTREAM_UNAVAILABLE");

    // stripPrefix and forwardAuthorization.
    create_route(
        &app,
        json!({"pathPrefix": "/v1/sql", "upstream": format!("http://{up}/base"), "resource": "sql",
        "stripPrefix": true, "forwardAuthorization": true}),
    )
    .await;
    let r = send(&app, Method::GET, "/v1/sql/warehouses/1", Some(&admin)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["path"], "/base/warehouses/1");
    assert!(
        r.body["headers"]["authorization"]
            .as_str()
            .is_some_and(|a| a.starts_with("Bearer "))
    );

    // Oversized body (declared) → 413 before anything is forwarded.
    // (Raw: the server answers before the body is sent, and a client still sending would
    // see the connection close.)
    let raw = raw_request(
        &app,
        &format!("POST /v1/clusters HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\nContent-Length: 11534336\r\n\r\n"),
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 413"), "{raw}");

    // A dot-segment path (sent raw; HTTP clients normalise it) is refused.
    let raw = raw_request(
        &app,
        &format!("GET /v1/clusters/%2e%2e/secrets HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");

    // WebSocket upgrade is tunnelled.
    let mut stream = TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .expect("connect");
    stream
        .write_all(format!("GET /v1/clusters/ws HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream
        .write_all(b"ping-through-tunnel")
        .await
        .expect("write");
    let mut buf = [0u8; 19];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut buf))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(&buf, b"ping-through-tunnel");

    // Only WebSocket is tunnelled: an h2c upgrade would carry requests the edge never sees.
    let raw = raw_request(
        &app,
        &format!("GET /v1/clusters/ws HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"),
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
    // Path parameters (`;`) are refused: servers that drop them would see another path.
    let raw = raw_request(
        &app,
        &format!("GET /v1/clusters/..;/secrets HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
    // A tunnel closes when its credential is revoked.
    let (ws_token, ws_token_id) = app.create_token(&admin, json!({"label": "ws"})).await;
    let mut stream = TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .expect("connect");
    stream
        .write_all(format!("GET /v1/clusters/ws HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ws_token}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream.write_all(b"hello").await.expect("write");
    let mut five = [0u8; 5];
    stream.read_exact(&mut five).await.expect("echo");
    let revoked = app
        .delete(
            &format!("/api/v1/auth/tokens/{ws_token_id}"),
            &admin,
            "manage:tokens",
        )
        .await;
    assert_eq!(revoked.status, StatusCode::NO_CONTENT);
    let mut rest = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut rest))
        .await
        .expect("the tunnel closes within a second or two of the revocation");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");

    // Every proxied call is in the audit log.
    audit_until(
        &app,
        "/api/v1/audit/events?action=gateway.proxy&limit=200",
        |items| {
            items
                .iter()
                .any(|e| e["status"] == 403 && e["resourceType"] == "clusters")
                && items
                    .iter()
                    .any(|e| e["status"] == 200 && e["resourceId"] == "/v1/clusters")
        },
    )
    .await;
    app.stop().await;
}

/// Polls the audit log until `query` returns entries satisfying `check` (entries of reads
/// and refusals are written in group commits, a moment after the response).
pub async fn audit_until(
    app: &TestApp,
    query: &str,
    check: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let mut items = Vec::new();
    for _ in 0..100 {
        let r = app.get(query, app.admin(), "read:audit").await;
        items = r.body["items"].as_array().cloned().unwrap_or_default();
        if check(&items) {
            return items;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the audit log never showed what {query} should: {items:?}");
}

async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte))
            .await
            .expect("answer in time")
            .expect("read");
        if n == 0 {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

async fn raw_request(app: &TestApp, request: &str) -> String {
    let mut stream = TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    read_head(&mut stream).await
}

async fn route_management_is_validated(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.admin().to_owned();
    for (body, field) in [
        (
            json!({"pathPrefix": "/api/v1/x", "upstream": "http://127.0.0.1:1", "resource": "jobs"}),
            "pathPrefix",
        ),
        (
            json!({"pathPrefix": "v1", "upstream": "http://127.0.0.1:1", "resource": "jobs"}),
            "pathPrefix",
        ),
        (
            json!({"pathPrefix": "/v1/x", "upstream": "ftp://127.0.0.1:1", "resource": "jobs"}),
            "upstream",
        ),
        (
            json!({"pathPrefix": "/v1/x", "upstream": "http://127.0.0.1:1", "resource": "nope"}),
            "resource",
        ),
        (
            json!({"pathPrefix": "/v1/x", "upstream": "http://127.0.0.1:1", "resource": "jobs", "timeoutMs": 0}),
            "timeoutMs",
        ),
        (
            json!({"pathPrefix": "/v1/x", "resource": "jobs", "methodScopes": {"POST": "write:jobs"}}),
            "scope",
        ),
        (
            json!({"pathPrefix": "/v1/x", "resource": "jobs", "surprise": 1}),
            "surprise",
        ),
    ] {
        let r = app
            .post(
                "/api/v1/gateway/routes",
                &admin,
                "manage:gateway",
                body.clone(),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text);
        assert!(
            r.body["error"]["message"]
                .as_str()
                .expect("m")
                .contains(field),
            "{field}: {}",
            r.text
        );
    }
    let list = app
        .get("/api/v1/gateway/routes", &admin, "read:gateway")
        .await;
    assert_eq!(
        list.body["items"].as_array().expect("items").len(),
        0,
        "nothing was created"
    );
    let created = create_route(
        &app,
        json!({"pathPrefix": "/v1/notebooks", "resource": "notebooks",
        "methodScopes": {"post": "read:notebooks"}}),
    )
    .await;
    assert_eq!(created["methodScopes"]["POST"], "read:notebooks");
    assert_eq!(created["timeoutMs"], 30000);
    let dup = app
        .post(
            "/api/v1/gateway/routes",
            &admin,
            "manage:gateway",
            json!({"pathPrefix": "/v1/notebooks/", "resource": "jobs"}),
        )
        .await;
    assert_eq!(dup.status, StatusCode::CONFLICT, "{}", dup.text);
    let id = created["id"].as_str().expect("id");
    // Scope checks: read:gateway cannot create; a reader sees the route.
    let (reader, _) = app
        .create_token(&admin, json!({"label": "r", "scopes": ["read:gateway"]}))
        .await;
    let r = app
        .post(
            "/api/v1/gateway/routes",
            &reader,
            "read:gateway",
            json!({"pathPrefix": "/v1/y", "resource": "jobs"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let got = app
        .get(
            &format!("/api/v1/gateway/routes/{id}"),
            &reader,
            "read:gateway",
        )
        .await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body["pathPrefix"], "/v1/notebooks");
    // A child workspace's admin cannot manage routes (they apply to every workspace).
    let child = app
        .post(
            "/api/v1/workspaces",
            &admin,
            "manage:workspaces",
            json!({"name": "child", "adminEmail": "child@example.com"}),
        )
        .await;
    assert_eq!(child.status, StatusCode::CREATED, "{}", child.text);
    let child_token = child.body["adminToken"].as_str().expect("admin token");
    let r = app
        .post(
            "/api/v1/gateway/routes",
            child_token,
            "manage:gateway",
            json!({"pathPrefix": "/v1/z", "resource": "jobs"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    // Replace and delete.
    let replaced = app
        .call(
            Method::PUT,
            &format!("/api/v1/gateway/routes/{id}"),
            Some(&admin),
            Some("manage:gateway"),
            Some(
                json!({"pathPrefix": "/v1/notebooks", "resource": "notebooks", "timeoutMs": 5000}),
            ),
        )
        .await;
    assert_eq!(replaced.status, StatusCode::OK, "{}", replaced.text);
    assert_eq!(replaced.body["timeoutMs"], 5000);
    let del = app
        .delete(
            &format!("/api/v1/gateway/routes/{id}"),
            &admin,
            "manage:gateway",
        )
        .await;
    assert_eq!(del.status, StatusCode::NO_CONTENT);
    let gone = app
        .get(
            &format!("/api/v1/gateway/routes/{id}"),
            &admin,
            "read:gateway",
        )
        .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    let audit = app
        .get(
            "/api/v1/audit/events?resourceType=gateway-routes",
            &admin,
            "read:audit",
        )
        .await;
    let actions: Vec<&str> = audit.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for a in [
        "gateway_routes.create",
        "gateway_routes.update",
        "gateway_routes.delete",
    ] {
        assert!(actions.contains(&a), "{a} in {actions:?}");
    }
    app.stop().await;
}

async fn forward_auth_decides_for_each_proxy(backend: Backend) {
    let store = std::sync::Arc::new(StoreLocation::new(backend).await);
    // Assertions bound to each request: the path and request id are signed too.
    let app = TestApp::spawn_on(store, |c| {
        c.assertion_binding = datastack_server::edge::signer::Binding::Request;
    })
    .await;
    let admin = app.admin().to_owned();
    create_route(&app, json!({"pathPrefix": "/v1/jobs", "resource": "jobs"})).await;
    let (reader, reader_id) = app
        .create_token(&admin, json!({"label": "r", "scopes": ["read:jobs"]}))
        .await;
    let (writer, _) = app
        .create_token(&admin, json!({"label": "w", "scopes": ["manage:jobs"]}))
        .await;
    let verify = |token: Option<String>,
                  headers: Vec<(&'static str, &'static str)>,
                  method: Method,
                  path: &'static str| {
        let app = &app;
        async move {
            let mut req = app.http.request(method, format!("{}{path}", app.base));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            for (k, v) in headers {
                req = req.header(k, v);
            }
            req.send().await.expect("verify")
        }
    };
    // nginx: X-Original-Method / X-Original-URI.
    let r = verify(
        Some(reader.clone()),
        vec![
            ("x-original-uri", "/v1/jobs/42?x=1"),
            ("x-original-method", "GET"),
        ],
        Method::GET,
        "/auth/verify",
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-datastack-credential"], reader_id.as_str());
    assert_eq!(r.headers()["x-datastack-scopes"], "read:jobs");
    let assertion = r.headers()["x-datastack-assertion"]
        .to_str()
        .expect("a")
        .to_owned();
    let claims = verify_assertion(&app, &assertion, "/v1/jobs").await;
    assert_eq!(claims["htu"], "/v1/jobs/42");
    // Allowed decisions are audited as one entry per credential, route and method each
    // second, with a count.
    for _ in 0..5 {
        let r = verify(
            Some(reader.clone()),
            vec![
                ("x-original-uri", "/v1/jobs/42"),
                ("x-original-method", "GET"),
            ],
            Method::GET,
            "/auth/verify",
        )
        .await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    audit_until(
        &app,
        "/api/v1/audit/events?action=forward_auth.verify&limit=200",
        |items| {
            items.iter().any(|e| {
                e["status"] == 200 && e["detail"]["count"].as_u64().is_some_and(|n| n >= 2)
            })
        },
    )
    .await;
    let r = verify(
        Some(reader.clone()),
        vec![
            ("x-original-uri", "/v1/jobs/42"),
            ("x-original-method", "POST"),
        ],
        Method::GET,
        "/auth/verify",
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"]["requiredScope"], "manage:jobs");
    // Traefik: X-Forwarded-Method / X-Forwarded-Uri.
    let r = verify(
        Some(writer.clone()),
        vec![
            ("x-forwarded-uri", "/v1/jobs/run"),
            ("x-forwarded-method", "POST"),
        ],
        Method::GET,
        "/auth/verify",
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = verify(
        Some(reader.clone()),
        vec![
            ("x-forwarded-uri", "/v1/jobs/run"),
            ("x-forwarded-method", "DELETE"),
        ],
        Method::GET,
        "/auth/verify",
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // Envoy ext_authz: the original method, the original path after /auth/verify.
    let r = verify(
        Some(writer.clone()),
        vec![],
        Method::DELETE,
        "/auth/verify/v1/jobs/42",
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = verify(
        Some(reader.clone()),
        vec![],
        Method::DELETE,
        "/auth/verify/v1/jobs/42",
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // The proxy must name the method: without it the check is refused, not taken as GET.
    let r = verify(
        Some(writer.clone()),
        vec![("x-original-uri", "/v1/jobs/42")],
        Method::GET,
        "/auth/verify",
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // Two sources naming the original request (a client's copy passed through): refused.
    let r = verify(
        Some(writer.clone()),
        vec![
            ("x-original-uri", "/v1/jobs/42"),
            ("x-original-method", "GET"),
            ("x-forwarded-uri", "/v1/other"),
        ],
        Method::GET,
        "/auth/verify",
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // No credential → 401 with WWW-Authenticate; unknown path → 403; no original request → 400.
    let r = verify(
        None,
        vec![("x-original-uri", "/v1/jobs"), ("x-original-method", "GET")],
        Method::GET,
        "/auth/verify",
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers().get("www-authenticate").is_some());
    let r = verify(
        Some(admin.clone()),
        vec![
            ("x-original-uri", "/v1/unknown"),
            ("x-original-method", "GET"),
        ],
        Method::GET,
        "/auth/verify",
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = verify(Some(admin.clone()), vec![], Method::GET, "/auth/verify").await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = verify(
        Some(admin.clone()),
        vec![
            ("x-original-uri", "/v1/jobs/../users"),
            ("x-original-method", "GET"),
        ],
        Method::GET,
        "/auth/verify",
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // The decision follows revocation at once.
    let del = app
        .delete(
            &format!("/api/v1/auth/tokens/{reader_id}"),
            &admin,
            "manage:tokens",
        )
        .await;
    assert_eq!(del.status, StatusCode::NO_CONTENT, "{}", del.text);
    let r = verify(
        Some(reader.clone()),
        vec![
            ("x-original-uri", "/v1/jobs/42"),
            ("x-original-method", "GET"),
        ],
        Method::GET,
        "/auth/verify",
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Decisions are audited.
    audit_until(
        &app,
        "/api/v1/audit/events?action=forward_auth.verify&limit=200",
        |items| {
            items
                .iter()
                .any(|e| e["status"] == 200 && e["resourceType"] == "jobs")
                && items.iter().any(|e| e["status"] == 403)
        },
    )
    .await;
    app.stop().await;
}

async fn configured_routes_are_read_only_and_carry_consent(backend: Backend) {
    let up = upstream().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("datastack.toml");
    std::fs::write(
        &path,
        format!(
            "[[gateway_routes]]\npathPrefix = \"/v1/pipelines\"\nupstream = \"http://{up}\"\nresource = \"pipelines\"\nstripPrefix = true\n"
        ),
    )
    .expect("write");
    let configured = datastack_server::ConfigLayer::from_file(Some(&path))
        .expect("the file parses")
        .build()
        .expect("the routes are valid")
        .gateway_routes;
    let store = std::sync::Arc::new(StoreLocation::new(backend).await);
    let app = TestApp::spawn_on(store, move |c| c.gateway_routes = configured).await;
    let admin = app.admin().to_owned();
    let list = app
        .get("/api/v1/gateway/routes", &admin, "read:gateway")
        .await;
    let items = list.body["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{}", list.text);
    assert_eq!(items[0]["source"], "config");
    assert!(items[0]["id"].is_null());
    // The API cannot take or shadow a configured prefix.
    let r = app
        .post(
            "/api/v1/gateway/routes",
            &admin,
            "manage:gateway",
            json!({"pathPrefix": "/v1/pipelines", "resource": "jobs"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    let r = send(&app, Method::GET, "/v1/pipelines/p-1", Some(&admin)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["path"], "/p-1");
    assert_eq!(r.body["headers"]["x-datastack-retention-consent"], "false");
    // The workspace opts in to data retention: upstreams are told at once.
    let ws = app.me(&admin).await.body["workspace"]["id"]
        .as_str()
        .expect("workspace")
        .to_owned();
    let r = app
        .patch(
            &format!("/api/v1/workspaces/{ws}"),
            &admin,
            "manage:workspaces",
            json!({"settings": {"dataRetentionConsent": true}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["settings"]["dataRetentionConsent"], true);
    let r = send(&app, Method::GET, "/v1/pipelines/p-1", Some(&admin)).await;
    assert_eq!(r.body["headers"]["x-datastack-retention-consent"], "true");
    // A bad route in the file stops the start with the field named.
    std::fs::write(
        &path,
        "[[gateway_routes]]\npathPrefix = \"/api/x\"\nresource = \"jobs\"\n",
    )
    .expect("write");
    let err = datastack_server::ConfigLayer::from_file(Some(&path))
        .expect("parses")
        .build()
        .expect_err("refused");
    assert!(
        err.to_string().contains("gateway_routes[0].pathPrefix"),
        "{err}"
    );
    app.stop().await;
}

on_both_stores!(
    gateway_proxies_with_signed_identity,
    route_management_is_validated,
    forward_auth_decides_for_each_proxy,
    configured_routes_are_read_only_and_carry_consent,
);
