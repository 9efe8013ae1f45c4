//! Edge rules, without I/O: IP access lists (validation and the allow/block decision) and
//! gateway routes (validation, matching a path, the scope a method needs).

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::scope::{Resource, Scope};
use crate::{Error, Result};

/// The most addresses or ranges one IP access list may hold.
pub const MAX_LIST_ENTRIES: usize = 1000;

/// Whether a list admits or refuses the addresses it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ListType {
    /// If any enabled allow list exists, a client must match one.
    Allow,
    /// A client matching a block list is refused, whatever the allow lists say.
    Block,
}

impl ListType {
    /// `ALLOW` or `BLOCK`.
    pub fn as_str(self) -> &'static str {
        match self {
            ListType::Allow => "ALLOW",
            ListType::Block => "BLOCK",
        }
    }

    /// Parses `ALLOW` or `BLOCK`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "ALLOW" => Ok(ListType::Allow),
            "BLOCK" => Ok(ListType::Block),
            _ => Err(Error::invalid("listType", "must be ALLOW or BLOCK")),
        }
    }
}

/// Parses the addresses of a list: each an IPv4 or IPv6 address (a single host) or a CIDR
/// range. Host bits of a range are cleared (`10.1.2.3/8` becomes `10.0.0.0/8`); IPv4-mapped
/// IPv6 addresses become IPv4. `field` names the input for errors.
pub fn parse_ip_addresses(field: &str, values: &[String]) -> Result<Vec<IpNet>> {
    if values.is_empty() {
        return Err(Error::invalid(
            field,
            "must name at least one address or range",
        ));
    }
    if values.len() > MAX_LIST_ENTRIES {
        return Err(Error::invalid(
            field,
            format!("at most {MAX_LIST_ENTRIES} addresses or ranges per list"),
        ));
    }
    let mut nets = Vec::with_capacity(values.len());
    for (i, v) in values.iter().enumerate() {
        let v = v.trim();
        let net = if v.contains('/') {
            v.parse::<IpNet>().map(|n| n.trunc()).ok()
        } else {
            v.parse::<IpAddr>().ok().map(|a| IpNet::from(canonical(a)))
        };
        let Some(net) = net else {
            return Err(Error::invalid(
                format!("{field}[{i}]"),
                "is not an IPv4 or IPv6 address or CIDR range (e.g. 203.0.113.0/24, 2001:db8::/32)",
            ));
        };
        let net = match net {
            IpNet::V6(v6) => match v6.addr().to_ipv4_mapped() {
                Some(v4) if v6.prefix_len() >= 96 => {
                    IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96).unwrap_or(net)
                }
                _ => net,
            },
            IpNet::V4(_) => net,
        };
        if !nets.contains(&net) {
            nets.push(net);
        }
    }
    Ok(nets)
}

/// The address a rule compares: IPv4-mapped IPv6 (`::ffff:203.0.113.9`) as IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// One enabled list, as the decision needs it.
#[derive(Debug, Clone)]
pub struct CompiledList {
    /// The list's id, named in refusals.
    pub id: String,
    /// Allow or block.
    pub list_type: ListType,
    /// Its ranges.
    pub nets: Vec<IpNet>,
}

/// The enabled lists of a workspace, ready to decide.
#[derive(Debug, Clone, Default)]
pub struct IpRules {
    lists: Vec<CompiledList>,
}

/// Why an address is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpDenial {
    /// It matches the block list with this id.
    Blocked(String),
    /// Allow lists exist and it matches none of them.
    NotAllowed,
    /// Lists exist and the client's address is unknown.
    Unknown,
}

impl IpDenial {
    /// A sentence for the client (it names no list contents).
    pub fn explain(&self) -> &'static str {
        match self {
            IpDenial::Blocked(_) => "requests from this address are blocked by an IP access list",
            IpDenial::NotAllowed => "this address is not on the workspace's IP allow lists",
            IpDenial::Unknown => "the client address is unknown and IP access lists are enforced",
        }
    }
}

impl IpRules {
    /// Rules from enabled lists (disabled ones must be left out by the caller).
    pub fn new(lists: Vec<CompiledList>) -> Self {
        Self { lists }
    }

