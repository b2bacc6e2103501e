//! The redis-lua flusher: writes the outbox (grants, refusals, cancellations)
//! to PostgreSQL in batches, in stream order, fenced by the state's generation, idempotently (the coupon code is the idempotency key), and
//! lets the stream loop acknowledge only after the commit.

use crate::storage::redis::stream::Entry;
use crate::{
    domain::{Campaign, UserId},
    modes::redis_common::{Batches, RedisCommon},
    storage::{
        pg::{NewGrant, NewRejection},
        Store,
    },
};

/// Flushes one campaign's outbox.
pub struct Flusher {
    /// Where grants become durable.
    pub db: Store,
    /// The campaign.
    pub campaign: Campaign,
    /// Redis, to rebuild the state if it is lost.
    pub common: RedisCommon,
}

impl Flusher {
    /// A sharded pool's cancels hold their slot back until they are durable
    /// (cancel.lua): now that they are, the slots go back to their shard and
    /// are published. A failure leaves the batch pending; it is delivered
    /// again, and `returned.lua` gives each cancel back once.
    async fn give_back_cancelled(&self, entries: &[Entry], gen_now: i64) -> anyhow::Result<()> {
        for e in entries {
            if e.get("op") != "c" || e.get("sl").is_empty() {
                continue;
            }
            let gen: i64 = e.get("g").parse().unwrap_or(0);
            if gen != gen_now {
                continue;
            }
            let (pidx, slot): (usize, i32) = (e.get("p").parse()?, e.get("sl").parse()?);
            let user = UserId::parse(e.get("u").to_string())?;
            let k = self.common.keys_for(&self.campaign, &user);
            // Published even when this delivery did not give it back (a
            // redelivery after a failed publish): the unit must not stay
            // behind the other shards' sold-out marks.
            self.common
                .redis
                .returned(&k, pidx, slot, gen, e.get("c"))
                .await?;
            self.common
                .publish_returned(&self.campaign, pidx, k.shard)
                .await?;
        }
        Ok(())
    }
}

impl Batches for Flusher {
    async fn handle(&mut self, entries: &[Entry]) -> anyhow::Result<()> {
        let mut tx = self.db.begin().await?;
        let locked = tx.lock_generations(&[self.campaign.id.0]).await?;
        // Under the lock the generation cannot move: entries of an older one
        // were decided in a state a rebuild replaced and must not land (the
        // rebuilt state may have handed their slots out again). They are the
        // mode's exposure, counted.
        let gen_now = locked
            .first()
            .map(|(_, g)| *g)
            .ok_or_else(|| anyhow::anyhow!("campaign {} is gone", self.campaign.id))?;
        let mut grants: Vec<NewGrant> = Vec::new();
        let mut refusals: Vec<NewRejection> = Vec::new();
        let mut expected = 0usize;
        let mut inserted = 0usize;
        let mut stale = 0usize;
        let mut all_codes = Vec::new();
        let any = |n: usize| vec![gen_now; n];
        for e in entries {
            if e.get("g").parse::<i64>().unwrap_or(0) != gen_now {
                stale += 1;
                continue;
            }
            match e.get("op") {
                "g" => {
                    let Some(pool) = e
                        .get("p")
                        .parse::<i32>()
                        .ok()
                        .and_then(|i| self.campaign.pool_at(i))
                    else {
                        tracing::error!(entry = %e.id, "outbox entry with unknown pool");
                        continue;
                    };
                    grants.push(NewGrant {
                        campaign_id: self.campaign.id.0,
                        pool_id: pool.id,
                        user_id: e.get("u").to_string(),
                        slot: e.get("sl").parse()?,
                        code: e.get("c").to_string(),
                        seq: e.get("s").parse()?,
                    });
                }
                "r" => refusals.push(NewRejection {
                    campaign_id: self.campaign.id.0,
                    user_id: e.get("u").to_string(),
                    seq: e.get("s").parse()?,
                }),
                "c" => {
                    // The grant it cancels comes earlier in the stream: write
                    // what is buffered first, so a reused slot never meets
                    // the still-active grant that held it.
                    expected += grants.len();
                    all_codes.extend(grants.iter().map(|g| g.code.clone()));
                    inserted += tx
                        .insert_grants_in(&grants, &any(grants.len()))
                        .await?
                        .len();
                    grants.clear();
                    tx.cancel_by_code(e.get("c")).await?;
                }
                other => tracing::error!(entry = %e.id, op = other, "unknown outbox op"),
            }
        }
        expected += grants.len();
        all_codes.extend(grants.iter().map(|g| g.code.clone()));
        inserted += tx
            .insert_grants_in(&grants, &any(grants.len()))
            .await?
            .len();
        tx.insert_rejections_in(&refusals, &any(refusals.len()))
            .await?;
        tx.commit().await?;
        self.give_back_cancelled(entries, gen_now).await?;
        if stale > 0 {
            tracing::error!(stale, campaign = %self.campaign.id, "flush: outbox entries of a replaced redis state dropped");
            metrics::counter!("firstcome_flush_stale_total").increment(stale as u64);
            // If that older state is still the one loaded (a rebuilder that
            // lost its lock loaded it), it must go: it tells answers that
            // can no longer become durable.
            let mut gens: Vec<i64> = entries
                .iter()
                .filter_map(|e| e.get("g").parse::<i64>().ok())
                .filter(|g| *g != gen_now)
                .collect();
            gens.sort_unstable();
            gens.dedup();
            for g in gens {
                self.common.drop_stale(&self.campaign, g).await?;
            }
        }
        if inserted < expected {
            // Either a redelivery (the codes are there) or a real conflict:
            // an acknowledged grant PostgreSQL refused. Count the latter.
            let present = self.db.existing_codes(&all_codes).await?.len();
            let lost = all_codes.len().saturating_sub(present);
            if lost > 0 {
                tracing::error!(lost, campaign = %self.campaign.id, "flush: grants refused by unique indexes");
                metrics::counter!("firstcome_flush_conflicts_total").increment(lost as u64);
            }
        }
        let now = chrono::Utc::now().timestamp_millis();
        for e in entries {
            let lag = (now - e.appended_ms()).max(0) as f64 / 1000.0;
            metrics::histogram!("firstcome_flush_lag_seconds").record(lag);
        }
        metrics::counter!("firstcome_flushed_total").increment(expected as u64);
        Ok(())
    }
}
