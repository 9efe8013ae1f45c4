//! Real nginx (the Debian package) in front of datastack's forward-auth and a test
//! upstream, configured as docs/forward-auth.md shows: `auth_request` asks `/auth/verify`,
//! and the identity headers datastack answers with are passed to the upstream.

use std::process::Stdio;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::edge::upstream;
use crate::helpers::{Backend, StoreLocation, TestApp};

fn nginx_binary() -> Option<std::path::PathBuf> {
    ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

struct Nginx {
    child: tokio::process::Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Nginx {
    async fn start(
        binary: &std::path::Path,
        datastack: &str,
        upstream: std::net::SocketAddr,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let d = dir.path().display();
        // The example the docs ship, with this test's addresses and nginx's scratch paths.
        let conf = example_with(&[
            ("server 127.0.0.1:8080;", format!("server {datastack};")),
            ("server 127.0.0.1:9001;", format!("server {upstream};")),
            (
                "listen 127.0.0.1:8000;",
                format!("listen 127.0.0.1:{port};"),
            ),
            (
                "http {",
                format!(
                    "http {{\n    access_log off;\n    client_body_temp_path {d}/body;\n    proxy_temp_path {d}/proxy;\n    fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;"
                ),
            ),
        ]);
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).expect("write nginx.conf");
        let child = tokio::process::Command::new(binary)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&path)
            .arg("-g")
            .arg(format!(
                "daemon off; master_process off; pid {d}/nginx.pid;"
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("nginx starts");
        let up = crate::helpers::eventually(Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        let nginx = Self { child, port, dir };
        assert!(up, "nginx did not start: {}", nginx.log());
        nginx
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

/// The example of docs/forward-auth.md, `docs/examples/nginx.conf`.
const EXAMPLE: &str = include_str!("../../../../docs/examples/nginx.conf");

/// The example with each `(from, to)` replaced; each `from` must occur exactly once.
fn example_with(replacements: &[(&str, String)]) -> String {
    let mut conf = EXAMPLE.to_owned();
    for (from, to) in replacements {
        assert_eq!(conf.matches(from).count(), 1, "{from} in the example");
        conf = conf.replacen(from, to, 1);
    }
    conf
}

#[test]
fn the_docs_show_the_example_that_is_tested() {
    let docs = include_str!("../../../../docs/forward-auth.md");
    // The configuration itself, from `events` on, verbatim in the page.
    let config = &EXAMPLE[EXAMPLE.find("worker_processes").expect("the directives")..];
    assert!(
        docs.contains(config),
        "docs/forward-auth.md must show docs/examples/nginx.conf verbatim"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request_in_front_of_an_upstream() {
    let Some(binary) = nginx_binary() else {
        if std::env::var_os("CI").is_some() {
            panic!("nginx is required in CI (.ci/run installs the Debian package)");
        }
        eprintln!("nginx is not installed: skipping (apt-get install nginx, or run .ci/run)");
        return;
    };
    let store = std::sync::Arc::new(StoreLocation::new(Backend::Sqlite).await);
    // nginx is the trusted proxy: its X-Forwarded-For names the client.
    let app = TestApp::spawn_on(store, |c| {
        c.trusted_proxies = vec!["127.0.0.1/32".parse().expect("net")];
    })
    .await;
    let admin = app.admin().to_owned();
    let r = app
        .post(
            "/api/v1/gateway/routes",
            &admin,
            "manage:gateway",
            json!({"pathPrefix": "/v1/clusters", "resource": "clusters"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let up = upstream().await;
    let mut nginx = Nginx::start(&binary, app.base.trim_start_matches("http://"), up).await;
    let front = format!("http://127.0.0.1:{}", nginx.port);
    let http = reqwest::Client::new();
    let me = app.me(&admin).await;
    let admin_id = me.body["principal"]["id"].as_str().expect("id").to_owned();

    // Allowed: the upstream gets datastack's identity, not the client's spoof or token.
    let r = http
        .get(format!("{front}/v1/clusters/c-1?x=1"))
        .bearer_auth(&admin)
        .header("x-datastack-principal", "usr_spoofed")
        .send()
        .await
        .expect("through nginx");
    assert_eq!(r.status(), StatusCode::OK, "{}", nginx.log());
    let seen: Value = r.json().await.expect("json");
    assert_eq!(seen["path"], "/v1/clusters/c-1");
    assert_eq!(seen["headers"]["x-datastack-principal"], admin_id.as_str());
    assert_eq!(seen["headers"]["x-datastack-scopes"], "all-apis");
    assert!(seen["headers"].get("authorization").is_none());
    let assertion = seen["headers"]["x-datastack-assertion"]
        .as_str()
        .expect("assertion");
    assert_eq!(assertion.split('.').count(), 3, "a JWT");

    // Refused: no credential (401), a read-only token writing (403), a revoked token (401).
    let r = http
        .get(format!("{front}/v1/clusters"))
        .send()
        .await
        .expect("anon");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        r.headers().get("www-authenticate").is_some(),
        "nginx passes the challenge on"
    );
    let body: Value = r.json().await.expect("the example answers JSON");
    assert_eq!(body["error"]["code"], "UNAUTHORIZED");
    let (reader, reader_id) = app
        .create_token(&admin, json!({"label": "r", "scopes": ["read:clusters"]}))
        .await;
    let r = http
        .get(format!("{front}/v1/clusters"))
        .bearer_auth(&reader)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::OK);
    let r = http
        .post(format!("{front}/v1/clusters"))
        .bearer_auth(&reader)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = http
        .get(format!("{front}/v1/other"))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("other");
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "no route covers the path"
    );
    let del = app
        .delete(
            &format!("/api/v1/auth/tokens/{reader_id}"),
            &admin,
            "manage:tokens",
        )
        .await;
    assert_eq!(del.status, StatusCode::NO_CONTENT);
    let r = http
        .get(format!("{front}/v1/clusters"))
        .bearer_auth(&reader)
        .send()
        .await
        .expect("get");
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "revocation is effective at once"
    );

    // An API key is charged per decision; past its spend limit nginx answers 402.
    let r = app
        .post(
            "/api/v1/gateway/routes",
            &admin,
            "manage:gateway",
            json!({"pathPrefix": "/v1/jobs", "resource": "jobs", "pricePerRequest": 1}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let key = crate::api_keys::create_key(
        &app,
        &admin,
        json!({"name": "metered", "scopes": ["read:jobs"], "spendLimit": {"units": 2, "period": "total"}}),
    )
    .await;
    let key = key["key"].as_str().expect("key").to_owned();
    for expected in [StatusCode::OK, StatusCode::OK, StatusCode::PAYMENT_REQUIRED] {
        let r = http
            .get(format!("{front}/v1/jobs/j-1"))
            .bearer_auth(&key)
            .send()
            .await
            .expect("jobs");
        assert_eq!(r.status(), expected, "{}", nginx.log());
        if expected == StatusCode::PAYMENT_REQUIRED {
            let body: Value = r.json().await.expect("json");
            assert_eq!(body["error"]["code"], "SPEND_LIMIT_EXCEEDED");
        }
    }
    // nginx logs every status of auth_request other than 2xx, 401 and 403 at `error`
    // (docs/forward-auth.md says so, and how to quiet it).
    assert!(
        nginx.log().contains("auth request unexpected status: 402"),
        "{}",
        nginx.log()
    );

    // The decisions are in the audit log, from the client's address as nginx forwarded it.
    let mut found = false;
    for _ in 0..100 {
        let events = app
            .get(
                "/api/v1/audit/events?action=forward_auth.verify&limit=50",
                &admin,
                "read:audit",
            )
            .await;
        let items = events.body["items"].as_array().cloned().unwrap_or_default();
        if items
            .iter()
            .any(|e| e["status"] == 403 && e["resourceType"] == "clusters")
            && items
                .iter()
                .any(|e| e["status"] == 200 && e["sourceIp"] == "127.0.0.1")
        {
            found = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(found, "forward-auth decisions are audited");
    let _ = nginx.child.start_kill();
    let _ = nginx.child.wait().await;
    app.stop().await;
}
