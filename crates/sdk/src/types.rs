//! Request and response types of the datastack API, in the wire shape of `docs/api.md`:
//! camelCase fields and RFC 3339 UTC timestamps.
//!
//! Response types ignore fields they do not know, so a newer server does not break an
//! older client. Request types serialise only the fields that are set.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One page of a list endpoint. Pass `next_cursor` back as the `cursor` of the next request;
/// `None` means this is the last page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    /// The items of this page.
    pub items: Vec<T>,
    /// The cursor of the next page, `None` on the last one.
    #[serde(default)]
    pub next_cursor: Option<String>,
}

/// The role of a user or service principal; it bounds what any of its credentials can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Every scope.
    Admin,
    /// Reads (except audit) and manages workloads and its own tokens.
    Editor,
    /// Reads (except audit and secrets) and manages its own tokens.
    Viewer,
}

impl Role {
    /// The wire spelling: `admin`, `editor` or `viewer`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Editor => "editor",
            Self::Viewer => "viewer",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = ParseValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(Self::Admin),
            "editor" => Ok(Self::Editor),
            "viewer" => Ok(Self::Viewer),
            _ => Err(ParseValueError {
                what: "role",
                value: s.to_owned(),
                expected: "admin, editor or viewer",
            }),
        }
    }
}

/// Whether a principal may use its credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The principal's credentials work.
    Active,
    /// Every credential of the principal gets 401 until it is activated again.
    Suspended,
}

impl Status {
    /// The wire spelling: `active` or `suspended`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Suspended => "suspended",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = ParseValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "active" => Ok(Self::Active),
            "suspended" => Ok(Self::Suspended),
            _ => Err(ParseValueError {
                what: "status",
                value: s.to_owned(),
                expected: "active or suspended",
            }),
        }
    }
}

/// A string that is not one of the values of [`Role`] or [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} `{value}`: expected {expected}")]
pub struct ParseValueError {
    what: &'static str,
    value: String,
    expected: &'static str,
}

/// A human user of a workspace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    /// The id, `usr_…`.
    pub id: String,
    /// The workspace the user belongs to, `ws_…`.
    pub workspace_id: String,
    /// The email address, unique in the workspace.
    pub email: String,
    /// The display name.
    pub name: String,
    /// The role.
    pub role: Role,
    /// Whether the user's credentials work.
    pub status: Status,
    /// When the user was created.
    pub created_at: DateTime<Utc>,
    /// When the user was last changed.
    pub updated_at: DateTime<Utc>,
}

/// A non-human principal, the owner of API keys and OAuth clients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePrincipal {
    /// The id.
    pub id: String,
    /// The workspace the service principal belongs to, `ws_…`.
    pub workspace_id: String,
    /// The name.
    pub name: String,
    /// The role.
    pub role: Role,
    /// Whether the service principal's credentials work.
    pub status: Status,
    /// When the service principal was created.
    pub created_at: DateTime<Utc>,
    /// When the service principal was last changed.
    pub updated_at: DateTime<Utc>,
}

/// The settings of a workspace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceSettings {
    /// The longest lifetime a personal access token may have, in days; `None` for no limit.
    #[serde(default)]
    pub max_token_lifetime_days: Option<u32>,
    /// How long audit entries are kept, in days (server default 365).
    #[serde(default)]
    pub audit_retention_days: Option<u32>,
    /// Unused personal access tokens are revoked after this many days; `None`: never.
    #[serde(default)]
    pub auto_revoke_unused_days: Option<u32>,
    /// Whether the enforcement of the workspace's IP access lists is suspended (in a
    /// request, `None` keeps the server's default, false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_access_lists_suspended: Option<bool>,
    /// Whether upstream services may retain the workspace's data (in a request, `None`
    /// keeps the server's default, false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_retention_consent: Option<bool>,
}

/// A workspace: the unit that owns users, service principals and their credentials.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Workspace {
    /// The id, `ws_…`.
    pub id: String,
    /// The name.
    pub name: String,
    /// The settings.
    #[serde(default)]
    pub settings: WorkspaceSettings,
    /// `active`, or `suspended` by its parent workspace (its credentials are refused).
    pub status: Status,
    /// When the workspace was created.
    pub created_at: DateTime<Utc>,
    /// When the workspace was last changed.
    pub updated_at: DateTime<Utc>,
}

