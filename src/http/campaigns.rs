//! Campaign endpoints: create (admin), read (anyone), grants export
//! (admin), and their routes.
//!
//! Handlers take their errors from `error`, their documented refusals from
//! `responses` and their identity checks from `auth`; they never import
//! another resource's module or the OpenAPI document (the operator calls,
//! `operator.rs`, answer with this module's campaign body).

use std::time::Duration;

use axum::{
    extract::{Path, Query, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::{self, post},
    Json, Router,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{
    auth::{is_admin, Actor, AdminToken},
    campaign_cache::Cached,
    error::{ApiError, Problem, PROBLEM_JSON},
    responses::{AdminErrors, CampaignErrors, IpLimitErrors, JsonBodyErrors, StoreErrors},
    ApiJson, AppState,
};
use crate::{
    domain::{Campaign, Mode, NewCampaign, RawCampaign, Webhook},
    storage::pg::GrantRow,
};

/// The campaign routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/campaigns", post(create))
        .route("/v1/campaigns/{id}", routing::get(get))
        .route("/v1/campaigns/{id}/grants", routing::get(grants))
        .route("/v1/campaigns/{id}/publish", post(publish))
}

/// Body of `POST /v1/campaigns`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCampaign {
    /// Free-text name, 1..=200 characters, no control characters.
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    /// `db-lock`, `db-atomic`, `redis-lua`, `gate` (default) or `redis-queue`.
    #[serde(default)]
    #[schema(value_type = Option<Mode>)]
    pub mode: Option<String>,
    /// 1..=256 pools.
    #[schema(min_items = 1, max_items = 256)]
    pub pools: Vec<PoolSpec>,
    /// Active grants per user; only 1 is supported.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1)]
    pub per_user_limit: Option<i64>,
    /// Claims before this are refused with `not_open`. From 2000-01-01 to
    /// 100 years ahead.
    #[serde(default)]
    pub opens_at: Option<DateTime<Utc>>,
    /// Claims from this on are refused with `closed`. After `opens_at`,
    /// from 2000-01-01 to 400 days ahead.
    #[serde(default)]
    pub closes_at: Option<DateTime<Utc>>,
    /// Seconds after closing during which cancellation stays possible
    /// (default 7200, at most 30 days).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 2592000)]
    pub hold_secs: Option<i64>,
    /// When set, grants are held until `POST .../claims/{user_id}/confirm`
    /// and expire (slot back to stock) this many seconds after they were made.
    #[serde(default)]
    pub confirm_within_secs: Option<i64>,
    /// Redis shards each pool's stock is spread over (default 1; gate and
    /// redis-lua only). Worth it only on a Redis Cluster, for a campaign
    /// whose claims one node's thread cannot serve; it never undersells
    /// (docs/ARCHITECTURE.md, "Shards").
    #[serde(default)]
    #[schema(minimum = 1, maximum = 64)]
    pub shards: Option<i64>,
    /// `false` keeps the campaign hidden (404 `campaign_not_found` to all
    /// but the admin, like an unknown id) until
    /// `POST /v1/campaigns/{id}/publish`. Default `true`.
    #[serde(default)]
    pub published: Option<bool>,
    /// Fair start (redis-queue, with `opens_at`): claims up to this many
    /// seconds before `opens_at` are queued (202, `position` null) and
    /// admitted at opening in an order drawn from `draw_seed`; later
    /// claims queue behind them (docs/ARCHITECTURE.md, "Fair start").
    #[serde(default)]
    #[schema(minimum = 1, maximum = 604800)]
    pub prequeue_secs: Option<i64>,
    /// Where events about the campaign's grants are POSTed, signed
    /// (docs/ARCHITECTURE.md, "Webhooks"). The secret is never shown back.
    #[serde(default)]
    pub webhook: Option<WebhookSpec>,
}

/// A webhook to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    /// `http` or `https` URL with a host; when the service has an allow
    /// list (`--webhook-allow`), its host must be in it.
    pub url: String,
    /// `whsec_` followed by the base64 of 24 to 64 random bytes: the
    /// Standard Webhooks signing key.
    pub secret: String,
}

/// A campaign's webhook as answered: the endpoint only.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WebhookBody {
    /// The endpoint.
    pub url: String,
}

