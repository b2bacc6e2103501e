//! Confirmations on MySQL/MariaDB: grants to confirm before a deadline
//! (`confirm_within_secs`), and the sweep of those not confirmed in time.
//! The twin of `storage::pg::confirmations`.

use chrono::{DateTime, Utc};
use sqlx::{MySqlPool, Row};

use super::text::{opt_text, text};
use crate::domain::{CampaignId, UserId};
use crate::storage::error::StoreError;
use crate::storage::pg::{Confirmation, Expired};

/// The confirmation state of the user's latest grant, if it has one.
pub async fn confirmation_state(
    db: &MySqlPool,
    campaign: CampaignId,
    user: &UserId,
) -> Result<Option<Confirmation>, StoreError> {
    let row = sqlx::query(
        "SELECT state, confirm_by, confirmed_at FROM grants
         WHERE campaign_id = ? AND user_id = ? AND state <> 'void'
         ORDER BY (state = 'active') DESC, id DESC LIMIT 1",
    )
    .bind(campaign.0)
    .bind(user.as_str())
    .fetch_optional(db)
    .await?;
    let Some(r) = row else { return Ok(None) };
    let state = text(&r, 0)?;
    let by: Option<DateTime<Utc>> = r.try_get(1)?;
    let at: Option<DateTime<Utc>> = r.try_get(2)?;
    Ok(match (state.as_str(), by, at) {
        ("expired", _, _) => Some(Confirmation::Expired),
        ("active", Some(_), Some(_)) => Some(Confirmation::Confirmed),
        ("active", Some(by), None) => Some(Confirmation::Pending(by)),
        _ => None,
    })
}

/// Confirms the user's held grant; `true` when this call confirmed it.
pub async fn confirm(
    db: &MySqlPool,
    campaign: CampaignId,
    user: &UserId,
) -> Result<bool, StoreError> {
    // Matched = changed here (confirmed_at goes from NULL to a time), so
    // rows_affected means the same with or without CLIENT_FOUND_ROWS.
    let r = sqlx::query(
        "UPDATE grants SET confirmed_at = UTC_TIMESTAMP(6)
         WHERE campaign_id = ? AND user_id = ? AND state = 'active'
           AND confirmed_at IS NULL AND confirm_by > UTC_TIMESTAMP(6)",
    )
    .bind(campaign.0)
    .bind(user.as_str())
    .execute(db)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Expires up to `limit` holds past their deadline, in one transaction.
/// For the db-* modes the pool counter and free slots are fixed in the same
/// transaction; the Redis modes mirror the release afterwards.
pub async fn expire_due(db: &MySqlPool, limit: i64) -> Result<Vec<Expired>, StoreError> {
    let mut tx = db.begin().await?;
    // PostgreSQL's one statement (lock the due holds, update them joined
    // with their campaign, return them) is two here: MariaDB has no
    // UPDATE ... RETURNING. `hold_due < now` is `state = 'active' AND
    // confirmed_at IS NULL AND confirm_by < now()` (hold_due is NULL
    // otherwise). The campaign's mode comes from a scalar subquery, which
    // the locking read does not lock (PostgreSQL's UPDATE ... FROM
    // campaigns does not lock it either); FORCE INDEX keeps the scan in
    // deadline order, locking only the rows up to the LIMIT.
    let rows = sqlx::query(
        "SELECT g.id, g.campaign_id,
                (SELECT c.mode FROM campaigns c WHERE c.id = g.campaign_id) AS mode,
                g.pool_id, g.user_id, g.slot, g.code
         FROM grants g FORCE INDEX (grants_hold_due)
         WHERE g.hold_due < UTC_TIMESTAMP(6)
         ORDER BY g.hold_due LIMIT ?
         FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    let mut due: Vec<(i64, Expired)> = Vec::with_capacity(rows.len());
    for r in &rows {
        // A grant whose campaign is gone (grants have no foreign key) is
        // left alone, as PostgreSQL's join with campaigns leaves it.
        let Some(mode) = opt_text(r, 2)? else {
            continue;
        };
        due.push((
            r.try_get(0)?,
            Expired {
                campaign_id: r.try_get(1)?,
                mode: mode.parse().map_err(StoreError::Corrupt)?,
                pool_id: r.try_get(3)?,
                user_id: text(r, 4)?,
                slot: r.try_get(5)?,
                code: text(r, 6)?,
            },
        ));
    }
    if !due.is_empty() {
        let sql = format!(
            "UPDATE grants SET state = 'expired', released_at = UTC_TIMESTAMP(6)
             WHERE id IN ({})",
            vec!["?"; due.len()].join(", ")
        );
        let mut q = sqlx::query(&sql);
        for (id, _) in &due {
            q = q.bind(*id);
        }
        q.execute(&mut *tx).await?;
    }
    let mut out = Vec::with_capacity(due.len());
    for (_, e) in due {
        if !e.mode.uses_redis() {
            super::db_modes::give_back(&mut tx, e.pool_id, e.slot).await?;
        }
        out.push(e);
    }
    tx.commit().await?;
    Ok(out)
}
