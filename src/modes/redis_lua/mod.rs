//! `redis-lua`: seed 000's method 1 and seed 004's design. Redis is the
//! database during the rush: one Lua call decides, records the answer and
//! appends the grant to an outbox stream; the flusher (a background task)
//! writes the outbox to PostgreSQL in batches. A `granted` answer is durable
//! only after the flush: that window is this mode's documented exposure.

pub mod flusher;

use chrono::{DateTime, Utc};

use super::{
    redis_common::{RedisCommon, Stored},
    Admission, AdmissionError, CancelOutcome,
};
use crate::domain::{Campaign, ClaimOutcome, Pool, UserId};

/// The write-behind mode.
#[derive(Clone)]
pub struct RedisLua {
    /// Redis and PostgreSQL.
    common: RedisCommon,
}

impl RedisLua {
    /// The shared Redis side, to tune.
    pub fn common_mut(&mut self) -> &mut RedisCommon {
        &mut self.common
    }

    /// The mode over shared connections.
    pub fn new(common: RedisCommon) -> Self {
        Self { common }
    }
}

impl Admission for RedisLua {
    async fn claim(
        &self,
        campaign: &Campaign,
        pool: &Pool,
        user: &UserId,
    ) -> Result<ClaimOutcome, AdmissionError> {
        self.common
            .claim_as_stored(campaign, pool, user, "lua")
            .await
    }

    async fn status(
        &self,
        campaign: &Campaign,
        user: &UserId,
    ) -> Result<Option<ClaimOutcome>, AdmissionError> {
        self.common.status_settled(campaign, user).await
    }

    /// Cancels in Redis and appends the cancellation to the outbox, behind
    /// the grant it cancels, so the flusher applies both in order.
    async fn cancel(
        &self,
        campaign: &Campaign,
        user: &UserId,
        _now: DateTime<Utc>,
    ) -> Result<CancelOutcome, AdmissionError> {
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
