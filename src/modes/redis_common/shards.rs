//! A sharded pool's protocol (docs/ARCHITECTURE.md, "Shards"): a claim
//! whose home shard is dry moves stock there from another shard, or proves
//! the whole pool sold out before anyone is told `sold_out`; units given
//! back are published only after every sold-out mark is cleared.
//!
//! The proof is a double collect: every other shard is read twice (each
//! read answers its `ver`, bumped whenever stock arrives there, and whether
//! it holds anything: units, units given back, transfers in flight); if
//! both reads agree and every shard held nothing, there was an instant,
//! between the two, when the whole pool held nothing. The home shard's own
//! read is the claim script itself, which refuses only if its `ver` is still
//! the one the proof started from.

use rand::Rng;

use super::{AdmissionError, RedisCommon};
use crate::{
    domain::{generate_code, shard::shard_range, Campaign, Pool},
    storage::redis::{
        shards::{Gave, Holding},
        RedisStoreError,
    },
};

/// Most units one transfer moves (and at most half the giver's stock).
const TRANSFER_MAX: i64 = 16;

/// How long a dry claimant waits before looking again when it can neither
/// help nor conclude (a cancel's flush, a rebuild in progress).
const HELD_WAIT: std::time::Duration = std::time::Duration::from_millis(20);

/// The claim script's `dry` reply.
#[derive(Debug, Clone)]
pub struct Dry {
    /// The dry shard (the user's home).
    shard: u16,
    /// Its `ver` when it was found dry.
    ver: String,
    /// The generation of its state.
    gen: i64,
    /// Units given back there, not yet published.
    retn: i64,
    /// Transfers it gave, not yet confirmed.
    out: i64,
    /// Cancels not yet durable whose slot comes back there (redis-lua).
    held: i64,
}

impl Dry {
    /// Parses `{'dry', ver, gen, retn, out}` from shard `shard`.
    pub fn parse(shard: u16, r: &[String]) -> Result<Self, RedisStoreError> {
        let num = |i: usize| -> Result<i64, RedisStoreError> {
            r.get(i)
                .and_then(|x| x.parse().ok())
                .ok_or_else(|| RedisStoreError::Protocol(format!("dry: {r:?}")))
        };
        Ok(Self {
            shard,
            ver: r.get(1).cloned().unwrap_or_default(),
            gen: num(2)?,
            retn: num(3)?,
            out: num(4)?,
            held: num(5)?,
        })
    }
}

impl RedisCommon {
    /// Moves stock into the dry shard, or helps along whatever keeps the
    /// proof from concluding, and returns `None` (the caller claims
    /// again); or proves the pool sold out and returns the home shard's
    /// `ver` and the generation for the claim script's final check.
    pub async fn find_stock(
        &self,
        c: &Campaign,
        pool: &Pool,
        dry: &Dry,
    ) -> Result<Option<(String, i64)>, AdmissionError> {
        let pidx = pool.idx as usize;
        let (h, n) = (dry.shard, c.shards);
        if dry.retn > 0 {
            self.publish_returned(c, pidx, h).await?;
            return Ok(None);
        }
        if dry.out > 0 {
            self.complete_transfers(c, pidx, h, dry.gen).await?;
            return Ok(None);
        }
        if dry.held > 0 {
            // A cancel's slot comes back here once its flush is done.
            tokio::time::sleep(HELD_WAIT).await;
            return Ok(None);
        }
        let ks = self.shards(c);
        let start = rand::thread_rng().gen_range(0..n);
        let mut seen: Vec<(u16, Holding)> = Vec::with_capacity(usize::from(n));
        for i in 0..n {
            let s = (start + i) % n;
            if s == h {
                continue;
            }
            let (_, hi) = shard_range(pool.stock, s, n);
            let id = generate_code();
            let k = &ks[usize::from(s)];
            match self
                .redis
                .give(k, pidx, &id, h, TRANSFER_MAX, dry.gen, hi)
                .await?
            {
                Gave::NoInit | Gave::Stale => {
                    // A shard lost or of another generation: the states no
                    // longer add up; start them all again from PostgreSQL
                    // (under the rebuild lock: a rebuild loading the shards
                    // one by one is waited for, never torn down).
                    return self.rebuild_or_wait(c).await;
                }
                Gave::Slots(slots) => {
                    let home = &ks[usize::from(h)];
                    if self.redis.take(home, pidx, &id, dry.gen, &slots).await? < 0 {
                        // The home state went meanwhile: the slots are
                        // recounted by the rebuild.
                        return self.rebuild_or_wait(c).await;
                    }
                    self.redis.transfer_done(k, pidx, &id).await?;
                    metrics::counter!("firstcome_shard_transfers_total").increment(1);
                    return Ok(None);
                }
                Gave::Nothing(hold) if hold.retn > 0 => {
                    self.publish_returned(c, pidx, s).await?;
                    return Ok(None);
                }
                Gave::Nothing(hold) if hold.out > 0 => {
                    self.complete_transfers(c, pidx, s, dry.gen).await?;
                    return Ok(None);
                }
                Gave::Nothing(hold) if hold.left > 0 => return Ok(None),
                Gave::Nothing(hold) if hold.held > 0 => {
                    tokio::time::sleep(HELD_WAIT).await;
                    return Ok(None);
                }
                Gave::Nothing(hold) => seen.push((s, hold)),
            }
        }
        // The second collect: nothing may have arrived anywhere meanwhile.
        let again = futures::future::join_all(seen.iter().map(|(s, _)| {
            let (_, hi) = shard_range(pool.stock, *s, n);
            self.redis
                .give(&ks[usize::from(*s)], pidx, "", h, 0, dry.gen, hi)
        }))
        .await;
        for ((_, first), second) in seen.iter().zip(again) {
            match second? {
                Gave::Nothing(hold) if hold.empty() && hold.ver == first.ver => {}
                _ => return Ok(None),
            }
        }
        metrics::counter!("firstcome_shard_soldout_proofs_total").increment(1);
        // Marks spare the shards' next losers the proof; a mark set on a
        // shard whose `ver` moved is refused, and publish_returned clears
        // every mark before a unit becomes claimable again.
        let (me, c2, gen) = (self.clone(), c.clone(), dry.gen);
        tokio::spawn(async move {
            let ks = me.shards(&c2);
            for (s, hold) in seen {
                let _ = me
                    .redis
                    .mark(&ks[usize::from(s)], pidx, Some((&hold.ver, gen)))
                    .await;
            }
        });
        Ok(Some((dry.ver.clone(), dry.gen)))
    }

