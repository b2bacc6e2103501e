//! Claim endpoints: claim, status, cancel, and the SSE stream of changes.

use std::{convert::Infallible, time::Duration};

use axum::{
    extract::{Path, State},
    http::StatusCode,
    response::{
        sse::{Event, KeepAlive, Sse},
        IntoResponse, Response,
    },
    Json,
};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{auth::Caller, ApiError, ApiJson, AppState};
use crate::{
    domain::{Campaign, ClaimOutcome, ClaimStatus, PoolName, RejectReason, UserId},
    modes::CancelOutcome,
    storage::pg::{self, Hold},
};

/// Body of `POST /v1/campaigns/{id}/claims`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    /// 1..=128 characters of `[A-Za-z0-9_.:@-]`; the JWT's `sub` when
    /// JWTs are configured.
    #[schema(
        pattern = "^[A-Za-z0-9_.:@-]{1,128}$",
        min_length = 1,
        max_length = 128
    )]
    pub user_id: String,
    /// Pool name; may be left out when the campaign has one pool.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9_.:@-]{1,64}$", min_length = 1, max_length = 64)]
    pub pool: Option<String>,
}

/// A claim's state: the body of every claim endpoint.
#[derive(Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq, Clone)]
pub struct ClaimAnswer {
    /// granted, queued, rejected or cancelled.
    pub status: ClaimStatus,
    /// Who.
    pub user_id: String,
    /// Pool (granted, cancelled).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pool: Option<String>,
    /// Seat number 1..=stock (granted, cancelled).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub slot: Option<i32>,
    /// Coupon code (granted, cancelled).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub code: Option<String>,
    /// Why (rejected): sold_out, not_open or closed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    #[schema(value_type = Option<String>)]
    pub reason: Option<RejectReason>,
    /// Arrival sequence number.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub seq: Option<i64>,
    /// Campaigns with `confirm_within_secs`: `held` (confirm before
    /// `confirm_by`), `confirmed`, or `expired` (released unconfirmed; the
    /// status is then `cancelled`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub hold: Option<String>,
    /// Deadline of a held grant.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub confirm_by: Option<chrono::DateTime<Utc>>,
}

/// The answer's body, with the hold state of campaigns that require a
/// confirmation (read from PostgreSQL, where holds live).
async fn answer(state: &AppState, c: &Campaign, o: &ClaimOutcome) -> Result<ClaimAnswer, ApiError> {
    let mut a = ClaimAnswer::from(o);
    if c.confirm_within_secs.is_some()
        && matches!(
            o,
            ClaimOutcome::Granted { .. } | ClaimOutcome::Cancelled { .. }
        )
    {
        let user = UserId::parse(a.user_id.clone())?;
        match pg::hold_state(&state.db, c.id, &user).await? {
            Some(Hold::Held(by)) if a.status == ClaimStatus::Granted => {
                a.hold = Some("held".into());
                a.confirm_by = Some(by);
            }
            Some(Hold::Confirmed) if a.status == ClaimStatus::Granted => {
                a.hold = Some("confirmed".into())
            }
            Some(Hold::Expired) if a.status == ClaimStatus::Cancelled => {
                a.hold = Some("expired".into())
            }
            _ => {}
        }
    }
    Ok(a)
}

/// Whether no further change will come by itself: a held grant may still
/// be confirmed or expire.
fn settled(a: &ClaimAnswer) -> bool {
    a.status != ClaimStatus::Queued && a.hold.as_deref() != Some("held")
}

impl From<&ClaimOutcome> for ClaimAnswer {
    fn from(o: &ClaimOutcome) -> Self {
        let mut a = ClaimAnswer {
            status: o.status(),
            user_id: String::new(),
            pool: None,
            slot: None,
            code: None,
            reason: None,
            seq: None,
            hold: None,
            confirm_by: None,
        };
        match o {
            ClaimOutcome::Granted {
                user_id,
                pool,
                slot,
                code,
                seq,
            }
            | ClaimOutcome::Cancelled {
                user_id,
                pool,
                slot,
                code,
                seq,
            } => {
                a.user_id = user_id.to_string();
                a.pool = Some(pool.to_string());
                a.slot = Some(*slot);
                a.code = Some(code.clone());
                a.seq = Some(*seq);
            }
            ClaimOutcome::Queued { user_id, seq } => {
                a.user_id = user_id.to_string();
                a.seq = Some(*seq);
            }
            ClaimOutcome::Rejected {
                user_id,
                reason,
                seq,
            } => {
                a.user_id = user_id.to_string();
                a.reason = Some(*reason);
                a.seq = *seq;
            }
        }
        a
    }
}

