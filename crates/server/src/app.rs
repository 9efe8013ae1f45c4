//! Building and running one node: open and migrate the store, bootstrap on first start,
//! bind, serve, and shut down gracefully (drain in-flight requests, flush batches).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware::from_fn_with_state;
use chrono::Utc;
use datastack_core::audit::{AuditKey, AuditRecord, SecurityEvent};
use datastack_core::authz::Role;
use datastack_core::credential::{self, CredentialKind};
use datastack_core::id::{PrincipalId, WorkspaceId};
use datastack_core::model::{Principal, PrincipalKind, Status, Workspace, WorkspaceSettings};
use datastack_core::scope::ScopeSet;
use datastack_core::validate::Email;
use datastack_store::{Store, StoreConfig, Trail};
use secrecy::SecretString;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower_http::catch_panic::CatchPanicLayer;

use crate::api::issuance::new_token_record;
use crate::audit::AuditLog;
use crate::config::Config;
use crate::credentials::CredentialVerifier;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::pipeline;
use crate::state::{AppState, NodeState};
use crate::workers;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store could not be opened or migrated.
    #[error("cannot open the store: {0}")]
    Store(#[from] datastack_store::Error),
    /// Another `datastack serve` holds the embedded store's data directory.
    #[error(
        "another datastack process is serving from {0}; stop it first (two nodes need PostgreSQL)"
    )]
    DataDirInUse(String),
    /// The data directory's lock file could not be created.
    #[error("cannot lock the data directory {dir}: {source}")]
    Lock {
        /// The directory.
        dir: String,
        /// Why.
        source: std::io::Error,
    },
    /// The audit key could not be read or created.
    #[error("{0}")]
    AuditKey(String),
    /// The signing key could not be read or created.
    #[error("{0}")]
    SigningKey(String),
    /// Edge enforcement could not start (routes, signing key, Redis URL).
    #[error("{0}")]
    Edge(String),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A built node, bound and ready to serve.
pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    router: Router,
    state: AppState,
    admin_token: Option<SecretString>,
    shutdown_tx: watch::Sender<bool>,
    /// Stops the workers, after the server has drained, so their last flush sees every
    /// request.
    workers_stop_tx: watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
    /// Held while serving from an embedded store, released when the node stops.
    _data_dir_lock: Option<std::fs::File>,
}

/// Tells a running node to stop; see [`Application::shutdown_handle`].
#[derive(Clone)]
pub struct ShutdownHandle(watch::Sender<bool>);

impl ShutdownHandle {
    /// Starts a graceful shutdown.
    pub fn shutdown(&self) {
        self.0.send_replace(true);
    }
}

/// Opens the store described by `config`.
pub fn store_config(config: &Config) -> StoreConfig {
    match &config.database_url {
        Some(url) => StoreConfig::Postgres {
            url: url.clone(),
            max_connections: config.database_max_connections,
            statement_timeout: config.connections.database_statement_timeout,
            lock_timeout: config.connections.database_lock_timeout,
        },
        None => StoreConfig::Sqlite {
            dir: config.data_dir.clone(),
        },
    }
}

/// Opens the store described by `config`, applies its migrations and closes it.
pub async fn migrate(config: &Config) -> Result<(), StartError> {
    let store = Store::open(&store_config(config)).await?;
    let result = store.migrate().await;
    store.close().await;
    Ok(result?)
}

/// Why a recovery token could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    /// The store could not be opened or read.
    #[error(transparent)]
    Store(#[from] datastack_store::Error),
    /// No principal fits.
    #[error("{0}")]
    NoAdmin(String),
}

/// How long a break-glass token lives.
pub const RECOVERY_TOKEN_HOURS: i64 = 24;

