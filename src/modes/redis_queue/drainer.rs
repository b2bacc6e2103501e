//! The redis-queue drainer: grants queued claims in arrival order. For each
//! batch: allocate slots in Redis (idempotent), insert the grants in one
//! transaction (idempotent on the code), then promote the answers to
//! granted. Rows that fail for good are retried, then dead-lettered, and
//! their stock is given back to the next in line.

use std::collections::HashMap;

use crate::storage::redis::stream::Entry;
use crate::{
    domain::{generate_code, Campaign, UserId},
    modes::redis_common::{Batches, RedisCommon, Release, Stored},
    storage::{
        pg::{NewGrant, NewRejection},
        Store,
    },
};

/// Attempts before a row is dead-lettered.
pub const MAX_ATTEMPTS: u32 = 5;

/// Rows per insert transaction. A batch's chunks are inserted on separate
/// connections at once: one connection inserts ~29k grant rows/s on the
/// development machine, two ~52k (the `grant INSERT` limit of
/// `firstcome-bench --scenario drain`, docs/BENCHMARKS.md).
pub const INSERT_CHUNK: usize = 500;

/// How long a drainer that finds its campaign paused waits before it
/// leaves the batch pending.
const PAUSED_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// Drains one campaign's queue.
pub struct Drainer {
    /// Redis and PostgreSQL.
    pub common: RedisCommon,
    /// Source of truth.
    pub db: Store,
    /// The campaign.
    pub campaign: Campaign,
    /// Failed attempts per stream entry id.
    pub attempts: HashMap<String, u32>,
}

impl Batches for Drainer {
    async fn handle(&mut self, entries: &[Entry]) -> anyhow::Result<()> {
        // The fair start's draw marker (freeze.lua) comes before every claim
        // after opening: the pre-queue is admitted, in drawn order, first.
        let mut rest = entries;
        while let Some(i) = rest.iter().position(|e| !e.get("op").is_empty()) {
            self.drain(&rest[..i]).await?;
            self.admit_draw().await?;
            rest = &rest[i + 1..];
        }
        self.drain(rest).await
    }
}

