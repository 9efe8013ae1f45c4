//! Issuing credentials: the rules every new personal access token and API key follows,
//! written once. Who may own it (the caller, or, for admins, another principal of the
//! workspace), which scopes it may get (never more than the credential that creates it
//! holds), how long it may live (within the owner's workspace's maximum lifetime), and
//! the record that is stored (only the secret's digest).

use chrono::{DateTime, Duration, Utc};
use datastack_core::authz::Role;
use datastack_core::credential::{self, CredentialKind, NewSecret};
use datastack_core::id::{PrincipalId, TokenId};
use datastack_core::model::{Principal, PrincipalKind, Token};
use datastack_core::scope::ScopeSet;

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Who may own a new credential besides its creator.
#[derive(Debug, Clone, Copy)]
pub enum Owners {
    /// Any principal of the workspace (personal access tokens).
    AnyPrincipal,
    /// Only the workspace's service principals (API keys).
    ServicePrincipals,
}

impl Owners {
    fn credentials(self) -> &'static str {
        match self {
            Owners::AnyPrincipal => "tokens for other principals",
            Owners::ServicePrincipals => "keys for a service principal",
        }
    }
}

/// The owner of a new credential: the caller when `owner_id` is absent or the caller's own
/// id; otherwise, for admins only, the principal of the caller's workspace it names.
pub async fn resolve_owner(
    state: &AppState,
    me: &Principal,
    owner_id: Option<&str>,
    owners: Owners,
) -> ApiResult<Principal> {
    let id = match owner_id {
        None => return Ok(me.clone()),
        Some(id) if id == me.id.as_str() => return Ok(me.clone()),
        Some(_) if me.role != Role::Admin => {
            return Err(ApiError::Forbidden(format!(
                "only admins may create {}",
                owners.credentials()
            )));
        }
        Some(id) => id,
    };
    let (id, kind) = match owners {
        Owners::AnyPrincipal => {
            let id = PrincipalId::parse(id)
                .map_err(|_| ApiError::InvalidRequest("ownerId: must be a principal id".into()))?;
            let kind = if id.as_str().starts_with("usr_") {
                PrincipalKind::User
            } else {
                PrincipalKind::ServicePrincipal
            };
            (id, kind)
        }
        Owners::ServicePrincipals => {
            let id = PrincipalId::parse(id)
                .ok()
                .filter(|id| id.as_str().starts_with("sp_"))
                .ok_or_else(|| {
                    ApiError::InvalidRequest(
                        "ownerId: must be your own id or a service principal id (sp_…)".into(),
                    )
                })?;
            (id, PrincipalKind::ServicePrincipal)
        }
    };
    state
        .store
        .get_principal(&me.workspace_id, kind, &id)
        .await
        .map_err(|e| match e {
            datastack_store::Error::NotFound => ApiError::InvalidRequest(match owners {
                Owners::AnyPrincipal => "ownerId: no such principal in this workspace".into(),
                Owners::ServicePrincipals => {
                    "ownerId: no such service principal in this workspace".into()
                }
            }),
            other => other.into(),
        })
}

/// `requested` if the creating credential holds every scope in it: a credential can only
/// hand on what it holds (a token limited to `manage:tokens` must not mint `all-apis`).
/// `what` names the new credential in the refusal (`token`, `key`).
pub fn within_granted(granted: &ScopeSet, requested: ScopeSet, what: &str) -> ApiResult<ScopeSet> {
    match requested.as_slice().iter().find(|s| !granted.covers(**s)) {
        Some(beyond) => Err(ApiError::Forbidden(format!(
            "the scope {beyond} is not granted to the credential making this call; a {what} can only be given scopes its creator holds"
        ))),
        None => Ok(requested),
    }
}

/// The lifetime of a new credential in a workspace whose maximum is `max_days`: the
/// requested one if within it (else a 400 naming `field`), or the maximum when none was
/// requested.
pub fn bounded_lifetime(
    requested: Option<Duration>,
    max_days: Option<u32>,
    field: &str,
) -> ApiResult<Option<Duration>> {
    match (requested, max_days) {
        (Some(l), Some(max)) if l > Duration::days(i64::from(max)) => {
            Err(ApiError::InvalidRequest(format!(
                "{field}: exceeds the workspace's maximum token lifetime of {max} days"
            )))
        }
        (None, Some(max)) => Ok(Some(Duration::days(i64::from(max)))),
        (l, _) => Ok(l),
    }
}

/// The stored record of a freshly generated credential of `kind` (only the secret's
/// digest and last four characters are kept).
pub fn new_record(
    kind: CredentialKind,
    owner: &Principal,
    label: &str,
    scopes: ScopeSet,
    expires_at: Option<DateTime<Utc>>,
    secret: &NewSecret,
) -> Token {
    Token {
        id: match kind {
            CredentialKind::ApiKey => TokenId::generate_api_key(),
            CredentialKind::OAuthAccessToken => TokenId::generate_oauth_access(),
            CredentialKind::PersonalAccessToken => TokenId::generate(),
        },
        kind,
        owner_id: owner.id.clone(),
        workspace_id: owner.workspace_id.clone(),
        label: label.to_owned(),
        digest_hex: secret.digest.to_hex(),
        last_four: secret.last_four.clone(),
        scopes,
        created_at: Utc::now(),
        expires_at,
        revoked_at: None,
        last_used_at: None,
        last_used_ip: None,
    }
}

/// The stored record of a freshly generated personal access token.
pub fn new_token_record(
    owner: &Principal,
    label: &str,
    scopes: ScopeSet,
    expires_at: Option<DateTime<Utc>>,
    secret: &credential::NewSecret,
) -> Token {
    new_record(
        CredentialKind::PersonalAccessToken,
        owner,
        label,
        scopes,
        expires_at,
        secret,
    )
}
