//! Credential verification: the one path every bearer credential goes through.
//!
//! A presented secret is checked for format and checksum, hashed, and looked up by digest,
//! first in a bounded in-process cache, then in the store. Revocations and principal
//! changes invalidate the cache (locally at once, on other nodes through the store's
//! announcements). A generation counter keeps a lookup that raced with an invalidation
//! from putting a stale entry back. Uses are buffered and written in batches.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use datastack_core::credential::{self, CredentialKind, SecretDigest};
use datastack_core::id::{TokenId, WorkspaceId};
use datastack_core::model::{Principal, Status, Token, Workspace};
use datastack_store::{CredentialRecord, Invalidation, Store, TokenUse};
use secrecy::SecretString;

use crate::metrics::Metrics;

/// A verified credential and the principal it acts for.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The credential.
    pub token: Token,
    /// Its owner, as of the verification.
    pub principal: Principal,
    /// The owner's workspace, as of the verification.
    pub workspace: Workspace,
    /// The workspace's ancestors, nearest first (its parent, …, the root); empty for the
    /// root workspace. Parents never change, so the chain stays true while cached; it lets
    /// a subtree invalidation find this identity and gives the workspace's depth.
    pub ancestors: Vec<WorkspaceId>,
    /// Whether some ancestor was suspended as of the verification: a suspension covers
    /// the whole subtree below the suspended workspace.
    pub ancestor_suspended: bool,
    /// The credential's kind.
    pub kind: CredentialKind,
    /// An API key's limits, address ranges and metadata.
    pub api_key: Option<datastack_core::apikey::ApiKeyPolicy>,
}

impl Identity {
    /// Whether the credential's workspace is `workspace` or lies below it.
    pub fn in_subtree_of(&self, workspace: &str) -> bool {
        self.workspace.id.as_str() == workspace
            || self.ancestors.iter().any(|a| a.as_str() == workspace)
    }

    /// The depth of the credential's workspace: 0 for the root, 1 for its children, ….
    pub fn workspace_depth(&self) -> usize {
        self.ancestors.len()
    }
}

/// Why a credential was refused. Every variant answers the same 401 to the client; the
/// distinction is for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Not a well-formed datastack secret.
    Malformed,
    /// Well-formed but unknown.
    Unknown,
    /// Past its expiry.
    Expired,
    /// Revoked.
    Revoked,
    /// Its owner is suspended.
    OwnerSuspended,
    /// Its owner's workspace is suspended.
    WorkspaceSuspended,
}

impl Rejection {
    /// A label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Malformed => "malformed",
            Rejection::Unknown => "unknown",
            Rejection::Expired => "expired",
            Rejection::Revoked => "revoked",
            Rejection::OwnerSuspended => "owner_suspended",
            Rejection::WorkspaceSuspended => "workspace_suspended",
        }
    }
}

/// A refusal, with the refused credential's identity when it exists.
pub type Refused = (Rejection, Option<Arc<Identity>>);

/// A failure to verify that is not the credential's fault.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct VerifyError(#[from] pub datastack_store::Error);

/// When and from where a token was last used, waiting for the next flush.
type LastUse = (DateTime<Utc>, Option<IpAddr>);

struct CachedCredential {
    identity: Arc<Identity>,
    fetched: Instant,
    /// The Unix second of the last use handed to the usage buffer: uses within the same
    /// second are not buffered again, which keeps the buffer's lock off most requests.
    last_noted: AtomicI64,
}

/// A credential found valid in the cache by [`CredentialVerifier::cached`].
pub struct CachedUse(Arc<CachedCredential>);

impl CachedUse {
    /// Who.
    pub fn identity(&self) -> &Arc<Identity> {
        &self.0.identity
    }

    /// Counts the cache hit and notes the use (at most once a second per credential), as
    /// [`CredentialVerifier::verify`] does.
    pub fn note(&self, verifier: &CredentialVerifier, ip: Option<IpAddr>) {
        verifier.metrics.cache_hit();
        let now = Utc::now();
        let second = now.timestamp();
        if self.0.last_noted.swap(second, Ordering::Relaxed) != second {
            verifier.note_use(&self.0.identity.token.id, now, ip);
        }
    }
}

/// Why a credential that exists is refused at `now`, if it is.
fn refusal(identity: &Identity, now: DateTime<Utc>) -> Option<Rejection> {
    if identity.token.revoked_at.is_some() {
        Some(Rejection::Revoked)
    } else if identity.token.expires_at.is_some_and(|e| e <= now) {
        Some(Rejection::Expired)
    } else if identity.principal.status != Status::Active {
        Some(Rejection::OwnerSuspended)
    } else if identity.workspace.status != Status::Active || identity.ancestor_suspended {
        Some(Rejection::WorkspaceSuspended)
    } else {
        None
    }
}

