//! Which gateway route a request path belongs to, however it is spelled.
//!
//! Route matching compares the path as sent, byte for byte. An upstream may read the same
//! bytes differently: it may percent-decode twice (`%252e` → `.`), accept overlong UTF-8
//! (`%c0%ae` → `.`), drop trailing dots, spaces and `~` from a segment (IIS, Windows),
//! cut a segment at `;` (servlet containers) or `:` (NTFS streams), compare letters
//! without case, or fold Unicode compatibility characters and look-alikes onto ASCII
//! (fullwidth `ａ`, dotless `ı`, Turkish `İ`, the Kelvin sign, Windows "best fit"). If such
//! a reading lands on another route than the exact one (a longer one, typically), the
//! route the edge decided on is not the one whose resource the upstream serves, and that
//! route's scope would be bypassed.
//!
//! [`resolve`] therefore computes the loose readings of the path (each applying all of
//! those foldings, at each decoding depth) and refuses the path when one of them falls
//! under a different route than the path itself. Paths that land on the same route
//! either way (`/v1/jobs/Ünïcode`, say) are not refused: resource names may legitimately
//! be non-ASCII or percent-encoded.

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

use crate::edge::RouteSpec;

/// How many times the loose form percent-decodes: a server that decodes more often than
/// that is not one we know of, and each round has to be paid for on every request.
const DECODE_ROUNDS: usize = 4;

/// Why a path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathRefusal {
    /// The path has dot or empty segments, `;` parameters, a backslash, NUL, needless or
    /// malformed percent-encoding, or percent-encoded bytes that are not UTF-8 (overlong
    /// sequences among them).
    Unsafe,
    /// A looser reading of the path (see the module documentation) falls under another
    /// route than the path as sent.
    Ambiguous,
}

impl PathRefusal {
    /// A sentence for the client. It does not repeat the path.
    pub fn explain(self) -> &'static str {
        match self {
            PathRefusal::Unsafe => {
                "the path has dot or empty segments, ';' parameters, a backslash, NUL, needless or malformed percent-encoding, or percent-encoded bytes that are not UTF-8; send it normalised"
            }
            PathRefusal::Ambiguous => {
                "an upstream could read this path as one under another gateway route (letter case, look-alike or fullwidth characters, trailing dots, spaces or '~', double percent-encoding); send it in the route's spelling"
            }
        }
    }
}

/// The route for `path` (without query): the longest matching prefix, as
/// [`crate::edge::match_route`] picks it, once the path is known to mean the same route
/// however an upstream reads it. `Ok(None)`: no route covers the path in any reading.
pub fn resolve<'a, T>(
    routes: &'a [T],
    spec: impl Fn(&T) -> &RouteSpec,
    path: &str,
) -> Result<Option<&'a T>, PathRefusal> {
    let with_prefixes: Vec<(&'a T, Vec<String>)> = routes
        .iter()
        .map(|r| (r, loose_prefix(&spec(r).path_prefix)))
        .collect();
    resolve_with(&with_prefixes, |r| spec(r.0), |r| &r.1, path).map(|r| r.map(|r| r.0))
}

/// A route prefix in its loose form, for [`resolve_with`]: compute it once per route.
pub fn loose_prefix(prefix: &str) -> Vec<String> {
    segments_of(prefix.as_bytes(), true)
}

/// [`resolve`], with each route's [`loose_prefix`] computed beforehand.
pub fn resolve_with<'a, T>(
    routes: &'a [T],
    spec: impl Fn(&T) -> &RouteSpec,
    loose: impl Fn(&T) -> &[String],
    path: &str,
) -> Result<Option<&'a T>, PathRefusal> {
    if !safe_path(path) {
        return Err(PathRefusal::Unsafe);
    }
    let exact = crate::edge::match_route(routes.iter(), &spec, path);
    // The common case costs no allocation: a path of characters every reading keeps as
    // they are, against routes whose prefixes are spelled in their loose form, has one
    // reading, and it falls under the route the exact path matched.
    if plain(path)
        && routes
            .iter()
            .all(|r| spelled_loosely(&spec(r).path_prefix, loose(r)))
    {
        return Ok(exact);
    }
    resolve_loosely(routes, loose, path, exact)
}

