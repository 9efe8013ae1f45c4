//! The gateway's header and path rules through HTTP: spoofed identity, forwarding and
//! override headers never reach a real WSGI upstream (Python's `wsgiref`), forward-auth
//! refuses ambiguous descriptions of the original request, and every spelling of a longer
//! route's path is refused on the gateway and on forward-auth.

use std::process::Stdio;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::edge::audit_until;
use crate::helpers::{Backend, TestApp, on_both_stores};

/// A WSGI application on `wsgiref.simple_server` that answers with the `HTTP_*` variables
/// of its environ as JSON, and prints its port once it listens.
const WSGI_APP: &str = r#"
import json
from wsgiref.simple_server import make_server, WSGIRequestHandler

class Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass

def app(environ, start_response):
    body = json.dumps({k: v for k, v in environ.items() if k.startswith("HTTP_")}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]

server = make_server("127.0.0.1", 0, app, handler_class=Quiet)
print(server.server_port, flush=True)
server.serve_forever()
"#;

/// Starts the WSGI upstream; `None` (after saying so) when python3 is missing outside CI.
async fn wsgi_upstream() -> Option<(tokio::process::Child, u16)> {
    let spawned = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(WSGI_APP)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("skipped: python3 cannot be started ({e}); CI installs it");
            return None;
        }
        Err(e) => panic!("python3 is required in CI: {e}"),
    };
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(20),
        BufReader::new(stdout).read_line(&mut line),
    )
    .await
    .expect("the WSGI server prints its port in time")
    .expect("read the port");
    let port = line.trim().parse().expect("a port number");
    Some((child, port))
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

/// What the WSGI application saw for a GET through the gateway with spoofed headers.
async fn environ_through(app: &TestApp, path: &str, token: &str) -> Value {
    let r = app
        .http
        .get(format!("{}{path}", app.base))
        .bearer_auth(token)
        .header("X_Datastack_Principal", "usr_attacker")
        .header("X_Datastack_Scopes", "all-apis")
        .header("X-Datastack_Workspace", "ws_attacker")
        .header("X_Forwarded_For", "203.0.113.66")
        .header("X-Forwarded-Proto", "https")
        .header("X_Real_IP", "203.0.113.66")
        .header("True-Client-IP", "203.0.113.66")
        .header("X-Original-URL", "/v1/admin")
        .header("X-Rewrite-URL", "/v1/admin")
        .header("X-HTTP-Method-Override", "DELETE")
        .header("X-HTTP-Method", "DELETE")
        .header("X-Method-Override", "DELETE")
        .header("Content_Length", "5")
        .header("X_Custom", "kept")
        .header("X-Plain", "kept")
        .send()
        .await
        .expect("gateway");
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.expect("the WSGI environ as JSON")
}

async fn spoofed_headers_never_reach_a_wsgi_upstream(backend: Backend) {
    let Some((_python, port)) = wsgi_upstream().await else {
        return;
    };
    let app = TestApp::spawn(backend).await;
    let admin = app.admin().to_owned();
    let upstream = format!("http://127.0.0.1:{port}");
    create_route(
        &app,
        json!({"pathPrefix": "/v1/strict", "upstream": upstream, "resource": "jobs"}),
    )
    .await;
    let lax = create_route(
        &app,
        json!({"pathPrefix": "/v1/lax", "upstream": upstream, "resource": "jobs",
            "allowUnderscoreHeaders": true, "allowOverrideHeaders": true}),
    )
    .await;
    assert_eq!(lax["allowUnderscoreHeaders"], true);
    assert_eq!(lax["allowOverrideHeaders"], true);
    // The opt-outs are stored with the route.
    let id = lax["id"].as_str().expect("id");
    let got = app
        .get(
            &format!("/api/v1/gateway/routes/{id}"),
            &admin,
            "read:gateway",
        )
        .await;
    assert_eq!(got.body["allowUnderscoreHeaders"], true, "{}", got.text);
    assert_eq!(got.body["allowOverrideHeaders"], true);
    let list = app
        .get("/api/v1/gateway/routes", &admin, "read:gateway")
        .await;
    let strict = list.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|r| r["pathPrefix"] == "/v1/strict")
        .expect("the strict route")
        .clone();
    assert_eq!(strict["allowUnderscoreHeaders"], false);
    assert_eq!(strict["allowOverrideHeaders"], false);
    let (token, token_id) = app
        .create_token(&admin, json!({"label": "r", "scopes": ["read:jobs"]}))
        .await;
    let principal = app.me(&token).await.body["principal"]["id"]
        .as_str()
        .expect("principal")
        .to_owned();

    let env = environ_through(&app, "/v1/strict/x", &token).await;
    // Exactly the gateway's identity: nothing of the client's merged into it.
    assert_eq!(
        env["HTTP_X_DATASTACK_PRINCIPAL"],
        principal.as_str(),
        "{env}"
    );
    assert_eq!(env["HTTP_X_DATASTACK_SCOPES"], "read:jobs", "{env}");
    assert_eq!(env["HTTP_X_DATASTACK_CREDENTIAL"], token_id.as_str());
    assert!(
        !env["HTTP_X_DATASTACK_WORKSPACE"]
            .as_str()
            .expect("workspace")
            .contains("attacker"),
        "{env}"
    );
    // The gateway's own forwarding headers only.
    assert_eq!(env["HTTP_X_FORWARDED_FOR"], "127.0.0.1", "{env}");
    for absent in [
        "HTTP_X_FORWARDED_PROTO",
        "HTTP_X_REAL_IP",
        "HTTP_TRUE_CLIENT_IP",
        "HTTP_X_ORIGINAL_URL",
        "HTTP_X_REWRITE_URL",
        "HTTP_X_HTTP_METHOD_OVERRIDE",
        "HTTP_X_HTTP_METHOD",
        "HTTP_X_METHOD_OVERRIDE",
        "HTTP_CONTENT_LENGTH",
        "HTTP_X_CUSTOM",
    ] {
        assert!(env.get(absent).is_none(), "{absent} in {env}");
    }
    assert_eq!(env["HTTP_X_PLAIN"], "kept");

    // With the route's opt-outs, harmless underscore and override headers pass; identity,
    // forwarding and framing headers still do not.
    let env = environ_through(&app, "/v1/lax/x", &token).await;
    assert_eq!(env["HTTP_X_CUSTOM"], "kept", "{env}");
    assert_eq!(env["HTTP_X_ORIGINAL_URL"], "/v1/admin", "{env}");
    assert_eq!(env["HTTP_X_HTTP_METHOD_OVERRIDE"], "DELETE", "{env}");
    assert_eq!(
        env["HTTP_X_DATASTACK_PRINCIPAL"],
        principal.as_str(),
        "{env}"
    );
    assert_eq!(env["HTTP_X_DATASTACK_SCOPES"], "read:jobs", "{env}");
    assert_eq!(env["HTTP_X_FORWARDED_FOR"], "127.0.0.1", "{env}");
    for absent in [
        "HTTP_X_REAL_IP",
        "HTTP_TRUE_CLIENT_IP",
        "HTTP_CONTENT_LENGTH",
    ] {
        assert!(env.get(absent).is_none(), "{absent} in {env}");
    }
    app.stop().await;
}

