//! Webhooks: signing secrets, the two signature schemes every delivery carries, the
//! addresses a delivery may never reach (the SSRF rules), and the catalogue of event types.
//!
//! Every delivery is signed twice over the same bytes:
//! - `X-Webhook-Signature`: lowercase hex HMAC-SHA256 of the raw body keyed with the secret
//!   exactly as shown to the user (its UTF-8 text, `whsec_…` included);
//! - Standard Webhooks: `webhook-signature: v1,<base64>`, HMAC-SHA256 over
//!   `{webhook-id}.{webhook-timestamp}.{body}` keyed with the base64-decoded part of the
//!   secret after `whsec_`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use ipnet::IpNet;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

type HmacSha256 = Hmac<Sha256>;

/// The prefix of webhook secrets (the Standard Webhooks convention).
pub const SECRET_PREFIX: &str = "whsec_";
/// The shortest and longest key a secret may decode to, in bytes.
const KEY_BYTES: std::ops::RangeInclusive<usize> = 24..=64;
/// The length of the key of a generated secret.
const GENERATED_KEY_BYTES: usize = 32;

/// A webhook's signing secret. It never appears in a `Debug` output.
#[derive(Clone)]
pub struct WebhookSecret {
    text: Zeroizing<String>,
    key: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(…)")
    }
}

impl WebhookSecret {
    /// A new random secret (32 bytes of key).
    pub fn generate() -> Self {
        let mut key = Zeroizing::new(vec![0u8; GENERATED_KEY_BYTES]);
        getrandom::fill(key.as_mut_slice()).expect("the operating system has randomness");
        let text = Zeroizing::new(format!(
            "{SECRET_PREFIX}{}",
            STANDARD.encode(key.as_slice())
        ));
        Self { text, key }
    }

    /// Parses a secret a user chose: `whsec_` followed by standard base64 of 24–64 bytes,
    /// the form the Standard Webhooks libraries read. The error never repeats the value.
    pub fn parse(s: &str) -> crate::Result<Self> {
        let invalid = || {
            crate::Error::invalid(
                "secret",
                "must be `whsec_` followed by the standard base64 of 24 to 64 random bytes",
            )
        };
        let body = s.strip_prefix(SECRET_PREFIX).ok_or_else(invalid)?;
        if body.len() > 100 {
            return Err(invalid());
        }
        let key = Zeroizing::new(STANDARD.decode(body).map_err(|_| invalid())?);
        if !KEY_BYTES.contains(&key.len()) {
            return Err(invalid());
        }
        Ok(Self {
            text: Zeroizing::new(s.to_owned()),
            key,
        })
    }

    /// The secret as the user sees it, `whsec_…`.
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// The seed's scheme: hex HMAC-SHA256 of the raw body keyed with the secret's text.
    pub fn sign_body(&self, body: &[u8]) -> String {
        let mut mac = HmacSha256::new_from_slice(self.text.as_bytes())
            .expect("HMAC accepts keys of any length");
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }

