//! The fair start in Redis (redis-queue): the pre-queue list, its freeze
//! at opening, the drawn places, and a queued user leaving.

use super::{CampaignKeys, RedisStore, RedisStoreError};

/// Users read from the pre-queue list per call.
const LIST_PAGE: isize = 10_000;

/// What `freeze.lua` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freeze {
    /// Closed the pre-queue now.
    Frozen,
    /// It was closed before.
    Already,
    /// No state loaded, or the campaign has no pre-queue.
    NoPrequeue,
    /// Not open yet (Redis' clock).
    NotYet,
}

impl RedisStore {
    /// `freeze.lua`: closes the pre-queue at opening (idempotent).
    pub async fn freeze(&self, k: &CampaignKeys) -> Result<Freeze, RedisStoreError> {
        let mut keys: Vec<&str> = vec![&k.meta, &k.seq, &k.queue, &k.queued, &k.prequeue];
        keys.extend(k.pools.iter().map(|p| p.left.as_str()));
        let np = k.pools.len().to_string();
        let r: i64 = self.eval(&self.scripts().freeze, &keys, &[&np]).await?;
        Ok(match r {
            1 => Freeze::Frozen,
            0 => Freeze::Already,
            -2 => Freeze::NotYet,
            _ => Freeze::NoPrequeue,
        })
    }

    /// `progress.lua`: records that the queue is answered up to `seq`.
    pub async fn record_progress(
        &self,
        k: &CampaignKeys,
        seq: i64,
    ) -> Result<i64, RedisStoreError> {
        self.eval(&self.scripts().progress, &[&k.meta], &[&seq.to_string()])
            .await
    }

    /// The queue's progress: the last arrival
    /// number answered (0 before any), for positions and waits.
    pub async fn progress(&self, k: &CampaignKeys) -> Result<i64, RedisStoreError> {
        let meta = k.meta.clone();
        let d: Option<i64> = self
            .run(|mut conn| async move {
                redis::cmd("HGET")
                    .arg(&meta)
                    .arg("done")
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(d.unwrap_or(0))
    }

    /// Every pre-queued claim (user, pool index), in arrival order (read
    /// in pages).
    pub async fn prequeued(&self, k: &CampaignKeys) -> Result<Vec<(String, i32)>, RedisStoreError> {
        let mut out = Vec::new();
        loop {
            let (key, from) = (k.prequeue.clone(), out.len() as isize);
            let page: Vec<String> = self
                .run(|mut conn| async move {
                    redis::cmd("LRANGE")
                        .arg(&key)
                        .arg(from)
                        .arg(from + LIST_PAGE - 1)
                        .query_async(&mut conn)
                        .await
                })
                .await?;
            let n = page.len();
            for e in page {
                let bad = || RedisStoreError::Protocol(format!("bad pre-queue entry {e:?}"));
                let (p, u) = e.split_once('|').ok_or_else(bad)?;
                out.push((u.to_string(), p.parse().map_err(|_| bad())?));
            }
            if (n as isize) < LIST_PAGE {
                return Ok(out);
            }
        }
    }

    /// `drawn.lua`: pre-queued users get their drawn places (user, rank).
    pub async fn place_drawn(
        &self,
        k: &CampaignKeys,
        places: &[(&str, i64)],
    ) -> Result<i64, RedisStoreError> {
        let ranks: Vec<String> = places.iter().map(|(_, r)| r.to_string()).collect();
        let mut args: Vec<&str> = Vec::with_capacity(places.len() * 2);
        for ((u, _), r) in places.iter().zip(&ranks) {
            args.extend([*u, r.as_str()]);
        }
        self.eval(&self.scripts().drawn, &[&k.ans], &args).await
    }

    /// `leave.lua`: `user` leaves the queue; the script's reply
    /// (`left`/`kept` with the answer, `none`, `noinit`).
    pub async fn leave(
        &self,
        k: &CampaignKeys,
        user: &str,
    ) -> Result<Vec<String>, RedisStoreError> {
        let mut keys: Vec<&str> = vec![&k.meta, &k.ans, &k.queued];
        keys.extend(k.pools.iter().map(|p| p.left.as_str()));
        self.eval(&self.scripts().leave, &keys, &[user]).await
    }
}
