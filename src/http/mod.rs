//! The HTTP API (the contract in docs/ARCHITECTURE.md): the shared state of handlers, the JSON body
//! extractor, and the assembly of the routers.
//!
//! Each resource module owns its routes (`campaigns::router()`,
//! `claims::router()`, `ops::router()`, `openapi::router()`); this module
//! only merges them and adds the layers every route shares. Errors live in
//! `error`, identity in `auth`, rate limits in `limits`. Nothing here knows
//! the command line.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use axum::{
    extract::{DefaultBodyLimit, FromRequest, MatchedPath, Request, State},
    http::Method,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    Router,
};

use crate::{
    domain::{Campaign, CampaignId},
    modes::Admissions,
    storage::{redis::RedisStore, Store},
};

pub mod admin;
pub mod answers;
pub mod auth;
pub mod campaign_cache;
pub mod campaigns;
pub mod claims;
pub mod draws;
pub mod error;
pub mod fanout;
pub mod limits;
pub mod openapi;
pub mod operator;
pub mod ops;
pub mod pages;
pub mod progress;
pub mod responses;
pub mod serve;
pub mod streams;
pub mod webhooks;

pub use error::ApiError;

/// This process' copies of published campaigns, each with when it was
/// loaded.
pub type CampaignCopies = Arc<RwLock<HashMap<CampaignId, (Instant, Arc<Campaign>)>>>;

/// How long a process keeps its copy of a campaign before reading it
/// again: another process' operator change (window, stock) reaches its
/// cheap checks (the window before a store is asked) within this.
pub const CAMPAIGN_TTL: Duration = Duration::from_secs(1);

/// Largest accepted request body. Claims are tiny; a campaign with 256
/// pools fits comfortably.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Everything handlers share, behind one `Arc`: axum clones the state for
/// every extractor and middleware of every request, and this struct of
/// twenty-odd fields, cloned field by field, was about 8 % of the service's
/// instructions per claim (its clone and drop, before counting the copies;
/// callgrind, docs/BENCHMARKS.md); one reference count is not.
#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

impl AppState {
    /// The shared state of `inner`.
    pub fn new(inner: AppInner) -> Self {
        Self(Arc::new(inner))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppInner;

    fn deref(&self) -> &AppInner {
        &self.0
    }
}

/// What [`AppState`] shares.
pub struct AppInner {
    /// Source of truth.
    pub db: Store,
    /// Redis.
    pub redis: RedisStore,
    /// The admission modes.
    pub admissions: Arc<Admissions>,
    /// SHA-256 of the bearer token of admin calls: the token itself is not
    /// kept, and comparing digests hides its length (`auth::AdminToken`).
    pub admin_token_digest: [u8; 32],
    /// SHA-256 of the payment service's bearer token, which may confirm
    /// holds and nothing else; `None` leaves confirming to the admin.
    pub confirm_token_digest: Option<[u8; 32]>,
    /// Published campaigns, each with when it was loaded: a claim reads
    /// PostgreSQL for its campaign at most once per [`CAMPAIGN_TTL`]. An
    /// operator may change a campaign (pause, window, stock), so a copy is
    /// kept only that long; the decisions that must be exact are taken in
    /// the stores, never on this copy. Unpublished ones are not cached
    /// (they may be published by another process).
    pub campaigns: CampaignCopies,
    /// Reads of a campaign not in `campaigns` yet: one at a time per id, so
    /// a rush's first instant reads it once, not once per connection.
    pub campaign_loads: crate::flights::Flights<CampaignId>,
    /// Longest an SSE stream stays open.
    pub sse_max: Duration,
    /// True once shutdown started: event streams end.
    pub closing: tokio::sync::watch::Receiver<bool>,
    /// Open SSE streams, capped in total, per user and per address.
    pub streams: Arc<streams::StreamSlots>,
    /// Wakes this process' worker when a campaign is created.
    pub worker_wakeup: Arc<tokio::sync::Notify>,
    /// Verifier of user JWTs; `None` trusts the user id of the request.
    pub jwt: Option<Arc<auth::JwtVerifier>>,
    /// Rate limits per user and per client IP.
    pub limits: limits::RateLimits,
    /// Longest a request may take (SSE streams excluded).
    pub request_timeout: Duration,
    /// Answers of `GET /v1/campaigns/{id}`, kept about a second.
    pub campaign_bodies: campaign_cache::BodyCache,
    /// The header a trusted proxy writes the client address into
    /// (`--behind-proxy`); `None` keys per-address limits by the TCP peer.
    pub proxy_header: Option<axum::http::HeaderName>,
    /// Whether `/metrics`, `/readyz` and `/openapi.json` have a listener of
    /// their own (`--ops-addr`), and so leave the public router.
    pub ops_apart: bool,
    /// The last readiness answer, reused for about a second.
    pub readiness: ops::Readiness,
    /// Queue progress per campaign (positions and waits), read at most
    /// once a second.
    pub progress: progress::QueueProgress,
    /// One watcher per campaign that wakes its event streams on a change.
    pub fanout: fanout::Fanout,
    /// Hosts a campaign's webhook may name (`--webhook-allow`); empty: any.
    pub webhook_allow: Arc<crate::domain::WebhookAllow>,
}

impl AppState {
    /// The campaign as the public sees it, from the cache or PostgreSQL:
    /// 404 if unknown or unpublished (the same answer after the same one
    /// query: an unpublished campaign is never cached, like an unknown id).
    pub async fn campaign(&self, raw_id: &str) -> Result<Arc<Campaign>, ApiError> {
        self.campaign_as(raw_id, false).await
    }

