//! Who the client is: the socket peer, unless the peer is a trusted proxy, in which case
//! the forwarding headers say who it forwarded for.
//!
//! The header is read from the right (the hop nearest to us) to the left: every address
//! that is itself a trusted proxy is skipped, and the first one that is not is the client.
//! A client can write anything in the leftmost entries; only entries appended by our own
//! proxies are believed. Exactly one header is read, the one the proxies are configured to
//! append (`client_ip_header`: `X-Forwarded-For` by default, or `Forwarded`, RFC 7239);
//! the other is ignored, since a proxy that appends one passes a client's copy of the
//! other through untouched. A header that cannot be parsed, or a hop that is obfuscated
//! or `unknown`, makes the client unknown: no address is believed, and IP access lists
//! refuse an unknown client.

use std::net::IpAddr;

use axum::http::HeaderMap;
use forwarded_header_value::ForwardedHeaderValue;
use ipnet::IpNet;

/// Which forwarding header the trusted proxies append.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For` (nginx, Traefik, Envoy, most load balancers).
    #[default]
    XForwardedFor,
    /// `Forwarded` (RFC 7239).
    Forwarded,
}

/// Resolves the client address of a request that came from `peer`; `None` when it
/// cannot be known.
pub fn resolve(
    peer: Option<IpAddr>,
    headers: &HeaderMap,
    trusted: &[IpNet],
    header: ForwardedHeader,
) -> Option<IpAddr> {
    let peer = peer.map(|p| p.to_canonical())?;
    if !is_trusted(peer, trusted) {
        return Some(peer);
    }
    let hops = match forwarded_hops(headers, header) {
        // No header: the proxy itself is the client (a health check, say).
        Hops::Absent => return Some(peer),
        Hops::Unparseable => return None,
        Hops::List(hops) => hops,
    };
    let mut client = peer;
    for hop in hops.into_iter().rev() {
        match hop {
            Some(ip) => {
                client = ip.to_canonical();
                if !is_trusted(client, trusted) {
                    return Some(client);
                }
            }
            // An obfuscated or unknown hop: the client is beyond what can be believed.
            None => return None,
        }
    }
    Some(client)
}

fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|n| n.contains(&ip))
}

enum Hops {
    Absent,
    Unparseable,
    List(Vec<Option<IpAddr>>),
}

/// The `for` addresses of the configured forwarding header, leftmost first. Several
/// header lines are one list, in order.
fn forwarded_hops(headers: &HeaderMap, header: ForwardedHeader) -> Hops {
    let name = match header {
        ForwardedHeader::XForwardedFor => "x-forwarded-for",
        ForwardedHeader::Forwarded => "forwarded",
    };
    let mut values = headers.get_all(name).iter().peekable();
    if values.peek().is_none() {
        return Hops::Absent;
    }
    let Some(parts) = values
        .map(|v| v.to_str().ok())
        .collect::<Option<Vec<&str>>>()
    else {
        return Hops::Unparseable;
    };
    let value = parts.join(",");
    match header {
        // Each entry on its own: a bad entry the client wrote on the left must not hide
        // the good ones our proxies appended on the right (the walk stops before it).
        ForwardedHeader::XForwardedFor => Hops::List(value.split(',').map(xff_entry).collect()),
        ForwardedHeader::Forwarded => match ForwardedHeaderValue::from_forwarded(&value) {
            Ok(p) => Hops::List(p.iter().map(|s| s.forwarded_for_ip()).collect()),
            Err(_) => Hops::Unparseable,
        },
    }
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`203.0.113.7:4711`,
/// `[2001:db8::7]:4711`) or in brackets.
fn xff_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            entry
                .strip_prefix('[')
                .and_then(|e| e.strip_suffix(']'))
                .and_then(|e| e.parse().ok())
        })
}

/// The client's address: the socket peer, or, behind trusted proxies, the address they
/// forwarded for (resolved once per request by the audit stage, which runs first, with [`resolve`]).
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub Option<IpAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<ClientIp>()
            .copied()
            .unwrap_or(ClientIp(None)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().expect("header"));
        }
        h
    }

    const XFF: ForwardedHeader = ForwardedHeader::XForwardedFor;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().expect("ip"))
    }

    #[test]
    fn untrusted_peer_is_the_client() {
        let h = headers(&[("x-forwarded-for", "198.51.100.1")]);
        assert_eq!(resolve(ip("203.0.113.9"), &h, &[], XFF), ip("203.0.113.9"));
    }

    #[test]
    fn trusted_chain_is_walked_from_the_right() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        // The client wrote a fake leftmost entry; our proxies appended the rest.
        let h = headers(&[("x-forwarded-for", "1.1.1.1, 198.51.100.7, 10.0.0.2")]);
        assert_eq!(
            resolve(ip("10.0.0.1"), &h, &trusted, XFF),
            ip("198.51.100.7")
        );
        // Only the configured header counts: a client's Forwarded passed through is ignored.
        let h = headers(&[
            ("forwarded", "for=203.0.113.1"),
            ("x-forwarded-for", "198.51.100.7"),
        ]);
        assert_eq!(
            resolve(ip("10.0.0.1"), &h, &trusted, XFF),
            ip("198.51.100.7")
        );
        let h = headers(&[(
            "forwarded",
            "for=1.1.1.1, for=\"[2001:db8::7]:4711\";proto=https, for=10.0.0.2",
        )]);
        assert_eq!(
            resolve(ip("10.0.0.1"), &h, &trusted, ForwardedHeader::Forwarded),
            ip("2001:db8::7")
        );
        assert_eq!(
            resolve(ip("10.0.0.1"), &h, &trusted, XFF),
            ip("10.0.0.1"),
            "no X-Forwarded-For: the proxy itself"
        );
        // Every hop trusted: the leftmost is the client.
        let h = headers(&[("x-forwarded-for", "10.1.1.1, 10.0.0.2")]);
        assert_eq!(resolve(ip("10.0.0.1"), &h, &trusted, XFF), ip("10.1.1.1"));
        // Garbage or an unknown hop: the client is unknown (not the proxy).
        let h = headers(&[("x-forwarded-for", "not-an-ip")]);
        assert_eq!(resolve(ip("10.0.0.1"), &h, &trusted, XFF), None);
        // Garbage on the left does not hide what our proxies appended; ports are fine.
        let h = headers(&[("x-forwarded-for", "junk, 198.51.100.9:4711, 10.0.0.2")]);
        assert_eq!(
            resolve(ip("10.0.0.1"), &h, &trusted, XFF),
            ip("198.51.100.9")
        );
        let h = headers(&[("x-forwarded-for", "[2001:db8::9]:80")]);
        assert_eq!(
            resolve(ip("10.0.0.1"), &h, &trusted, XFF),
            ip("2001:db8::9")
        );
        let h = headers(&[("forwarded", "for=unknown, for=10.0.0.2")]);
        assert_eq!(
            resolve(ip("10.0.0.1"), &h, &trusted, ForwardedHeader::Forwarded),
            None
        );
        // No header: the proxy itself.
        assert_eq!(
            resolve(ip("10.0.0.1"), &HeaderMap::new(), &trusted, XFF),
            ip("10.0.0.1")
        );
        // Two header lines are one list.
        let h = headers(&[
            ("x-forwarded-for", "198.51.100.8"),
            ("x-forwarded-for", "10.0.0.3"),
        ]);
        assert_eq!(
            resolve(ip("10.0.0.1"), &h, &trusted, XFF),
            ip("198.51.100.8")
        );
    }
}
