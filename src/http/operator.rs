//! Operator controls of a live campaign (admin): pause, resume, PATCH (the
//! window's end, a pool's stock) and the log of operator actions.
//!
//! Every change is written to PostgreSQL first, with its log row, then
//! carried to the campaign's Redis state (Redis modes) under the rebuild
//! lock; the exact decisions (admit or not, which slot) stay in the stores,
//! so a process holding an older copy of the campaign cannot act on it
//! (docs/ARCHITECTURE.md, "Operator controls").

use axum::{
    extract::{Path, Query, State},
    routing::{get, patch, post},
    Json, Router,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{
    auth::{Actor, AdminToken},
    campaigns::{body, CampaignBody},
    error::{ApiError, Problem, PROBLEM_JSON},
    responses::{AdminErrors, CampaignErrors, IpLimitErrors, JsonBodyErrors, StoreErrors},
    ApiJson, AppState,
};
use crate::{
    domain::{Campaign, PoolName, MAX_STOCK},
    modes::redis_common::settings::RestockError,
    storage::pg::{ActionRow, PatchError, Restock},
};

/// The operator routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/campaigns/{id}/pause", post(pause))
        .route("/v1/campaigns/{id}/resume", post(resume))
        .route("/v1/campaigns/{id}", patch(patch_campaign))
        .route("/v1/campaigns/{id}/actions", get(actions))
}

/// Body of `PATCH /v1/campaigns/{id}`: at least one field.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchCampaign {
    /// The window's new end: after `opens_at`, not in the past, at most
    /// 400 days ahead. Claims from then on are refused with `closed`.
    #[serde(default)]
    pub closes_at: Option<DateTime<Utc>>,
    /// New stocks, in every mode (422 `restock_unsupported` for a sharded
    /// campaign): raised, new slots continue the numbering and are handed
    /// out in order; lowered, not below the units taken -- granted,
    /// reserved, held or queued (409 `stock_below_granted`) -- nor below a
    /// held slot (409 `slot_above_stock`).
    #[serde(default)]
    pub pools: Option<Vec<PoolStock>>,
}

/// A pool's new stock.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolStock {
    /// The pool's name.
    pub name: String,
    /// 1..=10,000,000.
    #[schema(minimum = 1, maximum = 10000000)]
    pub stock: i64,
}

/// Query of the actions list.
#[derive(Debug, Deserialize, IntoParams)]
pub struct ActionsQuery {
    /// Most actions listed, 1..=1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

/// The operator actions of a campaign, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct ActionsPage {
    /// Newest first.
    pub actions: Vec<ActionRow>,
}

/// Sets the pause flag in PostgreSQL (logged), then in Redis; answers the
/// campaign as it is now.
async fn set_paused(
    state: &AppState,
    id: &str,
    paused: bool,
    actor: &Actor,
) -> Result<Json<CampaignBody>, ApiError> {
    let c = state.campaign_for_admin(id).await?;
    if state.db.set_paused(c.id, paused, &actor.0).await?.is_none() {
        return Err(ApiError::campaign_not_found());
    }
    // Applied even when the flag did not change: a call that failed after
    // PostgreSQL is completed by its retry.
    apply(state, &c).await?;
    metrics::counter!("firstcome_operator_actions_total",
        "action" => if paused { "pause" } else { "resume" })
    .increment(1);
    tracing::info!(campaign = %c.id, paused, actor = %actor.0, "campaign paused flag set");
    answer(state, id).await
}

/// Carries what PostgreSQL holds to the Redis state, and forgets this
/// process' copies.
async fn apply(state: &AppState, c: &Campaign) -> Result<(), ApiError> {
    state.forget_campaign(c.id);
    if let Some(r) = state.admissions.redis_of(c.mode) {
        r.apply_settings(c).await?;
    }
    Ok(())
}

/// The campaign as it is now.
async fn answer(state: &AppState, id: &str) -> Result<Json<CampaignBody>, ApiError> {
    let c = state.campaign_for_admin(id).await?;
    Ok(Json(body(state, &c).await?))
}

