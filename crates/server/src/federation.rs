//! Federation: access tokens of trusted external issuers (an IdP such as Okta, Entra ID or
//! Keycloak) accepted as Bearer credentials.
//!
//! A JWT that datastack did not issue (its digest is not stored) is checked here when its
//! `iss` is a trusted issuer's: the signature with the issuer's published keys, `iss`,
//! `aud`, `exp` and `nbf` (with a minute of clock skew), and the algorithm against the
//! issuer's allowed list. `alg: none`, HMAC algorithms and keys named by the token itself
//! (`jku`, `x5u`, `jwk`) are refused whatever the configuration says. The token's subject
//! is mapped to a principal of the issuer's workspace (an existing one, or one provisioned
//! just in time), and its scopes are those it claims that the issuer may give. The result
//! is cached by the token's digest like every verified credential, until the token expires.
//!
//! Key sets are fetched with timeouts, kept, refreshed when a token names an unknown key
//! (at most once per [`REFRESH_INTERVAL`] per issuer, so a flood of made-up key ids does
//! not become a flood of requests to the IdP), and kept serving while the IdP is down.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use chrono::{DateTime, TimeZone as _, Utc};
use datastack_core::audit::{AuditRecord, SecurityEvent};
use datastack_core::authz::Role;
use datastack_core::id::PrincipalId;
use datastack_core::model::PrincipalKind;
use datastack_core::oauth::{Provisioning, SubjectClaim, TrustedIssuer};
use datastack_core::scope::{Scope, ScopeSet};
use datastack_core::validate::Email;
use datastack_store::{NewPrincipal, Store, Trail};
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use secrecy::{ExposeSecret, SecretString};

/// The least time between two fetches of one issuer's keys prompted by unknown key ids.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(30);

/// How old a key set may get before it is fetched again on the next use.
const KEYS_MAX_AGE: Duration = Duration::from_secs(3600);

/// The clock skew allowed on `exp` and `nbf`.
const LEEWAY_SECONDS: u64 = 60;

/// The largest key set or discovery document read from an IdP.
const MAX_DOCUMENT_BYTES: usize = 256 * 1024;

/// A published key: its `kid`, the algorithm it declares, the key, its family.
type PublishedKey = (Option<String>, Option<Algorithm>, Arc<DecodingKey>, Family);

/// A trusted issuer's keys, as last fetched.
#[derive(Default)]
struct KeyState {
    keys: Vec<PublishedKey>,
    fetched: Option<Instant>,
    /// The last fetch prompted by a key id the keys did not have.
    unknown_kid_fetch: Option<Instant>,
    /// The last failed fetch (the IdP unreachable): retried after [`REFRESH_INTERVAL`].
    failed: Option<Instant>,
}

/// The kind of key, which decides the algorithms it may verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Rsa,
    Ec,
    Okp,
}

fn family_of(alg: Algorithm) -> Option<Family> {
    match alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => Some(Family::Rsa),
        Algorithm::ES256 | Algorithm::ES384 => Some(Family::Ec),
        Algorithm::EdDSA => Some(Family::Okp),
        // HMAC (never with a published key), and anything newer this code does not know.
        _ => None,
    }
}

/// One trusted issuer with its keys.
pub struct Trusted {
    /// Its configuration.
    pub config: TrustedIssuer,
    keys: Arc<tokio::sync::Mutex<KeyState>>,
    /// Which principal each subject was found to be (its id only: the principal itself is
    /// read again for every new token, so a suspension or deletion counts at once). Dropped
    /// with the issuer's configuration on any change to it.
    subjects: quick_cache::sync::Cache<String, PrincipalId>,
}

/// The subjects of one issuer whose principal a node keeps.
const SUBJECTS_KEPT: usize = 10_000;

/// A token whose signature and claims were verified.
pub struct Verified {
    /// Its issuer.
    pub issuer: Arc<Trusted>,
    /// The principal it maps to, as of the verification.
    pub principal: datastack_core::model::Principal,
    /// What it may do: what it claims that the issuer may give.
    pub scopes: ScopeSet,
    /// When it was issued.
    pub issued_at: DateTime<Utc>,
    /// When it expires.
    pub expires_at: DateTime<Utc>,
}

/// The trusted issuers each node keeps, with their keys.
pub struct Federation {
    store: Store,
    http: reqwest::Client,
    by_iss: RwLock<Arc<HashMap<String, Arc<Trusted>>>>,
    /// The key sets of OAuth clients that publish theirs (`jwks_uri`), by URL.
    client_keys: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<KeyState>>>>,
}

#[derive(serde::Deserialize)]
struct Unverified {
    iss: Option<String>,
}

