//! Hostile traffic at the connection level: clients that send nothing, dribble their
//! headers, hold keep-alive connections, or send malformed bodies; handlers and statements
//! that wait too long; a shutdown with a request that never finishes.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::edge::upstream;
use crate::helpers::{Backend, StoreLocation, TestApp, on_both_stores};

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .expect("connect")
}

/// Reads (and discards) until the server closes the connection; how long that took, or
/// `None` if it stayed open for `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(
            tokio::time::Instant::from_std(started + within),
            stream.read(&mut buf),
        )
        .await
        {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// Reads one response: its status code and its body (by `content-length`).
async fn read_response(stream: &mut TcpStream) -> (u16, String) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte))
            .await
            .expect("an answer in time")
            .expect("read");
        assert!(n > 0, "closed before a response: {head:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut body))
        .await
        .expect("the body in time")
        .expect("read the body");
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// An upstream that announces each request on `arrived`, then answers after 3 s with the
/// path it saw.
async fn announcing_upstream(arrived: tokio::sync::mpsc::Sender<()>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let arrived = arrived.clone();
        async move {
            let _ = arrived.send(()).await;
            tokio::time::sleep(Duration::from_secs(3)).await;
            axum::Json(json!({ "path": uri.path() }))
        }
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_line_sent_too_slowly_is_cut_off_at_the_header_timeout() {
    let store = std::sync::Arc::new(StoreLocation::new(Backend::Sqlite).await);
    let app = TestApp::spawn_on(store, |c| {
        c.connections.header_read_timeout = Duration::from_millis(400);
        c.connections.idle_timeout = Duration::from_secs(30);
    })
    .await;

    // Half a request line, then a byte every 100 ms: never done in time.
    let mut slow = connect(&app).await;
    slow.write_all(b"GET /heal").await.expect("write");
    let (mut reader, mut writer) = slow.into_split();
    let dribble = tokio::spawn(async move {
        for b in b"thz HTTP/1.1\r\nHost: test\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if writer.write_all(&[*b]).await.is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    let elapsed = started.elapsed();
    assert!(closed.is_ok(), "a dribbling client was never cut off");
    assert!(
        elapsed >= Duration::from_millis(300),
        "closed before the header timeout: {elapsed:?}"
    );
    dribble.abort();

    // The same request at a normal pace, even in pieces, is answered.
    let mut ok = connect(&app).await;
    ok.write_all(b"GET /heal").await.expect("write");
    tokio::time::sleep(Duration::from_millis(100)).await;
    ok.write_all(b"thz HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .expect("write");
    let (status, body) = read_response(&mut ok).await;
    assert_eq!(status, 200, "{body}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let store = std::sync::Arc::new(StoreLocation::new(Backend::Sqlite).await);
    let app = TestApp::spawn_on(store, |c| {
        c.connections.idle_timeout = Duration::from_millis(400);
        c.connections.header_read_timeout = Duration::from_secs(30);
    })
    .await;

    // A connection that never sends a byte.
    let mut silent = connect(&app).await;
    let closed = closed_within(&mut silent, Duration::from_secs(5))
        .await
        .expect("a silent connection is closed");
    assert!(closed >= Duration::from_millis(300), "{closed:?}");

    // A keep-alive connection, idle after its first response.
    let mut kept = connect(&app).await;
    kept.write_all(HEALTHZ).await.expect("write");
    let (status, body) = read_response(&mut kept).await;
    assert_eq!(status, 200);
    let health: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(health["status"], "ok", "{body}");
    let closed = closed_within(&mut kept, Duration::from_secs(5))
        .await
        .expect("an idle keep-alive connection is closed");
    assert!(closed >= Duration::from_millis(300), "{closed:?}");

    // A connection in use is kept: requests every 50 ms for well over the idle timeout
    // are all answered on it (a wide margin under the timeout for a loaded machine).
    let mut busy = connect(&app).await;
    let started = Instant::now();
    let mut answered = 0;
    while started.elapsed() < Duration::from_millis(1200) {
        busy.write_all(HEALTHZ)
            .await
            .expect("the connection is still open");
        let (status, _) = read_response(&mut busy).await;
        assert_eq!(status, 200);
        answered += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(answered >= 5, "{answered}");
    app.stop().await;
}

/// An API call whose handler waits on a store lock longer than the request timeout gets
/// 503 `UNAVAILABLE` in the error shape, changes nothing, and works once the lock is gone;
/// the gateway's proxied requests are not under this deadline.
async fn a_handler_over_the_request_timeout_is_answered_503(backend: Backend) {
    let store = std::sync::Arc::new(StoreLocation::new(backend).await);
    let app = TestApp::spawn_on(store, |c| {
        c.connections.request_timeout = Duration::from_millis(500);
        // The lock timeout must not answer first.
        c.connections.database_lock_timeout = Duration::from_secs(30);
    })
    .await;
    let admin = app.admin().to_owned();
    let create = json!({"label": "under-lock", "scopes": ["read:jobs"]});
    let lock = app.store().lock_audit_writes().await;
    let started = Instant::now();
    let r = app
        .post(
            "/api/v1/auth/tokens",
            &admin,
            "manage:tokens",
            create.clone(),
        )
        .await;
    let elapsed = started.elapsed();
    lock.release().await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    assert_eq!(r.code(), "UNAVAILABLE");
    assert_eq!(
        r.body["error"]["message"],
        "the request did not complete within 500 ms; retry later"
    );
    assert!(
        r.body["error"]["requestId"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    let list = app.get("/api/v1/auth/tokens", &admin, "read:tokens").await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    assert!(
        !list.text.contains("under-lock"),
        "the timed-out request changed nothing: {}",
        list.text
    );
    let r = app
        .post("/api/v1/auth/tokens", &admin, "manage:tokens", create)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);

    // A proxied request slower than the request timeout is not cut by it.
    let up = upstream().await;
    let route = app
        .post(
            "/api/v1/gateway/routes",
            &admin,
            "manage:gateway",
            json!({"pathPrefix": "/v1/slowjobs", "upstream": format!("http://{up}"),
                   "resource": "jobs", "timeoutMs": 10000}),
        )
        .await;
    assert_eq!(route.status, StatusCode::CREATED, "{}", route.text);
    let r = app
        .call(
            reqwest::Method::GET,
            "/v1/slowjobs/x/slow",
            Some(&admin),
            None,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["path"], "/v1/slowjobs/x/slow");
    app.stop().await;
}

/// On PostgreSQL, a statement waiting on a lock fails at `database_lock_timeout_ms`, or,
/// with the lock timeout off, at `database_statement_timeout_ms`, with 503 `UNAVAILABLE`
/// instead of hanging, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_lock_and_statement_timeouts_answer_503_instead_of_hanging() {
    if crate::helpers::postgres_url().is_none() {
        eprintln!("DATASTACK_TEST_DATABASE_URL is not set: nothing to run against");
        return;
    }
    let store = std::sync::Arc::new(StoreLocation::new(Backend::Postgres).await);
    let settings = [
        (Duration::from_millis(300), Duration::from_secs(60)),
        (Duration::ZERO, Duration::from_millis(300)),
    ];
    let mut admin_token: Option<String> = None;
    for (i, (lock_timeout, statement_timeout)) in settings.into_iter().enumerate() {
        let app = TestApp::spawn_on(store.clone(), |c| {
            c.connections.database_lock_timeout = lock_timeout;
            c.connections.database_statement_timeout = statement_timeout;
            c.connections.request_timeout = Duration::from_secs(30);
        })
        .await;
        // The first start printed the admin token; the restart prints none.
        let admin = admin_token
            .get_or_insert_with(|| app.admin().to_owned())
            .clone();
        let label = format!("locked-out-{i}");
        let lock = app.store().lock_audit_writes().await;
        let started = Instant::now();
        let r = app
            .post(
                "/api/v1/auth/tokens",
                &admin,
                "manage:tokens",
                json!({"label": label, "scopes": ["read:jobs"]}),
            )
            .await;
        let elapsed = started.elapsed();
        lock.release().await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
        assert_eq!(r.code(), "UNAVAILABLE");
        assert_eq!(
            r.body["error"]["message"],
            "the service is unavailable; retry later"
        );
        assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
        let r = app
            .post(
                "/api/v1/auth/tokens",
                &admin,
                "manage:tokens",
                json!({"label": format!("after-the-lock-{i}"), "scopes": ["read:jobs"]}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        let list = app.get("/api/v1/auth/tokens", &admin, "read:tokens").await;
        assert!(!list.text.contains(&label), "{}", list.text);
        app.stop().await;
    }
}

/// A graceful shutdown lets a request that finishes in time finish, and ends within the
/// drain deadline when one never does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_drains_within_its_deadline() {
    async fn start(drain: Duration, arrived: tokio::sync::mpsc::Sender<()>) -> (TestApp, String) {
        let store = std::sync::Arc::new(StoreLocation::new(Backend::Sqlite).await);
        let app = TestApp::spawn_on(store, |c| {
            c.connections.shutdown_drain_timeout = drain;
        })
        .await;
        let up = announcing_upstream(arrived).await;
        let route = app
            .post(
                "/api/v1/gateway/routes",
                app.admin(),
                "manage:gateway",
                json!({"pathPrefix": "/v1/drain", "upstream": format!("http://{up}"),
                       "resource": "jobs", "timeoutMs": 60000}),
            )
            .await;
        assert_eq!(route.status, StatusCode::CREATED, "{}", route.text);
        let admin = app.admin().to_owned();
        (app, admin)
    }

    // The upstream takes 3 s; the deadline is 300 ms: the shutdown does not wait.
    let (tx, mut arrived) = tokio::sync::mpsc::channel(4);
    let (app, admin) = start(Duration::from_millis(300), tx).await;
    let mut stream = connect(&app).await;
    stream
        .write_all(
            format!(
                "GET /v1/drain/slow HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {admin}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .expect("write");
    // The request is in flight (the upstream has it) before the stop.
    arrived
        .recv()
        .await
        .expect("the upstream receives the request");
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), app.stop())
        .await
        .expect("the shutdown ends");
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(2500),
        "the drain waited for the request: {took:?}"
    );
    assert!(
        closed_within(&mut stream, Duration::from_secs(2))
            .await
            .is_some(),
        "the unfinished connection is dropped"
    );

    // With a longer deadline, the same request finishes and is answered.
    let (tx, mut arrived) = tokio::sync::mpsc::channel(4);
    let (app, admin) = start(Duration::from_secs(10), tx).await;
    let mut stream = connect(&app).await;
    stream
        .write_all(
            format!(
                "GET /v1/drain/slow HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {admin}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .expect("write");
    arrived
        .recv()
        .await
        .expect("the upstream receives the request");
    let stopping = tokio::spawn(app.stop());
    let (status, body) = read_response(&mut stream).await;
    assert_eq!(status, 200, "{body}");
    let seen: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(seen["path"], "/v1/drain/slow");
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("the shutdown ends")
        .expect("the shutdown task");
}

/// A request body with broken chunked framing is the client's fault: 400
/// `INVALID_REQUEST`, not 502 `UPSTREAM_UNAVAILABLE`; a well-formed one is proxied.
async fn a_malformed_chunked_body_through_the_gateway_is_a_400(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.admin().to_owned();
    let up = upstream().await;
    let route = app
        .post(
            "/api/v1/gateway/routes",
            &admin,
            "manage:gateway",
            json!({"pathPrefix": "/v1/chunks", "upstream": format!("http://{up}"),
                   "resource": "jobs", "timeoutMs": 5000}),
        )
        .await;
    assert_eq!(route.status, StatusCode::CREATED, "{}", route.text);
    let head = format!(
        "POST /v1/chunks/in HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {admin}\r\n\
         Content-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
    );

    // Well-formed: proxied, the upstream saw all 11 bytes.
    let mut stream = connect(&app).await;
    stream
        .write_all(format!("{head}5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let (status, body) = read_response(&mut stream).await;
    assert_eq!(status, 200, "{body}");
    let seen: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(seen["bodyLength"], 11);

    // Malformed: a chunk size that is not hexadecimal, after a good chunk.
    let mut stream = connect(&app).await;
    stream
        .write_all(format!("{head}5\r\nhello\r\nzz\r\nnot a chunk\r\n0\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let (status, body) = read_response(&mut stream).await;
    assert_eq!(status, 400, "{body}");
    let error: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(error["error"]["code"], "INVALID_REQUEST", "{body}");
    assert_eq!(
        error["error"]["message"],
        "the request body is malformed, incomplete or stalled"
    );
    let metrics = app
        .http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains(
            "datastack_gateway_upstream_responses_total{outcome=\"client_body_error\"} 1"
        ),
        "{metrics}"
    );
    app.stop().await;
}

/// At the connection cap, the connection that waited longest without a request makes room
/// for a new one, so silent connections cannot lock clients out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_cap_the_longest_idle_connection_makes_room() {
    let store = std::sync::Arc::new(StoreLocation::new(Backend::Sqlite).await);
    let app = TestApp::spawn_on(store, |c| {
        c.connections.max_client_connections = Some(4);
        // Only the cap may close these.
        c.connections.idle_timeout = Duration::from_secs(60);
    })
    .await;
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(connect(&app).await);
    }
    for _ in 0..3 {
        let mut fresh = connect(&app).await;
        let started = Instant::now();
        fresh.write_all(HEALTHZ).await.expect("write");
        let (status, body) = read_response(&mut fresh).await;
        assert_eq!(status, 200, "{body}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }
    let mut closed = 0;
    for s in &mut silent {
        if closed_within(s, Duration::from_millis(500)).await.is_some() {
            closed += 1;
        }
    }
    assert!(closed >= 1, "no silent connection made room");
    let metrics = app
        .http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("datastack_http_connections_closed_by_server_total{reason=\"evicted\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("datastack_http_accept_paused_total{reason=\"at_capacity\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("datastack_http_connections_open "),
        "{metrics}"
    );
    app.stop().await;
}

/// At the cap, a connection whose request is in progress is never the one closed to make
/// room: the idle one is, and the request in progress is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_with_a_request_in_progress_is_never_evicted() {
    let store = std::sync::Arc::new(StoreLocation::new(Backend::Sqlite).await);
    let app = TestApp::spawn_on(store, |c| {
        c.connections.max_client_connections = Some(2);
        c.connections.idle_timeout = Duration::from_secs(60);
    })
    .await;
    let admin = app.admin().to_owned();
    let (tx, mut arrived) = tokio::sync::mpsc::channel(4);
    let up = announcing_upstream(tx).await;
    let route = app
        .post(
            "/api/v1/gateway/routes",
            &admin,
            "manage:gateway",
            json!({"pathPrefix": "/v1/busy", "upstream": format!("http://{up}"),
                   "resource": "jobs", "timeoutMs": 30000}),
        )
        .await;
    assert_eq!(route.status, StatusCode::CREATED, "{}", route.text);

    // The busy connection opens first, so it is the oldest; its request is in flight.
    let mut busy = connect(&app).await;
    busy.write_all(
        format!("GET /v1/busy/x HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {admin}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .expect("write");
    arrived
        .recv()
        .await
        .expect("the upstream receives the request");
    let mut idle = connect(&app).await;
    // Fills the cap; the next connection needs room.
    let mut fresh = connect(&app).await;
    fresh.write_all(HEALTHZ).await.expect("write");
    let (status, _) = read_response(&mut fresh).await;
    assert_eq!(status, 200);
    assert!(
        closed_within(&mut idle, Duration::from_secs(2))
            .await
            .is_some(),
        "the idle connection made room"
    );
    let (status, body) = read_response(&mut busy).await;
    assert_eq!(status, 200, "{body}");
    let seen: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(seen["path"], "/v1/busy/x");
    app.stop().await;
}

/// A proxied body that stops sending is cut off after the body idle timeout, in both
/// directions: a stalled request body gets 400, a stalled response body ends the client's
/// connection and the upstream's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_proxied_bodies_are_cut_off() {
    let store = std::sync::Arc::new(StoreLocation::new(Backend::Sqlite).await);
    let app = TestApp::spawn_on(store, |c| {
        c.connections.gateway_body_idle_timeout = Duration::from_millis(400);
    })
    .await;
    let admin = app.admin().to_owned();
    let echo = upstream().await;
    // An upstream that answers the head and 5 of 100 body bytes, then goes silent; it
    // reports when its connection is closed.
    let stalling = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let stalling_addr = stalling.local_addr().expect("addr");
    let (closed_tx, mut upstream_closed) = tokio::sync::mpsc::channel::<()>(1);
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = stalling.accept().await {
            let closed_tx = closed_tx.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if conn.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let _ = conn
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello")
                    .await;
                let mut rest = [0u8; 64];
                while conn.read(&mut rest).await.unwrap_or(0) > 0 {}
                let _ = closed_tx.send(()).await;
            });
        }
    });
    for (prefix, up) in [("/v1/echo", echo), ("/v1/stall", stalling_addr)] {
        let r = app
            .post(
                "/api/v1/gateway/routes",
                &admin,
                "manage:gateway",
                json!({"pathPrefix": prefix, "upstream": format!("http://{up}"),
                       "resource": "jobs", "timeoutMs": 30000}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    }

    // A request body that promises 100 bytes and sends 10.
    let mut stream = connect(&app).await;
    let started = Instant::now();
    stream
        .write_all(
            format!(
                "POST /v1/echo/in HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {admin}\r\n\
                 Content-Length: 100\r\n\r\n0123456789"
            )
            .as_bytes(),
        )
        .await
        .expect("write");
    let (status, body) = read_response(&mut stream).await;
    assert_eq!(status, 400, "{body}");
    let error: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(error["error"]["code"], "INVALID_REQUEST", "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // A response body that stops after 5 of 100 bytes.
    let mut stream = connect(&app).await;
    stream
        .write_all(
            format!("GET /v1/stall/x HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {admin}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("write");
    let mut received = Vec::new();
    let mut buf = [0u8; 1024];
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stalled response was never cut off");
    let received = String::from_utf8_lossy(&received);
    assert!(received.starts_with("HTTP/1.1 200"), "{received}");
    assert!(
        received.ends_with("hello"),
        "only what the upstream sent: {received}"
    );
    tokio::time::timeout(Duration::from_secs(5), upstream_closed.recv())
        .await
        .expect("the upstream connection is dropped, not kept");
    app.stop().await;
}

on_both_stores!(
    a_handler_over_the_request_timeout_is_answered_503,
    a_malformed_chunked_body_through_the_gateway_is_a_400
);