/// Verifies bearer credentials and keeps the cache of verified ones.
pub struct CredentialVerifier {
    store: Store,
    cache: quick_cache::sync::Cache<SecretDigest, Arc<CachedCredential>>,
    ttl: Duration,
    generation: AtomicU64,
    uses: std::sync::Mutex<HashMap<TokenId, LastUse>>,
    metrics: Arc<Metrics>,
    /// Digests of well-formed credentials the store did not know (see [`NegativeCache`]).
    unknown: NegativeCache,
    /// Trusted external issuers, whose JWTs are verified when the store does not know them.
    federation: Option<Arc<crate::federation::Federation>>,
}

/// What a node remembers about credentials the store did not know: their digests (never
/// the secrets), each for a short time, at most [`NEGATIVE_CAPACITY`] of them. A flood of
/// one unknown credential then costs one store query per TTL instead of one per request.
///
/// A credential created after its digest was remembered cannot be refused by it: every
/// secret is generated by the server from 256 random bits and shown only once created, so
/// no client can present it before it exists. The TTL bounds the only other case, a
/// credential that appears in the store behind the server's back (a restored backup).
struct NegativeCache {
    cache: quick_cache::sync::Cache<SecretDigest, Instant>,
    ttl: Duration,
}

/// The most unknown digests a node remembers.
const NEGATIVE_CAPACITY: usize = 65_536;

/// What a node knows about a presented secret before looking it up (see
/// [`CredentialVerifier::screen`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screened {
    /// Not a well-formed secret: refused without a lookup.
    Malformed,
    /// Verified by this node before (its cache holds it, perhaps past its TTL): looked up
    /// as usual.
    Known,
    /// Never verified by this node: a lookup would be a store query.
    New,
}

impl CredentialVerifier {
    /// A verifier over `store` caching up to `capacity` credentials for at most `ttl`.
    pub fn new(store: Store, capacity: usize, ttl: Duration, metrics: Arc<Metrics>) -> Self {
        Self {
            store,
            cache: quick_cache::sync::Cache::new(capacity),
            ttl,
            generation: AtomicU64::new(0),
            uses: std::sync::Mutex::new(HashMap::new()),
            metrics,
            unknown: NegativeCache {
                cache: quick_cache::sync::Cache::new(NEGATIVE_CAPACITY),
                ttl: Duration::ZERO,
            },
            federation: None,
        }
    }

    /// Accepts the JWTs of the trusted issuers `federation` keeps.
    pub fn with_federation(mut self, federation: Arc<crate::federation::Federation>) -> Self {
        self.federation = Some(federation);
        self
    }

    /// Remembers unknown digests for `ttl` (zero: not at all).
    pub fn with_negative_cache(mut self, ttl: Duration) -> Self {
        self.unknown.ttl = ttl;
        self
    }

    /// Whether verifying `secret` could cost a store query: a malformed secret never does,
    /// one this node has verified before is looked up as usual, and a new one is what a
    /// caller may want to rate-limit first.
    pub fn screen(&self, secret: &SecretString) -> Screened {
        match credential::parse_presented(secret) {
            None => Screened::Malformed,
            Some(p) if self.cache.peek(&p.digest).is_some() => Screened::Known,
            Some(_) => Screened::New,
        }
    }

    /// Verifies a presented secret at `now` from `ip`. A refused credential that exists
    /// comes back with its identity, so the refusal can be attributed in the audit log.
    pub async fn verify(
        &self,
        secret: &SecretString,
        ip: Option<IpAddr>,
    ) -> Result<Result<Arc<Identity>, Refused>, VerifyError> {
        self.verify_with(secret, ip, true).await
    }

    /// Verifies like [`Self::verify`] without recording a use: for a caller that decides
    /// afterwards whether the check counts as one ([`Self::record_use`]).
    pub async fn check(
        &self,
        secret: &SecretString,
    ) -> Result<Result<Arc<Identity>, Refused>, VerifyError> {
        self.verify_with(secret, None, false).await
    }

    /// Records a use of a verified credential (batched like every use).
    pub fn record_use(&self, identity: &Identity, ip: Option<IpAddr>) {
        self.note_use(&identity.token.id, Utc::now(), ip);
    }

