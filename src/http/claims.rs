//! Claim endpoints: claim, status, cancel, confirm, the SSE stream of
//! changes, and their routes.
//!
//! Every handler acts for the user a [`Caller`] vouches for. Handlers take
//! their errors from `error` and their documented refusals from
//! `responses`; they never import another resource's module or the OpenAPI
//! document.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    extract::{Path, State},
    http::StatusCode,
    response::{
        sse::{Event, KeepAlive, Sse},
        IntoResponse, Response,
    },
    routing::{get, post},
    Json, Router,
};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::responses::{
    CampaignErrors, ClaimPathErrors, IpLimitErrors, JsonBodyErrors, StoreErrors, UserCallErrors,
};
use super::{
    answers::{answer, settled, ClaimAnswer, ClaimRequest},
    auth::{Caller, Confirmer},
    error::{ApiError, Problem, PROBLEM_JSON},
    limits::ClientIp,
    ApiJson, AppState,
};
use crate::{
    domain::{Campaign, ClaimOutcome, ClaimStatus, PoolName, RejectReason, UserId},
    modes::CancelOutcome,
};

/// The claim routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/campaigns/{id}/claims", post(claim))
        .route(
            "/v1/campaigns/{id}/claims/{user_id}",
            get(status).delete(cancel),
        )
        .route("/v1/campaigns/{id}/claims/{user_id}/events", get(events))
        .route("/v1/campaigns/{id}/claims/{user_id}/confirm", post(confirm))
}

/// The path of one user's claim: `/v1/campaigns/{id}/claims/{user_id}`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ClaimPath {
    /// Campaign id
    #[param(value_type = i64)]
    pub id: String,
    /// User id: 1..=128 characters of `[A-Za-z0-9_.:@-]`
    #[param(
        pattern = "^[A-Za-z0-9_.:@-]{1,128}$",
        min_length = 1,
        max_length = 128
    )]
    pub user_id: String,
}

/// The campaign and the user of a call on one user's claim: the user is
/// checked (token, rate limit) before the campaign is looked up.
async fn target(
    state: &AppState,
    caller: &Caller,
    p: ClaimPath,
) -> Result<(Arc<Campaign>, UserId), ApiError> {
    let user = caller.user(state, p.user_id)?;
    let c = state.campaign(&p.id).await?;
    Ok((c, user))
}

/// The claim's current outcome; 404 `claim_not_found` when there is none.
async fn current(state: &AppState, c: &Campaign, user: &UserId) -> Result<ClaimOutcome, ApiError> {
    state
        .admissions
        .status(c, user)
        .await?
        .ok_or_else(ApiError::claim_not_found)
}

/// Status code of a claim's answer: 200 granted, 202 queued, 409 refused
/// (or cancelled earlier).
fn claim_status_code(o: &ClaimOutcome) -> StatusCode {
    match o {
        ClaimOutcome::Granted { .. } => StatusCode::OK,
        ClaimOutcome::Queued { .. } => StatusCode::ACCEPTED,
        ClaimOutcome::Rejected { .. }
        | ClaimOutcome::Cancelled { .. }
        | ClaimOutcome::Left { .. } => StatusCode::CONFLICT,
    }
}

fn outcome_label(o: &ClaimOutcome) -> &'static str {
    match o {
        ClaimOutcome::Granted { .. } => "granted",
        ClaimOutcome::Queued { .. } => "queued",
        ClaimOutcome::Rejected { reason, .. } => reason.as_str(),
        ClaimOutcome::Cancelled { .. } | ClaimOutcome::Left { .. } => "cancelled",
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
        (status = 422, description = "Invalid user id, pool or body", body = Problem, content_type = PROBLEM_JSON),
        (status = 503, description = "A store is unavailable, or a commit is pending: with Retry-After", body = Problem, content_type = PROBLEM_JSON),
        JsonBodyErrors, UserCallErrors, CampaignErrors,
    ))]
