//! Credential secrets: their format, their checksum and their digest.
//!
//! A secret is a type prefix (`dapi` for personal access tokens, `dkey` for API keys), 64 lowercase hex
//! characters of 256 random bits, and 8 lowercase hex characters of CRC-32 (IEEE) over
//! everything before them. The checksum lets secret scanners confirm a match offline and
//! lets the server reject mistyped or truncated secrets without a store lookup. Only the
//! SHA-256 digest of a secret is ever stored.

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

/// The kinds of bearer credentials: two of secrets with their own prefix, and OAuth
/// access tokens, which are JWTs (RFC 9068) and are looked up by the digest of the whole
/// token like the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    /// A personal access token, `dapi…`.
    PersonalAccessToken,
    /// A scoped API key, `dkey…`.
    ApiKey,
    /// An OAuth 2.0 access token issued by this server (a JWT, `eyJ…`).
    OAuthAccessToken,
}

impl CredentialKind {
    /// The type prefix of this kind's secrets (for a JWT, what every one starts with: the
    /// encoding of `{"`).
    pub const fn prefix(self) -> &'static str {
        match self {
            Self::PersonalAccessToken => "dapi",
            Self::ApiKey => "dkey",
            Self::OAuthAccessToken => "eyJ",
        }
    }

    /// The name used in API responses and in the store (`pat`, `api_key`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::PersonalAccessToken => "pat",
            Self::ApiKey => "api_key",
            Self::OAuthAccessToken => "oauth_access",
        }
    }

    /// The kind named by [`Self::as_str`]'s text.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "pat" => Some(Self::PersonalAccessToken),
            "api_key" => Some(Self::ApiKey),
            "oauth_access" => Some(Self::OAuthAccessToken),
            _ => None,
        }
    }

    fn from_secret(s: &str) -> Option<Self> {
        if s.starts_with("dapi") {
            Some(Self::PersonalAccessToken)
        } else if s.starts_with("dkey") {
            Some(Self::ApiKey)
        } else {
            None
        }
    }
}

const RANDOM_HEX_LEN: usize = 64;
const CHECKSUM_HEX_LEN: usize = 8;
/// The length of every secret: a 4-character prefix, 64 random hex, 8 checksum hex.
pub const SECRET_LEN: usize = 4 + RANDOM_HEX_LEN + CHECKSUM_HEX_LEN;

/// The regular expression a secret scanner can use for personal access tokens.
pub const PAT_SCANNER_REGEX: &str = r"\bdapi[0-9a-f]{72}\b";

/// The regular expression a secret scanner can use for API keys.
pub const API_KEY_SCANNER_REGEX: &str = r"\bdkey[0-9a-f]{72}\b";

/// The SHA-256 digest of a secret: the only form in which a credential is stored.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SecretDigest([u8; 32]);

impl SecretDigest {
    /// The digest in lowercase hex, as stored.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Reads a digest back from its lowercase hex form; `None` if it is not one.
    pub fn from_hex(hex_digest: &str) -> Option<Self> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_digest, &mut bytes).ok()?;
        Some(Self(bytes))
    }

    /// Compares two digests in constant time.
    pub fn ct_eq(&self, other_hex: &str) -> bool {
        let mine = self.to_hex();
        mine.as_bytes().ct_eq(other_hex.as_bytes()).into()
    }
}

impl std::fmt::Debug for SecretDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A digest is not a secret, but printing it is never useful and invites log
        // correlation; show a short fingerprint only.
        write!(f, "SecretDigest({}…)", &self.to_hex()[..8])
    }
}

/// A freshly generated secret, to be shown to its owner once.
pub struct NewSecret {
    /// The secret itself. Its `Debug` prints `[REDACTED]` and it is zeroized on drop.
    pub secret: SecretString,
    /// What the store keeps.
    pub digest: SecretDigest,
    /// The last four characters, shown in lists so owners can tell their tokens apart.
    pub last_four: String,
}

/// Generates a new secret of `kind` (a personal access token or an API key; an OAuth
/// access token is signed, not generated) from the operating system's random source.
pub fn generate(kind: CredentialKind) -> NewSecret {
    generate_prefixed(kind.prefix())
}

/// Generates a new secret in the same format with another four-character `prefix` (an
/// OAuth client secret's `dcsk`).
pub fn generate_prefixed(prefix: &str) -> NewSecret {
    let mut random = [0u8; 32];
    getrandom::fill(&mut random).expect("the operating system random source is available");
    let secret = prefixed_from_bytes(prefix, &random);
    zeroize::Zeroize::zeroize(&mut random);
    secret
}

/// A secret in the prefixed format whose 256 bits are `bytes` (random, or derived with a
/// MAC from another secret).
pub fn prefixed_from_bytes(prefix: &str, bytes: &[u8; 32]) -> NewSecret {
    debug_assert_eq!(prefix.len(), 4);
    let mut s = String::with_capacity(SECRET_LEN);
    s.push_str(prefix);
    s.push_str(&hex::encode(bytes));
    let checksum = crc32fast::hash(s.as_bytes());
    s.push_str(&format!("{checksum:08x}"));
    let digest = digest_of(&s);
    let last_four = s[s.len() - 4..].to_owned();
    NewSecret {
        secret: SecretString::from(s),
        digest,
        last_four,
    }
}