/// A forward-auth request with extra headers, answered as (status, error code, body).
async fn verify_with(
    app: &TestApp,
    token: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, String, String) {
    let mut req = app
        .http
        .request(Method::GET, format!("{}/auth/verify", app.base))
        .bearer_auth(token);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.expect("verify");
    let status = r.status();
    let text = r.text().await.expect("body");
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let code = body["error"]["code"].as_str().unwrap_or("").to_owned();
    (status, code, text)
}

async fn forward_auth_refuses_ambiguous_descriptions(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.admin().to_owned();
    create_route(&app, json!({"pathPrefix": "/v1/jobs", "resource": "jobs"})).await;
    let (reader, _) = app
        .create_token(&admin, json!({"label": "r", "scopes": ["read:jobs"]}))
        .await;
    let ok = verify_with(
        &app,
        &reader,
        &[
            ("x-original-uri", "/v1/jobs/1"),
            ("x-original-method", "get"),
        ],
    )
    .await;
    assert_eq!(ok.0, StatusCode::OK, "{}", ok.2);
    // Repeated descriptions: a GET before a DELETE was once decided as a read.
    let repeated: [&[(&str, &str)]; 4] = [
        &[
            ("x-original-uri", "/v1/jobs/1"),
            ("x-original-method", "GET"),
            ("x-original-method", "DELETE"),
        ],
        &[
            ("x-original-uri", "/v1/jobs/1"),
            ("x-original-uri", "/v1/admin"),
            ("x-original-method", "GET"),
        ],
        &[
            ("x-forwarded-uri", "/v1/jobs/1"),
            ("x-forwarded-method", "GET"),
            ("x-forwarded-method", "DELETE"),
        ],
        &[
            ("x-forwarded-uri", "/v1/jobs/1"),
            ("x-forwarded-uri", "/v1/jobs/2"),
            ("x-forwarded-method", "GET"),
        ],
    ];
    for headers in repeated {
        let (status, code, text) = verify_with(&app, &reader, headers).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{headers:?}: {text}");
        assert_eq!(code, "INVALID_REQUEST");
        assert!(text.contains("may each appear once"), "{text}");
    }
    // Only known method tokens; the refusal never repeats the value.
    let long = "A".repeat(60_000);
    let secret = format!("ds_tok_{}", "q".repeat(40));
    for method in ["FOO", "GETX", long.as_str(), secret.as_str()] {
        for (uri, method_header) in [
            ("x-original-uri", "x-original-method"),
            ("x-forwarded-uri", "x-forwarded-method"),
        ] {
            let (status, code, text) = verify_with(
                &app,
                &reader,
                &[(uri, "/v1/jobs/1"), (method_header, method)],
            )
            .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
            assert_eq!(code, "INVALID_REQUEST");
            assert!(text.contains("not a known HTTP method"), "{text}");
            assert!(
                !text
                    .to_ascii_uppercase()
                    .contains(&method.to_ascii_uppercase())
            );
        }
    }
    // Envoy names the method with its own request line.
    let r = app
        .http
        .request(
            Method::from_bytes(b"BREW").expect("method"),
            format!("{}/auth/verify/v1/jobs/1", app.base),
        )
        .bearer_auth(&reader)
        .send()
        .await
        .expect("verify");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // Nothing of the refused values reached the audit log.
    let items = audit_until(
        &app,
        "/api/v1/audit/events?action=forward_auth.verify&limit=200",
        |items| items.iter().filter(|e| e["status"] == 400).count() >= 13,
    )
    .await;
    let all = serde_json::to_string(&items).expect("json");
    assert!(!all.contains(&long), "the long method is not stored");
    assert!(
        !all.to_ascii_uppercase()
            .contains(&secret.to_ascii_uppercase())
    );
    assert!(!all.contains("BREW"));
    app.stop().await;
}

