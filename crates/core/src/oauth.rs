//! OAuth 2.0 clients: their kinds, the grants they may use, their secrets.
//!
//! A client secret has the format of the other secrets (`dcsk`, 64 hex characters of 256
//! random bits, a CRC-32 checksum) and only its SHA-256 digest is stored. A fast digest is
//! enough: the secret is 256 random bits, so there is nothing a slow hash would protect
//! against guessing (a slow hash defends low-entropy passwords), and it keeps client
//! authentication cheap enough that a flood of wrong secrets costs the server little.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::credential::{self, NewSecret, SecretDigest};
use crate::id::{OAuthClientId, PrincipalId, TrustedIssuerId, WorkspaceId};
use crate::scope::ScopeSet;

/// The prefix of client secrets.
pub const CLIENT_SECRET_PREFIX: &str = "dcsk";

/// The regular expression a secret scanner can use for client secrets.
pub const CLIENT_SECRET_SCANNER_REGEX: &str = r"\bdcsk[0-9a-f]{72}\b";

/// A new client secret, shown once.
pub fn generate_client_secret() -> NewSecret {
    credential::generate_prefixed(CLIENT_SECRET_PREFIX)
}

/// The digest of a presented client secret whose format and checksum are valid.
pub fn parse_client_secret(s: &str) -> Option<SecretDigest> {
    credential::parse_prefixed(s, CLIENT_SECRET_PREFIX)
}

/// The prefix of refresh tokens.
pub const REFRESH_TOKEN_PREFIX: &str = "dsrt";

/// The prefix of device codes (RFC 8628: the secret a device polls the token endpoint with).
pub const DEVICE_CODE_PREFIX: &str = "dsdc";

/// The regular expression a secret scanner can use for refresh tokens.
pub const REFRESH_TOKEN_SCANNER_REGEX: &str = r"\bdsrt[0-9a-f]{72}\b";

/// A new refresh token (the first of its family), shown once.
pub fn generate_refresh_token() -> NewSecret {
    credential::generate_prefixed(REFRESH_TOKEN_PREFIX)
}

/// The successor of the refresh token `parent` once it is used: derived with HMAC-SHA256
/// keyed by the parent secret over the successor's id (random, stored with the parent).
/// Only someone holding the parent secret *and* reading the store could compute it, and
/// the server can hand the same successor to a client's concurrent refresh (the grace
/// period) without ever storing a refresh secret.
pub fn refresh_successor(parent: &str, successor_id: &str) -> NewSecret {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(parent.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(b"datastack refresh-token successor v1\0");
    mac.update(successor_id.as_bytes());
    let bytes: [u8; 32] = mac.finalize().into_bytes().into();
    credential::prefixed_from_bytes(REFRESH_TOKEN_PREFIX, &bytes)
}

/// The digest of a presented refresh token whose format and checksum are valid.
pub fn parse_refresh_token(s: &str) -> Option<SecretDigest> {
    credential::parse_prefixed(s, REFRESH_TOKEN_PREFIX)
}

/// A new device code, shown once (to the device).
pub fn generate_device_code() -> NewSecret {
    credential::generate_prefixed(DEVICE_CODE_PREFIX)
}

/// The digest of a presented device code whose format and checksum are valid.
pub fn parse_device_code(s: &str) -> Option<SecretDigest> {
    credential::parse_prefixed(s, DEVICE_CODE_PREFIX)
}

/// The letters of user codes: consonants only (RFC 8628 §6.1: no vowels, so no words;
/// no digits, so nothing to confuse with letters), 20 of them.
const USER_CODE_ALPHABET: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";

/// How many letters a user code has: 20^8 ≈ 2^34.6 codes, with at most a few thousand
/// pending at once and the number of wrong entries limited per user.
const USER_CODE_LEN: usize = 8;

/// A new user code, as shown to people: `BDFG-HJKL`.
pub fn generate_user_code() -> String {
    let mut out = String::with_capacity(USER_CODE_LEN + 1);
    let mut random = [0u8; USER_CODE_LEN];
    // Rejection sampling: a byte is used only below the largest multiple of 20 (240), so
    // every letter is equally likely.
    while out.len() < USER_CODE_LEN + 1 {
        getrandom::fill(&mut random).expect("the operating system random source is available");
        for b in random {
            if b < 240 && out.len() < USER_CODE_LEN + 1 {
                if out.len() == USER_CODE_LEN / 2 {
                    out.push('-');
                }
                out.push(char::from(USER_CODE_ALPHABET[usize::from(b % 20)]));
            }
        }
    }
    out
}

/// The digest a user code is stored and looked up by, if `entered` is one: case, spaces
/// and dashes do not matter (people type them).
pub fn user_code_digest(entered: &str) -> Option<SecretDigest> {
    if entered.len() > 32 {
        return None;
    }
    let normal: String = entered
        .chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let valid =
        normal.len() == USER_CODE_LEN && normal.bytes().all(|b| USER_CODE_ALPHABET.contains(&b));
    valid.then(|| credential::digest_of(&format!("user-code:{normal}")))
}

/// Whether a client can keep a secret (RFC 6749 §2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientType {
    /// A server-side client with a secret.
    Confidential,
    /// A client that cannot keep a secret (a CLI, a native app).
    Public,
}

