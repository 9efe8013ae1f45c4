//! Workspaces (C1).

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{Backend, TestApp, on_both_stores};

on_both_stores!(
    child_workspaces_are_isolated_and_visible_to_the_parent,
    a_parent_suspends_a_child_workspace_and_all_its_credentials_stop,
);

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
