//! The audit log as the server uses it: the per-request context the pipeline stages and
//! handlers fill in, the bounded queue to the group-commit writer, and the names of actions.
//!
//! Durability promise (see `docs/audit.md`):
//! - a management change writes its entry in its own transaction: no change without its
//!   entry, ever;
//! - every other entry (reads, refusals, failures) is queued after the response and written
//!   by the writer in group commits; a clean shutdown writes everything queued; a crash
//!   loses at most what was queued and not yet committed (bounded by the queue capacity,
//!   in practice the last few milliseconds of traffic). With `audit_durability = "sync"` a
//!   response waits for its entry's commit, and a crash loses nothing that was answered;
//! - the queue is bounded: when it is full a request waits up to `audit_enqueue_timeout`
//!   for room and is then refused with 503 before it runs; a request that finds the queue
//!   filled when it ends waits as long for room and is answered 503 (its result withheld)
//!   if there is none. So no answer goes out without its entry queued, and a stuck audit
//!   store never stalls requests indefinitely.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, MatchedPath};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, Uri};
use datastack_core::audit::{AuditRecord, MAX_USER_AGENT, Outcome, SecurityEvent, now_micros};
use datastack_core::bounded;
use datastack_core::id::{AuditId, WorkspaceId};
use datastack_core::scope::Scope;
use datastack_store::Trail;
use tokio::sync::{mpsc, oneshot};

use crate::config::{AuditDurability, Config};
use crate::credentials::Identity;
use crate::error::ApiError;

mod groups;

pub use groups::{Counters as AggregationCounters, DecisionKey, MAX_GROUPS, OVERFLOW_ACTION, Pins};

/// An entry on its way to the writer; `ack` is answered once it is committed.
pub struct Queued {
    /// The entry.
    pub record: AuditRecord,
    /// Told when the entry is committed (sync durability).
    pub ack: Option<oneshot::Sender<()>>,
    /// How many requests the entry stands for (more than 1 for an aggregated entry), so
    /// that the failure-burst detector counts every refusal.
    pub count: u64,
}

/// The node's side of the audit log: the queue to the writer and its policy.
pub struct AuditLog {
    tx: mpsc::Sender<Queued>,
    durability: AuditDurability,
    enqueue_timeout: Duration,
    successful_reads: bool,
    /// The chain of entries that belong to no workspace (an unknown credential).
    root_workspace: WorkspaceId,
    /// Allowed forward-auth decisions and refusals waiting to be written as one entry per
    /// group each second (with a count).
    groups: groups::Groups,
    /// Whether successful reads are aggregated (batched durability only).
    aggregate_reads: bool,
    /// Successful reads waiting for the writer's next commit, one entry per group.
    reads: groups::Reads,
    /// Wakes the writer when a read starts a group (the reads of a group cost no queue
    /// slot, so the queue alone would not wake it).
    reads_started: tokio::sync::Notify,
}

impl AuditLog {
    /// A log whose writer reads the returned receiver.
    pub fn new(config: &Config, root_workspace: WorkspaceId) -> (Self, mpsc::Receiver<Queued>) {
        let (tx, rx) = mpsc::channel(config.audit_queue_capacity);
        (
            Self {
                tx,
                durability: config.audit_durability,
                enqueue_timeout: config.audit_enqueue_timeout,
                successful_reads: config.audit_successful_reads,
                root_workspace,
                groups: groups::Groups::new(config.floods.audit_refusal_groups),
                aggregate_reads: config.audit_aggregate_reads
                    && config.audit_durability == AuditDurability::Batched,
                // Reads held in groups cost a tenth of a queued entry: four times the
                // queue's capacity bounds them.
                reads: groups::Reads::new(config.audit_queue_capacity.saturating_mul(4)),
                reads_started: tokio::sync::Notify::new(),
            },
            rx,
        )
    }

    /// The workspace whose chain holds what belongs to no workspace (and the node's own
    /// security events about the audit log).
    pub fn root_workspace(&self) -> &WorkspaceId {
        &self.root_workspace
    }

    /// Whether the fast path may answer: batched durability (a sync entry waits for its
    /// commit) and room in the queue (else the full pipeline waits for room or refuses).
    pub fn fast_path_open(&self) -> bool {
        self.durability == AuditDurability::Batched && self.tx.capacity() > 0
    }