    /// The fast path's lookup: a cached, valid credential, with nothing counted or noted
    /// (the caller does both with [`CachedUse::note`] once it has decided to answer).
    /// `None` when the secret is malformed, not cached, past the cache's TTL or refused:
    /// the full path then verifies it and answers.
    pub fn cached(&self, secret: &SecretString) -> Option<CachedUse> {
        let presented = credential::parse_presented(secret)?;
        let entry = self
            .cache
            .get(&presented.digest)
            .filter(|c| c.fetched.elapsed() < self.ttl)?;
        refusal(&entry.identity, Utc::now())
            .is_none()
            .then_some(CachedUse(entry))
    }

    async fn verify_with(
        &self,
        secret: &SecretString,
        ip: Option<IpAddr>,
        note: bool,
    ) -> Result<Result<Arc<Identity>, Refused>, VerifyError> {
        let Some(presented) = credential::parse_presented(secret) else {
            return Ok(Err((Rejection::Malformed, None)));
        };
        let now = Utc::now();
        let cached = self
            .cache
            .get(&presented.digest)
            .filter(|c| c.fetched.elapsed() < self.ttl);
        let entry = match cached {
            Some(entry) => {
                self.metrics.cache_hit();
                entry
            }
            None => {
                if self
                    .unknown
                    .cache
                    .get(&presented.digest)
                    .is_some_and(|at| at.elapsed() < self.unknown.ttl)
                {
                    self.metrics.cache_negative_hit();
                    return Ok(Err((Rejection::Unknown, None)));
                }
                self.metrics.cache_miss();
                // Boxed: the store queries make this future large, and a cached
                // credential (the common case) should not carry it.
                match Box::pin(self.load(secret, &presented)).await? {
                    Some(entry) => entry,
                    None => return Ok(Err((Rejection::Unknown, None))),
                }
            }
        };
        let identity = &entry.identity;
        if let Some(rejection) = refusal(identity, now) {
            return Ok(Err((rejection, Some(identity.clone()))));
        }
        let second = now.timestamp();
        if note && entry.last_noted.swap(second, Ordering::Relaxed) != second {
            self.note_use(&identity.token.id, now, ip);
        }
        Ok(Ok(identity.clone()))
    }

    /// Looks up a credential this node has not cached and caches it; `None` when the store
    /// does not know it.
    async fn load(
        &self,
        secret: &SecretString,
        presented: &credential::PresentedSecret,
    ) -> Result<Option<Arc<CachedCredential>>, VerifyError> {
        let generation = self.generation.load(Ordering::SeqCst);
        // A JWT whose `iss` is a trusted issuer's is never one of this server's (its own
        // issuer cannot be trusted), so it skips the store lookup by digest.
        let federation = self.federation.as_deref().filter(|f| {
            presented.kind == CredentialKind::OAuthAccessToken && f.names_trusted_issuer(secret)
        });
        let found = match federation {
            Some(federation) => self.federated(federation, secret, presented).await?,
            None => {
                self.store
                    .find_token_by_digest(presented.kind, &presented.digest.to_hex())
                    .await?
            }
        };
        let Some(CredentialRecord {
            token,
            api_key,
            owner,
            workspace,
        }) = found
        else {
            if !self.unknown.ttl.is_zero() {
                self.unknown
                    .cache
                    .insert(presented.digest.clone(), Instant::now());
            }
            return Ok(None);
        };
        // The digest was the lookup key; compare it again in constant time so the
        // decision never rests on a variable-time comparison.
        if !presented.digest.ct_eq(&token.digest_hex) {
            return Ok(None);
        }
        // A suspended ancestor refuses the whole subtree below it. Only a workspace
        // with a parent needs the (one, recursive) chain query, and it runs on this
        // uncached path only: the cached path decides from the entry alone, and a
        // status change anywhere in the chain drops the entry on every node.
        let chain = if workspace.parent_id.is_some() {
            self.store.workspace_ancestors(&workspace.id).await?
        } else {
            Vec::new()
        };
        let ancestor_suspended = chain.iter().any(|(_, s)| *s != Status::Active);
        let entry = Arc::new(CachedCredential {
            identity: Arc::new(Identity {
                token,
                principal: owner,
                workspace,
                ancestors: chain.into_iter().map(|(id, _)| id).collect(),
                ancestor_suspended,
                kind: presented.kind,
                api_key,
            }),
            fetched: Instant::now(),
            last_noted: AtomicI64::new(i64::MIN),
        });
        // Cache only what no invalidation raced with. An invalidation bumps the
        // generation before it removes entries, so either the second check sees the
        // bump, or the invalidation's removal runs after this insert.
        if self.generation.load(Ordering::SeqCst) == generation {
            self.cache.insert(presented.digest.clone(), entry.clone());
            if self.generation.load(Ordering::SeqCst) != generation {
                self.cache.remove(&presented.digest);
            }
        }
        Ok(Some(entry))
    }