    /// One Standard Webhooks signature, `v1,<base64>`, over `id.timestamp.body`.
    pub fn sign_standard(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac =
            HmacSha256::new_from_slice(&self.key).expect("HMAC accepts keys of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }

    /// Whether `signature` (the `X-Webhook-Signature` header) is this secret's hex
    /// HMAC-SHA256 of `body`, compared in constant time.
    pub fn verify_body(&self, body: &[u8], signature: &str) -> bool {
        let expected = self.sign_body(body);
        bool::from(expected.as_bytes().ct_eq(signature.trim().as_bytes()))
    }

    /// Whether one of the space-separated `v1,` entries of a `webhook-signature` header is
    /// this secret's signature of `id.timestamp.body`, and the timestamp is within
    /// `tolerance_seconds` of `now` (either side). Comparisons are constant-time.
    pub fn verify_standard(
        &self,
        id: &str,
        timestamp: &str,
        body: &[u8],
        signatures: &str,
        now: i64,
        tolerance_seconds: i64,
    ) -> Result<(), VerifyError> {
        let ts: i64 = timestamp.parse().map_err(|_| VerifyError::BadTimestamp)?;
        if (now - ts).abs() > tolerance_seconds {
            return Err(VerifyError::OutsideTolerance);
        }
        let expected = self.sign_standard(id, ts, body);
        let matched = signatures
            .split(' ')
            .filter(|s| s.starts_with("v1,"))
            .fold(false, |acc, s| {
                acc | bool::from(s.as_bytes().ct_eq(expected.as_bytes()))
            });
        if matched {
            Ok(())
        } else {
            Err(VerifyError::NoMatch)
        }
    }
}

/// Why a Standard Webhooks signature did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// `webhook-timestamp` is not a number of seconds.
    #[error("the timestamp is not a number of seconds")]
    BadTimestamp,
    /// The timestamp is too far from now: a replay, or a clock far off.
    #[error("the timestamp is outside the tolerance")]
    OutsideTolerance,
    /// No signature matches.
    #[error("no signature matches")]
    NoMatch,
}

/// The networks a webhook may never reach unless an operator allows them, with the reason
/// a refusal gives.
static FORBIDDEN: LazyLock<Vec<(IpNet, &'static str)>> = LazyLock::new(|| {
    [
        ("0.0.0.0/8", "an unspecified or \"this network\" address"),
        ("10.0.0.0/8", "a private address"),
        ("100.64.0.0/10", "a carrier-grade NAT address"),
        ("127.0.0.0/8", "a loopback address"),
        (
            "169.254.0.0/16",
            "a link-local address (cloud metadata lives here)",
        ),
        ("172.16.0.0/12", "a private address"),
        ("192.0.0.0/24", "an IETF protocol address"),
        ("192.168.0.0/16", "a private address"),
        ("198.18.0.0/15", "a benchmarking address"),
        ("224.0.0.0/4", "a multicast address"),
        ("240.0.0.0/4", "a reserved or broadcast address"),
        ("::/128", "an unspecified address"),
        ("::1/128", "a loopback address"),
        (
            "fc00::/7",
            "a unique-local address (cloud metadata lives here)",
        ),
        ("fe80::/10", "a link-local address"),
        ("ff00::/8", "a multicast address"),
        ("2002::/16", "a 6to4 address (it embeds an IPv4 address)"),
        ("64:ff9b:1::/48", "a local-use NAT64 address"),
    ]
    .into_iter()
    .map(|(net, why)| (net.parse().expect("a valid network literal"), why))
    .collect()
});

/// Why a delivery may not connect to `ip`, or `None` when it may. IPv4 addresses embedded
/// in IPv6 (mapped, compatible, NAT64) are judged as the IPv4 address they carry.
pub fn forbidden_address(ip: IpAddr) -> Option<&'static str> {
    let ip = match ip {
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    };
    FORBIDDEN
        .iter()
        .find(|(net, _)| net.contains(&ip))
        .map(|(_, why)| *why)
}

fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = v6.segments();
    // NAT64 well-known prefix 64:ff9b::/96.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let o = v6.octets();
        return Some(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
    }
    // IPv4-compatible (deprecated) ::a.b.c.d, except :: and ::1.
    if s[..6] == [0; 6] && (s[6] != 0 || s[7] > 1) {
        let o = v6.octets();
        return Some(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
    }
    None
}

/// Who may raise events of a type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Only the server (security events, credential and webhook lifecycle).
    Server,
    /// Upstream services, through `POST /api/v1/events`.
    Upstream,
}

impl Source {
    /// The source's name in the catalogue.
    pub const fn as_str(self) -> &'static str {
        match self {
            Source::Server => "server",
            Source::Upstream => "upstream",
        }
    }
}

/// One type of event a webhook can subscribe to.
#[derive(Debug, Clone, Copy)]
pub struct EventType {
    /// Its name, `group.what`.
    pub name: &'static str,
    /// What it means.
    pub description: &'static str,
    /// Who raises it.
    pub source: Source,
    /// String fields its `data` always has.
    pub required: &'static [&'static str],
}

macro_rules! catalogue {
    ($($name:literal, $source:ident, [$($req:literal),*], $desc:literal;)+) => {
        /// Every event type, sorted by name.
        pub const CATALOGUE: &[EventType] = &[
            $(EventType { name: $name, description: $desc, source: Source::$source, required: &[$($req),*] }),+
        ];
    };
}