    /// Block lists win; if an allow list exists, the address must match one.
    pub fn check(&self, ip: Option<IpAddr>) -> std::result::Result<(), IpDenial> {
        if self.lists.is_empty() {
            return Ok(());
        }
        let Some(ip) = ip.map(canonical) else {
            return Err(IpDenial::Unknown);
        };
        if let Some(block) = self
            .lists
            .iter()
            .find(|l| l.list_type == ListType::Block && l.nets.iter().any(|n| n.contains(&ip)))
        {
            return Err(IpDenial::Blocked(block.id.clone()));
        }
        let mut allow_lists = self
            .lists
            .iter()
            .filter(|l| l.list_type == ListType::Allow)
            .peekable();
        if allow_lists.peek().is_none() {
            return Ok(());
        }
        if allow_lists.any(|l| l.nets.iter().any(|n| n.contains(&ip))) {
            Ok(())
        } else {
            Err(IpDenial::NotAllowed)
        }
    }
}

/// Path prefixes a gateway route may not take: the server's own surface.
const RESERVED_PREFIXES: &[&str] = &[
    "/api",
    "/auth",
    "/oauth2",
    "/.well-known",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
];

/// The longest `timeoutMs` a route may set (5 minutes).
pub const MAX_TIMEOUT_MS: u32 = 300_000;

/// A gateway route as configured: where a path prefix goes and what it requires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteSpec {
    /// Requests whose path is this prefix or under it (on a `/` boundary) use the route.
    pub path_prefix: String,
    /// The upstream base URL (`http://host:port` or `https://…`, optionally with a base
    /// path). `None`: a route for forward-auth decisions only.
    #[serde(default)]
    pub upstream: Option<String>,
    /// The resource of the route's scopes: `GET`/`HEAD` need `read:<resource>`, other
    /// methods `manage:<resource>`.
    pub resource: Resource,
    /// Remove the prefix before forwarding. Default false.
    #[serde(default)]
    pub strip_prefix: bool,
    /// How long the upstream may take to answer, in milliseconds. Default 30 000.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u32,
    /// Spend units each request costs an API key. Default 0.
    #[serde(default)]
    pub price_per_request: u64,
    /// The upstream response header that reports a request's actual cost, replacing
    /// `pricePerRequest` for that request. Default `x-datastack-cost`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_header: Option<String>,
    /// Forward the client's `Authorization` header to the upstream. Default false.
    #[serde(default)]
    pub forward_authorization: bool,
    /// Per-method scope overrides, e.g. `{"POST": "read:jobs"}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub method_scopes: BTreeMap<String, Scope>,
    /// Forward client headers whose name contains `_` (dropped by default: CGI and WSGI
    /// servers read `X_Datastack_Principal` as `X-Datastack-Principal`). Identity and
    /// forwarding headers are dropped in every spelling whatever this says. Default false.
    #[serde(default)]
    pub allow_underscore_headers: bool,
    /// Forward the client's path and method override headers (`X-Original-URL`,
    /// `X-Rewrite-URL`, `X-HTTP-Method-Override`, …; see [`OVERRIDE_HEADERS`]), which make
    /// the upstream serve another path or method than the one decided on. Default false.
    #[serde(default)]
    pub allow_override_headers: bool,
}

/// Request headers that frameworks read as a replacement for the request's path or
/// method, lower case: IIS URL Rewrite and Symfony/Laminas (`X-Original-URL`,
/// `X-Rewrite-URL`), Google APIs, Express and Symfony (`X-HTTP-Method-Override`), OData
/// and Express (`X-HTTP-Method`, `X-Method-Override`), nginx `auth_request` conventions
/// (`X-Original-URI`, `X-Original-Method`), and Envoy (`X-Envoy-Original-Path`,
/// `X-Envoy-Original-Url`). A route forwards them only with `allowOverrideHeaders`.
pub const OVERRIDE_HEADERS: &[&str] = &[
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    "x-original-method",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-envoy-original-path",
    "x-envoy-original-url",
];

/// The response header an upstream reports a request's cost in, unless the route names
/// another.
pub const DEFAULT_COST_HEADER: &str = "x-datastack-cost";

fn default_timeout_ms() -> u32 {
    30_000
}