/// Sends a raw request line (so no client library normalises the path) and returns the
/// status and the body.
async fn raw(app: &TestApp, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("an answer in time")
        .expect("read");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// Spellings of `/v1/admin` an upstream could serve as that route's resource.
const SPELLINGS: &[&str] = &[
    "/v1/admin.",
    "/v1/admin%20",
    "/v1/admin%09",
    "/v1/admin~",
    "/v1/admin./keys",
    "/v1/ADMIN/keys",
    "/v1/%c0%aeadmin",
    "/v1/%c1%a1dmin",
    "/v1/admin%252e",
    "/v1/%2561dmin",
    "/v1/x/%252e%252e/admin",
    "/v1/adm%C4%B1n",
    "/v1/ADM%C4%B0N",
    "/v1/%EF%BD%81dmin",
    "/v1/%D0%B0dmin",
    "/v1/admin::$DATA",
];

async fn path_spellings_keep_the_longer_routes_scope(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.admin().to_owned();
    let up = crate::edge::upstream().await;
    create_route(
        &app,
        json!({"pathPrefix": "/v1", "upstream": format!("http://{up}"), "resource": "jobs"}),
    )
    .await;
    create_route(
        &app,
        json!({"pathPrefix": "/v1/admin", "upstream": format!("http://{up}"), "resource": "secrets"}),
    )
    .await;
    let (reader, _) = app
        .create_token(&admin, json!({"label": "r", "scopes": ["read:jobs"]}))
        .await;
    let gateway = |path: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {reader}\r\nConnection: close\r\n\r\n"
        )
    };
    let forward_auth = |path: &str| {
        format!(
            "GET /auth/verify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {reader}\r\nX-Original-URI: {path}\r\nX-Original-Method: GET\r\nConnection: close\r\n\r\n"
        )
    };
    // Envoy names the original path after /auth/verify.
    let envoy = |path: &str| {
        format!(
            "GET /auth/verify{path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {reader}\r\nConnection: close\r\n\r\n"
        )
    };
    // The exact spellings: the shorter route lets the reader in, the longer does not.
    for request in [
        gateway("/v1/jobs"),
        forward_auth("/v1/jobs"),
        envoy("/v1/jobs"),
    ] {
        let (status, text) = raw(&app, &request).await;
        assert_eq!(status, 200, "{text}");
    }
    for request in [
        gateway("/v1/admin/keys"),
        forward_auth("/v1/admin/keys"),
        envoy("/v1/admin/keys"),
    ] {
        let (status, text) = raw(&app, &request).await;
        assert_eq!(status, 403, "{text}");
        assert!(
            text.contains("\"requiredScope\":\"read:secrets\""),
            "{text}"
        );
    }
    // Non-ASCII names that fold onto nothing longer still pass.
    for request in [gateway("/v1/%C3%BCber"), forward_auth("/v1/%C3%BCber")] {
        let (status, text) = raw(&app, &request).await;
        assert_eq!(status, 200, "{text}");
    }
    for path in SPELLINGS {
        for request in [gateway(path), forward_auth(path), envoy(path)] {
            let (status, text) = raw(&app, &request).await;
            assert_eq!(status, 400, "{path}: {text}");
            assert!(text.contains("INVALID_REQUEST"), "{path}: {text}");
            assert!(!text.contains("\"x-upstream\""), "{path}: {text}");
        }
    }
    // Raw (unencoded) UTF-8 in the request line is read the same way.
    for path in ["/v1/admın", "/v1/ａdmin", "/v1/ADMİN"] {
        let (status, text) = raw(&app, &gateway(path)).await;
        assert_eq!(status, 400, "{path}: {text}");
        assert!(text.contains("INVALID_REQUEST"), "{path}: {text}");
    }
    app.stop().await;
}

on_both_stores!(
    spoofed_headers_never_reach_a_wsgi_upstream,
    forward_auth_refuses_ambiguous_descriptions,
    path_spellings_keep_the_longer_routes_scope,
);