    /// Whether an allowed request with `method` gets an entry (successful reads may not).
    pub fn records_allowed(&self, method: &Method) -> bool {
        self.successful_reads || !(method == Method::GET || method == Method::HEAD)
    }

    /// The fast path's audit of an allowed forward-auth decision after its group's first:
    /// counted into the group, no entry built. False when the group does not exist yet;
    /// then [`Self::finish_decision`] starts it.
    pub fn fold_decision(&self, key: &DecisionKey, request_id: &str) -> bool {
        self.groups.fold_decision(key, request_id)
    }

    /// The fast path's audit of an allowed forward-auth decision whose group does not
    /// exist yet: its entry starts the group (or is queued on its own when the map is full).
    pub async fn finish_decision(
        &self,
        ctx: &AuditContext,
        status: StatusCode,
        key: DecisionKey,
        pins: Pins,
    ) -> Result<(), ApiError> {
        let record = ctx.record_with(status, Some(&self.root_workspace));
        match self.groups.add_decision(key, record, pins) {
            None => Ok(()),
            Some(record) => self.enqueue_one(record).await,
        }
    }

    /// Admits a request: at once while the queue has room (one atomic read), else after
    /// waiting up to the enqueue timeout for room; a queue still full refuses the request
    /// (503) before it does anything.
    pub async fn admit(&self) -> Result<(), ApiError> {
        if self.tx.capacity() > 0 {
            return Ok(());
        }
        match tokio::time::timeout(self.enqueue_timeout, self.tx.reserve()).await {
            // The room is for whoever comes first: dropping the permit gives it back.
            Ok(Ok(_permit)) => Ok(()),
            Ok(Err(_)) => Err(ApiError::Unavailable),
            Err(_) => {
                tracing::warn!("the audit queue is full: refusing a request (503)");
                Err(ApiError::Unavailable)
            }
        }
    }

    /// Queues an entry, waiting up to the enqueue timeout when the queue filled up while
    /// the request ran; the answer becomes a 503 if there is still no room.
    /// Queues one entry that no request waits for.
    async fn enqueue_one(&self, record: AuditRecord) -> Result<(), ApiError> {
        self.enqueue(Queued {
            record,
            ack: None,
            count: 1,
        })
        .await
    }

    async fn enqueue(&self, queued: Queued) -> Result<(), ApiError> {
        match self.tx.try_send(queued) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(queued)) => {
                match tokio::time::timeout(self.enqueue_timeout, self.tx.send(queued)).await {
                    Ok(Ok(())) => Ok(()),
                    _ => {
                        tracing::warn!("the audit queue is full: answering 503");
                        Err(ApiError::Unavailable)
                    }
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(ApiError::Unavailable),
        }
    }

    /// After the response: queues the request's entry unless its handler already wrote
    /// it with its change (or it is a successful read and those are not audited). A
    /// refusal (401, 402, 403, 429), and any other 4xx of a request with no known caller, is
    /// counted into its group, whatever the durability: a
    /// flood of refusals must not cost a row, nor a commit wait, each. In sync mode, waits
    /// for the commit of any other entry; a commit that does not come in time turns the
    /// answer into a 503.
    pub async fn finish(
        &self,
        ctx: &AuditContext,
        method: &Method,
        status: StatusCode,
    ) -> Result<(), ApiError> {
        let outcome = Outcome::of_status(status.as_u16());
        let decided = ctx.with(|p| p.decided_method.clone());
        let method = decided.as_ref().unwrap_or(method);
        if ctx.already_recorded()
            || (!self.successful_reads
                && outcome == Outcome::Allowed
                && (method == Method::GET || method == Method::HEAD))
        {
            return Ok(());
        }
        let record = ctx.record_with(status, Some(&self.root_workspace));
        // The method is part of a group's key and can be any token a proxy forwarded.
        let method_text = bounded::text(method.as_str(), bounded::MAX_FIELD_BYTES);
        // Client errors of a request with no known caller (unknown paths, malformed input)
        // are grouped like refusals: anyone can send them at their address's rate, so a
        // row each would let a flood of them fill the log and the writer's queue.
        let anonymous_client_error = status.is_client_error() && ctx.with(|p| p.identity.is_none());
        if outcome == Outcome::Denied || anonymous_client_error {
            self.groups.add_refused(record, &method_text);
            return Ok(());
        }
        if outcome == Outcome::Allowed
            && self.durability == AuditDurability::Batched
            && ctx.with(|p| p.aggregate)
        {
            return match self.groups.add_allowed(record, &method_text) {
                None => Ok(()),
                Some(record) => self.enqueue_one(record).await,
            };
        }
        if outcome == Outcome::Allowed
            && self.aggregate_reads
            && (method == Method::GET || method == Method::HEAD)
            && ctx.with(|p| p.identity.is_some())
        {
            return match self.reads.add(record, &method_text) {
                groups::ReadAdded::Started => {
                    self.reads_started.notify_one();
                    Ok(())
                }
                groups::ReadAdded::Folded => Ok(()),
                groups::ReadAdded::Queue(record, count) => {
                    self.enqueue(Queued {
                        record,
                        ack: None,
                        count,
                    })
                    .await
                }
            };
        }
        match self.durability {
            AuditDurability::Batched => self.enqueue_one(record).await,
            AuditDurability::Sync => {
                let (ack, done) = oneshot::channel();
                self.enqueue(Queued {
                    record,
                    ack: Some(ack),
                    count: 1,
                })
                .await?;
                match tokio::time::timeout(self.enqueue_timeout, done).await {
                    Ok(Ok(())) => Ok(()),
                    _ => Err(ApiError::Unavailable),
                }
            }
        }
    }
}

