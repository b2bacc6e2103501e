//! Admin calls on a campaign's webhook events: the listing (what was sent,
//! what waits, what is dead) and redelivery.

use axum::{
    extract::{Path, Query, State},
    routing::{get, post},
    Json, Router,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{
    auth::AdminToken,
    error::{ApiError, Problem, PROBLEM_JSON},
    responses::{AdminErrors, CampaignErrors, IpLimitErrors, StoreErrors},
    AppState,
};
use crate::storage::pg::WebhookEventRow;

/// The webhook event routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/campaigns/{id}/webhooks/events", get(list))
        .route(
            "/v1/campaigns/{id}/webhooks/events/{event_id}/redeliver",
            post(redeliver),
        )
}

/// Query of the event listing.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// `pending`, `delivered` or `dead`; all without it.
    pub state: Option<String>,
    /// Cursor from the previous page's `next` (an event id).
    pub after: Option<String>,
    /// Page size, 1..=1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

/// A page of webhook events.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventsPage {
    /// Events in creation order.
    pub events: Vec<WebhookEventRow>,
    /// Cursor of the next page, `null` at the end.
    pub next: Option<String>,
}

/// The outbox id of an event id (`evt_<n>`, or `<n>`).
fn outbox_id(raw: &str) -> Option<i64> {
    raw.strip_prefix("evt_")
        .unwrap_or(raw)
        .parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
}

/// Lists a campaign's webhook events.
#[utoipa::path(get, path = "/v1/campaigns/{id}/webhooks/events",
    params(("id" = i64, Path, description = "Campaign id"), EventsQuery),
    security(("admin" = [])),
    responses(
        (status = 200, description = "A page of events", body = EventsPage),
        (status = 400, description = "Bad state, cursor or limit: invalid_state, invalid_cursor, invalid_limit, invalid_query", body = Problem, content_type = PROBLEM_JSON),
        AdminErrors, CampaignErrors, IpLimitErrors, StoreErrors,
    ))]
pub async fn list(
    State(state): State<AppState>,
    Path(id): Path<String>,
    _: AdminToken,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<EventsPage>, ApiError> {
    let Query(q) = query?;
    let c = state.campaign_for_admin(&id).await?;
    let wanted = match q.state.as_deref() {
        None | Some("") => None,
        Some(s @ ("pending" | "delivered" | "dead")) => Some(s),
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_state",
                "state must be pending, delivered or dead",
            ))
        }
    };
    let after = match q.after.as_deref() {
        None | Some("") => 0,
        Some(s) => outbox_id(s).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_cursor",
                "after must be a cursor from a previous page",
            )
        })?,
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            "limit must be between 1 and 1000",
        ));
    }
    let events = state
        .db
        .webhook_events_page(c.id, wanted, after, limit)
        .await?;
    let next = if events.len() as i64 == limit {
        events.last().map(|e| e.id.clone())
    } else {
        None
    };
    Ok(Json(EventsPage { events, next }))
}

/// Puts a delivered or dead event back to pending, due now (with the same
/// `webhook-id`; its dead-letter clock starts again). A pending event is
/// answered as it is.
#[utoipa::path(post, path = "/v1/campaigns/{id}/webhooks/events/{event_id}/redeliver",
    params(("id" = i64, Path, description = "Campaign id"),
           ("event_id" = String, Path, description = "Event id (`evt_<n>`)")),
    security(("admin" = [])),
    responses(
        (status = 200, description = "The event, pending again (a pending one unchanged)", body = WebhookEventRow),
        (status = 404, description = "Unknown campaign (campaign_not_found) or no such event of it (event_not_found)", body = Problem, content_type = PROBLEM_JSON),
        AdminErrors, IpLimitErrors, StoreErrors,
    ))]
pub async fn redeliver(
    State(state): State<AppState>,
    Path((id, event_id)): Path<(String, String)>,
    _: AdminToken,
) -> Result<Json<WebhookEventRow>, ApiError> {
    let c = state.campaign_for_admin(&id).await?;
    let not_found = || ApiError::not_found("event_not_found", "the campaign has no such event");
    let n = outbox_id(&event_id).ok_or_else(not_found)?;
    let e = state
        .db
        .redeliver_event(c.id, n)
        .await?
        .ok_or_else(not_found)?;
    tracing::info!(campaign = %c.id, event = %e.id, "webhook event queued for redelivery");
    Ok(Json(e))
}

#[cfg(test)]
mod tests {
    #[test]
    fn event_ids_are_read_with_or_without_their_prefix() {
        assert_eq!(super::outbox_id("evt_12"), Some(12));
        assert_eq!(super::outbox_id("12"), Some(12));
        assert_eq!(super::outbox_id("evt_"), None);
        assert_eq!(super::outbox_id("evt_-1"), None);
        assert_eq!(super::outbox_id("msg_1"), None);
    }
}
