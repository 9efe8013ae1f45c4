//! The serving loop: accepts connections up to a cap, serves HTTP/1.1 on each with hyper,
//! closes the ones that are idle or too slow to send their headers, and drains on shutdown
//! within a deadline.
//!
//! Every connection has a watchdog that knows whether a request is in progress (hyper has
//! handed it to the router and its response body is not finished) and when the last byte
//! arrived:
//!
//! - with no request in progress and no byte since the last response (or since accept),
//!   the connection is closed after `idle_timeout`;
//! - once a byte of a new request has arrived, its line and headers must be complete within
//!   `header_read_timeout`, however slowly they trickle in.
//!
//! - with a write to the client blocked (it does not read its response), the connection is
//!   closed after `gateway_body_idle_timeout`.
//!
//! The watchdog checks these when a limit could next be passed, not on every request, so
//! a deadline is noticed at most one check interval late and a request costs no timer.
//! hyper's own header timer is left off: it would arm a timer for every request.
//!
//! The cap keeps the process below its open-file limit: when a connection arrives at the
//! cap, the connection that has waited longest without a request in progress is closed to
//! make room (a keep-alive connection between requests, or one that has not finished its
//! headers); if every connection is busy, accepting pauses and new connections wait in the
//! kernel's backlog. When the system refuses to accept (out of descriptors), the
//! longest-idle connection is closed too, and accepting backs off from 50 ms to 1 s, with
//! the error logged at most once a second.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::ServiceExt;

use crate::config::ConnectionLimits;
use crate::metrics::Metrics;

/// Serves `router` on `listener` until `stop` turns true, then stops accepting, lets
/// in-flight requests finish for at most `limits.shutdown_drain_timeout`, and drops the
/// connections that remain.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    fast: Option<crate::fast::FastPath>,
    limits: &ConnectionLimits,
    cap: usize,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(cap));
    let registry = Arc::new(Registry::default());
    let mut tasks = JoinSet::new();
    let mut backoff = Backoff::default();
    let mut at_capacity_logged: Option<Instant> = None;
    'accept: loop {
        // Reap finished connections so the set does not grow with every connection served.
        while tasks.try_join_next().is_some() {}
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.wait_for(|s| *s) => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => {
                backoff.reset();
                a
            }
            // The peer gave up between the handshake and the accept: nothing to do.
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                metrics.connections.accept_paused("accept_error");
                let delay = backoff.next();
                if backoff.should_log() {
                    tracing::error!(
                        error = %e,
                        retry_ms = delay.as_millis() as u64,
                        "cannot accept connections; backing off"
                    );
                }
                // Out of descriptors: an idle connection gives one back.
                if registry.evict_longest_idle() {
                    metrics.connections.closed_by_server("evicted");
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => continue,
                    _ = stop.wait_for(|s| *s) => break,
                }
            }
        };
        // Over the cap, the longest-idle connection makes room; when every one is busy,
        // this waits (holding the one accepted connection) and the kernel's backlog holds
        // the others.
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                metrics.connections.accept_paused("at_capacity");
                if once_a_second(&mut at_capacity_logged) {
                    tracing::warn!(
                        cap,
                        "the connection cap is reached: closing the longest-idle connection, \
                         new ones wait in the backlog (see max_client_connections)"
                    );
                }
                // Tried again while waiting: a busy connection that turns idle makes room
                // too. One eviction at a time, so a slow close does not cost several.
                let mut ticks = tokio::time::interval(Duration::from_millis(50));
                loop {
                    tokio::select! {
                        p = permits.clone().acquire_owned() => match p {
                            Ok(p) => break p,
                            Err(_) => break 'accept,
                        },
                        _ = stop.wait_for(|s| *s) => break 'accept,
                        _ = ticks.tick() => {
                            if registry.evict_longest_idle() {
                                metrics.connections.closed_by_server("evicted");
                            }
                        }
                    }
                }
            }
        };
        let _ = stream.set_nodelay(true);
        // Registered before its task runs, so it can be evicted from the start.
        let activity = Arc::new(Activity::new());
        let id = registry.add(activity.clone());
        let conn = Connection {
            stream,
            peer,
            permit,
            activity,
            id,
            limits: limits.clone(),
            metrics: metrics.clone(),
            registry: registry.clone(),
            router: router.clone(),
            fast: fast.clone(),
            stop: stop.clone(),
        };
        tasks.spawn(conn.run());
    }
    drain(listener, tasks, limits, &metrics).await;
}

