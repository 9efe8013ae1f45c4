//! Edge enforcement: gateway routes (`read:gateway` / `manage:gateway`), IP access lists
//! (`read:ip-access-lists` / `manage:ip-access-lists`) and abuse flags (`read:gateway` /
//! `manage:gateway`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use reqwest::Method;
use serde::{Deserialize, Serialize};

use crate::client::{Auth, Client, append_query, decode};
use crate::error::Result;

const READ_GATEWAY: &str = "read:gateway";
const MANAGE_GATEWAY: &str = "manage:gateway";
const READ_IP_LISTS: &str = "read:ip-access-lists";
const MANAGE_IP_LISTS: &str = "manage:ip-access-lists";

/// A gateway route in force.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayRoute {
    /// `rt_…`; `None` for a route from `datastack.toml`.
    pub id: Option<String>,
    /// `api` or `config`.
    pub source: String,
    /// The path prefix.
    pub path_prefix: String,
    /// The upstream base URL; `None` for a forward-auth-only route.
    pub upstream: Option<String>,
    /// The resource of its scopes.
    pub resource: String,
    /// Whether the prefix is removed before forwarding.
    pub strip_prefix: bool,
    /// Upstream timeout, ms.
    pub timeout_ms: u32,
    /// Spend units per request.
    pub price_per_request: u64,
    /// The upstream response header that reports a request's actual cost.
    #[serde(default)]
    pub cost_header: Option<String>,
    /// Whether the client's `Authorization` is forwarded.
    pub forward_authorization: bool,
    /// Per-method scope overrides.
    #[serde(default)]
    pub method_scopes: BTreeMap<String, String>,
    /// Whether client headers whose name contains `_` are forwarded (identity and
    /// forwarding headers never are).
    #[serde(default)]
    pub allow_underscore_headers: bool,
    /// Whether path and method override headers (`X-Original-URL`,
    /// `X-HTTP-Method-Override`, …) are forwarded.
    #[serde(default)]
    pub allow_override_headers: bool,
    /// Creation time (API routes).
    pub created_at: Option<DateTime<Utc>>,
    /// Last change (API routes).
    pub updated_at: Option<DateTime<Utc>>,
}

/// A route to create, or the full replacement of one; unset fields take the server's
/// defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteSpec {
    /// Requests under this prefix use the route (e.g. `/v1/clusters`).
    pub path_prefix: String,
    /// The upstream base URL (`http://127.0.0.1:9001`); `None` for forward-auth only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// The resource of its scopes (`clusters`, `jobs`, …).
    pub resource: String,
    /// Remove the prefix before forwarding.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strip_prefix: Option<bool>,
    /// Upstream timeout, 1–300000 ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u32>,
    /// Spend units per request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub price_per_request: Option<u64>,
    /// The upstream response header that reports a request's actual cost (an integer that
    /// replaces the price); default `x-datastack-cost`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_header: Option<String>,
    /// Forward the client's `Authorization` header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forward_authorization: Option<bool>,
    /// Per-method scope overrides, e.g. `POST` → `read:jobs`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub method_scopes: BTreeMap<String, String>,
    /// Forward client headers whose name contains `_` (dropped by default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_underscore_headers: Option<bool>,
    /// Forward path and method override headers (dropped by default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_override_headers: Option<bool>,
}

/// An IP access list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpAccessList {
    /// `ipl_…`.
    pub id: String,
    /// Its label.
    pub label: String,
    /// `ALLOW` or `BLOCK`.
    pub list_type: String,
    /// Normalised addresses and ranges.
    pub ip_addresses: Vec<String>,
    /// How many.
    pub address_count: usize,
    /// Whether it is enforced.
    pub enabled: bool,
    /// Who created it.
    pub created_by: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// The workspace's lists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpAccessLists {
    /// The lists.
    pub items: Vec<IpAccessList>,
    /// Whether the workspace suspended enforcement.
    #[serde(default)]
    pub enforcement_suspended: bool,
}

/// A list to create.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NewIpAccessList {
    /// A name, unique in the workspace.
    pub label: String,
    /// `ALLOW` or `BLOCK`.
    pub list_type: String,
    /// IPv4/IPv6 addresses and CIDR ranges.
    pub ip_addresses: Vec<String>,
    /// Enforced (default true).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// A partial change of a list; unset fields keep their value.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IpAccessListUpdate {
    /// A new label.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// A new type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub list_type: Option<String>,
    /// New addresses, replacing the old ones.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_addresses: Option<Vec<String>>,
    /// Enable or disable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// A client flagged for sending while rate-limited.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AbuseFlag {
    /// `abf_…`.
    pub id: String,
    /// The workspace it concerns.
    pub workspace_id: String,
    /// `credential` or `ip`.
    pub subject_kind: String,
    /// The credential id or address.
    pub subject: String,
    /// The flag's level (the penalty grows ×4 per level).
    pub level: u32,
    /// Refusals that raised it.
    pub rejected: u64,
    /// When.
    pub flagged_at: DateTime<Utc>,
    /// Until when the subject is refused.
    pub penalty_until: DateTime<Utc>,
    /// `active`, `expired` or `cleared`.
    pub status: String,
    /// When it was cleared.
    pub cleared_at: Option<DateTime<Utc>>,
    /// Who cleared it.
    pub cleared_by: Option<String>,
}

#[derive(Deserialize)]
struct Items<T> {
    items: Vec<T>,
}

impl Client {
    /// `GET /api/v1/gateway/routes` (`read:gateway`): every route in force.
    pub async fn list_routes(&self) -> Result<Vec<GatewayRoute>> {
        let url = self.url(&["api", "v1", "gateway", "routes"]);
        let page: Items<GatewayRoute> = decode(self.get(url, READ_GATEWAY).await?).await?;
        Ok(page.items)
    }

