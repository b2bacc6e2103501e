//! The operator's side: `GET /v1/campaigns` (admin: the campaign list) and
//! the dashboard page `GET /admin` (src/http/pages/admin.*), which calls
//! only the admin API with the token the operator types into it (kept in
//! the tab's sessionStorage, sent as a Bearer header, never in a URL).

use axum::{
    extract::{Query, State},
    http::{header, HeaderValue},
    response::{Html, IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{
    auth::AdminToken,
    error::{ApiError, Problem, PROBLEM_JSON},
    responses::{AdminErrors, IpLimitErrors, StoreErrors},
    AppState,
};
use crate::storage::pg::CampaignLine;

/// The dashboard's HTML (static: the token is typed in the page).
const ADMIN_HTML: &str = include_str!("pages/admin.html");

/// The admin routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/campaigns", get(list))
        .route("/admin", get(dashboard))
        .route("/assets/admin.js", get(admin_js))
}

/// Query of the campaign list.
#[derive(Debug, Deserialize, IntoParams)]
pub struct ListQuery {
    /// Only campaigns with an id below this (the previous page's `next`).
    pub before: Option<i64>,
    /// Page size, 1..=1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

/// A page of the campaign list.
#[derive(Debug, Serialize, ToSchema)]
pub struct CampaignList {
    /// Newest first.
    pub campaigns: Vec<CampaignLine>,
    /// The `before` of the next page; `null` on the last.
    pub next: Option<i64>,
}

/// Lists campaigns, published or not, newest first (admin).
#[utoipa::path(get, path = "/v1/campaigns",
    params(ListQuery),
    security(("admin" = [])),
    responses(
        (status = 200, description = "The campaigns, newest first", body = CampaignList),
        (status = 400, description = "Bad query: invalid_limit, invalid_query", body = Problem, content_type = PROBLEM_JSON),
        AdminErrors, IpLimitErrors, StoreErrors,
    ))]
pub async fn list(
    State(state): State<AppState>,
    _: AdminToken,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<CampaignList>, ApiError> {
    let Query(q) = query?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            "limit must be between 1 and 1000",
        ));
    }
    let campaigns = state.db.list_campaigns(q.before, limit).await?;
    let next = (campaigns.len() as i64 == limit)
        .then(|| campaigns.last().map(|c| c.id))
        .flatten();
    Ok(Json(CampaignList { campaigns, next }))
}

/// `GET /admin`: the operator dashboard.
async fn dashboard() -> Response {
    let mut resp = Html(ADMIN_HTML).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(super::pages::CSP),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // The dashboard holds an admin token: never framed by another site.
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

async fn admin_js() -> Response {
    super::pages::asset(
        "text/javascript; charset=utf-8",
        include_str!("pages/admin.js"),
    )
}
