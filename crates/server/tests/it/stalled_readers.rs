//! A client that asks for a large response and never reads it: the connection (and the
//! upstream connection behind it) is closed once no byte could be written for the body
//! idle timeout, so such clients cannot hold the connection cap for ever.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{Backend, StoreLocation, TestApp, eventually};

/// An upstream that answers every request with a 256 MiB body as fast as it can, and
/// reports when a connection ends.
async fn flooding_upstream(ended: tokio::sync::mpsc::Sender<()>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let ended = ended.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if conn.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let total: usize = 256 << 20;
                let _ = conn
                    .write_all(
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n").as_bytes(),
                    )
                    .await;
                let chunk = vec![b'x'; 64 << 10];
                let mut sent = 0;
                while sent < total {
                    if conn.write_all(&chunk).await.is_err() {
                        break;
                    }
                    sent += chunk.len();
                }
                let _ = ended.send(()).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_response_is_disconnected() {
    let store = std::sync::Arc::new(StoreLocation::new(Backend::Sqlite).await);
    let app = TestApp::spawn_on(store, |c| {
        c.connections.gateway_body_idle_timeout = Duration::from_millis(500);
    })
    .await;
    let admin = app.admin().to_owned();
    let (ended_tx, mut upstream_ended) = tokio::sync::mpsc::channel::<()>(1);
    let up = flooding_upstream(ended_tx).await;
    let r = app
        .post(
            "/api/v1/gateway/routes",
            &admin,
            "manage:gateway",
            json!({"pathPrefix": "/v1/big", "upstream": format!("http://{up}"),
                   "resource": "jobs", "timeoutMs": 30000}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);

    const STALLED: &str =
        "datastack_http_connections_closed_by_server_total{reason=\"send_stalled\"}";
    assert_eq!(app.metric(STALLED).await, 0.0);
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    stream
        .write_all(
            format!(
                "GET /v1/big/file HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {admin}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .expect("send");
    // The client reads nothing. The server gives up on it and the upstream behind it.
    assert!(
        eventually(Duration::from_secs(20), || async {
            app.metric(STALLED).await >= 1.0
        })
        .await,
        "a client that never reads keeps its connection"
    );
    tokio::time::timeout(Duration::from_secs(20), upstream_ended.recv())
        .await
        .expect("the upstream connection is closed too")
        .expect("ended");
    // What the client can still read ends: the server closed the connection.
    let mut sink = vec![0u8; 1 << 20];
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the connection was not closed");
    // Other clients are served meanwhile.
    assert_eq!(app.me(&admin).await.status, StatusCode::OK);
    app.stop().await;
}