    /// `GET /api/v1/gateway/routes/{id}` (`read:gateway`).
    pub async fn get_route(&self, id: &str) -> Result<GatewayRoute> {
        let url = self.url(&["api", "v1", "gateway", "routes", id]);
        decode(self.get(url, READ_GATEWAY).await?).await
    }

    /// `POST /api/v1/gateway/routes` (`manage:gateway`, root workspace): a prefix already
    /// taken gets 409.
    pub async fn create_route(&self, spec: &RouteSpec) -> Result<GatewayRoute> {
        let url = self.url(&["api", "v1", "gateway", "routes"]);
        self.post_json(url, MANAGE_GATEWAY, spec).await
    }

    /// `PUT /api/v1/gateway/routes/{id}` (`manage:gateway`, root workspace).
    pub async fn replace_route(&self, id: &str, spec: &RouteSpec) -> Result<GatewayRoute> {
        let url = self.url(&["api", "v1", "gateway", "routes", id]);
        self.send_json(Method::PUT, url, MANAGE_GATEWAY, spec).await
    }

    /// `DELETE /api/v1/gateway/routes/{id}` (`manage:gateway`, root workspace).
    pub async fn delete_route(&self, id: &str) -> Result<()> {
        let url = self.url(&["api", "v1", "gateway", "routes", id]);
        self.send(Method::DELETE, url, Auth::Scoped(MANAGE_GATEWAY), None)
            .await?;
        Ok(())
    }

    /// `GET /api/v1/ip-access-lists` (`read:ip-access-lists`): the workspace's lists.
    pub async fn list_ip_access_lists(&self) -> Result<IpAccessLists> {
        let url = self.url(&["api", "v1", "ip-access-lists"]);
        decode(self.get(url, READ_IP_LISTS).await?).await
    }

    /// `POST /api/v1/ip-access-lists` (`manage:ip-access-lists`): enforced at once when
    /// enabled. A list that would refuse the caller's own address gets 409 unless
    /// `allow_lockout`.
    pub async fn create_ip_access_list(
        &self,
        list: &NewIpAccessList,
        allow_lockout: bool,
    ) -> Result<IpAccessList> {
        let mut url = self.url(&["api", "v1", "ip-access-lists"]);
        lockout(&mut url, allow_lockout);
        self.post_json(url, MANAGE_IP_LISTS, list).await
    }

    /// `PATCH /api/v1/ip-access-lists/{id}` (`manage:ip-access-lists`).
    pub async fn update_ip_access_list(
        &self,
        id: &str,
        update: &IpAccessListUpdate,
        allow_lockout: bool,
    ) -> Result<IpAccessList> {
        let mut url = self.url(&["api", "v1", "ip-access-lists", id]);
        lockout(&mut url, allow_lockout);
        self.send_json(Method::PATCH, url, MANAGE_IP_LISTS, update)
            .await
    }

    /// `GET /api/v1/ip-access-lists/{id}` (`read:ip-access-lists`).
    pub async fn get_ip_access_list(&self, id: &str) -> Result<IpAccessList> {
        let url = self.url(&["api", "v1", "ip-access-lists", id]);
        decode(self.get(url, READ_IP_LISTS).await?).await
    }

    /// `PUT /api/v1/ip-access-lists/{id}` (`manage:ip-access-lists`): replaces the whole
    /// list (unset `enabled`: enabled). 409 if it would refuse the caller's own address,
    /// unless `allow_lockout`.
    pub async fn replace_ip_access_list(
        &self,
        id: &str,
        list: &NewIpAccessList,
        allow_lockout: bool,
    ) -> Result<IpAccessList> {
        let mut url = self.url(&["api", "v1", "ip-access-lists", id]);
        lockout(&mut url, allow_lockout);
        self.send_json(Method::PUT, url, MANAGE_IP_LISTS, list)
            .await
    }

    /// `DELETE /api/v1/ip-access-lists/{id}` (`manage:ip-access-lists`).
    pub async fn delete_ip_access_list(&self, id: &str, allow_lockout: bool) -> Result<()> {
        let mut url = self.url(&["api", "v1", "ip-access-lists", id]);
        lockout(&mut url, allow_lockout);
        self.send(Method::DELETE, url, Auth::Scoped(MANAGE_IP_LISTS), None)
            .await?;
        Ok(())
    }

    /// `GET /api/v1/abuse-flags` (`read:gateway`): flags, newest first; only those not
    /// cleared unless `all`.
    pub async fn list_abuse_flags(&self, all: bool, limit: Option<u32>) -> Result<Vec<AbuseFlag>> {
        let mut url = self.url(&["api", "v1", "abuse-flags"]);
        append_query(
            &mut url,
            &[
                ("active", all.then(|| "false".to_owned())),
                ("limit", limit.map(|l| l.to_string())),
            ],
        );
        let page: Items<AbuseFlag> = decode(self.get(url, READ_GATEWAY).await?).await?;
        Ok(page.items)
    }

    /// `POST /api/v1/abuse-flags/{id}/clear` (`manage:gateway`): lifts the penalty on
    /// every node.
    pub async fn clear_abuse_flag(&self, id: &str) -> Result<AbuseFlag> {
        let url = self.url(&["api", "v1", "abuse-flags", id, "clear"]);
        self.post_json(url, MANAGE_GATEWAY, &serde_json::json!({}))
            .await
    }
}

fn lockout(url: &mut reqwest::Url, allow: bool) {
    if allow {
        url.query_pairs_mut().append_pair("allowLockout", "true");
    }
}
