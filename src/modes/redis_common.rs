//! What the three Redis modes share: answers as Redis stores them, the claim
//! script call, rebuilding a campaign's state from PostgreSQL, and the
//! durable cancellation used by `gate` and `redis-queue`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};

use super::{AdmissionError, CancelOutcome};
use crate::{
    domain::{generate_code, Campaign, ClaimOutcome, Pool, RejectReason, UserId},
    storage::{
        pg::{self, NewGrant, NewRejection, PgError},
        redis::{CampaignKeys, InitState, PoolState, RedisStore, RedisStoreError},
    },
    tasks::committer::{CommitError, CommitterHandle, Promotion, Row as CommitRow, Verdict},
};

/// An answer as stored in the campaign's `ans` hash. The text form is
/// `kind|fields...` with `|` as separator (user ids and codes never hold it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// `G|pidx|slot|code|seq`
    Granted {
        /// Pool index.
        pidx: i32,
        /// Slot.
        slot: i32,
        /// Code.
        code: String,
        /// Arrival number.
        seq: i64,
    },
    /// `P|pidx|slot|code|seq|ms`: gate reservation, commit in flight.
    Pending {
        /// Pool index.
        pidx: i32,
        /// Slot.
        slot: i32,
        /// Code.
        code: String,
        /// Arrival number.
        seq: i64,
        /// Redis time of the reservation, ms.
        at_ms: i64,
    },
    /// `Q|pidx|seq` or, once the drainer allocated, `Q|pidx|seq|slot|code`.
    Queued {
        /// Pool index.
        pidx: i32,
        /// Arrival number.
        seq: i64,
        /// Allocated slot and code, if any.
        alloc: Option<(i32, String)>,
    },
    /// `R|reason|seq`: final, and durable (gate, redis-queue) or in the
    /// outbox (redis-lua).
    Rejected {
        /// Arrival number.
        seq: i64,
    },
    /// `D|pidx|seq`: a queued claim the drainer dead-lettered; shown as
    /// queued until an operator replays it (`firstcome dlq replay`).
    DeadLettered {
        /// Pool index.
        pidx: i32,
        /// Arrival number.
        seq: i64,
    },
    /// `X|seq`: refused, not yet durable (gate, redis-queue). Never shown
    /// as final: the caller makes it durable, then promotes it to `R`.
    Refusing {
        /// Arrival number.
        seq: i64,
    },
    /// `C|pidx|slot|code|seq`
    Cancelled {
        /// Pool index.
        pidx: i32,
        /// Slot.
        slot: i32,
        /// Code.
        code: String,
        /// Arrival number.
        seq: i64,
    },
}

impl Stored {
    /// Parses the stored text.
    pub fn parse(s: &str) -> Result<Self, RedisStoreError> {
        let bad = || RedisStoreError::Protocol(format!("bad answer {s:?}"));
        let f: Vec<&str> = s.split('|').collect();
        let int = |i: usize| -> Result<i64, RedisStoreError> {
            f.get(i).and_then(|x| x.parse().ok()).ok_or_else(bad)
        };
        let text = |i: usize| -> Result<String, RedisStoreError> {
            f.get(i).map(|x| x.to_string()).ok_or_else(bad)
        };
        Ok(match f.first().copied() {
            Some("G") => Stored::Granted {
                pidx: int(1)? as i32,
                slot: int(2)? as i32,
                code: text(3)?,
                seq: int(4)?,
            },
            Some("P") => Stored::Pending {
                pidx: int(1)? as i32,
                slot: int(2)? as i32,
                code: text(3)?,
                seq: int(4)?,
                at_ms: int(5)?,
            },
            Some("Q") => Stored::Queued {
                pidx: int(1)? as i32,
                seq: int(2)?,
                alloc: if f.len() >= 5 {
                    Some((int(3)? as i32, text(4)?))
                } else {
                    None
                },
            },
            Some("R") => Stored::Rejected { seq: int(2)? },
            Some("X") => Stored::Refusing { seq: int(1)? },
            Some("D") => Stored::DeadLettered {
                pidx: int(1)? as i32,
                seq: int(2)?,
            },
            Some("C") => Stored::Cancelled {
                pidx: int(1)? as i32,
                slot: int(2)? as i32,
                code: text(3)?,
                seq: int(4)?,
            },
            _ => return Err(bad()),
        })
    }

    /// The stored text.
    pub fn encode(&self) -> String {
        match self {
            Stored::Granted {
                pidx,
                slot,
                code,
                seq,
            } => format!("G|{pidx}|{slot}|{code}|{seq}"),
            Stored::Pending {
                pidx,
                slot,
                code,
                seq,
                at_ms,
            } => format!("P|{pidx}|{slot}|{code}|{seq}|{at_ms}"),
            Stored::Queued {
                pidx,
                seq,
                alloc: None,
            } => format!("Q|{pidx}|{seq}"),
            Stored::Queued {
                pidx,
                seq,
                alloc: Some((slot, code)),
            } => format!("Q|{pidx}|{seq}|{slot}|{code}"),
            Stored::Rejected { seq } => format!("R|sold_out|{seq}"),
            Stored::Refusing { seq } => format!("X|{seq}"),
            Stored::DeadLettered { pidx, seq } => format!("D|{pidx}|{seq}"),
            Stored::Cancelled {
                pidx,
                slot,
                code,
                seq,
            } => format!("C|{pidx}|{slot}|{code}|{seq}"),
        }
    }

