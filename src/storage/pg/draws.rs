//! The fair start's draws: the list of pre-queued users in drawn order,
//! written whole once, read in pages (the drainer admits them; the admin
//! API publishes them so anyone can check the order against the seed).

use sqlx::PgPool;

use crate::domain::CampaignId;
use crate::storage::error::StoreError;

/// One pre-queued user's place.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DrawEntry {
    /// Place in drawn order, 1-based; also the claim's arrival number.
    pub rank: i64,
    /// Who.
    pub user_id: String,
    /// The pool claimed, by index.
    pub pool_idx: i32,
}

/// Rows per insert statement (PostgreSQL binds at most 65,535 parameters;
/// arrays are one parameter each, so this bounds the statement's size).
const DRAW_CHUNK: usize = 10_000;

/// Records the draw of `campaign` (users with their pool index, already
/// in drawn order) in one transaction, unless one is recorded already:
/// `false` then, and the recorded one stands (a drainer that crashed after
/// recording draws again and must find the same list).
pub async fn record_draw(
    db: &PgPool,
    campaign: CampaignId,
    ordered: &[(String, i32)],
) -> Result<bool, StoreError> {
    let mut tx = db.begin().await?;
    // One recorder at a time: the campaign row is the lock.
    sqlx::query("SELECT 1 FROM campaigns WHERE id = $1 FOR UPDATE")
        .bind(campaign.0)
        .execute(&mut *tx)
        .await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM prequeue_draws WHERE campaign_id = $1)")
            .bind(campaign.0)
            .fetch_one(&mut *tx)
            .await?;
    if exists {
        return Ok(false);
    }
    for (n, chunk) in ordered.chunks(DRAW_CHUNK).enumerate() {
        let first = (n * DRAW_CHUNK) as i64 + 1;
        let ranks: Vec<i64> = (first..first + chunk.len() as i64).collect();
        let users: Vec<&str> = chunk.iter().map(|(u, _)| u.as_str()).collect();
        let pools: Vec<i32> = chunk.iter().map(|(_, p)| *p).collect();
        sqlx::query(
            "INSERT INTO prequeue_draws (campaign_id, rank, user_id, pool_idx)
             SELECT $1, * FROM UNNEST($2::bigint[], $3::text[], $4::int[])",
        )
        .bind(campaign.0)
        .bind(&ranks)
        .bind(&users)
        .bind(&pools)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(true)
}

/// Up to `limit` entries of the recorded draw after place `after`, in
/// order; empty past the end (or when nothing is recorded).
pub async fn draw_entries(
    db: &PgPool,
    campaign: CampaignId,
    after: i64,
    limit: i64,
) -> Result<Vec<DrawEntry>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT rank, user_id, pool_idx FROM prequeue_draws
         WHERE campaign_id = $1 AND rank > $2 ORDER BY rank LIMIT $3",
    )
    .bind(campaign.0)
    .bind(after)
    .bind(limit)
    .fetch_all(db)
    .await?)
}

/// How many users the recorded draw holds (0 when none is recorded).
pub async fn draw_size(db: &PgPool, campaign: CampaignId) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT coalesce(max(rank), 0) FROM prequeue_draws WHERE campaign_id = $1",
    )
    .bind(campaign.0)
    .fetch_one(db)
    .await?)
}
