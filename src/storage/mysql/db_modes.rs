//! The statements of the database-only modes (`db-lock`, `db-atomic`) on
//! MySQL/MariaDB, run inside the claim's transaction: the pool row's lock
//! or conditional update, slot allocation, the per-user lock, arrival
//! numbers, the grant and refusal rows, and giving a cancelled slot back.
//! The twin of `storage::pg::db_modes`.

use sqlx::{MySql, Row, Transaction};

use crate::domain::{CampaignId, RejectReason, UserId};
use crate::storage::error::StoreError;
use crate::storage::pg::db_modes::GrantInsert;

/// `db-lock`: takes the pool row with `SELECT ... FOR UPDATE`; returns
/// (stock, granted).
pub async fn lock_pool(
    tx: &mut Transaction<'_, MySql>,
    pool_id: i64,
) -> Result<(i32, i32), StoreError> {
    let row = sqlx::query("SELECT stock, granted FROM pools WHERE id = ? FOR UPDATE")
        .bind(pool_id)
        .fetch_one(&mut **tx)
        .await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

/// `db-lock`: counts a grant on the locked pool row.
pub async fn count_grant(tx: &mut Transaction<'_, MySql>, pool_id: i64) -> Result<(), StoreError> {
    sqlx::query("UPDATE pools SET granted = granted + 1 WHERE id = ?")
        .bind(pool_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// `db-atomic`: takes one unit of stock with a conditional update; `true`
/// when there was one (the row stays locked until the transaction ends).
pub async fn take_unit(tx: &mut Transaction<'_, MySql>, pool_id: i64) -> Result<bool, StoreError> {
    // No UPDATE ... RETURNING: the count of rows the update matched (sqlx
    // connects with CLIENT_FOUND_ROWS; a matched row is also a changed one
    // here, granted + 1 never equals granted), so 1 = taken.
    let r = sqlx::query("UPDATE pools SET granted = granted + 1 WHERE id = ? AND granted < stock")
        .bind(pool_id)
        .execute(&mut **tx)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// Takes the lowest released slot of the pool, else the next new one. The
/// caller holds the pool row's lock, so nothing else allocates meanwhile.
pub async fn take_slot(tx: &mut Transaction<'_, MySql>, pool_id: i64) -> Result<i32, StoreError> {
    // MariaDB refuses a subquery on the table a DELETE deletes from (error
    // 1093): the lowest slot by ORDER BY ... LIMIT 1 instead.
    let reused = sqlx::query(
        "DELETE FROM free_slots WHERE pool_id = ? ORDER BY slot LIMIT 1 RETURNING slot",
    )
    .bind(pool_id)
    .fetch_optional(&mut **tx)
    .await?;
    if let Some(r) = reused {
        return Ok(r.try_get(0)?);
    }
    // No UPDATE ... RETURNING: the update, then the row it locked read
    // back (a transaction sees its own writes).
    sqlx::query("UPDATE pools SET next_slot = next_slot + 1 WHERE id = ?")
        .bind(pool_id)
        .execute(&mut **tx)
        .await?;
    let r = sqlx::query("SELECT next_slot - 1 FROM pools WHERE id = ?")
        .bind(pool_id)
        .fetch_one(&mut **tx)
        .await?;
    Ok(r.try_get(0)?)
}

/// Gives a cancelled or expired grant's unit and slot back to the pool
/// (the db-* modes' counters; the Redis modes' live in Redis).
pub async fn give_back(
    tx: &mut Transaction<'_, MySql>,
    pool_id: i64,
    slot: i32,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE pools SET granted = granted - 1 WHERE id = ?")
        .bind(pool_id)
        .execute(&mut **tx)
        .await?;
    sqlx::query("INSERT INTO free_slots (pool_id, slot) VALUES (?, ?)")
        .bind(pool_id)
        .bind(slot)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Serialises the claims of one user in one campaign until the
/// transaction ends.
pub async fn lock_user(
    tx: &mut Transaction<'_, MySql>,
    campaign: CampaignId,
    user: &UserId,
) -> Result<(), StoreError> {
    // No pg_advisory_xact_lock, and GET_LOCK is the session's, not the
    // transaction's (a pooled connection would keep it past a transaction
    // that ended without releasing it): the row lock of the user's bucket
    // of `user_locks` (migration 20261207000002 says why buckets), held
    // until commit or rollback. CRC32 for hashtext, on the same key.
    let locked =
        sqlx::query("SELECT bucket FROM user_locks WHERE bucket = CRC32(?) % 65536 FOR UPDATE")
            .bind(format!("{}:{}", campaign, user.as_str()))
            .fetch_optional(&mut **tx)
            .await?;
    // A missing bucket would lock nothing, silently.
    if locked.is_none() {
        return Err(StoreError::Corrupt("user_locks is missing a bucket".into()));
    }
    Ok(())
}

/// Draws an arrival number.
pub async fn next_seq(tx: &mut Transaction<'_, MySql>) -> Result<i64, StoreError> {
    // MariaDB's sequence, as PostgreSQL's: never blocks, never rolls back.
    Ok(sqlx::query("SELECT NEXTVAL(claim_seq)")
        .fetch_one(&mut **tx)
        .await?
        .try_get(0)?)
}

/// Inserts a winner's grant.
pub async fn insert_grant(
    tx: &mut Transaction<'_, MySql>,
    g: &GrantInsert<'_>,
) -> Result<(), StoreError> {
    // `now() + make_interval(secs => x)`: DATE_ADD by whole seconds (the
    // setting is whole seconds); NULL (no hold) stays NULL.
    sqlx::query(
        "INSERT INTO grants (campaign_id, pool_id, user_id, slot, code, seq, confirm_by)
         VALUES (?, ?, ?, ?, ?, ?, DATE_ADD(UTC_TIMESTAMP(6), INTERVAL ? SECOND))",
    )
    .bind(g.campaign.0)
    .bind(g.pool_id)
    .bind(g.user.as_str())
    .bind(g.slot)
    .bind(g.code)
    .bind(g.seq)
    .bind(g.confirm_within_secs)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Stores a sold_out refusal (the first one stays if a concurrent claim
/// stored one).
pub async fn insert_sold_out(
    tx: &mut Transaction<'_, MySql>,
    campaign: CampaignId,
    user: &UserId,
    seq: i64,
) -> Result<(), StoreError> {
    // No ON CONFLICT DO NOTHING: a no-op ON DUPLICATE KEY UPDATE (INSERT
    // IGNORE would also turn a bad value into a warning). Unlike
    // PostgreSQL's, it locks the row it finds; the caller holds the
    // user's lock, so no other claim waits on it.
    sqlx::query(
        "INSERT INTO rejections (campaign_id, user_id, reason, seq) VALUES (?, ?, ?, ?)
         ON DUPLICATE KEY UPDATE campaign_id = campaign_id",
    )
    .bind(campaign.0)
    .bind(user.as_str())
    .bind(RejectReason::SoldOut.as_str())
    .bind(seq)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