impl Federation {
    /// The federation over `store`; call [`Self::reload`] before use.
    pub fn new(store: Store) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
            .unwrap_or_default();
        Self {
            store,
            http,
            by_iss: RwLock::new(Arc::new(HashMap::new())),
            client_keys: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Reads the trusted issuers again, keeping the keys of those whose key source did
    /// not change.
    pub async fn reload(&self) -> Result<(), datastack_store::Error> {
        let issuers = self.store.all_issuers().await?;
        let old = self.snapshot();
        let mut next = HashMap::with_capacity(issuers.len());
        for config in issuers {
            let keys = old
                .get(&config.issuer)
                .filter(|t| t.config.id == config.id && t.config.jwks_uri == config.jwks_uri)
                .map(|t| t.keys.clone())
                .unwrap_or_default();
            next.insert(
                config.issuer.clone(),
                Arc::new(Trusted {
                    config,
                    keys,
                    subjects: quick_cache::sync::Cache::new(SUBJECTS_KEPT),
                }),
            );
        }
        *self.by_iss.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        Ok(())
    }

    fn snapshot(&self) -> Arc<HashMap<String, Arc<Trusted>>> {
        self.by_iss
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether `token`'s `iss` (read unverified) is a trusted issuer's.
    pub fn names_trusted_issuer(&self, token: &SecretString) -> bool {
        self.issuer_of(token.expose_secret()).is_some()
    }

    /// Verifies `token` if its `iss` is a trusted issuer's; `Ok(None)` when it is not
    /// one's, or fails any check (the reason is logged at debug level, never the token).
    pub async fn verify(
        &self,
        token: &SecretString,
    ) -> Result<Option<Verified>, datastack_store::Error> {
        let token = token.expose_secret();
        let Some(issuer) = self.issuer_of(token) else {
            return Ok(None);
        };
        let claims = match self.check_signature(&issuer, token).await {
            Ok(claims) => claims,
            Err(why) => {
                tracing::debug!(issuer = %issuer.config.id, why, "an external token was refused");
                return Ok(None);
            }
        };
        let config = &issuer.config;
        // Scopes: those it claims that the issuer may give; unknown names are ignored.
        let claimed: Vec<String> = match claims.get(&config.scope_claim) {
            Some(serde_json::Value::String(s)) => s.split(' ').map(str::to_owned).collect(),
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        let granted: Vec<String> = claimed
            .iter()
            .filter_map(|s| s.parse::<Scope>().ok())
            .filter(|s| config.scopes.covers(*s))
            .map(|s| s.to_string())
            .collect();
        let Ok(scopes) = ScopeSet::parse(&granted) else {
            tracing::debug!(issuer = %config.id, "an external token claims no scope the issuer may give");
            return Ok(None);
        };
        let Some(principal) = self.principal_for(&issuer, &claims).await? else {
            return Ok(None);
        };
        let time = |name: &str| {
            claims
                .get(name)
                .and_then(serde_json::Value::as_i64)
                .and_then(|t| Utc.timestamp_opt(t, 0).single())
        };
        let Some(expires_at) = time("exp") else {
            return Ok(None);
        };
        Ok(Some(Verified {
            issued_at: time("iat").unwrap_or_else(Utc::now),
            expires_at,
            issuer,
            principal,
            scopes,
        }))
    }

    /// The trusted issuer a token names in `iss` (read before any check, only to choose
    /// the keys).
    fn issuer_of(&self, token: &str) -> Option<Arc<Trusted>> {
        let map = self.snapshot();
        if map.is_empty() {
            return None;
        }
        let payload = token.split('.').nth(1)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .ok()?;
        let claims: Unverified = serde_json::from_slice(&bytes).ok()?;
        map.get(claims.iss.as_deref()?).cloned()
    }

    /// Checks the header, the signature and the registered claims; returns the claims.
    async fn check_signature(
        &self,
        issuer: &Trusted,
        token: &str,
    ) -> Result<serde_json::Map<String, serde_json::Value>, &'static str> {
        let (header, family) = checked_header(token)?;
        let alg_name = format!("{:?}", header.alg);
        if !issuer.config.algorithms.contains(&alg_name) {
            return Err("an algorithm the issuer is not trusted with");
        }
        let source = match &issuer.config.jwks_uri {
            Some(uri) => KeySource::Uri(uri),
            None => KeySource::Discovery(&issuer.config.issuer),
        };
        let key = self
            .key_for(
                &issuer.keys,
                source,
                header.kid.as_deref(),
                header.alg,
                family,
            )
            .await
            .ok_or("no key of the issuer matches")?;
        let validation = validation(
            header.alg,
            &issuer.config.issuer,
            &issuer.config.audiences,
            &["exp", "iss", "aud"],
        );
        jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, &key, &validation)
            .map(|data| data.claims)
            .map_err(|_| "the signature or a claim (iss, aud, exp, nbf) is invalid")
    }

    /// The key a token names, fetching the issuer's keys when they are missing, old, or
    /// do not have it (at a bounded rate).
    async fn key_for(
        &self,
        keys: &tokio::sync::Mutex<KeyState>,
        source: KeySource<'_>,
        kid: Option<&str>,
        alg: Algorithm,
        family: Family,
    ) -> Option<Arc<DecodingKey>> {
        let mut state = keys.lock().await;
        let find = |state: &KeyState| find_key(&state.keys, kid, alg, family);
        let stale = state.fetched.is_none_or(|f| f.elapsed() > KEYS_MAX_AGE);
        let known = find(&state);
        if !stale && known.is_some() {
            return known;
        }
        let recently = |at: Option<Instant>| at.is_some_and(|a| a.elapsed() < REFRESH_INTERVAL);
        // Missing or old keys are fetched (unless the IdP just failed); an unknown key id
        // prompts a fetch at most once per interval.
        let may_fetch = !recently(state.failed) && (stale || !recently(state.unknown_kid_fetch));
        if may_fetch {
            if !stale {
                state.unknown_kid_fetch = Some(Instant::now());
            }
            match self.fetch_keys(source).await {
                Ok(keys) => {
                    state.keys = keys;
                    state.fetched = Some(Instant::now());
                    state.failed = None;
                }
                // The keys fetched before keep serving while the source is unreachable.
                Err(e) => {
                    state.failed = Some(Instant::now());
                    tracing::warn!(error = %e, "cannot fetch a key set; the last keys keep serving")
                }
            }
        }
        find(&state)
    }

    /// Fetches an issuer's key set (its `jwks_uri`, or the one its discovery document names).
    async fn fetch_keys(&self, source: KeySource<'_>) -> Result<Vec<PublishedKey>, String> {
        let uri = match source {
            KeySource::Uri(uri) => uri.to_owned(),
            KeySource::Discovery(issuer) => {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    issuer.trim_end_matches('/')
                );
                let doc: serde_json::Value = self.get_json(&url).await?;
                if doc.get("issuer").and_then(|v| v.as_str()) != Some(issuer) {
                    return Err("the discovery document names another issuer".into());
                }
                doc.get("jwks_uri")
                    .and_then(|v| v.as_str())
                    .ok_or("the discovery document has no jwks_uri")?
                    .to_owned()
            }
        };
        let set: JwkSet = serde_json::from_value(self.get_json(&uri).await?)
            .map_err(|e| format!("not a JWK set: {e}"))?;
        let keys: Vec<_> = set.keys.iter().filter_map(usable).collect();
        if keys.is_empty() {
            return Err("the key set has no usable signing key".into());
        }
        Ok(keys)
    }

