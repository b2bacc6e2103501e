//! The webhook outbox (`webhook_events`, filled by triggers on `grants`,
//! see the migration `webhooks`): claiming due events for delivery,
//! recording outcomes, the admin listing and redelivery, the lag.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use crate::domain::CampaignId;
use crate::storage::error::StoreError;

/// An event claimed for one delivery attempt.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DueEvent {
    /// Outbox id (the webhook-id is `evt_<id>`).
    pub id: i64,
    /// Campaign.
    pub campaign_id: i64,
    /// The exact JSON body to send.
    pub body: String,
    /// Attempts so far, this one included.
    pub attempts: i32,
    /// Endpoint.
    pub url: String,
    /// Signing secret (`whsec_...`).
    pub secret: String,
}

impl DueEvent {
    /// The `webhook-id`: the same on every attempt.
    pub fn webhook_id(&self) -> String {
        event_webhook_id(self.id)
    }
}

/// The `webhook-id` of outbox row `id`.
pub fn event_webhook_id(id: i64) -> String {
    format!("evt_{id}")
}

/// Claims up to `batch` due pending events, at most `per_endpoint` per
/// endpoint URL minus what `busy` says is in flight to it already (URL,
/// deliveries), and leases them for `lease` (their next attempt moves that
/// far ahead, so another worker does not take them meanwhile; a worker
/// that dies mid-delivery leaves them due again when it ends).
/// `FOR UPDATE SKIP LOCKED`: workers claiming at once take different rows.
/// Endpoints already at their cap are skipped, so their backlog does not
/// crowd other endpoints out of the batch.
pub async fn claim_due_events(
    db: &PgPool,
    batch: i64,
    per_endpoint: i64,
    lease: Duration,
    busy: &[(String, i64)],
) -> Result<Vec<DueEvent>, StoreError> {
    let full: Vec<&str> = busy
        .iter()
        .filter(|(_, n)| *n >= per_endpoint)
        .map(|(u, _)| u.as_str())
        .collect();
    let urls: Vec<&str> = busy.iter().map(|(u, _)| u.as_str()).collect();
    let counts: Vec<i64> = busy.iter().map(|(_, n)| *n).collect();
    Ok(sqlx::query_as(
        "WITH due AS (
             SELECT e.id, c.webhook_url AS url FROM webhook_events e
             JOIN campaigns c ON c.id = e.campaign_id
             WHERE e.state = 'pending' AND e.next_attempt_at <= now()
               AND c.webhook_url IS NOT NULL AND c.webhook_url <> ALL($4::text[])
             ORDER BY e.next_attempt_at LIMIT $1
             FOR UPDATE OF e SKIP LOCKED),
         ranked AS (
             SELECT d.id, row_number() OVER (PARTITION BY d.url ORDER BY d.id)
                          + coalesce(b.n, 0) AS rn
             FROM due d LEFT JOIN UNNEST($5::text[], $6::bigint[]) AS b(url, n) ON b.url = d.url)
         UPDATE webhook_events e
         SET attempts = e.attempts + 1,
             next_attempt_at = now() + make_interval(secs => $3)
         FROM ranked r, campaigns c
         WHERE e.id = r.id AND r.rn <= $2 AND c.id = e.campaign_id
         RETURNING e.id, e.campaign_id, e.body, e.attempts,
                   c.webhook_url AS url, c.webhook_secret AS secret",
    )
    .bind(batch)
    .bind(per_endpoint)
    .bind(lease.as_secs_f64())
    .bind(&full)
    .bind(&urls)
    .bind(&counts)
    .fetch_all(db)
    .await?)
}

/// Records a 2xx answer.
pub async fn event_delivered(db: &PgPool, id: i64, status: u16) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE webhook_events
         SET state = 'delivered', delivered_at = now(), last_status = $2, last_error = NULL
         WHERE id = $1 AND state = 'pending'",
    )
    .bind(id)
    .bind(i32::from(status))
    .execute(db)
    .await?;
    Ok(())
}

