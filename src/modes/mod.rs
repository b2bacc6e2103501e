//! Admission modes: one module per mode, all behind [`Admission`].
//!
//! The HTTP layer resolves the campaign and pool, then hands the claim to
//! [`Admissions`], which dispatches on the campaign's mode. Every mode keeps
//! the invariants of DESIGN.md; they differ in where the decision is made
//! (PostgreSQL row lock, conditional update, Redis Lua) and when a grant
//! becomes durable.

use std::{future::Future, time::Duration};

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::{
    domain::{Campaign, ClaimOutcome, Mode, Pool, UserId},
    modes::redis_common::committer::CommitterHandle,
    storage::{pg::PgError, redis::RedisStore, redis::RedisStoreError},
};

pub mod db_atomic;
pub mod db_common;
pub mod db_lock;
pub mod gate;
pub mod redis_common;
pub mod redis_lua;
pub mod redis_queue;

/// Why a mode could not give an answer. Every variant is a 5xx-class
/// condition the client may retry; refusals are answers, not errors.
#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    /// PostgreSQL failed or is unreachable.
    #[error(transparent)]
    Database(#[from] PgError),
    /// Redis failed or is unreachable.
    #[error(transparent)]
    Redis(#[from] RedisStoreError),
    /// The campaign's Redis state is being rebuilt from PostgreSQL.
    #[error("campaign state is being rebuilt; retry shortly")]
    Rebuilding,
    /// The answer did not settle in time (a commit in flight elsewhere).
    #[error("the claim is still being processed; retry shortly")]
    Pending,
}

/// What a cancellation found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The grant is (now, or already) cancelled; its slot is back in stock.
    Cancelled(ClaimOutcome),
    /// The user never claimed.
    NotFound,
    /// The user's claim is not a grant (rejected or still queued).
    NotGranted(ClaimOutcome),
    /// Past closes_at + hold_secs: grants are final.
    HoldOver,
}

/// One admission mode.
pub trait Admission: Send + Sync {
    /// Admits or refuses `user` for `pool`. A repeated claim returns the
    /// first answer. The window has been checked by the caller.
    fn claim(
        &self,
        campaign: &Campaign,
        pool: &Pool,
        user: &UserId,
    ) -> impl Future<Output = Result<ClaimOutcome, AdmissionError>> + Send;

    /// The user's current answer; `None` if the user never claimed.
    fn status(
        &self,
        campaign: &Campaign,
        user: &UserId,
    ) -> impl Future<Output = Result<Option<ClaimOutcome>, AdmissionError>> + Send;

    /// Cancels the user's grant and returns its slot to stock. Idempotent.
    fn cancel(
        &self,
        campaign: &Campaign,
        user: &UserId,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<CancelOutcome, AdmissionError>> + Send;
}

/// Every mode, ready to dispatch on a campaign's [`Mode`].
#[derive(Clone)]
pub struct Admissions {
    db_lock: db_lock::DbLock,
    db_atomic: db_atomic::DbAtomic,
    gate: gate::Gate,
    redis_lua: redis_lua::RedisLua,
    redis_queue: redis_queue::RedisQueue,
}

impl Admissions {
    /// Builds every mode over the shared connections.
    pub fn new(
        db: PgPool,
        redis: RedisStore,
        committer: CommitterHandle,
        pending_wait: Duration,
    ) -> Self {
        let common = redis_common::RedisCommon::new(db.clone(), redis, pending_wait);
        Self {
            db_lock: db_lock::DbLock::new(db.clone()),
            db_atomic: db_atomic::DbAtomic::new(db),
            gate: gate::Gate::new(common.clone(), committer.clone()),
            redis_lua: redis_lua::RedisLua::new(common.clone()),
            redis_queue: redis_queue::RedisQueue::new(common, committer),
        }
    }

    /// Dispatches a claim to the campaign's mode.
    pub async fn claim(
        &self,
        campaign: &Campaign,
        pool: &Pool,
        user: &UserId,
    ) -> Result<ClaimOutcome, AdmissionError> {
        match campaign.mode {
            Mode::DbLock => self.db_lock.claim(campaign, pool, user).await,
            Mode::DbAtomic => self.db_atomic.claim(campaign, pool, user).await,
            Mode::Gate => self.gate.claim(campaign, pool, user).await,
            Mode::RedisLua => self.redis_lua.claim(campaign, pool, user).await,
            Mode::RedisQueue => self.redis_queue.claim(campaign, pool, user).await,
        }
    }

    /// Dispatches a status read to the campaign's mode.
    pub async fn status(
        &self,
        campaign: &Campaign,
        user: &UserId,
    ) -> Result<Option<ClaimOutcome>, AdmissionError> {
        match campaign.mode {
            Mode::DbLock => self.db_lock.status(campaign, user).await,
            Mode::DbAtomic => self.db_atomic.status(campaign, user).await,
            Mode::Gate => self.gate.status(campaign, user).await,
            Mode::RedisLua => self.redis_lua.status(campaign, user).await,
            Mode::RedisQueue => self.redis_queue.status(campaign, user).await,
        }
    }

    /// Dispatches a cancellation to the campaign's mode.
    pub async fn cancel(
        &self,
        campaign: &Campaign,
        user: &UserId,
        now: DateTime<Utc>,
    ) -> Result<CancelOutcome, AdmissionError> {
        if campaign.hold_until().is_some_and(|h| now >= h) {
            return Ok(CancelOutcome::HoldOver);
        }
        match campaign.mode {
            Mode::DbLock => self.db_lock.cancel(campaign, user, now).await,
            Mode::DbAtomic => self.db_atomic.cancel(campaign, user, now).await,
            Mode::Gate => self.gate.cancel(campaign, user, now).await,
            Mode::RedisLua => self.redis_lua.cancel(campaign, user, now).await,
            Mode::RedisQueue => self.redis_queue.cancel(campaign, user, now).await,
        }
    }

    /// Settles orphaned gate reservations after `d` (default
    /// [`redis_common::ORPHAN_PENDING_MS`]).
    pub fn with_orphan_after(mut self, d: std::time::Duration) -> Self {
        let ms = d.as_millis() as i64;
        for c in [
            self.gate.common_mut(),
            self.redis_lua.common_mut(),
            self.redis_queue.common_mut(),
        ] {
            c.orphan_after_ms = ms;
        }
        self
    }

    /// The shared Redis side of the Redis modes (campaign init, counters).
    pub fn redis(&self) -> &redis_common::RedisCommon {
        self.gate.common()
    }
}