/// Pauses a campaign: until it is resumed, a claim by a user without an
/// answer gets 409 `paused` (with `Retry-After`) and nothing is remembered
/// for them; answers already given stay; queued claims wait. Idempotent.
#[utoipa::path(post, path = "/v1/campaigns/{id}/pause",
    params(("id" = i64, Path, description = "Campaign id"),
        ("X-Firstcome-Actor" = Option<String>, Header, description = "Who acts (1..=64 printable characters; default `admin`), for the actions log")),
    security(("admin" = [])),
    responses(
        (status = 200, description = "Paused (or already)", body = CampaignBody),
        (status = 400, description = "Malformed X-Firstcome-Actor: invalid_actor", body = Problem, content_type = PROBLEM_JSON),
        AdminErrors, CampaignErrors, IpLimitErrors, StoreErrors,
    ))]
pub async fn pause(
    State(state): State<AppState>,
    Path(id): Path<String>,
    _: AdminToken,
    actor: Actor,
) -> Result<Json<CampaignBody>, ApiError> {
    set_paused(&state, &id, true, &actor).await
}

/// Resumes a paused campaign. Idempotent.
#[utoipa::path(post, path = "/v1/campaigns/{id}/resume",
    params(("id" = i64, Path, description = "Campaign id"),
        ("X-Firstcome-Actor" = Option<String>, Header, description = "Who acts (default `admin`)")),
    security(("admin" = [])),
    responses(
        (status = 200, description = "Resumed (or was not paused)", body = CampaignBody),
        (status = 400, description = "Malformed X-Firstcome-Actor: invalid_actor", body = Problem, content_type = PROBLEM_JSON),
        AdminErrors, CampaignErrors, IpLimitErrors, StoreErrors,
    ))]
pub async fn resume(
    State(state): State<AppState>,
    Path(id): Path<String>,
    _: AdminToken,
    actor: Actor,
) -> Result<Json<CampaignBody>, ApiError> {
    set_paused(&state, &id, false, &actor).await
}

/// The pools' new stocks, checked against the campaign.
fn restocks(c: &Campaign, pools: Vec<PoolStock>) -> Result<Vec<Restock>, ApiError> {
    if pools.is_empty() {
        return Err(ApiError::unprocessable(
            "no_pools",
            "pools must not be empty",
        ));
    }
    let mut out: Vec<Restock> = Vec::with_capacity(pools.len());
    for p in pools {
        let name = PoolName::parse(p.name)?;
        let Some(pool) = c.pool(Some(&name)) else {
            return Err(ApiError::unprocessable(
                "unknown_pool",
                format!("campaign has no pool {name}"),
            ));
        };
        if out.iter().any(|r| r.pool_id == pool.id) {
            return Err(ApiError::unprocessable(
                "duplicate_pool",
                format!("pool {name:?} appears twice"),
            ));
        }
        if !(1..=MAX_STOCK).contains(&p.stock) {
            return Err(ApiError::unprocessable(
                "invalid_stock",
                format!("stock must be between 1 and {MAX_STOCK}, got {}", p.stock),
            ));
        }
        out.push(Restock {
            pool_id: pool.id,
            name: name.as_str().to_string(),
            stock: p.stock as i32,
        });
    }
    if c.shards > 1 {
        return Err(ApiError::unprocessable(
            "restock_unsupported",
            "a sharded campaign's stock is spread over its shards' ranges; a stock change is supported only without shards",
        ));
    }
    Ok(out)
}