pub async fn claim(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Result<ApiJson<ClaimRequest>, ApiError>,
) -> Result<Response, ApiError> {
    // The user (token subject, rate limit) before the campaign, as every
    // user call: a flood naming unknown campaigns is limited like any other.
    let ApiJson(req) = body?;
    let user = caller.user(&state, req.user_id)?;
    let c = state.campaign(&id).await?;
    let pool_name = req.pool.map(PoolName::parse).transpose()?;
    let pool = c.pool(pool_name.as_ref()).ok_or_else(|| match &pool_name {
        Some(p) => ApiError::unprocessable("unknown_pool", format!("campaign has no pool {p}")),
        None => {
            ApiError::unprocessable("pool_required", "this campaign has several pools: name one")
        }
    })?;
    let now = Utc::now();
    // A fair start's pre-queue is before the window, decided in Redis.
    let prequeued = c.prequeue_from().is_some_and(|from| now >= from);
    let outcome = match c.window_check(now).or_else(|r| match r {
        RejectReason::NotOpen if prequeued => Ok(()),
        r => Err(r),
    }) {
        // Outside the window: answer without touching any store. A repeat
        // after closing still finds its first answer (status), but a claim
        // cannot change anything any more.
        // A lookup that fails is a 503, never a made-up `closed` that would
        // contradict a grant already told.
        Err(reason) => match reason {
            RejectReason::Closed => state.admissions.status(&c, &user).await?,
            _ => None,
        }
        .unwrap_or_else(|| ClaimOutcome::Rejected {
            user_id: user.clone(),
            reason,
            seq: None,
        }),
        Ok(()) => state.admissions.claim(&c, pool, &user).await?,
    };
    metrics::counter!("firstcome_claims_total", "mode" => c.mode.as_str(), "outcome" => outcome_label(&outcome))
        .increment(1);
    // A queued answer carries its position (one cached read per second).
    let body = match outcome {
        ClaimOutcome::Queued { .. } => answer(&state, &c, &outcome).await?,
        _ => ClaimAnswer::from(&outcome),
    };
    Ok((claim_status_code(&outcome), Json(body)).into_response())
}

/// The claim's current state.
#[utoipa::path(get, path = "/v1/campaigns/{id}/claims/{user_id}",
    security((), ("user" = [])),
    params(ClaimPath),
    responses(
        (status = 200, description = "The claim's current state", body = ClaimAnswer),
        UserCallErrors, ClaimPathErrors, StoreErrors,
    ))]
pub async fn status(
    State(state): State<AppState>,
    caller: Caller,
    Path(p): Path<ClaimPath>,
) -> Result<Json<ClaimAnswer>, ApiError> {
    let (c, user) = target(&state, &caller, p).await?;
    let o = current(&state, &c, &user).await?;
    Ok(Json(answer(&state, &c, &o).await?))
}

/// 409 `not_granted`: the claim is in state `s`.
fn not_granted(s: ClaimStatus) -> ApiError {
    ApiError::conflict(
        "not_granted",
        format!("the claim is {s:?}, not granted").to_lowercase(),
    )
}

/// Cancels the user's grant; the slot returns to stock. Idempotent.
#[utoipa::path(delete, path = "/v1/campaigns/{id}/claims/{user_id}",
    security((), ("user" = [])),
    params(ClaimPath),
    responses(
        (status = 200, description = "Cancelled", body = ClaimAnswer),
        UserCallErrors, ClaimPathErrors, StoreErrors,
        (status = 409, description = "Not granted (not_granted), or past the hold (hold_over)", body = Problem, content_type = PROBLEM_JSON),
    ))]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(p): Path<ClaimPath>,
) -> Result<Json<ClaimAnswer>, ApiError> {
    let (c, user) = target(&state, &caller, p).await?;
    match state.admissions.cancel(&c, &user, Utc::now()).await? {
        CancelOutcome::Cancelled(o) => {
            metrics::counter!("firstcome_cancellations_total", "mode" => c.mode.as_str())
                .increment(1);
            Ok(Json(ClaimAnswer::from(&o)))
        }
        CancelOutcome::NotFound => Err(ApiError::claim_not_found()),
        CancelOutcome::NotGranted(o) => Err(not_granted(o.status())),
        CancelOutcome::HoldOver => Err(ApiError::conflict(
            "hold_over",
            "grants can no longer be cancelled (past closes_at + hold_secs)",
        )),
    }
}

/// Confirms a held grant (payment done): it will not expire. A call of the
/// payment service (or the admin), never of the user.
#[utoipa::path(post, path = "/v1/campaigns/{id}/claims/{user_id}/confirm",
    security(("payment" = []), ("admin" = [])),
    params(ClaimPath),
    responses(
        (status = 200, description = "Confirmed (or already confirmed)", body = ClaimAnswer),
        (status = 401, description = "Neither the payment service's token nor the admin token: unauthorized", body = Problem, content_type = PROBLEM_JSON),
        (status = 403, description = "A user's own token: forbidden_confirm", body = Problem, content_type = PROBLEM_JSON),
        (status = 409, description = "No hold in this campaign, not granted, or expired", body = Problem, content_type = PROBLEM_JSON),
        ClaimPathErrors, IpLimitErrors, StoreErrors,
    ))]