    /// The answer a client sees. A pending reservation is not shown as
    /// granted (it is not durable yet): the caller waits for it to settle.
    pub fn outcome(
        &self,
        campaign: &Campaign,
        user: &UserId,
    ) -> Result<ClaimOutcome, RedisStoreError> {
        let pool = |pidx: i32| {
            campaign
                .pool_at(pidx)
                .map(|p| p.name.clone())
                .ok_or_else(|| RedisStoreError::Protocol(format!("unknown pool index {pidx}")))
        };
        Ok(match self {
            Stored::Granted {
                pidx,
                slot,
                code,
                seq,
            } => ClaimOutcome::Granted {
                user_id: user.clone(),
                pool: pool(*pidx)?,
                slot: *slot,
                code: code.clone(),
                seq: *seq,
            },
            Stored::Pending { seq, .. }
            | Stored::Queued { seq, .. }
            | Stored::Refusing { seq }
            | Stored::DeadLettered { seq, .. } => ClaimOutcome::Queued {
                user_id: user.clone(),
                seq: *seq,
            },
            Stored::Rejected { seq } => ClaimOutcome::Rejected {
                user_id: user.clone(),
                reason: RejectReason::SoldOut,
                seq: Some(*seq),
            },
            Stored::Cancelled {
                pidx,
                slot,
                code,
                seq,
            } => ClaimOutcome::Cancelled {
                user_id: user.clone(),
                pool: pool(*pidx)?,
                slot: *slot,
                code: code.clone(),
                seq: *seq,
            },
        })
    }
}

impl Stored {
    /// A durable answer (as PostgreSQL gives it) in its stored form.
    pub fn from_outcome(c: &Campaign, o: &ClaimOutcome) -> Result<Self, RedisStoreError> {
        Ok(match o {
            ClaimOutcome::Granted {
                pool,
                slot,
                code,
                seq,
                ..
            } => Stored::Granted {
                pidx: pool_index(c, pool)?,
                slot: *slot,
                code: code.clone(),
                seq: *seq,
            },
            ClaimOutcome::Cancelled {
                pool,
                slot,
                code,
                seq,
                ..
            } => Stored::Cancelled {
                pidx: pool_index(c, pool)?,
                slot: *slot,
                code: code.clone(),
                seq: *seq,
            },
            ClaimOutcome::Rejected { seq, .. } => Stored::Rejected {
                seq: seq.unwrap_or(0),
            },
            ClaimOutcome::Queued { .. } => {
                return Err(RedisStoreError::Protocol("queued is never durable".into()))
            }
        })
    }
}

/// The index of the campaign's pool named `name`; an error, never a guess,
/// for a name the campaign does not have.
pub fn pool_index(c: &Campaign, name: &crate::domain::PoolName) -> Result<i32, RedisStoreError> {
    c.pools
        .iter()
        .position(|p| &p.name == name)
        .map(|i| i as i32)
        .ok_or_else(|| RedisStoreError::Protocol(format!("campaign {} has no pool {name}", c.id)))
}

/// How a compensating release leaves the pool (`release.lua`).
#[derive(Debug, Clone, Default)]
pub struct Release<'a> {
    /// The user's answer afterwards; `None` deletes it (the user may claim
    /// again).
    pub replacement: Option<&'a Stored>,
    /// The reservation's slot to free, when PostgreSQL holds it for no one.
    pub free_slot: Option<i32>,
    /// Whether the reservation's unit of stock goes back to the door.
    pub give_back: bool,
    /// A slot PostgreSQL says is held (by the replacement), to mark taken.
    pub mark_taken: Option<i32>,
    /// Change of the queued counter.
    pub queued_delta: i64,
}

impl Release<'_> {
    /// A reservation that never became durable: its stock and slot go back.
    pub fn back(slot: Option<i32>) -> Self {
        Release {
            free_slot: slot,
            give_back: true,
            ..Default::default()
        }
    }
}

/// The answer to a claim outside the campaign's window (never remembered).
pub fn window_rejection(user: &UserId, reason: RejectReason) -> ClaimOutcome {
    ClaimOutcome::Rejected {
        user_id: user.clone(),
        reason,
        seq: None,
    }
}

/// What the claim script decided; the number is the generation of the
/// state that decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScriptReply {
    /// A fresh decision.
    New(Stored, i64),
    /// The user had already claimed: the first answer.
    Dup(Stored, i64),
    /// Outside the window.
    Window(RejectReason),
}

/// Shared state of the Redis modes.
#[derive(Clone)]
pub struct RedisCommon {
    /// Source of truth.
    pub db: PgPool,
    /// Redis.
    pub redis: RedisStore,
    /// How long a repeated claim waits for a pending reservation to settle.
    pub pending_wait: Duration,
    /// Age (Redis clock, ms) after which a pending reservation whose request
    /// never answered is settled from PostgreSQL.
    pub orphan_after_ms: i64,
}

/// Spread of key expiry across campaigns, so that campaigns closing at the
/// same time do not all expire at once (seed 004's stampede).
pub const EXPIRY_JITTER_SECS: i64 = 600;

/// A reservation older than this (by Redis' clock) whose request never
/// answered is settled from PostgreSQL: granted if its row is there, else
/// voided and released ([`pg::void_reservation`] makes sure its commit can
/// no longer land, so this bound is about liveness, not safety). Above the
/// usual longest commit: the pool's acquire timeout (3 s) plus the
/// statement timeout ([`crate::storage::pg::STATEMENT_TIMEOUT_MS`]).
pub const ORPHAN_PENDING_MS: i64 = 20_000;