    async fn get_json(&self, url: &str) -> Result<serde_json::Value, String> {
        let mut response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("{url}: {}", response.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| format!("{url}: {e}"))? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(format!("{url}: larger than {MAX_DOCUMENT_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|e| format!("{url}: not JSON: {e}"))
    }

    /// The principal a verified token's subject is, provisioning it when the issuer says so.
    async fn principal_for(
        &self,
        issuer: &Trusted,
        claims: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Option<datastack_core::model::Principal>, datastack_store::Error> {
        let config = &issuer.config;
        let Some(subject) = claims
            .get(config.subject_claim.as_str())
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty() && s.len() <= 256)
        else {
            return Ok(None);
        };
        if config.subject_claim == SubjectClaim::Email
            && claims.get("email_verified") == Some(&serde_json::Value::Bool(false))
        {
            // An address the IdP says it did not verify names nobody.
            return Ok(None);
        }
        let id = match issuer.subjects.get(subject) {
            Some(id) => Some(id),
            None => self.find_subject(issuer, subject).await?,
        };
        let id = match id {
            Some(id) => id,
            None if config.provisioning == Provisioning::Jit => {
                self.provision(config, subject).await?
            }
            None => return Ok(None),
        };
        // A link or an address in another workspace names nobody here.
        let principal = self
            .store
            .get_principal_by_id(&id)
            .await?
            .filter(|p| p.workspace_id == config.workspace_id);
        if principal.is_some() {
            issuer.subjects.insert(subject.to_owned(), id);
        } else {
            issuer.subjects.remove(subject);
        }
        Ok(principal)
    }

    /// The principal a subject is linked to (`sub`) or the user with that address (`email`).
    async fn find_subject(
        &self,
        issuer: &Trusted,
        subject: &str,
    ) -> Result<Option<PrincipalId>, datastack_store::Error> {
        let config = &issuer.config;
        Ok(match config.subject_claim {
            SubjectClaim::Sub => self.store.issuer_subject(&config.id, subject).await?,
            SubjectClaim::Email => {
                let Ok(email) = Email::parse(subject) else {
                    return Ok(None);
                };
                self.store
                    .find_user_by_email(&config.workspace_id, &email)
                    .await?
                    .map(|p| p.id)
            }
        })
    }

    /// Creates a viewer for a subject just in time (audited as `principals.provisioned`
    /// with the security event of the same name).
    async fn provision(
        &self,
        config: &TrustedIssuer,
        subject: &str,
    ) -> Result<PrincipalId, datastack_store::Error> {
        let (kind, email) = match config.subject_claim {
            SubjectClaim::Email => (PrincipalKind::User, Email::parse(subject).ok()),
            SubjectClaim::Sub => (PrincipalKind::ServicePrincipal, None),
        };
        let new = NewPrincipal {
            workspace_id: config.workspace_id.clone(),
            kind,
            email,
            name: datastack_core::bounded::text(subject, 200).into_owned(),
            role: Role::Viewer,
        };
        let trail = |p: &datastack_core::model::Principal| {
            let mut record = AuditRecord::system(
                config.workspace_id.clone(),
                "principals.provisioned",
                "principals",
            );
            record.resource_id = Some(p.id.to_string());
            let detail = serde_json::json!({
                "issuerId": config.id,
                "issuer": config.issuer,
                "subjectClaim": config.subject_claim.as_str(),
                "principalId": p.id,
                "role": "viewer",
            });
            record.detail = Some(detail.to_string());
            Trail::of(record).with_event(SecurityEvent::new(
                config.workspace_id.clone(),
                "principals.provisioned",
                detail,
            ))
        };
        let created = match self.store.create_principal(&new, trail).await {
            Ok(p) => p.id,
            // Another node provisioned the same address first.
            Err(datastack_store::Error::Conflict(_)) if kind == PrincipalKind::User => {
                let email = new.email.as_ref().ok_or(datastack_store::Error::NotFound)?;
                return self
                    .store
                    .find_user_by_email(&config.workspace_id, email)
                    .await?
                    .map(|p| p.id)
                    .ok_or(datastack_store::Error::NotFound);
            }
            Err(e) => return Err(e),
        };
        match config.subject_claim {
            SubjectClaim::Sub => {
                self.store
                    .link_issuer_subject(&config.id, subject, &created)
                    .await
            }
            SubjectClaim::Email => Ok(created),
        }
    }
}

/// The header of a JWT from outside, if this server may verify it at all: it names no key
/// of its own (`jku`, `x5u`, `jwk`) and an asymmetric algorithm (never HMAC or `none`).
fn checked_header(token: &str) -> Result<(jsonwebtoken::Header, Family), &'static str> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| "a malformed header")?;
    if header.jku.is_some() || header.x5u.is_some() || header.jwk.is_some() {
        return Err("the header names its own key (jku, x5u or jwk)");
    }
    let family = family_of(header.alg).ok_or("an HMAC algorithm")?;
    Ok((header, family))
}

/// The claim checks for a JWT from outside: `alg`, `iss`, one of `audiences`, `exp` and
/// `nbf` with the clock-skew allowance, and the `required` claims present.
fn validation(alg: Algorithm, iss: &str, audiences: &[String], required: &[&str]) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = LEEWAY_SECONDS;
    v.validate_nbf = true;
    v.set_issuer(&[iss]);
    v.set_audience(audiences);
    v.set_required_spec_claims(required);
    v
}