    /// The campaign, published or not, for the admin.
    pub async fn campaign_for_admin(&self, raw_id: &str) -> Result<Arc<Campaign>, ApiError> {
        self.campaign_as(raw_id, true).await
    }

    /// The campaign; an unpublished one only for `admin`.
    async fn campaign_as(&self, raw_id: &str, admin: bool) -> Result<Arc<Campaign>, ApiError> {
        let id = raw_id
            .parse::<i64>()
            .map(CampaignId)
            .map_err(|_| ApiError::campaign_not_found())?;
        let mut waited = false;
        loop {
            if let Some((at, c)) = self.campaigns.read().expect("cache lock").get(&id) {
                if at.elapsed() < CAMPAIGN_TTL {
                    return Ok(c.clone());
                }
            }
            if let Some(c) = self.refresh_campaign(id) {
                return Ok(c);
            }
            if waited {
                // The read waited for cached nothing (an unknown or
                // unpublished campaign, or a failed read): read on our own
                // rather than queue behind each other.
                return self.load_campaign(id, admin).await;
            }
            // Not cached: the callers of the same instant share one read.
            match self
                .campaign_loads
                .run(id, self.load_campaign(id, admin))
                .await
            {
                Some(r) => return r,
                None => waited = true,
            }
        }
    }

    /// Reads campaign `id` from the database and caches it if published.
    async fn load_campaign(&self, id: CampaignId, admin: bool) -> Result<Arc<Campaign>, ApiError> {
        let c = Arc::new(
            self.db
                .load_campaign_seen_by(id, admin)
                .await?
                .ok_or_else(ApiError::campaign_not_found)?,
        );
        // Published is final (there is no unpublish), so only a published
        // campaign is cached: one published since is seen at its next call.
        if c.published {
            self.campaigns
                .write()
                .expect("cache lock")
                .insert(id, (Instant::now(), c.clone()));
        }
        Ok(c)
    }

