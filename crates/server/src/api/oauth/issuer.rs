//! Client authentication at the OAuth endpoints, the clients kept in memory for it, and
//! issued tokens stored in group commits.

use axum::http::{HeaderMap, StatusCode, header};
use base64::Engine as _;
use chrono::Utc;
use datastack_core::id::{OAuthClientId, PrincipalId};
use datastack_core::model::{Status, Token};
use datastack_core::oauth::{self, ClientType, OAuthClient};
use datastack_store::Invalidation;
use secrecy::{ExposeSecret, SecretString};

use crate::audit::AuditContext;
use crate::state::AppState;

use super::*;

// ---------------------------------------------------------------------------------------
// Issuance in group commits.

/// The most tokens one commit stores.
const ISSUE_BATCH_MAX: usize = 256;

type Issued = (Token, OAuthClientId, datastack_store::Trail);
type IssueReply = tokio::sync::oneshot::Sender<Result<bool, String>>;

/// Stores issued access tokens in group commits: the token endpoint hands each token to
/// one task, which writes every token waiting (up to [`ISSUE_BATCH_MAX`]) in one
/// transaction while the previous commit runs, and answers each request once its token is
/// committed. Nothing is answered before its commit, so a token in an answer is never lost.
pub struct Issuer {
    tx: tokio::sync::mpsc::Sender<(Issued, IssueReply)>,
    /// The clients the token endpoint authenticated lately, with their subject's state, so
    /// that a client asking again costs no store query (dropped by the announcements of a
    /// change to the client, its owner or its workspace, and after the credential cache's
    /// TTL).
    clients: quick_cache::sync::Cache<String, std::sync::Arc<ClientEntry>>,
    ttl: std::time::Duration,
}

/// A client as the token endpoint last read it.
pub struct ClientEntry {
    pub(super) client: OAuthClient,
    /// The service principal its tokens act as, if it exists and it and its workspace are
    /// active; else why not.
    pub(super) subject: Result<PrincipalId, &'static str>,
    fetched: std::time::Instant,
}

/// How many clients a node keeps for its token endpoint.
const CLIENT_CACHE_CAPACITY: usize = 10_000;

impl Issuer {
    /// Forgets what `inv` names.
    pub fn invalidate(&self, inv: &Invalidation) {
        match inv {
            Invalidation::OAuthClient(id) | Invalidation::OAuthClientChanged(id) => {
                self.clients.remove(id);
            }
            Invalidation::Principal(p) => {
                let victims: Vec<String> = self
                    .clients
                    .iter()
                    .filter(|(_, e)| e.client.owner_id.as_ref().is_some_and(|o| o.as_str() == p))
                    .map(|(k, _)| k)
                    .collect();
                for k in victims {
                    self.clients.remove(&k);
                }
            }
            Invalidation::Workspace(_) | Invalidation::WorkspaceTree(_) | Invalidation::All => {
                self.clients.clear();
            }
            Invalidation::Token(_)
            | Invalidation::Credential(_)
            | Invalidation::Issuer(_)
            | Invalidation::Routes
            | Invalidation::IpLists(_)
            | Invalidation::Penalty(_)
            | Invalidation::Heartbeat => {}
        }
    }

    fn cached(&self, id: &OAuthClientId) -> Option<std::sync::Arc<ClientEntry>> {
        self.clients
            .get(id.as_str())
            .filter(|e| e.fetched.elapsed() < self.ttl)
    }

    /// An issuer writing to `store`; its task ends when the issuer is dropped. Clients are
    /// kept for at most `ttl`.
    pub fn new(store: datastack_store::Store, ttl: std::time::Duration) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(Issued, IssueReply)>(4 * ISSUE_BATCH_MAX);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while batch.len() < ISSUE_BATCH_MAX {
                    match rx.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                let (items, replies): (Vec<Issued>, Vec<IssueReply>) = batch.into_iter().unzip();
                match store.insert_oauth_access_tokens(&items).await {
                    Ok(stored) => {
                        for (reply, ok) in replies.into_iter().zip(stored) {
                            let _ = reply.send(Ok(ok));
                        }
                    }
                    Err(e) => {
                        let message = e.to_string();
                        for reply in replies {
                            let _ = reply.send(Err(message.clone()));
                        }
                    }
                }
            }
        });
        Self {
            tx,
            clients: quick_cache::sync::Cache::new(CLIENT_CACHE_CAPACITY),
            ttl,
        }
    }

    /// Stores one token with its trail; `Ok(false)` when its client or owner is gone.
    pub(super) async fn store(&self, item: Issued) -> Result<bool, OAuthError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let unavailable = || {
            OAuthError::new(
                "temporarily_unavailable",
                "the server cannot answer now; try again",
            )
        };
        self.tx
            .send((item, reply))
            .await
            .map_err(|_| unavailable())?;
        match answer.await {
            Ok(Ok(stored)) => Ok(stored),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "storing issued OAuth access tokens failed");
                Err(unavailable())
            }
            Err(_) => Err(unavailable()),
        }
    }
}

