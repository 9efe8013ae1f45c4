//! Health, readiness, metrics and the OpenAPI document.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
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

/// The content type of the Prometheus text format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The content type of the OpenMetrics text format.
const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether `accept` prefers OpenMetrics: it names `application/openmetrics-text` with a
/// weight above 0 and at least that of `text/plain` (Prometheus asks for OpenMetrics
/// first; `curl` and the classic scrapers get the Prometheus text format).
fn prefers_openmetrics(accept: &str) -> bool {
    let (mut openmetrics, mut text) = (0.0_f32, 0.0_f32);
    for range in accept.split(',') {
        let mut params = range.split(';').map(str::trim);
        let media = params.next().unwrap_or_default();
        let weight = params
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
            .and_then(|(_, v)| v.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        if media.eq_ignore_ascii_case("application/openmetrics-text") {
            openmetrics = openmetrics.max(weight);
        } else if media.eq_ignore_ascii_case("text/plain") {
            text = text.max(weight);
        }
    }
    openmetrics > 0.0 && openmetrics >= text
}

/// The metrics: Prometheus text format 0.0.4, or OpenMetrics 1.0 when the scraper's
/// `Accept` prefers it.
#[utoipa::path(get, operation_id = "getMetrics", path = "/metrics", tag = "health",
    params(("accept" = Option<String>, Header,
        description = "`application/openmetrics-text` (with a weight at least that of `text/plain`) for OpenMetrics 1.0; otherwise the Prometheus text format 0.0.4")),
    responses((status = 200, description = "the metrics", content(
        (String = "text/plain; version=0.0.4"),
        (String = "application/openmetrics-text; version=1.0.0")))))]
pub async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(prefers_openmetrics);
    let (content_type, body) = if openmetrics {
        (OPENMETRICS_TEXT, state.metrics.render())
    } else {
        (PROMETHEUS_TEXT, state.metrics.render_prometheus())
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::VARY, "accept"),
        ],
        body,
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

#[cfg(test)]
mod tests {
    use super::prefers_openmetrics;

    #[test]
    fn accept_chooses_the_format() {
        // Prometheus 2.x/3.x's scrape header.
        assert!(prefers_openmetrics(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        ));
        assert!(!prefers_openmetrics("*/*"));
        assert!(!prefers_openmetrics("text/plain;version=0.0.4"));
        assert!(!prefers_openmetrics(
            "text/plain;version=0.0.4;q=1,application/openmetrics-text;q=0.5"
        ));
        assert!(!prefers_openmetrics("application/openmetrics-text;q=0"));
        assert!(prefers_openmetrics("Application/OpenMetrics-Text; Q=0.9"));
    }
}