/// Whether every reading leaves `s` as it is: lower-case ASCII letters, digits, `-`, `_`
/// and `/` are never decoded, folded, trimmed or cut.
fn plain(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'/'))
}

/// Whether a route's prefix is exactly its loose form (`/` and the segments joined by
/// `/`) in plain characters, so matching it exactly and loosely agree.
fn spelled_loosely(prefix: &str, loose: &[String]) -> bool {
    if loose.is_empty() || !plain(prefix) {
        return false;
    }
    let mut rest = prefix;
    for segment in loose {
        match rest
            .strip_prefix('/')
            .and_then(|r| r.strip_prefix(segment.as_str()))
        {
            Some(r) => rest = r,
            None => return false,
        }
    }
    rest.is_empty()
}

/// The general case of [`resolve_with`]: every loose reading of the path must fall under
/// the route the exact path matched.
fn resolve_loosely<'a, T>(
    routes: &'a [T],
    loose: impl Fn(&T) -> &[String],
    path: &str,
    exact: Option<&'a T>,
) -> Result<Option<&'a T>, PathRefusal> {
    for reading in readings(path) {
        // The deepest routes this reading falls under, and whether the exact one is one.
        let mut best: Option<usize> = None;
        let mut exact_depth: Option<usize> = None;
        for route in routes {
            let prefix = loose(route);
            if !prefix.is_empty() && under(&reading, prefix) {
                best = best.max(Some(prefix.len()));
                if exact.is_some_and(|e| std::ptr::eq(e, route)) {
                    exact_depth = Some(prefix.len());
                }
            }
        }
        let same = match (exact, best) {
            (None, None) => true,
            // Routes that differ only in spelling tie, and the exact one wins.
            (Some(_), Some(depth)) => exact_depth == Some(depth),
            _ => false,
        };
        if !same {
            return Err(PathRefusal::Ambiguous);
        }
    }
    Ok(exact)
}

/// Whether a reading falls under a route's loose prefix: segment by segment equal, or
/// the segment of the reading could be the Windows 8.3 short name of the route's.
fn under(reading: &[String], prefix: &[String]) -> bool {
    reading.len() >= prefix.len()
        && reading
            .iter()
            .zip(prefix)
            .all(|(r, p)| r == p || short_name_of(r, p))
}

/// Whether `read` could be the 8.3 short name NTFS gives `name` (`admini~1` for
/// `administration`, `report~2.jso` for `report-2025.json`), which IIS serves as the
/// long name: up to six leading characters, `~`, a number, and perhaps an extension.
fn short_name_of(read: &str, name: &str) -> bool {
    let Some((base, tail)) = read.split_once('~') else {
        return false;
    };
    let number = tail.split('.').next().unwrap_or_default();
    !base.is_empty()
        && base.chars().count() <= 6
        && !number.is_empty()
        && number.bytes().all(|b| b.is_ascii_digit())
        && name.len() > base.len()
        && name.starts_with(base)
}