catalogue! {
    "api_key.created", Server, [], "An API key was created.";
    "api_key.expiring_soon", Server, ["keyId"], "An API key expires within the notice period (expiry_notice_hours).";
    "api_key.revoked", Server, [], "An API key was revoked.";
    "api_key.rotated", Server, [], "An API key was rotated; the old secret works until the overlap ends.";
    "api_key.rotation_due", Server, [], "An API key is past its rotation interval.";
    "api_key.spend_limit_reached", Server, [], "An API key reached its spend limit; its requests are refused with 402.";
    "api_key.spend_warning", Server, [], "An API key spent 80% of its limit for the period.";
    "api_key.updated", Server, [], "An API key's settings changed.";
    "audit.growth_exceeded", Server, [], "A workspace's audit log grows faster than its alert threshold.";
    "audit.tamper_detected", Server, [], "The audit chain of a workspace failed verification.";
    "auth.failure_burst", Server, [], "Many failed authentications from one address or for one credential.";
    "cluster.terminated", Upstream, ["clusterId"], "A cluster was terminated.";
    "credential.new_network", Server, [], "A credential was used from a network it had not been seen from.";
    "job.completed", Upstream, ["jobId"], "A job run finished successfully.";
    "job.failed", Upstream, ["jobId"], "A job run failed.";
    "oauth.refresh_reuse_detected", Server, [], "A rotated refresh token was presented again; its family was revoked.";
    "oauth_client.created", Server, [], "An OAuth client was created.";
    "oauth_client.deleted", Server, [], "An OAuth client was deleted; its tokens stopped working.";
    "oauth_client.secret_rotated", Server, [], "An OAuth client's secret was rotated.";
    "oauth_issuer.trusted", Server, [], "An external token issuer was trusted.";
    "oauth_issuer.untrusted", Server, [], "An external token issuer was removed.";
    "pipeline.completed", Upstream, ["pipelineId"], "A pipeline update finished successfully.";
    "pipeline.failed", Upstream, ["pipelineId"], "A pipeline update failed.";
    "principals.provisioned", Server, [], "Principals were provisioned just in time from an external token.";
    "ratelimit.abuse_flagged", Server, [], "A client kept sending while rate limited and was flagged.";
    "test.ping", Server, [], "A test delivery sent by `POST /api/v1/webhooks/{id}/test`.";
    "token.auto_revoke_scheduled", Server, [], "Unused tokens were scheduled for automatic revocation.";
    "token.created", Server, [], "A personal access token was created.";
    "token.expiring_soon", Server, ["tokenId"], "A personal access token expires within the notice period (expiry_notice_hours).";
    "token.revoked", Server, [], "A personal access token was revoked.";
    "webhook.disabled", Server, ["webhookId"], "A webhook failed for too long without a success and was disabled.";
}

/// The catalogue's entry for `name`.
pub fn lookup(name: &str) -> Option<&'static EventType> {
    CATALOGUE.iter().find(|t| t.name == name)
}

