//! OAuth 2.0 through HTTP, driven by the `oauth2` crate (a standard client, not this
//! project's code): clients (create, list, get, update, rotate the secret with an overlap,
//! delete), `client_credentials` with `client_secret_basic` and `client_secret_post`, the
//! JWT access token verified offline with the published key set and accepted as a Bearer
//! credential under the scope contract and through forward-auth, RFC 6749 error bodies,
//! RFC 7009 revocation, and a deleted client's tokens refused at once.

use oauth2::basic::{BasicClient, BasicErrorResponseType};
use oauth2::{
    AuthType, ClientId, ClientSecret, RequestTokenError, RevocationUrl, Scope,
    StandardRevocableToken, TokenResponse as _, TokenUrl,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, eventually, on_both_stores};

on_both_stores!(
    oauth_client_credentials_with_a_standard_client,
    oauth_token_endpoint_refuses_what_rfc_6749_refuses,
    oauth_clients_rotate_revoke_and_delete,
    oauth_introspection_metadata_and_failed_authentications,
    oauth_token_exchange_narrows_a_callers_credential,
    oauth_json_token_and_revoke_endpoints,
);

/// The `oauth2` crate's HTTP client: no redirects (RFC 6749 §3.2 forbids following them).
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// A service principal (editor) and a confidential client acting as it: (sp id, client
/// id, secret, the created client's JSON).
async fn client_for_sp(app: &TestApp, admin: &str, body: Value) -> (String, String, String, Value) {
    let sp = app
        .post(
            "/api/v1/service-principals",
            admin,
            "manage:users",
            json!({"name": "etl", "role": "editor"}),
        )
        .await;
    assert_eq!(sp.status, StatusCode::CREATED, "{}", sp.text);
    let sp_id = sp.body["id"].as_str().expect("sp id").to_owned();
    let mut body = body;
    body["ownerId"] = json!(sp_id);
    let r = app
        .post("/api/v1/oauth/clients", admin, "manage:oauth-clients", body)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let id = r.body["clientId"].as_str().expect("client id").to_owned();
    let secret = r.body["clientSecret"].as_str().expect("secret").to_owned();
    (sp_id, id, secret, r.body)
}

fn oauth_client(
    app: &TestApp,
    id: &str,
    secret: &str,
) -> oauth2::Client<
    oauth2::basic::BasicErrorResponse,
    oauth2::basic::BasicTokenResponse,
    oauth2::basic::BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    oauth2::basic::BasicRevocationErrorResponse,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointSet,
    oauth2::EndpointSet,
> {
    BasicClient::new(ClientId::new(id.to_owned()))
        .set_client_secret(ClientSecret::new(secret.to_owned()))
        .set_token_uri(TokenUrl::new(format!("{}/oauth2/token", app.base)).expect("url"))
        .set_revocation_url(RevocationUrl::new(format!("{}/oauth2/revoke", app.base)).expect("url"))
}

/// Verifies an access token offline with the published key set, as an upstream would.
async fn verify_offline(app: &TestApp, token: &str, aud: &str) -> Value {
    let (header, claims) = crate::helpers::verify_with_jwks(app, token, aud).await;
    assert_eq!(header.typ.as_deref(), Some("at+jwt"), "RFC 9068 typ");
    assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);
    claims
}