/// Where a key set comes from.
#[derive(Debug, Clone, Copy)]
enum KeySource<'a> {
    /// OIDC discovery under this issuer.
    Discovery(&'a str),
    /// This URL.
    Uri(&'a str),
}

/// The key among `keys` that a token's `kid` and `alg` name: of the algorithm's family and
/// (when the key declares one) its algorithm; without a `kid`, only an unambiguous key.
fn find_key(
    keys: &[PublishedKey],
    kid: Option<&str>,
    alg: Algorithm,
    family: Family,
) -> Option<Arc<DecodingKey>> {
    let candidates: Vec<_> = keys
        .iter()
        .filter(|(k, a, _, f)| {
            *f == family && a.is_none_or(|a| a == alg) && (kid.is_none() || k.as_deref() == kid)
        })
        .collect();
    match (kid, candidates.as_slice()) {
        (None, [one]) => Some(one.2.clone()),
        (Some(_), [first, ..]) => Some(first.2.clone()),
        _ => None,
    }
}

/// Checks a JWK set given as JSON (a client's registered `jwks`): how many keys it has, or
/// why it cannot be used.
pub fn check_jwks(text: &str) -> Result<usize, String> {
    let set: JwkSet = serde_json::from_str(text).map_err(|e| format!("not a JWK set: {e}"))?;
    if set.keys.iter().any(|k| usable(k).is_none()) {
        return Err(
            "every key must be an RSA, EC or OKP public signing key (no symmetric key)".into(),
        );
    }
    Ok(set.keys.len())
}

/// What a verified client assertion (RFC 7523) says.
pub struct ClientAssertion {
    /// Its `jti`, to be used once.
    pub jti: String,
    /// When it expires.
    pub expires_at: DateTime<Utc>,
}

/// The longest lifetime a client assertion may have.
const MAX_ASSERTION_SECONDS: i64 = 3600;

/// The key sets of clients' `jwks_uri` kept at most (beyond, they are all forgotten).
const CLIENT_KEY_SOURCES: usize = 10_000;

impl Federation {
    /// Verifies a client's signed assertion (`private_key_jwt`): a header naming no key of
    /// its own and an asymmetric algorithm, a signature by one of the client's keys (its
    /// registered `jwks`, or its `jwks_uri`), `iss` and `sub` both the client id, an `aud`
    /// among `audiences`, `exp` within the hour, and a `jti`.
    pub async fn verify_client_assertion(
        &self,
        client: &datastack_core::oauth::OAuthClient,
        assertion: &str,
        audiences: &[String],
    ) -> Result<ClientAssertion, &'static str> {
        let (header, family) = checked_header(assertion)?;
        let kid = header.kid.as_deref();
        let key = match (&client.jwks, &client.jwks_uri) {
            (Some(text), _) => {
                let set: JwkSet =
                    serde_json::from_str(text).map_err(|_| "the client's keys are unreadable")?;
                let keys: Vec<PublishedKey> = set.keys.iter().filter_map(usable).collect();
                find_key(&keys, kid, header.alg, family)
            }
            (None, Some(uri)) => {
                let keys = {
                    let mut sources = self.client_keys.lock().unwrap_or_else(|p| p.into_inner());
                    if sources.len() >= CLIENT_KEY_SOURCES && !sources.contains_key(uri) {
                        sources.clear();
                    }
                    sources.entry(uri.clone()).or_default().clone()
                };
                self.key_for(&keys, KeySource::Uri(uri), kid, header.alg, family)
                    .await
            }
            (None, None) => None,
        }
        .ok_or("no key of the client matches")?;
        let mut validation = validation(
            header.alg,
            client.id.as_str(),
            audiences,
            &["exp", "iss", "sub", "aud"],
        );
        validation.sub = Some(client.id.to_string());
        let claims = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            assertion,
            &key,
            &validation,
        )
        .map_err(|_| "the signature or a claim (iss, sub, aud, exp, nbf) is invalid")?
        .claims;
        let jti = claims
            .get("jti")
            .and_then(|v| v.as_str())
            .filter(|j| !j.is_empty() && j.len() <= 256)
            .ok_or("no jti")?
            .to_owned();
        let expires_at = claims
            .get("exp")
            .and_then(serde_json::Value::as_i64)
            .and_then(|t| Utc.timestamp_opt(t, 0).single())
            .ok_or("no exp")?;
        if expires_at > Utc::now() + chrono::Duration::seconds(MAX_ASSERTION_SECONDS) {
            return Err("the assertion lives longer than an hour");
        }
        Ok(ClientAssertion { jti, expires_at })
    }
}

/// A published key this server may verify with: a signing key (not `use: enc`) of an
/// asymmetric family, never a symmetric (`oct`) one.
fn usable(jwk: &Jwk) -> Option<PublishedKey> {
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != jsonwebtoken::jwk::PublicKeyUse::Signature)
    {
        return None;
    }
    let family = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Family::Rsa,
        AlgorithmParameters::EllipticCurve(_) => Family::Ec,
        AlgorithmParameters::OctetKeyPair(_) => Family::Okp,
        // A symmetric key, and any kind this code does not know.
        _ => return None,
    };
    let alg = jwk
        .common
        .key_algorithm
        .and_then(|a| a.to_string().parse::<Algorithm>().ok());
    if alg.is_some_and(|a| family_of(a) != Some(family)) {
        return None;
    }
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some((jwk.common.key_id.clone(), alg, Arc::new(key), family))
}
