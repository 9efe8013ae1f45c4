//! Users and service principals (C1).

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{Backend, TestApp, on_both_stores};

on_both_stores!(
    users_crud_and_duplicate_email,
    suspending_or_deleting_a_user_refuses_its_tokens,
    the_last_admin_cannot_be_removed,
    service_principals_crud,
);

async fn users_crud_and_duplicate_email(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.admin().to_owned();
    let r = app
        .post(
            "/api/v1/users",
            &admin,
            "manage:users",
            json!({"email": "Ana@Example.com", "name": "Ana", "role": "editor"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let id = r.body["id"].as_str().expect("id").to_owned();
    assert!(id.starts_with("usr_"));
    assert_eq!(r.body["email"], "ana@example.com");
    assert_eq!(r.body["role"], "editor");
    assert_eq!(r.body["status"], "active");
    let r = app
        .post(
            "/api/v1/users",
            &admin,
            "manage:users",
            json!({"email": "ana@example.com", "name": "Other"}),
        )
        .await;
    r.assert_error(StatusCode::CONFLICT, "CONFLICT");
    assert_eq!(r.code(), "CONFLICT");
    let r = app
        .get(&format!("/api/v1/users/{id}"), &admin, "read:users")
        .await;
    assert_eq!(r.body["name"], "Ana");
    let r = app
        .patch(
            &format!("/api/v1/users/{id}"),
            &admin,
            "manage:users",
            json!({"name": "Ana B", "role": "viewer"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["name"], "Ana B");
    assert_eq!(r.body["role"], "viewer");
    let r = app
        .get("/api/v1/users?role=viewer", &admin, "read:users")
        .await;
    assert_eq!(r.body["items"].as_array().expect("items").len(), 1);
    let r = app
        .get("/api/v1/users?role=superuser", &admin, "read:users")
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    let r = app
        .delete(&format!("/api/v1/users/{id}"), &admin, "manage:users")
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = app
        .get(&format!("/api/v1/users/{id}"), &admin, "read:users")
        .await;
    r.assert_error(StatusCode::NOT_FOUND, "NOT_FOUND");
    assert_eq!(r.code(), "NOT_FOUND");
    // A user id is not a service principal id.
    let r = app
        .get(
            &format!("/api/v1/service-principals/{id}"),
            &admin,
            "read:users",
        )
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    app.stop().await;
}

async fn suspending_or_deleting_a_user_refuses_its_tokens(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.admin().to_owned();
    let (id, token) = app.user_with_token("e@example.com", "editor").await;
    assert_eq!(app.me(&token).await.status, StatusCode::OK);
    let r = app
        .post(
            &format!("/api/v1/users/{id}/suspend"),
            &admin,
            "manage:users",
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status"], "suspended");
    app.me(&token)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    let r = app
        .post(
            &format!("/api/v1/users/{id}/activate"),
            &admin,
            "manage:users",
            json!({}),
        )
        .await;
    assert_eq!(r.body["status"], "active");
    assert_eq!(app.me(&token).await.status, StatusCode::OK);
    // A role change applies at once to cached credentials.
    assert_eq!(
        app.get("/api/v1/users", &token, "read:users").await.status,
        StatusCode::OK
    );
    let r = app
        .patch(
            &format!("/api/v1/users/{id}"),
            &admin,
            "manage:users",
            json!({"status": "suspended"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    app.me(&token)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    let r = app
        .delete(&format!("/api/v1/users/{id}"), &admin, "manage:users")
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    app.me(&token)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    app.stop().await;
}

async fn the_last_admin_cannot_be_removed(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.admin().to_owned();
    let admin_id = app.me(&admin).await.body["principal"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    for (method, path, body) in [
        (
            "patch",
            format!("/api/v1/users/{admin_id}"),
            json!({"role": "viewer"}),
        ),
        (
            "patch",
            format!("/api/v1/users/{admin_id}"),
            json!({"status": "suspended"}),
        ),
        (
            "post",
            format!("/api/v1/users/{admin_id}/suspend"),
            json!({}),
        ),
    ] {
        let r = if method == "patch" {
            app.patch(&path, &admin, "manage:users", body).await
        } else {
            app.post(&path, &admin, "manage:users", body).await
        };
        r.assert_error(StatusCode::CONFLICT, "CONFLICT");
    }
    let r = app
        .delete(&format!("/api/v1/users/{admin_id}"), &admin, "manage:users")
        .await;
    r.assert_error(StatusCode::CONFLICT, "CONFLICT");
    assert_eq!(app.me(&admin).await.body["principal"]["role"], "admin");
    // With a second admin, the first may step down.
    let (_, second) = app.user_with_token("second@example.com", "admin").await;
    let r = app
        .patch(
            &format!("/api/v1/users/{admin_id}"),
            &second,
            "manage:users",
            json!({"role": "viewer"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = app.get("/api/v1/users", &admin, "manage:users").await;
    r.assert_error(StatusCode::FORBIDDEN, "FORBIDDEN");
    app.stop().await;
}

async fn service_principals_crud(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.admin().to_owned();
    let r = app
        .post(
            "/api/v1/service-principals",
            &admin,
            "manage:users",
            json!({"name": "ci-deployer", "role": "editor"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let id = r.body["id"].as_str().expect("id").to_owned();
    assert!(id.starts_with("sp_"));
    assert_eq!(r.body["kind"], "service_principal");
    assert!(r.body.get("email").is_none());
    let (sp_token, _) = app
        .create_token(
            &admin,
            json!({"label": "ci", "ownerId": id, "scopes": ["read:users"]}),
        )
        .await;
    assert_eq!(
        app.get("/api/v1/users", &sp_token, "read:users")
            .await
            .status,
        StatusCode::OK
    );
    let list = app
        .get("/api/v1/service-principals", &admin, "read:users")
        .await;
    assert_eq!(list.body["items"].as_array().expect("items").len(), 1);
    let users = app.get("/api/v1/users", &admin, "read:users").await;
    assert!(
        users.body["items"]
            .as_array()
            .expect("items")
            .iter()
            .all(|u| u["kind"] == "user")
    );
    let r = app
        .post(
            &format!("/api/v1/service-principals/{id}/suspend"),
            &admin,
            "manage:users",
            json!({}),
        )
        .await;
    assert_eq!(r.body["status"], "suspended");
    app.me(&sp_token)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    let r = app
        .patch(
            &format!("/api/v1/service-principals/{id}"),
            &admin,
            "manage:users",
            json!({"name": "renamed", "status": "active"}),
        )
        .await;
    assert_eq!(r.body["name"], "renamed");
    assert_eq!(app.me(&sp_token).await.status, StatusCode::OK);
    let r = app
        .delete(
            &format!("/api/v1/service-principals/{id}"),
            &admin,
            "manage:users",
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    app.me(&sp_token)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    app.stop().await;
}
