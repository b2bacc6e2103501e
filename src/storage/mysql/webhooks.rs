//! The webhook outbox on MySQL/MariaDB (`webhook_events`, filled by row
//! triggers on `grants`, see `migrations-mysql/`): claiming due events for
//! delivery, recording outcomes, the admin listing and redelivery, the lag.
//! The twin of `storage::pg::webhooks`: the same rows, locks and answers.

use std::collections::HashMap;
use std::time::Duration;

use sqlx::{MySqlPool, Row};

use super::text::{opt_text, text};
use crate::domain::CampaignId;
use crate::storage::error::StoreError;
use crate::storage::pg::{event_webhook_id, DueEvent, WebhookEventRow};

/// The most bytes a TEXT column holds: a longer `last_error` is cut to it
/// (PostgreSQL's text has no limit; strict mode would refuse the write, and
/// the failure would then never be recorded).
const TEXT_MAX_BYTES: usize = 65_535;

/// `n` comma-separated placeholders (MySQL has no arrays: `= ANY($1)`
/// becomes `IN (?, ?, ...)`).
fn marks(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// `d` in whole microseconds, for `INTERVAL ? MICROSECOND` (PostgreSQL's
/// `make_interval(secs => ...)` keeps microseconds too).
fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
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
    db: &MySqlPool,
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
    let not_full = if full.is_empty() {
        String::new()
    } else {
        format!("AND c.webhook_url NOT IN ({})", marks(full.len()))
    };
    // PostgreSQL's one statement (lock, rank, update, return) is three here,
    // in one transaction: MariaDB has no UPDATE ... RETURNING.
    // No `FOR UPDATE OF e`: a join would lock the campaign rows too, so
    // campaigns are read in scalar subqueries, which a locking read does
    // not lock (and which, unlike a join, keep the scan in due order).
    // FORCE INDEX: the scan walks the due index and stops at the LIMIT,
    // locking as it goes; a filesort would lock every due row first.
    // Unlike PostgreSQL's, it also keeps until commit (milliseconds) the
    // locks of the rows it passed over: MariaDB does not release a row
    // read through a secondary index that the WHERE then rejects (events
    // of endpoints at their cap or of campaigns without a URL, and the
    // first row not yet due); another worker skips them meanwhile.
    // `due_at <= now` is PostgreSQL's `state = 'pending' AND
    // next_attempt_at <= now()` (due_at is NULL unless pending).
    let sql = format!(
        "SELECT e.id, e.campaign_id, e.body, e.attempts,
                (SELECT c.webhook_url FROM campaigns c WHERE c.id = e.campaign_id) AS url,
                (SELECT c.webhook_secret FROM campaigns c WHERE c.id = e.campaign_id) AS secret
         FROM webhook_events e FORCE INDEX (webhook_events_due)
         WHERE e.due_at <= UTC_TIMESTAMP(6)
           AND (SELECT c.webhook_url FROM campaigns c
                WHERE c.id = e.campaign_id {not_full}) IS NOT NULL
         ORDER BY e.due_at LIMIT ?
         FOR UPDATE SKIP LOCKED"
    );
    let mut tx = db.begin().await?;
    let mut q = sqlx::query(&sql);
    for u in &full {
        q = q.bind(*u);
    }
    let rows = q.bind(batch).fetch_all(&mut *tx).await?;
    let mut due = Vec::with_capacity(rows.len());
    for r in &rows {
        due.push(DueEvent {
            id: r.try_get(0)?,
            campaign_id: r.try_get(1)?,
            body: text(r, 2)?,
            attempts: r.try_get(3)?,
            url: text(r, 4)?,
            // The schema's CHECK: a campaign with a URL has a secret.
            secret: opt_text(r, 5)?
                .ok_or_else(|| StoreError::Corrupt("webhook_url without webhook_secret".into()))?,
        });
    }
    // PostgreSQL's `row_number() OVER (PARTITION BY url ORDER BY id) +
    // busy <= per_endpoint`, here in Rust: per URL, the lowest ids first.
    let in_flight: HashMap<&str, i64> = busy.iter().map(|(u, n)| (u.as_str(), *n)).collect();
    let mut by_url: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, e) in due.iter().enumerate() {
        by_url.entry(e.url.as_str()).or_default().push(i);
    }
    let mut keep = vec![false; due.len()];
    for (url, mut idx) in by_url {
        idx.sort_by_key(|&i| due[i].id);
        let room = per_endpoint - in_flight.get(url).copied().unwrap_or(0);
        for (rank, i) in idx.into_iter().enumerate() {
            keep[i] = (rank as i64) < room;
        }
    }
    let mut claimed: Vec<DueEvent> = due
        .into_iter()
        .zip(keep)
        .filter_map(|(e, k)| k.then_some(e))
        .collect();
    if !claimed.is_empty() {
        let sql = format!(
            "UPDATE webhook_events
             SET attempts = attempts + 1,
                 next_attempt_at = DATE_ADD(UTC_TIMESTAMP(6), INTERVAL ? MICROSECOND)
             WHERE id IN ({})",
            marks(claimed.len())
        );
        let mut q = sqlx::query(&sql).bind(micros(lease));
        for e in &claimed {
            q = q.bind(e.id);
        }
        q.execute(&mut *tx).await?;
        // The rows are locked since the SELECT: their attempts are what it
        // read, plus this one.
        for e in &mut claimed {
            e.attempts += 1;
        }
    }
    // Commits even when nothing was claimed: it releases the rows locked
    // but left to the next round (over their endpoint's cap).
    tx.commit().await?;
    Ok(claimed)
}

