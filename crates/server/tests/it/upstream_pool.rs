//! The gateway's upstream connections: kept alive and reused, and a connection the
//! upstream closed while it was idle never turns into an error for the next request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::edge::send;
use crate::helpers::{Backend, TestApp, on_both_stores};

/// How the test upstream treats a connection after answering.
#[derive(Clone, Copy)]
enum After {
    /// Keeps it open for the next request.
    KeepAlive,
    /// Closes it without saying so (as an upstream whose idle timeout expired).
    SilentClose,
    /// Answers with `Connection: close` and closes it.
    AnnouncedClose,
    /// Answers the first request, then reads the second and closes without answering
    /// (its idle timeout ran out as the request arrived).
    DropSecond,
    /// The same, but the connection is reset (what a peer whose socket is already closed
    /// answers to the bytes of a request).
    ResetSecond,
    /// Answers as an HTTP/1.0 server, and closes.
    Http10,
}

/// A minimal HTTP/1.1 upstream that counts the connections it accepts. It reads each
/// request head (no bodies in these tests) and answers `200 ok`.
async fn counting_upstream(after: After) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let mut served = 0;
                loop {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let end = buf
                        .windows(4)
                        .position(|w| w == b"\r\n\r\n")
                        .expect("a head")
                        + 4;
                    buf.drain(..end);
                    // A body, if any, is in `content-length` bytes; these tests send only
                    // small ones, read with the head or right after it.
                    if matches!(after, After::DropSecond) && served == 1 {
                        return;
                    }
                    if matches!(after, After::ResetSecond) && served == 1 {
                        // Closing with a zero linger time sends a reset instead of a FIN.
                        let _ = stream.set_zero_linger();
                        return;
                    }
                    served += 1;
                    let close = match after {
                        After::AnnouncedClose => "connection: close\r\n",
                        _ => "",
                    };
                    let version = match after {
                        After::Http10 => "HTTP/1.0",
                        _ => "HTTP/1.1",
                    };
                    let reply = format!("{version} 200 OK\r\ncontent-length: 2\r\n{close}\r\nok");
                    if stream.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                    if matches!(
                        after,
                        After::SilentClose | After::AnnouncedClose | After::Http10
                    ) {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

async fn route_to(app: &TestApp, prefix: &str, upstream: SocketAddr) {
    let r = app
        .post(
            "/api/v1/gateway/routes",
            app.admin(),
            "manage:gateway",
            json!({"pathPrefix": prefix, "upstream": format!("http://{upstream}"), "resource": "jobs"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
}

/// Against an upstream that fails (`after`) the second request of a connection: the GET
/// is answered on a new connection, the POST gets 502 and is never sent twice.
async fn only_idempotent_requests_are_resent(app: &TestApp, after: After, prefix: &str) {
    let admin = app.admin().to_owned();
    let (upstream, accepted) = counting_upstream(after).await;
    route_to(app, prefix, upstream).await;
    let r = send(app, Method::GET, &format!("{prefix}/a"), Some(&admin)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = send(app, Method::GET, &format!("{prefix}/b"), Some(&admin)).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "the GET is sent again ({prefix}): {}",
        r.text
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    let r = app
        .http
        .post(format!("{}{prefix}/c", app.base))
        .bearer_auth(&admin)
        .body("{}")
        .send()
        .await
        .expect("post");
    assert_eq!(
        r.status(),
        StatusCode::BAD_GATEWAY,
        "a POST is never sent twice ({prefix})"
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

async fn upstream_connections_are_reused_and_stale_ones_retried(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.admin().to_owned();
    let (kept, kept_accepted) = counting_upstream(After::KeepAlive).await;
    let (silent, silent_accepted) = counting_upstream(After::SilentClose).await;
    let (announced, announced_accepted) = counting_upstream(After::AnnouncedClose).await;
    route_to(&app, "/v1/kept", kept).await;
    route_to(&app, "/v1/silent", silent).await;
    route_to(&app, "/v1/announced", announced).await;

    // One request at a time: one connection carries them all.
    for i in 0..20 {
        let r = send(&app, Method::GET, &format!("/v1/kept/{i}"), Some(&admin)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.text, "ok");
    }
    assert_eq!(kept_accepted.load(Ordering::SeqCst), 1);

    // The upstream closes each connection after its answer. Whether the close has
    // arrived when the next request comes (found at checkout) or not (the request cannot
    // be written, and goes again on a new connection), every request is answered.
    for i in 0..10 {
        let r = send(&app, Method::GET, &format!("/v1/silent/{i}"), Some(&admin)).await;
        assert_eq!(r.status, StatusCode::OK, "request {i}: {}", r.text);
        if i % 2 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(silent_accepted.load(Ordering::SeqCst), 10);

    // An upstream that says it closes: its connection is never reused.
    for i in 0..5 {
        let r = send(
            &app,
            Method::GET,
            &format!("/v1/announced/{i}"),
            Some(&admin),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    }
    assert_eq!(announced_accepted.load(Ordering::SeqCst), 5);

    // The upstream closes a reused connection after reading the request, before
    // answering: a GET (idempotent, no body) is sent again on a new connection; a POST
    // with a body is not, and the client learns the upstream failed. The same when the
    // connection is reset instead of closed.
    only_idempotent_requests_are_resent(&app, After::DropSecond, "/v1/dropping").await;
    only_idempotent_requests_are_resent(&app, After::ResetSecond, "/v1/resetting").await;
    app.stop().await;
}

on_both_stores!(
    upstream_connections_are_reused_and_stale_ones_retried,
    an_http_1_0_upstream_is_answered_to_the_client_in_http_1_1,
);

/// The gateway speaks HTTP/1.1 to its clients whatever version the upstream answered in.
async fn an_http_1_0_upstream_is_answered_to_the_client_in_http_1_1(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (upstream, _) = counting_upstream(After::Http10).await;
    route_to(&app, "/v1/old", upstream).await;
    let r = app
        .http
        .get(format!("{}/v1/old/x", app.base))
        .bearer_auth(app.admin())
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    assert_eq!(r.text().await.expect("body"), "ok");
    app.stop().await;
}