/// A raw form POST to an OAuth endpoint.
async fn form(
    app: &TestApp,
    path: &str,
    basic: Option<(&str, &str)>,
    body: &str,
) -> reqwest::Response {
    let mut req = app
        .http
        .post(format!("{}{path}", app.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_owned());
    if let Some((id, secret)) = basic {
        req = req.basic_auth(id, Some(secret));
    }
    req.send().await.expect("the request reaches the server")
}

async fn oauth_client_credentials_with_a_standard_client(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.admin().to_owned();
    let (sp, id, secret, created) = client_for_sp(
        &app,
        &admin,
        json!({"name": "nightly etl", "scopes": ["read:users", "read:clusters"],
               "audiences": ["https://api.example.com", "https://other.example.com"]}),
    )
    .await;
    assert!(id.starts_with("ocl_"), "{id}");
    assert!(secret.starts_with("dcsk") && secret.len() == 76, "{secret}");
    assert_eq!(created["type"], "confidential");
    assert_eq!(created["grantTypes"], json!(["client_credentials"]));
    assert_eq!(
        created["secretLastFour"],
        json!(&secret[secret.len() - 4..])
    );
    // The secret is never listed or shown again.
    let list = app
        .get("/api/v1/oauth/clients", &admin, "read:oauth-clients")
        .await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(list.body["items"][0]["clientId"], json!(id));
    assert!(
        !list.text.contains(&secret[4..]),
        "the secret is not listed"
    );
    let one = app
        .get(
            &format!("/api/v1/oauth/clients/{id}"),
            &admin,
            "read:oauth-clients",
        )
        .await;
    assert_eq!(one.status, StatusCode::OK);
    assert!(one.body.get("clientSecret").is_none());

    // client_secret_basic, the oauth2 crate's default.
    let http = http();
    let client = oauth_client(&app, &id, &secret);
    let token = client
        .exchange_client_credentials()
        .add_scope(Scope::new("read:users".into()))
        .request_async(&http)
        .await
        .expect("the standard client gets a token");
    assert_eq!(token.token_type().as_ref(), "bearer");
    assert_eq!(token.expires_in().map(|d| d.as_secs()), Some(3600));
    assert_eq!(
        token
            .scopes()
            .map(|s| s.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
        Some(vec!["read:users".to_owned()])
    );
    let access = token.access_token().secret().to_owned();
    let claims = verify_offline(&app, &access, "https://api.example.com").await;
    assert_eq!(claims["sub"], json!(sp));
    assert_eq!(claims["client_id"], json!(id));
    assert_eq!(claims["scope"], "read:users");
    assert!(
        claims["jti"]
            .as_str()
            .is_some_and(|j| j.starts_with("oat_"))
    );

    // A Bearer credential like a PAT: who it is, what it may do, what it may not.
    let me = app.me(&access).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.text);
    assert_eq!(me.body["principal"]["id"], json!(sp));
    assert_eq!(me.body["credential"]["kind"], "oauth_access");
    assert_eq!(me.body["credential"]["id"], claims["jti"]);
    let users = app.get("/api/v1/users", &access, "read:users").await;
    assert_eq!(users.status, StatusCode::OK, "{}", users.text);
    let beyond = app.get("/api/v1/auth/tokens", &access, "read:tokens").await;
    beyond.assert_error(StatusCode::FORBIDDEN, "FORBIDDEN");
    // A changed signature is another credential: unknown.
    let mut tampered = access.clone().into_bytes();
    let last = tampered.len() - 2;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("ascii");
    app.me(&tampered)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");

    // Through forward-auth, as a reverse proxy asks.
    let upstream = crate::edge::upstream().await;
    let route = app
        .post(
            "/api/v1/gateway/routes",
            &admin,
            "manage:gateway",
            json!({"pathPrefix": "/v1/clusters", "upstream": format!("http://{upstream}"), "resource": "clusters"}),
        )
        .await;
    assert_eq!(route.status, StatusCode::CREATED, "{}", route.text);
    let wide = client
        .exchange_client_credentials()
        .request_async(&http)
        .await
        .expect("a token with every allowed scope");
    let verify = app
        .http
        .get(format!("{}/auth/verify", app.base))
        .bearer_auth(wide.access_token().secret())
        .header("x-original-uri", "/v1/clusters/c-1")
        .header("x-original-method", "GET")
        .send()
        .await
        .expect("verify");
    assert_eq!(verify.status(), StatusCode::OK);
    assert_eq!(
        verify.headers()["x-datastack-principal"]
            .to_str()
            .expect("ascii"),
        sp
    );

    // client_secret_post, and the second audience on request.
    let post = BasicClient::new(ClientId::new(id.clone()))
        .set_client_secret(ClientSecret::new(secret.clone()))
        .set_auth_type(AuthType::RequestBody)
        .set_token_uri(TokenUrl::new(format!("{}/oauth2/token", app.base)).expect("url"));
    let other = post
        .exchange_client_credentials()
        .add_extra_param("audience", "https://other.example.com")
        .request_async(&http)
        .await
        .expect("client_secret_post works");
    verify_offline(
        &app,
        other.access_token().secret(),
        "https://other.example.com",
    )
    .await;

    // More than the client may have: invalid_scope, from the standard client's parser.
    let err = client
        .exchange_client_credentials()
        .add_scope(Scope::new("manage:users".into()))
        .request_async(&http)
        .await
        .expect_err("beyond the client's scopes");
    match err {
        RequestTokenError::ServerResponse(e) => {
            assert_eq!(*e.error(), BasicErrorResponseType::InvalidScope);
        }
        other => panic!("expected invalid_scope, got {other:?}"),
    }

    // The access review lists the client (owner, scopes, last use; a secret older than
    // the rotation threshold is due), never its short-lived tokens, and pages through
    // tokens and clients with one cursor.
    let review = app.get("/api/v1/access-review", &admin, "read:audit").await;
    assert_eq!(review.status, StatusCode::OK, "{}", review.text);
    let items = review.body["items"].as_array().expect("items");
    let listed = items
        .iter()
        .find(|i| i["credentialId"] == json!(id))
        .expect("the client is reviewed");
    assert_eq!(listed["kind"], "oauth_client");
    assert_eq!(listed["owner"]["id"], json!(sp));
    assert!(listed["lastUsedAt"].is_string());
    assert!(
        !listed["flags"]
            .as_array()
            .expect("flags")
            .contains(&json!("stale"))
    );
    assert!(items.iter().all(|i| i["kind"] != "oauth_access_token"));
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            None => "/api/v1/access-review?limit=1".to_owned(),
            Some(c) => format!("/api/v1/access-review?limit=1&cursor={c}"),
        };
        let page = app.get(&path, &admin, "read:audit").await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text);
        for i in page.body["items"].as_array().expect("items") {
            seen.push(i["credentialId"].as_str().expect("id").to_owned());
        }
        match page.body["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let all: Vec<String> = items
        .iter()
        .map(|i| i["credentialId"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(
        seen, all,
        "pages of one cover the same items in the same order"
    );

    // Issuance is audited in the client's workspace, naming client and token, never the
    // token itself.
    let issued = eventually(std::time::Duration::from_secs(5), || async {
        let r = app
            .get(
                "/api/v1/audit/events?action=oauth.token",
                &admin,
                "read:audit",
            )
            .await;
        r.body["items"].as_array().is_some_and(|a| a.len() >= 3)
    })
    .await;
    assert!(issued, "each issuance has its entry");
    let export = app.get("/api/v1/audit/export", &admin, "read:audit").await;
    assert!(
        !export.text.contains(&access),
        "no token in the audit trail"
    );
    assert!(
        !export.text.contains(&secret[4..]),
        "no client secret in the audit trail"
    );
    app.stop().await;
}

async fn oauth_token_endpoint_refuses_what_rfc_6749_refuses(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.admin().to_owned();
    let (_, id, secret, _) = client_for_sp(
        &app,
        &admin,
        json!({"name": "svc", "scopes": ["read:users"]}),
    )
    .await;
    let http = http();

    // A wrong secret, through the standard client: invalid_client.
    let wrong = oauth_client(&app, &id, &format!("dcsk{}", "0".repeat(72)));
    match wrong
        .exchange_client_credentials()
        .request_async(&http)
        .await
        .expect_err("wrong secret")
    {
        RequestTokenError::ServerResponse(e) => {
            assert_eq!(*e.error(), BasicErrorResponseType::InvalidClient);
        }
        other => panic!("expected invalid_client, got {other:?}"),
    }
    // And as raw HTTP: 401, WWW-Authenticate, no-store, the RFC body.
    let r = form(
        &app,
        "/oauth2/token",
        Some((&id, "not-a-secret")),
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .expect("ascii")
            .starts_with("Basic")
    );
    assert_eq!(r.headers()["cache-control"], "no-store");
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"], "invalid_client");
    // An unknown client looks exactly like a wrong secret.
    let r = form(
        &app,
        "/oauth2/token",
        Some(("ocl_00000000000000000000000000000000", &secret)),
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.json::<Value>().await.expect("json")["error"],
        "invalid_client"
    );

    // Each with valid Basic credentials.
    let cases: &[(&str, &str, StatusCode, &str)] = &[
        (
            "grant_type=password&username=a&password=b",
            "application/x-www-form-urlencoded",
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
        ),
        (
            "scope=read:users",
            "application/x-www-form-urlencoded",
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "grant_type=client_credentials&grant_type=client_credentials",
            "application/x-www-form-urlencoded",
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "{\"grant_type\":\"client_credentials\"}",
            "application/json",
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "grant_type=client_credentials&scope=read:nothing",
            "application/x-www-form-urlencoded",
            StatusCode::BAD_REQUEST,
            "invalid_scope",
        ),
        (
            "grant_type=client_credentials&audience=https://evil.example",
            "application/x-www-form-urlencoded",
            StatusCode::BAD_REQUEST,
            "invalid_target",
        ),
        (
            "grant_type=client_credentials&client_secret=x",
            "application/x-www-form-urlencoded",
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
    ];
    for (body, content_type, status, error) in cases {
        let r = app
            .http
            .post(format!("{}/oauth2/token", app.base))
            .header("content-type", *content_type)
            .body((*body).to_owned())
            .basic_auth(&id, Some(&secret))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), *status, "{body}");
        assert_eq!(r.headers()["cache-control"], "no-store", "{body}");
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["error"], *error, "{body}: {v}");
        assert!(
            v["error_description"]
                .as_str()
                .is_some_and(|d| !d.is_empty())
        );
    }
    // A form far beyond what the endpoint reads is refused without being parsed.
    let huge = format!(
        "grant_type=client_credentials&pad={}",
        "a".repeat(64 * 1024)
    );
    let r = form(&app, "/oauth2/token", Some((&id, &secret)), &huge).await;
    assert!(r.status().is_client_error(), "{}", r.status());
    // Nothing was issued by any of these.
    let issued = app
        .get(
            "/api/v1/audit/events?action=oauth.token&outcome=allowed",
            &admin,
            "read:audit",
        )
        .await;
    assert_eq!(issued.body["items"], json!([]), "{}", issued.text);
    // A public client cannot use client_credentials; a confidential one needs its owner.
    let r = app
        .post(
            "/api/v1/oauth/clients",
            &admin,
            "manage:oauth-clients",
            json!({"name": "cli", "type": "public"}),
        )
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    let r = app
        .post(
            "/api/v1/oauth/clients",
            &admin,
            "manage:oauth-clients",
            json!({"name": "x"}),
        )
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    assert!(r.text.contains("ownerId"), "{}", r.text);
    for bad in [
        json!({"name": "x", "grantTypes": ["password"]}),
        json!({"name": "x", "redirectUris": ["http://example.com/cb"]}),
        json!({"name": "x", "redirectUris": ["https://example.com/cb#frag"]}),
        json!({"name": "x", "accessTokenTtlSeconds": 5}),
        json!({"name": "x", "scopes": ["read:nothing"]}),
        json!({"name": "", "ownerId": "sp_00000000000000000000000000000000"}),
        json!({"name": "x", "unknown": 1}),
    ] {
        let r = app
            .post(
                "/api/v1/oauth/clients",
                &admin,
                "manage:oauth-clients",
                bad.clone(),
            )
            .await;
        r.assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    }
    // A credential cannot make a client with more than it holds, nor without the scope.
    let (narrow, _) = app
        .create_token(
            &admin,
            json!({"label": "n", "scopes": ["manage:oauth-clients", "manage:users"]}),
        )
        .await;
    let (_, _, _, _) = client_for_sp(
        &app,
        &narrow,
        json!({"name": "ok", "scopes": ["read:users"]}),
    )
    .await;
    let sp = app
        .post(
            "/api/v1/service-principals",
            &admin,
            "manage:users",
            json!({"name": "b", "role": "editor"}),
        )
        .await;
    let r = app
        .post(
            "/api/v1/oauth/clients",
            &narrow,
            "manage:oauth-clients",
            json!({"name": "wide", "ownerId": sp.body["id"], "scopes": ["manage:gateway"]}),
        )
        .await;
    r.assert_error(StatusCode::FORBIDDEN, "FORBIDDEN");
    let r = app
        .get("/api/v1/oauth/clients", &narrow, "read:gateway")
        .await;
    r.assert_error(StatusCode::FORBIDDEN, "FORBIDDEN");
    app.stop().await;
}