/// A pool to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    /// 1..=64 characters of `[A-Za-z0-9_.:@-]`, unique in the campaign.
    #[schema(pattern = "^[A-Za-z0-9_.:@-]{1,64}$", min_length = 1, max_length = 64)]
    pub name: String,
    /// 1..=10,000,000.
    #[schema(minimum = 1, maximum = 10000000)]
    pub stock: i64,
}

/// A campaign as answered.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CampaignBody {
    /// Id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// Admission mode.
    pub mode: Mode,
    /// Active grants per user.
    pub per_user_limit: i32,
    /// Start of the window.
    pub opens_at: Option<DateTime<Utc>>,
    /// End of the window.
    pub closes_at: Option<DateTime<Utc>>,
    /// Cancellation stays possible this long after closing.
    pub hold_secs: i64,
    /// Grants are held this long for confirmation, if set.
    pub confirm_within_secs: Option<i64>,
    /// Redis shards each pool's stock is spread over.
    pub shards: i64,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Pools with their counts.
    pub pools: Vec<PoolBody>,
    /// Claims accepted and waiting for the drainer (redis-queue).
    pub queued: i64,
    /// Fair start: seconds before `opens_at` claims are pre-queued.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub prequeue_secs: Option<i64>,
    /// Fair start: `hex(SHA-256(seed))`, shown from creation.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub draw_commitment: Option<String>,
    /// Fair start: the draw's seed (hex), shown from `opens_at`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub draw_seed: Option<String>,
    /// Whether the public sees it (only the admin reads an unpublished
    /// campaign; everyone else gets 404 `campaign_not_found`).
    pub published: bool,
    /// Its webhook endpoint (never the secret), `null` without one.
    #[serde(default)]
    pub webhook: Option<WebhookBody>,
    /// Whether an operator paused it: claims of users without an answer
    /// get 409 `paused` until it is resumed.
    #[serde(default)]
    pub paused: bool,
}

/// A pool with its counts.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PoolBody {
    /// Name.
    pub name: String,
    /// Stock.
    pub stock: i32,
    /// Stock that can still be claimed.
    pub remaining: i64,
    /// Durable active grants (PostgreSQL).
    pub granted: i64,
}

/// Page of the grants export.
#[derive(Debug, Serialize, ToSchema)]
pub struct GrantsPage {
    /// Active grants in id order.
    pub grants: Vec<GrantRow>,
    /// Cursor of the next page, `null` at the end.
    pub next: Option<String>,
}

/// Query of the grants export.
#[derive(Debug, Deserialize, IntoParams)]
pub struct GrantsQuery {
    /// Cursor from the previous page's `next`.
    pub after: Option<String>,
    /// Page size, 1..=10000 (default 1000).
    #[param(minimum = 1, maximum = 10000)]
    pub limit: Option<i64>,
}

/// The body of campaign `c` with its counts (also the answer of the
/// operator calls, `operator.rs`).
pub(super) async fn body(state: &AppState, c: &Campaign) -> Result<CampaignBody, ApiError> {
    let active = state.db.active_counts(c.id).await?;
    let granted = |pool_id: i64| {
        active
            .iter()
            .find(|(p, _)| *p == pool_id)
            .map(|x| x.1)
            .unwrap_or(0)
    };
    let counters = state.admissions.counters(c).await.ok().flatten();
    let pools = c
        .pools
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let g = granted(p.id);
            let remaining = match &counters {
                Some((left, _)) => left.get(i).copied().unwrap_or(0),
                None => (p.stock as i64 - g).max(0),
            };
            PoolBody {
                name: p.name.to_string(),
                stock: p.stock,
                remaining,
                granted: g,
            }
        })
        .collect();
    Ok(CampaignBody {
        id: c.id.0,
        name: c.name.clone(),
        mode: c.mode,
        per_user_limit: c.per_user_limit,
        opens_at: c.opens_at,
        closes_at: c.closes_at,
        hold_secs: c.hold_secs,
        confirm_within_secs: c.confirm_within_secs,
        shards: i64::from(c.shards),
        created_at: c.created_at,
        pools,
        queued: counters.map(|(_, q)| q).unwrap_or(0),
        published: c.published,
        prequeue_secs: c.prequeue_secs,
        draw_commitment: c.draw_seed.map(|s| s.commitment()),
        // The list is closed at opening: only then may the seed be known.
        draw_seed: c
            .draw_seed
            .filter(|_| c.opens_at.is_some_and(|o| chrono::Utc::now() >= o))
            .map(|s| s.hex()),
        webhook: c.webhook_url.clone().map(|url| WebhookBody { url }),
        paused: c.paused,
    })
}

