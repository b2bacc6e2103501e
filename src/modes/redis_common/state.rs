//! A campaign's Redis state as a whole: loading it at creation, rebuilding
//! it from PostgreSQL (under a lock, in a new generation), dropping a stale
//! one or one another server loaded, keeping open-ended keys alive, and the
//! counters.

use chrono::Utc;

use super::{AdmissionError, RedisCommon, Stored, Truth};
use crate::{
    domain::{
        generate_code,
        shard::{home_shard, shard_range},
        Campaign, UserId,
    },
    storage::{
        pg::{self},
        redis::{CampaignKeys, InitState, PoolState, RedisStoreError},
    },
};

/// How old a surviving outbox's oldest entry may grow, while no flusher
/// holds the campaign's lease, before a redis-lua rebuild stops waiting for
/// it (with a flusher at work it always waits: lua/outbox_to_flush.lua).
/// Long enough for a worker to restart; beyond it the entries are exposure.
const OUTBOX_WAIT_MS: i64 = 120_000;

/// How long a rebuild may hold the campaign's rebuild lock: above the
/// longest wait for the generation lock (the statement timeout) plus the
/// reads and the load.
const REBUILD_LOCK_MS: u64 = 60_000;

impl RedisCommon {
    /// Forgets the campaign's Redis state if it is still of generation
    /// `gen`, which PostgreSQL has moved past: the next claim rebuilds.
    pub async fn drop_stale(&self, c: &Campaign, gen: i64) -> Result<(), AdmissionError> {
        for k in self.shards(c).iter() {
            if self.redis.drop_stale(k, gen).await? {
                tracing::warn!(campaign = %c.id, shard = k.shard, gen, "dropped a redis state older than postgres' generation");
            }
        }
        Ok(())
    }

    /// Forgets every shard's state of generation `gen`, and any of a
    /// generation other than PostgreSQL's: a sharded campaign's shards
    /// that no longer add up (one lost, or of another generation) start
    /// again together from PostgreSQL.
    pub async fn drop_all(&self, c: &Campaign, gen: i64) -> Result<(), AdmissionError> {
        let now = self.db.generation(c.id).await?;
        for k in self.shards(c).iter() {
            if let Some(g) = self.redis.state_generation(k).await? {
                if (g == gen || g != now) && self.redis.drop_stale(k, g).await? {
                    tracing::warn!(campaign = %c.id, shard = k.shard, gen = g, "dropped a shard's state: the shards no longer add up");
                }
            }
        }
        Ok(())
    }

    /// Drops the campaign's state if the Redis server now holding it did
    /// not load it (a restart or failover may have lost its last writes);
    /// `true` when it did. The caller rebuilds.
    pub async fn forget_if_server_changed(&self, c: &Campaign) -> Result<bool, AdmissionError> {
        let mut dropped = false;
        for k in self.shards(c).iter() {
            dropped |= self.redis.forget_if_moved(k).await?;
        }
        if dropped {
            metrics::counter!("firstcome_redis_server_changes_total").increment(1);
            tracing::warn!(campaign = %c.id, "redis state loaded by another server (restart or failover): dropped, rebuilding from postgres");
        }
        Ok(dropped)
    }

    /// Loads an empty state for a new campaign.
    pub async fn init_new(&self, c: &Campaign) -> Result<(), AdmissionError> {
        self.rebuild(c).await
    }

    /// Rebuilds the campaign's Redis state from PostgreSQL, the source of
    /// truth (seed 004's scheduler, done on demand). Exclusive: a lock keeps
    /// concurrent rebuilders apart, and `init.lua` refuses to overwrite a
    /// state that is present. A new generation starts before the truth is
    /// read (see [`pg::bump_generation`]). A campaign past its keys' life
    /// is not loaded (PostgreSQL answers for it).
    pub async fn rebuild(&self, c: &Campaign) -> Result<(), AdmissionError> {
        if Self::keys_expired(c, Utc::now()) {
            return Ok(());
        }
        let k = self.keys(c);
        let lock = k.rebuild_lock.clone();
        // A token of our own: a rebuilder whose lock expired must not
        // release a successor's.
        let token = generate_code();
        if !self.try_lock(&lock, &token, REBUILD_LOCK_MS).await? {
            return Err(AdmissionError::Rebuilding);
        }
        // In a task of its own: a caller dropped mid-way (a request cut by
        // its timeout) must not leave the lock held for REBUILD_LOCK_MS.
        let (me, c2, k2) = (self.clone(), c.clone(), k.clone());
        let result = tokio::spawn(async move {
            let result = me.rebuild_locked(&c2, &k2).await;
            let _ = me.redis.unlock(&k2.rebuild_lock, &token).await;
            result
        })
        .await
        .unwrap_or(Err(AdmissionError::Rebuilding));
        if result.is_ok() {
            metrics::counter!("firstcome_redis_rebuilds_total").increment(1);
        }
        result
    }

