//! The fair start's draws on MySQL/MariaDB: the list of pre-queued users in
//! drawn order, written whole once, read in pages. The twin of
//! `storage::pg::draws`.

use sqlx::{MySqlPool, Row};

use super::text::text;
use crate::domain::CampaignId;
use crate::storage::error::StoreError;
use crate::storage::pg::DrawEntry;

/// Rows per insert statement: four placeholders a row, and MySQL binds at
/// most 65,535 per statement (PostgreSQL's arrays were one each). The same
/// chunks as PostgreSQL's: with user ids of at most 128 bytes, under 2 MB,
/// well within MariaDB's default 16 MB packet.
const DRAW_CHUNK: usize = 10_000;

/// Records the draw of `campaign` (users with their pool index, already
/// in drawn order) in one transaction, unless one is recorded already:
/// `false` then, and the recorded one stands (a drainer that crashed after
/// recording draws again and must find the same list).
pub async fn record_draw(
    db: &MySqlPool,
    campaign: CampaignId,
    ordered: &[(String, i32)],
) -> Result<bool, StoreError> {
    let mut tx = db.begin().await?;
    // One recorder at a time: the campaign row is the lock.
    sqlx::query("SELECT 1 FROM campaigns WHERE id = ? FOR UPDATE")
        .bind(campaign.0)
        .execute(&mut *tx)
        .await?;
    // READ COMMITTED: this read sees what a recorder before us committed.
    let exists: i64 =
        sqlx::query("SELECT EXISTS (SELECT 1 FROM prequeue_draws WHERE campaign_id = ?)")
            .bind(campaign.0)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
    if exists != 0 {
        return Ok(false);
    }
    for (n, chunk) in ordered.chunks(DRAW_CHUNK).enumerate() {
        let first = (n * DRAW_CHUNK) as i64 + 1;
        // No UNNEST: one multi-row VALUES list. Not kept in the
        // connection's statement cache: each size is a statement of its own.
        let sql = format!(
            "INSERT INTO prequeue_draws (campaign_id, `rank`, user_id, pool_idx) VALUES {}",
            vec!["(?, ?, ?, ?)"; chunk.len()].join(", ")
        );
        let mut q = sqlx::query(&sql).persistent(false);
        for (i, (user, pool)) in chunk.iter().enumerate() {
            q = q
                .bind(campaign.0)
                .bind(first + i as i64)
                .bind(user.as_str())
                .bind(*pool);
        }
        q.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(true)
}

/// Up to `limit` entries of the recorded draw after place `after`, in
/// order; empty past the end (or when nothing is recorded).
pub async fn draw_entries(
    db: &MySqlPool,
    campaign: CampaignId,
    after: i64,
    limit: i64,
) -> Result<Vec<DrawEntry>, StoreError> {
    let rows = sqlx::query(
        "SELECT `rank`, user_id, pool_idx FROM prequeue_draws
         WHERE campaign_id = ? AND `rank` > ? ORDER BY `rank` LIMIT ?",
    )
    .bind(campaign.0)
    .bind(after)
    .bind(limit)
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|r| -> Result<DrawEntry, StoreError> {
            Ok(DrawEntry {
                rank: r.try_get(0)?,
                user_id: text(r, 1)?,
                pool_idx: r.try_get(2)?,
            })
        })
        .collect()
}

/// How many users the recorded draw holds (0 when none is recorded).
pub async fn draw_size(db: &MySqlPool, campaign: CampaignId) -> Result<i64, StoreError> {
    Ok(
        sqlx::query("SELECT COALESCE(MAX(`rank`), 0) FROM prequeue_draws WHERE campaign_id = ?")
            .bind(campaign.0)
            .fetch_one(db)
            .await?
            .try_get(0)?,
    )
}