/// A presented secret whose format and checksum are valid. It may still be unknown.
pub struct PresentedSecret {
    /// The kind its prefix names.
    pub kind: CredentialKind,
    /// Its digest, to look it up by.
    pub digest: SecretDigest,
}

/// Checks the format and checksum of a presented secret and computes its digest.
///
/// Returns `None` for anything that is not a well-formed datastack secret; callers answer
/// that exactly as they answer an unknown secret.
pub fn parse_presented(secret: &SecretString) -> Option<PresentedSecret> {
    let s = secret.expose_secret();
    if is_jwt_shaped(s) {
        return Some(PresentedSecret {
            kind: CredentialKind::OAuthAccessToken,
            digest: digest_of(s),
        });
    }
    let kind = CredentialKind::from_secret(s)?;
    well_formed(s).then(|| PresentedSecret {
        kind,
        digest: digest_of(s),
    })
}

/// The digest of a secret with the four-character `prefix` if its format and checksum are
/// valid (an OAuth client secret).
pub fn parse_prefixed(s: &str, prefix: &str) -> Option<SecretDigest> {
    (s.starts_with(prefix) && well_formed(s)).then(|| digest_of(s))
}

/// The longest OAuth access token looked up (ours are well under 1 KiB).
pub const MAX_JWT_LEN: usize = 4096;

/// Whether `s` may be a JWT of this server's: the length of one, starting `eyJ` (the
/// encoding of `{"`). Nothing in it is decoded or trusted here, and nothing more is checked:
/// only the digest of the whole token is looked up, so anything else is simply unknown,
/// and this check runs on every request (a scan of the token would cost as much as its
/// digest).
fn is_jwt_shaped(s: &str) -> bool {
    (100..=MAX_JWT_LEN).contains(&s.len()) && s.starts_with("eyJ")
}

/// Whether `s` is a prefixed secret with a valid checksum.
fn well_formed(s: &str) -> bool {
    if s.len() != SECRET_LEN || !s.is_ascii() {
        return false;
    }
    let (body, checksum) = s.split_at(SECRET_LEN - CHECKSUM_HEX_LEN);
    let hex_ok = |t: &str| {
        t.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !hex_ok(&body[4..]) || !hex_ok(checksum) {
        return false;
    }
    // Eight lowercase hex digits (checked above) are exactly one u32.
    let Ok(presented) = u32::from_str_radix(checksum, 16) else {
        return false;
    };
    let expected = crc32fast::hash(body.as_bytes());
    bool::from(expected.ct_eq(&presented))
}

/// The SHA-256 digest of `s`, as stored for every secret.
pub fn digest_of(s: &str) -> SecretDigest {
    SecretDigest(Sha256::digest(s.as_bytes()).into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn generated_secrets_parse_and_match_the_scanner_shape() {
        let new = generate(CredentialKind::PersonalAccessToken);
        let s = new.secret.expose_secret();
        assert_eq!(s.len(), SECRET_LEN);
        assert!(s.starts_with("dapi"));
        assert!(
            s[4..]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        let parsed = parse_presented(&new.secret).expect("a generated secret parses");
        assert_eq!(parsed.digest, new.digest);
        assert!(parsed.digest.ct_eq(&new.digest.to_hex()));
        assert_eq!(new.last_four, s[s.len() - 4..]);
        assert!(!format!("{:?}", new.secret).contains(&s[4..20]));
    }

    #[test]
    fn api_keys_carry_their_own_prefix() {
        let new = generate(CredentialKind::ApiKey);
        let s = new.secret.expose_secret();
        assert!(s.starts_with("dkey"));
        let parsed = parse_presented(&new.secret).expect("a generated key parses");
        assert_eq!(parsed.kind, CredentialKind::ApiKey);
        // The prefix is covered by the checksum: relabelling a key as a token fails.
        let relabelled = SecretString::from(format!("dapi{}", &s[4..]));
        assert!(parse_presented(&relabelled).is_none());
    }

    #[test]
    fn a_changed_character_fails_the_checksum() {
        let new = generate(CredentialKind::PersonalAccessToken);
        let s = new.secret.expose_secret().to_owned();
        for i in 4..s.len() {
            let mut bytes = s.clone().into_bytes();
            bytes[i] = if bytes[i] == b'0' { b'1' } else { b'0' };
            let tampered = SecretString::from(String::from_utf8(bytes).expect("ascii"));
            assert!(parse_presented(&tampered).is_none(), "position {i}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_input_never_panics_and_is_rejected(s in ".{0,100}") {
            let parsed = parse_presented(&SecretString::from(s));
            prop_assert!(parsed.is_none());
        }

        #[test]
        fn well_shaped_but_random_tokens_are_rejected(body in "[0-9a-f]{72}") {
            let s = format!("dapi{body}");
            // One chance in 2^32 that random hex carries a valid checksum.
            prop_assert!(parse_presented(&SecretString::from(s)).is_none());
        }
    }
}
