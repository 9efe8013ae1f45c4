//! The SDK against a real server on 127.0.0.1:0 (embedded store).

use datastack_sdk::secrecy::{ExposeSecret, SecretString};
use datastack_sdk::{
    Client, CreateToken, CreateUser, CreateWorkspace, Error, ListTokens, ListUsers, Role,
    TokenLifetime, UpdateUser,
};
use datastack_server::{Application, Config};

struct Server {
    host: String,
    admin: String,
    stop: datastack_server::ShutdownHandle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

async fn start() -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    let mut app = Application::build(config).await.expect("server starts");
    let admin = app
        .take_admin_token()
        .expect("first start")
        .expose_secret()
        .to_owned();
    let host = format!("http://{}", app.local_addr());
    let stop = app.shutdown_handle();
    let task = tokio::spawn(app.run_until_stopped());
    Server {
        host,
        admin,
        stop,
        task,
        _dir: dir,
    }
}

impl Server {
    fn client(&self, token: &str) -> Client {
        Client::new(&self.host, SecretString::from(token.to_owned())).expect("client")
    }

    async fn stop(self) {
        self.stop.shutdown();
        self.task.await.expect("task").expect("clean stop");
    }
}

#[tokio::test]
async fn typed_calls_send_the_right_scope_and_decode_the_answers() {
    let server = start().await;
    let admin = server.client(&server.admin);
    assert!(
        !format!("{admin:?}").contains(&server.admin),
        "Debug must not show the token"
    );
    server
        .client("x")
        .health()
        .await
        .expect("health needs no credential");

    let me = admin.me().await.expect("me");
    assert_eq!(me.credential.scopes, vec!["all-apis".to_owned()]);

    let mut request = CreateToken::new("sdk");
    request.lifetime = Some(TokenLifetime::Days(3));
    request.scopes = Some(vec!["read:users".to_owned()]);
    let created = admin.create_token(request).await.expect("create token");
    let secret = created.token.expose_secret().to_owned();
    assert!(secret.starts_with("dapi"));
    assert!(
        !format!("{created:?}").contains(&secret),
        "Debug must not show the secret"
    );
    let reader = server.client(&secret);

    // A call whose scope the token lacks is a typed error naming the scope.
    let err = reader
        .list_tokens(ListTokens::default())
        .await
        .expect_err("read:tokens is not granted");
    match err {
        Error::Api {
            status,
            code,
            required_scope,
            request_id,
            ..
        } => {
            assert_eq!(status, 403);
            assert_eq!(code, "FORBIDDEN");
            assert_eq!(required_scope.as_deref(), Some("read:tokens"));
            assert!(request_id.is_some());
        }
        other => panic!("unexpected {other:?}"),
    }
    let users = reader
        .list_users(ListUsers::default())
        .await
        .expect("read:users is granted");
    assert_eq!(users.items.len(), 1);

    // Users, with pagination.
    for i in 0..3 {
        admin
            .create_user(CreateUser {
                email: format!("u{i}@example.com"),
                name: format!("U{i}"),
                role: Some(Role::Editor),
            })
            .await
            .expect("create user");
    }
    let page = admin
        .list_users(ListUsers {
            limit: Some(2),
            ..ListUsers::default()
        })
        .await
        .expect("page 1");
    assert_eq!(page.items.len(), 2);
    let next = page.next_cursor.expect("more pages");
    let rest = admin
        .list_users(ListUsers {
            limit: Some(2),
            cursor: Some(next),
            ..ListUsers::default()
        })
        .await
        .expect("page 2");
    assert_eq!(rest.items.len(), 2);
    assert!(rest.next_cursor.is_none());
    let ana = &rest.items[1];
    let updated = admin
        .update_user(
            &ana.id,
            UpdateUser {
                role: Some(Role::Viewer),
                ..UpdateUser::default()
            },
        )
        .await
        .expect("update");
    assert_eq!(updated.role, Role::Viewer);
    let dup = admin
        .create_user(CreateUser {
            email: ana.email.clone(),
            name: "dup".into(),
            role: None,
        })
        .await
        .expect_err("duplicate email");
    assert_eq!(dup.status(), Some(409));

    // An admin issues a user's first token.
    let mut first = CreateToken::new("first");
    first.owner_id = Some(ana.id.clone());
    let theirs = admin
        .create_token(first)
        .await
        .expect("token for another principal");
    assert_eq!(theirs.details.owner_id, ana.id);
    let as_ana = server.client(theirs.token.expose_secret());
    assert_eq!(as_ana.me().await.expect("me").principal.id, ana.id);

    // Workspaces: the first admin's token comes back once.
    let ws = admin
        .create_workspace(CreateWorkspace {
            name: "staging".into(),
            admin_email: Some("ops@example.com".into()),
            admin_name: Some("Ops Lead".into()),
            settings: Some(datastack_sdk::WorkspaceSettings {
                ip_access_lists_suspended: Some(true),
                ..Default::default()
            }),
        })
        .await
        .expect("create workspace");
    assert_eq!(ws.workspace.settings.ip_access_lists_suspended, Some(true));
    let token = ws.admin_token.expect("admin token");
    let child = server.client(token.expose_secret());
    let me = child.me().await.expect("me");
    assert_eq!(me.workspace.id, ws.workspace.id);
    assert_eq!(me.principal.name, "Ops Lead");
    let suspended = admin
        .suspend_workspace(&ws.workspace.id)
        .await
        .expect("suspend");
    assert_eq!(suspended.status, datastack_sdk::Status::Suspended);
    assert_eq!(child.me().await.expect_err("suspended").status(), Some(401));
    admin
        .activate_workspace(&ws.workspace.id)
        .await
        .expect("activate");
    assert!(child.me().await.is_ok());

    // Revoke, and the token is refused.
    admin
        .revoke_token(&created.details.id)
        .await
        .expect("revoke");
    let err = reader.me().await.expect_err("revoked");
    assert_eq!(err.status(), Some(401));
    server.stop().await;
}