/// Authenticates the client of a token-endpoint request: `client_secret_basic`,
/// `client_secret_post` or `private_key_jwt`, never two; a public client by its
/// `client_id` alone. Every failure is the same `invalid_client`.
pub(super) async fn authenticate_client(
    state: &AppState,
    headers: &HeaderMap,
    form: &Form,
    audit: &AuditContext,
) -> Result<std::sync::Arc<ClientEntry>, OAuthError> {
    if let Some(kind) = form.get("client_assertion_type") {
        return authenticate_assertion(state, headers, form, audit, kind).await;
    }
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"));
    let (client_id, secret): (String, Option<SecretString>) = match basic {
        Some((_, encoded)) => {
            if form.get("client_secret").is_some() {
                return Err(OAuthError::new(
                    "invalid_request",
                    "the client authenticated twice (Authorization: Basic and client_secret)",
                ));
            }
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    OAuthError::new(
                        "invalid_client",
                        "the Basic credentials are not base64 of id:secret",
                    )
                })?;
            let (id, secret) = decoded.split_once(':').ok_or_else(|| {
                OAuthError::new(
                    "invalid_client",
                    "the Basic credentials are not base64 of id:secret",
                )
            })?;
            // RFC 6749 §2.3.1: both halves are form-urlencoded first.
            let unescape = |s: &str| -> String {
                form_urlencoded::parse(format!("x={s}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            };
            (unescape(id), Some(SecretString::from(unescape(secret))))
        }
        None => (
            form.get("client_id").unwrap_or_default().to_owned(),
            form.get("client_secret")
                .map(|s| SecretString::from(s.to_owned())),
        ),
    };
    let failed = || OAuthError::new("invalid_client", "unknown client or wrong secret");
    let id = OAuthClientId::parse(&client_id).map_err(|_| failed())?;
    audit.set_resource_id(id.as_str());
    let Some((entry, from_cache)) = kept_or_loaded(state, &id).await? else {
        return Err(failed());
    };
    if entry.client.client_type == ClientType::Public {
        // A public client (RFC 6749 §2.1) has no secret: it names itself and proves
        // nothing, so it may only use the grants that rest on something else (a user's
        // approval, a refresh token); its creation allowed no others. One that sends a
        // secret is confused, and told so.
        if secret.is_some_and(|s| !s.expose_secret().is_empty()) {
            return Err(OAuthError::new(
                "invalid_client",
                "a public client has no secret; send only client_id",
            ));
        }
        return Ok(entry);
    }
    // From here on, every failure is counted against the client, whatever the secret was.
    let Some(digest) = secret
        .as_ref()
        .and_then(|s| oauth::parse_client_secret(s.expose_secret()))
    else {
        return Err(client_failure(state, &id).await);
    };
    let now = Utc::now();
    if entry.client.secret_matches(&digest, now) {
        return Ok(entry);
    }
    // A cached copy may predate a rotation on another node whose announcement is still on
    // its way: a mismatch is checked against the store before it counts.
    if from_cache
        && let Some(fresh) = load_client(state, &id).await?
        && fresh.client.secret_matches(&digest, now)
    {
        return Ok(fresh);
    }
    Err(client_failure(state, &id).await)
}

/// RFC 7523's client assertion type.
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The longest client assertion read.
const MAX_ASSERTION_LEN: usize = 8192;

/// `private_key_jwt` (RFC 7523 §2.2): the client proves itself with a JWT signed by one of
/// its registered keys, each assertion used once.
async fn authenticate_assertion(
    state: &AppState,
    headers: &HeaderMap,
    form: &Form,
    audit: &AuditContext,
    kind: &str,
) -> Result<std::sync::Arc<ClientEntry>, OAuthError> {
    let failed = || OAuthError::new("invalid_client", "unknown client or invalid assertion");
    if kind != JWT_BEARER {
        return Err(OAuthError::new(
            "invalid_client",
            format!("client_assertion_type must be {JWT_BEARER}"),
        ));
    }
    if headers.contains_key(header::AUTHORIZATION) || form.get("client_secret").is_some() {
        return Err(OAuthError::new(
            "invalid_request",
            "the client authenticated twice (an assertion and a secret)",
        ));
    }
    let assertion = form
        .get("client_assertion")
        .ok_or_else(|| OAuthError::new("invalid_request", "client_assertion is missing"))?;
    if assertion.len() > MAX_ASSERTION_LEN {
        return Err(failed());
    }
    // The client: `client_id` when sent, else the assertion's `sub`, read unverified only
    // to find whose keys to verify it with.
    let claimed = form.get("client_id").map(str::to_owned).or_else(|| {
        let payload = assertion.split('.').nth(1)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        v.get("sub")?.as_str().map(str::to_owned)
    });
    let id = claimed
        .and_then(|c| OAuthClientId::parse(&c).ok())
        .ok_or_else(failed)?;
    audit.set_resource_id(id.as_str());
    let Some((mut entry, from_cache)) = kept_or_loaded(state, &id).await? else {
        return Err(failed());
    };
    let base = public_base(state, headers);
    let audiences: Vec<String> = std::iter::once(state.edge.signer.issuer.clone())
        .chain(
            ["token", "revoke", "introspect", "device_authorization"]
                .iter()
                .map(|e| format!("{base}/oauth2/{e}")),
        )
        .collect();
    let mut verified = state
        .federation
        .verify_client_assertion(&entry.client, assertion, &audiences)
        .await;
    // A kept copy may predate a change of the client's keys on another node.
    if verified.is_err()
        && from_cache
        && let Some(fresh) = load_client(state, &id).await?
    {
        verified = state
            .federation
            .verify_client_assertion(&fresh.client, assertion, &audiences)
            .await;
        entry = fresh;
    }
    let assertion = match verified {
        Ok(a) => a,
        Err(why) => {
            tracing::debug!(client_id = %id, why, "a client assertion was refused");
            return Err(client_failure(state, &id).await);
        }
    };
    // Each assertion works once (RFC 7523 §3: the jti), on every node.
    if !state
        .store
        .use_assertion_jti(&id, &assertion.jti, assertion.expires_at)
        .await?
    {
        tracing::debug!(client_id = %id, "a client assertion was replayed");
        return Err(client_failure(state, &id).await);
    }
    Ok(entry)
}

/// The client as this node keeps it (`true`), or read from the store (`false`); `None` if
/// there is no such client.
async fn kept_or_loaded(
    state: &AppState,
    id: &OAuthClientId,
) -> Result<Option<(std::sync::Arc<ClientEntry>, bool)>, OAuthError> {
    if let Some(entry) = state.oauth.cached(id) {
        return Ok(Some((entry, true)));
    }
    Ok(load_client(state, id).await?.map(|entry| (entry, false)))
}

/// Reads a client and its subject's state from the store and keeps them for the token
/// endpoint; `None` if there is no such client.
async fn load_client(
    state: &AppState,
    id: &OAuthClientId,
) -> Result<Option<std::sync::Arc<ClientEntry>>, OAuthError> {
    let client = match state.store.get_oauth_client(None, id).await {
        Ok(c) => c,
        Err(datastack_store::Error::NotFound) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let subject = match &client.owner_id {
        None => Err("the client has no service principal"),
        Some(owner_id) => {
            match state
                .store
                .get_principal(
                    &client.workspace_id,
                    datastack_core::model::PrincipalKind::ServicePrincipal,
                    owner_id,
                )
                .await
            {
                Ok(owner) => {
                    let workspace = state.store.get_workspace(&client.workspace_id).await?;
                    if owner.status == Status::Active && workspace.status == Status::Active {
                        Ok(owner.id)
                    } else {
                        Err("the client's service principal or its workspace is suspended")
                    }
                }
                Err(datastack_store::Error::NotFound) => {
                    Err("the client's service principal no longer exists")
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    let entry = std::sync::Arc::new(ClientEntry {
        client,
        subject,
        fetched: std::time::Instant::now(),
    });
    state.oauth.clients.insert(id.to_string(), entry.clone());
    Ok(Some(entry))
}

/// Failed authentications of one client allowed per minute, from all addresses together
/// (each address is limited on its own besides, as every request without a credential).
pub const CLIENT_FAILURES_PER_MINUTE: u32 = 30;

/// The answer to a failed authentication of a known client: counted in the client's
/// bucket of failures, and once that is empty answered 429 (with `Retry-After`) instead
/// of 401, so a guesser learns to stop; a client presenting its right secret is never
/// refused by it. The bucket's owner keeps sending: an abuse flag, as for a credential.
async fn client_failure(state: &AppState, client: &OAuthClientId) -> OAuthError {
    let verdict = state
        .edge
        .limiter
        .check(&[crate::edge::ratelimit::Bucket {
            subject: crate::edge::ratelimit::Subject::Credential(client.to_string()),
            per_minute: CLIENT_FAILURES_PER_MINUTE,
        }])
        .await;
    if verdict.allowed() {
        return OAuthError::new("invalid_client", "unknown client or wrong secret");
    }
    let mut refused = OAuthError::new(
        "invalid_client",
        "too many failed authentications of this client; wait before trying again",
    );
    refused.status = StatusCode::TOO_MANY_REQUESTS;
    refused.retry_after = Some(verdict.retry_after.map_or(60, |d| d.as_secs()));
    refused
}
