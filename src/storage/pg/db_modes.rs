//! The statements of the database-only modes (`db-lock`, `db-atomic`), run
//! inside the claim's transaction: the pool row's lock or conditional
//! update, slot allocation, the per-user advisory lock, arrival numbers,
//! the grant and refusal rows, and giving a cancelled slot back.

use sqlx::{Postgres, Row, Transaction};

use crate::domain::{CampaignId, RejectReason, UserId};
use crate::storage::error::StoreError;

/// Advisory lock class of a user's claims (db-* modes).
const USER_LOCK_CLASS: i32 = 1718;

/// `db-lock`: takes the pool row with `SELECT ... FOR UPDATE`; returns
/// (stock, granted).
pub async fn lock_pool(
    tx: &mut Transaction<'_, Postgres>,
    pool_id: i64,
) -> Result<(i32, i32), StoreError> {
    let row = sqlx::query("SELECT stock, granted FROM pools WHERE id = $1 FOR UPDATE")
        .bind(pool_id)
        .fetch_one(&mut **tx)
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// `db-lock`: counts a grant on the locked pool row.
pub async fn count_grant(
    tx: &mut Transaction<'_, Postgres>,
    pool_id: i64,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE pools SET granted = granted + 1 WHERE id = $1")
        .bind(pool_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// `db-atomic`: takes one unit of stock with a conditional update; `true`
/// when there was one (the row stays locked until the transaction ends).
pub async fn take_unit(
    tx: &mut Transaction<'_, Postgres>,
    pool_id: i64,
) -> Result<bool, StoreError> {
    Ok(sqlx::query(
        "UPDATE pools SET granted = granted + 1 WHERE id = $1 AND granted < stock RETURNING id",
    )
    .bind(pool_id)
    .fetch_optional(&mut **tx)
    .await?
    .is_some())
}

/// Takes the lowest released slot of the pool, else the next new one. The
/// caller holds the pool row's lock, so nothing else allocates meanwhile.
pub async fn take_slot(
    tx: &mut Transaction<'_, Postgres>,
    pool_id: i64,
) -> Result<i32, StoreError> {
    let reused = sqlx::query(
        "DELETE FROM free_slots WHERE pool_id = $1
           AND slot = (SELECT min(slot) FROM free_slots WHERE pool_id = $1)
         RETURNING slot",
    )
    .bind(pool_id)
    .fetch_optional(&mut **tx)
    .await?;
    if let Some(r) = reused {
        return Ok(r.get(0));
    }
    let r = sqlx::query(
        "UPDATE pools SET next_slot = next_slot + 1 WHERE id = $1 RETURNING next_slot - 1",
    )
    .bind(pool_id)
    .fetch_one(&mut **tx)
    .await?;
    Ok(r.get(0))
}

/// Gives a cancelled or expired grant's unit and slot back to the pool
/// (the db-* modes' counters; the Redis modes' live in Redis).
pub async fn give_back(
    tx: &mut Transaction<'_, Postgres>,
    pool_id: i64,
    slot: i32,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE pools SET granted = granted - 1 WHERE id = $1")
        .bind(pool_id)
        .execute(&mut **tx)
        .await?;
    sqlx::query("INSERT INTO free_slots (pool_id, slot) VALUES ($1, $2)")
        .bind(pool_id)
        .bind(slot)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Serialises the claims of one user in one campaign until the
/// transaction ends.
pub async fn lock_user(
    tx: &mut Transaction<'_, Postgres>,
    campaign: CampaignId,
    user: &UserId,
) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind(USER_LOCK_CLASS)
        .bind(format!("{}:{}", campaign, user.as_str()))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Draws an arrival number.
pub async fn next_seq(tx: &mut Transaction<'_, Postgres>) -> Result<i64, StoreError> {
    Ok(sqlx::query("SELECT nextval('claim_seq')")
        .fetch_one(&mut **tx)
        .await?
        .get(0))
}

/// A winner's grant row (the caller counts it on the pool).
pub struct GrantInsert<'a> {
    /// Campaign.
    pub campaign: CampaignId,
    /// Pool id.
    pub pool_id: i64,
    /// User.
    pub user: &'a UserId,
    /// Slot.
    pub slot: i32,
    /// Coupon code.
    pub code: &'a str,
    /// Arrival number.
    pub seq: i64,
    /// Seconds to confirm the grant in, if the campaign holds grants.
    pub confirm_within_secs: Option<i64>,
}

/// Inserts a winner's grant.
pub async fn insert_grant(
    tx: &mut Transaction<'_, Postgres>,
    g: &GrantInsert<'_>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO grants (campaign_id, pool_id, user_id, slot, code, seq, confirm_by)
         VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $7::double precision))",
    )
    .bind(g.campaign.0)
    .bind(g.pool_id)
    .bind(g.user.as_str())
    .bind(g.slot)
    .bind(g.code)
    .bind(g.seq)
    .bind(g.confirm_within_secs.map(|s| s as f64))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Stores a sold_out refusal (the first one stays if a concurrent claim
/// stored one).
pub async fn insert_sold_out(
    tx: &mut Transaction<'_, Postgres>,
    campaign: CampaignId,
    user: &UserId,
    seq: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO rejections (campaign_id, user_id, reason, seq) VALUES ($1, $2, $3, $4)
         ON CONFLICT DO NOTHING",
    )
    .bind(campaign.0)
    .bind(user.as_str())
    .bind(RejectReason::SoldOut.as_str())
    .bind(seq)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