    /// A stale copy of `id`, served while one spawned task reads it again
    /// (stale-while-revalidate); `None` when there is no copy.
    ///
    /// Why: re-reading inline made every claim that arrived in the same
    /// instant after the TTL run its own query (a herd of PostgreSQL reads
    /// per campaign per second, measured as a ~20 % loss of claims/s by
    /// `scripts/ab.sh`). The copy only serves the cheap checks; every exact
    /// decision is taken in the stores. The refresh puts its result back
    /// only if the entry is still the one it marked, so a copy forgotten by
    /// an operator change meanwhile is not overwritten by an older read.
    fn refresh_campaign(&self, id: CampaignId) -> Option<Arc<Campaign>> {
        let marker = Instant::now();
        let stale = {
            let mut copies = self.campaigns.write().expect("cache lock");
            let (at, c) = copies.get_mut(&id)?;
            if at.elapsed() < CAMPAIGN_TTL {
                // Another caller already started the refresh.
                return Some(c.clone());
            }
            *at = marker;
            c.clone()
        };
        let (db, copies) = (self.db.clone(), self.campaigns.clone());
        tokio::spawn(async move {
            match db.load_campaign_seen_by(id, true).await {
                Ok(Some(fresh)) => {
                    let mut copies = copies.write().expect("cache lock");
                    if copies.get(&id).is_some_and(|(at, _)| *at == marker) {
                        copies.insert(id, (Instant::now(), Arc::new(fresh)));
                    }
                }
                // Kept stale: the next caller after a TTL tries again.
                Ok(None) => {}
                Err(e) => tracing::warn!(campaign = id.0, error = %e, "campaign refresh failed"),
            }
        });
        Some(stale)
    }

    /// Forgets this process' copies of campaign `id` (an operator just
    /// changed it here): the next call reads PostgreSQL.
    pub fn forget_campaign(&self, id: CampaignId) {
        self.campaigns.write().expect("cache lock").remove(&id);
        self.campaign_bodies.forget(id.0);
    }
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

/// The routes of the public listener: the API, `/healthz`, and, unless
/// they have a listener of their own, `/readyz`, `/metrics` and
/// `/openapi.json`.
pub fn router(state: AppState) -> Router {
    // The per-IP limit guards the API, not the probes of an orchestrator.
    let api = campaigns::router()
        .merge(claims::router())
        .merge(draws::router())
        .merge(webhooks::router())
        .merge(operator::router())
        .merge(pages::router())
        .merge(admin::router())
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            limits::limit_ip,
        ));
    let ops = if state.ops_apart {
        ops::health_router()
    } else {
        ops::router().merge(openapi::router())
    };
    finish(Router::new().merge(api).merge(ops), state)
}

/// The routes of a worker-only process: health, readiness, metrics (only
/// health when they have a listener of their own).
pub fn worker_router(state: AppState) -> Router {
    let ops = if state.ops_apart {
        ops::health_router()
    } else {
        ops::router()
    };
    finish(ops, state)
}

/// The routes of the `--ops-addr` listener: health, readiness, metrics and
/// the OpenAPI document, for operators and scrapers only.
pub fn ops_router(state: AppState) -> Router {
    finish(ops::router().merge(openapi::router()), state)
}

/// The fallbacks and layers every listener shares.
fn finish(routes: Router<AppState>, state: AppState) -> Router {
    routes
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .route_layer(middleware::from_fn_with_state(state.clone(), timeout))
        .route_layer(middleware::from_fn(track))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            ops::panic_response,
        ))
        .with_state(state)
}

/// The route of the SSE stream, which ends at `sse_max` rather than at the
/// request timeout.
const EVENTS_ROUTE: &str = "/v1/campaigns/{id}/claims/{user_id}/events";

/// Middleware: a request (body read included) that takes longer than
/// `request_timeout` is dropped and answered 503 `request_timeout`, so a
/// slow client or a stuck store cannot hold a task forever. Dropping a
/// handler is what a client disconnect does already: the modes settle
/// abandoned work (e.g. gate's orphan sweeper).
async fn timeout(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let stream = req
        .extensions()
        .get::<MatchedPath>()
        .is_some_and(|p| p.as_str() == EVENTS_ROUTE);
    if stream {
        return next.run(req).await;
    }
    match tokio::time::timeout(state.request_timeout, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::unavailable("request_timeout", "the request took too long; retry")
            .into_response(),
    }
}

/// The `method` label of a request: the standard methods by name, anything
/// else `other`, so a client cannot create series by inventing methods.
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// Records the request latency histogram and count per route and status.
async fn track(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = method_label(req.method());
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::histogram!(
        "firstcome_http_request_duration_seconds",
        "method" => method, "route" => route, "status" => status
    )
    .record(start.elapsed().as_secs_f64());
    resp
}
