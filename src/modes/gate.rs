//! `gate` (the default): Redis decides in one Lua call, PostgreSQL makes
//! the winner durable before anyone is told. Losers and repeats never touch
//! PostgreSQL; winners are group-committed (many per transaction, one
//! fsync). If the write fails, a compensating script gives the stock and
//! slot back and the client gets 503.

use chrono::{DateTime, Utc};

use super::{
    redis_common::{window_rejection, RedisCommon, ScriptReply, Stored},
    Admission, AdmissionError, CancelOutcome,
};
use crate::{
    domain::{Campaign, ClaimOutcome, Pool, UserId},
    storage::pg::{self, NewGrant},
    tasks::committer::{CommitError, CommitterHandle, Promotion},
};

/// The reserve-then-group-commit mode.
#[derive(Clone)]
pub struct Gate {
    /// Redis and PostgreSQL.
    common: RedisCommon,
    /// The group committer winners are handed to.
    committer: CommitterHandle,
}

impl Gate {
    /// The mode over shared connections.
    pub fn new(common: RedisCommon, committer: CommitterHandle) -> Self {
        Self { common, committer }
    }

    /// The shared Redis side.
    pub fn common(&self) -> &RedisCommon {
        &self.common
    }

    /// Makes a fresh reservation durable, or compensates. Runs in its own
    /// task so that a client hanging up cannot strand the reservation.
    async fn commit(
        common: RedisCommon,
        committer: CommitterHandle,
        campaign: Campaign,
        pool_id: i64,
        user: UserId,
        pending: Stored,
    ) -> Result<ClaimOutcome, AdmissionError> {
        let Stored::Pending {
            pidx,
            slot,
            ref code,
            seq,
            ..
        } = pending
        else {
            return Ok(pending.outcome(&campaign, &user)?);
        };
        let grant = NewGrant {
            campaign_id: campaign.id.0,
            pool_id,
            user_id: user.as_str().to_string(),
            slot,
            code: code.clone(),
            seq,
        };
        let g = Stored::Granted {
            pidx,
            slot,
            code: code.clone(),
            seq,
        };
        let promotion = Promotion {
            keys: common.keys(&campaign),
            from: pending.encode(),
            to: g.encode(),
        };
        match committer.commit(grant, Some(promotion)).await {
            // Durable now: answer granted even if Redis missed the promotion
            // (a later read settles it from PostgreSQL).
            Ok(true) => Ok(g.outcome(&campaign, &user)?),
            Ok(false) => {
                // A unique index refused the row: PostgreSQL already holds a
                // grant for this user (Redis was rebuilt behind a commit).
                metrics::counter!("firstcome_gate_conflicts_total").increment(1);
                let existing = pg::grant_answer(&common.db, &campaign, &user).await?;
                let replacement = match &existing {
                    Some(ClaimOutcome::Granted {
                        pool,
                        slot,
                        code,
                        seq,
                        ..
                    }) => Some(Stored::Granted {
                        pidx: campaign
                            .pools
                            .iter()
                            .position(|p| &p.name == pool)
                            .unwrap_or(0) as i32,
                        slot: *slot,
                        code: code.clone(),
                        seq: *seq,
                    }),
                    _ => None,
                };
                common
                    .release(
                        &campaign,
                        &user,
                        &pending,
                        replacement.as_ref(),
                        Some(slot),
                        0,
                    )
                    .await?;
                match existing {
                    Some(a @ ClaimOutcome::Granted { .. }) => Ok(a),
                    _ => Err(AdmissionError::Pending),
                }
            }
            Err(e) => {
                metrics::counter!("firstcome_gate_compensations_total").increment(1);
                common
                    .release(&campaign, &user, &pending, None, Some(slot), 0)
                    .await?;
                match e {
                    CommitError::Database(e) => Err(AdmissionError::Database(e)),
                    CommitError::Closed => Err(AdmissionError::Pending),
                }
            }
        }
    }
}

impl Admission for Gate {
    async fn claim(
        &self,
        campaign: &Campaign,
        pool: &Pool,
        user: &UserId,
    ) -> Result<ClaimOutcome, AdmissionError> {
        match self
            .common
            .claim_script(campaign, pool, user, "gate")
            .await?
        {
            ScriptReply::Window(reason) => Ok(window_rejection(user, reason)),
            ScriptReply::New(s @ Stored::Pending { .. }) => {
                let task = tokio::spawn(Self::commit(
                    self.common.clone(),
                    self.committer.clone(),
                    campaign.clone(),
                    pool.id,
                    user.clone(),
                    s,
                ));
                task.await.map_err(|_| AdmissionError::Pending)?
            }
            ScriptReply::New(s) | ScriptReply::Dup(s) => {
                self.common.settle(campaign, user, s).await
            }
        }
    }

    async fn status(
        &self,
        campaign: &Campaign,
        user: &UserId,
    ) -> Result<Option<ClaimOutcome>, AdmissionError> {
        match self.common.stored(campaign, user).await? {
            None => Ok(None),
            Some(s) => self.common.settle(campaign, user, s).await.map(Some),
        }
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