/// The principal a credential belongs to, as `GET /api/v1/me` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Principal {
    /// The id, `usr_…` for a user.
    pub id: String,
    /// The kind of principal, e.g. `user`.
    pub kind: String,
    /// The workspace the principal belongs to.
    pub workspace_id: String,
    /// The email address; users have one, service principals do not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// The display name.
    pub name: String,
    /// The role.
    pub role: Role,
    /// The status.
    pub status: Status,
    /// When the principal was created.
    pub created_at: DateTime<Utc>,
    /// When the principal was last changed.
    pub updated_at: DateTime<Utc>,
}

/// The credential a call was made with, as `GET /api/v1/me` shows it (never its secret).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Credential {
    /// The id, `tok_…` for a personal access token.
    pub id: String,
    /// The kind of credential, e.g. `pat`.
    pub kind: String,
    /// The scopes granted to the credential.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// When the credential expires; `None` if it never does.
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
}

/// The answer of `GET /api/v1/me`: who the caller is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Me {
    /// The principal the credential belongs to.
    pub principal: Principal,
    /// The principal's workspace.
    pub workspace: Workspace,
    /// The credential the call was made with.
    pub credential: Credential,
}

/// A personal access token as listed: everything but the secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Token {
    /// The id, `tok_…`.
    pub id: String,
    /// The label given at creation.
    pub label: String,
    /// The type prefix of the secret, `dapi`.
    pub prefix: String,
    /// The last four characters of the secret, to recognise it.
    pub last_four: String,
    /// The scopes granted to the token.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The principal that owns the token.
    pub owner_id: String,
    /// When the token was created.
    pub created_at: DateTime<Utc>,
    /// When the token expires; `None` if it never does.
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    /// When the token was last used (recorded in batches, every few seconds).
    #[serde(default)]
    pub last_used_at: Option<DateTime<Utc>>,
    /// The client IP of the last use.
    #[serde(default)]
    pub last_used_ip: Option<String>,
}

/// The answer of creating a personal access token: the secret, shown this once, and the
/// token's details.
///
/// `Debug` prints the secret as redacted; read it with
/// [`ExposeSecret::expose_secret`](secrecy::ExposeSecret::expose_secret).
#[derive(Debug)]
pub struct CreatedToken {
    /// The secret, `dapi…`. The server never shows it again.
    pub token: SecretString,
    /// The token's details, as later listed.
    pub details: Token,
}

impl<'de> Deserialize<'de> for CreatedToken {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Wire {
            token: String,
            #[serde(flatten)]
            details: Token,
        }
        let Wire { token, details } = Wire::deserialize(deserializer)?;
        Ok(Self {
            token: SecretString::from(token),
            details,
        })
    }
}

/// How long a new personal access token lives. The API takes at most one of the two units;
/// this type makes that a rule of the type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenLifetime {
    /// Whole days, 1–36500 (`expiresInDays`).
    Days(u32),
    /// Seconds, 60–3153600000 (`lifetimeSeconds`).
    Seconds(u64),
}

/// The body of `POST /api/v1/auth/tokens`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateToken {
    /// The label, 1–200 characters.
    pub label: String,
    /// The lifetime; `None` for the workspace maximum if there is one, else no expiry.
    pub lifetime: Option<TokenLifetime>,
    /// The scopes to grant; `None` for the server default, `["all-apis"]`.
    pub scopes: Option<Vec<String>>,
    /// Admins only: the principal (`usr_…` or `sp_…`) to create the token for; `None` for
    /// the caller.
    pub owner_id: Option<String>,
}

impl CreateToken {
    /// A request for a token with this label, the default lifetime and the default scopes.
    pub fn new(label: impl Into<String>) -> Self {
        Self {
            label: label.into(),
            lifetime: None,
            scopes: None,
            owner_id: None,
        }
    }
}

impl Serialize for CreateToken {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Wire<'a> {
            label: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            expires_in_days: Option<u32>,
            #[serde(skip_serializing_if = "Option::is_none")]
            lifetime_seconds: Option<u64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            scopes: Option<&'a [String]>,
            #[serde(skip_serializing_if = "Option::is_none")]
            owner_id: Option<&'a str>,
        }
        let (expires_in_days, lifetime_seconds) = match self.lifetime {
            Some(TokenLifetime::Days(days)) => (Some(days), None),
            Some(TokenLifetime::Seconds(seconds)) => (None, Some(seconds)),
            None => (None, None),
        };
        Wire {
            label: &self.label,
            expires_in_days,
            lifetime_seconds,
            scopes: self.scopes.as_deref(),
            owner_id: self.owner_id.as_deref(),
        }
        .serialize(serializer)
    }
}

