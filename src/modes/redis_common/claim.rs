//! The claim script's call and the answers it stores: a fresh decision, a
//! repeat, a refusal made durable before it is told, an answer read back.

use std::time::Duration;

use super::{shards::Dry, window_rejection, AdmissionError, RedisCommon, ScriptReply, Stored};
use crate::storage::redis::ScriptMode;
use crate::{
    domain::{
        generate_code,
        shard::{home_shard, shard_range},
        Campaign, ClaimOutcome, Pool, RejectReason, UserId,
    },
    modes::redis_common::committer::{
        CommitError, CommitterHandle, Promotion, Row as CommitRow, Verdict,
    },
    storage::{pg::NewRejection, redis::RedisStoreError},
};

/// How long a claim that finds the state missing waits for a rebuild.
const REBUILD_WAIT: Duration = Duration::from_secs(1);
/// How often such a claim looks again while another process rebuilds.
const REBUILD_POLL: Duration = Duration::from_millis(5);

fn second(r: &[String]) -> Result<&str, RedisStoreError> {
    r.get(1)
        .map(String::as_str)
        .ok_or_else(|| RedisStoreError::Protocol(format!("short reply {r:?}")))
}

impl RedisCommon {
    /// Runs the claim script for `user` on `pool`, rebuilding the state from
    /// PostgreSQL first if Redis lost it.
    pub async fn claim_script(
        &self,
        c: &Campaign,
        pool: &Pool,
        user: &UserId,
        mode: ScriptMode,
    ) -> Result<ScriptReply, AdmissionError> {
        let h = home_shard(user, c.shards);
        let k = self.shards(c)[usize::from(h)].clone();
        let (_, hi) = shard_range(pool.stock, h, c.shards);
        // The queue's drainer draws codes when it allocates slots.
        let code = if mode == ScriptMode::Enqueue {
            String::new()
        } else {
            generate_code()
        };
        // A claim that finds the state missing rebuilds it, or waits a
        // little for whoever is rebuilding it, before answering 503. One
        // that finds its shard dry moves stock there or proves the pool
        // sold out (shards.rs), within the same bound.
        let deadline = tokio::time::Instant::now() + REBUILD_WAIT;
        let mut proven: Option<(String, i64)> = None;
        loop {
            let r = self
                .redis
                .claim(
                    &k,
                    pool.idx as usize,
                    user.as_str(),
                    &code,
                    mode,
                    i64::from(hi),
                    proven.as_ref().map(|(v, g)| (v.as_str(), *g)),
                )
                .await?;
            let gen = || -> Result<i64, RedisStoreError> {
                r.get(2)
                    .and_then(|g| g.parse().ok())
                    .ok_or_else(|| RedisStoreError::Protocol(format!("claim: {r:?}")))
            };
            match r.first().map(String::as_str) {
                Some("noinit") => {
                    // A proof holds in its generation only.
                    proven = None;
                    // Claims of this process wait for one rebuild and
                    // retry the moment it ends; another process' rebuild
                    // (the Redis lock) is polled, the poll's pause inside
                    // the flight so that its waiters pause too. A waiter
                    // gives up at the deadline, as before; the rebuilder
                    // itself is never cut short (it holds the Redis lock).
                    let flight = self
                        .rebuilds
                        .run_waiting_until(c.id, Some(deadline), async {
                            let r = self.rebuild(c).await;
                            if matches!(r, Err(AdmissionError::Rebuilding)) {
                                tokio::time::sleep(REBUILD_POLL).await;
                            }
                            r
                        });
                    match flight.await {
                        Some(Ok(())) | None | Some(Err(AdmissionError::Rebuilding)) => {}
                        Some(Err(e)) => return Err(e),
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err(AdmissionError::Rebuilding);
                    }
                    continue;
                }
                Some("dry") => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(AdmissionError::Pending);
                    }
                    let dry = Dry::parse(h, &r)?;
                    proven = self.find_stock(c, pool, &dry).await?;
                    continue;
                }
                Some("unfrozen") => {
                    // Fair start: the first claim after opening closes the
                    // pre-queue (idempotent), then is numbered after it.
                    if tokio::time::Instant::now() >= deadline {
                        return Err(AdmissionError::Rebuilding);
                    }
                    self.redis.freeze(&k).await?;
                    continue;
                }
                Some("dup") => return Ok(ScriptReply::Dup(Stored::parse(second(&r)?)?, gen()?)),
                Some("new") => return Ok(ScriptReply::New(Stored::parse(second(&r)?)?, gen()?)),
                Some("paused") => return Err(AdmissionError::Paused),
                Some("not_open") => return Ok(ScriptReply::Window(RejectReason::NotOpen)),
                Some("closed") => return Ok(ScriptReply::Window(RejectReason::Closed)),
                _ => return Err(RedisStoreError::Protocol(format!("claim: {r:?}")).into()),
            }
        }
    }

    /// A claim whose stored answer is final as the script gives it
    /// (redis-lua): nothing waits on PostgreSQL.
    pub async fn claim_as_stored(
        &self,
        c: &Campaign,
        pool: &Pool,
        user: &UserId,
        mode: ScriptMode,
    ) -> Result<ClaimOutcome, AdmissionError> {
        match self.claim_script(c, pool, user, mode).await? {
            ScriptReply::Window(reason) => Ok(window_rejection(user, reason)),
            ScriptReply::New(s, _) | ScriptReply::Dup(s, _) => Ok(s.outcome(c, user)?),
        }
    }

    /// The answer to a claim script's reply, in the modes that make a
    /// refusal durable before telling it (gate, redis-queue): a refusal is
    /// committed first, anything else settled (gate handles its fresh
    /// reservations before calling this).
    pub async fn answer(
        &self,
        committer: &CommitterHandle,
        c: &Campaign,
        user: &UserId,
        reply: ScriptReply,
    ) -> Result<ClaimOutcome, AdmissionError> {
        match reply {
            ScriptReply::Window(reason) => Ok(window_rejection(user, reason)),
            ScriptReply::New(Stored::Refusing { seq }, gen) => {
                self.commit_refusal_detached(committer, c, user, seq, gen)
                    .await
            }
            ScriptReply::New(s, gen) | ScriptReply::Dup(s, gen) => {
                self.settle(c, user, s, Some(gen)).await
            }
        }
    }

    /// Makes a fresh refusal (`X`) durable through the group committer,
    /// then answers it (gate, redis-queue). Runs in its own task, like a
    /// grant's commit: a client hanging up must not leave the refusal
    /// waiting for a read.
    pub async fn commit_refusal_detached(
        &self,
        committer: &CommitterHandle,
        c: &Campaign,
        user: &UserId,
        seq: i64,
        gen: i64,
    ) -> Result<ClaimOutcome, AdmissionError> {
        let (common, committer) = (self.clone(), committer.clone());
        let (c, user) = (c.clone(), user.clone());
        let commit = async move {
            let x = Stored::Refusing { seq };
            let r = Stored::Rejected { seq };
            let row = CommitRow::Refusal(NewRejection {
                campaign_id: c.id.0,
                user_id: user.as_str().to_string(),
                seq,
            });
            let promotion = Promotion {
                keys: common.keys_for(&c, &user),
                from: x.encode(),
                to: r.encode(),
            };
            match committer.commit(row, gen, Some(promotion)).await {
                Ok(Verdict::Stored) => Ok(r.outcome(&c, &user)?),
                Ok(Verdict::Refused) => common.adopt_durable(&c, &user, &x).await,
                Ok(Verdict::Stale) => {
                    common.drop_stale(&c, gen).await?;
                    Err(AdmissionError::Rebuilding)
                }
                // Nothing to give back: the refusal stays `X` and the next
                // read makes it durable.
                Err(CommitError::Database(e)) => Err(AdmissionError::Database(e)),
                Err(CommitError::Closed) => Err(AdmissionError::Pending),
            }
        };
        tokio::spawn(commit)
            .await
            .map_err(|_| AdmissionError::Pending)?
    }

    /// A refusal PostgreSQL did not take because it already holds the user's
    /// final answer (a refusal made earlier, or a grant): that answer
    /// replaces the pending one, and is the answer.
    pub(super) async fn adopt_durable(
        &self,
        c: &Campaign,
        user: &UserId,
        pending: &Stored,
    ) -> Result<ClaimOutcome, AdmissionError> {
        let Some(d) = self.db.durable_answer(c, user).await? else {
            return Err(AdmissionError::Pending);
        };
        let s = Stored::from_outcome(c, &d)?;
        self.promote(
            c,
            &[(user.as_str().to_string(), pending.encode(), s.encode())],
            false,
        )
        .await?;
        Ok(d)
    }

    /// The user's stored answer, `Ok(None)` when the user never claimed.
    /// When Redis has no state for the campaign, PostgreSQL answers.
    pub async fn stored(
        &self,
        c: &Campaign,
        user: &UserId,
    ) -> Result<Option<Stored>, AdmissionError> {
        Ok(self.stored_gen(c, user).await?.map(|(s, _)| s))
    }

    /// The user's stored answer and the generation of the state holding it
    /// (`None` when PostgreSQL answered because Redis has no state).
    pub async fn stored_gen(
        &self,
        c: &Campaign,
        user: &UserId,
    ) -> Result<Option<(Stored, Option<i64>)>, AdmissionError> {
        let k = self.keys_for(c, user);
        let (gen, ans, unflushed) = self.redis.read_answer(&k, user.as_str()).await?;
        if let Some(g) = gen {
            return ans
                .map(|a| Stored::parse(&a).map(|s| (s, Some(g))))
                .transpose()
                .map_err(Into::into);
        }
        // No whole state, but the user's answer is there (a state dropped
        // by the server check, or meta lost alone), or answers wait in the
        // outbox (redis-lua): they may not be in PostgreSQL yet, which
        // would contradict them. Wait for the rebuild instead.
        if ans.is_some() || unflushed > 0 {
            return Err(AdmissionError::Rebuilding);
        }
        let durable = match self.db.grant_answer(c, user).await? {
            Some(a) => Some(a),
            None => self.db.rejection_answer(c.id, user).await?,
        };
        Ok(durable
            .map(|o| Stored::from_outcome(c, &o))
            .transpose()?
            .map(|s| (s, None)))
    }
}
