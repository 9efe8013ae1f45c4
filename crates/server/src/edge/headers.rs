//! Which client request headers the gateway forwards to an upstream.
//!
//! Identity and forwarding headers are the gateway's to set, so the client's copies are
//! dropped, and in every spelling: CGI, WSGI (PEP 3333), Rack and PHP name a header
//! `HTTP_` plus its name upper-cased with `-` turned into `_`, so `X_Datastack_Principal`
//! reaches the application as the same variable as the `X-Datastack-Principal` the gateway
//! sets, often merged with it (`usr_attacker,usr_real`). Like nginx (its
//! `underscores_in_headers off`), the gateway therefore drops every header whose name
//! contains `_` unless the route allows them, and even then drops those that spell an
//! identity, forwarding, override or framing header.
//!
//! Path and method override headers (`X-Original-URL`, `X-HTTP-Method-Override`, …) make
//! some frameworks serve another path or method than the request line's, the one the
//! gateway decided on; they are dropped unless the route allows them.

use axum::http::{HeaderMap, HeaderName};
use datastack_core::edge::{OVERRIDE_HEADERS, RouteSpec};

use super::IDENTITY_HEADER_PREFIX;

/// Client-address and forwarding headers proxies and CDNs set, which upstreams believe:
/// never taken from the client (the gateway sets `X-Forwarded-For` and `X-Forwarded-Host`
/// itself). Every `x-forwarded-*` header counts too.
const FORWARDING_HEADERS: &[&str] = &[
    "forwarded",
    "x-real-ip",
    "x-client-ip",
    "client-ip",
    "x-cluster-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-originating-ip",
    "x-remote-ip",
    "x-remote-addr",
    "x-host",
];

/// Headers that frame the request or belong to one connection: an underscore spelling of
/// one (`Content_Length`) is never forwarded, whatever the route allows.
const FRAMING_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

/// Whether a header (lower case, `-` separated) is an identity or forwarding header.
fn gateway_owned(normal: &str) -> bool {
    normal.starts_with(IDENTITY_HEADER_PREFIX)
        || normal.starts_with("x-forwarded-")
        || FORWARDING_HEADERS.contains(&normal)
}

/// Whether a client header with this (lower-case) name may reach the route's upstream.
pub fn forwardable(name: &str, route: &RouteSpec) -> bool {
    // The common case allocates nothing: a name of letters, digits and `-` only.
    let plain = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if plain {
        return !gateway_owned(name)
            && (route.allow_override_headers || !OVERRIDE_HEADERS.contains(&name));
    }
    // CGI and FastCGI servers (lighttpd, Apache, PHP) turn every character that is not a
    // letter or a digit into `_`, so `X.Datastack.Principal` and `X~Forwarded~For` reach
    // the application as the real headers would: every such spelling is read as `-`.
    let normal: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    if gateway_owned(&normal) || FRAMING_HEADERS.contains(&&*normal) {
        return false;
    }
    // Names with other characters are dropped as nginx drops them
    // (`ignore_invalid_headers`), unless the route lets them through.
    route.allow_underscore_headers
        && (route.allow_override_headers || !OVERRIDE_HEADERS.contains(&&*normal))
}

/// Removes the client headers the route's upstream must not receive (see the module
/// documentation). Hop-by-hop headers are removed separately.
pub fn filter_client_headers(headers: &mut HeaderMap, route: &RouteSpec) {
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| !forwardable(name.as_str(), route))
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use datastack_core::edge::RouteSpec;
    use datastack_core::scope::Resource;

    use super::forwardable;

    fn route(underscores: bool, overrides: bool) -> RouteSpec {
        RouteSpec {
            path_prefix: "/v1".into(),
            upstream: None,
            resource: Resource::Jobs,
            strip_prefix: false,
            timeout_ms: 1000,
            price_per_request: 0,
            cost_header: None,
            forward_authorization: false,
            method_scopes: BTreeMap::new(),
            allow_underscore_headers: underscores,
            allow_override_headers: overrides,
        }
    }

    #[test]
    fn identity_forwarding_and_override_headers_never_pass_unless_allowed() {
        let strict = route(false, false);
        let lax = route(true, true);
        for name in [
            "x-datastack-principal",
            "x_datastack_principal",
            "x-datastack_scopes",
            "x_forwarded_for",
            "x-forwarded-uri",
            "forwarded",
            "x_real_ip",
            "true-client-ip",
            "content_length",
            "transfer_encoding",
            "x.datastack.principal",
            "x~forwarded~for",
            "x*real*ip",
            "x-datastack.scopes",
        ] {
            assert!(!forwardable(name, &lax), "{name}");
            assert!(!forwardable(name, &strict), "{name}");
        }
        for name in [
            "x-original-url",
            "x-rewrite-url",
            "x-http-method-override",
            "x-http-method",
            "x-method-override",
            "x_custom",
            "x_original_url",
            "x.custom",
        ] {
            assert!(!forwardable(name, &strict), "{name}");
            assert!(forwardable(name, &lax), "{name}");
        }
        assert!(!forwardable("x_original_url", &route(false, true)));
        assert!(!forwardable("x-original-url", &route(true, false)));
        for name in ["accept", "x-custom", "content-type", "cookie"] {
            assert!(forwardable(name, &strict), "{name}");
        }
    }
}
