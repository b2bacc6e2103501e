//! `redis-queue`: seed 000's method 2. Redis validates and queues: one Lua
//! call dedupes, draws the arrival number, refuses at the door what the
//! stock cannot serve, and appends the rest to a queue stream (202
//! `queued`). One drainer per campaign (a background task holding a lease)
//! grants in arrival order, durably, and writes final answers back.

use chrono::{DateTime, Utc};

use super::{redis_common::RedisCommon, Admission, AdmissionError, CancelOutcome};
use crate::domain::{Campaign, ClaimOutcome, Pool, UserId};

/// The queue-and-drain mode.
#[derive(Clone)]
pub struct RedisQueue {
    /// Redis and PostgreSQL.
    common: RedisCommon,
}

impl RedisQueue {
    /// The mode over shared connections.
    pub fn new(common: RedisCommon) -> Self {
        Self { common }
    }
}

impl Admission for RedisQueue {
    async fn claim(
        &self,
        campaign: &Campaign,
        pool: &Pool,
        user: &UserId,
    ) -> Result<ClaimOutcome, AdmissionError> {
        self.common
            .claim_as_stored(campaign, pool, user, "queue")
            .await
    }

    async fn status(
        &self,
        campaign: &Campaign,
        user: &UserId,
    ) -> Result<Option<ClaimOutcome>, AdmissionError> {
        self.common.status_as_stored(campaign, user).await
    }

    async fn cancel(
        &self,
        campaign: &Campaign,
        user: &UserId,
        now: DateTime<Utc>,
    ) -> Result<CancelOutcome, AdmissionError> {
        self.common.cancel_durable(campaign, user, now).await
    }
}
