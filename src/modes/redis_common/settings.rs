//! An operator's change of a live campaign (pause, resume, the window's
//! end, pools' stock) carried to its Redis state, under the campaign's
//! rebuild lock, so a rebuild racing the change cannot load what
//! PostgreSQL held before it (docs/ARCHITECTURE.md, "Operator controls").
//!
//! Settings and raises go to Redis after PostgreSQL committed them; a
//! lower goes to Redis first, while its PostgreSQL transaction is open
//! and holds the pool rows, then commits. Either way a change cut off
//! between the two stores leaves Redis *below* PostgreSQL (it may refuse
//! early, never grant past the stock), and the reconciler brings Redis to
//! PostgreSQL's stock (`apply_settings`).

use std::{future::Future, time::Duration};

use chrono::{DateTime, Utc};

use super::{AdmissionError, RedisCommon};
use crate::{
    domain::{generate_code, Campaign},
    storage::{
        pg::{PatchError, Restock},
        redis::operator::{Applied, Fence, Restocked, StockChange},
    },
};

/// How long an operator's change waits for a rebuild in progress to end
/// before answering 503 (it may then be retried: it is idempotent).
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// How long the change holds the rebuild lock at most: as long as a
/// rebuild may (it may run one, and its PostgreSQL statements may each
/// wait up to the statement timeout). The scripts that write under the
/// lock check it still holds (`Fence`), so a change that outlived it
/// writes nothing.
const LOCK_MS: u64 = 60_000;

