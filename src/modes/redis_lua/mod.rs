//! `redis-lua`: seed 000's method 1 and seed 004's design. Redis is the
//! database during the rush: one Lua call decides, records the answer and
//! appends the grant to an outbox stream; the flusher (a background task)
//! writes the outbox to PostgreSQL in batches. A `granted` answer is durable
//! only after the flush: that window is this mode's documented exposure.

pub mod flusher;

use chrono::{DateTime, Utc};

use tokio::task::JoinHandle;

use super::{
    admission::{Admission, Answer, Cancel, Deps, Status},
    error::{AdmissionError, CancelOutcome},
    redis_common::{RedisCommon, Stored},
};
use crate::{
    domain::{Campaign, Pool, UserId},
    storage::redis::{stream::TaskEnv, ScriptMode},
};

/// The write-behind mode.
#[derive(Clone)]
pub struct RedisLua {
    /// Redis and PostgreSQL.
    common: RedisCommon,
}

impl Admission for RedisLua {
    const SCRIPT: Option<ScriptMode> = Some(ScriptMode::WriteBehind);

    fn build(deps: &Deps) -> Self {
        Self {
            common: deps.common.clone(),
        }
    }

    fn redis(&self) -> Option<&RedisCommon> {
        Some(&self.common)
    }

    /// The flusher: writes the outbox to PostgreSQL behind the answers.
    fn background(&self, campaign: Campaign, env: TaskEnv) -> Option<JoinHandle<()>> {
        let c = &self.common;
        // One per shard: each shard has its own outbox.
        let handler = || flusher::Flusher {
            common: c.clone(),
            db: c.db.clone(),
            campaign: campaign.clone(),
        };
        Some(c.spawn_consumer(&campaign, ScriptMode::WriteBehind, env, handler))
    }

    async fn claim(&self, campaign: &Campaign, pool: &Pool, user: &UserId) -> Answer {
        self.common
            .claim_as_stored(campaign, pool, user, ScriptMode::WriteBehind)
            .await
    }

    async fn status(&self, campaign: &Campaign, user: &UserId) -> Status {
        self.common.status_settled(campaign, user).await
    }

    /// Cancels in Redis and appends the cancellation to the outbox, behind
    /// the grant it cancels, so the flusher applies both in order.
    async fn cancel(&self, campaign: &Campaign, user: &UserId, _now: DateTime<Utc>) -> Cancel {
        let Some(s) = self.common.stored(campaign, user).await? else {
            return Ok(CancelOutcome::NotFound);
        };
        let Stored::Granted { pidx, .. } = s else {
            return Ok(match s {
                Stored::Cancelled { .. } => CancelOutcome::Cancelled(s.outcome(campaign, user)?),
                _ => CancelOutcome::NotGranted(s.outcome(campaign, user)?),
            });
        };
        let r = self
            .common
            .cancel_script(campaign, user, pidx, None, true)
            .await?;
        match (r.first().map(String::as_str), r.get(1)) {
            (Some("cancelled" | "already"), Some(a)) => Ok(CancelOutcome::Cancelled(
                Stored::parse(a)?.outcome(campaign, user)?,
            )),
            (Some("noinit"), _) => Err(AdmissionError::Rebuilding),
            _ => Err(AdmissionError::Pending),
        }
    }
}
