//! Campaigns and pools: creation, loading, the live list, active counts.

use sqlx::{PgPool, Row};

use super::operator::{record_action, Action};
use crate::domain::{draw::DrawSeed, Campaign, CampaignId, Mode, NewCampaign, Pool, PoolName};
use crate::storage::error::StoreError;

/// Inserts a campaign and its pools in one transaction, with the log of
/// the operator action (`actor`); unless `published`, only the admin sees
/// it until [`publish_campaign`].
pub async fn create_campaign(
    db: &PgPool,
    new: &NewCampaign,
    published: bool,
    actor: &str,
) -> Result<Campaign, StoreError> {
    let mut tx = db.begin().await?;
    let row = sqlx::query(
        "INSERT INTO campaigns (name, mode, per_user_limit, opens_at, closes_at, hold_secs, confirm_within_secs, published, shards, prequeue_secs, draw_seed, webhook_url, webhook_secret)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING id",
    )
    .bind(&new.name)
    .bind(new.mode.as_str())
    .bind(new.per_user_limit)
    .bind(new.opens_at)
    .bind(new.closes_at)
    .bind(new.hold_secs)
    .bind(new.confirm_within_secs)
    .bind(published)
    .bind(i32::from(new.shards))
    .bind(new.prequeue_secs)
    // The seed is drawn here, once: a campaign's draw can never be re-rolled.
    .bind(new.prequeue_secs.map(|_| DrawSeed::generate().0.to_vec()))
    .bind(new.webhook.as_ref().map(|w| w.url.as_str()))
    .bind(new.webhook.as_ref().map(|w| w.secret.as_str()))
    .fetch_one(&mut *tx)
    .await?;
    let id: i64 = row.get(0);
    let names: Vec<String> = new.pools.iter().map(|p| p.name.as_str().into()).collect();
    let stocks: Vec<i32> = new.pools.iter().map(|p| p.stock).collect();
    let idxs: Vec<i32> = (0..new.pools.len() as i32).collect();
    sqlx::query(
        "INSERT INTO pools (campaign_id, idx, name, stock)
         SELECT $1, * FROM UNNEST($2::int[], $3::text[], $4::int[])",
    )
    .bind(id)
    .bind(&idxs)
    .bind(&names)
    .bind(&stocks)
    .execute(&mut *tx)
    .await?;
    let pools: Vec<serde_json::Value> = new
        .pools
        .iter()
        .map(|p| serde_json::json!({ "name": p.name.as_str(), "stock": p.stock }))
        .collect();
    let after = serde_json::json!({
        "name": new.name, "mode": new.mode.as_str(), "pools": pools,
        "opens_at": new.opens_at, "closes_at": new.closes_at,
        "published": published, "shards": new.shards,
    });
    let id = CampaignId(id);
    record_action(&mut tx, id, actor, Action::Create, None, Some(&after)).await?;
    tx.commit().await?;
    load_campaign(db, id)
        .await?
        .ok_or_else(|| StoreError::Corrupt("campaign vanished after insert".into()))
}

/// Loads a campaign with its pools; `None` when it does not exist.
pub async fn load_campaign(db: &PgPool, id: CampaignId) -> Result<Option<Campaign>, StoreError> {
    load_campaign_seen_by(db, id, true).await
}

