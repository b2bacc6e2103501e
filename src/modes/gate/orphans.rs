//! Settles gate reservations whose API process died between the Redis
//! reservation and the answer: PostgreSQL decides (granted if the row was
//! committed, released once a void row makes sure it never will be), so no
//! stock stays stranded until the same user happens to ask again.

use std::time::Duration;

use chrono::Utc;
use tokio::sync::watch;

use crate::{
    domain::{Campaign, UserId},
    modes::redis_common::{RedisCommon, Stored},
};

/// How often the pending set is looked at.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Most reservations settled per sweep.
pub const SWEEP_BATCH: isize = 200;

/// Runs for one gate campaign until shutdown or its keys expire.
pub async fn run(common: RedisCommon, c: Campaign, mut shutdown: watch::Receiver<bool>) {
    while !*shutdown.borrow() && !RedisCommon::keys_expired(&c, Utc::now()) {
        let _ = tokio::time::timeout(SWEEP_INTERVAL, shutdown.changed()).await;
        match sweep_once(&common, &c).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(campaign = %c.id, settled = n, "settled orphaned gate reservations")
            }
            Err(e) => {
                tracing::debug!(error = %e, campaign = %c.id, "orphan sweep failed; will retry")
            }
        }
    }
}

/// Settles the reservations older than `orphan_after_ms`; returns how
/// many were settled.
pub async fn sweep_once(common: &RedisCommon, c: &Campaign) -> anyhow::Result<usize> {
    // Reservations carry Redis' clock: their age is measured on it, so a
    // skewed app host settles neither too early nor never. (Settling early
    // would cost liveness only: the void row fences a late commit.)
    let mut settled = 0;
    for k in common.shards(c).iter() {
        // Each shard's reservations carry its own node's clock.
        let cutoff = common.redis.now_ms(k).await? - common.orphan_after_ms;
        let users = common.redis.pending_before(k, cutoff, SWEEP_BATCH).await?;
        for u in users {
            let user = UserId::parse(u.clone())?;
            match common.stored(c, &user).await? {
                Some(s @ Stored::Pending { .. }) => {
                    common.resolve_orphan(c, &user, &s).await?;
                    metrics::counter!("firstcome_orphans_settled_total").increment(1);
                    settled += 1;
                }
                _ => {
                    // Already settled by its request: only the index entry is left.
                    common.redis.forget_pending(k, &u).await?;
                }
            }
        }
    }
    Ok(settled)
}
