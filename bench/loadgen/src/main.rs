//! Load generator and bare-hyper baseline for the datastack benchmark.
//!
//! * `baseline` serves `200 {"ok":true}` to every request with nothing but hyper, as the
//!   yardstick the server's throughput is compared with.
//! * `load` drives an HTTP/1.1 server over keep-alive connections, closed loop (as fast as
//!   the server answers) or open loop (`--rate`, a fixed schedule), and prints one JSON line
//!   with the throughput and latency percentiles.

use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

#[derive(Parser, Debug)]
#[command(name = "datastack-loadgen", version, about)]
struct Cli {
    /// Tokio worker threads (the load generator and the baseline server alike).
    #[arg(long, global = true, default_value_t = 2, env = "LOADGEN_THREADS")]
    threads: usize,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// A bare hyper HTTP/1.1 server answering every request `200 {"ok":true}`.
    Baseline {
        /// Address to bind; port 0 picks a free port. Prints `listening on <addr>` once bound.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
    /// Drive an HTTP/1.1 server and print one JSON line of results.
    Load(LoadArgs),
}

#[derive(Args, Debug, Clone)]
struct LoadArgs {
    /// Target URL (plain http), e.g. http://127.0.0.1:8080/api/v1/me
    #[arg(long)]
    url: String,
    /// Extra request header `Name: value` (repeatable).
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// One credential per line; each request sends the next one (round robin, shared by all
    /// connections) as `Authorization: Bearer <line>`.
    #[arg(long)]
    tokens_file: Option<PathBuf>,
    /// Concurrent keep-alive connections (one task each).
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Length of the measured window, after the warm-up.
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,
    /// Open loop: total requests per second, spread evenly over the connections. Latency is
    /// measured from each request's scheduled send time. Without it: closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Load applied before the measured window; nothing in it is counted.
    #[arg(long, default_value_t = 0.0)]
    warmup_secs: f64,
    /// The request method (GET, or POST with `--body`).
    #[arg(long, default_value = "GET")]
    method: Method,
    /// A request body sent with every request (set its `content-type` with `-H`).
    #[arg(long)]
    body: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("datastack-loadgen: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Baseline { listen } => runtime.block_on(baseline(listen)),
        Command::Load(args) => runtime.block_on(load(args)),
    };
    // Connection drivers may still be parked on sockets; do not wait for them.
    runtime.shutdown_timeout(Duration::from_millis(200));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("datastack-loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------
// baseline
// ---------------------------------------------------------------------------------------

const BASELINE_BODY: &[u8] = br#"{"ok":true}"#;

async fn baseline(listen: SocketAddr) -> Result<(), String> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot bind {listen}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {local}").map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())?;
    }
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and friends: back off briefly rather than spin.
                    eprintln!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(baseline_handle);
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn baseline_handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    // Drain the request body like a real handler would (empty for GET).
    let _ = req.into_body().collect().await;
    let mut resp = Response::new(Full::new(Bytes::from_static(BASELINE_BODY)));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(resp)
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

// ---------------------------------------------------------------------------------------
// histogram
// ---------------------------------------------------------------------------------------

/// Log-linear latency histogram in microseconds: exact 1 µs buckets below 1024 µs, then
/// 64 buckets per power of two (≤ 1.6 % relative error) up to 2^40 µs.
#[derive(Clone)]
struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

const LINEAR_LIMIT: u64 = 1024; // 2^10
const LINEAR_BITS: u32 = 10;
const SUB_BITS: u32 = 6; // 64 sub-buckets per power of two
const MAX_EXP: u32 = 40;
const BUCKETS: usize =
    LINEAR_LIMIT as usize + ((MAX_EXP - LINEAR_BITS + 1) as usize) * (1usize << SUB_BITS);

impl Histogram {
    fn new() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
        }
    }