impl EventType {
    /// A JSON Schema (2020-12) of the type's `data`.
    pub fn schema(&self) -> serde_json::Value {
        let properties: serde_json::Map<String, serde_json::Value> = self
            .required
            .iter()
            .map(|f| ((*f).to_owned(), serde_json::json!({"type": "string"})))
            .collect();
        serde_json::json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": properties,
            "required": self.required,
            "additionalProperties": true,
        })
    }

    /// Checks `data` against [`EventType::schema`]: an object whose required fields are
    /// non-empty strings.
    pub fn check(&self, data: &serde_json::Value) -> crate::Result<()> {
        let Some(object) = data.as_object() else {
            return Err(crate::Error::invalid("data", "must be a JSON object"));
        };
        for field in self.required {
            match object.get(*field) {
                Some(serde_json::Value::String(s)) if !s.is_empty() => {}
                _ => {
                    return Err(crate::Error::invalid(
                        "data",
                        format!("`{}` needs `{field}`, a non-empty string", self.name),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A subscription filter: `*`, `group.*` (every type of a group) or a type of the
/// catalogue.
pub fn parse_filter(s: &str) -> crate::Result<String> {
    if s == "*" || lookup(s).is_some() {
        return Ok(s.to_owned());
    }
    if let Some(group) = s.strip_suffix(".*")
        && CATALOGUE
            .iter()
            .any(|t| t.name.split_once('.').is_some_and(|(g, _)| g == group))
    {
        return Ok(s.to_owned());
    }
    let shown = if s.len() <= 60 && s.bytes().all(|b| b.is_ascii_graphic()) {
        format!("`{s}`")
    } else {
        "a value".to_owned()
    };
    Err(crate::Error::invalid(
        "events",
        format!(
            "{shown} is not an event type: use `*`, `group.*` or a type from GET /api/v1/webhooks/event-types"
        ),
    ))
}

/// The subscription filters an event of `event_type` matches: the type, its group's
/// `group.*`, and `*`.
pub fn matching_filters(event_type: &str) -> [String; 3] {
    let group = event_type
        .split_once('.')
        .map_or(event_type, |(g, _)| g)
        .to_owned();
    [event_type.to_owned(), format!("{group}.*"), "*".to_owned()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_parse_back_and_sign_both_ways() {
        let s = WebhookSecret::generate();
        let again = WebhookSecret::parse(s.expose()).expect("parses");
        let body = br#"{"type":"test.ping"}"#;
        assert_eq!(s.sign_body(body), again.sign_body(body));
        assert!(again.verify_body(body, &s.sign_body(body)));
        assert!(!again.verify_body(b"{}", &s.sign_body(body)));
        let sig = s.sign_standard("evt_1", 1_700_000_000, body);
        assert!(sig.starts_with("v1,"));
        let header = format!("v1,AAAA {sig}");
        assert_eq!(
            again.verify_standard("evt_1", "1700000000", body, &header, 1_700_000_010, 300),
            Ok(())
        );
        assert_eq!(
            again.verify_standard("evt_2", "1700000000", body, &header, 1_700_000_010, 300),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            again.verify_standard("evt_1", "1700000000", body, &header, 1_700_001_000, 300),
            Err(VerifyError::OutsideTolerance)
        );
    }

    #[test]
    fn chosen_secrets_must_be_whsec_base64_of_enough_bytes() {
        assert!(WebhookSecret::parse("hunter2").is_err());
        assert!(WebhookSecret::parse("whsec_c2hvcnQ=").is_err());
        assert!(WebhookSecret::parse("whsec_!!!!").is_err());
        let ok = format!("whsec_{}", STANDARD.encode([7u8; 32]));
        assert!(WebhookSecret::parse(&ok).is_ok());
        let err = WebhookSecret::parse("whsec_notbase64secretvalue").expect_err("refused");
        assert!(!err.to_string().contains("notbase64secretvalue"));
    }

    #[test]
    fn private_and_special_addresses_are_forbidden() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "::7f00:1",
        ] {
            let ip: IpAddr = bad.parse().expect("an address");
            assert!(forbidden_address(ip).is_some(), "{bad} must be forbidden");
        }
        for good in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700:4700::1111",
            "64:ff9b::808:808",
        ] {
            let ip: IpAddr = good.parse().expect("an address");
            assert_eq!(forbidden_address(ip), None, "{good} must be allowed");
        }
    }

    #[test]
    fn filters_are_types_groups_or_everything() {
        assert!(parse_filter("*").is_ok());
        assert!(parse_filter("job.completed").is_ok());
        assert!(parse_filter("job.*").is_ok());
        assert!(parse_filter("nope.*").is_err());
        assert!(parse_filter("job.exploded").is_err());
        assert_eq!(
            matching_filters("job.failed"),
            ["job.failed".to_owned(), "job.*".to_owned(), "*".to_owned()]
        );
    }

    #[test]
    fn the_catalogue_is_sorted_and_checks_required_fields() {
        assert!(CATALOGUE.windows(2).all(|w| w[0].name < w[1].name));
        let job = lookup("job.completed").expect("listed");
        assert!(job.check(&serde_json::json!({"jobId": "j1"})).is_ok());
        assert!(job.check(&serde_json::json!({"jobId": ""})).is_err());
        assert!(job.check(&serde_json::json!([1])).is_err());
        assert_eq!(job.schema()["required"][0], "jobId");
    }
}
