//! The redis-queue drainer: grants queued claims in arrival order. For each
//! batch: allocate slots in Redis (idempotent), insert the grants in one
//! transaction (idempotent on the code), then promote the answers to
//! granted. Rows that fail for good are retried, then dead-lettered, and
//! their stock is given back to the next in line.

use std::collections::HashMap;

use sqlx::PgPool;

use super::stream::{Entry, Handler};
use crate::{
    domain::{generate_code, Campaign, ClaimOutcome, UserId},
    modes::redis_common::{RedisCommon, Stored},
    storage::pg::{self, NewGrant},
};

/// Attempts before a row is dead-lettered.
pub const MAX_ATTEMPTS: u32 = 5;

/// Rows per insert transaction. A batch's chunks are inserted on separate
/// connections at once: one connection inserts ~29k grant rows/s on the
/// development machine, two ~52k (the `grant INSERT` limit of
/// `firstcome bench --scenario drain`, docs/BENCHMARKS.md).
pub const INSERT_CHUNK: usize = 500;

/// Drains one campaign's queue.
pub struct Drainer {
    /// Redis and PostgreSQL.
    pub common: RedisCommon,
    /// Source of truth.
    pub db: PgPool,
    /// The campaign.
    pub campaign: Campaign,
    /// Failed attempts per stream entry id.
    pub attempts: HashMap<String, u32>,
}

impl Handler for Drainer {
    async fn handle(&mut self, entries: &[Entry]) -> anyhow::Result<()> {
        let c = &self.campaign;
        let k = self.common.keys(c);
        // 1. Slots, in arrival order.
        let codes: Vec<String> = entries.iter().map(|_| generate_code()).collect();
        let mut keys: Vec<&str> = vec![&k.ans, &k.meta];
        for p in &k.pools {
            keys.extend([p.hw.as_str(), p.free.as_str()]);
        }
        let mut args: Vec<&str> = Vec::with_capacity(entries.len() * 2);
        for (e, code) in entries.iter().zip(&codes) {
            args.extend([e.get("u"), code.as_str()]);
        }
        let answers: Vec<String> = self
            .common
            .redis
            .eval(&self.common.redis.scripts().allocate, &keys, &args)
            .await?;
        // 2. Durable, in one transaction.
        let mut rows = Vec::new();
        let mut pending: Vec<(usize, Stored)> = Vec::new();
        for (i, a) in answers.iter().enumerate() {
            if a.is_empty() {
                continue;
            }
            let s = Stored::parse(a)?;
            if let Stored::Queued {
                pidx,
                seq,
                alloc: Some((slot, ref code)),
            } = s
            {
                let Some(pool) = c.pool_at(pidx) else {
                    continue;
                };
                rows.push(NewGrant {
                    campaign_id: c.id.0,
                    pool_id: pool.id,
                    user_id: entries[i].get("u").to_string(),
                    slot,
                    code: code.clone(),
                    seq,
                });
                pending.push((i, s));
            }
        }
        let inserted: std::collections::HashSet<String> = futures::future::try_join_all(
            rows.chunks(INSERT_CHUNK)
                .map(|chunk| pg::insert_grants(&self.db, chunk)),
        )
        .await?
        .into_iter()
        .flatten()
        .collect();
        let missing: Vec<String> = rows
            .iter()
            .filter(|r| !inserted.contains(&r.code))
            .map(|r| r.code.clone())
            .collect();
        let present: std::collections::HashSet<String> = if missing.is_empty() {
            Default::default()
        } else {
            pg::existing_codes(&self.db, &missing)
                .await?
                .into_iter()
                .collect()
        };
        // 3. Answers.
        let mut triples = Vec::new();
        for ((i, s), row) in pending.iter().zip(&rows) {
            let Stored::Queued {
                pidx,
                seq,
                alloc: Some((slot, code)),
            } = s
            else {
                continue;
            };
            let user = UserId::parse(entries[*i].get("u"))?;
            if inserted.contains(code) || present.contains(code) {
                let g = Stored::Granted {
                    pidx: *pidx,
                    slot: *slot,
                    code: code.clone(),
                    seq: *seq,
                };
                triples.push((row.user_id.clone(), s.encode(), g.encode()));
                continue;
            }
            // Refused by a unique index.
            if let Some(ClaimOutcome::Granted {
                pool,
                slot: gs,
                code: gc,
                seq: gq,
                ..
            }) = pg::grant_answer(&self.db, c, &user).await?
            {
                // The user already holds a grant: that is the answer, and
                // this allocation goes back to stock.
                let g = Stored::Granted {
                    pidx: c.pools.iter().position(|p| p.name == pool).unwrap_or(0) as i32,
                    slot: gs,
                    code: gc,
                    seq: gq,
                };
                self.common
                    .release(c, &user, s, Some(&g), Some(*slot), -1)
                    .await?;
                continue;
            }
            let n = self.attempts.entry(entries[*i].id.clone()).or_insert(0);
            *n += 1;
            if *n < MAX_ATTEMPTS {
                anyhow::bail!("grant for {user} refused by a unique index (attempt {n})");
            }
            // Dead letter: keep the claim for an operator, free its stock.
            tracing::error!(%user, entry = %entries[*i].id, "dead-lettering a queued claim");
            metrics::counter!("firstcome_dead_letters_total").increment(1);
            let dlq = k.dlq.clone();
            let (u, p, sq) = (
                entries[*i].get("u").to_string(),
                pidx.to_string(),
                seq.to_string(),
            );
            self.common
                .redis
                .run(|mut conn| async move {
                    redis::cmd("XADD")
                        .arg(&dlq)
                        .arg("*")
                        .arg("u")
                        .arg(&u)
                        .arg("p")
                        .arg(&p)
                        .arg("s")
                        .arg(&sq)
                        .query_async::<String>(&mut conn)
                        .await
                })
                .await?;
            let back = Stored::Queued {
                pidx: *pidx,
                seq: *seq,
                alloc: None,
            };
            self.common
                .release(c, &user, s, Some(&back), Some(*slot), 0)
                .await?;
        }
        if !triples.is_empty() {
            self.common.promote(c, &triples, true).await?;
        }
        let now = chrono::Utc::now().timestamp_millis();
        for e in entries {
            metrics::histogram!("firstcome_queue_to_durable_seconds")
                .record((now - e.appended_ms()).max(0) as f64 / 1000.0);
            self.attempts.remove(&e.id);
        }
        metrics::counter!("firstcome_drained_total").increment(triples.len() as u64);
        Ok(())
    }

    fn finished(&self) -> bool {
        RedisCommon::keys_expired(&self.campaign, chrono::Utc::now())
    }

    async fn recover(&mut self) -> anyhow::Result<()> {
        Ok(self.common.rebuild(&self.campaign).await?)
    }
}