/// Break-glass: issues a short-lived `all-apis` token to an active admin of the root
/// workspace (or of `workspace`), chosen by `email` or, without one, the oldest. Needs
/// direct access to the store, like `migrate`, so only an operator of the deployment can
/// run it. Returns the admin's id and the token.
pub async fn recover_admin_token(
    config: &Config,
    workspace: Option<&str>,
    email: Option<&str>,
) -> Result<(String, SecretString), RecoverError> {
    let workspace = workspace
        .map(WorkspaceId::parse)
        .transpose()
        .map_err(|e| RecoverError::NoAdmin(format!("--workspace {e}")))?;
    let email = email
        .map(Email::parse)
        .transpose()
        .map_err(|e| RecoverError::NoAdmin(format!("--email {e}")))?;
    let key = load_audit_key(config, false).map_err(|e| RecoverError::NoAdmin(e.to_string()))?;
    let store = Store::open(&store_config(config))
        .await?
        .with_audit_key(Arc::new(key));
    store.migrate().await?;
    store.check_audit_key().await?;
    let admin = store
        .find_active_admin(workspace.as_ref(), email.as_ref())
        .await
        .map_err(|e| match e {
            datastack_store::Error::NotFound => RecoverError::NoAdmin(
                "no active admin matches: check --workspace and --email (users list shows them)"
                    .into(),
            ),
            other => other.into(),
        });
    let admin = match admin {
        Ok(a) => a,
        Err(e) => {
            store.close().await;
            return Err(e);
        }
    };
    let secret = credential::generate(CredentialKind::PersonalAccessToken);
    let expires = Utc::now() + chrono::Duration::hours(RECOVERY_TOKEN_HOURS);
    let token = new_token_record(
        &admin,
        "recovery admin token",
        ScopeSet::all_apis(),
        Some(expires),
        &secret,
    );
    let mut record = AuditRecord::system(admin.workspace_id.clone(), "tokens.recover", "tokens");
    record.principal_id = Some(admin.id.to_string());
    record.resource_id = Some(token.id.to_string());
    record.detail = Some(
        serde_json::json!({ "via": "datastack recover-admin-token", "expiresAt": expires })
            .to_string(),
    );
    let trail = Trail::of(record).with_event(SecurityEvent::new(
        admin.workspace_id.clone(),
        "token.created",
        serde_json::json!({
            "tokenId": token.id,
            "ownerId": admin.id,
            "scopes": token.scopes,
            "expiresAt": expires,
            "reason": "break-glass recovery",
        }),
    ));
    let inserted = store.insert_token(&token, &trail).await;
    store.close().await;
    inserted?;
    Ok((admin.id.to_string(), secret.secret))
}

impl Application {
    /// Opens and migrates the store, bootstraps it if it is new, and binds the listener.
    pub async fn build(config: Config) -> Result<Self, StartError> {
        // The address first: a start whose port is taken creates nothing (no data
        // directory, key or database).
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let data_dir_lock = lock_data_dir(&config)?;
        let store = Store::open(&store_config(&config)).await?;
        store.migrate().await?;
        let key = audit_key_for(&config, &store).await?;
        let webhooks = Arc::new(crate::webhooks::Webhooks::new(
            config.webhooks.clone(),
            &key,
        ));
        let oauth_keys = Arc::new(crate::oauth_keys::KeyRing::new(
            config.oauth_signing_key_rotation,
            config.oauth_signing_key_publish_ahead,
            &key,
        ));
        let store = store.with_audit_key(Arc::new(key));
        store.check_audit_key().await?;
        // Everything that can still fail comes before the bootstrap: a first start that
        // created the admin and then could not serve would lose the one-time token.
        // Subscribe before serving, so no revocation committed after start is missed.
        let invalidations = store.listen_invalidations().await?;
        let metrics = Arc::new(Metrics::new());
        let seed = load_signing_key(&config)?;
        let edge = crate::edge::Edge::new(&store, &config, metrics.clone(), &seed)
            .await
            .map_err(StartError::Edge)?;
        let admin_token = bootstrap(&store).await?;
        let root = store.root_workspace_id().await?.ok_or_else(|| {
            StartError::Store(datastack_store::Error::Corrupt(
                "the store has no root workspace".into(),
            ))
        })?;
        edge.set_root_workspace(root.clone());
        let federation = Arc::new(crate::federation::Federation::new(store.clone()));
        federation.reload().await?;
        oauth_keys.refresh(&store, edge.signer.jwks()).await?;
        let credentials = Arc::new(
            CredentialVerifier::new(
                store.clone(),
                config.cache_capacity,
                config.cache_ttl,
                metrics.clone(),
            )
            .with_negative_cache(config.floods.negative_cache_ttl)
            .with_federation(federation.clone()),
        );
        let (audit, audit_rx) = AuditLog::new(&config, root);
        let audit = Arc::new(audit);
        let config = Arc::new(config);
        let state = AppState::new(NodeState {
            store: store.clone(),
            credentials: credentials.clone(),
            metrics: metrics.clone(),
            config: config.clone(),
            audit: audit.clone(),
            edge: Arc::new(edge),
            oauth: Arc::new(crate::api::oauth::Issuer::new(
                store.clone(),
                config.cache_ttl,
            )),
            federation,
            oauth_keys: oauth_keys.clone(),
            webhooks,
        });
        let (shutdown_tx, _) = watch::channel(false);
        let (workers_stop_tx, shutdown_rx) = watch::channel(false);
        let mut worker_handles = vec![
            tokio::spawn(workers::usage::usage_flusher(
                credentials.clone(),
                metrics.clone(),
                config.usage_flush_interval,
                shutdown_rx.clone(),
            )),
            tokio::spawn(workers::audit_writer::audit_writer(
                store.clone(),
                audit_rx,
                config.clone(),
                metrics.clone(),
                audit.clone(),
                shutdown_rx.clone(),
            )),
            tokio::spawn(workers::maintenance::maintenance(
                store.clone(),
                credentials.clone(),
                config.clone(),
                metrics.clone(),
                shutdown_rx.clone(),
            )),
            tokio::spawn(workers::edge::edge_refresher(
                state.clone(),
                shutdown_rx.clone(),
            )),
            tokio::spawn(workers::usage::spend_flusher(
                state.edge.clone(),
                shutdown_rx.clone(),
            )),
            tokio::spawn(signing_keys(state.clone(), shutdown_rx.clone())),
            tokio::spawn(workers::webhook_dispatcher::webhook_dispatcher(
                state.clone(),
                shutdown_rx.clone(),
            )),
        ];
        if let Some(listener) = invalidations {
            worker_handles.push(tokio::spawn(workers::invalidations::revocation_listener(
                store.clone(),
                listener,
                state.clone(),
                shutdown_rx,
            )));
        }
        if !addr.ip().is_loopback() {
            tracing::warn!(
                addr = %addr,
                "serving plain HTTP on a non-loopback address: credentials cross the network in \
                 clear unless a TLS-terminating proxy is in front (built-in TLS is planned)"
            );
        }
        let router = router(state.clone());
        Ok(Self {
            listener,
            addr,
            router,
            state,
            admin_token,
            shutdown_tx,
            workers_stop_tx,
            workers: worker_handles,
            _data_dir_lock: data_dir_lock,
        })
    }

