//! `redis-queue`: seed 000's method 2. Redis validates and queues: one Lua
//! call dedupes, draws the arrival number, refuses at the door what the
//! stock cannot serve (durably, through the group committer, before telling), and appends the rest to a queue stream (202
//! `queued`). One drainer per campaign (a background task holding a lease)
//! grants in arrival order, durably, and writes final answers back.

pub mod drainer;
mod draw;
mod gauges;

use chrono::{DateTime, Utc};

use super::{
    admission::{Admission, Answer, Cancel, Deps, Status},
    error::CancelOutcome,
    redis_common::{RedisCommon, Stored},
};
use crate::{
    domain::{Campaign, Pool, UserId},
    modes::redis_common::committer::CommitterHandle,
    storage::redis::{stream::TaskEnv, ScriptMode},
};
use tokio::task::JoinHandle;

/// The queue-and-drain mode.
#[derive(Clone)]
pub struct RedisQueue {
    /// Redis and PostgreSQL.
    common: RedisCommon,
    /// Makes the refusals at the door durable before they are answered.
    committer: CommitterHandle,
}

impl Admission for RedisQueue {
    const SCRIPT: Option<ScriptMode> = Some(ScriptMode::Enqueue);

    fn build(deps: &Deps) -> Self {
        Self {
            common: deps.common.clone(),
            committer: deps.committer.clone(),
        }
    }

    fn redis(&self) -> Option<&RedisCommon> {
        Some(&self.common)
    }

    /// The drainer (grants the queue in arrival order, durably) and the
    /// queue's gauges.
    fn background(&self, campaign: Campaign, env: TaskEnv) -> Option<JoinHandle<()>> {
        let c = &self.common;
        let handler = || drainer::Drainer {
            common: c.clone(),
            db: c.db.clone(),
            campaign: campaign.clone(),
            attempts: std::collections::HashMap::new(),
        };
        let sampler = tokio::spawn(gauges::sample(
            c.clone(),
            campaign.clone(),
            env.shutdown.clone(),
        ));
        let consumer = c.spawn_consumer(&campaign, ScriptMode::Enqueue, env, handler);
        Some(tokio::spawn(async move {
            let _ = consumer.await;
            sampler.abort();
            gauges::clear(&campaign);
        }))
    }

    async fn claim(&self, campaign: &Campaign, pool: &Pool, user: &UserId) -> Answer {
        let reply = self
            .common
            .claim_script(campaign, pool, user, ScriptMode::Enqueue)
            .await?;
        // A refusal is final: durable before it is told.
        self.common
            .answer(&self.committer, campaign, user, reply)
            .await
    }

    async fn status(&self, campaign: &Campaign, user: &UserId) -> Status {
        self.common.status_settled(campaign, user).await
    }

    /// A user still waiting leaves the queue (their place is skipped, its
    /// unit freed: `leave.lua`); a grant is cancelled durably.
    async fn cancel(&self, campaign: &Campaign, user: &UserId, now: DateTime<Utc>) -> Cancel {
        let k = self.common.keys_for(campaign, user);
        let r = self.common.redis.leave(&k, user.as_str()).await?;
        if let (Some("left"), Some(a)) = (r.first().map(String::as_str), r.get(1)) {
            metrics::counter!("firstcome_queue_left_total").increment(1);
            let left = Stored::parse(a)?.outcome(campaign, user)?;
            return Ok(CancelOutcome::Cancelled(left));
        }
        self.common.cancel_durable(campaign, user, now).await
    }
}
