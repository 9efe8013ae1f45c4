//! The device grant (RFC 8628) and refresh tokens (RFC 6749 §6) through HTTP, driven by
//! the `oauth2` crate (a standard client): a public client's device flow approved by a
//! signed-in user, polling too fast, denial, refresh-token rotation, the grace period for
//! a retried or concurrent refresh, reuse detection revoking the whole family, revocation
//! of a refresh token, and what a public client and a user code may not do.

use std::sync::Arc;
use std::time::Duration;

use oauth2::basic::{BasicClient, BasicErrorResponseType};
use oauth2::{
    ClientId, DeviceAuthorizationUrl, DeviceCodeErrorResponseType, RefreshToken, RequestTokenError,
    Scope, StandardDeviceAuthorizationResponse, TokenResponse as _, TokenUrl,
};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, StoreLocation, TestApp, eventually, on_both_stores};

on_both_stores!(
    oauth_device_grant_approved_by_a_user_then_refreshed,
    oauth_refresh_reuse_revokes_the_whole_family,
    oauth_device_grant_refuses_what_it_must,
    oauth_signing_keys_rotate_and_are_published_before_they_sign,
);

/// The `oauth2` crate's HTTP client: no redirects (RFC 6749 §3.2).
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

type DeviceClient = oauth2::Client<
    oauth2::basic::BasicErrorResponse,
    oauth2::basic::BasicTokenResponse,
    oauth2::basic::BasicTokenIntrospectionResponse,
    oauth2::StandardRevocableToken,
    oauth2::basic::BasicRevocationErrorResponse,
    oauth2::EndpointNotSet,
    oauth2::EndpointSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointSet,
>;

/// A public client (no secret) as the `oauth2` crate sees it.
fn device_client(app: &TestApp, id: &str) -> DeviceClient {
    BasicClient::new(ClientId::new(id.to_owned()))
        .set_device_authorization_url(
            DeviceAuthorizationUrl::new(format!("{}/oauth2/device_authorization", app.base))
                .expect("url"),
        )
        .set_token_uri(TokenUrl::new(format!("{}/oauth2/token", app.base)).expect("url"))
}

/// The RFC 6749 error code of a refused token request (anything else fails the test).
fn rfc_error<RE, T>(err: RequestTokenError<RE, oauth2::StandardErrorResponse<T>>) -> T
where
    RE: std::error::Error + 'static,
    T: oauth2::ErrorResponseType + Clone + std::fmt::Display + 'static,
{
    match err {
        RequestTokenError::ServerResponse(e) => e.error().clone(),
        other => panic!("an RFC error, not {other:?}"),
    }
}

/// A node whose devices may poll every second and whose refresh grace is `grace`.
async fn spawn(backend: Backend, grace: u64) -> TestApp {
    let store = Arc::new(StoreLocation::new(backend).await);
    TestApp::spawn_on(store, |c| {
        c.oauth_device_poll_interval = Duration::from_secs(1);
        c.oauth_refresh_grace = Duration::from_secs(grace);
    })
    .await
}