    /// The bound address (the port is the real one when the config said port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The first admin's token, on the first start of a new store only; taken once.
    pub fn take_admin_token(&mut self) -> Option<SecretString> {
        self.admin_token.take()
    }

    /// A handle that stops the node gracefully.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shutdown_tx.clone())
    }

    /// Serves until SIGINT/SIGTERM or the shutdown handle, drains in-flight requests (for
    /// at most `shutdown_drain_timeout`, then drops the connections left), stops the
    /// workers (which flush their batches) and closes the store.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let stop = self.shutdown_tx.subscribe();
        let signal_tx = self.shutdown_tx.clone();
        let signal = shutdown_signal();
        tokio::spawn(async move {
            signal.await;
            signal_tx.send_replace(true);
        });
        let limits = &self.state.config.connections;
        let file_limit = crate::serve::open_file_limit();
        let cap = limits.connection_cap(file_limit, self.state.config.database_max_connections);
        if let (Some(limit), Some(configured)) = (file_limit, limits.max_client_connections)
            && configured as u64 >= limit
        {
            tracing::warn!(
                max_client_connections = configured,
                open_file_limit = limit,
                "max_client_connections is not below the open-file limit: accepting will fail \
                 with \"too many open files\" before the cap is reached; raise the limit \
                 (ulimit -n, LimitNOFILE=) or lower the cap"
            );
        }
        tracing::info!(
            addr = %self.addr,
            backend = ?self.state.store.backend(),
            max_client_connections = cap,
            open_file_limit = ?file_limit,
            "serving"
        );
        let fast = self
            .state
            .config
            .fast_path
            .then(|| crate::fast::FastPath::new(self.state.clone()));
        crate::serve::serve(
            self.listener,
            self.router,
            fast,
            limits,
            cap,
            self.state.metrics.clone(),
            stop,
        )
        .await;
        // In-flight requests have drained: now stop the workers, which flush their batches.
        self.workers_stop_tx.send_replace(true);
        for worker in self.workers {
            let _ = worker.await;
        }
        self.state.store.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// The audit key: `audit_key` from the configuration, or the key file (default
/// `<data_dir>/audit.key`), created when `create` is set and there is none.
pub fn load_audit_key(config: &Config, create: bool) -> Result<AuditKey, StartError> {
    use secrecy::ExposeSecret;
    if let Some(hex) = &config.audit_key {
        return AuditKey::from_hex(hex.expose_secret())
            .map_err(|e| StartError::AuditKey(format!("audit_key: {e}")));
    }
    let path = audit_key_path(config);
    let text = key_file(&path, create, "audit", || {
        AuditKey::generate().to_hex().as_str().to_owned()
    })
    .map_err(StartError::AuditKey)?;
    AuditKey::from_hex(&text).map_err(|e| StartError::AuditKey(format!("{}: {e}", path.display())))
}

