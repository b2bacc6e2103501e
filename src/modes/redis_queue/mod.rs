//! `redis-queue`: seed 000's method 2. Redis validates and queues: one Lua
//! call dedupes, draws the arrival number, refuses at the door what the
//! stock cannot serve (durably, through the group committer, before telling), and appends the rest to a queue stream (202
//! `queued`). One drainer per campaign (a background task holding a lease)
//! grants in arrival order, durably, and writes final answers back.

pub mod drainer;

use chrono::{DateTime, Utc};

use super::{
    admission::{Admission, Answer, Cancel, Deps, Status},
    redis_common::RedisCommon,
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

    /// The drainer: grants the queue in arrival order, durably.
    fn background(&self, campaign: Campaign, env: TaskEnv) -> Option<JoinHandle<()>> {
        let c = &self.common;
        let handler = || drainer::Drainer {
            common: c.clone(),
            db: c.db.clone(),
            campaign: campaign.clone(),
            attempts: std::collections::HashMap::new(),
        };
        Some(c.spawn_consumer(&campaign, ScriptMode::Enqueue, env, handler))
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

    async fn cancel(&self, campaign: &Campaign, user: &UserId, now: DateTime<Utc>) -> Cancel {
        self.common.cancel_durable(campaign, user, now).await
    }
}