/// Stops accepting, waits for the connections for at most the drain deadline, then drops
/// the ones left.
async fn drain(
    listener: TcpListener,
    mut tasks: JoinSet<()>,
    limits: &ConnectionLimits,
    metrics: &Metrics,
) {
    drop(listener);
    let open = tasks.len();
    tracing::info!(
        open,
        deadline_ms = limits.shutdown_drain_timeout.as_millis() as u64,
        "stopped accepting; draining connections"
    );
    let drained = tokio::time::timeout(limits.shutdown_drain_timeout, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        let left = tasks.len();
        tracing::warn!(
            left,
            "the shutdown drain deadline passed: dropping the connections still open"
        );
        for _ in 0..left {
            metrics.connections.closed_by_server("shutdown");
        }
        tasks.shutdown().await;
    }
}

/// Errors of one connection that failed before it was accepted, not of the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// True when `last` is unset or a second old, and then marks now.
fn once_a_second(last: &mut Option<Instant>) -> bool {
    let now = Instant::now();
    if last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
        return false;
    }
    *last = Some(now);
    true
}

/// The delay after a refused accept: 50 ms, doubling to 1 s, reset by a success.
#[derive(Default)]
struct Backoff {
    delay: Option<Duration>,
    logged: Option<Instant>,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let delay = self.delay.map_or(Duration::from_millis(50), |d| {
            (d * 2).min(Duration::from_secs(1))
        });
        self.delay = Some(delay);
        delay
    }

    fn should_log(&mut self) -> bool {
        once_a_second(&mut self.logged)
    }

    fn reset(&mut self) {
        self.delay = None;
    }
}

/// Why the server closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    Idle,
    HeaderTimeout,
    Evicted,
    /// The client has not read its response for `gateway_body_idle_timeout`.
    SendStalled,
}

impl Close {
    fn label(self) -> &'static str {
        match self {
            Close::Idle => "idle",
            Close::HeaderTimeout => "header_timeout",
            Close::Evicted => "evicted",
            Close::SendStalled => "send_stalled",
        }
    }
}

/// What a connection's watchdog knows.
struct ActivityState {
    /// Requests handed to the router whose response body is not finished.
    in_flight: usize,
    /// Since when no request has been in progress.
    waiting_since: Instant,
    /// When the first byte after `waiting_since` arrived.
    first_byte: Option<Instant>,
    /// Set to close the connection to make room for a new one.
    evicted: bool,
    /// Since when a write to the client has been waiting for it to read (`None` while
    /// writes go through): a client that never reads its response would otherwise hold
    /// the connection, and any upstream behind it, for ever.
    write_blocked_since: Option<Instant>,
}

/// The state shared by a connection's stream, its requests and its watchdog.
struct Activity {
    state: Mutex<ActivityState>,
    /// Wakes the watchdog when the connection is chosen for eviction (a stored permit
    /// means no eviction is missed between its check and its wait).
    changed: Notify,
}

impl Activity {
    fn new() -> Self {
        Self {
            state: Mutex::new(ActivityState {
                in_flight: 0,
                waiting_since: Instant::now(),
                first_byte: None,
                evicted: false,
                write_blocked_since: None,
            }),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ActivityState> {
        // The state stays consistent whatever panicked while holding it.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn bytes_read(&self) {
        let mut s = self.lock();
        if s.in_flight == 0 && s.first_byte.is_none() {
            s.first_byte = Some(Instant::now());
        }
    }

    /// Notes whether a write went through or has to wait for the client to read.
    fn wrote(&self, blocked: bool) {
        let mut s = self.lock();
        if !blocked {
            s.write_blocked_since = None;
            // A response still being sent after its request finished is not idleness.
            if s.in_flight == 0 && s.first_byte.is_none() {
                s.waiting_since = Instant::now();
            }
        } else if s.write_blocked_since.is_none() {
            s.write_blocked_since = Some(Instant::now());
        }
    }

    fn request_started(self: &Arc<Self>) -> InFlight {
        self.lock().in_flight += 1;
        InFlight(self.clone())
    }

    /// Resolves when the connection must be closed.
    async fn watch(&self, limits: &ConnectionLimits) -> Close {
        // The requests and the stream only update the state; the watchdog wakes at the
        // next moment a limit could be passed and reads it again. So a request costs no
        // wake-up of its own, and a deadline is found at most one check interval late.
        // Only an eviction, decided elsewhere, wakes it at once.
        let check = limits.idle_timeout.min(limits.header_read_timeout);
        loop {
            let now = Instant::now();
            let at = {
                let s = self.lock();
                if s.evicted {
                    return Close::Evicted;
                }
                if let Some(blocked) = s.write_blocked_since {
                    let at = blocked + limits.gateway_body_idle_timeout;
                    if at <= now {
                        return Close::SendStalled;
                    }
                    at.min(now + check)
                } else if s.in_flight > 0 {
                    now + check.min(limits.gateway_body_idle_timeout)
                } else if let Some(first) = s.first_byte {
                    let at = first + limits.header_read_timeout;
                    if at <= now {
                        return Close::HeaderTimeout;
                    }
                    at
                } else {
                    let at = s.waiting_since + limits.idle_timeout;
                    if at <= now {
                        return Close::Idle;
                    }
                    // A first byte may arrive meanwhile and start the header clock.
                    at.min(now + limits.header_read_timeout)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {}
                _ = self.changed.notified() => {}
            }
        }
    }
}

/// A request in progress on a connection; dropped when its response body is finished (or
/// abandoned).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
        if s.in_flight == 0 {
            s.waiting_since = Instant::now();
            s.first_byte = None;
        }
    }
}

/// The open connections, so that one can be closed when the cap is reached.
#[derive(Default)]
struct Registry {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Activity>>>,
}

impl Registry {
    fn add(&self, activity: Arc<Activity>) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, activity);
        id
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Arc<Activity>>> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Marks the connection that has waited longest with no request in progress to be
    /// closed; false when every connection is busy, or one marked earlier is still
    /// closing.
    fn evict_longest_idle(&self) -> bool {
        let open = self.lock();
        if open.values().any(|a| a.lock().evicted) {
            // The last one is still closing: its slot is on the way.
            return false;
        }
        let oldest = open
            .values()
            .filter_map(|a| {
                let s = a.lock();
                (s.in_flight == 0 && !s.evicted).then_some((s.waiting_since, a))
            })
            .min_by_key(|(since, _)| *since);
        match oldest {
            Some((_, activity)) => {
                activity.lock().evicted = true;
                activity.changed.notify_one();
                true
            }
            None => false,
        }
    }
}