impl AuditLog {
    /// Takes every aggregated group as its entry (for a writer that stops with a full
    /// queue: it writes them itself).
    pub fn take_aggregates(&self) -> Vec<Queued> {
        self.groups
            .take()
            .into_iter()
            .chain(self.reads.take())
            .map(|(record, count)| Queued {
                record,
                ack: None,
                count,
            })
            .collect()
    }

    /// Waits until a successful read starts a group (or returns at once if one did since
    /// the last wait).
    pub async fn reads_started(&self) {
        self.reads_started.notified().await;
    }

    /// Takes the groups of successful reads gathered since the last call, one entry per
    /// group, for the commit the writer is about to make.
    pub fn take_reads(&self) -> impl Iterator<Item = Queued> {
        self.reads.take().into_iter().map(|(record, count)| Queued {
            record,
            ack: None,
            count,
        })
    }

    /// Queues the aggregated groups gathered since the last call, one entry per group,
    /// with `count` in its detail. What the queue has no room for stays for the next call.
    /// Returns how many entries were queued.
    pub fn flush_aggregates(&self) -> usize {
        self.groups.flush(|record, count| {
            self.tx
                .try_send(Queued {
                    record,
                    ack: None,
                    count,
                })
                .is_ok()
        })
    }

    /// How many requests were counted into groups, and how many refusals into overflow
    /// groups, since the last call (for the metrics).
    pub fn take_aggregation_counters(&self) -> AggregationCounters {
        let mut counters = self.groups.take_counters();
        counters.folded += self.reads.take_folded();
        counters
    }
}

/// What the pipeline knows about a request, for its audit entry. Stages and handlers add
/// to it as they learn (who is calling, with which scope, on which resource); the audit
/// stage turns it into the entry.
#[derive(Clone)]
pub struct AuditContext(Arc<Mutex<Pending>>);

/// What the request is, kept as cheap handles: the entry's text (action name, resource
/// id, scrubbed user agent) is only built when an entry is made.
struct Pending {
    started: Instant,
    time: chrono::DateTime<chrono::Utc>,
    request_id: String,
    method: Method,
    route: Option<MatchedPath>,
    uri: Uri,
    source_ip: Option<IpAddr>,
    user_agent: Option<HeaderValue>,
    identity: Option<Arc<Identity>>,
    scope: Option<Scope>,
    resource_id: Option<String>,
    detail: Option<serde_json::Value>,
    action: Option<(String, String)>,
    decided_method: Option<Method>,
    aggregate: bool,
    recorded: bool,
}

impl AuditContext {
    /// Notes the route that matched, for a context made before routing (the fast path's).
    pub fn set_route(&self, route: MatchedPath) {
        self.with(|p| p.route = Some(route));
    }

    /// The request metrics' label of the route that matched (`unmatched` for none).
    pub fn route_label(&self) -> crate::metrics::Route {
        self.with(|p| {
            p.route
                .as_ref()
                .map_or_else(crate::metrics::Route::unmatched, |r| {
                    crate::metrics::Route::new(r.as_str())
                })
        })
    }

