//! The confirmation sweeper: releases grants whose confirmation deadline
//! passed (campaigns with `confirm_within_secs`; seed 004's compensation for
//! unpaid seats), and mirrors the release in Redis for the Redis modes so
//! the slot goes back to the door. ("Hold" means one thing in the code:
//! `hold_secs`, how long after closing grants may still be cancelled; the
//! API's `hold` field of an answer, shipped under that name, reports the
//! confirmation.)

use std::time::Duration;

use tokio::sync::watch;

use crate::{
    domain::{CampaignId, UserId},
    modes::redis_common::RedisCommon,
};

/// How often the sweeper looks for grants past their confirmation deadline.
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(500);

/// Most unconfirmed grants released per transaction.
pub const SWEEP_BATCH: i64 = 500;

/// Runs until shutdown.
pub async fn run(common: RedisCommon, mut shutdown: watch::Receiver<bool>) {
    while !*shutdown.borrow() {
        match sweep_once(&common).await {
            Ok(n) if n as i64 >= SWEEP_BATCH => continue,
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "hold sweeper failed; will retry"),
        }
        let _ = tokio::time::timeout(SWEEP_INTERVAL, shutdown.changed()).await;
    }
}

/// Expires one batch; returns how many holds were released.
pub async fn sweep_once(common: &RedisCommon) -> anyhow::Result<usize> {
    let expired = common.db.expire_due(SWEEP_BATCH).await?;
    for e in &expired {
        metrics::counter!("firstcome_holds_expired_total", "mode" => e.mode.as_str()).increment(1);
        if !e.mode.uses_redis() {
            continue;
        }
        let Some(c) = common.db.load_campaign(CampaignId(e.campaign_id)).await? else {
            continue;
        };
        let Some(pidx) = c.pool_index_of(e.pool_id) else {
            continue;
        };
        let user = UserId::parse(e.user_id.clone())?;
        // PostgreSQL already says expired; Redis follows. If Redis is
        // unreachable now, the reconciler repairs the answer and the stock.
        if let Err(err) = common.mirror_release(&c, &user, pidx as i32, &e.code).await {
            tracing::warn!(error = %err, campaign = e.campaign_id, "could not mirror an expired hold in redis");
        }
    }
    Ok(expired.len())
}