/// Entries a redis-lua rebuild should let the flusher write first: those of
/// an outbox that has its consumer group (a flusher can read it) and whose
/// oldest entry is younger than ARGV[1] ms (the flusher is making
/// progress). Otherwise 0: an outbox nobody can or does flush must not
/// hold the campaign's claims hostage; its entries, of the replaced state's
/// generation, are then dropped by the flusher and counted as exposure.
const OUTBOX_TO_FLUSH: &str = "
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
if not ok then return 0 end
local has = false
for _, g in ipairs(groups) do
  for i = 1, #g, 2 do
    if g[i] == 'name' and g[i + 1] == 'g' then has = true end
  end
end
if not has then return 0 end
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1]
if not first then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ms = tonumber(string.match(first[1], '^(%d+)'))
if now - ms > tonumber(ARGV[1]) then return 0 end
return redis.call('XLEN', KEYS[1])
";

/// How long a redis-lua rebuild waits for a surviving outbox to flush.
const OUTBOX_WAIT_MS: i64 = 10_000;

/// How long a claim that finds the state missing waits for a rebuild.
const REBUILD_WAIT: Duration = Duration::from_secs(1);

/// How long a rebuild may hold the campaign's rebuild lock: above the
/// longest wait for the generation lock (the statement timeout) plus the
/// reads and the load.
const REBUILD_LOCK_MS: u64 = 60_000;

impl RedisCommon {
    /// Shared state over the connections.
    pub fn new(db: PgPool, redis: RedisStore, pending_wait: Duration) -> Self {
        Self {
            db,
            redis,
            pending_wait,
            orphan_after_ms: ORPHAN_PENDING_MS,
        }
    }

    /// Settles orphaned reservations after `d` instead.
    pub fn with_orphan_after(mut self, d: Duration) -> Self {
        self.orphan_after_ms = d.as_millis() as i64;
        self
    }

    /// The campaign's key names.
    pub fn keys(&self, c: &Campaign) -> std::sync::Arc<CampaignKeys> {
        self.redis.keys(c.id, c.pools.len())
    }

    /// When the campaign's keys expire, jitter included (ms since epoch).
    /// Deterministic per closed campaign, so a rebuild sets the same
    /// instant; an open-ended campaign's slides from `now`.
    pub fn expire_at_ms(c: &Campaign, now: DateTime<Utc>) -> i64 {
        let jitter = (c.id.0.wrapping_mul(7919)).rem_euclid(EXPIRY_JITTER_SECS);
        let end = c.keys_expire_at().unwrap_or_else(|| {
            now + chrono::Duration::seconds(crate::domain::OPEN_ENDED_KEY_LIFETIME_SECS)
        });
        (end + chrono::Duration::seconds(jitter)).timestamp_millis()
    }

    /// Whether the campaign's keys are past their life: Redis no longer
    /// serves it and answers come from PostgreSQL. Never for an open-ended
    /// campaign.
    pub fn keys_expired(c: &Campaign, now: DateTime<Utc>) -> bool {
        c.closes_at.is_some() && Self::expire_at_ms(c, now) <= now.timestamp_millis()
    }

    /// Redis' clock (ms since epoch): reservations carry it, so their age
    /// is measured on it too (an app host's clock may be skewed).
    pub async fn redis_now_ms(&self) -> Result<i64, AdmissionError> {
        let (s, us): (i64, i64) = self
            .redis
            .run(|mut c| async move { redis::cmd("TIME").query_async(&mut c).await })
            .await?;
        Ok(s * 1000 + us / 1000)
    }