    /// A context for a request to `route` (a template such as `/api/v1/users/{id}`).
    pub fn new(
        request_id: String,
        method: Method,
        route: Option<MatchedPath>,
        uri: Uri,
        source_ip: Option<IpAddr>,
        user_agent: Option<HeaderValue>,
    ) -> Self {
        Self(Arc::new(Mutex::new(Pending {
            started: Instant::now(),
            time: now_micros(),
            request_id,
            method,
            route,
            uri,
            source_ip,
            user_agent,
            identity: None,
            scope: None,
            resource_id: None,
            detail: None,
            action: None,
            decided_method: None,
            aggregate: false,
            recorded: false,
        })))
    }

    fn with<R>(&self, f: impl FnOnce(&mut Pending) -> R) -> R {
        let mut pending = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut pending)
    }

    /// Who is calling: the credential, its owner and their workspace (also for a
    /// credential that was refused but is known).
    pub fn set_identity(&self, identity: &Arc<Identity>) {
        self.with(|p| p.identity = Some(identity.clone()));
    }

    /// The scope the caller acts with.
    pub fn set_scope(&self, scope: Scope) {
        self.with(|p| p.scope = Some(scope));
    }

    /// Names the action and resource type when the route template does not (the gateway
    /// and forward-auth, whose paths are not API routes).
    pub fn set_action(&self, action: &str, resource_type: &str) {
        self.with(|p| p.action = Some((action.to_owned(), resource_type.to_owned())));
    }

    /// The method of the request decided on, when it is not this request's own (a
    /// forward-auth check is a GET about, say, a DELETE): whether a successful call is a
    /// read is judged on it.
    pub fn set_decided_method(&self, method: &str) {
        if let Ok(m) = Method::from_bytes(method.as_bytes()) {
            self.with(|p| p.decided_method = Some(m));
        }
    }

    /// Allowed decisions of this kind may be written as one entry per credential, route
    /// and method each second, with a count (forward-auth: one entry per request would
    /// cost more than the decision).
    pub fn aggregate(&self) {
        self.with(|p| p.aggregate = true);
    }

    /// The resource acted on, when the path does not name it (a creation).
    pub fn set_resource_id(&self, id: &str) {
        self.with(|p| p.resource_id = Some(id.to_owned()));
    }

    /// Action-specific detail: a small JSON object, never a secret.
    pub fn set_detail(&self, detail: serde_json::Value) {
        self.with(|p| p.detail = Some(detail));
    }

    /// The request's id.
    pub fn request_id(&self) -> String {
        self.with(|p| p.request_id.clone())
    }

    fn already_recorded(&self) -> bool {
        self.with(|p| p.recorded)
    }

    /// The entry of a change about to be written with its change, answered with
    /// `status`. Call [`AuditContext::mark_recorded`] once the change is committed.
    pub fn change(&self, status: StatusCode) -> Trail {
        Trail::of(self.record_with(status, None))
    }

    /// The entry of a change to another workspace (a child the caller's workspace
    /// manages): recorded in the caller's chain and, as a copy, in the target's chain, so
    /// each workspace's own log shows what was done to it.
    pub fn change_in(&self, status: StatusCode, target: &WorkspaceId) -> Trail {
        let mut trail = self.change(status);
        if let Some(first) = trail.records.first()
            && first.workspace_id != *target
        {
            let mut copy = first.clone();
            copy.id = AuditId::generate();
            copy.workspace_id = target.clone();
            trail.records.push(copy);
        }
        trail
    }

    /// The entry of one of several changes a request makes (a bulk action): the request's
    /// context, with its own action, resource and detail, written with that change. The
    /// request's own entry is still queued by the stage.
    pub fn change_of(
        &self,
        action: &str,
        resource_type: &str,
        resource_id: &str,
        detail: serde_json::Value,
    ) -> Trail {
        let mut record = self.record_with(StatusCode::OK, None);
        record.action = action.to_owned();
        record.resource_type = Some(resource_type.to_owned());
        record.resource_id = Some(resource_id.to_owned());
        record.detail = Some(detail.to_string());
        Trail::of(record)
    }

    /// The change's entry was committed with the change: the stage writes no other.
    pub fn mark_recorded(&self) {
        self.with(|p| p.recorded = true);
    }

    /// An event raised by this request, carrying its `request_id`.
    pub fn event(
        &self,
        workspace: &WorkspaceId,
        event_type: &str,
        mut payload: serde_json::Value,
    ) -> SecurityEvent {
        if let Some(map) = payload.as_object_mut() {
            map.insert(
                "request_id".into(),
                serde_json::Value::String(self.request_id()),
            );
        }
        SecurityEvent::new(workspace.clone(), event_type, payload)
    }

    fn record_with(&self, status: StatusCode, fallback: Option<&WorkspaceId>) -> AuditRecord {
        self.with(|p| {
            let workspace_id = p
                .identity
                .as_ref()
                .map(|i| i.workspace.id.clone())
                .or_else(|| fallback.cloned())
                .unwrap_or_else(|| WorkspaceId::from_trusted(String::new()));
            let (action, resource_type, path_id) = match &p.action {
                Some((action, resource)) => (action.clone(), Some(resource.clone()), None),
                None => describe(
                    &p.method,
                    p.route.as_ref().map(MatchedPath::as_str),
                    p.uri.path(),
                ),
            };
            let mut record = AuditRecord {
                id: AuditId::generate(),
                time: p.time,
                workspace_id,
                request_id: Some(p.request_id.clone()),
                principal_id: p.identity.as_ref().map(|i| i.principal.id.to_string()),
                credential_id: p.identity.as_ref().map(|i| i.token.id.to_string()),
                action,
                resource_type,
                resource_id: p.resource_id.clone().or(path_id),
                scope: p.scope.map(|s| s.to_string()),
                source_ip: p.source_ip.map(|ip| ip.to_string()),
                user_agent: p
                    .user_agent
                    .as_ref()
                    .and_then(|v| v.to_str().ok())
                    .map(scrub_user_agent),
                outcome: Outcome::of_status(status.as_u16()),
                status: status.as_u16(),
                latency_us: i64::try_from(p.started.elapsed().as_micros()).unwrap_or(i64::MAX),
                detail: p.detail.as_ref().map(|d| {
                    let mut d = d.clone();
                    bounded::json(&mut d);
                    d.to_string()
                }),
            };
            bounded::record(&mut record);
            record
        })
    }
}

