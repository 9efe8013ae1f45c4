//! Scopes: `read:<resource>`, `manage:<resource>` and `all-apis`.
//!
//! `manage:X` covers `read:X`; `all-apis` covers every scope. Unknown resources are
//! rejected when parsed, so a stored or granted scope is always one this server knows.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! resources {
    ($($variant:ident => $name:literal),+ $(,)?) => {
        /// A resource a scope can name.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Resource { $(#[doc = $name] $variant),+ }

        impl Resource {
            /// Every resource, in declaration order.
            pub const ALL: &'static [Resource] = &[$(Resource::$variant),+];

            /// The resource's name in scope strings.
            pub const fn as_str(self) -> &'static str {
                match self { $(Resource::$variant => $name),+ }
            }

            fn parse(s: &str) -> Option<Self> {
                match s { $($name => Some(Resource::$variant),)+ _ => None }
            }
        }
    };
}

resources! {
    Users => "users",
    Workspaces => "workspaces",
    Clusters => "clusters",
    Jobs => "jobs",
    Notebooks => "notebooks",
    Pipelines => "pipelines",
    Sql => "sql",
    Webhooks => "webhooks",
    Tokens => "tokens",
    ApiKeys => "api-keys",
    OauthClients => "oauth-clients",
    Gateway => "gateway",
    Secrets => "secrets",
    Audit => "audit",
    IpAccessLists => "ip-access-lists",
    Usage => "usage",
    Requests => "requests",
    Events => "events",
}

/// The two levels of access to a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Access {
    /// Read-only operations.
    Read,
    /// Every operation, reads included.
    Manage,
}

/// One scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// `read:<resource>` or `manage:<resource>`.
    On(Access, Resource),
    /// `all-apis`: every scope.
    AllApis,
}

impl Scope {
    /// `read:<resource>`.
    pub const fn read(r: Resource) -> Self {
        Scope::On(Access::Read, r)
    }

    /// `manage:<resource>`.
    pub const fn manage(r: Resource) -> Self {
        Scope::On(Access::Manage, r)
    }

    /// Whether holding `self` allows acting with `other`.
    pub fn covers(self, other: Scope) -> bool {
        match (self, other) {
            (Scope::AllApis, _) => true,
            (Scope::On(..), Scope::AllApis) => false,
            (Scope::On(a, r), Scope::On(b, s)) => r == s && (a == b || a == Access::Manage),
        }
    }
}

/// What an error may repeat of a rejected scope string: the string itself only when it has
/// the shape of a mistyped scope (`read:cluster`), never anything that could be a pasted
/// secret.
fn echo_if_scope_shaped(s: &str) -> String {
    let shaped = s.len() <= 40
        && s.split_once(':').is_some_and(|(a, r)| {
            matches!(a, "read" | "manage")
                && !r.is_empty()
                && r.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
        });
    if shaped {
        format!("`{s}`")
    } else {
        "the value".to_owned()
    }
}

/// Why a scope string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0} is not a scope: expected all-apis, read:<resource> or manage:<resource> with a known resource"
)]
pub struct UnknownScope(pub String);

impl FromStr for Scope {
    type Err = UnknownScope;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "all-apis" {
            return Ok(Scope::AllApis);
        }
        let unknown = || UnknownScope(echo_if_scope_shaped(s));
        let (access, resource) = s.split_once(':').ok_or_else(unknown)?;
        let access = match access {
            "read" => Access::Read,
            "manage" => Access::Manage,
            _ => return Err(unknown()),
        };
        let resource = Resource::parse(resource).ok_or_else(unknown)?;
        Ok(Scope::On(access, resource))
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::AllApis => f.write_str("all-apis"),
            Scope::On(Access::Read, r) => write!(f, "read:{}", r.as_str()),
            Scope::On(Access::Manage, r) => write!(f, "manage:{}", r.as_str()),
        }
    }
}

impl Serialize for Resource {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Resource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Resource::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "{} is not a resource; expected one of: {}",
                echo_if_scope_shaped(&s),
                Resource::ALL
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }
}

impl Serialize for Scope {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The scopes granted to a credential: non-empty, at most [`ScopeSet::MAX`], sorted and
/// without duplicates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeSet(Vec<Scope>);

impl ScopeSet {
    /// The most scopes one credential may hold.
    pub const MAX: usize = 64;

    /// `["all-apis"]`, the default grant of a personal access token.
    pub fn all_apis() -> Self {
        Self(vec![Scope::AllApis])
    }