    /// Runs the claim script for `user` on `pool`, rebuilding the state from
    /// PostgreSQL first if Redis lost it.
    pub async fn claim_script(
        &self,
        c: &Campaign,
        pool: &Pool,
        user: &UserId,
        mode: &str,
    ) -> Result<ScriptReply, AdmissionError> {
        let k = self.keys(c);
        let pk = &k.pools[pool.idx as usize];
        let stream = if mode == "queue" { &k.queue } else { &k.outbox };
        // The queue's drainer draws codes when it allocates slots.
        let code = if mode == "queue" {
            String::new()
        } else {
            generate_code()
        };
        let pidx = pool.idx.to_string();
        let stock = pool.stock.to_string();
        // A claim that finds the state missing rebuilds it, or waits a
        // little for whoever is rebuilding it, before answering 503.
        let deadline = tokio::time::Instant::now() + REBUILD_WAIT;
        loop {
            let r: Vec<String> = self
                .redis
                .eval(
                    &self.redis.scripts().claim,
                    &[
                        &k.meta, &k.ans, &k.seq, &pk.left, &pk.hw, &pk.free, stream, &k.queued,
                        &k.pending,
                    ],
                    &[user.as_str(), &pidx, &code, mode, &stock],
                )
                .await?;
            let gen = || -> Result<i64, RedisStoreError> {
                r.get(2)
                    .and_then(|g| g.parse().ok())
                    .ok_or_else(|| RedisStoreError::Protocol(format!("claim: {r:?}")))
            };
            match r.first().map(String::as_str) {
                Some("noinit") => {
                    match self.rebuild(c).await {
                        Ok(()) => {}
                        Err(AdmissionError::Rebuilding)
                            if tokio::time::Instant::now() < deadline =>
                        {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(e) => return Err(e),
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err(AdmissionError::Rebuilding);
                    }
                    continue;
                }
                Some("dup") => return Ok(ScriptReply::Dup(Stored::parse(second(&r)?)?, gen()?)),
                Some("new") => return Ok(ScriptReply::New(Stored::parse(second(&r)?)?, gen()?)),
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
        mode: &str,
    ) -> Result<ClaimOutcome, AdmissionError> {
        match self.claim_script(c, pool, user, mode).await? {
            ScriptReply::Window(reason) => Ok(window_rejection(user, reason)),
            ScriptReply::New(s, _) | ScriptReply::Dup(s, _) => Ok(s.outcome(c, user)?),
        }
    }

    /// Makes a fresh refusal (`X`) durable through the group committer,
    /// then answers it (gate, redis-queue).
    pub async fn commit_refusal(
        &self,
        committer: &CommitterHandle,
        c: &Campaign,
        user: &UserId,
        seq: i64,
        gen: i64,
    ) -> Result<ClaimOutcome, AdmissionError> {
        let x = Stored::Refusing { seq };
        let r = Stored::Rejected { seq };
        let row = CommitRow::Refusal(NewRejection {
            campaign_id: c.id.0,
            user_id: user.as_str().to_string(),
            seq,
        });
        let promotion = Promotion {
            keys: self.keys(c),
            from: x.encode(),
            to: r.encode(),
        };
        match committer.commit(row, gen, Some(promotion)).await {
            Ok(Verdict::Stored) => Ok(r.outcome(c, user)?),
            Ok(Verdict::Refused) => self.adopt_durable(c, user, &x).await,
            Ok(Verdict::Stale) => {
                self.drop_stale(c, gen).await?;
                Err(AdmissionError::Rebuilding)
            }
            // Nothing to give back: the refusal stays `X` and the next read
            // makes it durable.
            Err(CommitError::Database(e)) => Err(AdmissionError::Database(e)),
            Err(CommitError::Closed) => Err(AdmissionError::Pending),
        }
    }

    /// [`Self::commit_refusal`] in its own task, like a grant's commit: a
    /// client hanging up must not leave the refusal waiting for a read.
    pub async fn commit_refusal_detached(
        &self,
        committer: &CommitterHandle,
        c: &Campaign,
        user: &UserId,
        seq: i64,
        gen: i64,
    ) -> Result<ClaimOutcome, AdmissionError> {
        let (common, committer) = (self.clone(), committer.clone());
        let (c, u) = (c.clone(), user.clone());
        tokio::spawn(async move { common.commit_refusal(&committer, &c, &u, seq, gen).await })
            .await
            .map_err(|_| AdmissionError::Pending)?
    }

    /// A refusal PostgreSQL did not take because it already holds the user's
    /// final answer (a refusal made earlier, or a grant): that answer
    /// replaces the pending one, and is the answer.
    async fn adopt_durable(
        &self,
        c: &Campaign,
        user: &UserId,
        pending: &Stored,
    ) -> Result<ClaimOutcome, AdmissionError> {
        let Some(d) = pg::durable_answer(&self.db, c, user).await? else {
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
        let k = self.keys(c);
        let u = user.as_str().to_string();
        // The generation first: an answer read after it belongs to that
        // state or a newer one, never an older one.
        let (gen, ans): (Option<i64>, Option<String>) = self
            .redis
            .run(|mut conn| async move {
                redis::pipe()
                    .hget(&k.meta, "gen")
                    .hget(&k.ans, &u)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        if let Some(g) = gen {
            return ans
                .map(|a| Stored::parse(&a).map(|s| (s, Some(g))))
                .transpose()
                .map_err(Into::into);
        }
        let durable = match pg::grant_answer(&self.db, c, user).await? {
            Some(a) => Some(a),
            None => pg::rejection_answer(&self.db, c.id, user).await?,
        };
        Ok(durable
            .map(|o| Stored::from_outcome(c, &o))
            .transpose()?
            .map(|s| (s, None)))
    }

    /// The stored answer as the client sees it, once durable: a pending
    /// reservation or refusal is settled first (gate, redis-queue).
    pub async fn status_settled(
        &self,
        c: &Campaign,
        user: &UserId,
    ) -> Result<Option<ClaimOutcome>, AdmissionError> {
        match self.stored_gen(c, user).await? {
            None => Ok(None),
            Some((s, gen)) => self.settle(c, user, s, gen).await.map(Some),
        }
    }

    /// Waits (bounded by `pending_wait`) for a gate reservation to settle,
    /// then answers; a refusal not yet durable is made durable now (it is
    /// idempotent). A reservation orphaned by a dead request is settled
    /// from PostgreSQL.
    pub async fn settle(
        &self,
        c: &Campaign,
        user: &UserId,
        mut s: Stored,
        mut gen: Option<i64>,
    ) -> Result<ClaimOutcome, AdmissionError> {
        let deadline = tokio::time::Instant::now() + self.pending_wait;
        let mut pause = Duration::from_millis(1);
        // Ages are measured on Redis' clock, read once.
        let mut clock: Option<(i64, tokio::time::Instant)> = None;
        loop {
            match &s {
                Stored::Refusing { seq } => {
                    let g = gen.ok_or(AdmissionError::Rebuilding)?;
                    return self.resolve_refusal(c, user, *seq, g).await;
                }
                Stored::Pending { at_ms, .. } => {
                    let (r0, t0) = match clock {
                        Some(x) => x,
                        None => {
                            *clock.insert((self.redis_now_ms().await?, tokio::time::Instant::now()))
                        }
                    };
                    let now_ms = r0 + t0.elapsed().as_millis() as i64;
                    if now_ms - at_ms > self.orphan_after_ms {
                        self.resolve_orphan(c, user, &s).await?;
                    } else if tokio::time::Instant::now() >= deadline {
                        return Err(AdmissionError::Pending);
                    } else {
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_millis(50));
                    }
                }
                _ => return Ok(s.outcome(c, user)?),
            }
            (s, gen) = match self.stored_gen(c, user).await? {
                Some(x) => x,
                // Released meanwhile (the write failed): the user may retry.
                None => return Err(AdmissionError::Pending),
            };
        }
    }

    /// Makes a pending refusal durable (idempotent) and promotes it.
    pub async fn resolve_refusal(
        &self,
        c: &Campaign,
        user: &UserId,
        seq: i64,
        gen: i64,
    ) -> Result<ClaimOutcome, AdmissionError> {
        let row = NewRejection {
            campaign_id: c.id.0,
            user_id: user.as_str().to_string(),
            seq,
        };
        let x = Stored::Refusing { seq };
        let f = pg::insert_fenced(&self.db, &[], &[], std::slice::from_ref(&row), &[gen]).await?;
        if f.refusals.is_empty() {
            if pg::generation(&self.db, c.id).await? != gen {
                self.drop_stale(c, gen).await?;
                return Err(AdmissionError::Rebuilding);
            }
            return self.adopt_durable(c, user, &x).await;
        }
        let r = Stored::Rejected { seq };
        self.promote(
            c,
            &[(user.as_str().to_string(), x.encode(), r.encode())],
            false,
        )
        .await?;
        Ok(r.outcome(c, user)?)
    }

    /// Settles a pending reservation whose request died or whose commit
    /// failed: PostgreSQL decides, through [`pg::void_reservation`], so a
    /// reservation is released only when its commit can no longer land.
    pub async fn resolve_orphan(
        &self,
        c: &Campaign,
        user: &UserId,
        s: &Stored,
    ) -> Result<(), AdmissionError> {
        let Stored::Pending {
            pidx,
            slot,
            code,
            seq,
            ..
        } = s
        else {
            return Ok(());
        };
        let pool = c
            .pool_at(*pidx)
            .ok_or_else(|| RedisStoreError::Protocol(format!("unknown pool index {pidx}")))?;
        let row = NewGrant {
            campaign_id: c.id.0,
            pool_id: pool.id,
            user_id: user.as_str().to_string(),
            slot: *slot,
            code: code.clone(),
            seq: *seq,
        };
        let g = Stored::Granted {
            pidx: *pidx,
            slot: *slot,
            code: code.clone(),
            seq: *seq,
        };
        match pg::void_reservation(&self.db, &row).await? {
            pg::CodeFate::Voided | pg::CodeFate::Void => {
                self.release(c, user, s, Release::back(Some(*slot))).await?;
            }
            pg::CodeFate::Active => {
                let u = user.as_str().to_string();
                self.promote(c, &[(u, s.encode(), g.encode())], false)
                    .await?;
            }
            pg::CodeFate::Released => {
                // Committed, then cancelled or expired while Redis still said
                // pending: granted, then the release mirrored.
                let u = user.as_str().to_string();
                self.promote(c, &[(u, s.encode(), g.encode())], false)
                    .await?;
                self.cancel_script(c, user, *pidx, Some(code), false)
                    .await?;
            }
        }
        Ok(())
    }

    /// Replaces answers still equal to the expected ones.
    pub async fn promote(
        &self,
        c: &Campaign,
        triples: &[(String, String, String)],
        decrement_queued: bool,
    ) -> Result<i64, AdmissionError> {
        Ok(self
            .redis
            .promote(&self.keys(c), triples, decrement_queued)
            .await?)
    }

    /// The compensating action on a reservation whose answer is still
    /// `expected` (see [`Release`]).
    pub async fn release(
        &self,
        c: &Campaign,
        user: &UserId,
        expected: &Stored,
        r: Release<'_>,
    ) -> Result<bool, AdmissionError> {
        let pidx = match expected {
            Stored::Pending { pidx, .. }
            | Stored::Queued { pidx, .. }
            | Stored::Granted { pidx, .. } => *pidx,
            _ => return Ok(false),
        };
        let k = self.keys(c);
        let pk = k
            .pools
            .get(pidx as usize)
            .ok_or_else(|| RedisStoreError::Protocol(format!("unknown pool index {pidx}")))?;
        let rep = r.replacement.map(Stored::encode).unwrap_or_default();
        let slot = r.free_slot.map(|s| s.to_string()).unwrap_or_default();
        let delta = r.queued_delta.to_string();
        let taken = r.mark_taken.map(|s| s.to_string()).unwrap_or_default();
        let n: i64 = self
            .redis
            .eval(
                &self.redis.scripts().release,
                &[
                    &k.meta, &k.ans, &pk.left, &pk.free, &k.queued, &k.pending, &pk.hw,
                ],
                &[
                    user.as_str(),
                    &expected.encode(),
                    &rep,
                    &slot,
                    &delta,
                    if r.give_back { "1" } else { "0" },
                    &taken,
                ],
            )
            .await?;
        Ok(n == 1)
    }

    /// Forgets the campaign's Redis state if it is still of generation
    /// `gen`, which PostgreSQL has moved past: the next claim rebuilds.
    pub async fn drop_stale(&self, c: &Campaign, gen: i64) -> Result<(), AdmissionError> {
        let k = self.keys(c);
        let n: i64 = self
            .redis
            .eval(
                &self.redis.scripts().drop_stale,
                &[&k.meta],
                &[&gen.to_string()],
            )
            .await?;
        if n == 1 {
            tracing::warn!(campaign = %c.id, gen, "dropped a redis state older than postgres' generation");
        }
        Ok(())
    }

    /// Drops the campaign's state if the Redis server now holding it did
    /// not load it (a restart or failover may have lost its last writes);
    /// `true` when it did. The caller rebuilds.
    pub async fn forget_if_server_changed(&self, c: &Campaign) -> Result<bool, AdmissionError> {
        let k = self.keys(c);
        let n: i64 = self
            .redis
            .eval(&self.redis.scripts().same_server, &[&k.meta], &[])
            .await?;
        if n == 1 {
            metrics::counter!("firstcome_redis_server_changes_total").increment(1);
            tracing::warn!(campaign = %c.id, "redis state loaded by another server (restart or failover): dropped, rebuilding from postgres");
        }
        Ok(n == 1)
    }

    /// Runs the cancel script for the user's grant in pool `pidx`.
    pub async fn cancel_script(
        &self,
        c: &Campaign,
        user: &UserId,
        pidx: i32,
        code: Option<&str>,
        outbox: bool,
    ) -> Result<Vec<String>, AdmissionError> {
        let k = self.keys(c);
        let pk = k
            .pools
            .get(pidx as usize)
            .ok_or_else(|| RedisStoreError::Protocol(format!("unknown pool index {pidx}")))?;
        let p = pidx.to_string();
        Ok(self
            .redis
            .eval(
                &self.redis.scripts().cancel,
                &[&k.meta, &k.ans, &pk.left, &pk.free, &k.outbox],
                &[
                    user.as_str(),
                    if outbox { "lua" } else { "" },
                    code.unwrap_or(""),
                    &p,
                ],
            )
            .await?)
    }

    /// Mirrors in Redis a release PostgreSQL already made (a cancellation,
    /// a hold's expiry) of the grant `code`. An answer still pending or
    /// queued in Redis with that code (its promotion was lost, or the
    /// drainer has not promoted it yet) is promoted first, so it can never
    /// be promoted back to granted later. While the state is being rebuilt
    /// the mirror waits for it (bounded): the rebuild may have read
    /// PostgreSQL before this release.
    pub async fn mirror_release(
        &self,
        c: &Campaign,
        user: &UserId,
        pidx: i32,
        code: &str,
    ) -> Result<(), AdmissionError> {
        let deadline = tokio::time::Instant::now() + self.pending_wait;
        loop {
            let r = self.cancel_script(c, user, pidx, Some(code), false).await?;
            match (r.first().map(String::as_str), r.get(1)) {
                (Some("noinit"), _) => {
                    // Redis lost the state: rebuild it (it reads the release
                    // from PostgreSQL), or wait for whoever rebuilds, then
                    // mirror again in case that read came before it.
                    match self.rebuild(c).await {
                        Ok(()) | Err(AdmissionError::Rebuilding) => {}
                        Err(e) => return Err(e),
                    }
                    if Self::keys_expired(c, Utc::now()) {
                        return Ok(());
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err(AdmissionError::Rebuilding);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                (Some("not_granted"), Some(a)) => {
                    let s = Stored::parse(a)?;
                    let (g, queued) = match &s {
                        Stored::Pending {
                            pidx,
                            slot,
                            code: pc,
                            seq,
                            ..
                        } if pc == code => (
                            Stored::Granted {
                                pidx: *pidx,
                                slot: *slot,
                                code: pc.clone(),
                                seq: *seq,
                            },
                            false,
                        ),
                        Stored::Queued {
                            pidx,
                            seq,
                            alloc: Some((slot, qc)),
                        } if qc == code => (
                            Stored::Granted {
                                pidx: *pidx,
                                slot: *slot,
                                code: qc.clone(),
                                seq: *seq,
                            },
                            true,
                        ),
                        _ => return Ok(()),
                    };
                    let u = user.as_str().to_string();
                    self.promote(c, &[(u, s.encode(), g.encode())], queued)
                        .await?;
                }
                _ => return Ok(()),
            }
        }
    }

    /// Cancellation where PostgreSQL holds the grant (gate, redis-queue):
    /// cancel the row first, then mirror it in Redis. A retry after a Redis
    /// failure finds the row cancelled and mirrors again (idempotent).
    pub async fn cancel_durable(
        &self,
        c: &Campaign,
        user: &UserId,
        now: DateTime<Utc>,
    ) -> Result<CancelOutcome, AdmissionError> {
        let mut tx = self.db.begin().await.map_err(PgError::from)?;
        pg::cancel_grant(&mut tx, c.id, user, now).await?;
        let answer = pg::grant_answer(&mut *tx, c, user).await?;
        tx.commit().await.map_err(PgError::from)?;
        match answer {
            Some(ClaimOutcome::Cancelled {
                ref pool, ref code, ..
            }) => {
                let pidx = pool_index(c, pool)?;
                if !Self::keys_expired(c, now) {
                    self.mirror_release(c, user, pidx, code).await?;
                }
                Ok(CancelOutcome::Cancelled(answer.expect("matched Some")))
            }
            Some(other) => Ok(CancelOutcome::NotGranted(other)),
            None => match self.stored(c, user).await? {
                None => Ok(CancelOutcome::NotFound),
                Some(s) => Ok(CancelOutcome::NotGranted(s.outcome(c, user)?)),
            },
        }
    }

    /// Loads an empty state for a new campaign.
    pub async fn init_new(&self, c: &Campaign) -> Result<(), AdmissionError> {
        self.rebuild(c).await
    }

    /// Rebuilds the campaign's Redis state from PostgreSQL, the source of
    /// truth (seed 004's scheduler, done on demand). Exclusive: a lock keeps
    /// concurrent rebuilders apart, and `init.lua` refuses to overwrite a
    /// state that is present. A new generation starts before the truth is
    /// read (see [`pg::bump_generation`]). A campaign past its keys' life
    /// is not loaded (PostgreSQL answers for it).
    pub async fn rebuild(&self, c: &Campaign) -> Result<(), AdmissionError> {
        if Self::keys_expired(c, Utc::now()) {
            return Ok(());
        }
        let k = self.keys(c);
        let lock = k.rebuild_lock.clone();
        // A token of our own: a rebuilder whose lock expired must not
        // release a successor's.
        let token = generate_code();
        let t = token.clone();
        let got: Option<String> = self
            .redis
            .run(|mut conn| async move {
                redis::cmd("SET")
                    .arg(&lock)
                    .arg(&t)
                    .arg("NX")
                    .arg("PX")
                    .arg(REBUILD_LOCK_MS)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        if got.is_none() {
            return Err(AdmissionError::Rebuilding);
        }
        let result = self.rebuild_locked(c, &k).await;
        let lock = k.rebuild_lock.clone();
        let _ = self
            .redis
            .run(|mut conn| async move {
                redis::Script::new(
                    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
                )
                .key(&lock)
                .arg(&token)
                .invoke_async::<i64>(&mut conn)
                .await
            })
            .await;
        if result.is_ok() {
            metrics::counter!("firstcome_redis_rebuilds_total").increment(1);
        }
        result
    }

    /// What PostgreSQL says Redis should hold: every user's latest grant
    /// or refusal as an answer, the active slots per pool (sorted), the
    /// highest seq.
    pub async fn truth(&self, c: &Campaign) -> Result<Truth, AdmissionError> {
        let rows = sqlx::query(
            "SELECT DISTINCT ON (user_id) user_id, pool_id, slot, code, seq, state
             FROM grants WHERE campaign_id = $1 AND state <> 'void'
             ORDER BY user_id, (state = 'active') DESC, id DESC",
        )
        .bind(c.id.0)
        .fetch_all(&self.db)
        .await
        .map_err(PgError::from)?;
        let refusals: Vec<(String, i64)> = sqlx::query_as(
            "SELECT user_id, seq FROM rejections WHERE campaign_id = $1
                 UNION ALL
                 SELECT x.u, x.s FROM refusal_batches b, unnest(b.users, b.seqs) AS x(u, s)
                 WHERE b.campaign_id = $1",
        )
        .bind(c.id.0)
        .fetch_all(&self.db)
        .await
        .map_err(PgError::from)?;
        let mut t = Truth {
            answers: Vec::with_capacity(rows.len() + refusals.len()),
            active: vec![Vec::new(); c.pools.len()],
            max_seq: 0,
        };
        let mut granted = std::collections::HashSet::with_capacity(rows.len());
        for r in rows {
            let pool_id: i64 = r.get("pool_id");
            let Some(pidx) = c.pools.iter().position(|p| p.id == pool_id) else {
                continue;
            };
            let (slot, code, seq): (i32, String, i64) =
                (r.get("slot"), r.get("code"), r.get("seq"));
            t.max_seq = t.max_seq.max(seq);
            let state: String = r.get("state");
            let s = if state == "active" {
                t.active[pidx].push(slot);
                Stored::Granted {
                    pidx: pidx as i32,
                    slot,
                    code,
                    seq,
                }
            } else {
                Stored::Cancelled {
                    pidx: pidx as i32,
                    slot,
                    code,
                    seq,
                }
            };
            let user: String = r.get("user_id");
            granted.insert(user.clone());
            t.answers.push((user, s));
        }
        for (user, seq) in refusals {
            t.max_seq = t.max_seq.max(seq);
            if !granted.contains(&user) {
                t.answers.push((user, Stored::Rejected { seq }));
            }
        }
        for a in &mut t.active {
            a.sort_unstable();
        }
        Ok(t)
    }

    async fn rebuild_locked(&self, c: &Campaign, k: &CampaignKeys) -> Result<(), AdmissionError> {
        // Only rebuilders (holding the lock) load a state: if one is there,
        // a racing rebuilder loaded it, and a new generation would only
        // fence off its live writes.
        let meta = k.meta.clone();
        let present: bool =
            self.redis
                .run(|mut conn| async move {
                    redis::cmd("EXISTS").arg(&meta).query_async(&mut conn).await
                })
                .await?;
        if present {
            return Ok(());
        }
        // redis-lua: an outbox that outlived its state (only meta lost)
        // holds answers already told; the flusher needs no meta, so it
        // writes them first, and the rebuild then reads them.
        if c.mode == crate::domain::Mode::RedisLua {
            let outbox = k.outbox.clone();
            let waiting: i64 = self
                .redis
                .run(|mut conn| async move {
                    redis::Script::new(OUTBOX_TO_FLUSH)
                        .key(&outbox)
                        .arg(OUTBOX_WAIT_MS)
                        .invoke_async(&mut conn)
                        .await
                })
                .await?;
            if waiting > 0 {
                return Err(AdmissionError::Rebuilding);
            }
        }
        let gen = pg::bump_generation(&self.db, c.id).await?;
        let Truth {
            answers,
            mut active,
            max_seq,
        } = self.truth(c).await?;
        let st = InitState {
            expire_at_ms: Self::expire_at_ms(c, Utc::now()),
            opens_ms: c.opens_at.map(|t| t.timestamp_millis()),
            closes_ms: c.closes_at.map(|t| t.timestamp_millis()),
            mode: c.mode.as_str().to_string(),
            seq: max_seq,
            queued: 0,
            gen,
            pools: c
                .pools
                .iter()
                .zip(active.iter_mut())
                .map(|(pool, slots)| {
                    let hw = slots.last().copied().unwrap_or(0);
                    PoolState {
                        left: (pool.stock as i64 - slots.len() as i64).max(0),
                        hw,
                        free: (1..=hw)
                            .filter(|s| slots.binary_search(s).is_err())
                            .collect(),
                    }
                })
                .collect(),
            answers: answers.into_iter().map(|(u, a)| (u, a.encode())).collect(),
        };
        self.redis.init_state(k, &st).await?;
        // A rebuilder paused past its lock may have loaded an older
        // generation than PostgreSQL's: drop it, the next claim rebuilds.
        if pg::generation(&self.db, c.id).await? != gen {
            self.drop_stale(c, gen).await?;
            return Err(AdmissionError::Rebuilding);
        }
        Ok(())
    }

    /// Creates the consumer group of `stream` if it has none (the stream is
    /// created too, empty, if missing).
    pub async fn ensure_group(&self, stream: &str) -> Result<(), AdmissionError> {
        let s = stream.to_string();
        let r: Result<(), RedisStoreError> = self
            .redis
            .run(|mut conn| async move {
                redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(&s)
                    .arg(crate::storage::redis::GROUP)
                    .arg("0")
                    .arg("MKSTREAM")
                    .query_async(&mut conn)
                    .await
            })
            .await;
        match r {
            Err(e) if e.to_string().contains("BUSYGROUP") => Ok(()),
            other => Ok(other?),
        }
    }

    /// Pushes an open-ended campaign's key expiry forward when less than
    /// half its lifetime is left; `true` when it did.
    pub async fn refresh_lifetime(&self, c: &Campaign) -> Result<bool, AdmissionError> {
        if c.closes_at.is_some() {
            return Ok(false);
        }
        let now = Utc::now();
        let k = self.keys(c);
        let half = chrono::Duration::seconds(crate::domain::OPEN_ENDED_KEY_LIFETIME_SECS / 2);
        let n: i64 = self
            .redis
            .eval(
                &self.redis.scripts().refresh,
                &k.all(),
                &[
                    &Self::expire_at_ms(c, now).to_string(),
                    &(now + half).timestamp_millis().to_string(),
                ],
            )
            .await?;
        Ok(n == 1)
    }

    /// Stock left at the door per pool, and the queued count.
    pub async fn counters(&self, c: &Campaign) -> Result<Option<(Vec<i64>, i64)>, AdmissionError> {
        let k = self.keys(c);
        let (exists, left, queued): (bool, Vec<Option<i64>>, Option<i64>) = self
            .redis
            .run(|mut conn| async move {
                let lefts: Vec<&String> = k.pools.iter().map(|p| &p.left).collect();
                redis::pipe()
                    .exists(&k.meta)
                    .cmd("MGET")
                    .arg(lefts)
                    .get(&k.queued)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        if !exists {
            return Ok(None);
        }
        Ok(Some((
            left.into_iter().map(|x| x.unwrap_or(0)).collect(),
            queued.unwrap_or(0),
        )))
    }
}

/// A campaign's state as PostgreSQL has it.
#[derive(Debug, Clone, Default)]
pub struct Truth {
    /// Each user's latest grant as a stored answer (granted or cancelled).
    pub answers: Vec<(String, Stored)>,
    /// Active slots per pool index, sorted.
    pub active: Vec<Vec<i32>>,
    /// Highest arrival number seen.
    pub max_seq: i64,
}

fn second(r: &[String]) -> Result<&str, RedisStoreError> {
    r.get(1)
        .map(String::as_str)
        .ok_or_else(|| RedisStoreError::Protocol(format!("short reply {r:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_answers_round_trip() {
        for s in [
            "G|0|3|ABC|7",
            "P|1|2|XYZ|9|1700000000000",
            "Q|0|5",
            "Q|0|5|4|KODE",
            "R|sold_out|11",
            "C|2|1|K|3",
            "X|12",
            "D|1|13",
        ] {
            assert_eq!(Stored::parse(s).unwrap().encode(), s);
        }
        assert!(Stored::parse("Z|1").is_err());
        assert!(Stored::parse("G|a|1|c|1").is_err());
    }
}
