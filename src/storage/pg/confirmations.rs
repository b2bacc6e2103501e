//! Confirmations: grants to confirm before a deadline (`confirm_within_secs`),
//! and the sweep of those not confirmed in time.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};

use crate::domain::{CampaignId, Mode, UserId};
use crate::storage::error::StoreError;

/// Where a grant to confirm stands (campaigns with `confirm_within_secs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirmation {
    /// Waiting for confirmation until the instant given.
    Pending(DateTime<Utc>),
    /// Confirmed: the grant is final.
    Confirmed,
    /// Not confirmed in time: released, slot back to stock.
    Expired,
}

/// The confirmation state of the user's latest grant, if it has one.
pub async fn confirmation_state(
    db: &PgPool,
    campaign: CampaignId,
    user: &UserId,
) -> Result<Option<Confirmation>, StoreError> {
    let row = sqlx::query(
        "SELECT state, confirm_by, confirmed_at FROM grants
         WHERE campaign_id = $1 AND user_id = $2 AND state <> 'void'
         ORDER BY (state = 'active') DESC, id DESC LIMIT 1",
    )
    .bind(campaign.0)
    .bind(user.as_str())
    .fetch_optional(db)
    .await?;
    let Some(r) = row else { return Ok(None) };
    let state: String = r.get("state");
    let by: Option<DateTime<Utc>> = r.get("confirm_by");
    let at: Option<DateTime<Utc>> = r.get("confirmed_at");
    Ok(match (state.as_str(), by, at) {
        ("expired", _, _) => Some(Confirmation::Expired),
        ("active", Some(_), Some(_)) => Some(Confirmation::Confirmed),
        ("active", Some(by), None) => Some(Confirmation::Pending(by)),
        _ => None,
    })
}

/// Confirms the user's held grant; `true` when this call confirmed it.
pub async fn confirm(db: &PgPool, campaign: CampaignId, user: &UserId) -> Result<bool, StoreError> {
    let r = sqlx::query(
        "UPDATE grants SET confirmed_at = now()
         WHERE campaign_id = $1 AND user_id = $2 AND state = 'active'
           AND confirmed_at IS NULL AND confirm_by > now()",
    )
    .bind(campaign.0)
    .bind(user.as_str())
    .execute(db)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// A hold the sweeper released.
#[derive(Debug, Clone)]
pub struct Expired {
    /// Campaign.
    pub campaign_id: i64,
    /// Campaign mode.
    pub mode: Mode,
    /// Pool.
    pub pool_id: i64,
    /// User.
    pub user_id: String,
    /// Released slot.
    pub slot: i32,
    /// Released code.
    pub code: String,
}

/// Expires up to `limit` holds past their deadline, in one transaction.
/// For the db-* modes the pool counter and free slots are fixed in the same
/// transaction; the Redis modes mirror the release afterwards.
pub async fn expire_due(db: &PgPool, limit: i64) -> Result<Vec<Expired>, StoreError> {
    let mut tx = db.begin().await?;
    let rows = sqlx::query(
        "WITH due AS (
             SELECT id FROM grants
             WHERE state = 'active' AND confirmed_at IS NULL AND confirm_by < now()
             ORDER BY confirm_by LIMIT $1 FOR UPDATE SKIP LOCKED)
         UPDATE grants g SET state = 'expired', released_at = now()
         FROM due, campaigns c
         WHERE g.id = due.id AND c.id = g.campaign_id
         RETURNING g.campaign_id, c.mode, g.pool_id, g.user_id, g.slot, g.code",
    )
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let mode: String = r.get("mode");
        let e = Expired {
            campaign_id: r.get("campaign_id"),
            mode: mode.parse().map_err(StoreError::Corrupt)?,
            pool_id: r.get("pool_id"),
            user_id: r.get("user_id"),
            slot: r.get("slot"),
            code: r.get("code"),
        };
        if !e.mode.uses_redis() {
            super::db_modes::give_back(&mut tx, e.pool_id, e.slot).await?;
        }
        out.push(e);
    }
    tx.commit().await?;
    Ok(out)
}