/// Records a 2xx answer.
pub async fn event_delivered(db: &MySqlPool, id: i64, status: u16) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE webhook_events
         SET state = 'delivered', delivered_at = UTC_TIMESTAMP(6), last_status = ?, last_error = NULL
         WHERE id = ? AND state = 'pending'",
    )
    .bind(i32::from(status))
    .bind(id)
    .execute(db)
    .await?;
    Ok(())
}

/// Records a failed attempt: the event is due again in `retry_in`, or
/// dead when it has been pending at least `dead_after`. Returns whether it
/// is now dead.
pub async fn event_failed(
    db: &MySqlPool,
    id: i64,
    status: Option<u16>,
    error: &str,
    retry_in: Duration,
    dead_after: Duration,
) -> Result<bool, StoreError> {
    let mut cut = error.len().min(TEXT_MAX_BYTES);
    while !error.is_char_boundary(cut) {
        cut -= 1;
    }
    // No UPDATE ... RETURNING: the update, then its row read back in the
    // same transaction (the update's lock keeps it as written).
    let mut tx = db.begin().await?;
    let updated = sqlx::query(
        "UPDATE webhook_events
         SET last_status = ?, last_error = ?,
             next_attempt_at = DATE_ADD(UTC_TIMESTAMP(6), INTERVAL ? MICROSECOND),
             state = CASE WHEN DATE_ADD(pending_since, INTERVAL ? MICROSECOND) <= UTC_TIMESTAMP(6)
                          THEN 'dead' ELSE 'pending' END
         WHERE id = ? AND state = 'pending'",
    )
    .bind(status.map(i32::from))
    .bind(&error[..cut])
    .bind(micros(retry_in))
    .bind(micros(dead_after))
    .bind(id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    // sqlx connects with CLIENT_FOUND_ROWS: rows matched, changed or not.
    if updated == 0 {
        tx.commit().await?;
        return Ok(false);
    }
    let row = sqlx::query("SELECT state FROM webhook_events WHERE id = ?")
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
    let state = text(&row, 0)?;
    tx.commit().await?;
    Ok(state == "dead")
}

/// The columns of [`WebhookEventRow`], in [`event_row`]'s order (the
/// `evt_` id is built in Rust, as [`event_webhook_id`] builds it).
const EVENT_COLUMNS: &str = "id, type, state, attempts, last_status, last_error,
    next_attempt_at, delivered_at, created_at, body";

/// A row of [`EVENT_COLUMNS`] as the admin lists it.
fn event_row(r: &sqlx::mysql::MySqlRow) -> Result<WebhookEventRow, StoreError> {
    Ok(WebhookEventRow {
        id: event_webhook_id(r.try_get(0)?),
        kind: text(r, 1)?,
        state: text(r, 2)?,
        attempts: r.try_get(3)?,
        last_status: r.try_get(4)?,
        last_error: opt_text(r, 5)?,
        next_attempt_at: r.try_get(6)?,
        delivered_at: r.try_get(7)?,
        created_at: r.try_get(8)?,
        body: text(r, 9)?,
    })
}

/// A page of a campaign's events in id order after outbox id `after`, of
/// one state if given.
pub async fn webhook_events_page(
    db: &MySqlPool,
    campaign: CampaignId,
    state: Option<&str>,
    after: i64,
    limit: i64,
) -> Result<Vec<WebhookEventRow>, StoreError> {
    // PostgreSQL's `($2 IS NULL OR state = $2)`, as two statements: each
    // then walks (campaign_id, state, id) or (campaign_id, ...) directly.
    let by_state = if state.is_some() { "AND state = ?" } else { "" };
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM webhook_events
         WHERE campaign_id = ? {by_state} AND id > ?
         ORDER BY id LIMIT ?"
    );
    let mut q = sqlx::query(&sql).bind(campaign.0);
    if let Some(s) = state {
        q = q.bind(s);
    }
    let rows = q.bind(after).bind(limit).fetch_all(db).await?;
    rows.iter().map(event_row).collect()
}

