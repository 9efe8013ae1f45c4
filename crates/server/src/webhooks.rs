//! Sending webhooks: sealing their secrets, checking destinations against the SSRF guard,
//! and making one signed attempt.
//!
//! The guard judges the address actually connected to: names are resolved by a resolver
//! that drops every forbidden address (so a name that resolves to a private address, or is
//! re-pointed to one after registration, has nothing left to connect to), and literal
//! addresses are judged before the request is made. Redirects are never followed and no
//! proxy from the environment is used.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use datastack_core::audit::AuditKey;
use datastack_core::id::WebhookId;
use datastack_core::webhook::{WebhookSecret, forbidden_address};
use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use secrecy::zeroize::Zeroizing;

use crate::config::WebhookSettings;

/// The most of a response body read (then dropped): an endpoint cannot make a node read
/// without bound.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// The longest webhook URL.
pub const MAX_URL_LEN: usize = 2000;

/// What the dispatcher and the API share to send webhooks.
pub struct Webhooks {
    sealing: Zeroizing<[u8; 32]>,
    /// For `https://` URLs: every address but the forbidden ones (unless allowed).
    https: reqwest::Client,
    /// For `http://` URLs: only the allowed networks.
    http: reqwest::Client,
    allow: Arc<Vec<IpNet>>,
    /// The settings.
    pub settings: WebhookSettings,
}

/// Why a destination is refused.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Whether a delivery may connect to `ip`: allowed networks always; other addresses only
/// over HTTPS and only when the guard does not forbid them.
fn permitted(ip: IpAddr, plain_http: bool, allow: &[IpNet]) -> Result<(), Refused> {
    if allow.iter().any(|n| n.contains(&ip)) {
        return Ok(());
    }
    if let Some(why) = forbidden_address(ip) {
        return Err(Refused(format!(
            "{ip} is {why}; deliveries may not reach it unless an operator allows its network (webhook_allow_networks)"
        )));
    }
    if plain_http {
        return Err(Refused(format!(
            "{ip} is not in a network allowed for plain http (webhook_allow_networks); use https"
        )));
    }
    Ok(())
}

/// Resolves names and keeps only the addresses a delivery may connect to.
struct GuardedResolver {
    allow: Arc<Vec<IpNet>>,
    plain_http: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow = self.allow.clone();
        let plain_http = self.plain_http;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let kept: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| match permitted(a.ip(), plain_http, &allow) {
                    Ok(()) => true,
                    Err(e) => {
                        refused.get_or_insert(e);
                        false
                    }
                })
                .collect();
            if kept.is_empty() {
                let e: Box<dyn std::error::Error + Send + Sync> = match refused {
                    Some(e) => Box::new(e),
                    None => format!("{host} has no address").into(),
                };
                return Err(e);
            }
            let addrs: Addrs = Box::new(kept.into_iter());
            Ok(addrs)
        })
    }
}

fn client(settings: &WebhookSettings, resolver: GuardedResolver) -> reqwest::Client {
    reqwest::Client::builder()
        .dns_resolver(Arc::new(resolver))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
        .pool_max_idle_per_host(settings.endpoint_concurrency)
        .pool_idle_timeout(Duration::from_secs(30))
        .user_agent(concat!("datastack-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("the TLS backend initialises")
}

/// How one attempt went.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The status answered, when there was an answer.
    pub status: Option<u16>,
    /// What went wrong, in words (never the body sent or received).
    pub error: Option<String>,
    /// The answer's `Retry-After`, when it gave one in seconds.
    pub retry_after: Option<Duration>,
    /// How long it took.
    pub latency: Duration,
}

impl Attempt {
    /// A 2xx answer.
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }

    /// Whether trying again may help: no answer (timeout, connection), 5xx, 408 and 429.
    /// Other 4xx (and 3xx: redirects are not followed) will not change.
    pub fn retryable(&self) -> bool {
        match self.status {
            None => true,
            Some(s) => s >= 500 || s == 408 || s == 429,
        }
    }
}