/// Why a PATCH of a Redis-mode campaign failed.
#[derive(Debug, thiserror::Error)]
pub enum RestockError {
    /// Refused by what the stores hold (nothing changed).
    #[error(transparent)]
    Refused(#[from] PatchError),
    /// A store failed or the state is being rebuilt (retry).
    #[error(transparent)]
    Store(#[from] AdmissionError),
}

impl From<crate::storage::redis::RedisStoreError> for RestockError {
    fn from(e: crate::storage::redis::RedisStoreError) -> Self {
        RestockError::Store(e.into())
    }
}

impl RedisCommon {
    /// Takes `lock` with `token` for `ms`; `false` when someone holds it.
    pub(super) async fn try_lock(
        &self,
        lock: &str,
        token: &str,
        ms: u64,
    ) -> Result<bool, AdmissionError> {
        let (l, t) = (lock.to_string(), token.to_string());
        let got: Option<String> = self
            .redis
            .run(|mut conn| async move {
                redis::cmd("SET")
                    .arg(&l)
                    .arg(&t)
                    .arg("NX")
                    .arg("PX")
                    .arg(ms)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(got.is_some())
    }

    /// Runs `f` holding the campaign's rebuild lock (waiting up to
    /// [`LOCK_WAIT`] for it), in a task of its own: a caller dropped
    /// mid-way must not leave the lock held, nor a change half done.
    async fn locked<T, E, F, Fut>(&self, c: &Campaign, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<AdmissionError> + Send + 'static,
        F: FnOnce(RedisCommon, Campaign, String) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let lock = self.keys(c).rebuild_lock.clone();
        let token = generate_code();
        let deadline = tokio::time::Instant::now() + LOCK_WAIT;
        while !self.try_lock(&lock, &token, LOCK_MS).await? {
            if tokio::time::Instant::now() >= deadline {
                return Err(AdmissionError::Rebuilding.into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let me = self.clone();
        let c = c.clone();
        let t = token.clone();
        tokio::spawn(async move {
            let result = f(me.clone(), c, t).await;
            let _ = me.redis.unlock(&lock, &token).await;
            result
        })
        .await
        .unwrap_or(Err(AdmissionError::Rebuilding.into()))
    }

    /// Applies what PostgreSQL holds for `c` now (the pause flag, the
    /// window's end, the keys' expiry, and, unsharded, each pool's stock)
    /// to every shard's loaded state. A shard with no state is left alone:
    /// whoever loads it reads PostgreSQL after this change committed. Two
    /// operators' changes are applied in turn, each with what PostgreSQL
    /// held when it ran.
    pub async fn apply_settings(&self, c: &Campaign) -> Result<(), AdmissionError> {
        self.locked(c, |me, c, token| async move {
            me.apply_locked(&c, &token).await
        })
        .await
    }

    /// [`Self::apply_settings`] with the lock held under `token`.
    async fn apply_locked(&self, c: &Campaign, token: &str) -> Result<(), AdmissionError> {
        let Some(now_c) = self.db.load_campaign(c.id).await? else {
            return Ok(());
        };
        let exp = Self::expire_at_ms(&now_c, Utc::now());
        let closes = now_c.closes_at.map(|t| t.timestamp_millis());
        let shards = self.shards(&now_c);
        let lock = shards[0].rebuild_lock.clone();
        let fence = Fence { lock: &lock, token };
        for s in shards.iter() {
            // The lock lives in shard 0's hash slot: only there can the
            // script check it.
            let f = (s.shard == 0).then_some(fence);
            if self.redis.settings(s, now_c.paused, closes, exp, f).await? == Applied::Lost {
                return Err(AdmissionError::Rebuilding);
            }
        }
        if now_c.shards <= 1 {
            let changes: Vec<StockChange> = now_c
                .pools
                .iter()
                .enumerate()
                .map(|(pidx, p)| StockChange {
                    pidx,
                    stock: p.stock,
                    was: c.pools.get(pidx).map_or(p.stock, |q| q.stock),
                })
                .collect();
            match self.redis.restock(&shards[0], &changes, fence).await? {
                Restocked::Done | Restocked::NoState => {}
                Restocked::Lost => return Err(AdmissionError::Rebuilding),
                // Only a raise reaches Redis here (a lower went first), so
                // this is a state that grants beyond PostgreSQL's stock:
                // loud, and left to an operator (a rebuild would recount).
                other => {
                    metrics::counter!("firstcome_restock_diverged_total").increment(1);
                    tracing::error!(campaign = %c.id, result = ?other,
                        "redis bounds a pool above postgres' stock and cannot be lowered to it");
                }
            }
        }
        Ok(())
    }

    /// An operator's PATCH of a Redis-mode campaign (the window's end,
    /// unsharded pools' stock), under the rebuild lock: the state is
    /// loaded if missing (so every unit Redis handed out is counted), the
    /// PostgreSQL change is written (its own checks), lowers are applied
    /// to Redis (refused there if the units or slots are taken, which
    /// rolls PostgreSQL back), PostgreSQL commits, and the rest follows.
    pub async fn patch(
        &self,
        c: &Campaign,
        closes_at: Option<DateTime<Utc>>,
        stocks: Vec<Restock>,
        actor: String,
    ) -> Result<(), RestockError> {
        self.locked(c, move |me, c, token| async move {
            me.patch_locked(&c, closes_at, &stocks, &actor, &token)
                .await
        })
        .await
    }

    async fn patch_locked(
        &self,
        c: &Campaign,
        closes_at: Option<DateTime<Utc>>,
        stocks: &[Restock],
        actor: &str,
        token: &str,
    ) -> Result<(), RestockError> {
        let live = !Self::keys_expired(c, Utc::now());
        let k = self.keys(c);
        if live && !stocks.is_empty() && self.redis.state_generation(&k).await?.is_none() {
            self.rebuild_locked(c, &k).await?;
        }
        let open = self.db.begin_patch(c.id, closes_at, stocks, actor).await?;
        let lowers: Vec<StockChange> = open
            .stocks
            .iter()
            .filter(|(_, old, new)| new < old)
            .filter_map(|&(pool_id, was, stock)| {
                c.pool_index_of(pool_id)
                    .map(|pidx| StockChange { pidx, stock, was })
            })
            .collect();
        if live && !lowers.is_empty() {
            // A refused pool's name and the stock asked for it.
            let asked = |pidx: usize| {
                let stock = lowers
                    .iter()
                    .find(|l| l.pidx == pidx)
                    .map_or(0, |l| l.stock);
                (c.pools[pidx].name.as_str().to_string(), stock)
            };
            let fence = Fence {
                lock: &k.rebuild_lock,
                token,
            };
            let done = match self.redis.restock(&k, &lowers, fence).await {
                Ok(done) => done,
                Err(e) => {
                    // The script may have run (a reply lost): PostgreSQL
                    // rolls back, and Redis is brought back to what it
                    // holds before the lock is given up, so no claim is
                    // refused against a lower that never happened.
                    // Converged whatever the rollback answers.
                    let _ = open.rollback().await;
                    self.converge_after_failure(c, token).await;
                    return Err(AdmissionError::from(e).into());
                }
            };
            match done {
                Restocked::Done => {}
                // Lost since the check above: the next rebuild reads
                // PostgreSQL, which this transaction did not change.
                Restocked::NoState | Restocked::Lost => {
                    return Err(AdmissionError::Rebuilding.into())
                }
                Restocked::Short { pidx, left, was } => {
                    let (pool, stock) = asked(pidx);
                    return Err(PatchError::BelowTaken {
                        pool,
                        stock,
                        taken: (was - left) as i32,
                    }
                    .into());
                }
                Restocked::SlotTaken { pidx, slot } => {
                    let (pool, stock) = asked(pidx);
                    return Err(PatchError::SlotAbove { pool, stock, slot }.into());
                }
            }
        }
        if let Err(e) = open.commit().await {
            // Committed or not (a lost reply): Redis follows what
            // PostgreSQL holds.
            self.converge_after_failure(c, token).await;
            return Err(e.into());
        }
        self.apply_locked(c, token).await?;
        Ok(())
    }

    /// Best effort, still under the lock: brings Redis to what PostgreSQL
    /// holds after a change failed half-way; what this cannot do (Redis or
    /// PostgreSQL down) the reconciler does on its next pass.
    async fn converge_after_failure(&self, c: &Campaign, token: &str) {
        if let Err(e) = self.apply_locked(c, token).await {
            tracing::warn!(campaign = %c.id, error = %e,
                "a failed stock change left redis below postgres; the reconciler will bring it back");
        }
    }
}