    /// Builds a set from scope strings, naming the first bad one by its index.
    pub fn parse<S: AsRef<str>>(items: &[S]) -> crate::Result<Self> {
        if items.is_empty() {
            return Err(crate::Error::invalid(
                "scopes",
                "must name at least one scope",
            ));
        }
        if items.len() > Self::MAX {
            return Err(crate::Error::invalid(
                "scopes",
                format!("at most {} scopes", Self::MAX),
            ));
        }
        let mut scopes = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let scope = item
                .as_ref()
                .parse::<Scope>()
                .map_err(|e| crate::Error::invalid(format!("scopes[{i}]"), e.to_string()))?;
            scopes.push(scope);
        }
        scopes.sort();
        scopes.dedup();
        Ok(Self(scopes))
    }

    /// The smallest set that covers every scope of `used` (a scope another one covers is
    /// dropped: `manage:tokens` makes `read:tokens` redundant); `None` when `used` is empty.
    /// The access review suggests it as the narrower grant.
    pub fn covering(used: &[Scope]) -> Option<Self> {
        let mut scopes: Vec<Scope> = used
            .iter()
            .filter(|s| !used.iter().any(|o| o != *s && o.covers(**s)))
            .copied()
            .collect();
        scopes.sort();
        scopes.dedup();
        (!scopes.is_empty()).then_some(Self(scopes))
    }

    /// Whether some granted scope covers `scope`.
    pub fn covers(&self, scope: Scope) -> bool {
        self.0.iter().any(|g| g.covers(scope))
    }

    /// The scopes, sorted.
    pub fn as_slice(&self) -> &[Scope] {
        &self.0
    }

    /// The scopes as strings, sorted, for storage and responses.
    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }
}

impl Serialize for ScopeSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn manage_covers_read_and_all_apis_covers_everything() {
        let read = Scope::read(Resource::Users);
        let manage = Scope::manage(Resource::Users);
        assert!(manage.covers(read));
        assert!(!read.covers(manage));
        assert!(!manage.covers(Scope::read(Resource::Clusters)));
        assert!(Scope::AllApis.covers(manage));
        assert!(!manage.covers(Scope::AllApis));
    }

    #[test]
    fn every_scope_round_trips_through_its_string() {
        for r in Resource::ALL {
            for s in [Scope::read(*r), Scope::manage(*r)] {
                assert_eq!(s.to_string().parse::<Scope>(), Ok(s));
            }
        }
        assert_eq!("all-apis".parse::<Scope>(), Ok(Scope::AllApis));
    }

    #[test]
    fn unknown_scopes_are_named_by_index() {
        let err = ScopeSet::parse(&["read:users", "write:users"])
            .expect_err("write is not an access level");
        assert!(matches!(err, crate::Error::Invalid { ref field, .. } if field == "scopes[1]"));
        assert!(ScopeSet::parse::<&str>(&[]).is_err());
        assert!("read:".parse::<Scope>().is_err());
        assert!("READ:users".parse::<Scope>().is_err());
        assert!("read:users ".parse::<Scope>().is_err());
        // A typo is repeated to help; anything else is not, in case it is a secret.
        let typo = ScopeSet::parse(&["read:cluster"]).expect_err("unknown resource");
        assert!(typo.to_string().contains("read:cluster"));
        let pasted = format!("dapi{}", "a".repeat(72));
        let err = ScopeSet::parse(&[pasted.as_str()]).expect_err("not a scope");
        assert!(!err.to_string().contains("aaaa"), "{err}");
    }

    proptest! {
        #[test]
        fn parsing_never_panics_and_accepts_only_round_tripping_strings(s in "\\PC{0,40}") {
            if let Ok(scope) = s.parse::<Scope>() {
                prop_assert_eq!(scope.to_string(), s);
            }
        }
    }

    #[test]
    fn the_covering_set_drops_what_another_scope_covers() {
        let used: Vec<Scope> = ["read:tokens", "manage:tokens", "read:users"]
            .iter()
            .map(|s| s.parse().expect("scope"))
            .collect();
        let set = ScopeSet::covering(&used).expect("some");
        assert_eq!(set.to_strings(), vec!["read:users", "manage:tokens"]);
        assert!(ScopeSet::covering(&[]).is_none());
        let all = ScopeSet::covering(&[Scope::AllApis, used[0]]).expect("some");
        assert_eq!(all.to_strings(), vec!["all-apis"]);
    }
}