impl ClientType {
    /// The name in the API and the store.
    pub const fn as_str(self) -> &'static str {
        match self {
            ClientType::Confidential => "confidential",
            ClientType::Public => "public",
        }
    }

    /// The type a stored name stands for.
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "confidential" => Some(ClientType::Confidential),
            "public" => Some(ClientType::Public),
            _ => None,
        }
    }
}

/// A grant a client may use at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GrantType {
    /// RFC 6749 §4.4: the client acts as its own service principal.
    ClientCredentials,
    /// RFC 8693: a token of another subject (a datastack credential) exchanged for a
    /// narrower access token that the client uses on the subject's behalf.
    TokenExchange,
    /// RFC 6749 §6: a refresh token exchanged for a new access token and a new refresh
    /// token (rotation).
    RefreshToken,
    /// RFC 8628: a device without a browser gets a token once a signed-in user approves
    /// its user code.
    DeviceCode,
}

impl GrantType {
    /// Every grant this server issues tokens for.
    pub const ALL: &'static [GrantType] = &[
        GrantType::ClientCredentials,
        GrantType::TokenExchange,
        GrantType::RefreshToken,
        GrantType::DeviceCode,
    ];

    /// The grant's `grant_type` value.
    pub const fn as_str(self) -> &'static str {
        match self {
            GrantType::ClientCredentials => "client_credentials",
            GrantType::TokenExchange => "urn:ietf:params:oauth:grant-type:token-exchange",
            GrantType::RefreshToken => "refresh_token",
            GrantType::DeviceCode => "urn:ietf:params:oauth:grant-type:device_code",
        }
    }

    /// The grant a `grant_type` value names, if this server supports it.
    pub fn parse(s: &str) -> Option<Self> {
        GrantType::ALL.iter().copied().find(|g| g.as_str() == s)
    }
}

/// An OAuth client as stored (never its secret: only the digest).
#[derive(Debug, Clone)]
pub struct OAuthClient {
    /// Its `client_id`.
    pub id: OAuthClientId,
    /// Its workspace.
    pub workspace_id: WorkspaceId,
    /// A name for people.
    pub name: String,
    /// Confidential or public.
    pub client_type: ClientType,
    /// The grants it may use.
    pub grant_types: Vec<GrantType>,
    /// Where the authorization endpoint may send its users back (exact match).
    pub redirect_uris: Vec<String>,
    /// The most its tokens may carry.
    pub scopes: ScopeSet,
    /// The `aud` values its tokens may be issued for; the first is the default.
    pub audiences: Vec<String>,
    /// The lifetime of its access tokens.
    pub access_token_ttl_seconds: i64,
    /// The lifetime of its refresh tokens.
    pub refresh_token_ttl_seconds: i64,
    /// The service principal its `client_credentials` tokens act as.
    pub owner_id: Option<PrincipalId>,
    /// The digest of its current secret (confidential clients).
    pub secret_digest: Option<String>,
    /// The current secret's last four characters.
    pub secret_last_four: Option<String>,
    /// The digest of the previous secret, during a rotation's overlap.
    pub previous_secret_digest: Option<String>,
    /// Until when the previous secret still authenticates (after a rotation with overlap).
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    /// When the current secret was issued.
    pub secret_rotated_at: Option<DateTime<Utc>>,
    /// Who created it.
    pub created_by: Option<String>,
    /// When.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// When it last got a token (updated at each issuance).
    pub last_used_at: Option<DateTime<Utc>>,
    /// Its public keys, a JWK set as JSON, for `private_key_jwt` (RFC 7523).
    pub jwks: Option<String>,
    /// Where it publishes its JWK set, for `private_key_jwt`.
    pub jwks_uri: Option<String>,
}

impl OAuthClient {
    /// Whether the client authenticates with a signed assertion (`private_key_jwt`)
    /// rather than a secret.
    pub fn uses_private_key_jwt(&self) -> bool {
        self.jwks.is_some() || self.jwks_uri.is_some()
    }

    /// Whether the client may use `grant`.
    pub fn allows(&self, grant: GrantType) -> bool {
        self.grant_types.contains(&grant)
    }

    /// Whether `presented` (a digest) is the client's secret at `now`: the current one, or
    /// the previous one before its overlap ends. Compared in constant time.
    pub fn secret_matches(&self, presented: &SecretDigest, now: DateTime<Utc>) -> bool {
        let current = self
            .secret_digest
            .as_deref()
            .is_some_and(|d| presented.ct_eq(d));
        let previous = self
            .previous_secret_expires_at
            .is_some_and(|until| until > now)
            && self
                .previous_secret_digest
                .as_deref()
                .is_some_and(|d| presented.ct_eq(d));
        current | previous
    }
}

/// Which claim of an external token names its principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectClaim {
    /// `sub`: mapped to a principal through the issuer's subject links.
    Sub,
    /// `email`: a user of the issuer's workspace with that email.
    Email,
}