impl Webhooks {
    /// The sender, with secrets sealed under a key derived from the audit key.
    pub fn new(settings: WebhookSettings, key: &AuditKey) -> Self {
        let allow = Arc::new(settings.allow_networks.clone());
        let https = client(
            &settings,
            GuardedResolver {
                allow: allow.clone(),
                plain_http: false,
            },
        );
        let http = client(
            &settings,
            GuardedResolver {
                allow: allow.clone(),
                plain_http: true,
            },
        );
        Self {
            sealing: key.derive("webhook secrets v1"),
            https,
            http,
            allow,
            settings,
        }
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new_from_slice(self.sealing.as_ref()).expect("a 32-byte key")
    }

    fn aad(id: &WebhookId) -> Vec<u8> {
        format!("datastack webhook secret\0{id}").into_bytes()
    }

    /// Seals a secret for webhook `id` (AES-256-GCM, the id bound as associated data, so a
    /// sealed secret moved to another webhook does not open).
    pub fn seal(&self, id: &WebhookId, secret: &WebhookSecret) -> String {
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce).expect("the operating system has randomness");
        let aad = Self::aad(id);
        let sealed = self
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: secret.expose().as_bytes(),
                    aad: &aad,
                },
            )
            .expect("AES-GCM encryption of a short message cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        base64::engine::general_purpose::STANDARD.encode(out)
    }

    /// Opens a sealed secret of webhook `id`.
    pub fn open(&self, id: &WebhookId, sealed: &str) -> Result<WebhookSecret, String> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .map_err(|_| "a sealed webhook secret is not base64".to_owned())?;
        if bytes.len() < 12 {
            return Err("a sealed webhook secret is too short".into());
        }
        let (nonce, sealed) = bytes.split_at(12);
        let aad = Self::aad(id);
        let plain = Zeroizing::new(
            self.cipher()
                .decrypt(
                    Nonce::from_slice(nonce),
                    Payload {
                        msg: sealed,
                        aad: &aad,
                    },
                )
                .map_err(|_| {
                    "a webhook secret does not open (another audit key, or a moved row)".to_owned()
                })?,
        );
        let text = std::str::from_utf8(&plain).map_err(|_| "not UTF-8".to_owned())?;
        WebhookSecret::parse(text).map_err(|e| e.to_string())
    }

    /// Checks a URL at registration: `https` (or `http` to an allowed network), no
    /// credentials or fragment, at most 2000 characters, and a host that is not, and does
    /// not resolve to, a forbidden address. A name that does not resolve yet is accepted
    /// (each delivery resolves and judges it again).
    pub async fn check_url(&self, raw: &str) -> Result<reqwest::Url, Refused> {
        if raw.len() > MAX_URL_LEN {
            return Err(Refused(format!("url: at most {MAX_URL_LEN} characters")));
        }
        let url = reqwest::Url::parse(raw)
            .map_err(|e| Refused(format!("url: is not an absolute URL ({e})")))?;
        let plain_http = match url.scheme() {
            "https" => false,
            "http" => true,
            _ => {
                return Err(Refused(
                    "url: must be https (or http to an allowed network)".into(),
                ));
            }
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Refused(
                "url: may not carry credentials (user:password@); sign-in is by signature".into(),
            ));
        }
        if url.fragment().is_some() {
            return Err(Refused("url: may not have a fragment".into()));
        }
        let host = match url.host() {
            Some(url::Host::Ipv4(ip)) => {
                permitted(IpAddr::V4(ip), plain_http, &self.allow)
                    .map_err(|e| Refused(format!("url: {e}")))?;
                return Ok(url);
            }
            Some(url::Host::Ipv6(ip)) => {
                permitted(IpAddr::V6(ip), plain_http, &self.allow)
                    .map_err(|e| Refused(format!("url: {e}")))?;
                return Ok(url);
            }
            Some(url::Host::Domain(d)) => d.to_owned(),
            None => return Err(Refused("url: has no host".into())),
        };
        let port = url.port_or_known_default().unwrap_or(443);
        let lookup = tokio::time::timeout(
            Duration::from_secs(3),
            tokio::net::lookup_host((host.as_str(), port)),
        )
        .await;
        if let Ok(Ok(addrs)) = lookup {
            for a in addrs {
                permitted(a.ip(), plain_http, &self.allow)
                    .map_err(|e| Refused(format!("url: {host} resolves to {}", e.0)))?;
            }
        }
        Ok(url)
    }

    /// Makes one attempt: a `POST` of `body` signed with each of `secrets` (the current
    /// one first) in both schemes.
    pub async fn send(
        &self,
        url: &str,
        message_id: &str,
        body: &str,
        secrets: &[WebhookSecret],
    ) -> Attempt {
        let started = Instant::now();
        let failed = |error: String| Attempt {
            status: None,
            error: Some(error),
            retry_after: None,
            latency: started.elapsed(),
        };
        let parsed = match reqwest::Url::parse(url) {
            Ok(u) => u,
            Err(_) => return failed("the stored URL does not parse".into()),
        };
        let plain_http = parsed.scheme() == "http";
        let literal = match parsed.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            _ => None,
        };
        if let Some(ip) = literal
            && let Err(e) = permitted(ip, plain_http, &self.allow)
        {
            return failed(e.0);
        }
        let timestamp = chrono::Utc::now().timestamp();
        let Some(current) = secrets.first() else {
            return failed("the webhook has no secret".into());
        };
        let standard: Vec<String> = secrets
            .iter()
            .map(|s| s.sign_standard(message_id, timestamp, body.as_bytes()))
            .collect();
        let client = if plain_http { &self.http } else { &self.https };
        let sent = client
            .post(parsed)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("x-webhook-signature", current.sign_body(body.as_bytes()))
            .header("webhook-id", message_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", standard.join(" "))
            .body(body.to_owned())
            .send()
            .await;
        let mut response = match sent {
            Ok(r) => r,
            Err(e) => return failed(describe(&e, self.settings.timeout)),
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, chrono::Utc::now()));
        // Read a bounded part of the answer so the connection can be reused; drop it.
        let mut read = 0usize;
        let mut error = None;
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    read += chunk.len();
                    if read > MAX_RESPONSE_BYTES {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    error = Some(describe(&e, self.settings.timeout));
                    break;
                }
            }
        }
        let error = if (200..300).contains(&status) {
            None
        } else {
            Some(error.unwrap_or_else(|| format!("the endpoint answered {status}")))
        };
        Attempt {
            status: Some(status),
            error,
            retry_after,
            latency: started.elapsed(),
        }
    }
}

