//! Prefixed identifiers: `ws_…`, `usr_…`, `sp_…`, `tok_…`, `key_…`, `oat_…`, `ocl_…`, `aud_…`,
//! `evt_…`, `wh_…`.
//!
//! The part after the prefix is a UUIDv7 in lowercase hex, so ids sort by creation time and
//! can serve as pagination cursors.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! prefixed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// The prefix every id of this kind starts with.
            pub const PREFIX: &'static str = $prefix;

            /// A new, time-ordered id.
            pub fn generate() -> Self {
                Self(format!("{}{}", $prefix, uuid::Uuid::now_v7().simple()))
            }

            /// Parses an id, checking its prefix and body.
            pub fn parse(s: &str) -> crate::Result<Self> {
                let body = s.strip_prefix($prefix).ok_or_else(|| {
                    crate::Error::invalid("id", format!("must start with `{}`", $prefix))
                })?;
                if body.len() != 32 || !body.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                    return Err(crate::Error::invalid("id", "is not a well-formed id"));
                }
                Ok(Self(s.to_owned()))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// Wraps a value read back from the store, which only holds ids it generated.
            pub fn from_trusted(s: String) -> Self {
                Self(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

prefixed_id!(
    /// A workspace id, `ws_…`.
    WorkspaceId, "ws_"
);
prefixed_id!(
    /// An OAuth client id, `ocl_…` (its `client_id`).
    OAuthClientId, "ocl_"
);
prefixed_id!(
    /// A trusted external token issuer, `oti_…`.
    TrustedIssuerId, "oti_"
);
prefixed_id!(
    /// An audit entry id, `aud_…`.
    AuditId, "aud_"
);
prefixed_id!(
    /// A security event id, `evt_…`.
    EventId, "evt_"
);
prefixed_id!(
    /// A webhook endpoint id, `wh_…`.
    WebhookId, "wh_"
);

/// A credential id: a personal access token (`tok_…`), an API key (`key_…`) or an OAuth
/// access token (`oat_…`, its `jti`). It is public: it names a credential, it does not
/// prove anything.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenId(String);

impl TokenId {
    /// The prefix of personal access token ids.
    pub const PREFIX: &'static str = "tok_";
    /// The prefix of API key ids.
    pub const API_KEY_PREFIX: &'static str = "key_";
    /// The prefix of OAuth access token ids.
    pub const OAUTH_ACCESS_PREFIX: &'static str = "oat_";

    /// A new, time-ordered personal access token id.
    pub fn generate() -> Self {
        Self(format!("tok_{}", uuid::Uuid::now_v7().simple()))
    }

    /// A new, time-ordered API key id.
    pub fn generate_api_key() -> Self {
        Self(format!("key_{}", uuid::Uuid::now_v7().simple()))
    }

    /// A new, time-ordered OAuth access token id.
    pub fn generate_oauth_access() -> Self {
        Self(format!("oat_{}", uuid::Uuid::now_v7().simple()))
    }

    /// Parses a credential id of any kind.
    pub fn parse(s: &str) -> crate::Result<Self> {
        let body = s
            .strip_prefix(Self::PREFIX)
            .or_else(|| s.strip_prefix(Self::API_KEY_PREFIX))
            .or_else(|| s.strip_prefix(Self::OAUTH_ACCESS_PREFIX))
            .ok_or_else(|| {
                crate::Error::invalid("id", "must start with `tok_`, `key_` or `oat_`")
            })?;
        if body.len() != 32
            || !body
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(crate::Error::invalid("id", "is not a well-formed id"));
        }
        Ok(Self(s.to_owned()))
    }

    /// Whether this names an API key.
    pub fn is_api_key(&self) -> bool {
        self.0.starts_with(Self::API_KEY_PREFIX)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Wraps a value read back from the store, which only holds ids it generated.
    pub fn from_trusted(s: String) -> Self {
        Self(s)
    }
}

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for TokenId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TokenId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A principal id: a user (`usr_…`) or a service principal (`sp_…`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PrincipalId(String);

impl PrincipalId {
    /// A new user id.
    pub fn generate_user() -> Self {
        Self(format!("usr_{}", uuid::Uuid::now_v7().simple()))
    }

    /// A new service-principal id.
    pub fn generate_service_principal() -> Self {
        Self(format!("sp_{}", uuid::Uuid::now_v7().simple()))
    }

    /// Parses a user or service-principal id.
    pub fn parse(s: &str) -> crate::Result<Self> {
        let body = s
            .strip_prefix("usr_")
            .or_else(|| s.strip_prefix("sp_"))
            .ok_or_else(|| crate::Error::invalid("id", "must start with `usr_` or `sp_`"))?;
        if body.len() != 32
            || !body
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(crate::Error::invalid("id", "is not a well-formed id"));
        }
        Ok(Self(s.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Wraps a value read back from the store.
    pub fn from_trusted(s: String) -> Self {
        Self(s)
    }
}

impl fmt::Display for PrincipalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PrincipalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for PrincipalId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_and_sort_by_time() {
        let a = TokenId::generate();
        let b = TokenId::generate();
        assert!(a < b);
        assert_eq!(TokenId::parse(a.as_str()), Ok(a));
        assert!(TokenId::parse("usr_0123").is_err());
        let k = TokenId::generate_api_key();
        assert!(k.is_api_key() && !b.is_api_key());
        assert_eq!(TokenId::parse(k.as_str()), Ok(k));
        assert!(TokenId::parse("tok_ZZZZ5678901234567890123456789012").is_err());
        let u = PrincipalId::generate_user();
        assert!(PrincipalId::parse(u.as_str()).is_ok());
        assert!(PrincipalId::parse(PrincipalId::generate_service_principal().as_str()).is_ok());
        assert!(PrincipalId::parse("tok_00000000000000000000000000000000").is_err());
    }
}
prefixed_id!(
    /// A gateway route id, `rt_…`.
    RouteId, "rt_"
);
prefixed_id!(
    /// An IP access list id, `ipl_…`.
    IpListId, "ipl_"
);
prefixed_id!(
    /// An abuse flag id, `abf_…`.
    AbuseFlagId, "abf_"
);