    fn index(v: u64) -> usize {
        if v < LINEAR_LIMIT {
            return v as usize;
        }
        let v = v.min((1u64 << (MAX_EXP + 1)) - 1);
        let exp = 63 - v.leading_zeros(); // LINEAR_BITS..=MAX_EXP
        let sub = (v >> (exp - SUB_BITS)) & ((1 << SUB_BITS) - 1);
        LINEAR_LIMIT as usize + ((exp - LINEAR_BITS) as usize) * (1 << SUB_BITS) + sub as usize
    }

    /// The highest value that falls in bucket `i` (reported values err on the high side).
    fn upper(i: usize) -> u64 {
        if i < LINEAR_LIMIT as usize {
            return i as u64;
        }
        let j = i - LINEAR_LIMIT as usize;
        let exp = (j >> SUB_BITS) as u32 + LINEAR_BITS;
        let sub = (j & ((1 << SUB_BITS) - 1)) as u64;
        let width = 1u64 << (exp - SUB_BITS);
        (((1u64 << SUB_BITS) + sub) << (exp - SUB_BITS)) + width - 1
    }

    fn record(&mut self, us: u64) {
        self.counts[Self::index(us)] += 1;
        self.total += 1;
        self.max = self.max.max(us);
    }

    fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += *b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    fn percentile(&self, p: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((p / 100.0) * self.total as f64).ceil().max(1.0) as u64;
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::upper(i).min(self.max);
            }
        }
        self.max
    }
}

// ---------------------------------------------------------------------------------------
// load
// ---------------------------------------------------------------------------------------

struct Target {
    addr: SocketAddr,
    path: Uri,
    method: Method,
    body: Bytes,
    headers: HeaderMap,
    tokens: Vec<HeaderValue>,
    next_token: AtomicUsize,
}

struct Window {
    /// Start of the measured window (end of the warm-up).
    measure_from: Instant,
    /// End of the measured window; nothing is sent after it.
    end: Instant,
}

struct ConnStats {
    requests: u64,
    errors: u64,
    hist: Histogram,
}

impl ConnStats {
    fn new() -> Self {
        Self {
            requests: 0,
            errors: 0,
            hist: Histogram::new(),
        }
    }
}

fn parse_target(args: &LoadArgs) -> Result<(String, u16, Uri, HeaderMap), String> {
    let uri: Uri = args
        .url
        .parse()
        .map_err(|e| format!("bad --url {:?}: {e}", args.url))?;
    match uri.scheme_str() {
        Some("http") => {}
        other => return Err(format!("--url must be http://… (got scheme {other:?})")),
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("--url {:?} has no host", args.url))?
        .clone();
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);
    let path: Uri = uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/")
        .parse()
        .map_err(|e| format!("bad path in --url: {e}"))?;

    let mut headers = HeaderMap::new();
    headers.insert(
        HOST,
        HeaderValue::from_str(authority.as_str()).map_err(|e| format!("bad host: {e}"))?,
    );
    for h in &args.headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| format!("--header {h:?} is not `Name: value`"))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|e| format!("bad header name in {h:?}: {e}"))?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|e| format!("bad header value in {h:?}: {e}"))?;
        headers.append(name, value);
    }
    Ok((host.to_string(), port, path, headers))
}