/// The audit key of a node starting on `store`: the configured one, or the key file; a
/// missing key file is created only for a store that has no audit log yet. A node that
/// joins a store written with another key, without that key, stops before writing a key
/// of its own.
async fn audit_key_for(config: &Config, store: &Store) -> Result<AuditKey, StartError> {
    let configured =
        config.audit_key.is_some() || audit_key_path(config).try_exists().unwrap_or(true);
    if !configured && let Some(stored) = store.recorded_audit_key_fingerprint().await? {
        return Err(StartError::AuditKey(format!(
            "this store's audit log is signed with a key (fingerprint {stored}) that this node does not have: \
             no audit_key is set and {} does not exist; give every node the deployment's key \
             (audit_key_file or DATASTACK_AUDIT_KEY)",
            audit_key_path(config).display()
        )));
    }
    load_audit_key(config, true)
}

/// Where the audit key file is: `audit_key_file`, or `<data_dir>/audit.key`.
fn audit_key_path(config: &Config) -> std::path::PathBuf {
    config
        .audit_key_file
        .clone()
        .unwrap_or_else(|| config.data_dir.join("audit.key"))
}

/// The Ed25519 seed that signs identity assertions: `signing_key`, or the key file
/// (default `<data_dir>/signing.key`), created on first start.
pub fn load_signing_key(config: &Config) -> Result<[u8; 32], StartError> {
    use secrecy::ExposeSecret;
    if let Some(hex) = &config.signing_key {
        return crate::config::parse_seed(hex.expose_secret())
            .ok_or_else(|| StartError::SigningKey("signing_key: not 64 hex characters".into()));
    }
    let path = config
        .signing_key_file
        .clone()
        .unwrap_or_else(|| config.data_dir.join("signing.key"));
    let text = key_file(&path, true, "signing", || {
        let mut seed = [0u8; 32];
        // The operating system's generator; failing it, no key is better than a weak one.
        getrandom::fill(&mut seed).expect("the operating system's random generator works");
        hex::encode(seed)
    })
    .map_err(StartError::SigningKey)?;
    crate::config::parse_seed(&text)
        .ok_or_else(|| StartError::SigningKey(format!("{}: not 64 hex characters", path.display())))
}