/// Status code of a claim's answer: 200 granted, 202 queued, 409 refused
/// (or cancelled earlier).
fn claim_status_code(o: &ClaimOutcome) -> StatusCode {
    match o {
        ClaimOutcome::Granted { .. } => StatusCode::OK,
        ClaimOutcome::Queued { .. } => StatusCode::ACCEPTED,
        ClaimOutcome::Rejected { .. } | ClaimOutcome::Cancelled { .. } => StatusCode::CONFLICT,
    }
}

fn outcome_label(o: &ClaimOutcome) -> &'static str {
    match o {
        ClaimOutcome::Granted { .. } => "granted",
        ClaimOutcome::Queued { .. } => "queued",
        ClaimOutcome::Rejected { reason, .. } => reason.as_str(),
        ClaimOutcome::Cancelled { .. } => "cancelled",
    }
}

/// Claims a unit of stock.
#[utoipa::path(post, path = "/v1/campaigns/{id}/claims", request_body = ClaimRequest,
    security((), ("user" = [])),
    params(("id" = i64, Path, description = "Campaign id")),
    responses(
        (status = 200, description = "Granted", body = ClaimAnswer),
        (status = 202, description = "Queued (redis-queue)", body = ClaimAnswer),
        (status = 409, description = "Rejected: sold_out, not_open, closed; or cancelled earlier", body = ClaimAnswer),
        (status = 400, description = "Malformed JSON", body = super::ops::Problem, content_type = "application/problem+json"),
        (status = 401, description = "User JWT missing, invalid or expired (when JWTs are configured): missing_token, invalid_token, expired_token", body = super::ops::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The user id is not the token's subject: forbidden_user", body = super::ops::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the per-user or per-IP rate limit: rate_limited, with Retry-After", body = super::ops::Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown campaign", body = super::ops::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body larger than 64 KiB: body_too_large", body = super::ops::Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not application/json: unsupported_media_type", body = super::ops::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid user id, pool or body", body = super::ops::Problem, content_type = "application/problem+json"),
        (status = 503, description = "A store is unavailable, or a commit is pending: with Retry-After", body = super::ops::Problem, content_type = "application/problem+json"),
    ))]
pub async fn claim(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Result<ApiJson<ClaimRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let c = state.campaign(&id).await?;
    let ApiJson(req) = body?;
    let user = caller.user(&state, req.user_id)?;
    let pool_name = req.pool.map(PoolName::parse).transpose()?;
    let pool = c.pool(pool_name.as_ref()).ok_or_else(|| match &pool_name {
        Some(p) => ApiError::unprocessable("unknown_pool", format!("campaign has no pool {p}")),
        None => {
            ApiError::unprocessable("pool_required", "this campaign has several pools: name one")
        }
    })?;
    let outcome = match c.window_check(Utc::now()) {
        // Outside the window: answer without touching any store. A repeat
        // after closing still finds its first answer (status), but a claim
        // cannot change anything any more.
        Err(reason) => match state.admissions.status(&c, &user).await.ok().flatten() {
            Some(o) if reason == RejectReason::Closed => o,
            _ => ClaimOutcome::Rejected {
                user_id: user.clone(),
                reason,
                seq: None,
            },
        },
        Ok(()) => state.admissions.claim(&c, pool, &user).await?,
    };
    metrics::counter!("firstcome_claims_total", "mode" => c.mode.as_str(), "outcome" => outcome_label(&outcome))
        .increment(1);
    Ok((
        claim_status_code(&outcome),
        Json(ClaimAnswer::from(&outcome)),
    )
        .into_response())
}

