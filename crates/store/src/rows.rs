//! Rows as the databases return them, and their conversion to domain types.

use chrono::{DateTime, Utc};
use datastack_core::authz::Role;
use datastack_core::id::{PrincipalId, TokenId, WorkspaceId};
use datastack_core::model::{
    Principal, PrincipalKind, Status, Token, Workspace, WorkspaceSettings,
};
use datastack_core::scope::ScopeSet;
use datastack_core::validate::Email;

use crate::{Error, Result};

#[derive(sqlx::FromRow)]
pub(crate) struct WorkspaceRow {
    pub id: String,
    pub name: String,
    pub parent_id: Option<String>,
    pub max_token_lifetime_days: Option<i64>,
    pub audit_retention_days: Option<i64>,
    pub auto_revoke_unused_days: Option<i64>,
    pub ip_access_lists_suspended: bool,
    pub data_retention_consent: bool,
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl WorkspaceRow {
    pub fn into_domain(self) -> Result<Workspace> {
        let days = |v: Option<i64>, name: &str| {
            v.map(u32::try_from)
                .transpose()
                .map_err(|_| Error::Corrupt(format!("{name} out of range")))
        };
        let max = days(self.max_token_lifetime_days, "max_token_lifetime_days")?;
        let retention = days(self.audit_retention_days, "audit_retention_days")?;
        let auto_revoke = days(self.auto_revoke_unused_days, "auto_revoke_unused_days")?;
        Ok(Workspace {
            id: WorkspaceId::from_trusted(self.id),
            name: self.name,
            parent_id: self.parent_id.map(WorkspaceId::from_trusted),
            settings: WorkspaceSettings {
                max_token_lifetime_days: max,
                audit_retention_days: retention,
                auto_revoke_unused_days: auto_revoke,
                ip_access_lists_suspended: self.ip_access_lists_suspended,
                data_retention_consent: self.data_retention_consent,
            },
            status: Status::parse(&self.status).map_err(|e| Error::Corrupt(e.to_string()))?,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct PrincipalRow {
    pub id: String,
    pub workspace_id: String,
    pub kind: String,
    pub email: Option<String>,
    pub name: String,
    pub role: String,
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl PrincipalRow {
    pub fn into_domain(self) -> Result<Principal> {
        let kind = match self.kind.as_str() {
            "user" => PrincipalKind::User,
            "service_principal" => PrincipalKind::ServicePrincipal,
            other => return Err(Error::Corrupt(format!("principal kind {other}"))),
        };
        Ok(Principal {
            id: PrincipalId::from_trusted(self.id),
            kind,
            workspace_id: WorkspaceId::from_trusted(self.workspace_id),
            email: self.email.map(Email::from_trusted),
            name: self.name,
            role: Role::parse(&self.role).map_err(|e| Error::Corrupt(e.to_string()))?,
            status: Status::parse(&self.status).map_err(|e| Error::Corrupt(e.to_string()))?,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct TokenRow {
    pub id: String,
    pub workspace_id: String,
    pub owner_id: String,
    pub label: String,
    pub digest: String,
    pub last_four: String,
    pub scopes: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub last_used_ip: Option<String>,
    pub kind: String,
}

impl TokenRow {
    pub fn into_domain(self) -> Result<Token> {
        Ok(Token {
            id: TokenId::from_trusted(self.id),
            kind: datastack_core::credential::CredentialKind::from_name(&self.kind)
                .ok_or_else(|| Error::Corrupt(format!("credential kind {}", self.kind)))?,
            owner_id: PrincipalId::from_trusted(self.owner_id),
            workspace_id: WorkspaceId::from_trusted(self.workspace_id),
            label: self.label,
            digest_hex: self.digest,
            last_four: self.last_four,
            scopes: scopes_of(&self.scopes)?,
            created_at: self.created_at,
            expires_at: self.expires_at,
            revoked_at: self.revoked_at,
            last_used_at: self.last_used_at,
            last_used_ip: self.last_used_ip,
        })
    }
}

/// Scopes are stored as one space-separated string.
pub(crate) fn scopes_text(scopes: &ScopeSet) -> String {
    scopes.to_strings().join(" ")
}

/// The scopes of a stored space-separated string.
pub(crate) fn scopes_of(text: &str) -> Result<ScopeSet> {
    let list: Vec<&str> = text.split(' ').filter(|s| !s.is_empty()).collect();
    ScopeSet::parse(&list).map_err(|e| Error::Corrupt(e.to_string()))
}

/// A list of strings stored as a JSON array (`what` names it in a corruption error).
pub(crate) fn json_list(text: &str, what: &str) -> Result<Vec<String>> {
    serde_json::from_str(text).map_err(|e| Error::Corrupt(format!("{what}: {e}")))
}

/// A list of strings as the JSON array it is stored as.
pub(crate) fn json_text(list: &[String]) -> String {
    serde_json::to_string(list).unwrap_or_else(|_| "[]".to_owned())
}