/// Creates a campaign.
#[utoipa::path(post, path = "/v1/campaigns", request_body = CreateCampaign,
    security(("admin" = [])),
    responses(
        (status = 201, description = "Created", body = CampaignBody),
        JsonBodyErrors, AdminErrors, IpLimitErrors,
        (status = 422, description = "Invalid campaign", body = Problem, content_type = PROBLEM_JSON),
        (status = 503, description = "A store is unavailable", body = Problem, content_type = PROBLEM_JSON),
    ))]
pub async fn create(
    State(state): State<AppState>,
    _: AdminToken,
    actor: Actor,
    ApiJson(req): ApiJson<CreateCampaign>,
) -> Result<impl IntoResponse, ApiError> {
    let mode = match req.mode.as_deref() {
        None => None,
        Some(m) => Some(
            m.parse()
                .map_err(|e: String| ApiError::unprocessable("unknown_mode", e))?,
        ),
    };
    let webhook = req
        .webhook
        .map(|w| Webhook::parse(&w.url, &w.secret, &state.webhook_allow))
        .transpose()?;
    let mut new = NewCampaign::parse(RawCampaign {
        name: req.name,
        mode,
        pools: req.pools.into_iter().map(|p| (p.name, p.stock)).collect(),
        per_user_limit: req.per_user_limit,
        opens_at: req.opens_at,
        closes_at: req.closes_at,
        hold_secs: req.hold_secs,
        confirm_within_secs: req.confirm_within_secs,
        shards: req.shards,
        prequeue_secs: req.prequeue_secs,
    })?;
    new.webhook = webhook;
    let c = state
        .db
        .create_campaign(&new, req.published.unwrap_or(true), &actor.0)
        .await?;
    // If Redis is down, the first claim rebuilds the state from PostgreSQL.
    if let Err(e) = state.admissions.on_create(&c).await {
        tracing::warn!(error = %e, campaign = %c.id, "could not prepare the new campaign (redis state)");
    }
    // An earlier read of this id may have cached a 404 here.
    state.campaign_bodies.forget(c.id.0);
    state.worker_wakeup.notify_one();
    tracing::info!(campaign = %c.id, mode = %c.mode, pools = c.pools.len(), "campaign created");
    let b = body(&state, &c).await?;
    Ok((StatusCode::CREATED, Json(b)))
}

/// Publishes a campaign created with `"published": false`: from now on
/// everyone sees it. Idempotent.
#[utoipa::path(post, path = "/v1/campaigns/{id}/publish",
    params(("id" = i64, Path, description = "Campaign id")),
    security(("admin" = [])),
    responses(
        (status = 200, description = "Published (or already)", body = CampaignBody),
        AdminErrors, CampaignErrors, IpLimitErrors, StoreErrors,
    ))]
pub async fn publish(
    State(state): State<AppState>,
    Path(id): Path<String>,
    _: AdminToken,
    actor: Actor,
) -> Result<Json<CampaignBody>, ApiError> {
    let c = state.campaign_for_admin(&id).await?;
    if !c.published {
        if !state.db.publish_campaign(c.id, &actor.0).await? {
            return Err(ApiError::campaign_not_found());
        }
        // Another reader of this process may have cached its 404; other
        // processes' caches keep it at most their TTL.
        state.campaign_bodies.forget(c.id.0);
        tracing::info!(campaign = %c.id, "campaign published");
    }
    let c = state.campaign(&id).await?;
    Ok(Json(body(&state, &c).await?))
}