/// Reads a key file, or, when `create` is set and it does not exist, creates it with
/// `generate()`, readable only by its owner: written to a temporary file, synced, then
/// renamed into place, so a crash never leaves a partial key.
fn key_file(
    path: &std::path::Path,
    create: bool,
    what: &str,
    generate: impl FnOnce() -> String,
) -> Result<String, String> {
    let unreadable =
        |e: std::io::Error| format!("cannot read the {what} key file {}: {e}", path.display());
    match std::fs::read_to_string(path) {
        Ok(text) => return Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(unreadable(e)),
    }
    if !create {
        return Err(format!(
            "no {what} key: {} does not exist and the key is not configured; use the key the servers use",
            path.display()
        ));
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."))
        .to_path_buf();
    std::fs::create_dir_all(&dir).map_err(unreadable)?;
    let temp = dir.join(format!(".{what}.key.{}", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    {
        use std::io::Write;
        let mut file = options.open(&temp).map_err(unreadable)?;
        file.write_all(generate().as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(unreadable)?;
    }
    // Another process may have created the key meanwhile: the first rename wins, and
    // everyone reads what is in place.
    if path.exists() {
        let _ = std::fs::remove_file(&temp);
    } else {
        std::fs::rename(&temp, path).map_err(unreadable)?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        tracing::info!(path = %path.display(), "created the {what} key");
    }
    std::fs::read_to_string(path).map_err(unreadable)
}

/// On the embedded store, takes an exclusive lock on `<data_dir>/serve.lock`: a second node
/// on the same SQLite file would never hear this node's revocations. The operating system
/// releases the lock when the process ends, however it ends.
fn lock_data_dir(config: &Config) -> Result<Option<std::fs::File>, StartError> {
    if config.database_url.is_some() {
        return Ok(None);
    }
    let dir = &config.data_dir;
    let lock_error = |source| StartError::Lock {
        dir: dir.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(lock_error)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("serve.lock"))
        .map_err(lock_error)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(StartError::DataDirInUse(dir.display().to_string()))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(lock_error(e)),
    }
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is called, not
/// when the future is first polled: a supervisor may signal as soon as the node says it is
/// serving, and a signal that came before the handler would kill the process without its
/// drain and final flush.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                (Ok(mut one), Err(_)) | (Err(_), Ok(mut one)) => {
                    one.recv().await;
                }
                (Err(_), Err(_)) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The routes: the API (with its handlers' deadline), forward-auth, and the gateway as the
/// fallback for every other path.
fn routes(state: &AppState) -> Router<AppState> {
    let request_timeout = state.config.connections.request_timeout;
    Router::from(crate::api::routes())
        // API handlers have a deadline; the gateway (added after this layer, so not under
        // it) has its routes' upstream timeouts, and its tunnels live as long as they are
        // used.
        .layer(axum::middleware::from_fn(move |req, next| {
            pipeline::deadline::deadline(request_timeout, req, next)
        }))
        .merge(crate::api::gateway::decision_routes())
        // Paths that are not API routes go to the gateway, which proxies those under a
        // route's prefix and answers 404 to the rest.
        .fallback(crate::edge::proxy::gateway)
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
}

/// The whole HTTP surface: the routes, then the pipeline stages from the outside in.
pub fn router(state: AppState) -> Router {
    let max_body = state.config.max_body_bytes;
    routes(&state)
        // Stages run top to bottom for a request: `layer` wraps what is above it, so the
        // last one added runs first: request id (and audit, client IP) → panic guard →
        // authenticate → IP access lists → rate limit → handler (authorize) or gateway.
        .layer(from_fn_with_state(
            state.clone(),
            crate::edge::rate_limit_stage,
        ))
        .layer(from_fn_with_state(
            state.clone(),
            crate::edge::ip_lists_stage,
        ))
        .layer(from_fn_with_state(
            state.clone(),
            pipeline::authenticate::authenticate,
        ))
        .layer(CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| {
                axum::response::IntoResponse::into_response(ApiError::Internal(
                    "a handler panicked".into(),
                ))
            },
        ))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(from_fn_with_state(
            state.clone(),
            pipeline::request_id::request_id,
        ))
        .with_state(state)
}

/// The routes for the fast path (`fast.rs`), which has run the stages itself: only the
/// body limit, and a layer that tells the request's audit context which route matched.
pub fn fast_router(state: AppState) -> Router {
    let max_body = state.config.max_body_bytes;
    routes(&state)
        .layer(axum::middleware::from_fn(crate::fast::note_route))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// On a store that was never bootstrapped, creates the `default` workspace, an admin and
/// the admin's `all-apis` token, and returns the token. `None` on every later start.
async fn bootstrap(store: &Store) -> Result<Option<SecretString>, datastack_store::Error> {
    let now = Utc::now();
    let ws = Workspace {
        id: WorkspaceId::generate(),
        name: "default".to_owned(),
        parent_id: None,
        settings: WorkspaceSettings::default(),
        status: Status::Active,
        created_at: now,
        updated_at: now,
    };
    let admin = Principal {
        id: PrincipalId::generate_user(),
        kind: PrincipalKind::User,
        workspace_id: ws.id.clone(),
        email: Some(Email::from_trusted("admin@datastack.local".to_owned())),
        name: "Administrator".to_owned(),
        role: Role::Admin,
        status: Status::Active,
        created_at: now,
        updated_at: now,
    };
    let secret = credential::generate(CredentialKind::PersonalAccessToken);
    let token = new_token_record(
        &admin,
        "bootstrap admin token",
        ScopeSet::all_apis(),
        None,
        &secret,
    );
    let mut record = AuditRecord::system(ws.id.clone(), "workspaces.bootstrap", "workspaces");
    record.resource_id = Some(ws.id.to_string());
    record.detail =
        Some(serde_json::json!({ "adminId": admin.id, "adminTokenId": token.id }).to_string());
    let trail = Trail::of(record).with_event(SecurityEvent::new(
        ws.id.clone(),
        "token.created",
        serde_json::json!({ "tokenId": token.id, "ownerId": admin.id, "scopes": token.scopes, "reason": "bootstrap" }),
    ));
    let created = store.bootstrap(&ws, &admin, &token, &trail).await?;
    Ok(created.then_some(secret.secret))
}

/// Keeps the OAuth signing keys current (created ahead, loaded, retired) on the key
/// ring's tick, until `stop`.
async fn signing_keys(state: AppState, mut stop: watch::Receiver<bool>) {
    let Some(tick) = state.oauth_keys.tick() else {
        return;
    };
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        if let Err(e) = state
            .oauth_keys
            .refresh(&state.store, state.edge.signer.jwks())
            .await
        {
            tracing::warn!(error = %e, "cannot refresh the OAuth signing keys; the loaded ones keep signing");
        }
    }
}