pub async fn confirm(
    State(state): State<AppState>,
    Path(p): Path<ClaimPath>,
    _: Confirmer,
) -> Result<Json<ClaimAnswer>, ApiError> {
    // No per-user limit: the payment service is trusted, and the per-IP
    // limit still applies.
    let user = UserId::parse(p.user_id)?;
    let c = state.campaign(&p.id).await?;
    if c.confirm_within_secs.is_none() {
        return Err(ApiError::conflict(
            "no_hold",
            "grants of this campaign need no confirmation",
        ));
    }
    if state.db.confirm(c.id, &user).await? {
        metrics::counter!("firstcome_holds_confirmed_total", "mode" => c.mode.as_str())
            .increment(1);
    }
    let o = current(&state, &c, &user).await?;
    let a = answer(&state, &c, &o).await?;
    match (a.status, a.hold.as_deref()) {
        (ClaimStatus::Granted, Some("confirmed")) => Ok(Json(a)),
        (_, Some("expired")) => Err(ApiError::conflict(
            "hold_expired",
            "the hold expired before it was confirmed; its slot went back to stock",
        )),
        // redis-lua: acknowledged, not yet flushed to PostgreSQL.
        (ClaimStatus::Granted, None) => Err(ApiError::unavailable(
            "pending",
            "the grant is not durable yet; retry shortly",
        )),
        _ => Err(not_granted(a.status)),
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

/// How long a stream waits before it reads its claim again after a failed
/// read (a store down, a state being rebuilt), whether or not its watcher
/// announced a change.
pub const SSE_RETRY: Duration = Duration::from_millis(250);

/// The client address as the per-address limits see it ([`ClientIp`], set
/// by `limits::limit_ip`), else the TCP peer; none when the server did not
/// say.
pub struct PeerIp(Option<std::net::IpAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PeerIp {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Infallible> {
        if let Some(ClientIp(ip)) = parts.extensions.get::<ClientIp>() {
            return Ok(PeerIp(*ip));
        }
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>();
        Ok(PeerIp(peer.map(|c| c.0.ip())))
    }
}

/// Streams the claim's state changes; closes after a final state.
#[utoipa::path(get, path = "/v1/campaigns/{id}/claims/{user_id}/events",
    security((), ("user" = [])),
    params(ClaimPath),
    responses(
        (status = 200, description = "text/event-stream of `claim` events whose data is a ClaimAnswer", content_type = "text/event-stream", body = ClaimEvent),
        UserCallErrors, ClaimPathErrors, StoreErrors,
    ))]
pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    PeerIp(ip): PeerIp,
    Path(p): Path<ClaimPath>,
) -> Result<Response, ApiError> {
    let (c, user) = target(&state, &caller, p).await?;
    let slot = state.streams.acquire(&user, ip)?;
    // Before the first read: a change after it is then announced.
    let mut feed = state.fanout.subscribe(&c, &user);
    let first = current(&state, &c, &user).await?;
    // The stream ends at `sse_max`, when the caller's token expires, or
    // at once when the server shuts down.
    let mut deadline = tokio::time::Instant::now() + state.sse_max;
    if let Some(exp) = caller.expires_at {
        let left = u64::try_from(exp - Utc::now().timestamp()).unwrap_or(0);
        deadline = deadline.min(tokio::time::Instant::now() + Duration::from_secs(left));
    }
    let first_answer = answer(&state, &c, &first).await?;
    let mut closing = state.closing.clone();
    let stream = async_stream::stream! {
        let _slot = slot;
        let mut done = settled(&first_answer);
        yield Ok::<Event, Infallible>(event(&first_answer));
        let mut last = first_answer;
        // Set after a failed read: it is retried then, change or not.
        let mut retry_at: Option<tokio::time::Instant> = None;
        while !done {
            // Woken by the campaign's watcher when the answer (or a hold's
            // confirmation) changed: one read per change, not per tick.
            let wake = retry_at.map_or(deadline, |r| r.min(deadline));
            tokio::select! {
                () = feed.changed() => {}
                _ = closing.wait_for(|c| *c) => break,
                () = tokio::time::sleep_until(wake) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            metrics::counter!("firstcome_stream_reads_total").increment(1);
            retry_at = Some(tokio::time::Instant::now() + SSE_RETRY);
            let Ok(Some(now)) = state.admissions.status(&c, &user).await else { continue };
            let Ok(a) = answer(&state, &c, &now).await else { continue };
            retry_at = None;
            done = settled(&a);
            if a != last {
                yield Ok(event(&a));
                last = a;
            }
        }
        drop(feed);
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