/// Records a failed attempt: the event is due again in `retry_in`, or
/// dead when it has been pending at least `dead_after`. Returns whether it
/// is now dead.
pub async fn event_failed(
    db: &PgPool,
    id: i64,
    status: Option<u16>,
    error: &str,
    retry_in: Duration,
    dead_after: Duration,
) -> Result<bool, StoreError> {
    let state: Option<String> = sqlx::query_scalar(
        "UPDATE webhook_events
         SET last_status = $2, last_error = $3,
             next_attempt_at = now() + make_interval(secs => $4),
             state = CASE WHEN pending_since + make_interval(secs => $5) <= now()
                          THEN 'dead' ELSE 'pending' END
         WHERE id = $1 AND state = 'pending'
         RETURNING state",
    )
    .bind(id)
    .bind(status.map(i32::from))
    .bind(error)
    .bind(retry_in.as_secs_f64())
    .bind(dead_after.as_secs_f64())
    .fetch_optional(db)
    .await?;
    Ok(state.as_deref() == Some("dead"))
}

/// An event as the admin lists it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct WebhookEventRow {
    /// The `webhook-id` it is sent with (`evt_<n>`).
    pub id: String,
    /// `claim.granted`, `claim.confirmed`, `claim.cancelled` or
    /// `claim.expired`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `pending`, `delivered` or `dead`.
    pub state: String,
    /// Delivery attempts so far.
    pub attempts: i32,
    /// HTTP status of the last attempt, if it got one.
    pub last_status: Option<i32>,
    /// Why the last attempt failed, if it did.
    pub last_error: Option<String>,
    /// When it is (or was) next due.
    pub next_attempt_at: DateTime<Utc>,
    /// When a 2xx came back.
    pub delivered_at: Option<DateTime<Utc>>,
    /// When the fact was written.
    pub created_at: DateTime<Utc>,
    /// The body sent.
    pub body: String,
}

/// The columns of [`WebhookEventRow`].
const EVENT_COLUMNS: &str = "'evt_' || id AS id, type AS kind, state, attempts, last_status,
    last_error, next_attempt_at, delivered_at, created_at, body";

/// A page of a campaign's events in id order after outbox id `after`, of
/// one state if given.
pub async fn webhook_events_page(
    db: &PgPool,
    campaign: CampaignId,
    state: Option<&str>,
    after: i64,
    limit: i64,
) -> Result<Vec<WebhookEventRow>, StoreError> {
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM webhook_events
         WHERE campaign_id = $1 AND ($2::text IS NULL OR state = $2) AND id > $3
         ORDER BY id LIMIT $4"
    );
    Ok(sqlx::query_as(&sql)
        .bind(campaign.0)
        .bind(state)
        .bind(after)
        .bind(limit)
        .fetch_all(db)
        .await?)
}

/// Puts a campaign's delivered or dead event back to pending, due now,
/// its dead-letter clock restarted; a pending one is left as it is (it
/// may be in flight: making it due now could send it twice at once).
/// `None` when the campaign has no such event.
pub async fn redeliver_event(
    db: &PgPool,
    campaign: CampaignId,
    id: i64,
) -> Result<Option<WebhookEventRow>, StoreError> {
    let sql = format!(
        "WITH again AS (
             UPDATE webhook_events
             SET state = 'pending', next_attempt_at = now(), pending_since = now(),
                 delivered_at = NULL
             WHERE id = $1 AND campaign_id = $2 AND state <> 'pending'
             RETURNING *)
         SELECT {EVENT_COLUMNS} FROM again
         UNION ALL
         SELECT {EVENT_COLUMNS} FROM webhook_events
         WHERE id = $1 AND campaign_id = $2 AND state = 'pending'
         LIMIT 1"
    );
    Ok(sqlx::query_as(&sql)
        .bind(id)
        .bind(campaign.0)
        .fetch_optional(db)
        .await?)
}

/// Pending events and the age in seconds of the oldest (0 without any).
pub async fn webhook_lag(db: &PgPool) -> Result<(i64, f64), StoreError> {
    Ok(sqlx::query_as(
        "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at))::float8, 0)
         FROM webhook_events WHERE state = 'pending'",
    )
    .fetch_one(db)
    .await?)
}
