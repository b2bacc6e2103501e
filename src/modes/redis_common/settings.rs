//! An operator's change of a live campaign (pause, resume, the window's
//! end) carried to its Redis state. PostgreSQL holds the change first; this
//! applies what PostgreSQL holds *now* to every shard's loaded state, under
//! the campaign's rebuild lock, so a rebuild racing the change cannot load
//! the settings from before it (docs/ARCHITECTURE.md, "Operator controls").

use std::time::Duration;

use chrono::Utc;

use super::{AdmissionError, RedisCommon};
use crate::{
    domain::{generate_code, Campaign},
    storage::pg,
};

/// How long an operator's change waits for a rebuild in progress to end
/// before answering 503 (it may then be retried: it is idempotent).
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// How long the change holds the rebuild lock at most (a few script calls).
const LOCK_MS: u64 = 10_000;

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

    /// Applies the pause flag, the window's end and the keys' expiry that
    /// PostgreSQL holds for `c` now to every shard's loaded state. A shard
    /// with no state is left alone: whoever loads it reads PostgreSQL after
    /// this change committed. Under the rebuild lock, the settings read
    /// inside it: a rebuild either read PostgreSQL after the change, or
    /// loaded its state before this runs; two operators' changes are
    /// applied in turn, each with what PostgreSQL held when it ran.
    pub async fn apply_settings(&self, c: &Campaign) -> Result<(), AdmissionError> {
        let k = self.keys(c);
        let token = generate_code();
        let deadline = tokio::time::Instant::now() + LOCK_WAIT;
        while !self.try_lock(&k.rebuild_lock, &token, LOCK_MS).await? {
            if tokio::time::Instant::now() >= deadline {
                return Err(AdmissionError::Rebuilding);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // In a task of its own: a caller dropped mid-way must not leave the
        // lock held.
        let (me, c2) = (self.clone(), c.clone());
        let lock = k.rebuild_lock.clone();
        tokio::spawn(async move {
            let result = me.apply_locked(&c2).await;
            let _ = me.redis.unlock(&lock, &token).await;
            result
        })
        .await
        .unwrap_or(Err(AdmissionError::Rebuilding))
    }

    async fn apply_locked(&self, c: &Campaign) -> Result<(), AdmissionError> {
        let Some(now_c) = pg::load_campaign(&self.db, c.id).await? else {
            return Ok(());
        };
        let exp = Self::expire_at_ms(&now_c, Utc::now());
        let closes = now_c.closes_at.map(|t| t.timestamp_millis());
        for s in self.shards(&now_c).iter() {
            self.redis.settings(s, now_c.paused, closes, exp).await?;
        }
        Ok(())
    }
}