/// An accepted connection, before it is served.
struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
    activity: Arc<Activity>,
    id: u64,
    router: Router,
    /// The fast path, when it is on.
    fast: Option<crate::fast::FastPath>,
    stop: watch::Receiver<bool>,
}

impl Connection {
    async fn run(self) {
        let Connection {
            stream,
            peer,
            permit,
            limits,
            metrics,
            registry,
            activity,
            id,
            router,
            fast,
            mut stop,
        } = self;
        metrics.connections.opened();
        // The stream holds the permit and the open count: an upgraded (WebSocket)
        // connection keeps them after hyper hands it over, until the tunnel closes.
        let io = TokioIo::new(Tracked {
            inner: stream,
            activity: activity.clone(),
            _permit: permit,
            metrics: metrics.clone(),
        });
        let service_activity = activity.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            let in_flight = service_activity.request_started();
            let router = router.clone();
            let fast = fast.clone();
            async move {
                // Requests whose credential is cached skip the router's stages (see `fast.rs`).
                let req = match (&fast, crate::fast::kind_of(req.uri().path())) {
                    (Some(fast), Some(kind)) => match fast.serve(req, peer, kind).await {
                        crate::fast::Outcome::Answered(response) => {
                            return Ok(response.map(|body| {
                                Body::new(Finished {
                                    inner: body,
                                    _in_flight: in_flight,
                                })
                            }));
                        }
                        crate::fast::Outcome::Declined(req) => req,
                    },
                    _ => req,
                };
                let response = router.oneshot(req).await?;
                Ok::<_, std::convert::Infallible>(response.map(|body| {
                    Body::new(Finished {
                        inner: body,
                        _in_flight: in_flight,
                    })
                }))
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder.keep_alive(true);
        let conn = builder.serve_connection(io, service).with_upgrades();
        tokio::pin!(conn);
        let mut stopping = false;
        loop {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, %peer, "connection ended with an error");
                    }
                    break;
                }
                reason = activity.watch(&limits) => {
                    tracing::debug!(reason = reason.label(), %peer, "closing a connection");
                    metrics.connections.closed_by_server(reason.label());
                    break;
                }
                _ = stop.wait_for(|s| *s), if !stopping => {
                    // Finishes the request in progress, then closes; an idle connection
                    // closes now.
                    conn.as_mut().graceful_shutdown();
                    stopping = true;
                }
            }
        }
        registry.remove(id);
    }
}

/// The client's stream, noting when bytes arrive.
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.metrics.connections.released();
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.bytes_read();
        }
        result
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.activity.wrote(result.is_pending());
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.activity.wrote(result.is_pending());
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A response body that marks its request finished when it is done or dropped.
struct Finished {
    inner: Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for Finished {
    type Data = hyper::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The soft limit on open files of this process, `None` when unlimited or unknown.
pub(crate) fn open_file_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        rustix::process::getrlimit(rustix::process::Resource::Nofile).current
    }
    #[cfg(not(unix))]
    {
        None
    }
}
