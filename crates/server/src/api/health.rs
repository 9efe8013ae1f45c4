//! Health, readiness, metrics and the OpenAPI document.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::pipeline::extract::Json;
use crate::state::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(openapi))
}

/// The liveness answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: &'static str,
}

/// The readiness answer, with the state of each dependency.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `not_ready`.
    pub status: &'static str,
    /// Each dependency: `ok` or what is wrong.
    pub checks: Checks,
}

/// The dependencies readiness checks.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Checks {
    /// The store.
    pub database: String,
    /// Where rate-limit counters live: `local` (one node), `redis` (shared by the
    /// cluster) or `local (redis unreachable)` (cluster mode, falling back; the node stays
    /// ready and enforces limits on its own).
    pub rate_limits: String,
}

/// Answers 200 while the process serves.
#[utoipa::path(get, operation_id = "getHealth", path = "/healthz", tag = "health", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Answers 200 when the store answers, 503 otherwise.
#[utoipa::path(get, operation_id = "getReadiness", path = "/readyz", tag = "health", responses(
    (status = 200, body = Readiness), (status = 503, body = Readiness)))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let ping = tokio::time::timeout(std::time::Duration::from_secs(2), state.store.ping()).await;
    let (status, database) = match ping {
        Ok(Ok(())) => (StatusCode::OK, "ok".to_owned()),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: the store does not answer");
            (StatusCode::SERVICE_UNAVAILABLE, "unreachable".to_owned())
        }
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "timed out".to_owned()),
    };
    let body = Readiness {
        status: if status == StatusCode::OK {
            "ready"
        } else {
            "not_ready"
        },
        checks: Checks {
            database,
            rate_limits: state.edge.limiter.backend().to_owned(),
        },
    };
    (status, Json(body)).into_response()
}

/// Prometheus metrics in text format.
#[utoipa::path(get, operation_id = "getMetrics", path = "/metrics", tag = "health", responses((status = 200, content_type = "text/plain", body = String)))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// This document.
#[utoipa::path(get, operation_id = "getOpenApiDocument", path = "/openapi.json", tag = "health", responses((status = 200, content_type = "application/json", body = Object)))]
pub async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::document_json(),
    )
        .into_response()
}
