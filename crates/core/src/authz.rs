//! Roles and the authorization decision.
//!
//! A credential acts with the intersection of its scopes and its principal's role. A call
//! names, in `x-datastack-scope`, the scope it acts with; that scope must be granted to the
//! credential and must cover the operation, and the role must allow the operation.

use serde::{Deserialize, Serialize};

use crate::scope::{Access, Resource, Scope, ScopeSet};

/// A principal's role in its workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Every operation.
    Admin,
    /// Reads (except audit) and management of data-plane resources and own credentials.
    Editor,
    /// Reads (except audit and secrets) and management of own tokens.
    Viewer,
}

impl Role {
    /// The role's name, as stored and shown.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Editor => "editor",
            Role::Viewer => "viewer",
        }
    }

    /// Parses a stored or submitted role name.
    pub fn parse(s: &str) -> crate::Result<Self> {
        match s {
            "admin" => Ok(Role::Admin),
            "editor" => Ok(Role::Editor),
            "viewer" => Ok(Role::Viewer),
            _ => Err(crate::Error::invalid(
                "role",
                "must be admin, editor or viewer",
            )),
        }
    }

    /// Whether this role allows an operation that requires `required`.
    pub fn permits(self, required: Scope) -> bool {
        use Resource::*;
        let Scope::On(access, resource) = required else {
            // Only admins may act on everything at once.
            return self == Role::Admin;
        };
        match self {
            Role::Admin => true,
            Role::Editor => match access {
                Access::Read => resource != Audit,
                Access::Manage => matches!(
                    resource,
                    Clusters
                        | Jobs
                        | Notebooks
                        | Pipelines
                        | Sql
                        | Webhooks
                        | ApiKeys
                        | Secrets
                        | Requests
                        | Events
                        | Tokens
                ),
            },
            Role::Viewer => match access {
                Access::Read => !matches!(resource, Audit | Secrets),
                Access::Manage => resource == Tokens,
            },
        }
    }
}

/// Why a call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// No `x-datastack-scope` header, or one that is not a scope.
    ScopeMissing,
    /// The named scope does not cover the operation.
    ScopeDoesNotCover,
    /// The named scope is not granted to the credential.
    ScopeNotGranted,
    /// The principal's role does not allow the operation.
    RoleForbids,
}

impl Denial {
    /// A sentence for the error message; it never names a secret.
    pub fn explain(self, required: Scope) -> String {
        match self {
            Denial::ScopeMissing => {
                format!("send the scope {required} (or one covering it) in x-datastack-scope")
            }
            Denial::ScopeDoesNotCover => {
                format!(
                    "the scope in x-datastack-scope does not cover this operation, which requires {required}"
                )
            }
            Denial::ScopeNotGranted => {
                "the scope in x-datastack-scope is not granted to this credential".to_owned()
            }
            Denial::RoleForbids => format!(
                "your role does not hold the scope in x-datastack-scope; act with a scope your role holds that covers {required}"
            ),
        }
    }
}

/// Decides whether a credential with `granted` scopes, owned by a principal with `role`,
/// may perform an operation requiring `required`, acting with the header scope `named`.
pub fn decide(
    named: Option<&str>,
    required: Scope,
    granted: &ScopeSet,
    role: Role,
) -> Result<Scope, Denial> {
    let named: Scope = named
        .and_then(|s| s.trim().parse().ok())
        .ok_or(Denial::ScopeMissing)?;
    if !named.covers(required) {
        return Err(Denial::ScopeDoesNotCover);
    }
    if !granted.covers(named) {
        return Err(Denial::ScopeNotGranted);
    }
    // The acting scope must be one the principal holds (token scopes ∩ role), not only
    // one that happens to cover a permitted operation: a demoted admin's token cannot keep
    // acting with `manage:users`, and only admins act with `all-apis`.
    if !role.permits(named) || !role.permits(required) {
        return Err(Denial::RoleForbids);
    }
    Ok(named)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(s: &[&str]) -> ScopeSet {
        ScopeSet::parse(s).expect("valid scopes")
    }

    #[test]
    fn a_viewer_with_all_apis_still_cannot_manage_users() {
        let required = Scope::manage(Resource::Users);
        assert_eq!(
            decide(
                Some("all-apis"),
                required,
                &ScopeSet::all_apis(),
                Role::Viewer
            ),
            Err(Denial::RoleForbids)
        );
        assert!(
            decide(
                Some("all-apis"),
                required,
                &ScopeSet::all_apis(),
                Role::Admin
            )
            .is_ok()
        );
    }

    #[test]
    fn the_header_scope_must_be_granted_and_cover_the_operation() {
        let required = Scope::read(Resource::Clusters);
        let granted = set(&["read:clusters"]);
        assert!(decide(Some("read:clusters"), required, &granted, Role::Viewer).is_ok());
        assert_eq!(
            decide(None, required, &granted, Role::Viewer),
            Err(Denial::ScopeMissing)
        );
        assert_eq!(
            decide(Some("garbage"), required, &granted, Role::Viewer),
            Err(Denial::ScopeMissing)
        );
        assert_eq!(
            decide(Some("read:jobs"), required, &granted, Role::Viewer),
            Err(Denial::ScopeDoesNotCover)
        );
        assert_eq!(
            decide(Some("manage:clusters"), required, &granted, Role::Admin),
            Err(Denial::ScopeNotGranted)
        );
        assert!(
            decide(
                Some("manage:clusters"),
                required,
                &set(&["manage:clusters"]),
                Role::Editor
            )
            .is_ok()
        );
    }

    #[test]
    fn roles_follow_the_documented_table() {
        assert!(Role::Viewer.permits(Scope::manage(Resource::Tokens)));
        assert!(!Role::Viewer.permits(Scope::read(Resource::Audit)));
        assert!(!Role::Viewer.permits(Scope::manage(Resource::Clusters)));
        assert!(Role::Editor.permits(Scope::manage(Resource::Clusters)));
        assert!(!Role::Editor.permits(Scope::manage(Resource::Users)));
        assert!(!Role::Editor.permits(Scope::read(Resource::Audit)));
        assert!(Role::Admin.permits(Scope::read(Resource::Audit)));
    }
}