/// Refuses paths whose meaning could differ between datastack and the upstream: dot
/// segments, empty segments, backslashes, `;` parameters, malformed percent-encoding,
/// percent-encoded characters that need no encoding (`%63lusters` for `clusters`) or that
/// separate segments (`%2F`, `%5C`), and percent-encoded bytes that do not decode to UTF-8
/// (overlong forms such as `%c0%ae` among them): one spelling only.
pub fn safe_path(path: &str) -> bool {
    // `;` starts path parameters many servers drop (`/public/..;/admin`, `/admin;x`).
    if !path.starts_with('/') || path.contains('\\') || path.contains(';') {
        return false;
    }
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            match bytes.get(i + 1..i + 3).and_then(hex_byte) {
                Some(b)
                    if b != 0
                        && b != b';'
                        && !(b.is_ascii_alphanumeric() || b"-._~/\\".contains(&b)) =>
                {
                    i += 3
                }
                _ => return false,
            }
        } else {
            i += 1;
        }
    }
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    segments.iter().enumerate().all(|(i, seg)| {
        let decoded: Vec<u8> = percent_encoding::percent_decode(seg.as_bytes()).collect();
        let Ok(text) = std::str::from_utf8(&decoded) else {
            return false;
        };
        // Dots and blanks only (`.`, `..`, `...`, `.. `): Windows servers read these as
        // `.` or `..` once trailing dots and spaces are dropped.
        let dot_like = !text.is_empty()
            && text.contains('.')
            && text
                .chars()
                .all(|c| c == '.' || c.is_whitespace() || c.is_control());
        !(dot_like || (seg.is_empty() && i < last))
    })
}

/// The byte two hex digits spell.
fn hex_byte(h: &[u8]) -> Option<u8> {
    let digit = |c: u8| (c as char).to_digit(16);
    match h {
        [a, b] => Some((digit(*a)? * 16 + digit(*b)?) as u8),
        _ => None,
    }
}

/// The loose readings of a path: its segments after one, two, … percent-decoding rounds
/// (until nothing changes, at most [`DECODE_ROUNDS`]), each folded as [`segments_of`]
/// does, with dot segments resolved and without. Several readings, because upstreams
/// differ: one that decodes once and folds case reads `/v1/ADMIN/%252e%252e/x` under
/// `/v1/admin`, one that decodes twice reads it as `/v1/x`, and one that resolves dot
/// segments before its second decoding keeps the `..` as a name.
pub fn readings(path: &str) -> Vec<Vec<String>> {
    let mut bytes = path.as_bytes().to_vec();
    let mut out = Vec::new();
    for _ in 0..DECODE_ROUNDS {
        let next: Vec<u8> = percent_encoding::percent_decode(&bytes).collect();
        let done = next == bytes;
        bytes = next;
        out.push(segments_of(&bytes, true));
        out.push(segments_of(&bytes, false));
        if done {
            break;
        }
    }
    out
}

/// Decoded path bytes as segments the way a lax upstream reads them (see the module
/// documentation): overlong UTF-8 accepted, `\` as a separator, segments cut at `;` and
/// `:` and NUL, the path ended at `?` and `#`, each segment folded ([`fold`]), dot segments resolved (or, without
/// `resolve_dots`, kept as names), empty segments dropped.
fn segments_of(bytes: &[u8], resolve_dots: bool) -> Vec<String> {
    // Compatibility forms first, on the whole text: a fullwidth solidus, full stop, reverse
    // solidus or semicolon (`／ ． ＼ ；`, `‥`) separates or climbs for an upstream that
    // normalises before it splits.
    let text: String = lenient_utf8(bytes).nfkd().collect();
    // A decoded `?` or `#` ends the path for a server that decodes before splitting.
    let text = text.split(['?', '#']).next().unwrap_or_default();
    let mut segments: Vec<String> = Vec::new();
    for raw in text.split(['/', '\\']) {
        // Path parameters (`;`), NTFS stream names (`:`) and what follows a NUL (C strings)
        // are cut off by some servers.
        let raw = raw.split([';', ':', '\0']).next().unwrap_or_default();
        let raw = raw.trim_start_matches(|c: char| c.is_whitespace() || c.is_control());
        let trimmed = raw.trim_end_matches(|c: char| c.is_whitespace() || c.is_control());
        // `.` and `..`; longer runs of dots count as `..`, the reading that moves.
        if !trimmed.is_empty() && trimmed.chars().all(|c| c == '.') {
            if !resolve_dots {
                segments.push(trimmed.to_owned());
            } else if trimmed.len() > 1 {
                segments.pop();
            }
            continue;
        }
        let folded = fold(raw);
        if !folded.is_empty() {
            segments.push(folded);
        }
    }
    segments
}

