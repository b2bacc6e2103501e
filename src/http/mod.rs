//! The HTTP API of DESIGN.md: routing, shared state, extractors.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use axum::{
    extract::{DefaultBodyLimit, FromRequest, MatchedPath, Request},
    http::{header, HeaderMap},
    middleware::{self, Next},
    response::Response,
    routing::{get, post},
    Router,
};
use sqlx::PgPool;

use crate::{
    domain::{Campaign, CampaignId},
    modes::Admissions,
    storage::{pg, redis::RedisStore},
};

pub mod auth;
pub mod campaigns;
pub mod claims;
pub mod error;
pub mod ops;

pub use error::ApiError;

/// Largest accepted request body. Claims are tiny; a campaign with 256
/// pools fits comfortably.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Everything handlers share.
#[derive(Clone)]
pub struct AppState {
    /// Source of truth.
    pub db: PgPool,
    /// Redis.
    pub redis: RedisStore,
    /// The admission modes.
    pub admissions: Arc<Admissions>,
    /// Bearer token of admin calls.
    pub admin_token: Arc<str>,
    /// Campaigns are immutable once created, so they are cached forever:
    /// a claim never reads PostgreSQL to find its campaign.
    pub campaigns: Arc<RwLock<HashMap<CampaignId, Arc<Campaign>>>>,
    /// Longest an SSE stream stays open.
    pub sse_max: Duration,
    /// Wakes this process' worker when a campaign is created.
    pub worker_wakeup: Arc<tokio::sync::Notify>,
    /// Verifier of user JWTs; `None` trusts the user id of the request.
    pub jwt: Option<Arc<auth::JwtVerifier>>,
    /// Rate limits per user and per client IP.
    pub limits: auth::RateLimits,
}

impl AppState {
    /// The campaign, from the cache or PostgreSQL; 404 if unknown.
    pub async fn campaign(&self, raw_id: &str) -> Result<Arc<Campaign>, ApiError> {
        let id = raw_id
            .parse::<i64>()
            .map(CampaignId)
            .map_err(|_| ApiError::campaign_not_found())?;
        if let Some(c) = self.campaigns.read().expect("cache lock").get(&id) {
            return Ok(c.clone());
        }
        let c = Arc::new(
            pg::load_campaign(&self.db, id)
                .await?
                .ok_or_else(ApiError::campaign_not_found)?,
        );
        self.campaigns
            .write()
            .expect("cache lock")
            .insert(id, c.clone());
        Ok(c)
    }

    /// Checks the admin bearer token, in constant time.
    pub fn require_admin(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(ApiError::Unauthorized)?;
        if constant_time_eq(given.as_bytes(), self.admin_token.as_bytes()) {
            Ok(())
        } else {
            Err(ApiError::Unauthorized)
        }
    }
}

/// Compares in time independent of where the bytes differ (only the
/// length may show), so the admin token cannot be guessed byte by byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

/// `Json<T>` whose rejections are problem+json with a stable code.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    axum::Json<T>: FromRequest<S, Rejection = axum::extract::rejection::JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        axum::Json::<T>::from_request(req, state)
            .await
            .map(|axum::Json(v)| ApiJson(v))
            .map_err(ApiError::from)
    }
}

/// The application's routes.
pub fn router(state: AppState) -> Router {
    // The per-IP limit guards the API, not the probes of an orchestrator.
    let api = Router::new()
        .route("/v1/campaigns", post(campaigns::create))
        .route("/v1/campaigns/{id}", get(campaigns::get))
        .route("/v1/campaigns/{id}/grants", get(campaigns::grants))
        .route("/v1/campaigns/{id}/claims", post(claims::claim))
        .route(
            "/v1/campaigns/{id}/claims/{user_id}",
            get(claims::status).delete(claims::cancel),
        )
        .route(
            "/v1/campaigns/{id}/claims/{user_id}/events",
            get(claims::events),
        )
        .route(
            "/v1/campaigns/{id}/claims/{user_id}/confirm",
            post(claims::confirm),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::limit_ip,
        ));
    Router::new()
        .merge(api)
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi))
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .route_layer(middleware::from_fn(track))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            ops::panic_response,
        ))
        .with_state(state)
}

/// The routes of a worker-only process: health, readiness, metrics.
pub fn ops_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .fallback(ops::not_found)
        .with_state(state)
}

/// Records the request latency histogram and count per route and status.
async fn track(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::histogram!(
        "firstcome_http_request_duration_seconds",
        "method" => method, "route" => route, "status" => status
    )
    .record(start.elapsed().as_secs_f64());
    resp
}