    /// The record of a trusted issuer's token: verified, its subject mapped to a principal.
    /// It is never stored: its id (`xjt_…`, from its digest) names it in audit entries, and
    /// its label is its issuer's id, which drops it from every cache when the issuer
    /// changes.
    async fn federated(
        &self,
        federation: &crate::federation::Federation,
        secret: &SecretString,
        presented: &credential::PresentedSecret,
    ) -> Result<Option<CredentialRecord>, VerifyError> {
        let Some(verified) = federation.verify(secret).await? else {
            return Ok(None);
        };
        let config = &verified.issuer.config;
        let owner = verified.principal;
        let workspace = self.store.get_workspace(&config.workspace_id).await?;
        let digest_hex = presented.digest.to_hex();
        let jwt = secrecy::ExposeSecret::expose_secret(secret);
        let token = datastack_core::model::Token {
            id: TokenId::from_trusted(format!("xjt_{}", &digest_hex[..32])),
            kind: CredentialKind::OAuthAccessToken,
            owner_id: owner.id.clone(),
            workspace_id: config.workspace_id.clone(),
            label: config.id.to_string(),
            digest_hex,
            last_four: jwt[jwt.len().saturating_sub(4)..].to_owned(),
            scopes: verified.scopes,
            created_at: verified.issued_at,
            expires_at: Some(verified.expires_at),
            revoked_at: None,
            last_used_at: None,
            last_used_ip: None,
        };
        Ok(Some(CredentialRecord {
            token,
            api_key: None,
            owner,
            workspace,
        }))
    }

    fn note_use(&self, id: &TokenId, at: DateTime<Utc>, ip: Option<IpAddr>) {
        let mut uses = self.uses.lock().unwrap_or_else(|p| p.into_inner());
        uses.insert(id.clone(), (at, ip));
    }

    /// Drops what `inv` names from the cache.
    pub fn invalidate(&self, inv: &Invalidation) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        match inv {
            Invalidation::Token(digest_hex) => {
                // The cache is keyed by digest: drop the entry directly.
                match SecretDigest::from_hex(digest_hex) {
                    Some(digest) => {
                        self.cache.remove(&digest);
                    }
                    None => self.cache.clear(),
                }
            }
            Invalidation::Credential(id) => self.remove_where(|i| i.token.id.as_str() == id),
            Invalidation::Principal(id) => self.remove_where(|i| i.principal.id.as_str() == id),
            // An OAuth access token is labelled with its client's id.
            Invalidation::OAuthClient(id) => self.remove_where(|i| {
                i.token.kind == datastack_core::credential::CredentialKind::OAuthAccessToken
                    && i.token.label == *id
            }),
            // A trusted issuer's tokens are labelled with its id.
            Invalidation::Issuer(id) => self.remove_where(|i| i.token.label == *id),
            Invalidation::Workspace(id) => self.remove_where(|i| i.workspace.id.as_str() == id),
            Invalidation::WorkspaceTree(id) => self.remove_where(|i| i.in_subtree_of(id)),
            Invalidation::All => {
                self.cache.clear();
                self.unknown.cache.clear();
            }
            // Edge rules, and the token endpoint's copy of a client: not credentials.
            Invalidation::OAuthClientChanged(_)
            | Invalidation::Routes
            | Invalidation::IpLists(_)
            | Invalidation::Penalty(_)
            | Invalidation::Heartbeat => {}
        }
    }

    fn remove_where(&self, matches: impl Fn(&Identity) -> bool) {
        let victims: Vec<SecretDigest> = self
            .cache
            .iter()
            .filter(|(_, v)| matches(&v.identity))
            .map(|(k, _)| k)
            .collect();
        for k in victims {
            self.cache.remove(&k);
        }
    }

    /// Writes the buffered uses to the store. On failure they are put back, keeping any
    /// newer use recorded meanwhile.
    pub async fn flush_uses(&self) -> Result<usize, VerifyError> {
        let batch: Vec<TokenUse> = {
            let mut uses = self.uses.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::take(&mut *uses)
                .into_iter()
                .map(|(id, (at, ip))| TokenUse { id, at, ip })
                .collect()
        };
        if batch.is_empty() {
            return Ok(0);
        }
        match self.store.record_token_uses(&batch).await {
            Ok(()) => Ok(batch.len()),
            Err(e) => {
                let mut uses = self.uses.lock().unwrap_or_else(|p| p.into_inner());
                for u in batch {
                    uses.entry(u.id).or_insert((u.at, u.ip));
                }
                Err(e.into())
            }
        }
    }
}