/// Loads a campaign with its pools as the public (`admin` false) or the
/// admin sees it: `None` when it does not exist, or, for the public, is
/// not published; either way after the same one query, so an unpublished
/// campaign costs what an unknown id does.
pub async fn load_campaign_seen_by(
    db: &PgPool,
    id: CampaignId,
    admin: bool,
) -> Result<Option<Campaign>, StoreError> {
    let Some(row) = sqlx::query(
        "SELECT id, name, mode, per_user_limit, opens_at, closes_at, hold_secs, created_at, confirm_within_secs, published, shards,
                prequeue_secs, draw_seed, webhook_url, paused
         FROM campaigns WHERE id = $1 AND (published OR $2)",
    )
    .bind(id.0)
    .bind(admin)
    .fetch_optional(db)
    .await?
    else {
        return Ok(None);
    };
    let pools =
        sqlx::query("SELECT id, idx, name, stock FROM pools WHERE campaign_id = $1 ORDER BY idx")
            .bind(id.0)
            .fetch_all(db)
            .await?
            .into_iter()
            .map(|r| {
                Ok(Pool {
                    id: r.get("id"),
                    idx: r.get("idx"),
                    name: PoolName::parse(r.get::<String, _>("name"))
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    stock: r.get("stock"),
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
    let mode: String = row.get("mode");
    Ok(Some(Campaign {
        id,
        name: row.get("name"),
        mode: mode.parse().map_err(StoreError::Corrupt)?,
        per_user_limit: row.get("per_user_limit"),
        opens_at: row.get("opens_at"),
        closes_at: row.get("closes_at"),
        hold_secs: row.get("hold_secs"),
        created_at: row.get("created_at"),
        confirm_within_secs: row.get("confirm_within_secs"),
        shards: u16::try_from(row.get::<i32, _>("shards"))
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        pools,
        published: row.get("published"),
        prequeue_secs: row.get("prequeue_secs"),
        draw_seed: match row.get::<Option<Vec<u8>>, _>("draw_seed") {
            Some(b) => Some(
                DrawSeed::from_slice(&b).ok_or_else(|| StoreError::Corrupt("draw_seed".into()))?,
            ),
            None => None,
        },
        webhook_url: row.get("webhook_url"),
        paused: row.get("paused"),
    }))
}

/// Publishes a campaign and logs the action (`actor`); `false` when no
/// campaign has this id. Idempotent (an already published campaign is
/// neither changed nor logged again).
pub async fn publish_campaign(
    db: &PgPool,
    id: CampaignId,
    actor: &str,
) -> Result<bool, StoreError> {
    let mut tx = db.begin().await?;
    let Some(before): Option<bool> =
        sqlx::query_scalar("SELECT published FROM campaigns WHERE id = $1 FOR NO KEY UPDATE")
            .bind(id.0)
            .fetch_optional(&mut *tx)
            .await?
    else {
        return Ok(false);
    };
    if !before {
        sqlx::query("UPDATE campaigns SET published = true WHERE id = $1")
            .bind(id.0)
            .execute(&mut *tx)
            .await?;
        record_action(
            &mut tx,
            id,
            actor,
            Action::Publish,
            Some(&serde_json::json!({ "published": false })),
            Some(&serde_json::json!({ "published": true })),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(true)
}

/// Campaigns of the given modes whose keys may still be live: the worker
/// runs flushers and drainers for these.
pub async fn live_campaigns(db: &PgPool, modes: &[Mode]) -> Result<Vec<CampaignId>, StoreError> {
    let modes: Vec<&str> = modes.iter().map(|m| m.as_str()).collect();
    let rows = sqlx::query(
        "SELECT id FROM campaigns
         WHERE mode = ANY($1)
           AND (closes_at IS NULL
                OR closes_at + make_interval(secs => hold_secs)
                   + make_interval(secs => $2) > now())
         ORDER BY id",
    )
    .bind(&modes)
    .bind(crate::domain::KEY_GRACE_SECS as f64)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| CampaignId(r.get(0))).collect())
}

/// Active grants per pool id.
pub async fn active_counts(
    db: &PgPool,
    campaign: CampaignId,
) -> Result<Vec<(i64, i64)>, StoreError> {
    let rows = sqlx::query(
        "SELECT pool_id, count(*) FROM grants
         WHERE campaign_id = $1 AND state = 'active' GROUP BY pool_id",
    )
    .bind(campaign.0)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Active grants per pool id of a campaign.
pub async fn active_per_pool(
    db: &PgPool,
    campaign: CampaignId,
) -> Result<std::collections::HashMap<i64, i64>, StoreError> {
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT pool_id, count(*) FROM grants
         WHERE campaign_id = $1 AND state = 'active' GROUP BY pool_id",
    )
    .bind(campaign.0)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().collect())
}

/// One line of the admin's campaign list.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct CampaignLine {
    /// Id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// Admission mode.
    pub mode: String,
    /// Shown to the public.
    pub published: bool,
    /// Paused by an operator.
    pub paused: bool,
    /// Window start, if any.
    pub opens_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Window end, if any.
    pub closes_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Creation time.
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// Up to `limit` campaigns, newest first, with ids below `before` if given.
pub async fn list_campaigns(
    db: &PgPool,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<CampaignLine>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, name, mode, published, paused, opens_at, closes_at, created_at
         FROM campaigns WHERE $1::bigint IS NULL OR id < $1 ORDER BY id DESC LIMIT $2",
    )
    .bind(before)
    .bind(limit)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| CampaignLine {
            id: r.get(0),
            name: r.get(1),
            mode: r.get(2),
            published: r.get(3),
            paused: r.get(4),
            opens_at: r.get(5),
            closes_at: r.get(6),
            created_at: r.get(7),
        })
        .collect())
}