/// A `Retry-After` value (RFC 9110 §10.2.3): delay-seconds or an HTTP-date.
fn parse_retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    (at.with_timezone(&chrono::Utc) - now).to_std().ok()
}

/// The scheme, host and port of a URL, for audit entries and logs: its path or query may be
/// a secret of the receiver's (a capability URL).
pub fn origin(url: &str) -> String {
    reqwest::Url::parse(url)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_default()
}

/// An error in words, without the URL (it may carry a token in its query) and bounded.
fn describe(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("timed out after {} ms", timeout.as_millis());
    }
    let mut parts = Vec::new();
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    let kind = if e.is_connect() {
        "could not connect"
    } else if e.is_body() || e.is_decode() {
        "the answer broke off"
    } else {
        "the request failed"
    };
    let mut text = match parts.last() {
        Some(root) => format!("{kind}: {root}"),
        None => kind.to_owned(),
    };
    text.truncate(300);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_seconds_or_an_http_date() {
        let now = chrono::DateTime::parse_from_rfc3339("2015-10-21T07:27:00Z")
            .expect("time")
            .with_timezone(&chrono::Utc);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            None
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn origins_drop_paths_and_queries() {
        assert_eq!(
            origin("https://hooks.example.com:8443/T0/B1/secret?token=x"),
            "https://hooks.example.com:8443"
        );
    }
}
