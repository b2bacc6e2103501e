//! `gate` (the default): Redis decides in one Lua call, PostgreSQL makes
//! the decision durable before anyone is told — the winner's grant, and the
//! loser's refusal too, since a final answer must outlive Redis' state.
//! Repeats never touch PostgreSQL; decisions are group-committed (many per
//! transaction, one fsync), fenced by the state's generation. If the write
//! fails, PostgreSQL settles the reservation (granted if the row landed,
//! else voided and its stock and slot given back) and the client gets 503.

pub mod orphans;

use chrono::{DateTime, Utc};

use super::{
    admission::{Admission, Answer, Cancel, Deps, Status},
    error::AdmissionError,
    redis_common::{RedisCommon, Release, ScriptReply, Stored},
};
use crate::{
    domain::{Campaign, ClaimOutcome, Pool, UserId},
    modes::redis_common::committer::{CommitError, CommitterHandle, Promotion, Row, Verdict},
    storage::{
        pg::NewGrant,
        redis::{stream::TaskEnv, ScriptMode},
    },
};
use tokio::task::JoinHandle;

/// The reserve-then-group-commit mode.
#[derive(Clone)]
pub struct Gate {
    /// Redis and PostgreSQL.
    common: RedisCommon,
    /// The group committer winners are handed to.
    committer: CommitterHandle,
}

impl Gate {
    /// Makes a fresh reservation durable, or compensates. Runs in its own
    /// task so that a client hanging up cannot strand the reservation.
    async fn commit(
        common: RedisCommon,
        committer: CommitterHandle,
        campaign: Campaign,
        pool_id: i64,
        user: UserId,
        pending: Stored,
        gen: i64,
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
            keys: common.keys_for(&campaign, &user),
            from: pending.encode(),
            to: g.encode(),
        };
        match committer
            .commit(Row::Grant(grant), gen, Some(promotion))
            .await
        {
            // Durable now: answer granted even if Redis missed the promotion
            // (a later read settles it from PostgreSQL).
            Ok(Verdict::Stored) => Ok(g.outcome(&campaign, &user)?),
            Ok(Verdict::Refused) => Self::refused(&common, &campaign, &user, &pending).await,
            Ok(Verdict::Stale) => {
                // The state it was reserved in is gone or going; nothing of
                // it may land. The user asks again in the rebuilt state.
                common.drop_stale(&campaign, gen).await?;
                Err(AdmissionError::Rebuilding)
            }
            Err(e) => {
                // The batch may have committed (a connection lost after
                // COMMIT): PostgreSQL decides, and the reservation is
                // released only once its commit can no longer land.
                metrics::counter!("firstcome_gate_compensations_total").increment(1);
                common.resolve_orphan(&campaign, &user, &pending).await?;
                if let Some(Stored::Granted { code: c, .. }) =
                    common.stored(&campaign, &user).await?
                {
                    if &c == code {
                        return Ok(g.outcome(&campaign, &user)?);
                    }
                }
                match e {
                    CommitError::Database(e) => Err(AdmissionError::Database(e)),
                    CommitError::Closed => Err(AdmissionError::Pending),
                }
            }
        }
    }

    /// PostgreSQL refused the row. If it holds the user's final answer (Redis
    /// was rebuilt behind a commit, or lost the answer), that answer is the
    /// user's and the reservation goes back. If it voided the code (the
    /// sweeper gave up on it), the sweeper released it. Otherwise the slot is
    /// held by a grant Redis did not know: the slot stays taken and the unit
    /// of stock it stood for was never there; the user may ask again.
    async fn refused(
        common: &RedisCommon,
        campaign: &Campaign,
        user: &UserId,
        pending: &Stored,
    ) -> Result<ClaimOutcome, AdmissionError> {
        metrics::counter!("firstcome_gate_conflicts_total").increment(1);
        let Stored::Pending { slot, code, .. } = pending else {
            return Err(AdmissionError::Pending);
        };
        if let Some(d) = common.db.durable_answer(campaign, user).await? {
            let s = Stored::from_outcome(campaign, &d)?;
            let r = Release::replaced_by(&s, Some(*slot));
            common.release(campaign, user, pending, r).await?;
            return Ok(d);
        }
        if common.db.code_state(code).await?.as_deref() == Some("void") {
            // Voided: whoever voided it released the reservation.
            return Err(AdmissionError::Pending);
        }
        tracing::warn!(campaign = %campaign.id, slot, "a reserved slot is held in postgres: kept taken");
        common
            .release(campaign, user, pending, Release::default())
            .await?;
        Err(AdmissionError::Pending)
    }
}

impl Admission for Gate {
    const SCRIPT: Option<ScriptMode> = Some(ScriptMode::Reserve);

    fn build(deps: &Deps) -> Self {
        Self {
            common: deps.common.clone(),
            committer: deps.committer.clone(),
        }
    }

    fn redis(&self) -> Option<&RedisCommon> {
        Some(&self.common)
    }

    /// The orphan sweeper: settles reservations whose request died.
    fn background(&self, campaign: Campaign, env: TaskEnv) -> Option<JoinHandle<()>> {
        Some(tokio::spawn(orphans::run(
            self.common.clone(),
            campaign,
            env.shutdown,
        )))
    }

    async fn claim(&self, campaign: &Campaign, pool: &Pool, user: &UserId) -> Answer {
        match self
            .common
            .claim_script(campaign, pool, user, ScriptMode::Reserve)
            .await?
        {
            ScriptReply::New(s @ Stored::Pending { .. }, gen) => {
                let task = tokio::spawn(Self::commit(
                    self.common.clone(),
                    self.committer.clone(),
                    campaign.clone(),
                    pool.id,
                    user.clone(),
                    s,
                    gen,
                ));
                task.await.map_err(|_| AdmissionError::Pending)?
            }
            other => {
                self.common
                    .answer(&self.committer, campaign, user, other)
                    .await
            }
        }
    }

    async fn status(&self, campaign: &Campaign, user: &UserId) -> Status {
        self.common.status_settled(campaign, user).await
    }

    async fn cancel(&self, campaign: &Campaign, user: &UserId, now: DateTime<Utc>) -> Cancel {
        self.common.cancel_durable(campaign, user, now).await
    }
}
