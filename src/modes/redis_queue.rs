//! `redis-queue`: seed 000's method 2. Redis validates and queues: one Lua
//! call dedupes, draws the arrival number, refuses at the door what the
//! stock cannot serve, and appends the rest to a queue stream (202
//! `queued`). One drainer per campaign (a background task holding a lease)
//! grants in arrival order, durably, and writes final answers back.

use chrono::{DateTime, Utc};

use super::{
    redis_common::{RedisCommon, ScriptReply},
    Admission, AdmissionError, CancelOutcome,
};
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
        match self
            .common
            .claim_script(campaign, pool, user, "queue")
            .await?
        {
            ScriptReply::Window(reason) => Ok(ClaimOutcome::Rejected {
                user_id: user.clone(),
                reason,
                seq: None,
            }),
            ScriptReply::New(s) | ScriptReply::Dup(s) => Ok(s.outcome(campaign, user)?),
        }
    }

    async fn status(
        &self,
        campaign: &Campaign,
        user: &UserId,
    ) -> Result<Option<ClaimOutcome>, AdmissionError> {
        Ok(self
            .common
            .stored(campaign, user)
            .await?
            .map(|s| s.outcome(campaign, user))
            .transpose()?)
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
