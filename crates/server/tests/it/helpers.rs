//! `TestApp`: a real server on 127.0.0.1:0 with a fresh store (its own SQLite directory or
//! its own PostgreSQL schema), and a small HTTP client for the public API.

use std::time::{Duration, Instant};

use datastack_server::{Application, Config, ShutdownHandle};
use reqwest::{Method, StatusCode, header::HeaderMap};
use secrecy::ExposeSecret;
use serde_json::Value;

/// Which store a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The PostgreSQL URL of the test database, if the suite is to run on PostgreSQL.
pub fn postgres_url() -> Option<String> {
    std::env::var("DATASTACK_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
}

/// The PostgreSQL URL, for a test that needs it. Such a test is compiled as ignored unless
/// DATASTACK_TEST_DATABASE_URL or CI is set (see `build.rs`), so reaching this without the
/// variable means CI is set: the test fails rather than skips.
pub fn require_postgres() -> String {
    postgres_url().expect(
        "DATASTACK_TEST_DATABASE_URL is not set, and CI is: tests that need PostgreSQL never skip in CI",
    )
}

/// The Redis URL, for a test that needs it; like [`require_postgres`].
pub fn require_redis() -> String {
    std::env::var("DATASTACK_TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .expect(
            "DATASTACK_TEST_REDIS_URL is not set, and CI is: tests that need Redis never skip in CI",
        )
}

/// Creates a fresh schema and returns a URL whose connections use it.
pub async fn fresh_postgres_schema() -> String {
    let base = require_postgres();
    let schema = format!("t_{}", uuid::Uuid::now_v7().simple());
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&base)
        .await
        .expect("DATASTACK_TEST_DATABASE_URL is set, so PostgreSQL must be reachable");
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&pool)
        .await
        .expect("create the test schema");
    pool.close().await;
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-c%20search_path%3D{schema}")
}

/// Where a test app keeps its data, so that a second node or a restart can share it.
pub enum StoreLocation {
    Sqlite(tempfile::TempDir),
    /// A schema URL, and the directory holding the audit key its nodes share.
    Postgres(String, tempfile::TempDir),
}

impl StoreLocation {
    pub async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => StoreLocation::Sqlite(tempfile::tempdir().expect("tempdir")),
            Backend::Postgres => StoreLocation::Postgres(
                fresh_postgres_schema().await,
                tempfile::tempdir().expect("tempdir"),
            ),
        }
    }

    pub fn config(&self) -> Config {
        let mut config = Config {
            listen: "127.0.0.1:0".parse().expect("address"),
            usage_flush_interval: Duration::from_millis(50),
            ..Config::default()
        };
        match self {
            StoreLocation::Sqlite(dir) => config.data_dir = dir.path().to_path_buf(),
            StoreLocation::Postgres(url, dir) => {
                config.database_url = Some(url.clone());
                config.data_dir = dir.path().to_path_buf();
                config.database_max_connections = 4;
            }
        }
        config
    }
}

/// A connection to a test's store that holds the audit tables' write lock until released.
pub enum HeldLock {
    Sqlite(sqlx::pool::PoolConnection<sqlx::Sqlite>),
    Postgres(sqlx::pool::PoolConnection<sqlx::Postgres>),
}

impl HeldLock {
    pub async fn release(self) {
        match self {
            HeldLock::Sqlite(mut c) => {
                sqlx::query("ROLLBACK")
                    .execute(&mut *c)
                    .await
                    .expect("rollback");
            }
            HeldLock::Postgres(mut c) => {
                sqlx::query("ROLLBACK")
                    .execute(&mut *c)
                    .await
                    .expect("rollback");
            }
        }
    }
}

impl StoreLocation {
    /// Which engine.
    pub fn is_postgres(&self) -> bool {
        matches!(self, StoreLocation::Postgres(..))
    }

    async fn sqlite_pool(dir: &std::path::Path) -> sqlx::SqlitePool {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(dir.join("datastack.db"))
            .busy_timeout(Duration::from_secs(10));
        sqlx::SqlitePool::connect_with(options)
            .await
            .expect("open the SQLite store")
    }

    /// Runs statements directly against the store, behind the server's back (to tamper
    /// with it, or to age records). Returns the rows affected by the last statement.
    pub async fn execute(&self, statements: &[&str]) -> u64 {
        let mut affected = 0;
        match self {
            StoreLocation::Sqlite(dir) => {
                let pool = Self::sqlite_pool(dir.path()).await;
                for s in statements {
                    affected = sqlx::query(s)
                        .execute(&pool)
                        .await
                        .expect(s)
                        .rows_affected();
                }
                pool.close().await;
            }
            StoreLocation::Postgres(url, _) => {
                let pool = sqlx::PgPool::connect(url).await.expect("connect");
                for s in statements {
                    affected = sqlx::query(s)
                        .execute(&pool)
                        .await
                        .expect(s)
                        .rows_affected();
                }
                pool.close().await;
            }
        }
        affected
    }

