//! Workspaces (C1).

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{Backend, StoreLocation, TestApp, on_both_stores};

on_both_stores!(
    child_workspaces_are_isolated_and_visible_to_the_parent,
    a_parent_suspends_a_child_workspace_and_all_its_credentials_stop,
    suspending_a_workspace_refuses_its_whole_subtree_everywhere,
    ancestors_see_and_manage_every_descendant_and_nothing_leaks_upwards,
    workspace_depth_is_limited_and_a_first_admin_token_is_never_broader,
);

/// Creates a workspace with `token` and returns (workspace id, first admin token).
pub async fn child_of(app: &TestApp, token: &str, name: &str) -> (String, String) {
    let r = app
        .post(
            "/api/v1/workspaces",
            token,
            "manage:workspaces",
            json!({"name": name}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    (
        r.body["workspace"]["id"].as_str().expect("id").to_owned(),
        r.body["adminToken"].as_str().expect("token").to_owned(),
    )
}

fn ids(r: &crate::helpers::Reply) -> Vec<String> {
    r.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|w| w["id"].as_str().expect("id").to_owned())
        .collect()
}

/// The status of `token` on the management API, through the gateway and on forward-auth.
async fn everywhere(app: &TestApp, token: &str) -> [StatusCode; 4] {
    let me = app.me(token).await.status;
    let list = app
        .get("/api/v1/workspaces", token, "read:workspaces")
        .await
        .status;
    let gateway = crate::edge::send(app, Method::GET, "/v1/clusters/c-1", Some(token))
        .await
        .status;
    let verify = app
        .http
        .get(format!("{}/auth/verify", app.base))
        .bearer_auth(token)
        .header("x-original-uri", "/v1/clusters/c-1")
        .header("x-original-method", "GET")
        .send()
        .await
        .expect("verify")
        .status();
    [me, list, gateway, verify]
}

/// Opens a WebSocket tunnel through the gateway with `token` and checks that it echoes.
async fn open_tunnel(app: &TestApp, token: &str) -> TcpStream {
    let mut stream = TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .expect("connect");
    stream
        .write_all(format!("GET /v1/clusters/ws HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte))
            .await
            .expect("the response head in time")
            .expect("read");
        assert_eq!(n, 1, "the connection closed before the head ended");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream.write_all(b"hello").await.expect("write");
    let mut five = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut five))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(&five, b"hello");
    stream
}

const ALLOWED: [StatusCode; 4] = [StatusCode::OK; 4];
const REFUSED: [StatusCode; 4] = [StatusCode::UNAUTHORIZED; 4];

async fn suspending_a_workspace_refuses_its_whole_subtree_everywhere(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let a = app.admin().to_owned();
    let up = crate::edge::upstream().await;
    let r = app
        .post(
            "/api/v1/gateway/routes",
            &a,
            "manage:gateway",
            json!({"pathPrefix": "/v1/clusters", "upstream": format!("http://{up}"), "resource": "clusters"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    // A → B → C, and C's admin minted one more token.
    let (b_id, b) = child_of(&app, &a, "b").await;
    let (c_id, c) = child_of(&app, &b, "c").await;
    let (c_more, _) = app.create_token(&c, json!({"label": "more"})).await;
    for token in [&b, &c, &c_more] {
        assert_eq!(everywhere(&app, token).await, ALLOWED);
    }
    // A WebSocket tunnel opened through the gateway with C's token.
    let mut tunnel = open_tunnel(&app, &c).await;
    let r = app
        .post(
            &format!("/api/v1/workspaces/{b_id}/suspend"),
            &a,
            "manage:workspaces",
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status"], "suspended");
    // B and everything below it is refused on the API, the gateway and forward-auth, and
    // C's open tunnel is closed.
    for token in [&b, &c, &c_more] {
        assert_eq!(everywhere(&app, token).await, REFUSED);
    }
    let mut rest = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(2), tunnel.read(&mut rest))
        .await
        .expect("the tunnel closes within a second or two of the suspension");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    let r = app.me(&c).await;
    assert_eq!(r.code(), "UNAUTHORIZED", "{}", r.text);
    assert!(
        r.header("www-authenticate")
            .expect("header")
            .contains("invalid_token")
    );
    // C's admin can create neither users nor workspaces, and nothing was created.
    let r = app
        .post(
            "/api/v1/users",
            &c,
            "manage:users",
            json!({"email": "late@example.com", "name": "late"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    let r = app
        .post(
            "/api/v1/workspaces",
            &c,
            "manage:workspaces",
            json!({"name": "escape"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    let all = app.get("/api/v1/workspaces", &a, "read:workspaces").await;
    assert_eq!(ids(&all).len(), 3, "{}", all.text);
    // Activating C itself does not lift its ancestor's suspension.
    let r = app
        .post(
            &format!("/api/v1/workspaces/{c_id}/activate"),
            &a,
            "manage:workspaces",
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(everywhere(&app, &c).await, REFUSED);
    // The root is unaffected and still sees C, which keeps its own status.
    assert_eq!(everywhere(&app, &a).await, ALLOWED);
    let r = app
        .get(&format!("/api/v1/workspaces/{c_id}"), &a, "read:workspaces")
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status"], "active");
    assert_eq!(r.body["parentId"], b_id.as_str());
    // A suspends C directly too: activating B alone does not restore C.
    let r = app
        .post(
            &format!("/api/v1/workspaces/{c_id}/suspend"),
            &a,
            "manage:workspaces",
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status"], "suspended");
    let r = app
        .post(
            &format!("/api/v1/workspaces/{b_id}/activate"),
            &a,
            "manage:workspaces",
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(everywhere(&app, &b).await, ALLOWED);
    assert_eq!(everywhere(&app, &c).await, REFUSED);
    // B, C's parent, may activate it; then C works again everywhere.
    let r = app
        .post(
            &format!("/api/v1/workspaces/{c_id}/activate"),
            &b,
            "manage:workspaces",
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status"], "active");
    for token in [&b, &c, &c_more] {
        assert_eq!(everywhere(&app, token).await, ALLOWED);
    }
    // The suspension of C by the root is audited in the root's log and in C's own.
    for (viewer, who) in [(&a, "root"), (&c, "c")] {
        let r = app
            .get(
                "/api/v1/audit/events?action=workspaces.suspend&limit=200",
                viewer,
                "read:audit",
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let items = r.body["items"].as_array().expect("items");
        assert!(
            items
                .iter()
                .any(|e| e["resourceId"] == c_id.as_str() && e["status"] == 200),
            "{who}'s log lacks the suspension of C: {}",
            r.text
        );
    }
    app.stop().await;
}

async fn ancestors_see_and_manage_every_descendant_and_nothing_leaks_upwards(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let a = app.admin().to_owned();
    let a_id = app.me(&a).await.body["workspace"]["id"]
        .as_str()
        .expect("ws")
        .to_owned();
    let (b_id, b) = child_of(&app, &a, "b").await;
    let (c_id, c) = child_of(&app, &b, "c").await;
    let (d_id, d) = child_of(&app, &a, "d").await;
    // The root lists everyone, paginated; B lists itself and C; C only itself.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(cur) => format!("/api/v1/workspaces?limit=1&cursor={cur}"),
            None => "/api/v1/workspaces?limit=1".to_owned(),
        };
        let r = app.get(&path, &a, "read:workspaces").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        seen.extend(ids(&r));
        match r.body["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let mut all = vec![a_id.clone(), b_id.clone(), c_id.clone(), d_id.clone()];
    all.sort();
    assert_eq!(seen, all);
    let r = app.get("/api/v1/workspaces", &b, "read:workspaces").await;
    let mut mine = vec![b_id.clone(), c_id.clone()];
    mine.sort();
    assert_eq!(ids(&r), mine);
    let r = app.get("/api/v1/workspaces", &c, "read:workspaces").await;
    assert_eq!(ids(&r), vec![c_id.clone()]);
    // Filters: the children of B; the suspended ones.
    let r = app
        .get(
            &format!("/api/v1/workspaces?parentId={b_id}"),
            &a,
            "read:workspaces",
        )
        .await;
    assert_eq!(ids(&r), vec![c_id.clone()]);
    let r = app
        .get("/api/v1/workspaces?status=suspended", &a, "read:workspaces")
        .await;
    assert!(ids(&r).is_empty(), "{}", r.text);
    let r = app
        .get("/api/v1/workspaces?status=paused", &a, "read:workspaces")
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(r.code(), "INVALID_REQUEST");
    let r = app
        .get("/api/v1/workspaces?parentId=nope", &a, "read:workspaces")
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    // The root gets, renames and suspends its grandchild.
    let r = app
        .get(&format!("/api/v1/workspaces/{c_id}"), &a, "read:workspaces")
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["id"], c_id.as_str());
    let r = app
        .patch(
            &format!("/api/v1/workspaces/{c_id}"),
            &a,
            "manage:workspaces",
            json!({"name": "c-renamed"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["name"], "c-renamed");
    let r = app
        .post(
            &format!("/api/v1/workspaces/{c_id}/suspend"),
            &a,
            "manage:workspaces",
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = app
        .get("/api/v1/workspaces?status=suspended", &a, "read:workspaces")
        .await;
    assert_eq!(ids(&r), vec![c_id.clone()]);
    assert_eq!(app.me(&c).await.status, StatusCode::UNAUTHORIZED);
    // Nothing outside one's subtree exists for a descendant: not an ancestor, not a
    // sibling, not a sibling's child; neither to read nor to act on.
    let (e_id, _) = child_of(&app, &d, "e").await;
    for (token, target) in [
        (&b, &a_id),
        (&b, &d_id),
        (&b, &e_id),
        (&d, &b_id),
        (&d, &c_id),
        (&d, &a_id),
    ] {
        let r = app
            .get(
                &format!("/api/v1/workspaces/{target}"),
                token,
                "read:workspaces",
            )
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
        assert_eq!(r.code(), "NOT_FOUND");
        for action in ["suspend", "activate"] {
            let r = app
                .post(
                    &format!("/api/v1/workspaces/{target}/{action}"),
                    token,
                    "manage:workspaces",
                    json!({}),
                )
                .await;
            assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
        }
        let r = app
            .patch(
                &format!("/api/v1/workspaces/{target}"),
                token,
                "manage:workspaces",
                json!({"name": "taken"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
        let r = app
            .get(
                &format!("/api/v1/workspaces?parentId={target}"),
                token,
                "read:workspaces",
            )
            .await;
        // Only the caller's own workspace (whose parent it already knows) can match.
        let own = if token == &b { &b_id } else { &d_id };
        assert!(ids(&r).iter().all(|id| id == own), "{}", r.text);
    }
    // None of those attempts changed anything.
    let r = app.get("/api/v1/workspaces", &a, "read:workspaces").await;
    let items = r.body["items"].as_array().expect("items");
    assert!(items.iter().all(|w| w["name"] != "taken"), "{}", r.text);
    let suspended: Vec<&Value> = items
        .iter()
        .filter(|w| w["status"] == "suspended")
        .collect();
    assert_eq!(suspended.len(), 1, "{}", r.text);
    assert_eq!(app.me(&a).await.status, StatusCode::OK);
    assert_eq!(app.me(&d).await.status, StatusCode::OK);
    app.stop().await;
}

async fn workspace_depth_is_limited_and_a_first_admin_token_is_never_broader(backend: Backend) {
    let store = std::sync::Arc::new(StoreLocation::new(backend).await);
    let app = TestApp::spawn_on(store, |c| c.workspace_max_depth = 2).await;
    let a = app.admin().to_owned();
    // Depth 1 and 2 are allowed; depth 3 is refused, naming the limit, and not created.
    let (_, b) = child_of(&app, &a, "b").await;
    let (c_id, c) = child_of(&app, &b, "c").await;
    let r = app
        .post(
            "/api/v1/workspaces",
            &c,
            "manage:workspaces",
            json!({"name": "too-deep"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(r.code(), "CONFLICT");
    let message = r.body["error"]["message"].as_str().expect("message");
    assert!(message.contains("workspace_max_depth = 2"), "{message}");
    let r = app
        .get(
            &format!("/api/v1/workspaces?parentId={c_id}"),
            &a,
            "read:workspaces",
        )
        .await;
    assert!(ids(&r).is_empty(), "{}", r.text);
    // An all-apis creator gives the first admin all-apis; a narrow one, only its scopes.
    assert_eq!(
        app.me(&b).await.body["credential"]["scopes"],
        json!(["all-apis"])
    );
    let (narrow, _) = app
        .create_token(
            &a,
            json!({"label": "narrow", "scopes": ["manage:workspaces", "read:users"], "expiresInDays": 7}),
        )
        .await;
    let narrow_expiry = app.me(&narrow).await.body["credential"]["expiresAt"]
        .as_str()
        .expect("the narrow token expires")
        .to_owned();
    let (child, child_admin) = child_of(&app, &narrow, "narrow-child").await;
    let me = app.me(&child_admin).await;
    assert_eq!(me.body["workspace"]["id"], child.as_str());
    assert_eq!(me.body["principal"]["role"], "admin");
    assert_eq!(
        me.body["credential"]["scopes"],
        json!(["read:users", "manage:workspaces"])
    );
    // Nor does it outlive its creator.
    let child_expiry = me.body["credential"]["expiresAt"]
        .as_str()
        .expect("the first admin token expires with its creator");
    let parse = |t: &str| chrono::DateTime::parse_from_rfc3339(t).expect("a time");
    assert!(
        parse(child_expiry) <= parse(&narrow_expiry),
        "{child_expiry} > {narrow_expiry}"
    );
    // An API key cannot create a workspace: the first admin token would shed its limits.
    let key = crate::api_keys::create_key(
        &app,
        &a,
        json!({"name": "ws maker", "scopes": ["manage:workspaces"]}),
    )
    .await;
    let r = app
        .post(
            "/api/v1/workspaces",
            key["key"].as_str().expect("key"),
            "manage:workspaces",
            json!({"name": "from a key"}),
        )
        .await;
    r.assert_error(StatusCode::FORBIDDEN, "FORBIDDEN");
    // The admin role does not widen the token: no users, no tokens beyond its scopes.
    let r = app
        .post(
            "/api/v1/users",
            &child_admin,
            "manage:users",
            json!({"email": "x@example.com", "name": "x"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let r = app
        .post(
            "/api/v1/auth/tokens",
            &child_admin,
            "manage:tokens",
            json!({"label": "wider", "scopes": ["all-apis"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let r = app.get("/api/v1/users", &child_admin, "read:users").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    // Its own children inherit the narrow grant in turn.
    let (_, grandchild_admin) = child_of(&app, &child_admin, "narrow-grandchild").await;
    assert_eq!(
        app.me(&grandchild_admin).await.body["credential"]["scopes"],
        json!(["read:users", "manage:workspaces"])
    );
    app.stop().await;
}

async fn child_workspaces_are_isolated_and_visible_to_the_parent(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.admin().to_owned();
    let root = app.me(&admin).await.body["workspace"]["id"]
        .as_str()
        .expect("ws")
        .to_owned();
    let r = app
        .post("/api/v1/workspaces", &admin, "manage:workspaces", json!({"name": "staging", "adminEmail": "ops@example.com", "settings": {"maxTokenLifetimeDays": 90}}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let child = r.body["workspace"]["id"].as_str().expect("id").to_owned();
    assert_eq!(r.body["workspace"]["parentId"], root.as_str());
    assert_eq!(r.body["admin"]["email"], "ops@example.com");
    let child_admin = r.body["adminToken"]
        .as_str()
        .expect("adminToken")
        .to_owned();
    let me = app.me(&child_admin).await;
    assert_eq!(me.body["workspace"]["id"], child.as_str());
    assert_eq!(me.body["principal"]["role"], "admin");
    assert!(
        me.body["credential"]["expiresAt"].is_string(),
        "the child's policy applies to its first token"
    );
    // The parent sees both; the child sees only itself.
    let list = app
        .get("/api/v1/workspaces", &admin, "read:workspaces")
        .await;
    assert_eq!(list.body["items"].as_array().expect("items").len(), 2);
    let list = app
        .get("/api/v1/workspaces", &child_admin, "read:workspaces")
        .await;
    assert_eq!(list.body["items"].as_array().expect("items").len(), 1);
    assert_eq!(
        app.get(
            &format!("/api/v1/workspaces/{root}"),
            &child_admin,
            "read:workspaces"
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
    // Users are per workspace: the same email may exist in both, and lists do not mix.
    let r = app
        .post(
            "/api/v1/users",
            &child_admin,
            "manage:users",
            json!({"email": "admin@datastack.local", "name": "x"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let users = app.get("/api/v1/users", &child_admin, "read:users").await;
    assert_eq!(users.body["items"].as_array().expect("items").len(), 2);
    let root_users = app.get("/api/v1/users", &admin, "read:users").await;
    assert_eq!(root_users.body["items"].as_array().expect("items").len(), 1);
    // Tokens of one workspace cannot be revoked from another.
    let child_token_id = me.body["credential"]["id"].as_str().expect("id").to_owned();
    let r = app
        .delete(
            &format!("/api/v1/auth/tokens/{child_token_id}"),
            &admin,
            "manage:tokens",
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // Update.
    let r = app
        .patch(
            &format!("/api/v1/workspaces/{child}"),
            &admin,
            "manage:workspaces",
            json!({"name": "staging-eu"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["name"], "staging-eu");
    assert_eq!(r.body["settings"]["maxTokenLifetimeDays"], 90);
    // Cached credentials carry their workspace; a change shows at once.
    assert_eq!(
        app.me(&child_admin).await.body["workspace"]["name"],
        "staging-eu"
    );
    let r = app
        .patch(
            &format!("/api/v1/workspaces/{child}"),
            &admin,
            "manage:workspaces",
            json!({"settings": {"maxTokenLifetimeDays": 0}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    app.stop().await;
}

async fn a_parent_suspends_a_child_workspace_and_all_its_credentials_stop(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.admin().to_owned();
    let root = app.me(&admin).await.body["workspace"]["id"]
        .as_str()
        .expect("ws")
        .to_owned();
    let r = app
        .post(
            "/api/v1/workspaces",
            &admin,
            "manage:workspaces",
            json!({"name": "leaky"}),
        )
        .await;
    let child = r.body["workspace"]["id"].as_str().expect("id").to_owned();
    assert_eq!(r.body["workspace"]["status"], "active");
    let child_admin = r.body["adminToken"].as_str().expect("token").to_owned();
    // The child admin has minted more credentials: they all stop with the workspace.
    let (more, _) = app
        .create_token(&child_admin, json!({"label": "more"}))
        .await;
    assert_eq!(app.me(&more).await.status, StatusCode::OK);
    // A workspace cannot suspend itself, and a child cannot suspend its parent.
    let r = app
        .post(
            &format!("/api/v1/workspaces/{root}/suspend"),
            &admin,
            "manage:workspaces",
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = app
        .post(
            &format!("/api/v1/workspaces/{root}/suspend"),
            &child_admin,
            "manage:workspaces",
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(app.me(&admin).await.status, StatusCode::OK);

    let r = app
        .post(
            &format!("/api/v1/workspaces/{child}/suspend"),
            &admin,
            "manage:workspaces",
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status"], "suspended");
    for token in [&child_admin, &more] {
        let r = app.me(token).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert!(
            r.header("www-authenticate")
                .expect("header")
                .contains("invalid_token")
        );
    }
    assert_eq!(
        app.me(&admin).await.status,
        StatusCode::OK,
        "the parent is unaffected"
    );
    let r = app
        .post(
            &format!("/api/v1/workspaces/{child}/activate"),
            &admin,
            "manage:workspaces",
            json!({}),
        )
        .await;
    assert_eq!(r.body["status"], "active");
    assert_eq!(app.me(&child_admin).await.status, StatusCode::OK);
    assert_eq!(app.me(&more).await.status, StatusCode::OK);
    // Only admins act with manage:workspaces.
    let (_, viewer) = app.user_with_token("v@example.com", "viewer").await;
    let r = app
        .post(
            &format!("/api/v1/workspaces/{child}/suspend"),
            &viewer,
            "manage:workspaces",
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    app.stop().await;
}