/// Registers a public client for the device grant (and refresh tokens); returns its id.
async fn public_client(app: &TestApp, grants: &[&str]) -> String {
    let r = app
        .post(
            "/api/v1/oauth/clients",
            app.admin(),
            "manage:oauth-clients",
            json!({"name": "cli", "type": "public", "grantTypes": grants,
                   "scopes": ["read:users", "read:clusters"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert!(
        r.body["clientSecret"].is_null(),
        "a public client has no secret"
    );
    r.body["clientId"].as_str().expect("id").to_owned()
}

async fn approve(
    app: &TestApp,
    token: &str,
    user_code: &str,
    body: Value,
) -> crate::helpers::Reply {
    let mut body = body;
    body["userCode"] = json!(user_code);
    app.post("/api/v1/oauth/device/approve", token, "manage:tokens", body)
        .await
}

/// A raw form POST to the token endpoint.
async fn token_form(app: &TestApp, body: &str) -> (StatusCode, Value) {
    let r = app
        .http
        .post(format!("{}/oauth2/token", app.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_owned())
        .send()
        .await
        .expect("the token endpoint answers");
    let status = r.status();
    assert_eq!(r.headers()["cache-control"], "no-store");
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Runs a device flow to the end: asked with `scope`, approved by the admin, polled by
/// the `oauth2` crate. Returns the token response.
async fn device_flow(
    app: &TestApp,
    client_id: &str,
    scope: &str,
) -> oauth2::basic::BasicTokenResponse {
    let http = http();
    let client = device_client(app, client_id);
    let details: StandardDeviceAuthorizationResponse = client
        .exchange_device_code()
        .add_scope(Scope::new(scope.to_owned()))
        .request_async(&http)
        .await
        .expect("a device authorization");
    let r = approve(app, app.admin(), details.user_code().secret(), json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    client
        .exchange_device_access_token(&details)
        .request_async(&http, tokio::time::sleep, Some(Duration::from_secs(60)))
        .await
        .expect("the device gets its token")
}

async fn oauth_device_grant_approved_by_a_user_then_refreshed(backend: Backend) {
    let app = spawn(backend, 60).await;
    let admin = app.admin().to_owned();
    let admin_id = app.me(&admin).await.body["principal"]["id"]
        .as_str()
        .expect("the admin's id")
        .to_owned();
    let client_id = public_client(
        &app,
        &[
            "urn:ietf:params:oauth:grant-type:device_code",
            "refresh_token",
        ],
    )
    .await;
    // The metadata lists the device endpoint and the grants.
    let meta = app
        .http
        .get(format!(
            "{}/.well-known/oauth-authorization-server",
            app.base
        ))
        .send()
        .await
        .expect("metadata")
        .json::<Value>()
        .await
        .expect("json");
    assert!(
        meta["device_authorization_endpoint"]
            .as_str()
            .is_some_and(|u| u.ends_with("/oauth2/device_authorization")),
        "{meta}"
    );
    for grant in [
        "refresh_token",
        "urn:ietf:params:oauth:grant-type:device_code",
    ] {
        assert!(
            meta["grant_types_supported"]
                .as_array()
                .is_some_and(|g| g.iter().any(|x| x == grant)),
            "{meta}"
        );
    }

    // The device asks; the standard client reads the RFC 8628 answer.
    let http = http();
    let client = device_client(&app, &client_id);
    let details: StandardDeviceAuthorizationResponse = client
        .exchange_device_code()
        .add_scope(Scope::new("read:users".into()))
        .request_async(&http)
        .await
        .expect("a device authorization");
    let user_code = details.user_code().secret().clone();
    assert_eq!(user_code.len(), 9, "{user_code}");
    assert!(
        details
            .verification_uri()
            .as_str()
            .ends_with("/oauth2/device")
    );
    assert_eq!(details.interval(), Duration::from_secs(1));
    let page = app
        .http
        .get(format!("{}/oauth2/device?user_code={user_code}", app.base))
        .send()
        .await
        .expect("the device page");
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.expect("text").contains(&user_code));

    // Polling before anyone approved: pending; polling again at once: slow down.
    let code = details.device_code().secret().clone();
    let poll = format!(
        "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Adevice_code&device_code={code}&client_id={client_id}"
    );
    let (status, body) = token_form(&app, &poll).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "authorization_pending", "{body}");
    let (_, body) = token_form(&app, &poll).await;
    assert_eq!(body["error"], "slow_down", "{body}");

    // The user approves, typing the code loosely; the device then gets its token.
    let r = approve(
        &app,
        &admin,
        &user_code.to_lowercase().replace('-', " "),
        json!({}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["decision"], "approved");
    assert_eq!(r.body["scopes"], json!(["read:users"]));
    let token = client
        .exchange_device_access_token(&details)
        .request_async(&http, tokio::time::sleep, Some(Duration::from_secs(60)))
        .await
        .expect("the device gets its token");
    let access = token.access_token().secret().clone();
    let claims = crate::helpers::verify_with_jwks(&app, &access, "datastack")
        .await
        .1;
    assert_eq!(claims["client_id"], client_id.as_str());
    assert_eq!(claims["scope"], "read:users");
    assert_eq!(
        claims["sub"],
        admin_id.as_str(),
        "the token acts as the approver"
    );
    // It works as a Bearer credential within its scopes.
    assert_eq!(
        app.get("/api/v1/users", &access, "read:users").await.status,
        StatusCode::OK
    );
    app.get("/api/v1/users", &access, "manage:users")
        .await
        .assert_error(StatusCode::FORBIDDEN, "FORBIDDEN");
    // The device code works once.
    let (_, body) = token_form(&app, &poll).await;
    assert_eq!(body["error"], "invalid_grant", "{body}");

    // Refresh: a new access token and a new refresh token; the standard client uses it.
    let first = token.refresh_token().expect("a refresh token").clone();
    assert!(
        first.secret().starts_with("dsrt"),
        "prefixed like every secret"
    );
    let second = client
        .exchange_refresh_token(&first)
        .request_async(&http)
        .await
        .expect("refreshed");
    let second_refresh = second.refresh_token().expect("rotated").clone();
    assert_ne!(second_refresh.secret(), first.secret());
    assert_ne!(second.access_token().secret(), &access);
    assert_eq!(
        app.get(
            "/api/v1/users",
            second.access_token().secret(),
            "read:users"
        )
        .await
        .status,
        StatusCode::OK
    );
    // Within the grace period, the same token again (a retry after a lost answer) gets
    // the same successor, and a new access token.
    let retried = client
        .exchange_refresh_token(&first)
        .request_async(&http)
        .await
        .expect("a retry inside the grace period");
    assert_eq!(
        retried.refresh_token().expect("successor").secret(),
        second_refresh.secret()
    );
    // Two refreshes racing with the same token both get the one successor.
    let (a, b) = tokio::join!(
        client
            .exchange_refresh_token(&second_refresh)
            .request_async(&http),
        client
            .exchange_refresh_token(&second_refresh)
            .request_async(&http),
    );
    let (a, b) = (a.expect("first racer"), b.expect("second racer"));
    assert_eq!(
        a.refresh_token().expect("successor").secret(),
        b.refresh_token().expect("successor").secret()
    );
    // A narrower scope may be asked for at refresh, never a broader one.
    let third = a.refresh_token().expect("successor").clone();
    let err = client
        .exchange_refresh_token(&third)
        .add_scope(Scope::new("read:clusters".into()))
        .request_async(&http)
        .await
        .expect_err("beyond the grant");
    assert_eq!(rfc_error(err), BasicErrorResponseType::InvalidScope);
    // Introspection describes a live refresh token to its client, not a used one.
    let introspect = |t: String| {
        let app = &app;
        let client_id = client_id.clone();
        async move {
            app.http
                .post(format!("{}/oauth2/introspect", app.base))
                .form(&[("token", t), ("client_id", client_id)])
                .send()
                .await
                .expect("introspection")
                .json::<Value>()
                .await
                .expect("json")
        }
    };
    let live = introspect(third.secret().clone()).await;
    assert_eq!(live["active"], true, "{live}");
    assert_eq!(live["scope"], "read:users");
    assert_eq!(
        introspect(first.secret().clone()).await,
        json!({"active": false})
    );
    let own = introspect(a.access_token().secret().clone()).await;
    assert_eq!(own["active"], true, "{own}");
    // A public client proves nothing but its id: it learns only about its own tokens.
    let stranger = public_client(&app, &["urn:ietf:params:oauth:grant-type:device_code"]).await;
    let r = app
        .http
        .post(format!("{}/oauth2/introspect", app.base))
        .form(&[
            ("token", a.access_token().secret().as_str()),
            ("client_id", stranger.as_str()),
        ])
        .send()
        .await
        .expect("introspection");
    assert_eq!(
        r.json::<Value>().await.expect("json"),
        json!({"active": false})
    );

    // RFC 7009: revoking the refresh token revokes its family's access tokens too.
    let r = app
        .http
        .post(format!("{}/oauth2/revoke", app.base))
        .form(&[
            ("token", third.secret().as_str()),
            ("client_id", client_id.as_str()),
        ])
        .send()
        .await
        .expect("revocation");
    assert_eq!(r.status(), StatusCode::OK);
    app.get("/api/v1/users", a.access_token().secret(), "read:users")
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    let err = client
        .exchange_refresh_token(&third)
        .request_async(&http)
        .await
        .expect_err("revoked");
    assert_eq!(rfc_error(err), BasicErrorResponseType::InvalidGrant);
    // The audit log has the device flow and the refreshes.
    for action in ["oauth.device_authorization", "oauth.token", "oauth.revoke"] {
        let r = app
            .get(
                &format!("/api/v1/audit/events?action={action}"),
                &admin,
                "read:audit",
            )
            .await;
        assert!(
            r.body["items"].as_array().is_some_and(|i| !i.is_empty()),
            "{action}: {}",
            r.text
        );
        assert!(
            !r.text.contains(first.secret()),
            "no refresh token in the audit log"
        );
        assert!(!r.text.contains(&code), "no device code in the audit log");
    }
    app.stop().await;
}

async fn oauth_refresh_reuse_revokes_the_whole_family(backend: Backend) {
    // No grace period: any second use of a refresh token is a reuse.
    let app = spawn(backend, 0).await;
    let admin = app.admin().to_owned();
    let client_id = public_client(
        &app,
        &[
            "urn:ietf:params:oauth:grant-type:device_code",
            "refresh_token",
        ],
    )
    .await;
    let token = device_flow(&app, &client_id, "read:users").await;
    let http = http();
    let client = device_client(&app, &client_id);
    let stolen = token.refresh_token().expect("refresh").clone();
    // The client refreshes twice (the JSON form once).
    let next = client
        .exchange_refresh_token(&stolen)
        .request_async(&http)
        .await
        .expect("refreshed");
    let r = app
        .http
        .post(format!("{}/api/v1/auth/token", app.base))
        .json(&json!({"grantType": "refresh_token", "clientId": client_id,
                      "refreshToken": next.refresh_token().expect("next").secret()}))
        .send()
        .await
        .expect("json token");
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.expect("json");
    let latest = RefreshToken::new(body["refreshToken"].as_str().expect("rotated").to_owned());
    let latest_access = body["accessToken"].as_str().expect("access").to_owned();
    assert_eq!(
        app.get("/api/v1/users", &latest_access, "read:users")
            .await
            .status,
        StatusCode::OK
    );
    // A thief replays the first refresh token: refused, and the whole family is revoked
    // — the legitimate client's latest refresh token and every access token of the family.
    let err = client
        .exchange_refresh_token(&stolen)
        .request_async(&http)
        .await
        .expect_err("a replay");
    assert_eq!(rfc_error(err), BasicErrorResponseType::InvalidGrant);
    for access in [
        token.access_token().secret(),
        next.access_token().secret(),
        &latest_access,
    ] {
        app.get("/api/v1/users", access, "read:users")
            .await
            .assert_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    }
    let err = client
        .exchange_refresh_token(&latest)
        .request_async(&http)
        .await
        .expect_err("the family is revoked");
    assert_eq!(rfc_error(err), BasicErrorResponseType::InvalidGrant);
    // Recorded: a security event and an audit entry, neither with a secret.
    let found = eventually(Duration::from_secs(10), || async {
        let r = app
            .get(
                "/api/v1/audit/security-events?type=oauth.refresh_reuse_detected",
                &admin,
                "read:audit",
            )
            .await;
        r.body["items"].as_array().is_some_and(|i| i.len() == 1)
            && !r.text.contains(stolen.secret())
    })
    .await;
    assert!(found, "oauth.refresh_reuse_detected is recorded once");
    let r = app
        .get(
            "/api/v1/audit/events?action=oauth.refresh_reuse_detected",
            &admin,
            "read:audit",
        )
        .await;
    assert_eq!(
        r.body["items"].as_array().map(Vec::len),
        Some(1),
        "{}",
        r.text
    );
    assert!(
        app.metrics_text()
            .await
            .contains("event_type=\"oauth.refresh_reuse_detected\""),
        "counted in the security events metric"
    );
    // Another client presenting a refresh token of this one gets nothing, and causes no
    // revocation of its own.
    let token = device_flow(&app, &client_id, "read:users").await;
    let other = public_client(
        &app,
        &[
            "urn:ietf:params:oauth:grant-type:device_code",
            "refresh_token",
        ],
    )
    .await;
    let err = device_client(&app, &other)
        .exchange_refresh_token(token.refresh_token().expect("refresh"))
        .request_async(&http)
        .await
        .expect_err("another client's refresh token");
    assert_eq!(rfc_error(err), BasicErrorResponseType::InvalidGrant);
    assert_eq!(
        app.get("/api/v1/users", token.access_token().secret(), "read:users")
            .await
            .status,
        StatusCode::OK
    );
    // A tampered refresh token (checksum) and garbage are refused alike.
    let mut tampered = token.refresh_token().expect("refresh").secret().clone();
    tampered.replace_range(10..11, if &tampered[10..11] == "0" { "1" } else { "0" });
    for bad in [tampered.as_str(), "dsrt", "not-a-token"] {
        let (status, body) = token_form(
            &app,
            &format!("grant_type=refresh_token&refresh_token={bad}&client_id={client_id}"),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"], "invalid_grant", "{body}");
    }
    app.stop().await;
}

async fn oauth_device_grant_refuses_what_it_must(backend: Backend) {
    let app = spawn(backend, 10).await;
    let admin = app.admin().to_owned();
    // A device-only client: its tokens come without refresh tokens.
    let client_id = public_client(&app, &["urn:ietf:params:oauth:grant-type:device_code"]).await;
    let token = device_flow(&app, &client_id, "read:users").await;
    assert!(token.refresh_token().is_none());
    let http = http();
    let client = device_client(&app, &client_id);

    // A public client may not use client_credentials or token exchange (creation refuses).
    for grant in [
        "client_credentials",
        "urn:ietf:params:oauth:grant-type:token-exchange",
    ] {
        let r = app
            .post(
                "/api/v1/oauth/clients",
                &admin,
                "manage:oauth-clients",
                json!({"name": "x", "type": "public", "grantTypes": [grant]}),
            )
            .await;
        r.assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    }
    // A public client that sends a secret is told it has none; one without the refresh
    // grant may not refresh.
    let r = app
        .http
        .post(format!("{}/oauth2/device_authorization", app.base))
        .basic_auth(&client_id, Some("dcsk-something"))
        .form(&[("scope", "read:users")])
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let (_, body) = token_form(
        &app,
        &format!("grant_type=refresh_token&refresh_token=x&client_id={client_id}"),
    )
    .await;
    assert_eq!(body["error"], "unauthorized_client", "{body}");
    // A confidential client without the device grant may not start one.
    let sp = app
        .post(
            "/api/v1/service-principals",
            &admin,
            "manage:users",
            json!({"name": "etl", "role": "editor"}),
        )
        .await;
    let sp_id = sp.body["id"].as_str().expect("sp").to_owned();
    let r = app
        .post(
            "/api/v1/oauth/clients",
            &admin,
            "manage:oauth-clients",
            json!({"name": "cc", "ownerId": sp_id, "scopes": ["read:users"]}),
        )
        .await;
    let cc_id = r.body["clientId"].as_str().expect("id").to_owned();
    let cc_secret = r.body["clientSecret"].as_str().expect("secret").to_owned();
    let r = app
        .http
        .post(format!("{}/oauth2/device_authorization", app.base))
        .basic_auth(&cc_id, Some(&cc_secret))
        .form(&[("scope", "read:users")])
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        r.json::<Value>().await.expect("json")["error"],
        "unauthorized_client"
    );
    // A scope beyond the client's is refused when asked.
    let asked: Result<StandardDeviceAuthorizationResponse, _> = client
        .exchange_device_code()
        .add_scope(Scope::new("manage:users".into()))
        .request_async(&http)
        .await;
    let err = asked.expect_err("beyond the client");
    assert!(format!("{err:?}").contains("invalid_scope"), "{err:?}");

    // Denied: the device's poll says access_denied.
    let details: StandardDeviceAuthorizationResponse = client
        .exchange_device_code()
        .add_scope(Scope::new("read:users".into()))
        .request_async(&http)
        .await
        .expect("a device authorization");
    let user_code = details.user_code().secret().clone();
    // Only a user decides: a service principal's credential is refused.
    let (sp_token, _) = app
        .create_token(&admin, json!({"label": "sp", "ownerId": sp_id}))
        .await;
    approve(&app, &sp_token, &user_code, json!({}))
        .await
        .assert_error(StatusCode::FORBIDDEN, "FORBIDDEN");
    // Narrowing to a scope the device did not ask for is refused; a bad decision too.
    approve(
        &app,
        &admin,
        &user_code,
        json!({"scopes": ["read:clusters"]}),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    approve(&app, &admin, &user_code, json!({"decision": "maybe"}))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    let r = approve(&app, &admin, &user_code, json!({"decision": "deny"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["decision"], "denied");
    let err = client
        .exchange_device_access_token(&details)
        .request_async(&http, tokio::time::sleep, Some(Duration::from_secs(30)))
        .await
        .expect_err("denied");
    assert_eq!(rfc_error(err), DeviceCodeErrorResponseType::AccessDenied);
    // A decided code is no longer pending.
    approve(&app, &admin, &user_code, json!({}))
        .await
        .assert_error(StatusCode::NOT_FOUND, "NOT_FOUND");

    // Guessing user codes: every attempt counts; the eleventh in a minute is refused.
    let (_, user_token) = app.user_with_token("guesser@example.com", "editor").await;
    let mut refused = false;
    for (i, last) in "BCDFGHJKLMNP".chars().enumerate() {
        let r = approve(&app, &user_token, &format!("BCDF-GHJ{last}"), json!({})).await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            refused = true;
            assert!(i >= 10, "the first ten attempts are answered: {i}");
            break;
        }
        r.assert_error(StatusCode::NOT_FOUND, "NOT_FOUND");
    }
    assert!(refused, "wrong user codes are limited per user");
    // Malformed user codes are a 404 like unknown ones (no oracle), and bounded.
    let (_, other_user) = app.user_with_token("typo@example.com", "editor").await;
    approve(&app, &other_user, &"B".repeat(10_000), json!({}))
        .await
        .assert_error(StatusCode::NOT_FOUND, "NOT_FOUND");
    app.stop().await;
}

/// The key set a node publishes.
async fn jwks(app: &TestApp) -> Vec<String> {
    let set: Value = app
        .http
        .get(format!("{}/.well-known/jwks.json", app.base))
        .send()
        .await
        .expect("jwks")
        .json()
        .await
        .expect("json");
    set["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter_map(|k| k["kid"].as_str().map(str::to_owned))
        .collect()
}

async fn oauth_signing_keys_rotate_and_are_published_before_they_sign(backend: Backend) {
    let store = Arc::new(StoreLocation::new(backend).await);
    let app = TestApp::spawn_on(store, |c| {
        c.oauth_signing_key_rotation = Some(Duration::from_secs(6));
        c.oauth_signing_key_publish_ahead = Duration::from_secs(3);
    })
    .await;
    let admin = app.admin().to_owned();
    let sp = app
        .post(
            "/api/v1/service-principals",
            &admin,
            "manage:users",
            json!({"name": "etl", "role": "viewer"}),
        )
        .await;
    let client = app
        .post(
            "/api/v1/oauth/clients",
            &admin,
            "manage:oauth-clients",
            json!({"name": "etl", "ownerId": sp.body["id"], "scopes": ["read:users"]}),
        )
        .await;
    let (id, secret) = (
        client.body["clientId"].as_str().expect("id").to_owned(),
        client.body["clientSecret"]
            .as_str()
            .expect("secret")
            .to_owned(),
    );
    let token = || {
        let req = app
            .http
            .post(format!("{}/oauth2/token", app.base))
            .basic_auth(&id, Some(&secret))
            .form(&[("grant_type", "client_credentials")]);
        async move {
            let body: Value = req.send().await.expect("token").json().await.expect("json");
            let jwt = body["access_token"].as_str().expect("a token").to_owned();
            let kid = jsonwebtoken::decode_header(&jwt)
                .expect("header")
                .kid
                .expect("kid");
            (jwt, kid)
        }
    };
    // Access tokens are signed by a rotating key of their own, published beside the
    // assertion key.
    let (first, first_kid) = token().await;
    assert!(first_kid.starts_with("oauth-"), "{first_kid}");
    let published = jwks(&app).await;
    assert!(published.contains(&first_kid), "{published:?}");
    assert!(
        published.iter().any(|k| !k.starts_with("oauth-")),
        "the assertion key"
    );
    // The next key is published before it signs: a token asked for as soon as it appears
    // is still signed by the current key.
    let started = std::time::Instant::now();
    let next = loop {
        if let Some(k) = jwks(&app)
            .await
            .into_iter()
            .find(|k| k.starts_with("oauth-") && *k != first_kid)
        {
            break k;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no next key published"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (_, kid) = token().await;
    assert_eq!(
        kid, first_kid,
        "the next key does not sign before it was published long enough"
    );
    // Then it signs, and the tokens of the previous key still verify offline with the
    // published set (the previous key stays published until they have expired).
    let started = std::time::Instant::now();
    loop {
        let (_, kid) = token().await;
        if kid == next {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the next key never signs"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    crate::helpers::verify_with_jwks(&app, &first, "datastack").await;
    assert_eq!(app.me(&first).await.status, StatusCode::OK);
    // The private halves are sealed in the store: 12 bytes of nonce, the 32-byte key
    // encrypted, a 16-byte tag; never the key itself.
    let sealed = app
        .store()
        .strings("SELECT sealed_private FROM oauth_signing_keys")
        .await;
    assert!(sealed.len() >= 2, "{sealed:?}");
    for s in &sealed {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(s)
            .expect("base64");
        assert_eq!(bytes.len(), 12 + 32 + 16, "sealed with AES-256-GCM");
    }
    app.stop().await;
}