    /// What PostgreSQL says Redis should hold: every user's latest grant
    /// or refusal as an answer, the active slots per pool (sorted), the
    /// highest seq.
    pub async fn truth(&self, c: &Campaign) -> Result<Truth, AdmissionError> {
        let rows = self.db.latest_grants(c.id).await?;
        let refusals = self.db.refusals(c.id).await?;
        let mut t = Truth {
            answers: Vec::with_capacity(rows.len() + refusals.len()),
            active: vec![Vec::new(); c.pools.len()],
            max_seq: 0,
        };
        let mut granted = std::collections::HashSet::with_capacity(rows.len());
        for pg::LatestGrant {
            user_id: user,
            pool_id,
            slot,
            code,
            seq,
            active,
        } in rows
        {
            let Some(pidx) = c.pool_index_of(pool_id) else {
                continue;
            };
            t.max_seq = t.max_seq.max(seq);
            let s = if active {
                t.active[pidx].push(slot);
                Stored::Granted {
                    pidx: pidx as i32,
                    slot,
                    code,
                    seq,
                }
            } else {
                Stored::Cancelled {
                    pidx: pidx as i32,
                    slot,
                    code,
                    seq,
                }
            };
            granted.insert(user.clone());
            t.answers.push((user, s));
        }
        for (user, seq) in refusals {
            t.max_seq = t.max_seq.max(seq);
            if !granted.contains(&user) {
                t.answers.push((user, Stored::Rejected { seq }));
            }
        }
        for a in &mut t.active {
            a.sort_unstable();
        }
        Ok(t)
    }

