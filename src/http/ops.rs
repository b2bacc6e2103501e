//! Operations endpoints: liveness, readiness, Prometheus metrics, and the
//! fallbacks (404, 405, panic) every router shares.
//!
//! Nothing here knows the /v1 resources: a worker-only process serves
//! [`router`] alone. The OpenAPI document lives in `openapi`.

use std::{any::Any, sync::Arc, time::Duration};

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

/// `/healthz`, `/readyz` and `/metrics`.
pub fn router() -> Router<AppState> {
    health_router()
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

/// `/healthz` alone: what the public listener keeps when the others moved
/// to `--ops-addr`.
pub fn health_router() -> Router<AppState> {
    Router::new().route("/healthz", get(healthz))
}

/// How long a readiness answer is reused: a probe (or a flood of them)
/// costs at most one PostgreSQL connection and one Redis PING per period.
pub const READY_TTL: Duration = Duration::from_secs(1);

/// The last readiness answer and when it was checked: `None` for ready,
/// else the 503's code and detail (fixed texts, see `error`).
type ReadyAnswer = Option<(&'static str, String)>;

/// The readiness check's cache; concurrent probes wait for the check in
/// progress rather than start their own.
#[derive(Clone, Default)]
pub struct Readiness(Arc<tokio::sync::Mutex<Option<(tokio::time::Instant, ReadyAnswer)>>>);

impl Readiness {
    /// The answer, checked at most once per [`READY_TTL`].
    async fn check(&self, state: &AppState) -> Result<(), ApiError> {
        let mut slot = self.0.lock().await;
        let answer = match slot.as_ref() {
            Some((at, a)) if at.elapsed() < READY_TTL => a.clone(),
            _ => {
                metrics::counter!("firstcome_ready_checks_total").increment(1);
                let (p, r) = tokio::join!(state.db.ping(), state.redis.ping());
                let a = match p.map_err(ApiError::from).and(r.map_err(ApiError::from)) {
                    Ok(()) => None,
                    Err(ApiError::Unavailable { code, detail }) => Some((code, detail)),
                    // Not a store being down (a bug): answered, not kept.
                    Err(e) => return Err(e),
                };
                *slot = Some((tokio::time::Instant::now(), a.clone()));
                a
            }
        };
        match answer {
            None => Ok(()),
            Some((code, detail)) => Err(ApiError::unavailable(code, detail)),
        }
    }
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "Alive", body = String)))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: Redis and the database (PostgreSQL or MySQL) both answer
/// (checked at most once a second, see [`READY_TTL`]).
#[utoipa::path(get, path = "/readyz", responses(
    (status = 200, description = "Ready: `{\"postgres\":\"ok\",\"redis\":\"ok\"}` (`mysql` in place of `postgres` on MySQL/MariaDB)", body = Object),
    (status = 503, description = "A store is unreachable", body = Problem, content_type = PROBLEM_JSON),
))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    state.readiness.check(&state).await?;
    Ok(Json(json!({state.db.kind(): "ok", "redis": "ok"})))
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