    /// Runs statements in one transaction that first takes the audit writer's lock, so the
    /// server cannot append between them.
    pub async fn execute_atomically(&self, statements: &[&str]) {
        match self {
            StoreLocation::Sqlite(dir) => {
                let pool = Self::sqlite_pool(dir.path()).await;
                let mut c = pool.acquire().await.expect("connection");
                sqlx::query("BEGIN IMMEDIATE")
                    .execute(&mut *c)
                    .await
                    .expect("begin");
                for s in statements {
                    sqlx::query(s).execute(&mut *c).await.expect(s);
                }
                sqlx::query("COMMIT")
                    .execute(&mut *c)
                    .await
                    .expect("commit");
                drop(c);
                pool.close().await;
            }
            StoreLocation::Postgres(url, _) => {
                let pool = sqlx::PgPool::connect(url).await.expect("connect");
                let mut tx = pool.begin().await.expect("begin");
                sqlx::query("LOCK TABLE audit_heads IN EXCLUSIVE MODE")
                    .execute(&mut *tx)
                    .await
                    .expect("lock");
                for s in statements {
                    sqlx::query(s).execute(&mut *tx).await.expect(s);
                }
                tx.commit().await.expect("commit");
                pool.close().await;
            }
        }
    }

    /// The first column of every row of `sql`, as text.
    pub async fn strings(&self, sql: &str) -> Vec<String> {
        match self {
            StoreLocation::Sqlite(dir) => {
                let pool = Self::sqlite_pool(dir.path()).await;
                let rows: Vec<(Option<String>,)> =
                    sqlx::query_as(sql).fetch_all(&pool).await.expect(sql);
                pool.close().await;
                rows.into_iter().map(|r| r.0.unwrap_or_default()).collect()
            }
            StoreLocation::Postgres(url, _) => {
                let pool = sqlx::PgPool::connect(url).await.expect("connect");
                let rows: Vec<(Option<String>,)> =
                    sqlx::query_as(sql).fetch_all(&pool).await.expect(sql);
                pool.close().await;
                rows.into_iter().map(|r| r.0.unwrap_or_default()).collect()
            }
        }
    }

    /// Takes the write lock the audit writer needs and holds it until released.
    pub async fn lock_audit_writes(&self) -> HeldLock {
        match self {
            StoreLocation::Sqlite(dir) => {
                let pool = Self::sqlite_pool(dir.path()).await;
                let mut c = pool.acquire().await.expect("connection");
                sqlx::query("BEGIN IMMEDIATE")
                    .execute(&mut *c)
                    .await
                    .expect("lock");
                HeldLock::Sqlite(c)
            }
            StoreLocation::Postgres(url, _) => {
                let pool = sqlx::PgPool::connect(url).await.expect("connect");
                let mut c = pool.acquire().await.expect("connection");
                sqlx::query("BEGIN").execute(&mut *c).await.expect("begin");
                sqlx::query("LOCK TABLE audit_heads IN EXCLUSIVE MODE")
                    .execute(&mut *c)
                    .await
                    .expect("lock");
                HeldLock::Postgres(c)
            }
        }
    }
}

pub struct TestApp {
    pub base: String,
    /// The admin token printed on first start (`None` when the store was already set up).
    pub admin_token: Option<String>,
    pub http: reqwest::Client,
    shutdown: ShutdownHandle,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// Keeps the SQLite directory alive as long as the node.
    _store: std::sync::Arc<StoreLocation>,
}

