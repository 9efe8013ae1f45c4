//! Federation through HTTP, against a real OIDC issuer run by the test on 127.0.0.1: its
//! own Ed25519 keys, a discovery document and a JWKS over HTTP, able to rotate its keys and
//! to go down. Its access tokens are accepted as Bearer credentials after every check, and
//! refused for a wrong `aud` or `iss`, expiry, `nbf`, `alg: none`, HMAC with the public key,
//! a key named in the header, a tampered payload; just-in-time provisioning, scopes bounded
//! by the issuer's, subject links, key rotation, keys kept while the IdP is down, bounded
//! refreshes for unknown key ids, exchange for a datastack token, and deletion.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::response::IntoResponse;
use base64::Engine as _;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, on_both_stores};

on_both_stores!(
    federation_accepts_a_trusted_issuers_tokens_and_refuses_the_rest,
    federation_maps_subjects_to_linked_principals,
    oauth_private_key_jwt_client_authentication,
);

const AUD: &str = "api://datastack";

/// A signing key of the test IdP.
struct IdpKey {
    kid: String,
    encoding: EncodingKey,
    jwk: Jwk,
    public: [u8; 32],
}

fn idp_key(kid: &str, seed: u8) -> IdpKey {
    let signing = SigningKey::from_bytes(&[seed; 32]);
    let der = ed25519_dalek::pkcs8::KeypairBytes {
        secret_key: signing.to_bytes(),
        public_key: None,
    }
    .to_pkcs8_der()
    .expect("der");
    let encoding = EncodingKey::from_ed_der(der.as_bytes());
    let mut jwk = Jwk::from_encoding_key(&encoding, Algorithm::EdDSA).expect("jwk");
    jwk.common.key_id = Some(kid.to_owned());
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    jwk.common.key_algorithm = Some(KeyAlgorithm::EdDSA);
    IdpKey {
        kid: kid.to_owned(),
        encoding,
        jwk,
        public: signing.verifying_key().to_bytes(),
    }
}

/// An OIDC issuer on 127.0.0.1: discovery, a JWKS it can change, and an off switch.
struct Idp {
    base: String,
    published: Arc<Mutex<Vec<Jwk>>>,
    down: Arc<AtomicBool>,
    jwks_hits: Arc<AtomicUsize>,
}

#[derive(Clone)]
struct IdpState {
    base: String,
    published: Arc<Mutex<Vec<Jwk>>>,
    down: Arc<AtomicBool>,
    jwks_hits: Arc<AtomicUsize>,
}

async fn discovery(State(s): State<IdpState>) -> axum::response::Response {
    if s.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    axum::Json(json!({"issuer": s.base, "jwks_uri": format!("{}/keys", s.base)})).into_response()
}

async fn keys(State(s): State<IdpState>) -> axum::response::Response {
    s.jwks_hits.fetch_add(1, Ordering::SeqCst);
    if s.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let keys = s.published.lock().expect("lock").clone();
    axum::Json(JwkSet { keys }).into_response()
}

impl Idp {
    async fn start(first: &IdpKey) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!(
            "http://{}/realms/test",
            listener.local_addr().expect("addr")
        );
        let state = IdpState {
            base: base.clone(),
            published: Arc::new(Mutex::new(vec![first.jwk.clone()])),
            down: Arc::new(AtomicBool::new(false)),
            jwks_hits: Arc::new(AtomicUsize::new(0)),
        };
        let router = axum::Router::new()
            .route(
                "/realms/test/.well-known/openid-configuration",
                axum::routing::get(discovery),
            )
            .route("/realms/test/keys", axum::routing::get(keys))
            .with_state(state.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self {
            base,
            published: state.published,
            down: state.down,
            jwks_hits: state.jwks_hits,
        }
    }

    fn publish(&self, key: &IdpKey) {
        self.published.lock().expect("lock").push(key.jwk.clone());
    }

    fn hits(&self) -> usize {
        self.jwks_hits.load(Ordering::SeqCst)
    }