/// One segment in its loosest spelling: lower case, compatibility characters decomposed
/// (fullwidth letters, ligatures, the Kelvin sign), accents and invisible characters
/// dropped, look-alikes mapped to the ASCII letter they imitate, and trailing dots,
/// whitespace, controls and `~` removed.
fn fold(segment: &str) -> String {
    let lower: String = segment.chars().flat_map(char::to_lowercase).collect();
    let mut out = String::with_capacity(lower.len());
    for c in lower.nfkd() {
        if is_combining_mark(c) || invisible(c) {
            continue;
        }
        match look_alike(c) {
            Some(ascii) => out.push_str(ascii),
            None => out.extend(c.to_lowercase()),
        }
    }
    let kept = out
        .trim_end_matches(|c: char| c == '.' || c == '~' || c.is_whitespace() || c.is_control())
        .len();
    out.truncate(kept);
    out
}

/// Characters with no appearance that some normalisations delete: zero-width spaces and
/// joiners, the soft hyphen, word joiners, the byte-order mark.
fn invisible(c: char) -> bool {
    matches!(c, '\u{00AD}' | '\u{034F}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}')
}

/// The ASCII a lower-case letter that Unicode does not decompose is read as: by case
/// folding (`ſ` is `s` to Java, Go and Python; `ı` upper-cases to `I`), by German folding
/// (`ß` is `ss`), or by Windows "best fit" mapping and human eyes (Cyrillic and Greek
/// letters drawn like Latin ones). Decomposable characters (fullwidth, accented,
/// ligatures, the Kelvin sign) are handled by NFKD before this table, so it only needs the
/// letters NFKD leaves alone. It is not the full Unicode confusables list (UTS #39), and
/// need not be: what matters is what a server folds onto ASCII when it matches a path,
/// which is case folding, compatibility decomposition and best-fit mapping to a code
/// page; the Cyrillic and Greek rows are a margin on top. A full skeleton crate would add
/// script tables for characters no upstream maps onto a route's spelling.
fn look_alike(c: char) -> Option<&'static str> {
    Some(match c {
        'ı' => "i",
        'ſ' => "s",
        'ß' => "ss",
        'ĸ' => "k",
        'ł' => "l",
        'đ' => "d",
        'ø' => "o",
        'ħ' => "h",
        // Cyrillic.
        'а' => "a",
        'в' => "b",
        'е' => "e",
        'к' => "k",
        'м' => "m",
        'н' => "h",
        'о' => "o",
        'р' => "p",
        'с' => "c",
        'т' => "t",
        'у' => "y",
        'х' => "x",
        'і' => "i",
        'ј' => "j",
        'ѕ' => "s",
        'ԁ' => "d",
        'һ' => "h",
        'ԛ' => "q",
        'ԝ' => "w",
        // Greek.
        'α' => "a",
        'β' => "b",
        'ε' => "e",
        'η' => "n",
        'ι' => "i",
        'κ' => "k",
        'μ' => "u",
        'ν' => "v",
        'ο' => "o",
        'ρ' => "p",
        'τ' => "t",
        'υ' => "u",
        'χ' => "x",
        _ => return None,
    })
}