    /// Rebuilds the campaign's shards (or waits for whoever does): the
    /// caller claims again.
    async fn rebuild_or_wait(&self, c: &Campaign) -> Result<Option<(String, i64)>, AdmissionError> {
        match self.rebuild(c).await {
            Ok(()) => Ok(None),
            Err(AdmissionError::Rebuilding) => {
                tokio::time::sleep(HELD_WAIT).await;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The worker's periodic look at a sharded campaign: units given back
    /// but not published (their publisher died, or a mark clear failed) are
    /// published, transfers left half done are completed. Without it a
    /// unit could wait behind other shards' sold-out marks until someone
    /// happened to claim on its own shard.
    pub async fn heal_shards(&self, c: &Campaign) -> Result<(), AdmissionError> {
        if c.shards <= 1 {
            return Ok(());
        }
        for k in self.shards(c).iter().cloned() {
            let Some(gen) = self.redis.state_generation(&k).await? else {
                continue;
            };
            for pidx in 0..c.pools.len() {
                let p = k.pool(pidx)?.clone();
                let (retn, out): (Option<i64>, i64) = self
                    .redis
                    .run(|mut conn| async move {
                        redis::pipe()
                            .hget(&p.sx, "retn")
                            .hlen(&p.xf)
                            .query_async(&mut conn)
                            .await
                    })
                    .await?;
                if out > 0 {
                    self.complete_transfers(c, pidx, k.shard, gen).await?;
                }
                if retn.unwrap_or(0) > 0 {
                    self.publish_returned(c, pidx, k.shard).await?;
                }
            }
        }
        Ok(())
    }

    /// Makes the units shard `s` got back in pool `pidx` claimable: every
    /// other shard's sold-out mark is cleared first (and its `ver` bumped,
    /// so a proof in progress fails), then the units are published.
    pub async fn publish_returned(
        &self,
        c: &Campaign,
        pidx: usize,
        s: u16,
    ) -> Result<(), AdmissionError> {
        let ks = self.shards(c);
        let clears = ks
            .iter()
            .filter(|k| k.shard != s)
            .map(|k| self.redis.mark(k, pidx, None));
        for r in futures::future::join_all(clears).await {
            r?;
        }
        self.redis.publish(&ks[usize::from(s)], pidx).await?;
        Ok(())
    }

    /// Completes the transfers shard `s` gave in pool `pidx` (their giver
    /// died, or was slow) in generation `gen`: the recipient takes them
    /// (once), the giver forgets them.
    pub async fn complete_transfers(
        &self,
        c: &Campaign,
        pidx: usize,
        s: u16,
        gen: i64,
    ) -> Result<(), AdmissionError> {
        let ks = self.shards(c);
        let giver = &ks[usize::from(s)];
        for (id, to, slots) in self.redis.transfers(giver, pidx).await? {
            let Some(recipient) = ks.get(usize::from(to)) else {
                continue;
            };
            if self.redis.take(recipient, pidx, &id, gen, &slots).await? < 0 {
                // The recipient lost its state: the rebuild recounts.
                self.rebuild_or_wait(c).await?;
                return Ok(());
            }
            self.redis.transfer_done(giver, pidx, &id).await?;
        }
        Ok(())
    }
}