    /// A token signed with `key`, its claims merged over sensible defaults.
    fn token(&self, key: &IdpKey, claims: Value) -> String {
        let now = chrono::Utc::now().timestamp();
        let mut all = json!({"iss": self.base, "aud": AUD, "iat": now, "exp": now + 600,
                             "sub": "00u1alice", "email": "alice@example.com",
                             "scope": "read:users"});
        for (k, v) in claims.as_object().expect("object") {
            if v.is_null() {
                all.as_object_mut().expect("object").remove(k);
            } else {
                all[k] = v.clone();
            }
        }
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, &all, &key.encoding).expect("sign")
    }
}

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

async fn trust(app: &TestApp, body: Value) -> Value {
    let r = app
        .post(
            "/api/v1/oauth/issuers",
            app.admin(),
            "manage:oauth-clients",
            body,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    r.body
}

async fn federation_accepts_a_trusted_issuers_tokens_and_refuses_the_rest(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.admin().to_owned();
    let k1 = idp_key("k1", 7);
    let idp = Idp::start(&k1).await;

    // HMAC and `none` can never be trusted; an http issuer off loopback neither.
    for (field, value) in [
        ("algorithms", json!(["HS256"])),
        ("algorithms", json!(["none"])),
        ("issuer", json!("http://idp.example.com")),
    ] {
        let mut body = json!({"issuer": idp.base, "audiences": [AUD]});
        body[field] = value;
        app.post(
            "/api/v1/oauth/issuers",
            &admin,
            "manage:oauth-clients",
            body,
        )
        .await
        .assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    }
    let issuer = trust(
        &app,
        json!({"issuer": idp.base, "audiences": [AUD], "algorithms": ["EdDSA"],
               "subjectClaim": "email", "provisioning": "jit",
               "scopes": ["read:users", "read:clusters"]}),
    )
    .await;
    let issuer_id = issuer["id"].as_str().expect("id").to_owned();
    assert!(issuer_id.starts_with("oti_"));
    assert!(issuer["jwksUri"].is_null(), "found by discovery");
    // The same issuer twice is a conflict.
    app.post(
        "/api/v1/oauth/issuers",
        &admin,
        "manage:oauth-clients",
        json!({"issuer": idp.base, "audiences": [AUD]}),
    )
    .await
    .assert_error(StatusCode::CONFLICT, "CONFLICT");

    // A valid token: its user is provisioned as a viewer, its scopes are the claimed ones
    // the issuer may give.
    let alice = idp.token(&k1, json!({"scope": "read:users manage:users"}));
    let me = app.me(&alice).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.text);
    assert_eq!(me.body["principal"]["email"], "alice@example.com");
    assert_eq!(me.body["principal"]["role"], "viewer");
    assert!(
        me.body["credential"]["id"]
            .as_str()
            .is_some_and(|i| i.starts_with("xjt_"))
    );
    assert_eq!(
        app.get("/api/v1/users", &alice, "read:users").await.status,
        StatusCode::OK
    );
    app.get("/api/v1/users", &alice, "manage:users")
        .await
        .assert_error(StatusCode::FORBIDDEN, "FORBIDDEN");
    let events = app
        .get(
            "/api/v1/audit/security-events?type=principals.provisioned",
            &admin,
            "read:audit",
        )
        .await;
    assert_eq!(
        events.body["items"].as_array().map(Vec::len),
        Some(1),
        "{}",
        events.text
    );
    // The same address again is the same user (no second provisioning).
    let again = idp.token(&k1, json!({"jti": "second"}));
    assert_eq!(
        app.me(&again).await.body["principal"]["id"],
        me.body["principal"]["id"]
    );

    // Everything a verifier must refuse.
    let now = chrono::Utc::now().timestamp();
    let mut refused = vec![
        ("wrong aud", idp.token(&k1, json!({"aud": "api://other"}))),
        ("wrong iss", {
            let mut t = idp.token(&k1, json!({"iss": format!("{}x", idp.base)}));
            t.push_str("");
            t
        }),
        (
            "expired",
            idp.token(&k1, json!({"exp": now - 3600, "iat": now - 7200})),
        ),
        ("not yet valid", idp.token(&k1, json!({"nbf": now + 3600}))),
        ("no exp", idp.token(&k1, json!({"exp": null}))),
        (
            "unverified email",
            idp.token(
                &k1,
                json!({"email": "carol@example.com", "email_verified": false}),
            ),
        ),
        (
            "no scope it may give",
            idp.token(&k1, json!({"scope": "manage:users"})),
        ),
    ];
    let payload = json!({"iss": idp.base, "aud": AUD, "exp": now + 600, "iat": now,
                         "email": "alice@example.com", "scope": "read:users"});
    // alg: none.
    refused.push((
        "alg none",
        format!(
            "{}.{}.",
            b64(&json!({"alg": "none", "typ": "JWT"})),
            b64(&payload)
        ),
    ));
    // HS256 keyed with the published public key.
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some("k1".into());
    refused.push((
        "HMAC with the public key",
        jsonwebtoken::encode(&hs, &payload, &EncodingKey::from_secret(&k1.public)).expect("hs"),
    ));
    // A key named by the token itself.
    let mut jku = Header::new(Algorithm::EdDSA);
    jku.kid = Some("k1".into());
    jku.jku = Some(format!("{}/keys", idp.base));
    refused.push((
        "jku header",
        jsonwebtoken::encode(&jku, &payload, &k1.encoding).expect("sign"),
    ));
    // A signature over another payload.
    let good = idp.token(&k1, json!({}));
    let parts: Vec<&str> = good.split('.').collect();
    let mut forged = payload.clone();
    forged["scope"] = json!("read:users read:clusters");
    forged["email"] = json!("mallory@example.com");
    refused.push((
        "tampered payload",
        format!("{}.{}.{}", parts[0], b64(&forged), parts[2]),
    ));
    for (why, token) in &refused {
        let r = app.me(token).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{why}: {}", r.text);
    }
    assert_eq!(
        app.get("/api/v1/users?limit=100", &admin, "read:users")
            .await
            .text
            .matches("mallory@example.com")
            .count(),
        0,
        "nobody was provisioned from a forged token"
    );

    // Key rotation: the IdP publishes a new key and signs with it; the unknown key id
    // prompts one fetch of the key set.
    let k2 = idp_key("k2", 8);
    idp.publish(&k2);
    let rotated = idp.token(&k2, json!({"jti": "rotated"}));
    assert_eq!(app.me(&rotated).await.status, StatusCode::OK);
    // Keys that were never published are refused, and a flood of made-up key ids does
    // not become a flood of fetches (one per 30 seconds at most, and the rotation just
    // fetched).
    let before = idp.hits();
    for i in 0..20 {
        let fake = idp_key(&format!("made-up-{i}"), 20 + i);
        assert_eq!(
            app.me(&idp.token(&fake, json!({"jti": format!("f{i}")})))
                .await
                .status,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(idp.hits(), before, "no fetch for 20 unknown key ids");

    // The IdP goes down: the keys already fetched keep serving new tokens.
    idp.down.store(true, Ordering::SeqCst);
    let while_down = idp.token(&k2, json!({"jti": "down"}));
    assert_eq!(app.me(&while_down).await.status, StatusCode::OK);
    idp.down.store(false, Ordering::SeqCst);

    // Token exchange (RFC 8693) of the external token for a narrower datastack token.
    let sp = app
        .post(
            "/api/v1/service-principals",
            &admin,
            "manage:users",
            json!({"name": "gateway", "role": "editor"}),
        )
        .await;
    let client = app
        .post(
            "/api/v1/oauth/clients",
            &admin,
            "manage:oauth-clients",
            json!({"name": "exchanger", "ownerId": sp.body["id"], "scopes": ["read:users"],
                   "grantTypes": ["urn:ietf:params:oauth:grant-type:token-exchange"]}),
        )
        .await;
    assert_eq!(client.status, StatusCode::CREATED, "{}", client.text);
    let exchanged = app
        .http
        .post(format!("{}/oauth2/token", app.base))
        .basic_auth(
            client.body["clientId"].as_str().expect("id"),
            Some(client.body["clientSecret"].as_str().expect("secret")),
        )
        .form(&[
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("subject_token", alice.as_str()),
            (
                "subject_token_type",
                "urn:ietf:params:oauth:token-type:access_token",
            ),
        ])
        .send()
        .await
        .expect("exchange");
    assert_eq!(exchanged.status(), StatusCode::OK);
    let exchanged: Value = exchanged.json().await.expect("json");
    let own = exchanged["access_token"].as_str().expect("token");
    let mine = app.me(own).await;
    assert_eq!(mine.body["principal"]["email"], "alice@example.com");
    assert_eq!(mine.body["credential"]["kind"], "oauth_access");
    assert_eq!(exchanged["scope"], "read:users");

    // Only existing users once provisioning is off.
    let r = app
        .patch(
            &format!("/api/v1/oauth/issuers/{issuer_id}"),
            &admin,
            "manage:oauth-clients",
            json!({"provisioning": "existing"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let bob = idp.token(&k1, json!({"email": "bob@example.com", "jti": "bob"}));
    assert_eq!(app.me(&bob).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.me(&alice).await.status,
        StatusCode::OK,
        "an existing user still is"
    );

    // Deleting the issuer refuses its tokens at once, cached or not.
    let del = app
        .delete(
            &format!("/api/v1/oauth/issuers/{issuer_id}"),
            &admin,
            "manage:oauth-clients",
        )
        .await;
    assert_eq!(del.status, StatusCode::NO_CONTENT, "{}", del.text);
    assert_eq!(app.me(&alice).await.status, StatusCode::UNAUTHORIZED);
    // Audited, without a token.
    let audit = app
        .get("/api/v1/audit/events?limit=200", &admin, "read:audit")
        .await;
    assert!(!audit.text.contains(&alice), "no token in the audit log");
    app.stop().await;
}

async fn federation_maps_subjects_to_linked_principals(backend: Backend) {
    let store = std::sync::Arc::new(crate::helpers::StoreLocation::new(backend).await);
    let app = TestApp::spawn_on(store, |c| {
        c.public_url = Some("http://127.0.0.1:9/datastack".to_owned());
    })
    .await;
    let admin = app.admin().to_owned();
    // The server's own issuer is never a trusted one: its tokens are known by digest.
    app.post(
        "/api/v1/oauth/issuers",
        &admin,
        "manage:oauth-clients",
        json!({"issuer": "http://127.0.0.1:9/datastack", "audiences": [AUD]}),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    let key = idp_key("only", 3);
    let idp = Idp::start(&key).await;
    let sp = app
        .post(
            "/api/v1/service-principals",
            &admin,
            "manage:users",
            json!({"name": "okta-app", "role": "viewer"}),
        )
        .await;
    let sp_id = sp.body["id"].as_str().expect("sp").to_owned();
    // A link to a principal of no workspace of the caller's is refused.
    app.post(
        "/api/v1/oauth/issuers",
        &admin,
        "manage:oauth-clients",
        json!({"issuer": idp.base, "audiences": [AUD],
               "subjects": [{"subject": "x", "principalId": "sp_0000"}]}),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    // The key set named directly, `scp` as a list (Okta's form), one linked subject.
    trust(
        &app,
        json!({"issuer": idp.base, "jwksUri": format!("{}/keys", idp.base),
               "audiences": [AUD], "algorithms": ["EdDSA"], "scopeClaim": "scp",
               "scopes": ["read:clusters", "read:users"],
               "subjects": [{"subject": "0oa-etl", "principalId": sp_id}]}),
    )
    .await;
    let token = idp.token(
        &key,
        json!({"sub": "0oa-etl", "scope": null, "scp": ["read:clusters", "openid"]}),
    );
    let me = app.me(&token).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.text);
    assert_eq!(me.body["principal"]["id"], sp_id.as_str());
    assert_eq!(me.body["credential"]["scopes"], json!(["read:clusters"]));
    // An unlinked subject, with provisioning off: refused.
    let other = idp.token(
        &key,
        json!({"sub": "0oa-other", "scope": null, "scp": ["read:users"]}),
    );
    assert_eq!(app.me(&other).await.status, StatusCode::UNAUTHORIZED);
    // Listing shows the issuer, never a key or token.
    let list = app
        .get("/api/v1/oauth/issuers", &admin, "read:oauth-clients")
        .await;
    assert_eq!(
        list.body["items"].as_array().map(Vec::len),
        Some(1),
        "{}",
        list.text
    );
    assert_eq!(list.body["items"][0]["scopeClaim"], "scp");
    app.stop().await;
}

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A client assertion (RFC 7523) for `client` signed with `key`, claims merged over the
/// defaults.
fn assertion(app: &TestApp, client: &str, key: &IdpKey, claims: Value) -> String {
    let now = chrono::Utc::now().timestamp();
    let mut all = json!({"iss": client, "sub": client, "aud": format!("{}/oauth2/token", app.base),
                         "iat": now, "exp": now + 300, "jti": uuid::Uuid::new_v4().to_string()});
    for (k, v) in claims.as_object().expect("object") {
        all[k] = v.clone();
    }
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, &all, &key.encoding).expect("sign")
}

/// `client_credentials` with a client assertion, through the `oauth2` crate.
async fn with_assertion(app: &TestApp, client: &str, jwt: &str) -> Result<String, String> {
    use oauth2::TokenResponse as _;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    oauth2::basic::BasicClient::new(oauth2::ClientId::new(client.to_owned()))
        .set_auth_type(oauth2::AuthType::RequestBody)
        .set_token_uri(oauth2::TokenUrl::new(format!("{}/oauth2/token", app.base)).expect("url"))
        .exchange_client_credentials()
        .add_extra_param("client_assertion_type", JWT_BEARER)
        .add_extra_param("client_assertion", jwt)
        .request_async(&http)
        .await
        .map(|t| t.access_token().secret().clone())
        .map_err(|e| match e {
            oauth2::RequestTokenError::ServerResponse(r) => r.error().to_string(),
            other => format!("{other:?}"),
        })
}

async fn oauth_private_key_jwt_client_authentication(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.admin().to_owned();
    let k1 = idp_key("client-k1", 11);
    let sp = app
        .post(
            "/api/v1/service-principals",
            &admin,
            "manage:users",
            json!({"name": "signer", "role": "editor"}),
        )
        .await;
    let sp_id = sp.body["id"].as_str().expect("sp").to_owned();
    // Keys that cannot prove anything are refused: a symmetric key, both forms at once.
    for body in [
        json!({"name": "x", "ownerId": sp_id, "jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}}),
        json!({"name": "x", "ownerId": sp_id, "jwks": {"keys": [k1.jwk]}, "jwksUri": "https://keys.example.com"}),
        json!({"name": "x", "type": "public", "grantTypes": ["urn:ietf:params:oauth:grant-type:device_code"], "jwks": {"keys": [k1.jwk]}}),
    ] {
        app.post(
            "/api/v1/oauth/clients",
            &admin,
            "manage:oauth-clients",
            body,
        )
        .await
        .assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    }
    let created = app
        .post(
            "/api/v1/oauth/clients",
            &admin,
            "manage:oauth-clients",
            json!({"name": "signed", "ownerId": sp_id, "scopes": ["read:users"],
                   "jwks": {"keys": [k1.jwk]}}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    assert!(
        created.body["clientSecret"].is_null(),
        "no secret for a client with keys"
    );
    assert_eq!(created.body["tokenEndpointAuthMethod"], "private_key_jwt");
    let id = created.body["clientId"].as_str().expect("id").to_owned();

    // A signed assertion gets a token acting as the client's service principal.
    let first = assertion(&app, &id, &k1, json!({}));
    let token = with_assertion(&app, &id, &first).await.expect("a token");
    assert_eq!(app.me(&token).await.body["principal"]["id"], sp_id.as_str());
    // The issuer as audience works too.
    let by_issuer = assertion(&app, &id, &k1, json!({"aud": "datastack"}));
    assert!(with_assertion(&app, &id, &by_issuer).await.is_ok());

    // Refused: a replay, a wrong audience, expired, too long-lived, another key, another
    // client's name, alg none, HMAC keyed with the public key.
    let now = chrono::Utc::now().timestamp();
    let other_key = idp_key("client-k1", 12);
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some("client-k1".into());
    let hs_claims = json!({"iss": id, "sub": id, "aud": format!("{}/oauth2/token", app.base),
                           "exp": now + 300, "jti": "hs"});
    let refused = [
        ("replayed", first.clone()),
        (
            "wrong aud",
            assertion(&app, &id, &k1, json!({"aud": "https://elsewhere.example"})),
        ),
        (
            "expired",
            assertion(&app, &id, &k1, json!({"exp": now - 600})),
        ),
        (
            "too long-lived",
            assertion(&app, &id, &k1, json!({"exp": now + 7200})),
        ),
        ("another key", assertion(&app, &id, &other_key, json!({}))),
        (
            "iss not the client",
            assertion(&app, &id, &k1, json!({"iss": "ocl_someoneelse"})),
        ),
        ("no jti", {
            let mut t = assertion(&app, &id, &k1, json!({"jti": null}));
            t.push_str("");
            t
        }),
        (
            "alg none",
            format!("{}.{}.", b64(&json!({"alg": "none"})), b64(&hs_claims)),
        ),
        (
            "HMAC with the public key",
            jsonwebtoken::encode(&hs, &hs_claims, &EncodingKey::from_secret(&k1.public))
                .expect("hs"),
        ),
    ];
    for (why, jwt) in refused {
        let err = with_assertion(&app, &id, &jwt).await.expect_err(why);
        assert_eq!(err, "invalid_client", "{why}");
    }
    // An assertion and a secret at once is a malformed request.
    let r = app
        .http
        .post(format!("{}/oauth2/token", app.base))
        .basic_auth(&id, Some("dcsk-anything"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", JWT_BEARER),
            (
                "client_assertion",
                assertion(&app, &id, &k1, json!({})).as_str(),
            ),
        ])
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // The client rotates its keys: the new one works, the old one no longer does.
    let k2 = idp_key("client-k2", 13);
    let r = app
        .patch(
            &format!("/api/v1/oauth/clients/{id}"),
            &admin,
            "manage:oauth-clients",
            json!({"jwks": {"keys": [k2.jwk]}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(
        with_assertion(&app, &id, &assertion(&app, &id, &k2, json!({})))
            .await
            .is_ok()
    );
    assert_eq!(
        with_assertion(&app, &id, &assertion(&app, &id, &k1, json!({}))).await,
        Err("invalid_client".to_owned())
    );

    // Keys published at a URL (the test IdP's key set).
    let idp = Idp::start(&k1).await;
    let published = app
        .post(
            "/api/v1/oauth/clients",
            &admin,
            "manage:oauth-clients",
            json!({"name": "published", "ownerId": sp_id, "scopes": ["read:users"],
                   "jwksUri": format!("{}/keys", idp.base)}),
        )
        .await;
    assert_eq!(published.status, StatusCode::CREATED, "{}", published.text);
    let pid = published.body["clientId"].as_str().expect("id").to_owned();
    assert!(
        with_assertion(&app, &pid, &assertion(&app, &pid, &k1, json!({})))
            .await
            .is_ok()
    );
    // The metadata says so.
    let meta: Value = app
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
    assert!(
        meta["token_endpoint_auth_methods_supported"]
            .as_array()
            .is_some_and(|m| m.iter().any(|x| x == "private_key_jwt")),
        "{meta}"
    );
    app.stop().await;
}
