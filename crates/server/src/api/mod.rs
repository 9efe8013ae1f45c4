//! The HTTP API, one module per area. Each module owns its routes, handlers and
//! request/response types; the public JSON shapes (camelCase, RFC 3339 timestamps) live
//! here, separate from the domain types, so the contract changes only on purpose.

pub mod abuse;
pub mod access_review;
pub mod api_keys;
pub mod audit;
pub mod gateway;
pub mod health;
pub mod ip_lists;
pub mod issuance;
pub mod me;
pub mod oauth;
pub mod principals;
pub mod time;
pub mod tokens;
pub mod webhooks;
pub mod workspaces;

use datastack_store::PageRequest;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;

use crate::error::ApiError;
use crate::state::AppState;

/// Every route of the API, each registered together with its operation in the OpenAPI
/// document (`utoipa_axum::routes!`), so that the router and the document cannot differ.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(health::routes())
        .merge(me::routes())
        .merge(tokens::routes())
        .merge(api_keys::routes())
        .merge(oauth::routes())
        .merge(principals::routes())
        .merge(workspaces::routes())
        .merge(audit::routes())
        .merge(access_review::routes())
        .merge(gateway::routes())
        .merge(ip_lists::routes())
        .merge(abuse::routes())
        .merge(webhooks::routes())
}

/// The paths the router serves itself begin with one of these (as a whole segment); every
/// other path goes to the gateway. The fast path relies on it to take gateway traffic
/// without the router, so a route added outside these prefixes must be added here (a
/// test checks every documented operation).
pub const ROUTER_PREFIXES: [&str; 8] = [
    "/api",
    "/auth",
    "/oauth2",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/.well-known",
];

/// Whether the router may serve `path` itself rather than leave it to the gateway.
pub fn router_may_serve(path: &str) -> bool {
    ROUTER_PREFIXES.iter().any(|prefix| {
        path.strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

/// Pagination parameters shared by list endpoints.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Page size, 1–200 (default 50).
    pub limit: Option<i64>,
    /// The `nextCursor` of the previous page.
    pub cursor: Option<String>,
}

impl PageParams {
    /// Validates the parameters into a store page request.
    pub fn to_request(&self) -> Result<PageRequest, ApiError> {
        let limit = match self.limit {
            None => 50,
            Some(n) if (1..=200).contains(&n) => n as u32,
            Some(_) => {
                return Err(ApiError::InvalidRequest(
                    "limit: must be between 1 and 200".into(),
                ));
            }
        };
        let after = match &self.cursor {
            None => None,
            Some(c)
                if c.len() <= 64 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
            {
                Some(c.clone())
            }
            Some(_) => {
                return Err(ApiError::InvalidRequest(
                    "cursor: is not a cursor this server issued".into(),
                ));
            }
        };
        Ok(PageRequest { after, limit })
    }
}

/// Declares a page type for a response item, for list responses and the OpenAPI document.
macro_rules! page_of {
    ($page:ident, $item:ty) => {
        #[doc = concat!("One page of `", stringify!($item), "`.")]
        #[derive(Debug, serde::Serialize, utoipa::ToSchema)]
        #[serde(rename_all = "camelCase")]
        pub struct $page {
            /// The records of this page.
            pub items: Vec<$item>,
            /// Pass as `cursor` for the next page; `null` on the last page.
            pub next_cursor: Option<String>,
        }
    };
}
pub(crate) use page_of;

#[cfg(test)]
mod tests {
    #[test]
    fn every_documented_operation_is_under_a_router_prefix() {
        let doc: serde_json::Value =
            serde_json::from_str(crate::openapi::document_json()).expect("the document parses");
        let paths = doc["paths"].as_object().expect("paths");
        assert!(paths.len() > 20);
        for path in paths.keys() {
            assert!(
                super::router_may_serve(path),
                "{path} is served by the router but not under ROUTER_PREFIXES"
            );
        }
    }

    #[test]
    fn router_prefixes_match_whole_segments() {
        assert!(super::router_may_serve("/api"));
        assert!(super::router_may_serve("/api/v1/me"));
        assert!(super::router_may_serve("/healthz"));
        assert!(super::router_may_serve("/.well-known/jwks.json"));
        assert!(!super::router_may_serve("/apix"));
        assert!(!super::router_may_serve("/v1/clusters"));
        assert!(!super::router_may_serve("/API/v1/me"));
        assert!(!super::router_may_serve("//api/v1/me"));
        assert!(!super::router_may_serve("/"));
    }
}