/// The claim's current state.
#[utoipa::path(get, path = "/v1/campaigns/{id}/claims/{user_id}",
    security((), ("user" = [])),
    params(("id" = i64, Path, description = "Campaign id"), ("user_id" = String, Path, description = "User id: 1..=128 characters of `[A-Za-z0-9_.:@-]`", pattern = "^[A-Za-z0-9_.:@-]{1,128}$", min_length = 1, max_length = 128)),
    responses(
        (status = 200, description = "The claim's current state", body = ClaimAnswer),
        (status = 401, description = "User JWT missing, invalid or expired (when JWTs are configured): missing_token, invalid_token, expired_token", body = super::ops::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The user id is not the token's subject: forbidden_user", body = super::ops::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the per-user or per-IP rate limit: rate_limited, with Retry-After", body = super::ops::Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown campaign, or the user never claimed", body = super::ops::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid user id", body = super::ops::Problem, content_type = "application/problem+json"),
        (status = 503, description = "A store is unavailable: with Retry-After", body = super::ops::Problem, content_type = "application/problem+json"),
    ))]
pub async fn status(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, user_id)): Path<(String, String)>,
) -> Result<Json<ClaimAnswer>, ApiError> {
    let user = caller.user(&state, user_id)?;
    let c = state.campaign(&id).await?;
    match state.admissions.status(&c, &user).await? {
        Some(o) => Ok(Json(answer(&state, &c, &o).await?)),
        None => Err(claim_not_found()),
    }
}

fn claim_not_found() -> ApiError {
    ApiError::NotFound {
        code: "claim_not_found",
        detail: "this user has not claimed in this campaign".into(),
    }
}

/// Cancels the user's grant; the slot returns to stock. Idempotent.
#[utoipa::path(delete, path = "/v1/campaigns/{id}/claims/{user_id}",
    security((), ("user" = [])),
    params(("id" = i64, Path, description = "Campaign id"), ("user_id" = String, Path, description = "User id: 1..=128 characters of `[A-Za-z0-9_.:@-]`", pattern = "^[A-Za-z0-9_.:@-]{1,128}$", min_length = 1, max_length = 128)),
    responses(
        (status = 200, description = "Cancelled", body = ClaimAnswer),
        (status = 401, description = "User JWT missing, invalid or expired (when JWTs are configured): missing_token, invalid_token, expired_token", body = super::ops::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The user id is not the token's subject: forbidden_user", body = super::ops::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the per-user or per-IP rate limit: rate_limited, with Retry-After", body = super::ops::Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown campaign, or the user never claimed", body = super::ops::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not granted (not_granted), or past the hold (hold_over)", body = super::ops::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid user id", body = super::ops::Problem, content_type = "application/problem+json"),
        (status = 503, description = "A store is unavailable: with Retry-After", body = super::ops::Problem, content_type = "application/problem+json"),
    ))]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, user_id)): Path<(String, String)>,
) -> Result<Json<ClaimAnswer>, ApiError> {
    let user = caller.user(&state, user_id)?;
    let c = state.campaign(&id).await?;
    match state.admissions.cancel(&c, &user, Utc::now()).await? {
        CancelOutcome::Cancelled(o) => {
            metrics::counter!("firstcome_cancellations_total", "mode" => c.mode.as_str())
                .increment(1);
            Ok(Json(ClaimAnswer::from(&o)))
        }
        CancelOutcome::NotFound => Err(claim_not_found()),
        CancelOutcome::NotGranted(o) => Err(ApiError::Conflict {
            code: "not_granted",
            detail: format!("the claim is {:?}, not granted", o.status()).to_lowercase(),
        }),
        CancelOutcome::HoldOver => Err(ApiError::Conflict {
            code: "hold_over",
            detail: "grants can no longer be cancelled (past closes_at + hold_secs)".into(),
        }),
    }
}

/// Confirms a held grant (payment done): it will not expire.
#[utoipa::path(post, path = "/v1/campaigns/{id}/claims/{user_id}/confirm",
    params(("id" = i64, Path, description = "Campaign id"), ("user_id" = String, Path, description = "User id")),
    responses(
        (status = 200, description = "Confirmed (or already confirmed)", body = ClaimAnswer),
        (status = 404, body = super::ops::Problem, content_type = "application/problem+json"),
        (status = 409, description = "No hold in this campaign, not granted, or expired", body = super::ops::Problem, content_type = "application/problem+json"),
        (status = 422, body = super::ops::Problem, content_type = "application/problem+json"),
        (status = 503, body = super::ops::Problem, content_type = "application/problem+json"),
    ))]