impl<S: Send + Sync> FromRequestParts<S> for AuditContext {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<AuditContext>()
            .cloned()
            .ok_or_else(|| ApiError::Internal("the audit stage did not run".into()))
    }
}

/// Whether requests to `route` are audited: every API call; not the public paths that
/// probes and scrapers poll. A request that matched no route is audited, whatever its path.
pub fn audited(route: Option<&str>) -> bool {
    !route.is_some_and(crate::pipeline::is_public)
}

/// Names a request's action from its method and route: `tokens.create`,
/// `users.update`, `workspaces.suspend`, `audit.events`. The resource type is the first
/// segment after `/api/v1/` (and `auth/`), and the resource id is the `{id}` in the path,
/// kept only when it has the shape of an id (a mistyped path can hold a pasted secret).
fn describe(
    method: &Method,
    route: Option<&str>,
    path: &str,
) -> (String, Option<String>, Option<String>) {
    let Some(route) = route else {
        return ("request.unmatched".to_owned(), None, None);
    };
    let Some(rest) = route.strip_prefix("/api/v1/") else {
        return (
            format!("request.{}", method.as_str().to_ascii_lowercase()),
            None,
            None,
        );
    };
    let rest = rest.strip_prefix("auth/").unwrap_or(rest);
    // The gateway's routes are a collection one level down: `gateway/routes/{id}`.
    let renamed;
    // So are OAuth clients: `oauth/clients/{id}`.
    let rest = match (
        rest.strip_prefix("gateway/routes"),
        rest.strip_prefix("oauth/clients"),
    ) {
        (Some(tail), _) if tail.is_empty() || tail.starts_with('/') => {
            renamed = format!("gateway-routes{tail}");
            renamed.as_str()
        }
        (_, Some(tail)) if tail.is_empty() || tail.starts_with('/') => {
            renamed = format!("oauth-clients{tail}");
            renamed.as_str()
        }
        _ => rest,
    };
    let template: Vec<&str> = rest.split('/').collect();
    let resource = template[0];
    let base = resource.replace('-', "_");
    let verb = match (template.as_slice(), method) {
        ([_], &Method::GET) if resource == "me" => "read",
        ([_], &Method::GET) => "list",
        ([_], &Method::POST) => "create",
        ([_, "{id}"], &Method::GET) => "get",
        ([_, "{id}"], &Method::PATCH | &Method::PUT) => "update",
        ([_, "{id}"], &Method::DELETE) if matches!(resource, "tokens" | "api-keys") => "revoke",
        ([_, "{id}"], &Method::DELETE) => "delete",
        ([_, .., last], _) if !last.starts_with('{') => last,
        _ => method.as_str(),
    };
    let action = format!("{base}.{}", verb.replace('-', "_").to_ascii_lowercase());
    // The path's segment where the template has `{id}`.
    let resource_id = template.iter().position(|s| *s == "{id}").and_then(|i| {
        let offset = route.split('/').count() - template.len();
        path.split('/')
            .nth(offset + i)
            .filter(|v| id_shaped(v))
            .map(str::to_owned)
    });
    (action, Some(resource.to_owned()), resource_id)
}

