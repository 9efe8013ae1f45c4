//! Who the client is: the socket peer, unless the peer is a trusted proxy, in which case
//! the forwarding headers say who it forwarded for.
//!
//! The headers are read from the right (the hop nearest to us) to the left: every address
//! that is itself a trusted proxy is skipped, and the first one that is not is the client.
//! A client can write anything in the leftmost entries; only entries appended by our own
//! proxies are believed. `Forwarded` (RFC 7239) is used when present, else
//! `X-Forwarded-For`. A header that cannot be parsed is not believed at all: the client is
//! then the nearest trusted proxy.

use std::net::IpAddr;

use axum::http::HeaderMap;
use forwarded_header_value::ForwardedHeaderValue;
use ipnet::IpNet;

/// Resolves the client address of a request that came from `peer`.
pub fn resolve(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = peer.map(|p| p.to_canonical())?;
    if !is_trusted(peer, trusted) {
        return Some(peer);
    }
    let hops = forwarded_hops(headers);
    let Some(hops) = hops else {
        return Some(peer);
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
            // An obfuscated or unknown hop: nothing further left can be believed.
            None => return Some(client),
        }
    }
    Some(client)
}

fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|n| n.contains(&ip))
}

/// The `for` addresses of the forwarding headers, leftmost first; `None` when there is
/// no such header or it cannot be parsed. Several header lines are one list, in order.
fn forwarded_hops(headers: &HeaderMap) -> Option<Vec<Option<IpAddr>>> {
    let joined = |name: &str| -> Option<String> {
        let mut values = headers.get_all(name).iter().peekable();
        values.peek()?;
        let parts: Option<Vec<&str>> = values.map(|v| v.to_str().ok()).collect();
        Some(parts?.join(","))
    };
    if let Some(value) = joined("forwarded") {
        let parsed = ForwardedHeaderValue::from_forwarded(&value).ok()?;
        return Some(parsed.iter().map(|s| s.forwarded_for_ip()).collect());
    }
    let value = joined("x-forwarded-for")?;
    let parsed = ForwardedHeaderValue::from_x_forwarded_for(&value).ok()?;
    Some(parsed.iter().map(|s| s.forwarded_for_ip()).collect())
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

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().expect("ip"))
    }

    #[test]
    fn untrusted_peer_is_the_client() {
        let h = headers(&[("x-forwarded-for", "198.51.100.1")]);
        assert_eq!(resolve(ip("203.0.113.9"), &h, &[]), ip("203.0.113.9"));
    }

    #[test]
    fn trusted_chain_is_walked_from_the_right() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        // The client wrote a fake leftmost entry; our proxies appended the rest.
        let h = headers(&[("x-forwarded-for", "1.1.1.1, 198.51.100.7, 10.0.0.2")]);
        assert_eq!(resolve(ip("10.0.0.1"), &h, &trusted), ip("198.51.100.7"));
        let h = headers(&[(
            "forwarded",
            "for=1.1.1.1, for=\"[2001:db8::7]:4711\";proto=https, for=10.0.0.2",
        )]);
        assert_eq!(resolve(ip("10.0.0.1"), &h, &trusted), ip("2001:db8::7"));
        // Every hop trusted: the leftmost is the client.
        let h = headers(&[("x-forwarded-for", "10.1.1.1, 10.0.0.2")]);
        assert_eq!(resolve(ip("10.0.0.1"), &h, &trusted), ip("10.1.1.1"));
        // Garbage is not believed.
        let h = headers(&[("x-forwarded-for", "not-an-ip")]);
        assert_eq!(resolve(ip("10.0.0.1"), &h, &trusted), ip("10.0.0.1"));
        // No header: the proxy itself.
        assert_eq!(
            resolve(ip("10.0.0.1"), &HeaderMap::new(), &trusted),
            ip("10.0.0.1")
        );
        // Two header lines are one list.
        let h = headers(&[
            ("x-forwarded-for", "198.51.100.8"),
            ("x-forwarded-for", "10.0.0.3"),
        ]);
        assert_eq!(resolve(ip("10.0.0.1"), &h, &trusted), ip("198.51.100.8"));
    }
}