/// Reads a campaign with its counts. The answer (a 404 too) is cached
/// about a second per campaign, here and, through `Cache-Control`, in
/// front; `If-None-Match` with its `ETag` gets 304. A read with the admin
/// token is fresh.
#[utoipa::path(get, path = "/v1/campaigns/{id}",
    params(("id" = i64, Path, description = "Campaign id")),
    responses(
        (status = 200, description = "The campaign with its counts (at most `max-age` seconds old)", body = CampaignBody,
            headers(("ETag" = String, description = "Tag of this body"), ("Cache-Control" = String, description = "public, max-age=1"))),
        (status = 304, description = "Not modified: the If-None-Match tag is current"),
        CampaignErrors, IpLimitErrors, StoreErrors,
    ))]
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let cache_control = cache_control(state.campaign_bodies.ttl());
    // A non-numeric id names no campaign: no lookup, no cache entry.
    let Ok(num) = id.parse::<i64>() else {
        return Err(ApiError::campaign_not_found());
    };
    // The admin (operators, the bench's drain probe) reads fresh counts.
    let fresh = is_admin(&headers, &state);
    if fresh {
        // An unpublished campaign bypasses the cache, which holds what the
        // public sees (a 404 for it).
        let c = state.campaign_for_admin(&id).await?;
        if !c.published {
            let b = body(&state, &c).await?;
            let mut resp = Json(b).into_response();
            resp.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, no-store"),
            );
            return Ok(resp);
        }
    }
    let fill = || async {
        let by = if fresh { "admin" } else { "public" };
        metrics::counter!("firstcome_campaign_reads_from_db_total", "by" => by).increment(1);
        match state.campaign(&id).await {
            Ok(c) => {
                let b = body(&state, &c).await?;
                let json = serde_json::to_vec(&b)
                    .map_err(|e| ApiError::Internal(format!("campaign body: {e}")))?;
                Ok(Cached::found(json))
            }
            Err(ApiError::NotFound { .. }) => Ok(Cached::NotFound),
            Err(e) => Err(e),
        }
    };
    let resp = match state.campaign_bodies.get(num, fresh, fill).await? {
        Cached::NotFound => ApiError::campaign_not_found().into_response(),
        Cached::Found { body, etag } => {
            if matches_etag(&headers, &etag) {
                (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response()
            } else {
                (
                    [
                        (
                            header::CONTENT_TYPE,
                            HeaderValue::from_static("application/json"),
                        ),
                        (header::ETAG, etag),
                    ],
                    body,
                )
                    .into_response()
            }
        }
    };
    let mut resp = resp;
    // On 404 too: a CDN may keep the refusal as long as the body.
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, cache_control);
    Ok(resp)
}

/// `Cache-Control` of a campaign read: `public, max-age=<whole seconds of
/// the TTL>`, `no-cache` when under a second.
fn cache_control(ttl: Duration) -> HeaderValue {
    match ttl.as_secs() {
        0 => HeaderValue::from_static("no-cache"),
        s => HeaderValue::from_str(&format!("public, max-age={s}")).expect("a valid header"),
    }
}

/// Whether `If-None-Match` names `etag` (or is `*`); weak tags compare by
/// their opaque part, as RFC 9110 asks for GET.
fn matches_etag(headers: &HeaderMap, etag: &HeaderValue) -> bool {
    let Ok(ours) = etag.to_str() else {
        return false;
    };
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|t| t == "*" || t.trim_start_matches("W/") == ours)
}

/// Exports active grants, paged.
#[utoipa::path(get, path = "/v1/campaigns/{id}/grants",
    params(("id" = i64, Path, description = "Campaign id"), GrantsQuery),
    security(("admin" = [])),
    responses(
        (status = 200, description = "A page of active grants", body = GrantsPage),
        (status = 400, description = "Bad cursor or limit: invalid_cursor, invalid_limit, invalid_query", body = Problem, content_type = PROBLEM_JSON),
        AdminErrors, CampaignErrors, IpLimitErrors, StoreErrors,
    ))]
pub async fn grants(
    State(state): State<AppState>,
    // After the path, as the check always came: a path that does not
    // decode is refused before the token is looked at.
    Path(id): Path<String>,
    _: AdminToken,
    query: Result<Query<GrantsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<GrantsPage>, ApiError> {
    let Query(q) = query?;
    let c = state.campaign_for_admin(&id).await?;
    let after = match q.after.as_deref() {
        None | Some("") => 0,
        Some(s) => s.parse::<i64>().ok().filter(|v| *v >= 0).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_cursor",
                "after must be a cursor from a previous page",
            )
        })?,
    };
    let limit = q.limit.unwrap_or(1000);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            "limit must be between 1 and 10000",
        ));
    }
    let rows = state.db.grants_page(c.id, after, limit).await?;
    let next = if rows.len() as i64 == limit {
        rows.last().map(|r| r.id.to_string())
    } else {
        None
    };
    Ok(Json(GrantsPage { grants: rows, next }))
}