fn read_tokens(path: &PathBuf) -> Result<Vec<HeaderValue>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read --tokens-file {}: {e}", path.display()))?;
    let tokens = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            HeaderValue::from_str(&format!("Bearer {l}"))
                .map_err(|e| format!("bad token in {}: {e}", path.display()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if tokens.is_empty() {
        return Err(format!("--tokens-file {} has no tokens", path.display()));
    }
    Ok(tokens)
}

async fn load(args: LoadArgs) -> Result<(), String> {
    if args.connections == 0 {
        return Err("--connections must be at least 1".into());
    }
    if !(args.duration_secs > 0.0 && args.duration_secs.is_finite()) {
        return Err("--duration-secs must be positive".into());
    }
    if !(args.warmup_secs >= 0.0 && args.warmup_secs.is_finite()) {
        return Err("--warmup-secs must be zero or positive".into());
    }
    if let Some(rate) = args.rate
        && !(rate > 0.0 && rate.is_finite())
    {
        return Err("--rate must be positive".into());
    }
    let (host, port, path, headers) = parse_target(&args)?;
    let addr = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| format!("cannot resolve {host}:{port}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host}:{port} resolves to nothing"))?;
    let tokens = match &args.tokens_file {
        Some(p) => read_tokens(p)?,
        None => Vec::new(),
    };
    let target = Arc::new(Target {
        addr,
        path,
        method: args.method.clone(),
        body: Bytes::from(args.body.clone().unwrap_or_default()),
        headers,
        tokens,
        next_token: AtomicUsize::new(0),
    });

    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup_secs);
    let end = measure_from + Duration::from_secs_f64(args.duration_secs);
    let window = Arc::new(Window { measure_from, end });

    let n = args.connections;
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let target = Arc::clone(&target);
        let window = Arc::clone(&window);
        let schedule = args.rate.map(|rate| {
            // Connection i sends at start + i/rate + k·n/rate: together, one request every
            // 1/rate seconds.
            let interval = Duration::from_secs_f64(n as f64 / rate);
            let first = start + Duration::from_secs_f64(i as f64 / rate);
            (first, interval)
        });
        tasks.push(tokio::spawn(run_connection(target, window, schedule)));
    }

    let mut total = ConnStats::new();
    for t in tasks {
        let s = t
            .await
            .map_err(|e| format!("connection task failed: {e}"))?;
        total.requests += s.requests;
        total.errors += s.errors;
        total.hist.merge(&s.hist);
    }

    let seconds = args.duration_secs;
    let ok = total.requests - total.errors;
    let rps = ok as f64 / seconds;
    let line = format!(
        "{{\"requests\":{},\"errors\":{},\"seconds\":{:.3},\"rps\":{:.1},\"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\"max_us\":{}}}",
        total.requests,
        total.errors,
        seconds,
        rps,
        total.hist.percentile(50.0),
        total.hist.percentile(90.0),
        total.hist.percentile(99.0),
        total.hist.max,
    );
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())?;
    Ok(())
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

fn build_request(target: &Target) -> Request<Full<Bytes>> {
    let mut req = Request::new(Full::new(target.body.clone()));
    *req.method_mut() = target.method.clone();
    *req.uri_mut() = target.path.clone();
    *req.headers_mut() = target.headers.clone();
    if !target.tokens.is_empty() {
        let i = target.next_token.fetch_add(1, Ordering::Relaxed) % target.tokens.len();
        req.headers_mut()
            .insert(AUTHORIZATION, target.tokens[i].clone());
    }
    req
}

