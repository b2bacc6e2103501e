//! Campaigns and pools in MySQL/MariaDB, the twin of
//! `storage::pg::campaigns`: creation, loading, the live list, active
//! counts.

use sqlx::{MySqlPool, Row};

use super::operator::record_action;
use super::text::{opt_text, text};
use crate::domain::{draw::DrawSeed, Campaign, CampaignId, Mode, NewCampaign, Pool, PoolName};
use crate::storage::error::StoreError;
use crate::storage::pg::{Action, CampaignLine};

/// Inserts a campaign and its pools in one transaction, with the log of
/// the operator action (`actor`); unless `published`, only the admin sees
/// it until [`publish_campaign`].
pub async fn create_campaign(
    db: &MySqlPool,
    new: &NewCampaign,
    published: bool,
    actor: &str,
) -> Result<Campaign, StoreError> {
    let mut tx = db.begin().await?;
    // No RETURNING needed: the id is the statement's LAST_INSERT_ID (the
    // OK packet's), which MySQL has too.
    let done = sqlx::query(
        "INSERT INTO campaigns (name, mode, per_user_limit, opens_at, closes_at, hold_secs, confirm_within_secs, published, shards, prequeue_secs, draw_seed, webhook_url, webhook_secret)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&new.name)
    .bind(new.mode.as_str())
    .bind(new.per_user_limit)
    .bind(new.opens_at.map(|t| t.naive_utc()))
    .bind(new.closes_at.map(|t| t.naive_utc()))
    .bind(new.hold_secs)
    .bind(new.confirm_within_secs)
    .bind(published)
    .bind(i32::from(new.shards))
    .bind(new.prequeue_secs)
    // The seed is drawn here, once: a campaign's draw can never be re-rolled.
    .bind(new.prequeue_secs.map(|_| DrawSeed::generate().0.to_vec()))
    .bind(new.webhook.as_ref().map(|w| w.url.as_str()))
    .bind(new.webhook.as_ref().map(|w| w.secret.as_str()))
    .execute(&mut *tx)
    .await?;
    let id = i64::try_from(done.last_insert_id())
        .map_err(|e| StoreError::Corrupt(format!("campaign id: {e}")))?;
    // No UNNEST of arrays: one multi-row VALUES, the pools in their order.
    if !new.pools.is_empty() {
        let rows = vec!["(?, ?, ?, ?)"; new.pools.len()].join(", ");
        let sql = format!("INSERT INTO pools (campaign_id, idx, name, stock) VALUES {rows}");
        let mut q = sqlx::query(&sql);
        for (idx, p) in (0i32..).zip(&new.pools) {
            q = q.bind(id).bind(idx).bind(p.name.as_str()).bind(p.stock);
        }
        q.execute(&mut *tx).await?;
    }
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
pub async fn load_campaign(db: &MySqlPool, id: CampaignId) -> Result<Option<Campaign>, StoreError> {
    load_campaign_seen_by(db, id, true).await
}

/// Loads a campaign with its pools as the public (`admin` false) or the
/// admin sees it: `None` when it does not exist, or, for the public, is
/// not published; either way after the same one query, so an unpublished
/// campaign costs what an unknown id does.
pub async fn load_campaign_seen_by(
    db: &MySqlPool,
    id: CampaignId,
    admin: bool,
) -> Result<Option<Campaign>, StoreError> {
    let Some(row) = sqlx::query(
        "SELECT id, name, mode, per_user_limit, opens_at, closes_at, hold_secs, created_at, confirm_within_secs, published, shards,
                prequeue_secs, draw_seed, webhook_url, paused
         FROM campaigns WHERE id = ? AND (published OR ?)",
    )
    .bind(id.0)
    .bind(admin)
    .fetch_optional(db)
    .await?
    else {
        return Ok(None);
    };
    // Text columns are binary-collated: read by position, as bytes
    // (`text`, `opt_text`).
    let pools =
        sqlx::query("SELECT id, idx, name, stock FROM pools WHERE campaign_id = ? ORDER BY idx")
            .bind(id.0)
            .fetch_all(db)
            .await?
            .into_iter()
            .map(|r| -> Result<Pool, StoreError> {
                Ok(Pool {
                    id: r.try_get(0)?,
                    idx: r.try_get(1)?,
                    name: PoolName::parse(text(&r, 2)?)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    stock: r.try_get(3)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
    let mode = text(&row, 2)?;
    Ok(Some(Campaign {
        id,
        name: text(&row, 1)?,
        mode: mode.parse().map_err(StoreError::Corrupt)?,
        per_user_limit: row.try_get(3)?,
        opens_at: row.try_get(4)?,
        closes_at: row.try_get(5)?,
        hold_secs: row.try_get(6)?,
        created_at: row.try_get(7)?,
        confirm_within_secs: row.try_get(8)?,
        shards: u16::try_from(row.try_get::<i32, _>(10)?)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        pools,
        published: row.try_get(9)?,
        prequeue_secs: row.try_get(11)?,
        draw_seed: match row.try_get::<Option<Vec<u8>>, _>(12)? {
            Some(b) => Some(
                DrawSeed::from_slice(&b).ok_or_else(|| StoreError::Corrupt("draw_seed".into()))?,
            ),
            None => None,
        },
        webhook_url: opt_text(&row, 13)?,
        paused: row.try_get(14)?,
    }))
}

/// Publishes a campaign and logs the action (`actor`); `false` when no
/// campaign has this id. Idempotent (an already published campaign is
/// neither changed nor logged again).
pub async fn publish_campaign(
    db: &MySqlPool,
    id: CampaignId,
    actor: &str,
) -> Result<bool, StoreError> {
    let mut tx = db.begin().await?;
    // No FOR NO KEY UPDATE in InnoDB: FOR UPDATE, which also waits for the
    // db-* claims holding the row's S lock (the gate, see
    // `operator::claim_gate`) and holds the next ones until it commits.
    let Some(before): Option<bool> =
        sqlx::query_scalar("SELECT published FROM campaigns WHERE id = ? FOR UPDATE")
            .bind(id.0)
            .fetch_optional(&mut *tx)
            .await?
    else {
        return Ok(false);
    };
    if !before {
        sqlx::query("UPDATE campaigns SET published = TRUE WHERE id = ?")
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
pub async fn live_campaigns(db: &MySqlPool, modes: &[Mode]) -> Result<Vec<CampaignId>, StoreError> {
    // No arrays: `IN (?, ...)`, and no statement for no modes (`IN ()` is
    // a syntax error; PostgreSQL's `= ANY('{}')` matches nothing).
    if modes.is_empty() {
        return Ok(Vec::new());
    }
    let marks = vec!["?"; modes.len()].join(", ");
    // No make_interval: INTERVAL n SECOND.
    let sql = format!(
        "SELECT id FROM campaigns
         WHERE mode IN ({marks})
           AND (closes_at IS NULL
                OR closes_at + INTERVAL hold_secs SECOND + INTERVAL ? SECOND > UTC_TIMESTAMP(6))
         ORDER BY id"
    );
    let mut q = sqlx::query(&sql);
    for m in modes {
        q = q.bind(m.as_str());
    }
    let rows = q.bind(crate::domain::KEY_GRACE_SECS).fetch_all(db).await?;
    rows.into_iter()
        .map(|r| -> Result<CampaignId, StoreError> { Ok(CampaignId(r.try_get(0)?)) })
        .collect()
}

/// Active grants per pool id.
pub async fn active_counts(
    db: &MySqlPool,
    campaign: CampaignId,
) -> Result<Vec<(i64, i64)>, StoreError> {
    // `active_user` is NULL unless active: the unique key (campaign_id,
    // active_user) is PostgreSQL's partial index here.
    let rows = sqlx::query(
        "SELECT pool_id, COUNT(*) FROM grants
         WHERE campaign_id = ? AND active_user IS NOT NULL GROUP BY pool_id",
    )
    .bind(campaign.0)
    .fetch_all(db)
    .await?;
    rows.into_iter()
        .map(|r| -> Result<(i64, i64), StoreError> { Ok((r.try_get(0)?, r.try_get(1)?)) })
        .collect()
}

/// Active grants per pool id of a campaign.
pub async fn active_per_pool(
    db: &MySqlPool,
    campaign: CampaignId,
) -> Result<std::collections::HashMap<i64, i64>, StoreError> {
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT pool_id, COUNT(*) FROM grants
         WHERE campaign_id = ? AND active_user IS NOT NULL GROUP BY pool_id",
    )
    .bind(campaign.0)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Up to `limit` campaigns, newest first, with ids below `before` if given.
pub async fn list_campaigns(
    db: &MySqlPool,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<CampaignLine>, StoreError> {
    // Two statements rather than `? IS NULL OR id < ?`: each is a plain
    // range of the primary key, read backwards (a prepared statement's
    // plan cannot drop the OR).
    let rows = match before {
        Some(b) => {
            sqlx::query(
                "SELECT id, name, mode, published, paused, opens_at, closes_at, created_at
                 FROM campaigns WHERE id < ? ORDER BY id DESC LIMIT ?",
            )
            .bind(b)
            .bind(limit)
            .fetch_all(db)
            .await?
        }
        None => {
            sqlx::query(
                "SELECT id, name, mode, published, paused, opens_at, closes_at, created_at
                 FROM campaigns ORDER BY id DESC LIMIT ?",
            )
            .bind(limit)
            .fetch_all(db)
            .await?
        }
    };
    rows.into_iter()
        .map(|r| -> Result<CampaignLine, StoreError> {
            Ok(CampaignLine {
                id: r.try_get(0)?,
                name: text(&r, 1)?,
                mode: text(&r, 2)?,
                published: r.try_get(3)?,
                paused: r.try_get(4)?,
                opens_at: r.try_get(5)?,
                closes_at: r.try_get(6)?,
                created_at: r.try_get(7)?,
            })
        })
        .collect()
}
