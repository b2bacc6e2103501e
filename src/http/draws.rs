//! `GET /v1/campaigns/{id}/draw`: a fair start's draw as recorded, so
//! anyone handed it can check the order against the seed (the recipe is
//! in `domain::draw` and docs/ARCHITECTURE.md, "Fair start").

use axum::{
    extract::{Path, Query, State},
    routing, Json, Router,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{
    auth::AdminToken,
    error::{ApiError, Problem, PROBLEM_JSON},
    responses::{AdminErrors, CampaignErrors, IpLimitErrors, StoreErrors},
    AppState,
};

/// The draw route.
pub fn router() -> Router<AppState> {
    Router::new().route("/v1/campaigns/{id}/draw", routing::get(draw))
}

/// Query of `GET /v1/campaigns/{id}/draw`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DrawQuery {
    /// The last `rank` of the previous page (default 0: from the first).
    pub after: Option<i64>,
    /// Page size, 1..=10000 (default 1000).
    #[param(minimum = 1, maximum = 10000)]
    pub limit: Option<i64>,
}

/// One pre-queued user's place.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DrawPlace {
    /// Place in drawn order (1 = first); also the claim's `seq`.
    pub rank: i64,
    /// Who.
    pub user_id: String,
    /// The pool claimed.
    pub pool: String,
}

/// A page of the draw.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DrawPage {
    /// `hex(SHA-256(seed))`, fixed at creation.
    pub draw_commitment: String,
    /// The seed (hex), from `opens_at` on; `null` before.
    pub draw_seed: Option<String>,
    /// Whether the draw is recorded (it is, once the pre-queue closed at
    /// opening and the drainer met it).
    pub drawn: bool,
    /// Places in order, after `after`.
    pub places: Vec<DrawPlace>,
    /// The `after` of the next page; `null` on the last.
    pub next: Option<i64>,
}

/// Reads a fair start's draw: the pre-queued users in drawn order.
#[utoipa::path(get, path = "/v1/campaigns/{id}/draw",
    params(("id" = i64, Path, description = "Campaign id"), DrawQuery),
    security(("admin" = [])),
    responses(
        (status = 200, description = "A page of the draw", body = DrawPage),
        (status = 400, description = "Bad after or limit: invalid_cursor, invalid_limit, invalid_query", body = Problem, content_type = PROBLEM_JSON),
        (status = 422, description = "The campaign has no pre-queue: no_prequeue", body = Problem, content_type = PROBLEM_JSON),
        AdminErrors, CampaignErrors, IpLimitErrors, StoreErrors,
    ))]
pub async fn draw(
    State(state): State<AppState>,
    Path(id): Path<String>,
    _: AdminToken,
    query: Result<Query<DrawQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<DrawPage>, ApiError> {
    let Query(q) = query?;
    let c = state.campaign_for_admin(&id).await?;
    let Some(seed) = c.draw_seed else {
        return Err(ApiError::unprocessable(
            "no_prequeue",
            "this campaign has no pre-queue, so no draw",
        ));
    };
    let after = q.after.unwrap_or(0);
    if after < 0 {
        return Err(ApiError::bad_request(
            "invalid_cursor",
            "after must be a rank from a previous page (0 or more)",
        ));
    }
    let limit = q.limit.unwrap_or(1000);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            "limit must be between 1 and 10000",
        ));
    }
    let open = c.opens_at.is_some_and(|o| chrono::Utc::now() >= o);
    let rows = state.db.draw_entries(c.id, after, limit).await?;
    let drawn = !rows.is_empty() || state.db.draw_size(c.id).await? > 0;
    let next = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.rank))
        .flatten();
    let places = rows
        .into_iter()
        .map(|r| DrawPlace {
            pool: c
                .pool_at(r.pool_idx)
                .map(|p| p.name.to_string())
                .unwrap_or_default(),
            rank: r.rank,
            user_id: r.user_id,
        })
        .collect();
    Ok(Json(DrawPage {
        draw_commitment: seed.commitment(),
        draw_seed: open.then(|| seed.hex()),
        drawn,
        places,
        next,
    }))
}
