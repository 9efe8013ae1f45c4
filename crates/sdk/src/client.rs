//! The HTTP client: URL building, the request contract's headers, retries and decoding.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue, RETRY_AFTER};
use reqwest::{Method, Response, StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::types::{
    CreateServicePrincipal, CreateToken, CreateUser, CreateWorkspace, CreatedToken,
    CreatedWorkspace, ListServicePrincipals, ListTokens, ListUsers, ListWorkspaces, Me, Page,
    ServicePrincipal, Token, UpdateServicePrincipal, UpdateUser, UpdateWorkspace, User, Workspace,
};

/// The host used when `DATASTACK_HOST` is not set.
pub const DEFAULT_HOST: &str = "http://127.0.0.1:8080";

/// The header naming the scope a call acts with.
const SCOPE_HEADER: &str = "x-datastack-scope";

const READ_TOKENS: &str = "read:tokens";
const MANAGE_TOKENS: &str = "manage:tokens";
const READ_USERS: &str = "read:users";
const MANAGE_USERS: &str = "manage:users";
const READ_WORKSPACES: &str = "read:workspaces";
const MANAGE_WORKSPACES: &str = "manage:workspaces";

/// At most this many retries follow the first attempt.
const MAX_RETRIES: u32 = 3;
/// The first backoff step; each retry doubles it.
const BASE_BACKOFF: Duration = Duration::from_millis(250);
/// No single backoff step is longer than this.
const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// A `Retry-After` longer than this is not waited for: the error goes back to the caller,
/// which knows better than a library whether a minute's stall is acceptable.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a request sends to prove who it is.
#[derive(Clone, Copy)]
pub(crate) enum Auth {
    /// Nothing: public endpoints such as `/healthz`.
    Anonymous,
    /// The bearer token without a scope header: `/api/v1/me`.
    Credential,
    /// The bearer token and the scope the endpoint requires.
    Scoped(&'static str),
}

/// A typed async client of the datastack API.
///
/// Every call sends `Authorization: Bearer <token>` and the `x-datastack-scope` header the
/// endpoint requires. Calls answered 429 are retried, as are GET and DELETE calls answered
/// 502, 503 or 504 or failing to connect: up to three retries, waiting for `Retry-After`
/// when the server sends it (in seconds) and otherwise backing off exponentially with jitter.
///
/// The client is cheap to clone (it shares its connection pool) and its `Debug` output never
/// shows the token.
#[derive(Clone)]
pub struct Client {
    pub(crate) http: reqwest::Client,
    base: Url,
    /// The credential sent; replaced when the client renews its own access token.
    token: std::sync::Arc<std::sync::RwLock<SecretString>>,
    /// How the client renews its access token, when it got it from the token endpoint.
    pub(crate) renewal: Option<std::sync::Arc<crate::oauth::Renewal>>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("host", &self.base.as_str())
            .field("token", &"[redacted]")
            .finish()
    }
}

impl Client {
    /// A client of the server at `host` (e.g. `http://127.0.0.1:8080`, optionally with a
    /// path prefix) acting with `token`.
    ///
    /// Fails with [`Error::Config`] when the host is not an http(s) URL or the token is
    /// empty or not a valid header value.
    pub fn new(host: &str, token: SecretString) -> Result<Self> {
        let base = parse_host(host)?;
        let secret = token.expose_secret();
        if secret.trim().is_empty() {
            return Err(Error::Config("the token is empty".to_owned()));
        }
        if HeaderValue::from_str(&format!("Bearer {secret}")).is_err() {
            return Err(Error::Config(
                "the token contains characters that cannot be sent in an HTTP header".to_owned(),
            ));
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("datastack-sdk/", env!("CARGO_PKG_VERSION")))
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()?;
        Ok(Self {
            http,
            base,
            token: std::sync::Arc::new(std::sync::RwLock::new(token)),
            renewal: None,
        })
    }

    /// Replaces the credential sent from now on.
    pub(crate) fn set_token(&self, token: SecretString) {
        *self.token.write().unwrap_or_else(|p| p.into_inner()) = token;
    }

    /// A client configured from the environment: `DATASTACK_HOST` (default
    /// [`DEFAULT_HOST`]) and `DATASTACK_TOKEN` (required).
    pub fn from_env() -> Result<Self> {
        let host = match std::env::var("DATASTACK_HOST") {
            Ok(host) if !host.trim().is_empty() => host,
            Ok(_) | Err(std::env::VarError::NotPresent) => DEFAULT_HOST.to_owned(),
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(Error::Config(
                    "DATASTACK_HOST is not valid UTF-8".to_owned(),
                ));
            }
        };
        let token = match std::env::var("DATASTACK_TOKEN") {
            Ok(token) if !token.trim().is_empty() => SecretString::from(token),
            Ok(_) | Err(std::env::VarError::NotPresent) => {
                return Err(Error::Config(
                    "DATASTACK_TOKEN is not set: export DATASTACK_TOKEN=dapi… (a personal access token)"
                        .to_owned(),
                ));
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(Error::Config(
                    "DATASTACK_TOKEN is not valid UTF-8".to_owned(),
                ));
            }
        };
        Self::new(&host, token)
    }

    /// The base URL the client talks to.
    pub fn host(&self) -> &str {
        self.base.as_str()
    }

    /// `GET /healthz`: succeeds while the server process serves. Sends no credential.
    pub async fn health(&self) -> Result<()> {
        let url = self.url(&["healthz"]);
        self.send(Method::GET, url, Auth::Anonymous, None).await?;
        Ok(())
    }

    /// `GET /api/v1/me`: the caller's principal, workspace and credential. Needs a valid
    /// credential and no scope.
    pub async fn me(&self) -> Result<Me> {
        let url = self.url(&["api", "v1", "me"]);
        decode(self.send(Method::GET, url, Auth::Credential, None).await?).await
    }

    // Personal access tokens.

    /// `POST /api/v1/auth/tokens` (`manage:tokens`): creates a token for the caller. The
    /// answer holds the secret, which the server never shows again.
    pub async fn create_token(&self, request: CreateToken) -> Result<CreatedToken> {
        let url = self.url(&["api", "v1", "auth", "tokens"]);
        let body = encode(&request)?;
        let response = self
            .send(Method::POST, url, Auth::Scoped(MANAGE_TOKENS), Some(body))
            .await?;
        decode(response).await
    }

    /// `GET /api/v1/auth/tokens` (`read:tokens`): one page of tokens, the caller's own unless
    /// an admin names another owner.
    pub async fn list_tokens(&self, request: ListTokens) -> Result<Page<Token>> {
        let mut url = self.url(&["api", "v1", "auth", "tokens"]);
        append_query(
            &mut url,
            &[
                ("limit", request.limit.map(|l| l.to_string())),
                ("cursor", request.cursor),
                ("ownerId", request.owner_id),
            ],
        );
        decode(self.get(url, READ_TOKENS).await?).await
    }

    /// `DELETE /api/v1/auth/tokens/{id}` (`manage:tokens`): revokes a token; its next use
    /// gets 401.
    pub async fn revoke_token(&self, id: &str) -> Result<()> {
        let url = self.url(&["api", "v1", "auth", "tokens", id]);
        self.send(Method::DELETE, url, Auth::Scoped(MANAGE_TOKENS), None)
            .await?;
        Ok(())
    }

    // Users.

    /// `GET /api/v1/users` (`read:users`): one page of the workspace's users.
    pub async fn list_users(&self, request: ListUsers) -> Result<Page<User>> {
        let mut url = self.url(&["api", "v1", "users"]);
        append_query(
            &mut url,
            &[
                ("limit", request.limit.map(|l| l.to_string())),
                ("cursor", request.cursor),
                ("role", request.role.map(|r| r.as_str().to_owned())),
                ("status", request.status.map(|s| s.as_str().to_owned())),
            ],
        );
        decode(self.get(url, READ_USERS).await?).await
    }

    /// `GET /api/v1/users/{id}` (`read:users`).
    pub async fn get_user(&self, id: &str) -> Result<User> {
        let url = self.url(&["api", "v1", "users", id]);
        decode(self.get(url, READ_USERS).await?).await
    }

    /// `POST /api/v1/users` (`manage:users`): a duplicate email gets 409.
    pub async fn create_user(&self, request: CreateUser) -> Result<User> {
        let url = self.url(&["api", "v1", "users"]);
        self.post_json(url, MANAGE_USERS, &request).await
    }

    /// `PATCH /api/v1/users/{id}` (`manage:users`): changes the fields that are set and
    /// returns the updated user. Demoting the last active admin gets 409.
    pub async fn update_user(&self, id: &str, request: UpdateUser) -> Result<User> {
        let url = self.url(&["api", "v1", "users", id]);
        let body = encode(&request)?;
        let response = self
            .send(Method::PATCH, url, Auth::Scoped(MANAGE_USERS), Some(body))
            .await?;
        match decode_if_present(response).await? {
            Some(user) => Ok(user),
            None => self.get_user(id).await,
        }
    }

    /// `POST /api/v1/users/{id}/suspend` (`manage:users`): every token of the user gets 401
    /// at once. Returns the updated user.
    pub async fn suspend_user(&self, id: &str) -> Result<User> {
        self.user_action(id, "suspend").await
    }

    /// `POST /api/v1/users/{id}/activate` (`manage:users`): undoes a suspension. Returns the
    /// updated user.
    pub async fn activate_user(&self, id: &str) -> Result<User> {
        self.user_action(id, "activate").await
    }

    /// `DELETE /api/v1/users/{id}` (`manage:users`): deletes the user and revokes its
    /// tokens. Deleting the last active admin gets 409.
    pub async fn delete_user(&self, id: &str) -> Result<()> {
        let url = self.url(&["api", "v1", "users", id]);
        self.send(Method::DELETE, url, Auth::Scoped(MANAGE_USERS), None)
            .await?;
        Ok(())
    }

    /// `POST /api/v1/workspaces/{id}/suspend` (`manage:workspaces`): suspends a workspace
    /// below the caller's (a child or any descendant); every credential in it and below it is
    /// refused until it is activated.
    pub async fn suspend_workspace(&self, id: &str) -> Result<Workspace> {
        self.workspace_action(id, "suspend").await
    }

    /// `POST /api/v1/workspaces/{id}/activate` (`manage:workspaces`): activates it again.
    pub async fn activate_workspace(&self, id: &str) -> Result<Workspace> {
        self.workspace_action(id, "activate").await
    }

    async fn workspace_action(&self, id: &str, action: &str) -> Result<Workspace> {
        let url = self.url(&["api", "v1", "workspaces", id, action]);
        let response = self
            .send(Method::POST, url, Auth::Scoped(MANAGE_WORKSPACES), None)
            .await?;
        decode(response).await
    }

    async fn user_action(&self, id: &str, action: &str) -> Result<User> {
        let url = self.url(&["api", "v1", "users", id, action]);
        let response = self
            .send(Method::POST, url, Auth::Scoped(MANAGE_USERS), None)
            .await?;
        // A server may answer a state change with 204; the user is then read back.
        match decode_if_present(response).await? {
            Some(user) => Ok(user),
            None => self.get_user(id).await,
        }
    }

    // Service principals: the same calls and scopes as users.

    /// `GET /api/v1/service-principals` (`read:users`): one page of service principals.
    pub async fn list_service_principals(
        &self,
        request: ListServicePrincipals,
    ) -> Result<Page<ServicePrincipal>> {
        let mut url = self.url(&["api", "v1", "service-principals"]);
        append_query(
            &mut url,
            &[
                ("limit", request.limit.map(|l| l.to_string())),
                ("cursor", request.cursor),
                ("role", request.role.map(|r| r.as_str().to_owned())),
                ("status", request.status.map(|s| s.as_str().to_owned())),
            ],
        );
        decode(self.get(url, READ_USERS).await?).await
    }

    /// `GET /api/v1/service-principals/{id}` (`read:users`).
    pub async fn get_service_principal(&self, id: &str) -> Result<ServicePrincipal> {
        let url = self.url(&["api", "v1", "service-principals", id]);
        decode(self.get(url, READ_USERS).await?).await
    }

    /// `POST /api/v1/service-principals` (`manage:users`).
    pub async fn create_service_principal(
        &self,
        request: CreateServicePrincipal,
    ) -> Result<ServicePrincipal> {
        let url = self.url(&["api", "v1", "service-principals"]);
        self.post_json(url, MANAGE_USERS, &request).await
    }

    /// `PATCH /api/v1/service-principals/{id}` (`manage:users`): changes the fields that are
    /// set and returns the updated service principal.
    pub async fn update_service_principal(
        &self,
        id: &str,
        request: UpdateServicePrincipal,
    ) -> Result<ServicePrincipal> {
        let url = self.url(&["api", "v1", "service-principals", id]);
        let body = encode(&request)?;
        let response = self
            .send(Method::PATCH, url, Auth::Scoped(MANAGE_USERS), Some(body))
            .await?;
        match decode_if_present(response).await? {
            Some(principal) => Ok(principal),
            None => self.get_service_principal(id).await,
        }
    }

    /// `POST /api/v1/service-principals/{id}/suspend` (`manage:users`): every credential of
    /// the service principal gets 401 at once. Returns the updated service principal.
    pub async fn suspend_service_principal(&self, id: &str) -> Result<ServicePrincipal> {
        self.service_principal_action(id, "suspend").await
    }

    /// `POST /api/v1/service-principals/{id}/activate` (`manage:users`): undoes a
    /// suspension. Returns the updated service principal.
    pub async fn activate_service_principal(&self, id: &str) -> Result<ServicePrincipal> {
        self.service_principal_action(id, "activate").await
    }

    /// `DELETE /api/v1/service-principals/{id}` (`manage:users`): deletes the service
    /// principal and revokes its credentials.
    pub async fn delete_service_principal(&self, id: &str) -> Result<()> {
        let url = self.url(&["api", "v1", "service-principals", id]);
        self.send(Method::DELETE, url, Auth::Scoped(MANAGE_USERS), None)
            .await?;
        Ok(())
    }

    async fn service_principal_action(&self, id: &str, action: &str) -> Result<ServicePrincipal> {
        let url = self.url(&["api", "v1", "service-principals", id, action]);
        let response = self
            .send(Method::POST, url, Auth::Scoped(MANAGE_USERS), None)
            .await?;
        match decode_if_present(response).await? {
            Some(principal) => Ok(principal),
            None => self.get_service_principal(id).await,
        }
    }

    // Workspaces.

    /// `GET /api/v1/workspaces` (`read:workspaces`): the caller's workspace and every
    /// workspace below it.
    pub async fn list_workspaces(&self, request: ListWorkspaces) -> Result<Page<Workspace>> {
        let mut url = self.url(&["api", "v1", "workspaces"]);
        append_query(
            &mut url,
            &[
                ("limit", request.limit.map(|l| l.to_string())),
                ("cursor", request.cursor),
                ("parentId", request.parent_id),
                ("status", request.status.map(|s| s.as_str().to_owned())),
            ],
        );
        decode(self.get(url, READ_WORKSPACES).await?).await
    }

    /// `GET /api/v1/workspaces/{id}` (`read:workspaces`).
    pub async fn get_workspace(&self, id: &str) -> Result<Workspace> {
        let url = self.url(&["api", "v1", "workspaces", id]);
        decode(self.get(url, READ_WORKSPACES).await?).await
    }

    /// `POST /api/v1/workspaces` (`manage:workspaces`): creates a workspace and its first
    /// admin, whose token the answer holds this once.
    pub async fn create_workspace(&self, request: CreateWorkspace) -> Result<CreatedWorkspace> {
        let url = self.url(&["api", "v1", "workspaces"]);
        self.post_json(url, MANAGE_WORKSPACES, &request).await
    }

    /// `PATCH /api/v1/workspaces/{id}` (`manage:workspaces`): changes the fields that are set
    /// and returns the updated workspace.
    pub async fn update_workspace(&self, id: &str, request: UpdateWorkspace) -> Result<Workspace> {
        let url = self.url(&["api", "v1", "workspaces", id]);
        let body = encode(&request)?;
        let response = self
            .send(
                Method::PATCH,
                url,
                Auth::Scoped(MANAGE_WORKSPACES),
                Some(body),
            )
            .await?;
        match decode_if_present(response).await? {
            Some(workspace) => Ok(workspace),
            None => self.get_workspace(id).await,
        }
    }

    // The plumbing.

    /// The base URL with these path segments appended, each percent-encoded, so an id can
    /// never change the path it is put in.
    pub(crate) fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("Client::new accepts only http(s) URLs, which always have a path")
            .pop_if_empty()
            .extend(segments);
        url
    }

    pub(crate) async fn get(&self, url: Url, scope: &'static str) -> Result<Response> {
        self.send(Method::GET, url, Auth::Scoped(scope), None).await
    }

    pub(crate) async fn post_json<B: Serialize, T: DeserializeOwned>(
        &self,
        url: Url,
        scope: &'static str,
        body: &B,
    ) -> Result<T> {
        self.send_json(Method::POST, url, scope, body).await
    }

    /// Sends `body` as JSON with `method` and the scope header, and decodes the answer.
    pub(crate) async fn send_json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        scope: &'static str,
        body: &B,
    ) -> Result<T> {
        let body = encode(body)?;
        let response = self
            .send(method, url, Auth::Scoped(scope), Some(body))
            .await?;
        decode(response).await
    }

    /// Sends a request, retrying as the type's documentation says, and returns the first
    /// successful response or the error of the last attempt.
    pub(crate) async fn send(
        &self,
        method: Method,
        url: Url,
        auth: Auth,
        body: Option<Vec<u8>>,
    ) -> Result<Response> {
        let idempotent = method == Method::GET || method == Method::DELETE;
        if !matches!(auth, Auth::Anonymous) {
            self.renew_if_due().await?;
        }
        let request = self.build(method, url, auth, body)?;
        let mut retries = 0;
        loop {
            let attempt = request
                .try_clone()
                .expect("request bodies are in-memory bytes, which can always be cloned");
            match self.http.execute(attempt).await {
                Ok(response) if response.status().is_success() => return Ok(response),
                Ok(response) => {
                    let status = response.status();
                    if retries < MAX_RETRIES
                        && is_retryable_status(status, idempotent)
                        && let Some(delay) = retry_delay(response.headers(), retries)
                    {
                        drop(response);
                        tokio::time::sleep(delay).await;
                        retries += 1;
                        continue;
                    }
                    return Err(api_error(response).await);
                }
                Err(error) => {
                    // A connection that could not be made carried no request, so retrying
                    // it is safe; other failures are retried only for idempotent methods.
                    if retries < MAX_RETRIES && idempotent && error.is_connect() {
                        tokio::time::sleep(backoff(retries)).await;
                        retries += 1;
                        continue;
                    }
                    return Err(Error::Transport(error));
                }
            }
        }
    }

    pub(crate) fn build(
        &self,
        method: Method,
        url: Url,
        auth: Auth,
        body: Option<Vec<u8>>,
    ) -> Result<reqwest::Request> {
        let mut builder = self.http.request(method, url);
        match auth {
            Auth::Anonymous => {}
            Auth::Credential => builder = builder.header(AUTHORIZATION, self.authorization()?),
            Auth::Scoped(scope) => {
                builder = builder
                    .header(AUTHORIZATION, self.authorization()?)
                    .header(SCOPE_HEADER, HeaderValue::from_static(scope));
            }
        }
        if let Some(body) = body {
            builder = builder
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        Ok(builder.build()?)
    }

    /// The `Authorization` header, marked sensitive so that HTTP-level debug output hides it.
    fn authorization(&self) -> Result<HeaderValue> {
        let token = self.token.read().unwrap_or_else(|p| p.into_inner());
        let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose_secret()))
            .map_err(|_| Error::Config("the token cannot be sent in an HTTP header".to_owned()))?;
        value.set_sensitive(true);
        Ok(value)
    }
}