impl RouteSpec {
    /// Checks every field; the error names the field.
    pub fn validate(mut self) -> Result<Self> {
        let p = &self.path_prefix;
        if !p.starts_with('/') || p.len() > 200 {
            return Err(Error::invalid(
                "pathPrefix",
                "must start with / and be at most 200 characters",
            ));
        }
        if p.len() > 1 && p.ends_with('/') {
            self.path_prefix.pop();
        }
        let p = &self.path_prefix;
        if p == "/"
            || p.split('/')
                .skip(1)
                .any(|seg| seg.is_empty() || seg == "." || seg == "..")
            || !p
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/-._~".contains(&b))
        {
            return Err(Error::invalid(
                "pathPrefix",
                "must be one or more path segments of letters, digits and -._~ (e.g. /v1/clusters)",
            ));
        }
        if RESERVED_PREFIXES
            .iter()
            .any(|r| p == r || p.starts_with(&format!("{r}/")) || r.starts_with(&format!("{p}/")))
        {
            return Err(Error::invalid(
                "pathPrefix",
                "overlaps the server's own paths (/api, /auth, /oauth2, /.well-known, health)",
            ));
        }
        if let Some(upstream) = &self.upstream {
            self.upstream = Some(validate_upstream(upstream)?);
        }
        if !(1..=MAX_TIMEOUT_MS).contains(&self.timeout_ms) {
            return Err(Error::invalid(
                "timeoutMs",
                format!("must be between 1 and {MAX_TIMEOUT_MS}"),
            ));
        }
        if self.price_per_request > 1_000_000_000 {
            return Err(Error::invalid(
                "pricePerRequest",
                "must be between 0 and 1000000000",
            ));
        }
        if let Some(h) = &self.cost_header {
            let h = h.trim().to_ascii_lowercase();
            let token_char = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            if h.is_empty() || h.len() > 100 || !h.bytes().all(token_char) {
                return Err(Error::invalid(
                    "costHeader",
                    "must be an HTTP header name of at most 100 characters",
                ));
            }
            self.cost_header = Some(h);
        }
        let mut scopes = BTreeMap::new();
        for (method, scope) in std::mem::take(&mut self.method_scopes) {
            let upper = method.to_ascii_uppercase();
            if http::Method::from_bytes(upper.as_bytes()).is_err() || upper.is_empty() {
                return Err(Error::invalid(
                    format!("methodScopes.{method}"),
                    "is not an HTTP method",
                ));
            }
            scopes.insert(upper, scope);
        }
        self.method_scopes = scopes;
        Ok(self)
    }

    /// The response header whose value replaces `pricePerRequest` for one request.
    pub fn cost_header_name(&self) -> &str {
        self.cost_header.as_deref().unwrap_or(DEFAULT_COST_HEADER)
    }

    /// The scope a request with `method` needs on this route.
    pub fn required_scope(&self, method: &str) -> Scope {
        if let Some(scope) = self.method_scopes.get(&method.to_ascii_uppercase()) {
            return *scope;
        }
        if method.eq_ignore_ascii_case("GET") || method.eq_ignore_ascii_case("HEAD") {
            Scope::read(self.resource)
        } else {
            Scope::manage(self.resource)
        }
    }