/// Changes a live campaign: moves the window's end, changes pools' stock.
#[utoipa::path(patch, path = "/v1/campaigns/{id}", request_body = PatchCampaign,
    params(("id" = i64, Path, description = "Campaign id"),
        ("X-Firstcome-Actor" = Option<String>, Header, description = "Who acts (default `admin`)")),
    security(("admin" = [])),
    responses(
        (status = 200, description = "Changed", body = CampaignBody),
        (status = 409, description = "Stock below what is granted (stock_below_granted) or below a held slot (slot_above_stock)", body = Problem, content_type = PROBLEM_JSON),
        (status = 422, description = "Invalid change: empty_patch, invalid_window, invalid_schedule, unknown_pool, duplicate_pool, invalid_stock, restock_unsupported", body = Problem, content_type = PROBLEM_JSON),
        JsonBodyErrors, AdminErrors, CampaignErrors, IpLimitErrors, StoreErrors,
    ))]
pub async fn patch_campaign(
    State(state): State<AppState>,
    Path(id): Path<String>,
    _: AdminToken,
    actor: Actor,
    ApiJson(req): ApiJson<PatchCampaign>,
) -> Result<Json<CampaignBody>, ApiError> {
    let c = state.campaign_for_admin(&id).await?;
    if req.closes_at.is_none() && req.pools.is_none() {
        return Err(ApiError::unprocessable(
            "empty_patch",
            "give closes_at, pools or both",
        ));
    }
    let now = Utc::now();
    if let Some(t) = req.closes_at {
        c.check_closes_at(t, now)?;
        // A past end would let the keys expire before their queue or
        // outbox is written, and tell nothing an operator wants.
        if t < now {
            return Err(ApiError::unprocessable(
                "invalid_schedule",
                "closes_at must not be in the past",
            ));
        }
    }
    let stocks = match req.pools {
        Some(p) => restocks(&c, p)?,
        None => Vec::new(),
    };
    match state.admissions.redis_of(c.mode) {
        // Redis modes: the change is ordered with the Redis state there.
        Some(r) => {
            let done = r.patch(&c, req.closes_at, stocks, actor.0.clone()).await;
            state.forget_campaign(c.id);
            match done {
                Ok(()) => {}
                Err(RestockError::Refused(e)) => return Err(patch_error(e)),
                Err(RestockError::Store(e)) => return Err(e.into()),
            }
        }
        None => {
            state
                .db
                .patch_campaign(c.id, req.closes_at, &stocks, &actor.0)
                .await
                .map_err(patch_error)?;
            state.forget_campaign(c.id);
        }
    }
    metrics::counter!("firstcome_operator_actions_total", "action" => "patch").increment(1);
    tracing::info!(campaign = %c.id, actor = %actor.0, "campaign patched");
    answer(&state, &id).await
}

/// The answer to a PATCH refused by the stores.
fn patch_error(e: PatchError) -> ApiError {
    match e {
        PatchError::NotFound => ApiError::campaign_not_found(),
        e @ PatchError::BelowTaken { .. } => {
            ApiError::conflict("stock_below_granted", e.to_string())
        }
        e @ PatchError::SlotAbove { .. } => ApiError::conflict("slot_above_stock", e.to_string()),
        PatchError::Pg(e) => e.into(),
    }
}

/// Lists a campaign's operator actions (create, publish, pause, resume,
/// patch, with what each changed), newest first.
#[utoipa::path(get, path = "/v1/campaigns/{id}/actions",
    params(("id" = i64, Path, description = "Campaign id"), ActionsQuery),
    security(("admin" = [])),
    responses(
        (status = 200, description = "The actions, newest first", body = ActionsPage),
        (status = 400, description = "Bad limit: invalid_limit, invalid_query", body = Problem, content_type = PROBLEM_JSON),
        AdminErrors, CampaignErrors, IpLimitErrors, StoreErrors,
    ))]
pub async fn actions(
    State(state): State<AppState>,
    Path(id): Path<String>,
    _: AdminToken,
    query: Result<Query<ActionsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ActionsPage>, ApiError> {
    let Query(q) = query?;
    let c = state.campaign_for_admin(&id).await?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            "limit must be between 1 and 1000",
        ));
    }
    let actions = state.db.list_actions(c.id, limit).await?;
    Ok(Json(ActionsPage { actions }))
}
