//! A campaign's Redis state as a whole: loading it at creation, rebuilding
//! it from PostgreSQL (under a lock, in a new generation), dropping a stale
//! one or one another server loaded, keeping open-ended keys alive, and the
//! counters.

use chrono::Utc;

use super::{AdmissionError, RedisCommon, Stored, Truth};
use crate::{
    domain::{generate_code, Campaign},
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
        if self.redis.drop_stale(&self.keys(c), gen).await? {
            tracing::warn!(campaign = %c.id, gen, "dropped a redis state older than postgres' generation");
        }
        Ok(())
    }

    /// Drops the campaign's state if the Redis server now holding it did
    /// not load it (a restart or failover may have lost its last writes);
    /// `true` when it did. The caller rebuilds.
    pub async fn forget_if_server_changed(&self, c: &Campaign) -> Result<bool, AdmissionError> {
        let dropped = self.redis.forget_if_moved(&self.keys(c)).await?;
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
        let t = token.clone();
        let got: Option<String> = self
            .redis
            .run(|mut conn| async move {
                redis::cmd("SET")
                    .arg(&lock)
                    .arg(&t)
                    .arg("NX")
                    .arg("PX")
                    .arg(REBUILD_LOCK_MS)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        if got.is_none() {
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
        let rows = pg::latest_grants(&self.db, c.id).await?;
        let refusals = pg::refusals(&self.db, c.id).await?;
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

    async fn rebuild_locked(&self, c: &Campaign, k: &CampaignKeys) -> Result<(), AdmissionError> {
        // Only rebuilders (holding the lock) load a state: if one is there,
        // a racing rebuilder loaded it, and a new generation would only
        // fence off its live writes.
        let meta = k.meta.clone();
        let present: bool =
            self.redis
                .run(|mut conn| async move {
                    redis::cmd("EXISTS").arg(&meta).query_async(&mut conn).await
                })
                .await?;
        if present {
            return Ok(());
        }
        // An outbox that outlived its state (only meta lost) holds answers
        // already told (redis-lua writes behind through it; the other modes
        // leave it empty, so this costs them one call); the flusher needs
        // no meta, so it writes them first, and the rebuild then reads them.
        if self.redis.outbox_to_flush(k, OUTBOX_WAIT_MS).await? > 0 {
            return Err(AdmissionError::Rebuilding);
        }
        let gen = pg::bump_generation(&self.db, c.id).await?;
        let Truth {
            mut answers,
            mut active,
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
        let st = InitState {
            expire_at_ms: Self::expire_at_ms(c, Utc::now()),
            opens_ms: c.opens_at.map(|t| t.timestamp_millis()),
            closes_ms: c.closes_at.map(|t| t.timestamp_millis()),
            mode: c.mode.as_str().to_string(),
            seq: max_seq,
            queued: 0,
            gen,
            pools: c
                .pools
                .iter()
                .zip(active.iter_mut())
                .map(|(pool, slots)| {
                    let hw = slots.last().copied().unwrap_or(0);
                    PoolState {
                        left: (pool.stock as i64 - slots.len() as i64).max(0),
                        hw,
                        free: (1..=hw)
                            .filter(|s| slots.binary_search(s).is_err())
                            .collect(),
                    }
                })
                .collect(),
            answers: answers.into_iter().map(|(u, a)| (u, a.encode())).collect(),
        };
        if !self.redis.init_state(k, &st).await? {
            // A state appeared while we held the lock: a rebuilder paused
            // past its lock loaded it, of an older generation than ours
            // (the newest). Drop it; the next claim rebuilds.
            let other = self.redis.state_generation(k).await?;
            if let Some(other) = other.filter(|g| *g != gen) {
                self.drop_stale(c, other).await?;
            }
            return Err(AdmissionError::Rebuilding);
        }
        // A rebuilder paused past its lock may have loaded an older
        // generation than PostgreSQL's: drop it, the next claim rebuilds.
        if pg::generation(&self.db, c.id).await? != gen {
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
        let k = self.keys(c);
        let half = chrono::Duration::seconds(crate::domain::OPEN_ENDED_KEY_LIFETIME_SECS / 2);
        Ok(self
            .redis
            .refresh(
                &k,
                Self::expire_at_ms(c, now),
                (now + half).timestamp_millis(),
            )
            .await?)
    }

    /// Stock left at the door per pool, and the queued count.
    pub async fn counters(&self, c: &Campaign) -> Result<Option<(Vec<i64>, i64)>, AdmissionError> {
        let k = self.keys(c);
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
        Ok(Some((
            left.into_iter().map(|x| x.unwrap_or(0)).collect(),
            queued.unwrap_or(0),
        )))
    }
}