impl SubjectClaim {
    /// The claim's name.
    pub const fn as_str(self) -> &'static str {
        match self {
            SubjectClaim::Sub => "sub",
            SubjectClaim::Email => "email",
        }
    }

    /// The claim a stored name stands for.
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "sub" => Some(SubjectClaim::Sub),
            "email" => Some(SubjectClaim::Email),
            _ => None,
        }
    }
}

/// What happens to a subject no principal stands for yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provisioning {
    /// The token is refused: only existing (or linked) principals.
    Existing,
    /// A principal is created just in time with the `viewer` role: a user for an `email`
    /// subject, a service principal for a `sub` one.
    Jit,
}

impl Provisioning {
    /// The name in the API and the store.
    pub const fn as_str(self) -> &'static str {
        match self {
            Provisioning::Existing => "existing",
            Provisioning::Jit => "jit",
        }
    }

    /// The value a stored name stands for.
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "existing" => Some(Provisioning::Existing),
            "jit" => Some(Provisioning::Jit),
            _ => None,
        }
    }
}

/// The signature algorithms an external issuer may be trusted with: asymmetric only (an
/// HMAC algorithm would make the published key a signing key).
pub const FEDERATION_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// A trusted external issuer of access tokens (federation).
#[derive(Debug, Clone)]
pub struct TrustedIssuer {
    /// `oti_…`.
    pub id: TrustedIssuerId,
    /// The workspace its principals belong to.
    pub workspace_id: WorkspaceId,
    /// The exact `iss` of its tokens.
    pub issuer: String,
    /// Where its keys are; `None`: found by OIDC discovery under `issuer`.
    pub jwks_uri: Option<String>,
    /// The `aud` values accepted (a token must carry one of them).
    pub audiences: Vec<String>,
    /// The signature algorithms accepted (from [`FEDERATION_ALGORITHMS`]).
    pub algorithms: Vec<String>,
    /// The claim that names the principal.
    pub subject_claim: SubjectClaim,
    /// Whether unknown subjects are provisioned.
    pub provisioning: Provisioning,
    /// The claim holding the token's scopes: `scope` (space-separated) or `scp` (a list or
    /// a space-separated string).
    pub scope_claim: String,
    /// The most its tokens may ever carry; what a token claims beyond is ignored.
    pub scopes: ScopeSet,
    /// Who registered it.
    pub created_by: Option<String>,
    /// When.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn client_secrets_have_their_own_prefix_and_checksum() {
        let new = generate_client_secret();
        let s = new.secret.expose_secret();
        assert!(s.starts_with("dcsk"));
        assert_eq!(parse_client_secret(s), Some(new.digest.clone()));
        // A token's prefix is not a client secret's, and the checksum covers the prefix.
        assert!(parse_client_secret(&format!("dapi{}", &s[4..])).is_none());
        let mut tampered = s.to_owned().into_bytes();
        tampered[10] = if tampered[10] == b'0' { b'1' } else { b'0' };
        assert!(parse_client_secret(&String::from_utf8(tampered).expect("ascii")).is_none());
        // Not a bearer credential.
        assert!(credential::parse_presented(&new.secret).is_none());
    }

    #[test]
    fn a_refresh_successor_depends_on_its_parent_and_its_id() {
        let parent = generate_refresh_token();
        let p = parent.secret.expose_secret();
        let a = refresh_successor(p, "ort_1");
        assert_eq!(a.digest, refresh_successor(p, "ort_1").digest);
        assert_ne!(a.digest, refresh_successor(p, "ort_2").digest);
        let other = generate_refresh_token();
        assert_ne!(
            a.digest,
            refresh_successor(other.secret.expose_secret(), "ort_1").digest
        );
        assert_eq!(
            parse_refresh_token(a.secret.expose_secret()),
            Some(a.digest.clone())
        );
        assert!(parse_device_code(a.secret.expose_secret()).is_none());
    }

    #[test]
    fn user_codes_are_typed_loosely_and_checked_strictly() {
        for _ in 0..100 {
            let code = generate_user_code();
            assert_eq!(code.len(), 9, "{code}");
            assert_eq!(&code[4..5], "-");
            let d = user_code_digest(&code).expect("valid");
            assert_eq!(user_code_digest(&code.to_lowercase()), Some(d.clone()));
            assert_eq!(user_code_digest(&code.replace('-', " ")), Some(d));
        }
        assert!(user_code_digest("BCDF-GHJA").is_none(), "a vowel");
        assert!(user_code_digest("BCDF-GHJ").is_none(), "too short");
        assert!(user_code_digest("BCDF-GHJK-L").is_none(), "too long");
        assert!(user_code_digest(&"B".repeat(1000)).is_none());
    }

    #[test]
    fn only_supported_grants_parse() {
        assert_eq!(
            GrantType::parse("client_credentials"),
            Some(GrantType::ClientCredentials)
        );
        assert_eq!(GrantType::parse("password"), None);
        assert_eq!(GrantType::parse("CLIENT_CREDENTIALS"), None);
    }
}