/// Bytes as text the way a lax decoder reads them: overlong forms (`c0 ae` for `.`,
/// `e0 80 ae`) decode to the character they encode; anything else that is not UTF-8
/// becomes U+FFFD.
fn lenient_utf8(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let lead = bytes[i];
        let (len, init) = match lead {
            0x00..=0x7F => (1, u32::from(lead)),
            0xC0..=0xDF => (2, u32::from(lead & 0x1F)),
            0xE0..=0xEF => (3, u32::from(lead & 0x0F)),
            0xF0..=0xF7 => (4, u32::from(lead & 0x07)),
            _ => (0, 0),
        };
        let tail = bytes.get(i + 1..i + len.max(1));
        match tail {
            Some(tail) if len > 0 && tail.iter().all(|b| b & 0xC0 == 0x80) => {
                let cp = tail
                    .iter()
                    .fold(init, |cp, b| (cp << 6) | u32::from(b & 0x3F));
                out.push(char::from_u32(cp).unwrap_or('\u{FFFD}'));
                i += len;
            }
            _ => {
                out.push('\u{FFFD}');
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::scope::Resource;

    fn route(prefix: &str, resource: Resource) -> RouteSpec {
        RouteSpec {
            path_prefix: prefix.into(),
            upstream: None,
            resource,
            strip_prefix: false,
            timeout_ms: 1000,
            price_per_request: 0,
            cost_header: None,
            forward_authorization: false,
            method_scopes: BTreeMap::new(),
            allow_underscore_headers: false,
            allow_override_headers: false,
        }
    }

    fn table() -> Vec<RouteSpec> {
        vec![
            route("/v1", Resource::Jobs),
            route("/v1/admin", Resource::Secrets),
        ]
    }

    /// The prefix of the route `path` is decided under, or the refusal.
    fn decided(routes: &[RouteSpec], path: &str) -> Result<Option<String>, PathRefusal> {
        resolve(routes, |r| r, path).map(|r| r.map(|r| r.path_prefix.clone()))
    }

    #[test]
    fn unsafe_paths_are_refused() {
        for ok in [
            "/v1/clusters",
            "/v1/clusters/",
            "/v1/a.b/c",
            "/v1/a%20b",
            "/v1/%C3%BCber",
            "/v1/x..y",
        ] {
            assert!(safe_path(ok), "{ok}");
        }
        for bad in [
            "/v1/jobs/../clusters",
            "/v1/./x",
            "/v1//x",
            "/v1/%2e%2e/x",
            "/v1/a%2Fb",
            "/v1/%63lusters",
            "/v1/public/..;/admin",
            "/v1/admin;x/y",
            "/v1/%00",
            "/v1/%+1",
            "/v1/%3B",
            "/v1/%zz",
            "/v1/%4",
            "/v1\\x",
            "v1",
            "/v1/%c0%ae%c0%ae/admin",
            "/v1/%c1%a1dmin",
            "/v1/%e0%80%ae",
            "/v1/%ff",
            "/v1/...",
            "/v1/..%20",
            "/v1/.%09",
        ] {
            assert!(!safe_path(bad), "{bad}");
        }
    }

    #[test]
    fn spellings_of_a_longer_route_are_refused() {
        let routes = table();
        for path in [
            "/v1/admin.",
            "/v1/admin%20",
            "/v1/admin%09",
            "/v1/admin~",
            "/v1/admin%20/keys",
            "/v1/ADMIN",
            "/v1/Admin/keys",
            "/v1/admin%252e",
            "/v1/admin%2520",
            "/v1/x/%252e%252e/admin",
            "/v1/%2561dmin",
            "/v1/%25c1%25a1dmin",
            "/v1/adm%C4%B1n",
            "/v1/ADM%C4%B0N",
            "/v1/%EF%BD%81dmin",
            "/v1/%D0%B0dmin",
            "/v1/ad%E2%80%8Bmin",
            "/v1/admin::$DATA",
            "/v1/admin%253B",
            "/v1/%C3%A0dmin",
            "/v1/admin%253F",
            "/v1/admin%2500x",
            "/v1/%2520admin",
            "/v1/admin%EF%BC%8Fkeys",
            "/v1/x/%EF%BC%8E%EF%BC%8E/admin",
            "/v1/x/%E2%80%A5/admin",
            "/v1/x%EF%BC%BC..%EF%BC%BCadmin",
            "/v1/admin%EF%BC%9Bx",
        ] {
            assert_eq!(
                decided(&routes, path),
                Err(PathRefusal::Ambiguous),
                "{path}"
            );
        }
        for (path, prefix) in [
            ("/v1/admin", "/v1/admin"),
            ("/v1/admin/", "/v1/admin"),
            ("/v1/admin/Keys.", "/v1/admin"),
            ("/v1/admin/%C4%B1", "/v1/admin"),
            ("/v1/jobs", "/v1"),
            ("/v1/administrator", "/v1"),
            ("/v1/admin-x", "/v1"),
            ("/v1/%C3%BCber/admin", "/v1"),
            ("/v1/jobs/ADMIN", "/v1"),
        ] {
            assert_eq!(
                decided(&routes, path),
                Ok(Some(prefix.to_owned())),
                "{path}"
            );
        }
        assert_eq!(decided(&routes, "/v2/admin"), Ok(None));
        // Climbing out of every route, or into one from nowhere, is refused too.
        assert_eq!(
            decided(&routes, "/v1/%252e%252e/v2"),
            Err(PathRefusal::Ambiguous)
        );
        assert_eq!(decided(&routes, "/V1"), Err(PathRefusal::Ambiguous));
    }

    #[test]
    fn siblings_of_one_length_are_told_apart() {
        let routes = vec![
            route("/v1/public", Resource::Jobs),
            route("/v1/secret", Resource::Secrets),
            // Two routes that differ only in spelling: each keeps its own traffic.
            route("/v2/a", Resource::Jobs),
            route("/v2/a.", Resource::Secrets),
        ];
        assert_eq!(
            decided(&routes, "/v1/public/%252e%252e/secret"),
            Err(PathRefusal::Ambiguous)
        );
        assert_eq!(decided(&routes, "/v2/a/x"), Ok(Some("/v2/a".into())));
        assert_eq!(decided(&routes, "/v2/a./x"), Ok(Some("/v2/a.".into())));
        // Windows 8.3 short names of a longer route's segment.
        let routes = vec![
            route("/v1", Resource::Jobs),
            route("/v1/administration", Resource::Secrets),
        ];
        for path in ["/v1/ADMINI~1", "/v1/admini~1/x", "/v1/ADMIN~12.JSO"] {
            assert_eq!(
                decided(&routes, path),
                Err(PathRefusal::Ambiguous),
                "{path}"
            );
        }
        for path in ["/v1/admin~x", "/v1/other~1", "/v1/administration~1"] {
            assert_eq!(decided(&routes, path), Ok(Some("/v1".into())), "{path}");
        }
    }

    /// One way of writing a character of a route segment in a request path.
    fn spelling(c: char) -> BoxedStrategy<String> {
        let byte = c as u8;
        let mut options = vec![
            Just(c.to_string()).boxed(),
            Just(c.to_ascii_uppercase().to_string()).boxed(),
            // Needless percent-encoding: refused as unsafe.
            Just(format!("%{byte:02X}")).boxed(),
            Just(format!("%{byte:02x}")).boxed(),
            // Double percent-encoding.
            Just(format!("%25{byte:02X}")).boxed(),
            Just(format!("%2525{byte:02x}")).boxed(),
            // Overlong two-byte UTF-8, once and twice encoded.
            Just(format!(
                "%{:02X}%{:02X}",
                0xC0 | (byte >> 6),
                0x80 | (byte & 0x3F)
            ))
            .boxed(),
            Just(format!(
                "%25{:02X}%25{:02X}",
                0xC0 | (byte >> 6),
                0x80 | (byte & 0x3F)
            ))
            .boxed(),
            // Fullwidth.
            Just(percent(
                char::from_u32(0xFF00 + u32::from(byte) - 0x20).unwrap_or(c),
            ))
            .boxed(),
            Just(percent(
                char::from_u32(0xFF00 + u32::from(byte.to_ascii_uppercase()) - 0x20).unwrap_or(c),
            ))
            .boxed(),
            // An accent on top.
            Just(format!("{c}%CC%81")).boxed(),
            // A zero-width space before it.
            Just(format!("%E2%80%8B{c}")).boxed(),
        ];
        let alike: &[char] = match c {
            'a' => &['а', 'α', 'à', 'ª'],
            'i' => &['ı', 'İ', 'і', 'ι', 'í'],
            'd' => &['ԁ', 'ď'],
            'm' => &['м', 'ｍ'],
            'n' => &['ñ', 'ｎ'],
            _ => &[],
        };
        for l in alike {
            options.push(Just(percent(*l)).boxed());
        }
        proptest::strategy::Union::new(options).boxed()
    }

    /// A character percent-encoded as UTF-8.
    fn percent(c: char) -> String {
        let mut buf = [0u8; 4];
        c.encode_utf8(&mut buf)
            .bytes()
            .map(|b| format!("%{b:02X}"))
            .collect()
    }

    /// What may follow a segment without changing it for some upstream.
    fn suffix() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "",
            ".",
            "..",
            "%20",
            "%09",
            "~",
            "~~",
            ". ",
            "%2520",
            "%252e",
            "%E3%80%80",
            "%C2%A0",
            "::$DATA",
            ":x",
            "%253F",
            "%2500x",
            "%2523x",
            "%253B",
            "%253Bx=1",
            "%0B",
            "%E2%80%8B",
        ])
        .prop_map(str::to_owned)
    }

    /// A spelling of `/v1/admin` followed by an optional rest.
    fn admin_spelling() -> impl Strategy<Value = (String, String)> {
        let letters: Vec<BoxedStrategy<String>> = "admin".chars().map(spelling).collect();
        (
            prop::sample::select(vec!["v1", "V1"]),
            letters,
            suffix(),
            prop::sample::select(vec!["", "/", "/keys", "/keys/1", "/%252e%252e/x"]),
        )
            .prop_map(|(v1, letters, suffix, rest)| {
                let segment = letters.concat();
                (format!("/{v1}/{segment}{suffix}{rest}"), segment)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn every_spelling_of_the_longer_route_keeps_its_scope((path, _) in admin_spelling()) {
            let routes = table();
            match decided(&routes, &path) {
                Ok(Some(prefix)) => prop_assert_eq!(prefix, "/v1/admin", "{}", path),
                Ok(None) => prop_assert!(false, "{} matched no route", path),
                Err(_) => {}
            }
        }

        #[test]
        fn the_plain_fast_path_decides_as_every_reading_would(
            path in "(/[a-z0-9_-]{1,8}){1,4}/?",
            routes in prop::collection::vec("(/[a-z0-9_-]{1,4}){1,3}", 1..6),
        ) {
            let routes: Vec<RouteSpec> = routes.iter().map(|p| route(p, Resource::Jobs)).collect();
            let loose: Vec<Vec<String>> = routes.iter().map(|r| loose_prefix(&r.path_prefix)).collect();
            let paired: Vec<(&RouteSpec, &Vec<String>)> = routes.iter().zip(&loose).collect();
            let exact = crate::edge::match_route(paired.iter(), |r| r.0, &path);
            let fast = resolve_with(&paired, |r| r.0, |r| r.1, &path).map(|r| r.map(|r| &r.0.path_prefix));
            let general = resolve_loosely(&paired, |r| r.1, &path, exact).map(|r| r.map(|r| &r.0.path_prefix));
            prop_assert_eq!(fast, general, "{}", path);
        }

        #[test]
        fn other_names_under_the_shorter_route_pass(name in "[a-z0-9][a-z0-9_-]{0,11}") {
            prop_assume!(name != "admin");
            let routes = table();
            let path = format!("/v1/{name}/x");
            prop_assert_eq!(decided(&routes, &path), Ok(Some("/v1".to_owned())));
        }
    }
}