fn parse_host(host: &str) -> Result<Url> {
    let url = Url::parse(host.trim()).map_err(|e| {
        Error::Config(format!(
            "the host `{host}` is not a URL ({e}); expected e.g. {DEFAULT_HOST}"
        ))
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err(Error::Config(format!(
            "the host `{host}` must be an http:// or https:// URL, e.g. {DEFAULT_HOST}"
        )));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(Error::Config(format!(
            "the host `{host}` must not have a query or fragment"
        )));
    }
    Ok(url)
}

/// Appends the pairs that have a value; a URL without any keeps having no `?`.
pub(crate) fn append_query(url: &mut Url, pairs: &[(&str, Option<String>)]) {
    let mut present = pairs
        .iter()
        .filter_map(|(key, value)| value.as_deref().map(|value| (*key, value)))
        .peekable();
    if present.peek().is_some() {
        url.query_pairs_mut().extend_pairs(present);
    }
}

fn is_retryable_status(status: StatusCode, idempotent: bool) -> bool {
    // A 429 means the server refused the call before acting on it, so any method may be
    // retried. A 502, 503 or 504 may come after the upstream acted, so only calls that are
    // safe to repeat are.
    status == StatusCode::TOO_MANY_REQUESTS
        || (idempotent
            && matches!(
                status,
                StatusCode::BAD_GATEWAY
                    | StatusCode::SERVICE_UNAVAILABLE
                    | StatusCode::GATEWAY_TIMEOUT
            ))
}

/// How long to wait before the next retry: the server's `Retry-After` in seconds when it
/// sends one, else the backoff step. `None` when the server asks for a longer wait than
/// [`MAX_RETRY_AFTER`].
fn retry_delay(headers: &HeaderMap, retries: u32) -> Option<Duration> {
    let retry_after = headers
        .get(RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    match retry_after {
        Some(delay) if delay > MAX_RETRY_AFTER => None,
        Some(delay) => Some(delay),
        None => Some(backoff(retries)),
    }
}

/// Exponential backoff with "equal jitter": half of the step is fixed, the other half
/// random, so clients that failed together do not retry together.
fn backoff(retries: u32) -> Duration {
    let step = BASE_BACKOFF
        .saturating_mul(2u32.saturating_pow(retries))
        .min(MAX_BACKOFF);
    let half = step / 2;
    half + half.mul_f64(jitter_fraction())
}

/// A number in [0, 1) that varies from call to call. The clock's nanoseconds, scrambled by
/// a multiplicative hash, are plenty to spread retries; this needs no cryptographic quality.
fn jitter_fraction() -> f64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mixed = u64::from(nanos).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
    // 24 bits of the product, as a fraction of 2^24.
    mixed as f64 / (1u64 << 24) as f64
}

pub(crate) async fn api_error(response: Response) -> Error {
    let status = response.status().as_u16();
    let request_id = response
        .headers()
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    // A body that cannot be read still leaves the status and request id to report.
    let body = response.bytes().await.unwrap_or_default();
    Error::from_response(status, &body, request_id)
}

pub(crate) fn encode<B: Serialize>(body: &B) -> Result<Vec<u8>> {
    serde_json::to_vec(body).map_err(|e| Error::Decode(format!("cannot encode the request: {e}")))
}

pub(crate) async fn decode<T: DeserializeOwned>(response: Response) -> Result<T> {
    let bytes = response.bytes().await?;
    decode_bytes(&bytes)
}

/// Decodes a body, or gives `None` when the server answered without one (204).
async fn decode_if_present<T: DeserializeOwned>(response: Response) -> Result<Option<T>> {
    let bytes = response.bytes().await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    decode_bytes(&bytes).map(Some)
}

fn decode_bytes<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| {
        let expected = std::any::type_name::<T>().replace("datastack_sdk::types::", "");
        Error::Decode(format!("expected {expected}: {e}"))
    })
}