    pub(super) async fn rebuild_locked(
        &self,
        c: &Campaign,
        k: &CampaignKeys,
    ) -> Result<(), AdmissionError> {
        let ks = self.shards(c);
        // Only rebuilders (holding the lock) load a state: if every shard
        // is there, of one generation, a racing rebuilder loaded it, and a
        // new generation would only fence off its live writes.
        let mut gens = Vec::with_capacity(ks.len());
        for s in ks.iter() {
            gens.push(self.redis.state_generation(s).await?);
        }
        if gens.iter().all(|g| g.is_some() && *g == gens[0]) {
            return Ok(());
        }
        // Some shard lost its state: the others are dropped too (their
        // stock and the lost one's are recounted together; their writes in
        // flight are fenced by the new generation).
        for (s, g) in ks.iter().zip(&gens) {
            if let Some(g) = g {
                self.redis.drop_stale(s, *g).await?;
            }
        }
        // An outbox that outlived its state (only meta lost) holds answers
        // already told (redis-lua writes behind through it; the other modes
        // leave it empty, so this costs them one call); the flusher needs
        // no meta, so it writes them first, and the rebuild then reads them.
        for s in ks.iter() {
            if self.redis.outbox_to_flush(s, OUTBOX_WAIT_MS).await? > 0 {
                return Err(AdmissionError::Rebuilding);
            }
        }
        let gen = self.db.bump_generation(c.id).await?;
        // The settings an operator may have changed since this process
        // loaded the campaign (pause, window), read after the bump: with
        // the rebuild lock held, an operator's change either committed
        // before this read, or is applied to the loaded state after it
        // (settings.rs).
        let now_c = self.db.load_campaign(c.id).await?;
        let live = now_c.as_ref().unwrap_or(c);
        let Truth {
            mut answers,
            active,
            mut max_seq,
        } = self.truth(c).await?;
        // Dead letters outlive the state (their stream is not part of it):
        // a user told 202 whose claim waits for an operator stays
        // dead-lettered, so `firstcome dlq replay` can still put it back.
        let mut known: std::collections::HashSet<String> =
            answers.iter().map(|(u, _)| u.clone()).collect();
        for d in self.redis.dead_letters(k).await? {
            if (d.pidx as usize) < c.pools.len() && known.insert(d.user.clone()) {
                max_seq = max_seq.max(d.seq);
                let s = Stored::DeadLettered {
                    pidx: d.pidx,
                    seq: d.seq,
                };
                answers.push((d.user, s));
            }
        }
        // Claims a redis-queue state accepted (202, an arrival number) and
        // not yet granted: their queue survived the state (a failover, meta
        // lost alone), so they keep their answer and number, and the units
        // they took at the door stay taken; new arrivals number after them.
        // A recorded draw numbered its users 1..n: new arrivals after them,
        // even those whose place this rebuild does not know.
        if c.prequeue_secs.is_some() {
            max_seq = max_seq.max(self.db.draw_size(c.id).await?);
        }
        let mut queued = 0;
        let mut at_door = vec![0_i64; c.pools.len()];
        if c.mode == crate::domain::Mode::RedisQueue {
            for q in self.redis.queued_claims(k).await? {
                let p = q.pidx as usize;
                if p < c.pools.len() && known.insert(q.user.clone()) {
                    max_seq = max_seq.max(q.seq);
                    queued += 1;
                    at_door[p] += 1;
                    answers.push((
                        q.user,
                        Stored::Queued {
                            pidx: q.pidx,
                            seq: q.seq,
                            alloc: None,
                        },
                    ));
                }
            }
        }
        let n = c.shards.max(1);
        let mut by_shard: Vec<Vec<(String, String)>> = vec![Vec::new(); usize::from(n)];
        for (u, a) in answers {
            let h = match UserId::parse(u.clone()) {
                Ok(user) => home_shard(&user, n),
                Err(_) => 0,
            };
            by_shard[usize::from(h)].push((u, a.encode()));
        }
        for (s, answers) in by_shard.into_iter().enumerate() {
            let shard = s as u16;
            let st = InitState {
                expire_at_ms: Self::expire_at_ms(live, Utc::now()),
                opens_ms: live.opens_at.map(|t| t.timestamp_millis()),
                closes_ms: live.closes_at.map(|t| t.timestamp_millis()),
                prequeue_ms: live.prequeue_from().map(|t| t.timestamp_millis()),
                paused: live.paused,
                mode: c.mode.as_str().to_string(),
                seq: first_seq(max_seq, shard, n),
                queued: if s == 0 { queued } else { 0 },
                gen,
                // PostgreSQL's stock now: an operator may have restocked.
                pools: live
                    .pools
                    .iter()
                    .zip(active.iter().zip(&at_door))
                    .map(|(pool, (slots, door))| {
                        let mut p = pool_state(pool.stock, slots, shard, n);
                        if s == 0 {
                            p.left = (p.left - door).max(0);
                        }
                        p
                    })
                    .collect(),
                answers,
            };
            if !self.redis.init_state(&ks[s], &st).await? {
                // A state appeared while we held the lock: a rebuilder
                // paused past its lock loaded it, of an older generation
                // than ours (the newest). Drop it; the next claim rebuilds.
                let other = self.redis.state_generation(&ks[s]).await?;
                if let Some(other) = other.filter(|g| *g != gen) {
                    self.drop_stale(c, other).await?;
                }
                return Err(AdmissionError::Rebuilding);
            }
        }
        // A rebuilder paused past its lock may have loaded an older
        // generation than PostgreSQL's: drop it, the next claim rebuilds.
        if self.db.generation(c.id).await? != gen {
            self.drop_stale(c, gen).await?;
            return Err(AdmissionError::Rebuilding);
        }
        Ok(())
    }

    /// Creates the consumer group of `stream` if it has none (the stream is
    /// created too, empty, if missing).
    pub async fn ensure_group(&self, stream: &str) -> Result<(), AdmissionError> {
        let s = stream.to_string();
        let r: Result<(), RedisStoreError> = self
            .redis
            .run(|mut conn| async move {
                redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(&s)
                    .arg(crate::storage::redis::GROUP)
                    .arg("0")
                    .arg("MKSTREAM")
                    .query_async(&mut conn)
                    .await
            })
            .await;
        match r {
            Err(e) if e.to_string().contains("BUSYGROUP") => Ok(()),
            other => Ok(other?),
        }
    }