/// The query of `GET /api/v1/auth/tokens`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListTokens {
    /// The page size, 1–200 (server default 50).
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Admins only: list the tokens of this principal id, or of everyone with `"all"`.
    /// `None` lists the caller's own tokens.
    pub owner_id: Option<String>,
}

/// The query of `GET /api/v1/users`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListUsers {
    /// The page size, 1–200 (server default 50).
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Only users with this role.
    pub role: Option<Role>,
    /// Only users with this status.
    pub status: Option<Status>,
}

/// The body of `POST /api/v1/users`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateUser {
    /// The email address, unique in the workspace.
    pub email: String,
    /// The display name.
    pub name: String,
    /// The role; `None` for the server default, `viewer`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
}

/// The body of `PATCH /api/v1/users/{id}`: only the fields that are set change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateUser {
    /// A new display name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A new role.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// A new status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
}

/// The query of `GET /api/v1/service-principals`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListServicePrincipals {
    /// The page size, 1–200 (server default 50).
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Only service principals with this role.
    pub role: Option<Role>,
    /// Only service principals with this status.
    pub status: Option<Status>,
}

/// The body of `POST /api/v1/service-principals`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateServicePrincipal {
    /// The name.
    pub name: String,
    /// The role; `None` for the server default, `viewer`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
}

/// The body of `PATCH /api/v1/service-principals/{id}`: only the fields that are set change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateServicePrincipal {
    /// A new name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A new role.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// A new status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
}

/// The query of `GET /api/v1/workspaces`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListWorkspaces {
    /// The page size, 1–200 (server default 50).
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Only the direct children of this workspace (`ws_…`).
    pub parent_id: Option<String>,
    /// Only workspaces with this status of their own.
    pub status: Option<Status>,
}

/// The body of `POST /api/v1/workspaces`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateWorkspace {
    /// The name.
    pub name: String,
    /// The email of the workspace's first admin, created with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_email: Option<String>,
    /// The first admin's name (server default `Administrator`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_name: Option<String>,
    /// The initial settings; `None` for the defaults.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settings: Option<WorkspaceSettings>,
}

/// The body of `PATCH /api/v1/workspaces/{id}`: only the fields that are set change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateWorkspace {
    /// A new name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Changes to the settings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settings: Option<WorkspaceSettingsUpdate>,
}

/// Changes to a workspace's settings: only the fields that are set change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceSettingsUpdate {
    /// `None` keeps the maximum token lifetime, `Some(None)` removes it (sent as `null`),
    /// `Some(Some(days))` sets it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_token_lifetime_days: Option<Option<u32>>,
    /// `None` keeps the audit retention, `Some(None)` restores the default, `Some(Some(days))`
    /// sets it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_retention_days: Option<Option<u32>>,
    /// `None` keeps the auto-revocation policy, `Some(None)` turns it off,
    /// `Some(Some(days))` sets it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_revoke_unused_days: Option<Option<u32>>,
    /// Suspend (`true`) or resume (`false`) the enforcement of the IP access lists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_access_lists_suspended: Option<bool>,
    /// Opt in (`true`) or out (`false`) of data retention by upstream services.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_retention_consent: Option<bool>,
}

/// The answer of creating a workspace: the workspace, its first admin and that admin's
/// token, shown this once.
///
/// `Debug` prints the token as redacted.
#[derive(Debug)]
pub struct CreatedWorkspace {
    /// The new workspace.
    pub workspace: Workspace,
    /// The workspace's first admin, when the server reports it.
    pub admin: Option<User>,
    /// The first admin's personal access token, when one was created. The server never
    /// shows it again.
    pub admin_token: Option<SecretString>,
}

impl<'de> Deserialize<'de> for CreatedWorkspace {
    /// The server answers `{"workspace": …, "admin": …, "adminToken": "dapi…"}`.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Wire {
            workspace: Workspace,
            admin: Option<User>,
            admin_token: Option<String>,
        }
        let wire = Wire::deserialize(deserializer)?;
        Ok(Self {
            workspace: wire.workspace,
            admin: wire.admin,
            admin_token: wire.admin_token.map(SecretString::from),
        })
    }
}
