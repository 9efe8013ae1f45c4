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
        let conf = format!(
            r#"
worker_processes 1;
daemon off;
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            auth_request /_datastack_verify;
            auth_request_set $ds_principal $upstream_http_x_datastack_principal;
            auth_request_set $ds_workspace $upstream_http_x_datastack_workspace;
            auth_request_set $ds_scopes $upstream_http_x_datastack_scopes;
            auth_request_set $ds_credential $upstream_http_x_datastack_credential;
            auth_request_set $ds_request_id $upstream_http_x_datastack_request_id;
            auth_request_set $ds_consent $upstream_http_x_datastack_retention_consent;
            auth_request_set $ds_assertion $upstream_http_x_datastack_assertion;
            auth_request_set $ds_status $upstream_status;
            error_page 500 = @datastack_refused;
            proxy_set_header X-Datastack-Principal $ds_principal;
            proxy_set_header X-Datastack-Workspace $ds_workspace;
            proxy_set_header X-Datastack-Scopes $ds_scopes;
            proxy_set_header X-Datastack-Credential $ds_credential;
            proxy_set_header X-Datastack-Request-Id $ds_request_id;
            proxy_set_header X-Datastack-Retention-Consent $ds_consent;
            proxy_set_header X-Datastack-Assertion $ds_assertion;
            proxy_set_header Authorization "";
            proxy_pass http://{upstream};
        }}
        location = /_datastack_verify {{
            internal;
            proxy_pass http://{datastack}/auth/verify;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-URI $request_uri;
            proxy_set_header X-Original-Method $request_method;
            proxy_set_header X-Forwarded-For $remote_addr;
        }}
        location @datastack_refused {{
            if ($ds_status = 429) {{ return 429; }}
            if ($ds_status = 402) {{ return 402; }}
            return 500;
        }}
    }}
}}
"#
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).expect("write nginx.conf");
        let child = tokio::process::Command::new(binary)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&path)
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
    }

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