#[tokio::test]
async fn configuration_errors_are_reported_before_any_call() {
    assert!(matches!(
        Client::new("ftp://x", SecretString::from("t".to_owned())),
        Err(Error::Config(_))
    ));
    assert!(matches!(
        Client::new("not a url", SecretString::from("t".to_owned())),
        Err(Error::Config(_))
    ));
}

#[tokio::test]
async fn oauth_clients_and_a_client_credentials_session() {
    use datastack_sdk::{
        ClientCredentials, CreateOAuthClient, CreateServicePrincipal, UpdateOAuthClient,
    };
    let server = start().await;
    let admin = server.client(&server.admin);
    let sp = admin
        .create_service_principal(CreateServicePrincipal {
            name: "etl".to_owned(),
            role: Some(Role::Editor),
        })
        .await
        .expect("service principal");
    let created = admin
        .create_oauth_client(&CreateOAuthClient {
            name: "etl".to_owned(),
            owner_id: Some(sp.id.clone()),
            scopes: Some(vec!["read:users".to_owned(), "read:clusters".to_owned()]),
            ..CreateOAuthClient::default()
        })
        .await
        .expect("create client");
    let secret = created
        .client_secret
        .expect("a confidential client's secret");
    assert!(
        !format!("{created:?}", created = created.client).contains(&secret.expose_secret()[4..])
    );
    let id = created.client.client_id.clone();
    assert_eq!(created.client.owner_id.as_deref(), Some(sp.id.as_str()));

    // A session as the client: token from the token endpoint, calls with it.
    let (session, token) = Client::from_client_credentials(
        &server.host,
        &ClientCredentials {
            client_id: id.clone(),
            scopes: Some(vec!["read:users".to_owned()]),
            audience: None,
        },
        &secret,
    )
    .await
    .expect("client_credentials");
    assert_eq!(token.scopes, vec!["read:users".to_owned()]);
    assert_eq!(token.expires_in, 3600);
    let me = session.me().await.expect("me as the client");
    assert_eq!(me.principal.id, sp.id);
    // A wrong secret is the RFC's invalid_client.
    let wrong = admin
        .client_credentials_token(
            &ClientCredentials {
                client_id: id.clone(),
                ..ClientCredentials::default()
            },
            &SecretString::from(format!("dcsk{}", "0".repeat(72))),
        )
        .await
        .expect_err("wrong secret");
    match wrong {
        Error::Api { status, code, .. } => {
            assert_eq!((status, code.as_str()), (401, "invalid_client"));
        }
        other => panic!("{other:?}"),
    }

    let listed = admin.list_oauth_clients(None, None).await.expect("list");
    assert_eq!(listed.items.len(), 1);
    let updated = admin
        .update_oauth_client(
            &id,
            &UpdateOAuthClient {
                name: Some("etl v2".to_owned()),
                ..UpdateOAuthClient::default()
            },
        )
        .await
        .expect("update");
    assert_eq!(updated.name, "etl v2");
    assert_eq!(
        admin.get_oauth_client(&id).await.expect("get").name,
        "etl v2"
    );
    let rotated = admin
        .rotate_oauth_client_secret(&id, 0)
        .await
        .expect("rotate");
    assert!(rotated.client_secret.is_some());
    admin.delete_oauth_client(&id).await.expect("delete");
    let refused = session
        .me()
        .await
        .expect_err("the client's token stops with it");
    assert_eq!(refused.status(), Some(401));
    server.stop().await;
}