impl Drainer {
    /// Grants (or refuses) queued claims, in the order given.
    pub(super) async fn drain(&mut self, entries: &[Entry]) -> anyhow::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let c = &self.campaign;
        let k = self.common.keys(c);
        // 1. Slots, in arrival order.
        let codes: Vec<String> = entries.iter().map(|_| generate_code()).collect();
        let stocks: Vec<i64> = c.pools.iter().map(|p| p.stock as i64).collect();
        let pairs: Vec<(&str, &str)> = entries
            .iter()
            .zip(&codes)
            .map(|(e, code)| (e.get("u"), code.as_str()))
            .collect();
        let reply = self.common.redis.allocate(&k, &stocks, &pairs).await?;
        if reply.first().map(String::as_str) == Some("paused") {
            // An operator paused the campaign: nothing was allocated, the
            // batch stays pending and is tried again (after the consumer's
            // backoff, at most a couple of seconds after the resume).
            tokio::time::sleep(PAUSED_POLL).await;
            anyhow::bail!("campaign {} is paused: the queue waits", c.id);
        }
        let (gen, answers) = reply
            .split_first()
            .ok_or_else(|| anyhow::anyhow!("allocate: empty reply"))?;
        let gen: i64 = gen.parse()?;
        // 2. Durable, fenced by the state's generation.
        let mut rows = Vec::new();
        let mut pending: Vec<(usize, Stored)> = Vec::new();
        let mut refusals = Vec::new();
        let mut refusing: Vec<(usize, Stored)> = Vec::new();
        for (i, a) in answers.iter().enumerate() {
            if a.is_empty() {
                continue;
            }
            let s = Stored::parse(a)?;
            match s {
                Stored::Queued {
                    pidx,
                    seq,
                    alloc: Some((slot, ref code)),
                } => {
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
                Stored::Refusing { seq } => {
                    refusals.push(NewRejection {
                        campaign_id: c.id.0,
                        user_id: entries[i].get("u").to_string(),
                        seq,
                    });
                    refusing.push((i, s));
                }
                _ => {}
            }
        }
        let gens = vec![gen; INSERT_CHUNK.max(refusals.len())];
        let mut inserts: Vec<_> = rows
            .chunks(INSERT_CHUNK)
            .map(|chunk| self.db.insert_fenced(chunk, &gens[..chunk.len()], &[], &[]))
            .collect();
        if !refusals.is_empty() {
            inserts.push(
                self.db
                    .insert_fenced(&[], &[], &refusals, &gens[..refusals.len()]),
            );
        }
        let mut inserted = std::collections::HashSet::new();
        let mut refused_ok = std::collections::HashSet::new();
        for f in futures::future::try_join_all(inserts).await? {
            inserted.extend(f.codes);
            refused_ok.extend(f.refusals.into_iter().map(|(_, u)| u));
        }
        let missing: Vec<String> = rows
            .iter()
            .filter(|r| !inserted.contains(&r.code))
            .map(|r| r.code.clone())
            .collect();
        if (!missing.is_empty() || refused_ok.len() < refusals.len())
            && self.db.generation(c.id).await? != gen
        {
            // Decided in a state that a rebuild replaced: nothing of it may
            // land. The rebuilt state no longer holds these answers.
            self.common.drop_stale(c, gen).await?;
            anyhow::bail!("queue batch decided in a stale redis state (gen {gen})");
        }
        let present: std::collections::HashSet<String> = if missing.is_empty() {
            Default::default()
        } else {
            self.db
                .existing_codes(&missing)
                .await?
                .into_iter()
                .collect()
        };
        // 3. Answers.
        let mut triples = Vec::new();
        let mut refusal_triples = Vec::new();
        for (i, s) in &refusing {
            let user = UserId::parse(entries[*i].get("u"))?;
            let Stored::Refusing { seq } = s else {
                continue;
            };
            let to = if refused_ok.contains(user.as_str()) {
                Stored::Rejected { seq: *seq }
            } else {
                match self.db.durable_answer(c, &user).await? {
                    Some(d) => Stored::from_outcome(c, &d)?,
                    None => anyhow::bail!("refusal of {user} neither stored nor found"),
                }
            };
            refusal_triples.push((user.as_str().to_string(), s.encode(), to.encode()));
        }
        if !refusal_triples.is_empty() {
            // allocate.lua counted these out of the queue already.
            self.common.promote(c, &refusal_triples, false).await?;
        }
        let mut retry = false;
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
            // Refused. PostgreSQL may hold the user's final answer already:
            // that is the answer, and this allocation goes back to stock.
            if let Some(d) = self.db.durable_answer(c, &user).await? {
                let to = Stored::from_outcome(c, &d)?;
                let r = Release {
                    queued_delta: -1,
                    ..Release::replaced_by(&to, Some(*slot))
                };
                self.common.release(c, &user, s, r).await?;
                continue;
            }
            // Otherwise the slot is held by a grant Redis did not know: it
            // stays taken, and the claim is allocated again (a new slot, or a
            // refusal when none is left) in the next attempt.
            let back = Stored::Queued {
                pidx: *pidx,
                seq: *seq,
                alloc: None,
            };
            let n = self.attempts.entry(entries[*i].id.clone()).or_insert(0);
            *n += 1;
            if *n < MAX_ATTEMPTS {
                tracing::warn!(%user, slot, "queued grant refused: slot held in postgres; allocating again");
                let r = Release {
                    replacement: Some(&back),
                    ..Release::default()
                };
                self.common.release(c, &user, s, r).await?;
                retry = true;
                continue;
            }
            // Dead letter: keep the claim for an operator, free its stock.
            tracing::error!(%user, entry = %entries[*i].id, "dead-lettering a queued claim");
            metrics::counter!("firstcome_dead_letters_total").increment(1);
            let dead_user = entries[*i].get("u");
            self.common
                .redis
                .add_dead_letter(&k, dead_user, *pidx, *seq)
                .await?;
            // Out of the queued count while it waits for an operator.
            let dead = Stored::DeadLettered {
                pidx: *pidx,
                seq: *seq,
            };
            let r = Release {
                replacement: Some(&dead),
                give_back: true,
                queued_delta: -1,
                ..Release::default()
            };
            self.common.release(c, &user, s, r).await?;
        }
        if !triples.is_empty() {
            self.common.promote(c, &triples, true).await?;
        }
        if retry {
            anyhow::bail!("some queued grants were refused; allocating them again");
        }
        let now = chrono::Utc::now().timestamp_millis();
        for e in entries {
            metrics::histogram!("firstcome_queue_to_durable_seconds")
                .record((now - e.appended_ms()).max(0) as f64 / 1000.0);
            self.attempts.remove(&e.id);
        }
        metrics::counter!("firstcome_drained_total").increment(triples.len() as u64);
        // Positions of those still waiting count from here.
        let last = entries.iter().filter_map(|e| e.get("s").parse().ok()).max();
        if let Some(last) = last {
            self.common.redis.record_progress(&k, last).await?;
        }
        Ok(())
    }
}
