//! `redis-queue`: seed 000's method 2. Redis validates and queues: one Lua
//! call dedupes, draws the arrival number, refuses at the door what the
//! stock cannot serve (durably, through the group committer, before telling), and appends the rest to a queue stream (202
//! `queued`). One drainer per campaign (a background task holding a lease)
//! grants in arrival order, durably, and writes final answers back.

pub mod drainer;

use chrono::{DateTime, Utc};

use super::{
    redis_common::{window_rejection, RedisCommon, ScriptReply, Stored},
    Admission, AdmissionError, CancelOutcome,
};
use crate::{
    domain::{Campaign, ClaimOutcome, Pool, UserId},
    modes::redis_common::committer::CommitterHandle,
};

/// The queue-and-drain mode.
#[derive(Clone)]
pub struct RedisQueue {
    /// Redis and PostgreSQL.
    common: RedisCommon,
    /// Makes the refusals at the door durable before they are answered.
    committer: CommitterHandle,
}

impl RedisQueue {
    /// The shared Redis side, to tune.
    pub fn common_mut(&mut self) -> &mut RedisCommon {
        &mut self.common
    }

    /// The mode over shared connections.
    pub fn new(common: RedisCommon, committer: CommitterHandle) -> Self {
        Self { common, committer }
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
            ScriptReply::Window(reason) => Ok(window_rejection(user, reason)),
            // A refusal is final: durable before it is told.
            ScriptReply::New(Stored::Refusing { seq }, gen) => {
                self.common
                    .commit_refusal_detached(&self.committer, campaign, user, seq, gen)
                    .await
            }
            ScriptReply::New(s, gen) | ScriptReply::Dup(s, gen) => {
                self.common.settle(campaign, user, s, Some(gen)).await
            }
        }
    }

    async fn status(
        &self,
        campaign: &Campaign,
        user: &UserId,
    ) -> Result<Option<ClaimOutcome>, AdmissionError> {
        self.common.status_settled(campaign, user).await
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