#[tokio::test]
async fn a_client_renews_its_access_token_by_itself_and_approves_devices() {
    use datastack_sdk::CreateOAuthClient;
    let server = start().await;
    let admin = server.client(&server.admin);
    let created = admin
        .create_oauth_client(&CreateOAuthClient {
            name: "notebook".to_owned(),
            client_type: Some("public".to_owned()),
            grant_types: Some(vec![
                "urn:ietf:params:oauth:grant-type:device_code".to_owned(),
                "refresh_token".to_owned(),
            ]),
            scopes: Some(vec!["read:users".to_owned()]),
            ..CreateOAuthClient::default()
        })
        .await
        .expect("public client");
    assert!(created.client_secret.is_none());
    let id = created.client.client_id.clone();
    // A device flow by hand (the device's side is not the SDK's), approved with the SDK.
    let http = reqwest::Client::new();
    let asked: serde_json::Value = http
        .post(format!("{}/oauth2/device_authorization", server.host))
        .form(&[("client_id", id.as_str())])
        .send()
        .await
        .expect("device authorization")
        .json()
        .await
        .expect("json");
    let decided = admin
        .decide_device(asked["user_code"].as_str().expect("code"), true, None)
        .await
        .expect("approved");
    assert_eq!(decided.decision, "approved");
    assert_eq!(decided.scopes, vec!["read:users".to_owned()]);
    let token: serde_json::Value = http
        .post(format!("{}/oauth2/token", server.host))
        .form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            (
                "device_code",
                asked["device_code"].as_str().expect("device code"),
            ),
            ("client_id", id.as_str()),
        ])
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("json");
    let first = SecretString::from(token["refresh_token"].as_str().expect("refresh").to_owned());

    // A session from the refresh token: it refreshes at once (the refresh token rotates),
    // and again whenever asked or due.
    let session = Client::from_refresh_token(&server.host, &id, None, &first)
        .await
        .expect("session");
    let me = session.me().await.expect("me");
    let admin_me = admin.me().await.expect("admin");
    assert_eq!(me.principal.id, admin_me.principal.id);
    let second = session.current_refresh_token().await.expect("rotated");
    assert_ne!(second.expose_secret(), first.expose_secret());
    session.renew_now().await.expect("renewed");
    let again = session.me().await.expect("me again");
    assert_ne!(again.credential.id, me.credential.id, "a new access token");
    let third = session
        .current_refresh_token()
        .await
        .expect("rotated again");
    assert_ne!(third.expose_secret(), second.expose_secret());
    // A clone shares the renewal.
    let clone = session.clone();
    clone.renew_now().await.expect("renewed through the clone");
    assert_ne!(
        session
            .current_refresh_token()
            .await
            .expect("shared")
            .expose_secret(),
        third.expose_secret()
    );
    // A refresh token that does not exist cannot start a session.
    let bad = Client::from_refresh_token(
        &server.host,
        &id,
        None,
        &SecretString::from(format!("dsrt{}", "0".repeat(72))),
    )
    .await
    .expect_err("unknown refresh token");
    assert_eq!(bad.status(), Some(400));
    server.stop().await;
}

/// A receiver on loopback that keeps what it gets.
async fn receiver() -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<(axum::http::HeaderMap, axum::body::Bytes)>>>,
) {
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = got.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let app = axum::Router::new().fallback(
        move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                sink.lock().expect("lock").push((headers, body));
                "ok"
            }
        },
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, got)
}