/// Outcome of one request: `Ok(true)` 2xx, `Ok(false)` other status (connection reusable),
/// `Err` transport failure (connection dropped).
async fn one_request(
    sender: &mut SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> Result<bool, String> {
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let ok = resp.status().is_success();
    resp.into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?;
    Ok(ok)
}

/// One keep-alive connection: closed loop when `schedule` is `None`, else open loop from
/// `(first send time, interval)`.
async fn run_connection(
    target: Arc<Target>,
    window: Arc<Window>,
    schedule: Option<(Instant, Duration)>,
) -> ConnStats {
    let mut stats = ConnStats::new();
    let mut sender: Option<SendRequest<Full<Bytes>>> = None;
    let mut next_at = schedule.map(|(first, _)| first);
    // Open loop: completion time of the previous request on a virtual timeline in which
    // every request is sent exactly at its scheduled time (see `latency` below).
    let mut virtual_done: Option<Instant> = None;

    loop {
        // Wait for the scheduled send time (open loop) and stop at the end of the window.
        if let Some(at) = next_at {
            if at >= window.end {
                break;
            }
            tokio::time::sleep_until(at).await;
        } else if Instant::now() >= window.end {
            break;
        }

        // (Re)connect, and wait until the connection can take a request.
        let ready = async {
            let mut s: SendRequest<Full<Bytes>> = match sender.take() {
                Some(s) => s,
                None => connect(target.addr).await?,
            };
            match s.ready().await {
                Ok(()) => Ok(s),
                // The server closed the idle connection (e.g. `Connection: close`): not an
                // error of the request, reconnect once.
                Err(_) => {
                    let mut s = connect(target.addr).await?;
                    s.ready().await.map_err(|e| format!("ready: {e}"))?;
                    Ok::<_, String>(s)
                }
            }
        };
        let mut s = match tokio::time::timeout_at(window.end, ready).await {
            Ok(Ok(s)) => s,
            Ok(Err(_)) => {
                let now = Instant::now();
                if now >= window.measure_from && now < window.end {
                    stats.requests += 1;
                    stats.errors += 1;
                }
                advance(&mut next_at, schedule);
                // Do not spin on a refused connection.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            Err(_) => break, // window ended while connecting
        };

        let req = build_request(&target);
        let sent = Instant::now();
        let outcome = match tokio::time::timeout_at(window.end, one_request(&mut s, req)).await {
            Ok(o) => o,
            Err(_) => break, // still in flight at the end of the window: not counted
        };
        let done = Instant::now();

        // Latency. Closed loop: send → response body fully read. Open loop: from the
        // scheduled send time, so that a slow response delays (and is charged to) the
        // requests queued behind it, i.e. no coordinated omission. Tokio's timer fires up to
        // ~1 ms late, which is the generator's fault, not the server's; so the latency is
        // computed on a virtual timeline where each request goes out at
        // max(its scheduled time, the previous request's virtual completion) and takes the
        // service time actually measured (Lindley's recursion).
        let latency = match (next_at, schedule) {
            (Some(at), Some(_)) => {
                let service = done - sent;
                let start = match virtual_done {
                    Some(prev) if prev > at => prev,
                    _ => at,
                };
                let vdone = start + service;
                virtual_done = Some(vdone);
                vdone - at
            }
            _ => done - sent,
        };

        let counted = done >= window.measure_from && done < window.end;
        match outcome {
            Ok(is_2xx) => {
                if counted {
                    stats.requests += 1;
                    if is_2xx {
                        stats.hist.record(latency.as_micros() as u64);
                    } else {
                        stats.errors += 1;
                    }
                }
                sender = Some(s);
            }
            Err(_) => {
                if counted {
                    stats.requests += 1;
                    stats.errors += 1;
                }
                // Drop the connection; the next iteration reconnects.
            }
        }
        advance(&mut next_at, schedule);
    }
    stats
}

fn advance(next_at: &mut Option<Instant>, schedule: Option<(Instant, Duration)>) {
    if let (Some(at), Some((_, interval))) = (next_at.as_mut(), schedule) {
        *at += interval;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_monotonic_and_tight() {
        let mut prev = 0usize;
        for v in [
            0u64,
            1,
            2,
            500,
            1023,
            1024,
            1025,
            2047,
            2048,
            10_000,
            1_000_000,
            1 << 40,
        ] {
            let i = Histogram::index(v);
            assert!(i >= prev, "index not monotonic at {v}");
            prev = i;
            let up = Histogram::upper(i);
            assert!(up >= v, "upper {up} < value {v}");
            assert!(
                (up - v) as f64 <= (v as f64) / 64.0 + 1.0,
                "bucket too wide at {v}"
            );
            assert!(i < BUCKETS);
        }
    }

    #[test]
    fn percentiles() {
        let mut h = Histogram::new();
        for v in 1..=1000u64 {
            h.record(v);
        }
        assert_eq!(h.percentile(50.0), 500);
        assert_eq!(h.percentile(99.0), 990);
        assert_eq!(h.percentile(100.0), 1000);
        assert_eq!(h.max, 1000);
        let mut g = Histogram::new();
        g.record(5000);
        h.merge(&g);
        assert_eq!(h.total, 1001);
        assert!(h.percentile(100.0) == 5000);
    }
}