/// The `User-Agent` as recorded: at most 256 characters, and any run of 32 or more
/// token characters (letters, digits, `-`, `_`, `.`) replaced by `[redacted]`, because a
/// client can put anything in the header, a credential included.
fn scrub_user_agent(ua: &str) -> String {
    let mut out = String::new();
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() >= 32 {
            out.push_str("[redacted]");
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in ua.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(if c.is_control() { ' ' } else { c });
        }
    }
    flush(&mut run, &mut out);
    match out.char_indices().nth(MAX_USER_AGENT) {
        // Cut to 256 characters, the last ones replaced by the marker.
        Some(_) => {
            let keep = MAX_USER_AGENT - bounded::TRUNCATED.chars().count();
            let mut cut: String = out.chars().take(keep).collect();
            cut.push_str(bounded::TRUNCATED);
            cut
        }
        None => out,
    }
}

/// `prefix_` followed by 32 lowercase hex digits, as every id this server issues.
fn id_shaped(s: &str) -> bool {
    s.split_once('_').is_some_and(|(prefix, body)| {
        !prefix.is_empty()
            && prefix.len() <= 8
            && prefix.bytes().all(|b| b.is_ascii_lowercase())
            && body.len() == 32
            && body
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(method: Method, route: &str, path: &str) -> (String, Option<String>, Option<String>) {
        describe(&method, Some(route), path)
    }

    #[test]
    fn actions_are_named_from_the_route() {
        let id = "tok_0123456789abcdef0123456789abcdef";
        assert_eq!(
            d(Method::POST, "/api/v1/auth/tokens", "/api/v1/auth/tokens").0,
            "tokens.create"
        );
        let (a, r, i) = d(
            Method::DELETE,
            "/api/v1/auth/tokens/{id}",
            &format!("/api/v1/auth/tokens/{id}"),
        );
        assert_eq!(
            (a.as_str(), r.as_deref(), i.as_deref()),
            ("tokens.revoke", Some("tokens"), Some(id))
        );
        assert_eq!(
            d(Method::PATCH, "/api/v1/users/{id}", "/api/v1/users/x").0,
            "users.update"
        );
        assert_eq!(
            d(Method::POST, "/api/v1/service-principals/{id}/suspend", "/").0,
            "service_principals.suspend"
        );
        assert_eq!(
            d(Method::GET, "/api/v1/audit/events", "/").0,
            "audit.events"
        );
        assert_eq!(d(Method::GET, "/api/v1/me", "/api/v1/me").0, "me.read");
        assert_eq!(describe(&Method::GET, None, "/nope").0, "request.unmatched");
    }

    #[test]
    fn user_agents_lose_anything_that_could_be_a_secret() {
        let secret = format!("dapi{}", "0".repeat(72));
        assert_eq!(scrub_user_agent("curl/8.5.0"), "curl/8.5.0");
        assert_eq!(scrub_user_agent(&format!("bot {secret}")), "bot [redacted]");
        assert_eq!(scrub_user_agent("a\nb"), "a b");
        assert_eq!(scrub_user_agent(&"x ".repeat(500)).chars().count(), 256);
    }

    #[test]
    fn a_pasted_secret_in_the_path_is_not_kept() {
        let secret = format!("dapi{}", "a".repeat(72));
        let (_, _, id) = d(
            Method::DELETE,
            "/api/v1/auth/tokens/{id}",
            &format!("/api/v1/auth/tokens/{secret}"),
        );
        assert_eq!(id, None);
    }
}
