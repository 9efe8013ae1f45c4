//! The records datastack keeps: workspaces, principals and personal access tokens.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::authz::Role;
use crate::id::{PrincipalId, TokenId, WorkspaceId};
use crate::scope::ScopeSet;
use crate::validate::Email;

/// Policy a workspace applies to its credentials.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkspaceSettings {
    /// The longest lifetime a personal access token may have, in days; tokens created
    /// without a lifetime get this one. `None`: no maximum.
    pub max_token_lifetime_days: Option<u32>,
    /// How long audit entries are kept, in days; `None`: the default, 365.
    pub audit_retention_days: Option<u32>,
    /// Revoke personal access tokens unused for this many days (after a
    /// `token.auto_revoke_scheduled` event); `None`: never.
    pub auto_revoke_unused_days: Option<u32>,
    /// Suspends the enforcement of the workspace's IP access lists (they stay stored and
    /// editable). Default false: enabled lists are enforced.
    #[serde(default)]
    pub ip_access_lists_suspended: bool,
    /// The workspace opted in to data retention by upstream services; passed to them as
    /// `x-datastack-retention-consent`. Default false.
    #[serde(default)]
    pub data_retention_consent: bool,
}

impl WorkspaceSettings {
    /// Audit entries are kept this long unless a workspace says otherwise.
    pub const DEFAULT_AUDIT_RETENTION_DAYS: u32 = 365;

    /// The audit retention period in force.
    pub fn audit_retention_days(&self) -> u32 {
        self.audit_retention_days
            .unwrap_or(Self::DEFAULT_AUDIT_RETENTION_DAYS)
    }
}

/// A workspace: the unit of tenancy. Principals and their credentials belong to one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Workspace {
    /// Its id.
    pub id: WorkspaceId,
    /// A display name.
    pub name: String,
    /// The workspace this one was created from, if any.
    pub parent_id: Option<WorkspaceId>,
    /// Its credential policy.
    pub settings: WorkspaceSettings,
    /// Active, or suspended by its parent: a suspended workspace's credentials are refused.
    pub status: Status,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// Whether a principal is a person or a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    /// A person, with an email address.
    User,
    /// A workload: CI, a service, an integration.
    ServicePrincipal,
}

impl PrincipalKind {
    /// The stored name.
    pub const fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::User => "user",
            PrincipalKind::ServicePrincipal => "service_principal",
        }
    }
}

/// Whether a principal may act.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// It may act.
    Active,
    /// Every credential it owns is refused until it is activated again.
    Suspended,
}

impl Status {
    /// The stored name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Suspended => "suspended",
        }
    }

    /// Parses a stored or submitted status.
    pub fn parse(s: &str) -> crate::Result<Self> {
        match s {
            "active" => Ok(Status::Active),
            "suspended" => Ok(Status::Suspended),
            _ => Err(crate::Error::invalid(
                "status",
                "must be active or suspended",
            )),
        }
    }
}

/// A user or a service principal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Principal {
    /// Its id (`usr_…` or `sp_…`).
    pub id: PrincipalId,
    /// User or service principal.
    pub kind: PrincipalKind,
    /// The workspace it belongs to.
    pub workspace_id: WorkspaceId,
    /// A user's email; `None` for service principals.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<Email>,
    /// A display name.
    pub name: String,
    /// Its role in the workspace.
    pub role: Role,
    /// Active or suspended.
    pub status: Status,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// A credential as stored (a personal access token or an API key): never the secret,
/// only its digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// Its public id (`tok_…` or `key_…`).
    pub id: TokenId,
    /// A personal access token or an API key.
    pub kind: crate::credential::CredentialKind,
    /// The principal it acts for.
    pub owner_id: PrincipalId,
    /// The owner's workspace.
    pub workspace_id: WorkspaceId,
    /// The owner's label (an API key's name).
    pub label: String,
    /// SHA-256 of the secret, lowercase hex.
    pub digest_hex: String,
    /// The secret's last four characters.
    pub last_four: String,
    /// What it may do (further limited by the owner's role).
    pub scopes: ScopeSet,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it stops working; `None`: never.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
    /// When it was last used (updated in batches).
    pub last_used_at: Option<DateTime<Utc>>,
    /// The client address of its last use.
    pub last_used_ip: Option<String>,
}

impl Token {
    /// Whether the token can be used at `now`.
    pub fn is_usable_at(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| e > now)
    }
}