/// A response, decoded.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    /// Asserts an error response: its status, and a body in the error shape with `code`,
    /// a message and the request id of the response.
    #[track_caller]
    pub fn assert_error(&self, status: StatusCode, code: &str) {
        assert_eq!(self.status, status, "{}", self.text);
        assert_eq!(self.code(), code, "{}", self.text);
        let message = self.body["error"]["message"].as_str().unwrap_or("");
        assert!(
            !message.is_empty(),
            "an error explains itself: {}",
            self.text
        );
        assert_eq!(
            self.body["error"]["requestId"].as_str(),
            self.header("x-request-id"),
            "the body names the response's request id: {}",
            self.text
        );
    }
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Self {
        let store = std::sync::Arc::new(StoreLocation::new(backend).await);
        Self::spawn_on(store, |_| {}).await
    }

    /// Starts a node on an existing store, with a chance to adjust its configuration.
    pub async fn spawn_on(
        store: std::sync::Arc<StoreLocation>,
        adjust: impl FnOnce(&mut Config),
    ) -> Self {
        let mut config = store.config();
        adjust(&mut config);
        let mut app = Application::build(config).await.expect("the server starts");
        let admin_token = app.take_admin_token().map(|t| t.expose_secret().to_owned());
        let base = format!("http://{}", app.local_addr());
        let shutdown = app.shutdown_handle();
        let server = tokio::spawn(app.run_until_stopped());
        Self {
            base,
            admin_token,
            http: reqwest::Client::new(),
            shutdown,
            server: Some(server),
            _store: store,
        }
    }

    /// The store this node runs on.
    pub fn store(&self) -> &StoreLocation {
        &self._store
    }

    pub fn admin(&self) -> &str {
        self.admin_token
            .as_deref()
            .expect("a first start prints the admin token")
    }

    /// Stops the node gracefully and waits for it.
    pub async fn stop(mut self) {
        self.shutdown.shutdown();
        if let Some(server) = self.server.take() {
            server
                .await
                .expect("server task")
                .expect("server stops cleanly");
        }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        scope: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(s) = scope {
            req = req.header("x-datastack-scope", s);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("the request reaches the server");
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            body,
            text,
        }
    }

    pub async fn get(&self, path: &str, token: &str, scope: &str) -> Reply {
        self.call(Method::GET, path, Some(token), Some(scope), None)
            .await
    }

    pub async fn post(&self, path: &str, token: &str, scope: &str, body: Value) -> Reply {
        self.call(Method::POST, path, Some(token), Some(scope), Some(body))
            .await
    }

    pub async fn patch(&self, path: &str, token: &str, scope: &str, body: Value) -> Reply {
        self.call(Method::PATCH, path, Some(token), Some(scope), Some(body))
            .await
    }

    pub async fn delete(&self, path: &str, token: &str, scope: &str) -> Reply {
        self.call(Method::DELETE, path, Some(token), Some(scope), None)
            .await
    }

    pub async fn me(&self, token: &str) -> Reply {
        self.call(Method::GET, "/api/v1/me", Some(token), None, None)
            .await
    }

    /// The `/metrics` exposition, as text.
    pub async fn metrics_text(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body")
    }

    /// The value of an unlabelled metric from `/metrics` (0 when it is not there yet).
    pub async fn metric(&self, name: &str) -> f64 {
        self.metrics_text()
            .await
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Waits until `n` more maintenance passes have completed: whatever a pass would do
    /// (an event, a purge) has then had `n` chances to happen.
    pub async fn wait_for_maintenance_passes(&self, n: u32) {
        const PASSES: &str = "datastack_maintenance_passes_total";
        let target = self.metric(PASSES).await + f64::from(n);
        let done = eventually(Duration::from_secs(30), || async {
            self.metric(PASSES).await >= target
        })
        .await;
        assert!(done, "{n} maintenance passes did not complete within 30 s");
    }

    /// Creates a token for the caller and returns (secret, id).
    pub async fn create_token(&self, token: &str, body: Value) -> (String, String) {
        let r = self
            .post("/api/v1/auth/tokens", token, "manage:tokens", body)
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        (
            r.body["token"].as_str().expect("token").to_owned(),
            r.body["id"].as_str().expect("id").to_owned(),
        )
    }

    /// Creates a user with `role` and a first token issued by the admin; returns (user id, token).
    pub async fn user_with_token(&self, email: &str, role: &str) -> (String, String) {
        let r = self
            .post(
                "/api/v1/users",
                self.admin(),
                "manage:users",
                serde_json::json!({"email": email, "name": email, "role": role}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        let id = r.body["id"].as_str().expect("id").to_owned();
        let (token, _) = self
            .create_token(
                self.admin(),
                serde_json::json!({"label": "first", "ownerId": id}),
            )
            .await;
        (id, token)
    }
}

/// Polls `check` until it returns true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Declares each test once per store: `<name>::sqlite` and `<name>::postgres`.
/// The PostgreSQL variant runs when DATASTACK_TEST_DATABASE_URL (or CI) is set and then
/// fails, never skips, if the database cannot be reached; otherwise the test runner
/// reports it as ignored, naming the variable.
macro_rules! on_both_stores {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::helpers::Backend::Sqlite).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[cfg_attr(
                    not(datastack_test_postgres),
                    ignore = "needs PostgreSQL: set DATASTACK_TEST_DATABASE_URL"
                )]
                async fn postgres() {
                    super::$name($crate::helpers::Backend::Postgres).await;
                }
            }
        )+
    };
}
pub(crate) use on_both_stores;

/// Fetches the node's JWKS and verifies `token` (EdDSA, issuer `datastack`, audience `aud`,
/// with `exp`, `iat`, `iss`, `aud` and `sub` required) as a service behind datastack would:
/// its header and claims.
pub async fn verify_with_jwks(
    app: &TestApp,
    token: &str,
    aud: &str,
) -> (jsonwebtoken::Header, serde_json::Value) {
    let jwks: jsonwebtoken::jwk::JwkSet = app
        .http
        .get(format!("{}/.well-known/jwks.json", app.base))
        .send()
        .await
        .expect("jwks")
        .json()
        .await
        .expect("jwks json");
    let header = jsonwebtoken::decode_header(token).expect("header");
    let jwk = jwks
        .find(header.kid.as_deref().expect("kid"))
        .expect("the token's key is published");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).expect("key");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_audience(&[aud]);
    validation.set_issuer(&["datastack"]);
    validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
    let claims = jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
        .expect("the token verifies with the published key")
        .claims;
    (header, claims)
}
