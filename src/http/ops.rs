//! Operations endpoints: liveness, readiness, Prometheus metrics, and the
//! fallbacks (404, 405, panic) every router shares.
//!
//! Nothing here knows the /v1 resources: a worker-only process serves
//! [`router`] alone. The OpenAPI document lives in `openapi`.

use std::any::Any;

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde_json::json;

use super::{
    error::{ApiError, Problem, PROBLEM_JSON},
    AppState,
};
use crate::storage::pg;

/// `/healthz`, `/readyz` and `/metrics`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "Alive", body = String)))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: Redis and PostgreSQL both answer.
#[utoipa::path(get, path = "/readyz", responses(
    (status = 200, description = "Ready: `{\"postgres\":\"ok\",\"redis\":\"ok\"}`", body = Object),
    (status = 503, description = "A store is unreachable", body = Problem, content_type = PROBLEM_JSON),
))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let (p, r) = tokio::join!(pg::ping(&state.db), state.redis.ping());
    p?;
    r?;
    Ok(Json(json!({"postgres": "ok", "redis": "ok"})))
}

/// Prometheus metrics in the text format.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text", body = String, content_type = "text/plain")))]
pub async fn metrics() -> Response {
    let body = crate::telemetry::render_metrics();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// 404 for unknown routes.
pub async fn not_found() -> ApiError {
    ApiError::not_found("not_found", "no such route")
}

/// 405 for a known route with the wrong method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::Invalid {
        status: StatusCode::METHOD_NOT_ALLOWED,
        code: "method_not_allowed",
        detail: "method not allowed on this route".into(),
    }
}

/// A panic in a handler becomes a 500 problem, not a dropped connection.
pub fn panic_response(_: Box<dyn Any + Send + 'static>) -> Response {
    ApiError::Internal("handler panicked".into()).into_response()
}