pub async fn confirm(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, user_id)): Path<(String, String)>,
) -> Result<Json<ClaimAnswer>, ApiError> {
    let user = caller.user(&state, user_id)?;
    let c = state.campaign(&id).await?;
    if c.confirm_within_secs.is_none() {
        return Err(ApiError::Conflict {
            code: "no_hold",
            detail: "grants of this campaign need no confirmation".into(),
        });
    }
    if pg::confirm(&state.db, c.id, &user).await? {
        metrics::counter!("firstcome_holds_confirmed_total", "mode" => c.mode.as_str())
            .increment(1);
    }
    let Some(o) = state.admissions.status(&c, &user).await? else {
        return Err(claim_not_found());
    };
    let a = answer(&state, &c, &o).await?;
    match (a.status, a.hold.as_deref()) {
        (ClaimStatus::Granted, Some("confirmed")) => Ok(Json(a)),
        (_, Some("expired")) => Err(ApiError::Conflict {
            code: "hold_expired",
            detail: "the hold expired before it was confirmed; its slot went back to stock".into(),
        }),
        // redis-lua: acknowledged, not yet flushed to PostgreSQL.
        (ClaimStatus::Granted, None) => Err(ApiError::Unavailable {
            code: "pending",
            detail: "the grant is not durable yet; retry shortly".into(),
        }),
        _ => Err(ApiError::Conflict {
            code: "not_granted",
            detail: format!("the claim is {:?}, not granted", a.status).to_lowercase(),
        }),
    }
}

/// One server-sent event of the claim stream.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClaimEvent {
    /// Always `claim`.
    pub event: String,
    /// A [`ClaimAnswer`] as JSON text.
    pub data: String,
}

/// How often the SSE stream looks for a change. State lives in Redis or
/// PostgreSQL, so a claim made through another API process is seen too.
pub const SSE_POLL: Duration = Duration::from_millis(20);

/// Streams the claim's state changes; closes after a final state.
#[utoipa::path(get, path = "/v1/campaigns/{id}/claims/{user_id}/events",
    security((), ("user" = [])),
    params(("id" = i64, Path, description = "Campaign id"), ("user_id" = String, Path, description = "User id: 1..=128 characters of `[A-Za-z0-9_.:@-]`", pattern = "^[A-Za-z0-9_.:@-]{1,128}$", min_length = 1, max_length = 128)),
    responses(
        (status = 200, description = "text/event-stream of `claim` events whose data is a ClaimAnswer", content_type = "text/event-stream", body = ClaimEvent),
        (status = 401, description = "User JWT missing, invalid or expired (when JWTs are configured): missing_token, invalid_token, expired_token", body = super::ops::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The user id is not the token's subject: forbidden_user", body = super::ops::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the per-user or per-IP rate limit: rate_limited, with Retry-After", body = super::ops::Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown campaign, or the user never claimed", body = super::ops::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid user id", body = super::ops::Problem, content_type = "application/problem+json"),
        (status = 503, description = "A store is unavailable: with Retry-After", body = super::ops::Problem, content_type = "application/problem+json"),
    ))]
pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, user_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let user = caller.user(&state, user_id)?;
    let c = state.campaign(&id).await?;
    let first = state
        .admissions
        .status(&c, &user)
        .await?
        .ok_or_else(claim_not_found)?;
    let deadline = tokio::time::Instant::now() + state.sse_max;
    let first = answer(&state, &c, &first).await?;
    let stream = async_stream::stream! {
        let mut done = settled(&first);
        yield Ok::<Event, Infallible>(event(&first));
        let mut last = first;
        while !done && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(SSE_POLL).await;
            let Ok(Some(now)) = state.admissions.status(&c, &user).await else { continue };
            let Ok(a) = answer(&state, &c, &now).await else { continue };
            done = settled(&a);
            if a != last {
                yield Ok(event(&a));
                last = a;
            }
        }
    };
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

fn event(a: &ClaimAnswer) -> Event {
    Event::default()
        .event("claim")
        .json_data(a)
        .unwrap_or_else(|_| Event::default().event("claim"))
}
