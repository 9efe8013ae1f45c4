//! Validated inputs: parse once at the edge, then the type proves validity.

use std::fmt;

use chrono::Duration;
use serde::Serialize;

use crate::{Error, Result};

/// A syntactically plausible email address, lowercased, at most 254 characters.
#[derive(Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Email(String);

impl Email {
    /// Parses an address: one `@`, a non-empty local part, a domain with a dot, no spaces
    /// or control characters. Deliverability is not this server's business.
    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim();
        let bad = || Error::invalid("email", "must be an email address such as ana@example.com");
        if s.is_empty() || s.len() > 254 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad());
        }
        let (local, domain) = s.split_once('@').ok_or_else(bad)?;
        if local.is_empty()
            || local.len() > 64
            || domain.contains('@')
            || !domain.contains('.')
            || domain.starts_with('.')
            || domain.ends_with('.')
        {
            return Err(bad());
        }
        Ok(Self(s.to_lowercase()))
    }

    /// The address.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Wraps a value read back from the store.
    pub fn from_trusted(s: String) -> Self {
        Self(s)
    }
}

impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a free-text name or label: trimmed, 1 to `max` characters, no control characters.
pub fn text(field: &str, value: &str, max: usize) -> Result<String> {
    let v = value.trim();
    if v.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if v.chars().count() > max {
        return Err(Error::invalid(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    if v.chars().any(char::is_control) {
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    Ok(v.to_owned())
}

/// The longest label a token may carry.
pub const MAX_LABEL_LEN: usize = 200;
/// The longest name a principal or workspace may carry.
pub const MAX_NAME_LEN: usize = 200;

/// The lifetime a caller asked for a token, in one of the two accepted units.
pub fn token_lifetime(
    expires_in_days: Option<i64>,
    lifetime_seconds: Option<i64>,
) -> Result<Option<Duration>> {
    match (expires_in_days, lifetime_seconds) {
        (Some(_), Some(_)) => Err(Error::invalid(
            "expiresInDays",
            "give either expiresInDays or lifetimeSeconds, not both",
        )),
        (Some(d), None) if !(1..=36_500).contains(&d) => Err(Error::invalid(
            "expiresInDays",
            "must be between 1 and 36500",
        )),
        (Some(d), None) => Ok(Some(Duration::days(d))),
        (None, Some(s)) if !(1..=3_153_600_000).contains(&s) => Err(Error::invalid(
            "lifetimeSeconds",
            "must be between 1 and 3153600000",
        )),
        (None, Some(s)) => Ok(Some(Duration::seconds(s))),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        assert_eq!(
            Email::parse(" Ana@Example.com ").map(|e| e.0),
            Ok("ana@example.com".into())
        );
        for bad in [
            "",
            "ana",
            "@example.com",
            "ana@",
            "ana@example",
            "a b@example.com",
            "a@b@c.com",
            "ana@.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lifetimes() {
        assert_eq!(token_lifetime(Some(30), None), Ok(Some(Duration::days(30))));
        assert!(token_lifetime(Some(-1), None).is_err());
        assert!(token_lifetime(Some(0), None).is_err());
        assert!(token_lifetime(None, Some(0)).is_err());
        assert!(token_lifetime(None, Some(-5)).is_err());
        assert!(token_lifetime(Some(1), Some(100)).is_err());
        assert_eq!(token_lifetime(None, None), Ok(None));
    }

    #[test]
    fn labels() {
        assert!(text("label", "  ", 10).is_err());
        assert!(text("label", &"x".repeat(11), 10).is_err());
        assert!(text("label", "a\u{7}b", 10).is_err());
        assert_eq!(text("label", " ci ", 10), Ok("ci".into()));
    }
}