    /// Pushes an open-ended campaign's key expiry forward when less than
    /// half its lifetime is left; `true` when it did.
    pub async fn refresh_lifetime(&self, c: &Campaign) -> Result<bool, AdmissionError> {
        if c.closes_at.is_some() {
            return Ok(false);
        }
        let now = Utc::now();
        let half = chrono::Duration::seconds(crate::domain::OPEN_ENDED_KEY_LIFETIME_SECS / 2);
        let mut did = false;
        for k in self.shards(c).iter() {
            did |= self
                .redis
                .refresh(
                    k,
                    Self::expire_at_ms(c, now),
                    (now + half).timestamp_millis(),
                )
                .await?;
        }
        Ok(did)
    }

    /// Stock left at the door per pool (summed over the shards' doors: a
    /// unit given back but not yet published, or moving between shards, is
    /// not counted until it is claimable), and the queued count.
    pub async fn counters(&self, c: &Campaign) -> Result<Option<(Vec<i64>, i64)>, AdmissionError> {
        let mut total = vec![0; c.pools.len()];
        let mut queued_total = 0;
        for k in self.shards(c).iter().cloned() {
            let (exists, left, queued): (bool, Vec<Option<i64>>, Option<i64>) = self
                .redis
                .run(|mut conn| async move {
                    let lefts: Vec<&String> = k.pools.iter().map(|p| &p.left).collect();
                    redis::pipe()
                        .exists(&k.meta)
                        .cmd("MGET")
                        .arg(lefts)
                        .get(&k.queued)
                        .query_async(&mut conn)
                        .await
                })
                .await?;
            if !exists {
                return Ok(None);
            }
            for (t, l) in total.iter_mut().zip(left) {
                *t += l.unwrap_or(0).max(0);
            }
            queued_total += queued.unwrap_or(0);
        }
        Ok(Some((total, queued_total)))
    }
}

/// The first arrival number shard `shard` of `n` hands out after a rebuild
/// whose highest known one is `max_seq`, minus its step: each shard counts
/// in steps of `n` from its own residue, so no two shards share a number.
fn first_seq(max_seq: i64, shard: u16, n: u16) -> i64 {
    let n = i64::from(n.max(1));
    (max_seq.div_euclid(n) + 1) * n + i64::from(shard) - n
}

/// Pool state of shard `shard` of `n`, from the pool's active slots
/// (sorted): its starting range, less the slots held in it.
fn pool_state(stock: i32, active: &[i32], shard: u16, n: u16) -> PoolState {
    let (lo, hi) = shard_range(stock, shard, n);
    let held: Vec<i32> = active
        .iter()
        .copied()
        .filter(|s| (lo..=hi).contains(s))
        .collect();
    let hw = held.last().copied().unwrap_or(lo - 1);
    let free: Vec<i32> = (lo..=hw)
        .filter(|s| held.binary_search(s).is_err())
        .collect();
    PoolState {
        last: (n <= 1).then_some(stock),
        left: i64::from(hi - hw) + free.len() as i64,
        hw,
        free,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_never_share_an_arrival_number() {
        for n in [1_u16, 2, 3, 8] {
            for max in [0_i64, 1, 7, 100] {
                let mut all = std::collections::HashSet::new();
                for s in 0..n {
                    let first = first_seq(max, s, n) + i64::from(n);
                    assert!(first > max, "n {n}, max {max}, shard {s}");
                    for k in 0..5 {
                        assert!(all.insert(first + k * i64::from(n)));
                    }
                }
            }
        }
        assert_eq!(first_seq(41, 0, 1), 41);
    }

    #[test]
    fn a_shard_state_counts_its_range() {
        // Unsharded: as before (stock 10, slots 2 and 5 held).
        let p = pool_state(10, &[2, 5], 0, 1);
        assert_eq!((p.left, p.hw, p.free), (8, 5, vec![1, 3, 4]));
        // Shard 1 of 2 owns 6..=10; slots 7 held, 3 (shard 0's) ignored.
        let p = pool_state(10, &[3, 7], 1, 2);
        assert_eq!((p.left, p.hw, p.free), (4, 7, vec![6]));
        let p = pool_state(10, &[], 1, 2);
        assert_eq!((p.left, p.hw, p.free), (5, 5, vec![]));
    }
}
