//! Operations endpoints: liveness, readiness, Prometheus metrics, the
//! OpenAPI document, and the fallbacks.

use std::any::Any;

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::Serialize;
use serde_json::json;
use utoipa::{
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    Modify, OpenApi, ToSchema,
};

use super::{ApiError, AppState};
use crate::storage::pg;

/// An RFC 9457 problem, as every error is answered.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// URI naming the problem type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary (the HTTP reason).
    pub title: String,
    /// HTTP status.
    pub status: u16,
    /// Stable machine-readable code.
    pub code: String,
    /// Human-readable detail.
    pub detail: String,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "Alive", body = String)))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: Redis and PostgreSQL both answer.
#[utoipa::path(get, path = "/readyz", responses(
    (status = 200, description = "Ready: `{\"postgres\":\"ok\",\"redis\":\"ok\"}`", body = Object),
    (status = 503, description = "A store is unreachable", body = Problem, content_type = "application/problem+json"),
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

/// The OpenAPI document.
#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "OpenAPI 3.1 document", body = Object)))]
pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// 404 for unknown routes.
pub async fn not_found() -> ApiError {
    ApiError::NotFound {
        code: "not_found",
        detail: "no such route".into(),
    }
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

struct Auth;

impl Modify for Auth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The admin token (FIRSTCOME_ADMIN_TOKEN)"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "user",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A user JWT (HS256, RS256 or ES256; `exp` required; the user is `sub`). \
                         Required when the service has a JWT key; without one the user id of \
                         the request is trusted.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The OpenAPI document of the v1 API.
#[derive(OpenApi)]
#[openapi(
    info(title = "firstcome", description = "First-come admission of a limited stock under a rush."),
    paths(
        super::campaigns::create,
        super::campaigns::get,
        super::campaigns::grants,
        super::claims::claim,
        super::claims::status,
        super::claims::cancel,
        super::claims::events,
        super::claims::confirm,
        healthz,
        readyz,
        metrics,
        openapi,
    ),
    components(schemas(Problem)),
    modifiers(&Auth)
)]
pub struct ApiDoc;