/// Puts a campaign's delivered or dead event back to pending, due now,
/// its dead-letter clock restarted; a pending one is left as it is (it
/// may be in flight: making it due now could send it twice at once).
/// `None` when the campaign has no such event.
pub async fn redeliver_event(
    db: &MySqlPool,
    campaign: CampaignId,
    id: i64,
) -> Result<Option<WebhookEventRow>, StoreError> {
    // PostgreSQL's one statement (UPDATE ... RETURNING, UNION ALL the
    // pending row) is three here: the row locked and read, updated unless
    // pending, read back. The lock makes the answer the row as it stands
    // (PostgreSQL's reads its snapshot); it is held only for these
    // statements, and a pending row is locked though not changed.
    let mut tx = db.begin().await?;
    let Some(row) =
        sqlx::query("SELECT state FROM webhook_events WHERE id = ? AND campaign_id = ? FOR UPDATE")
            .bind(id)
            .bind(campaign.0)
            .fetch_optional(&mut *tx)
            .await?
    else {
        tx.commit().await?;
        return Ok(None);
    };
    if text(&row, 0)? != "pending" {
        sqlx::query(
            "UPDATE webhook_events
             SET state = 'pending', next_attempt_at = UTC_TIMESTAMP(6),
                 pending_since = UTC_TIMESTAMP(6), delivered_at = NULL
             WHERE id = ?",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
    }
    let sql = format!("SELECT {EVENT_COLUMNS} FROM webhook_events WHERE id = ?");
    let row = sqlx::query(&sql).bind(id).fetch_one(&mut *tx).await?;
    let event = event_row(&row)?;
    tx.commit().await?;
    Ok(Some(event))
}

/// Pending events and the age in seconds of the oldest (0 without any).
pub async fn webhook_lag(db: &MySqlPool) -> Result<(i64, f64), StoreError> {
    // `due_at IS NOT NULL` is `state = 'pending'` (the due index holds
    // exactly the pending rows, as PostgreSQL's partial index does);
    // `extract(epoch ...)` is TIMESTAMPDIFF in microseconds.
    let row = sqlx::query(
        "SELECT COUNT(*),
                CAST(COALESCE(TIMESTAMPDIFF(MICROSECOND, MIN(created_at), UTC_TIMESTAMP(6)) / 1e6, 0)
                     AS DOUBLE)
         FROM webhook_events WHERE due_at IS NOT NULL",
    )
    .fetch_one(db)
    .await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}
