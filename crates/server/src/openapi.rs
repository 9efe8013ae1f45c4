//! The OpenAPI 3.1 document, generated from the handlers' annotations: every endpoint, the
//! scope it requires (as the scopes of its `bearer` security requirement and the default of
//! its `x-datastack-scope` header) and its error responses.
//!
//! The API's operations come from the same `routes!` calls that register the handlers
//! with the router (`crate::api::routes`), so the document lists exactly what the router
//! serves. Forward-auth (`/auth/verify`, which answers every method, also as
//! `/auth/verify/{path}`) is routed outside the API and documented here, one operation per
//! method so that every operation id is unique.

use std::sync::OnceLock;

use utoipa::openapi::path::{Operation, ParameterBuilder, ParameterIn, PathItem};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ObjectBuilder, Required, Type};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;

use crate::api;
use crate::pipeline::authorize::SCOPE_HEADER;
use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "datastack", description = "The access and security layer of a data-platform API."),
    paths(api::gateway::verify),
    components(schemas(JwkSet, Jwk)),
    modifiers(&BearerScheme)
)]
struct ApiDoc;

/// The key set at `/.well-known/jwks.json` (RFC 7517): the Ed25519 public key that signs
/// `x-datastack-assertion`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct JwkSet {
    /// The keys (one).
    keys: Vec<Jwk>,
}

/// One public key (RFC 8037 `OKP`).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Jwk {
    /// `OKP`.
    kty: String,
    /// `Ed25519`.
    crv: String,
    /// The public key, base64url.
    x: String,
    /// The key id, the `kid` of the assertions it signs.
    kid: String,
    /// `EdDSA`.
    alg: String,
    /// `sig`.
    #[schema(rename = "use")]
    use_: String,
}

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

/// The methods forward-auth answers besides `GET`, with the suffix of their operation ids.
const FORWARD_AUTH_METHODS: [(&str, &str); 6] = [
    ("post", "Post"),
    ("put", "Put"),
    ("patch", "Patch"),
    ("delete", "Delete"),
    ("head", "Head"),
    ("options", "Options"),
];

/// Sets `method`'s operation of `item`.
fn set_operation(item: &mut PathItem, method: &str, op: Operation) {
    match method {
        "get" => item.get = Some(op),
        "post" => item.post = Some(op),
        "put" => item.put = Some(op),
        "patch" => item.patch = Some(op),
        "delete" => item.delete = Some(op),
        "head" => item.head = Some(op),
        _ => item.options = Some(op),
    }
}

/// Documents forward-auth for every method it answers, at `/auth/verify` and
/// `/auth/verify/{path}` (the original path in the URL, for proxies that send it so).
fn forward_auth_operations(doc: &mut utoipa::openapi::OpenApi) {
    let Some(get) = doc
        .paths
        .paths
        .get("/auth/verify")
        .and_then(|item| item.get.clone())
    else {
        return;
    };
    let mut with_path = get.clone();
    with_path.parameters.get_or_insert_with(Vec::new).insert(
        0,
        ParameterBuilder::new()
            .name("path")
            .parameter_in(ParameterIn::Path)
            .required(Required::True)
            .description(Some(
                "the original request's path, when the proxy puts it in the URL instead of a header",
            ))
            .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
            .build(),
    );
    for (path, base, id) in [
        ("/auth/verify", &get, "forwardAuthVerify"),
        ("/auth/verify/{path}", &with_path, "forwardAuthVerifyPath"),
    ] {
        let item = doc.paths.paths.entry(path.to_owned()).or_default();
        let mut op = base.clone();
        op.operation_id = Some(id.to_owned());
        set_operation(item, "get", op);
        for (method, suffix) in FORWARD_AUTH_METHODS {
            let mut op = base.clone();
            op.operation_id = Some(format!("{id}{suffix}"));
            set_operation(item, method, op);
        }
    }
}

/// Gives every `x-datastack-scope` header its operation's required scope (written as the
/// parameter's description in the annotations) as its default, so that a generated client
/// sends it without the caller spelling it.
fn scope_header_defaults(doc: &mut utoipa::openapi::OpenApi) {
    for item in doc.paths.paths.values_mut() {
        for op in [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
        {
            for param in op.parameters.iter_mut().flatten() {
                if param.name != SCOPE_HEADER || param.parameter_in != ParameterIn::Header {
                    continue;
                }
                let Some(scope) = param.description.clone() else {
                    continue;
                };
                param.required = Required::True;
                param.description = Some(format!(
                    "The scope this call acts with: `{scope}`, or one that covers it (`manage:…` covers `read:…` of the same resource; `all-apis` covers every API scope). It must be granted to the credential."
                ));
                param.schema = Some(
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .default(Some(serde_json::Value::from(scope.clone())))
                        .examples([serde_json::Value::from(scope)])
                        .into(),
                );
            }
        }
    }
}

/// The whole document: the API's operations as the router registers them, forward-auth,
/// and the scope defaults.
pub fn document() -> utoipa::openapi::OpenApi {
    let (_, mut doc) = OpenApiRouter::<AppState>::with_openapi(ApiDoc::openapi())
        .merge(api::routes())
        .split_for_parts();
    forward_auth_operations(&mut doc);
    scope_header_defaults(&mut doc);
    doc
}

/// The document, serialized once.
pub fn document_json() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        document()
            .to_json()
            .unwrap_or_else(|e| format!(r#"{{"error":"cannot render the OpenAPI document: {e}"}}"#))
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_operation_id_is_unique() {
        let doc: serde_json::Value =
            serde_json::from_str(super::document_json()).expect("the document parses");
        let mut seen = std::collections::BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("item") {
                let Some(id) = op["operationId"].as_str() else {
                    continue;
                };
                assert!(seen.insert(id.to_owned()), "{id} twice ({method} {path})");
            }
        }
        assert!(seen.contains("forwardAuthVerifyPathDelete"));
        assert!(seen.contains("verifyAuditChain"));
    }
}