    /// Whether `path` (without query) falls under the prefix, on a segment boundary.
    pub fn matches(&self, path: &str) -> bool {
        path.strip_prefix(self.path_prefix.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }
}

/// Normalises an upstream base URL: `http` or `https`, a host, an optional port and base
/// path, no credentials, query or fragment. Returned without a trailing `/`.
fn validate_upstream(s: &str) -> Result<String> {
    let bad = |m: &str| Error::invalid("upstream", m);
    let uri: http::Uri = s
        .parse()
        .map_err(|_| bad("is not a URL (e.g. http://127.0.0.1:9001)"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(bad("must be an http:// or https:// URL")),
    }
    let authority = uri.authority().ok_or_else(|| bad("must name a host"))?;
    if authority.as_str().contains('@') {
        return Err(bad("must not carry credentials"));
    }
    if authority.host().is_empty() {
        return Err(bad("must name a host"));
    }
    if uri.query().is_some() || s.contains('#') {
        return Err(bad("must not have a query or fragment"));
    }
    Ok(s.trim_end_matches('/').to_owned())
}

/// Picks the route for `path`: the longest matching prefix.
pub fn match_route<'a, T>(
    routes: impl IntoIterator<Item = &'a T>,
    spec: impl Fn(&T) -> &RouteSpec,
    path: &str,
) -> Option<&'a T>
where
    T: 'a,
{
    routes
        .into_iter()
        .filter(|r| spec(r).matches(path))
        .max_by_key(|r| spec(r).path_prefix.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(t: ListType, nets: &[&str]) -> CompiledList {
        CompiledList {
            id: format!("{t:?}"),
            list_type: t,
            nets: parse_ip_addresses(
                "ipAddresses",
                &nets.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )
            .expect("valid"),
        }
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().expect("ip"))
    }

    #[test]
    fn block_wins_and_allow_must_match() {
        let rules = IpRules::new(vec![
            list(ListType::Allow, &["203.0.113.0/24", "2001:db8::/32"]),
            list(ListType::Block, &["203.0.113.7"]),
        ]);
        assert!(rules.check(ip("203.0.113.8")).is_ok());
        assert!(rules.check(ip("2001:db8::1")).is_ok());
        assert!(rules.check(ip("::ffff:203.0.113.8")).is_ok());
        assert!(matches!(
            rules.check(ip("203.0.113.7")),
            Err(IpDenial::Blocked(_))
        ));
        assert_eq!(rules.check(ip("198.51.100.1")), Err(IpDenial::NotAllowed));
        assert_eq!(rules.check(None), Err(IpDenial::Unknown));
        let only_block = IpRules::new(vec![list(ListType::Block, &["10.0.0.0/8"])]);
        assert!(only_block.check(ip("11.0.0.1")).is_ok());
        assert!(only_block.check(ip("10.2.3.4")).is_err());
        assert!(IpRules::default().check(None).is_ok());
    }

    #[test]
    fn addresses_are_validated_and_normalised() {
        let nets = parse_ip_addresses(
            "ipAddresses",
            &["10.1.2.3/8".into(), "::ffff:192.0.2.1".into()],
        )
        .expect("valid");
        assert_eq!(nets[0].to_string(), "10.0.0.0/8");
        assert_eq!(nets[1].to_string(), "192.0.2.1/32");
        for bad in ["10.0.0.0/33", "nope", "1.2.3", "", "2001:db8::/129"] {
            let e = parse_ip_addresses("ipAddresses", &[bad.into()]).expect_err(bad);
            assert!(e.to_string().starts_with("ipAddresses[0]"), "{e}");
        }
        assert!(parse_ip_addresses("ipAddresses", &[]).is_err());
    }

    fn route(prefix: &str) -> RouteSpec {
        RouteSpec {
            path_prefix: prefix.into(),
            upstream: Some("http://127.0.0.1:9001/".into()),
            resource: Resource::Clusters,
            strip_prefix: false,
            timeout_ms: 1000,
            price_per_request: 1,
            cost_header: None,
            forward_authorization: false,
            method_scopes: BTreeMap::new(),
            allow_underscore_headers: false,
            allow_override_headers: false,
        }
    }

    #[test]
    fn routes_validate_and_match_on_segments() {
        let r = route("/v1/clusters/").validate().expect("valid");
        assert_eq!(r.path_prefix, "/v1/clusters");
        assert_eq!(r.upstream.as_deref(), Some("http://127.0.0.1:9001"));
        assert!(r.matches("/v1/clusters"));
        assert!(r.matches("/v1/clusters/abc"));
        assert!(!r.matches("/v1/clustersx"));
        for bad in ["v1", "/", "/api/v1/x", "/a/../b", "/a//b", "/auth", "/a b"] {
            assert!(route(bad).validate().is_err(), "{bad}");
        }
        for bad in ["ftp://x", "http://u:p@host", "http://h/?q=1", "/relative"] {
            let mut r = route("/v1/x");
            r.upstream = Some(bad.into());
            assert!(r.validate().is_err(), "{bad}");
        }
        let routes = [
            route("/v1").validate().expect("v"),
            route("/v1/clusters").validate().expect("v"),
        ];
        let picked = match_route(routes.iter(), |r| r, "/v1/clusters/1").expect("match");
        assert_eq!(picked.path_prefix, "/v1/clusters");
        assert!(match_route(routes.iter(), |r| r, "/v2").is_none());
    }

    #[test]
    fn scopes_follow_methods_with_overrides() {
        let mut r = route("/v1/jobs");
        r.resource = Resource::Jobs;
        r.method_scopes
            .insert("post".into(), Scope::read(Resource::Jobs));
        let r = r.validate().expect("valid");
        assert_eq!(r.required_scope("GET"), Scope::read(Resource::Jobs));
        assert_eq!(r.required_scope("HEAD"), Scope::read(Resource::Jobs));
        assert_eq!(r.required_scope("DELETE"), Scope::manage(Resource::Jobs));
        assert_eq!(r.required_scope("POST"), Scope::read(Resource::Jobs));
    }
}