#[tokio::test]
async fn webhooks_are_managed_and_their_deliveries_verified() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    config.webhooks.allow_networks = vec!["127.0.0.0/8".parse().expect("net")];
    let mut app = Application::build(config).await.expect("server starts");
    let token = app.take_admin_token().expect("first start");
    let host = format!("http://{}", app.local_addr());
    let stop = app.shutdown_handle();
    let task = tokio::spawn(app.run_until_stopped());
    let client = Client::new(&host, token).expect("client");
    let (url, got) = receiver().await;

    let types = client.webhook_event_types().await.expect("catalogue");
    assert!(
        types
            .iter()
            .any(|t| t.name == "job.completed" && t.source == "upstream")
    );
    let created = client
        .create_webhook(&datastack_sdk::CreateWebhook {
            url: url.clone(),
            events: vec!["job.*".into()],
            description: Some("sdk".into()),
            ..Default::default()
        })
        .await
        .expect("created");
    let id = created.details.id.clone();
    assert!(!format!("{created:?}").contains(created.secret.expose_secret()));
    let published = client
        .publish_event("job.completed", serde_json::json!({"jobId": "j-1"}))
        .await
        .expect("published");
    assert!(published.queued);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while got.lock().expect("lock").is_empty() {
        assert!(std::time::Instant::now() < deadline, "no delivery");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (headers, body) = got.lock().expect("lock")[0].clone();
    let verifier = datastack_sdk::WebhookVerifier::new(&created.secret).expect("verifier");
    let event = verifier.verify(&headers, &body).expect("verifies");
    assert_eq!(event.request_id, published.id);
    assert_eq!(event.event_type, "job.completed");
    assert_eq!(event.data["jobId"], "j-1");
    verifier
        .verify_body_signature(&headers, &body)
        .expect("the seed's scheme verifies");
    // A changed body, another secret, or a replay with an old timestamp are refused.
    let mut tampered = body.to_vec();
    tampered[2] ^= 1;
    assert_eq!(
        verifier.verify(&headers, &tampered).expect_err("tampered"),
        datastack_sdk::VerifyError::BadSignature
    );
    assert!(verifier.verify_body_signature(&headers, &tampered).is_err());
    let other = client
        .create_webhook(&datastack_sdk::CreateWebhook {
            url: url.clone(),
            events: vec!["test.ping".into()],
            ..Default::default()
        })
        .await
        .expect("second");
    let wrong = datastack_sdk::WebhookVerifier::new(&other.secret).expect("verifier");
    assert_eq!(
        wrong.verify(&headers, &body).expect_err("wrong secret"),
        datastack_sdk::VerifyError::BadSignature
    );
    let mut replayed = headers.clone();
    replayed.insert("webhook-timestamp", "1600000000".parse().expect("value"));
    assert_eq!(
        verifier.verify(&replayed, &body).expect_err("replayed"),
        datastack_sdk::VerifyError::Stale
    );
    let mut missing = headers.clone();
    missing.remove("webhook-signature");
    assert!(matches!(
        verifier.verify(&missing, &body),
        Err(datastack_sdk::VerifyError::MissingHeader(_))
    ));

    // Deliveries are listed and detailed; the webhook is paused, updated, rotated, tested.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let detail = loop {
        let d = client
            .get_webhook_delivery(&id, &published.id)
            .await
            .expect("delivery");
        if d.delivery.status == "succeeded" {
            break d;
        }
        assert!(std::time::Instant::now() < deadline, "not recorded: {d:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(detail.attempt_log.len(), 1);
    let page = client
        .list_webhook_deliveries(&id, datastack_sdk::ListDeliveries::default())
        .await
        .expect("list");
    assert_eq!(page.items[0].id, published.id);
    assert_eq!(
        client.pause_webhook(&id).await.expect("pause").status,
        "paused"
    );
    assert_eq!(
        client.resume_webhook(&id).await.expect("resume").status,
        "active"
    );
    let updated = client
        .update_webhook(
            &id,
            &datastack_sdk::UpdateWebhook {
                events: Some(vec!["*".into()]),
                description: Some(None),
                ..Default::default()
            },
        )
        .await
        .expect("update");
    assert_eq!(updated.events, vec!["*".to_owned()]);
    assert_eq!(updated.description, None);
    let rotated = client
        .rotate_webhook_secret(&id, Some(600), None)
        .await
        .expect("rotate");
    assert!(rotated.details.previous_secret_valid_until.is_some());
    let ping = client.test_webhook(&id).await.expect("test");
    assert_eq!(ping.event_type, "test.ping");
    let both = datastack_sdk::WebhookVerifier::new(&created.secret)
        .expect("old")
        .or_secret(&rotated.secret)
        .expect("new");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let last = got.lock().expect("lock").last().cloned();
        if let Some((h, b)) = last
            && h.get("webhook-id").and_then(|v| v.to_str().ok()) == Some(ping.id.as_str())
        {
            both.verify(&h, &b)
                .expect("either secret verifies during the overlap");
            datastack_sdk::WebhookVerifier::new(&rotated.secret)
                .expect("new")
                .verify_body_signature(&h, &b)
                .expect("the seed header uses the new secret");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no ping");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        client
            .list_webhooks(None, None)
            .await
            .expect("list")
            .items
            .len()
            == 2
    );
    client.delete_webhook(&id).await.expect("delete");
    let gone = client.get_webhook(&id).await.expect_err("gone");
    assert!(matches!(gone, Error::Api { status: 404, .. }), "{gone:?}");
    stop.shutdown();
    task.await.expect("task").expect("clean stop");
}
