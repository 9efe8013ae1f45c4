//! The OpenAPI 3.1 document, generated from the handlers' annotations: every endpoint, the
//! scope it requires (as the scopes of its `bearer` security requirement and the
//! `x-datastack-scope` header) and its error responses.

use std::sync::OnceLock;

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::api;

#[derive(OpenApi)]
#[openapi(
    info(title = "datastack", description = "The access and security layer of a data-platform API."),
    paths(
        api::health::healthz, api::health::readyz, api::health::metrics, api::health::openapi,
        api::me::get_me,
        api::tokens::create_token, api::tokens::list_tokens, api::tokens::revoke_token,
        api::api_keys::create_key, api::api_keys::list_keys, api::api_keys::get_key,
        api::api_keys::update_key, api::api_keys::revoke_key, api::api_keys::rotate_key,
        api::api_keys::key_usage, api::api_keys::verify_key,
        api::principals::list_users, api::principals::create_user, api::principals::get_user,
        api::principals::update_user, api::principals::suspend_user, api::principals::activate_user,
        api::principals::delete_user,
        api::principals::list_service_principals, api::principals::create_service_principal,
        api::principals::get_service_principal, api::principals::update_service_principal,
        api::principals::suspend_service_principal, api::principals::activate_service_principal,
        api::principals::delete_service_principal,
        api::workspaces::list_workspaces, api::workspaces::get_workspace,
        api::workspaces::create_workspace, api::workspaces::update_workspace,
        api::workspaces::suspend_workspace, api::workspaces::activate_workspace,
        api::audit::query_events, api::audit::export, api::audit::verify,
        api::audit::security_events,
        api::access_review::review, api::access_review::bulk_revoke,
        api::access_review::bulk_narrow,
        api::gateway::list_routes, api::gateway::create_route, api::gateway::get_route,
        api::gateway::replace_route, api::gateway::delete_route, api::gateway::verify,
        api::gateway::jwks,
        api::ip_lists::list, api::ip_lists::create, api::ip_lists::get_one, api::ip_lists::update,
        api::ip_lists::replace, api::ip_lists::remove,
        api::abuse::list, api::abuse::clear,
    ),
    modifiers(&BearerScheme)
)]
struct ApiDoc;

struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A datastack credential (a dapi… token or a dkey… API key). Send the scope the call acts with in x-datastack-scope.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document, serialized once.
pub fn document_json() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        ApiDoc::openapi()
            .to_json()
            .unwrap_or_else(|e| format!(r#"{{"error":"cannot render the OpenAPI document: {e}"}}"#))
    })
}