async fn oauth_clients_rotate_revoke_and_delete(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.admin().to_owned();
    let (sp, id, secret, _) = client_for_sp(
        &app,
        &admin,
        json!({"name": "svc", "scopes": ["read:users"]}),
    )
    .await;
    let http = http();
    let get = |secret: String| {
        let client = oauth_client(&app, &id, &secret);
        let http = http.clone();
        async move {
            client
                .exchange_client_credentials()
                .request_async(&http)
                .await
                .map(|t| t.access_token().secret().to_owned())
        }
    };

    // RFC 7009 revocation: refused from the next request. (The oauth2 crate revokes only
    // over https, which this test server does not speak: the request is the RFC's form.)
    let access = get(secret.clone()).await.expect("token");
    assert_eq!(app.me(&access).await.status, StatusCode::OK);
    let err = oauth_client(&app, &id, &secret)
        .revoke_token(StandardRevocableToken::AccessToken(
            oauth2::AccessToken::new(access.clone()),
        ))
        .expect_err("the library insists on https");
    assert!(format!("{err:?}").contains("InsecureUrl"), "{err:?}");
    let r = form(
        &app,
        "/oauth2/revoke",
        Some((&id, &secret)),
        &format!("token={access}&token_type_hint=access_token"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["cache-control"], "no-store");
    app.me(&access)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    // Revoking an unknown token answers 200 too (RFC 7009 §2.2); a wrong secret is 401.
    let r = form(
        &app,
        "/oauth2/revoke",
        Some((&id, &secret)),
        "token=nothing",
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = form(
        &app,
        "/oauth2/revoke",
        Some((&id, "wrong")),
        "token=nothing",
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Rotation with an overlap: both secrets work until it ends; without, the old stops.
    let rotated = app
        .post(
            &format!("/api/v1/oauth/clients/{id}/rotate-secret"),
            &admin,
            "manage:oauth-clients",
            json!({"overlapSeconds": 600}),
        )
        .await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.text);
    let second = rotated.body["clientSecret"]
        .as_str()
        .expect("new secret")
        .to_owned();
    assert_ne!(second, secret);
    assert!(rotated.body["previousSecretExpiresAt"].is_string());
    get(secret.clone())
        .await
        .expect("the old secret within the overlap");
    get(second.clone()).await.expect("the new secret");
    let rotated = app
        .post(
            &format!("/api/v1/oauth/clients/{id}/rotate-secret"),
            &admin,
            "manage:oauth-clients",
            json!({}),
        )
        .await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.text);
    let third = rotated.body["clientSecret"]
        .as_str()
        .expect("new secret")
        .to_owned();
    assert!(
        get(second).await.is_err(),
        "no overlap: the old secret stops at once"
    );
    assert!(get(secret).await.is_err());
    let r = app
        .post(
            &format!("/api/v1/oauth/clients/{id}/rotate-secret"),
            &admin,
            "manage:oauth-clients",
            json!({"overlapSeconds": 99999999}),
        )
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");

    // PATCH: a new name and a shorter lifetime for the next tokens.
    let patched = app
        .patch(
            &format!("/api/v1/oauth/clients/{id}"),
            &admin,
            "manage:oauth-clients",
            json!({"name": "renamed", "accessTokenTtlSeconds": 120}),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text);
    assert_eq!(patched.body["name"], "renamed");
    let short = oauth_client(&app, &id, &third)
        .exchange_client_credentials()
        .request_async(&http)
        .await
        .expect("token");
    assert_eq!(short.expires_in().map(|d| d.as_secs()), Some(120));

    // Suspending the client's service principal: its tokens are refused and it gets no
    // more (the token endpoint's copy of the client is dropped with the principal's
    // announcement), until it is activated again.
    let before = oauth_client(&app, &id, &third)
        .exchange_client_credentials()
        .request_async(&http)
        .await
        .expect("token");
    let r = app
        .post(
            &format!("/api/v1/service-principals/{sp}/suspend"),
            &admin,
            "manage:users",
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    app.me(before.access_token().secret())
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    match oauth_client(&app, &id, &third)
        .exchange_client_credentials()
        .request_async(&http)
        .await
        .expect_err("a suspended subject gets no token")
    {
        RequestTokenError::ServerResponse(e) => {
            assert_eq!(*e.error(), BasicErrorResponseType::UnauthorizedClient);
        }
        other => panic!("expected unauthorized_client, got {other:?}"),
    }
    let r = app
        .post(
            &format!("/api/v1/service-principals/{sp}/activate"),
            &admin,
            "manage:users",
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    // Deleting the client: its tokens are refused at once, and it gets no more.
    let live = short.access_token().secret().to_owned();
    assert_eq!(app.me(&live).await.status, StatusCode::OK);
    let r = app
        .call(
            Method::DELETE,
            &format!("/api/v1/oauth/clients/{id}"),
            Some(&admin),
            Some("manage:oauth-clients"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    app.me(&live)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    assert!(get(third).await.is_err());
    let r = app
        .get(
            &format!("/api/v1/oauth/clients/{id}"),
            &admin,
            "read:oauth-clients",
        )
        .await;
    r.assert_error(StatusCode::NOT_FOUND, "NOT_FOUND");
    let r = app
        .get(
            "/api/v1/oauth/clients/ocl_nope",
            &admin,
            "read:oauth-clients",
        )
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    app.stop().await;
}

async fn oauth_introspection_metadata_and_failed_authentications(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.admin().to_owned();
    let (sp, id, secret, _) = client_for_sp(
        &app,
        &admin,
        json!({"name": "svc", "scopes": ["read:users"], "audiences": ["https://svc.example"]}),
    )
    .await;
    let http = http();
    let token = oauth_client(&app, &id, &secret)
        .exchange_client_credentials()
        .request_async(&http)
        .await
        .expect("token");
    let access = token.access_token().secret().to_owned();

    // RFC 7662: the token's claims while it is active.
    let r = form(
        &app,
        "/oauth2/introspect",
        Some((&id, &secret)),
        &format!("token={access}"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["active"], true, "{v}");
    assert_eq!(v["client_id"], json!(id));
    assert_eq!(v["sub"], json!(sp));
    assert_eq!(v["scope"], "read:users");
    assert_eq!(v["aud"], "https://svc.example");
    assert_eq!(v["iss"], "datastack");
    assert_eq!(v["token_type"], "Bearer");
    assert!(v["exp"].as_i64().expect("exp") > v["iat"].as_i64().expect("iat"));
    // Not a token of this server, not an OAuth token, or revoked: `{"active": false}` alone.
    let pat = app.admin().to_owned();
    for other in [
        "garbage".to_owned(),
        pat,
        format!("{}x", &access[..access.len() - 1]),
    ] {
        let r = form(
            &app,
            "/oauth2/introspect",
            Some((&id, &secret)),
            &format!("token={other}"),
        )
        .await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.json::<Value>().await.expect("json"),
            json!({"active": false})
        );
    }
    let r = form(
        &app,
        "/oauth2/introspect",
        Some((&id, "wrong")),
        &format!("token={access}"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = form(
        &app,
        "/oauth2/revoke",
        Some((&id, &secret)),
        &format!("token={access}"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = form(
        &app,
        "/oauth2/introspect",
        Some((&id, &secret)),
        &format!("token={access}"),
    )
    .await;
    assert_eq!(
        r.json::<Value>().await.expect("json"),
        json!({"active": false})
    );

    // RFC 8414 metadata: exactly what is supported.
    let m: Value = app
        .http
        .get(format!(
            "{}/.well-known/oauth-authorization-server",
            app.base
        ))
        .send()
        .await
        .expect("metadata")
        .json()
        .await
        .expect("json");
    assert_eq!(m["issuer"], "datastack");
    assert_eq!(
        m["token_endpoint"],
        json!(format!("{}/oauth2/token", app.base))
    );
    assert_eq!(
        m["jwks_uri"],
        json!(format!("{}/.well-known/jwks.json", app.base))
    );
    assert_eq!(
        m["grant_types_supported"],
        json!([
            "client_credentials",
            "urn:ietf:params:oauth:grant-type:token-exchange",
            "refresh_token",
            "urn:ietf:params:oauth:grant-type:device_code"
        ])
    );
    assert_eq!(
        m["token_endpoint_auth_methods_supported"],
        json!([
            "client_secret_basic",
            "client_secret_post",
            "private_key_jwt",
            "none"
        ])
    );
    assert_eq!(
        m["revocation_endpoint_auth_methods_supported"],
        json!([
            "client_secret_basic",
            "client_secret_post",
            "private_key_jwt",
            "none"
        ])
    );
    assert!(
        m["scopes_supported"]
            .as_array()
            .expect("scopes")
            .contains(&json!("read:users"))
    );

    // Failed authentications of one client are limited: after the bucket empties, 429 with
    // Retry-After instead of 401; the right secret still works meanwhile.
    let mut limited = None;
    for i in 0..40 {
        let r = form(
            &app,
            "/oauth2/token",
            Some((&id, &format!("dcsk{}", "1".repeat(72)))),
            "grant_type=client_credentials",
        )
        .await;
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(r.headers().contains_key("retry-after"));
            assert_eq!(
                r.json::<Value>().await.expect("json")["error"],
                "invalid_client"
            );
            limited = Some(i);
            break;
        }
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let limited = limited.expect("the client's failures are limited");
    // The bucket holds 30; the wrong secret sent to the introspection endpoint above was
    // the first failure.
    assert_eq!(limited, 29, "after the bucket's 30 failures, not before");
    oauth_client(&app, &id, &secret)
        .exchange_client_credentials()
        .request_async(&http)
        .await
        .expect("the right secret is never refused by the failure bucket");
    app.stop().await;
}

const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

async fn oauth_token_exchange_narrows_a_callers_credential(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.admin().to_owned();
    // A service's client allowed to exchange, with read scopes only.
    let r = app
        .post(
            "/api/v1/oauth/clients",
            &admin,
            "manage:oauth-clients",
            json!({"name": "svc", "grantTypes": [EXCHANGE], "scopes": ["read:users", "read:clusters"],
                   "audiences": ["https://next.example"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let id = r.body["clientId"].as_str().expect("id").to_owned();
    let secret = r.body["clientSecret"].as_str().expect("secret").to_owned();
    // A caller: a user with a token holding manage:users and read:gateway.
    let (user, user_token) = app.user_with_token("caller@example.com", "editor").await;
    let (narrow, _) = app
        .create_token(
            &user_token,
            json!({"label": "c", "scopes": ["manage:users", "read:gateway"]}),
        )
        .await;
    let exchange = |subject: String, extra: &'static str| {
        let (id, secret) = (id.clone(), secret.clone());
        let app = &app;
        async move {
            let body = format!(
                "grant_type={EXCHANGE}&subject_token={subject}&subject_token_type={ACCESS_TOKEN}{extra}"
            );
            let r = form(app, "/oauth2/token", Some((&id, &secret)), &body).await;
            let status = r.status();
            (status, r.json::<Value>().await.expect("json"))
        }
    };

    // Default: what both hold (read:users, covered by manage:users; not read:clusters, which
    // the caller lacks; not read:gateway, which the client lacks).
    let (status, v) = exchange(narrow.clone(), "").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["scope"], "read:users");
    assert_eq!(v["issued_token_type"], ACCESS_TOKEN);
    let exchanged = v["access_token"].as_str().expect("token").to_owned();
    let claims = verify_offline(&app, &exchanged, "https://next.example").await;
    assert_eq!(claims["sub"], json!(user));
    assert_eq!(claims["act"], json!({"sub": id}));
    let me = app.me(&exchanged).await;
    assert_eq!(me.body["principal"]["id"], json!(user));
    assert_eq!(
        app.get("/api/v1/users", &exchanged, "read:users")
            .await
            .status,
        StatusCode::OK
    );
    app.get("/api/v1/users", &exchanged, "manage:users")
        .await
        .assert_error(StatusCode::FORBIDDEN, "FORBIDDEN");

    // Never broader than the subject token, nor than the client.
    let (status, v) = exchange(narrow.clone(), "&scope=read:clusters").await;
    assert_eq!(
        (status, v["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_scope"))
    );
    let (status, v) = exchange(narrow.clone(), "&scope=manage:users").await;
    assert_eq!(
        (status, v["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_scope"))
    );
    // A subject that is not a valid credential, or revoked: invalid_grant.
    let (status, v) = exchange("dapi-not-a-token".to_owned(), "").await;
    assert_eq!(
        (status, v["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    // Wrong or missing token types, and actor tokens, are invalid requests.
    for extra in [
        "&requested_token_type=urn:ietf:params:oauth:token-type:refresh_token",
        "&actor_token=x",
    ] {
        let (status, v) = exchange(narrow.clone(), extra).await;
        assert_eq!(
            (status, v["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_request")),
            "{extra}"
        );
    }
    let body = format!("grant_type={EXCHANGE}&subject_token={narrow}&subject_token_type=urn:x");
    let r = form(&app, "/oauth2/token", Some((&id, &secret)), &body).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // Exchanged tokens chain: an exchanged token exchanged again is still bounded by it.
    let (status, v) = exchange(exchanged.clone(), "").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["scope"], "read:users");
    // The exchange grant is the client's to have: client_credentials is not.
    let r = form(
        &app,
        "/oauth2/token",
        Some((&id, &secret)),
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(
        r.json::<Value>().await.expect("json")["error"],
        "unauthorized_client"
    );
    // Revoking the subject token (the caller's PAT) stops new exchanges of it.
    let tokens = app
        .get("/api/v1/auth/tokens", &user_token, "read:tokens")
        .await;
    let narrow_id = tokens.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|t| t["label"] == "c")
        .expect("the narrow token")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let r = app
        .delete(
            &format!("/api/v1/auth/tokens/{narrow_id}"),
            &user_token,
            "manage:tokens",
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let (status, v) = exchange(narrow, "").await;
    assert_eq!(
        (status, v["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    app.stop().await;
}

async fn oauth_json_token_and_revoke_endpoints(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.admin().to_owned();
    let (sp, id, secret, _) = client_for_sp(
        &app,
        &admin,
        json!({"name": "svc", "scopes": ["read:users"]}),
    )
    .await;
    let post = |path: &'static str, body: Value| {
        let app = &app;
        async move {
            let r = app
                .http
                .post(format!("{}{path}", app.base))
                .json(&body)
                .send()
                .await
                .expect("send");
            let status = r.status();
            let cache = r
                .headers()
                .get("cache-control")
                .map(|v| v.to_str().expect("ascii").to_owned());
            let text = r.text().await.expect("body");
            (
                status,
                cache,
                serde_json::from_str::<Value>(&text).unwrap_or(Value::Null),
            )
        }
    };
    let (status, cache, v) = post(
        "/api/v1/auth/token",
        json!({"grantType": "client_credentials", "clientId": id, "clientSecret": secret,
               "scopes": ["read:users"]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(cache.as_deref(), Some("no-store"));
    assert_eq!(v["tokenType"], "Bearer");
    assert_eq!(v["scopes"], json!(["read:users"]));
    assert_eq!(v["expiresIn"], 3600);
    let access = v["accessToken"].as_str().expect("token").to_owned();
    assert_eq!(app.me(&access).await.body["principal"]["id"], json!(sp));

    // Errors in the API's shape, their message naming the RFC error.
    let (status, _, v) = post(
        "/api/v1/auth/token",
        json!({"grantType": "client_credentials", "clientId": id, "clientSecret": "wrong"}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .expect("message")
            .starts_with("invalid_client")
    );
    let (status, _, v) = post(
        "/api/v1/auth/token",
        json!({"grantType": "password", "clientId": id, "clientSecret": secret}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["code"], "INVALID_REQUEST");
    assert!(
        v["error"]["message"]
            .as_str()
            .expect("m")
            .starts_with("unsupported_grant_type")
    );
    let (status, _, v) = post(
        "/api/v1/auth/token",
        json!({"grantType": "client_credentials", "clientId": id, "clientSecret": secret, "extra": 1}),
    )
    .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("INVALID_REQUEST"))
    );

    // Its holder revokes it: refused from the next request; unknown tokens answer 204 too.
    let (status, _, _) = post("/api/v1/auth/revoke", json!({"token": access})).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    app.me(&access)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    let (status, _, _) = post("/api/v1/auth/revoke", json!({"token": "nothing"})).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // A personal access token is not revoked by this endpoint.
    let (status, _, _) = post("/api/v1/auth/revoke", json!({"token": admin})).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(app.me(&admin).await.status, StatusCode::OK);
    app.stop().await;
}
