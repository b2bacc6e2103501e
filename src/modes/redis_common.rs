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
        pg::{self, PgError},
        redis::{CampaignKeys, InitState, PoolState, RedisStore, RedisStoreError},
    },
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
    /// `R|reason|seq`
    Rejected {
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
            Stored::Pending { seq, .. } | Stored::Queued { seq, .. } => ClaimOutcome::Queued {
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

/// The answer to a claim outside the campaign's window (never remembered).
pub fn window_rejection(user: &UserId, reason: RejectReason) -> ClaimOutcome {
    ClaimOutcome::Rejected {
        user_id: user.clone(),
        reason,
        seq: None,
    }
}

/// What the claim script decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScriptReply {
    /// A fresh decision.
    New(Stored),
    /// The user had already claimed: the first answer.
    Dup(Stored),
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
}

/// Spread of key expiry across campaigns, so that campaigns closing at the
/// same time do not all expire at once (seed 004's stampede).
pub const EXPIRY_JITTER_SECS: i64 = 600;

/// A reservation older than this whose API process never answered is
/// settled from PostgreSQL (granted if its row exists, else released). It
/// must exceed the longest a commit can take: the pool's acquire timeout
/// (3 s) plus the statement timeout ([`crate::storage::pg::STATEMENT_TIMEOUT_MS`]).
pub const ORPHAN_PENDING_MS: i64 = 20_000;

impl RedisCommon {
    /// Shared state over the connections.
    pub fn new(db: PgPool, redis: RedisStore, pending_wait: Duration) -> Self {
        Self {
            db,
            redis,
            pending_wait,
        }
    }

    /// The campaign's key names.
    pub fn keys(&self, c: &Campaign) -> std::sync::Arc<CampaignKeys> {
        self.redis.keys(c.id, c.pools.len())
    }

    /// When the campaign's keys expire, jitter included (ms since epoch).
    /// Deterministic per campaign, so a rebuild sets the same instant.
    pub fn expire_at_ms(c: &Campaign) -> i64 {
        let jitter = (c.id.0.wrapping_mul(7919)).rem_euclid(EXPIRY_JITTER_SECS);
        (c.keys_expire_at() + chrono::Duration::seconds(jitter)).timestamp_millis()
    }

    /// Whether the campaign's keys are past their life: Redis no longer
    /// serves it and answers come from PostgreSQL.
    pub fn keys_expired(c: &Campaign, now: DateTime<Utc>) -> bool {
        Self::expire_at_ms(c) <= now.timestamp_millis()
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
        for _ in 0..2 {
            let r: Vec<String> = self
                .redis
                .eval(
                    &self.redis.scripts().claim,
                    &[
                        &k.meta, &k.ans, &k.seq, &pk.left, &pk.hw, &pk.free, stream, &k.queued,
                        &k.pending,
                    ],
                    &[user.as_str(), &pidx, &code, mode],
                )
                .await?;
            match r.first().map(String::as_str) {
                Some("noinit") => {
                    self.rebuild(c).await?;
                    continue;
                }
                Some("dup") => return Ok(ScriptReply::Dup(Stored::parse(second(&r)?)?)),
                Some("new") => return Ok(ScriptReply::New(Stored::parse(second(&r)?)?)),
                Some("not_open") => return Ok(ScriptReply::Window(RejectReason::NotOpen)),
                Some("closed") => return Ok(ScriptReply::Window(RejectReason::Closed)),
                _ => return Err(RedisStoreError::Protocol(format!("claim: {r:?}")).into()),
            }
        }
        Err(AdmissionError::Rebuilding)
    }

    /// A claim whose stored answer is final as the script gives it
    /// (redis-lua, redis-queue): nothing waits on PostgreSQL.
    pub async fn claim_as_stored(
        &self,
        c: &Campaign,
        pool: &Pool,
        user: &UserId,
        mode: &str,
    ) -> Result<ClaimOutcome, AdmissionError> {
        match self.claim_script(c, pool, user, mode).await? {
            ScriptReply::Window(reason) => Ok(window_rejection(user, reason)),
            ScriptReply::New(s) | ScriptReply::Dup(s) => Ok(s.outcome(c, user)?),
        }
    }

    /// The stored answer as the client sees it (redis-lua, redis-queue).
    pub async fn status_as_stored(
        &self,
        c: &Campaign,
        user: &UserId,
    ) -> Result<Option<ClaimOutcome>, AdmissionError> {
        Ok(self
            .stored(c, user)
            .await?
            .map(|s| s.outcome(c, user))
            .transpose()?)
    }

    /// The user's stored answer, `Ok(None)` when the user never claimed.
    /// When Redis has no state for the campaign, PostgreSQL answers.
    pub async fn stored(
        &self,
        c: &Campaign,
        user: &UserId,
    ) -> Result<Option<Stored>, AdmissionError> {
        let k = self.keys(c);
        let u = user.as_str().to_string();
        let (exists, ans): (bool, Option<String>) = self
            .redis
            .run(|mut conn| async move {
                redis::pipe()
                    .exists(&k.meta)
                    .hget(&k.ans, &u)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        if exists {
            return ans
                .map(|a| Stored::parse(&a))
                .transpose()
                .map_err(Into::into);
        }
        Ok(pg::grant_answer(&self.db, c, user).await?.map(|o| match o {
            ClaimOutcome::Granted {
                slot,
                code,
                seq,
                pool,
                ..
            } => Stored::Granted {
                pidx: c.pools.iter().position(|p| p.name == pool).unwrap_or(0) as i32,
                slot,
                code,
                seq,
            },
            ClaimOutcome::Cancelled {
                slot,
                code,
                seq,
                pool,
                ..
            } => Stored::Cancelled {
                pidx: c.pools.iter().position(|p| p.name == pool).unwrap_or(0) as i32,
                slot,
                code,
                seq,
            },
            // grant_answer only returns the two above.
            _ => Stored::Rejected { seq: 0 },
        }))
    }

    /// Waits (bounded by `pending_wait`) for a gate reservation to settle,
    /// then answers. A reservation orphaned by a dead API process is settled
    /// from PostgreSQL.
    pub async fn settle(
        &self,
        c: &Campaign,
        user: &UserId,
        mut s: Stored,
    ) -> Result<ClaimOutcome, AdmissionError> {
        let deadline = tokio::time::Instant::now() + self.pending_wait;
        let mut pause = Duration::from_millis(1);
        loop {
            let Stored::Pending { at_ms, .. } = &s else {
                return Ok(s.outcome(c, user)?);
            };
            if Utc::now().timestamp_millis() - at_ms > ORPHAN_PENDING_MS {
                self.resolve_orphan(c, user, &s).await?;
            } else if tokio::time::Instant::now() >= deadline {
                return Err(AdmissionError::Pending);
            } else {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            s = match self.stored(c, user).await? {
                Some(s) => s,
                // Released meanwhile (the write failed): the user may retry.
                None => return Err(AdmissionError::Pending),
            };
        }
    }

    /// Settles a pending reservation whose request died: PostgreSQL decides.
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
        let exists = !pg::existing_codes(&self.db, std::slice::from_ref(code))
            .await?
            .is_empty();
        if exists {
            let g = Stored::Granted {
                pidx: *pidx,
                slot: *slot,
                code: code.clone(),
                seq: *seq,
            };
            self.promote(
                c,
                &[(user.as_str().to_string(), s.encode(), g.encode())],
                false,
            )
            .await?;
        } else {
            self.release(c, user, s, None, Some(*slot), 0).await?;
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

    /// The compensating action: gives back the stock (and slot) of a
    /// reservation whose answer is still `expected`.
    pub async fn release(
        &self,
        c: &Campaign,
        user: &UserId,
        expected: &Stored,
        replacement: Option<&Stored>,
        slot: Option<i32>,
        queued_delta: i64,
    ) -> Result<bool, AdmissionError> {
        let pidx = match expected {
            Stored::Pending { pidx, .. }
            | Stored::Queued { pidx, .. }
            | Stored::Granted { pidx, .. } => *pidx,
            _ => return Ok(false),
        };
        let k = self.keys(c);
        let pk = &k.pools[pidx as usize];
        let rep = replacement.map(Stored::encode).unwrap_or_default();
        let slot = slot.map(|s| s.to_string()).unwrap_or_default();
        let delta = queued_delta.to_string();
        let n: i64 = self
            .redis
            .eval(
                &self.redis.scripts().release,
                &[&k.meta, &k.ans, &pk.left, &pk.free, &k.queued, &k.pending],
                &[user.as_str(), &expected.encode(), &rep, &slot, &delta],
            )
            .await?;
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
        let pk = &k.pools[pidx as usize];
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
                let pidx = c.pools.iter().position(|p| &p.name == pool).unwrap_or(0) as i32;
                if !Self::keys_expired(c, now) {
                    let r = self.cancel_script(c, user, pidx, Some(code), false).await?;
                    if r.first().map(String::as_str) == Some("noinit") {
                        // Redis lost the state; the rebuild reads PostgreSQL,
                        // where the cancellation already is.
                        self.rebuild(c).await?;
                    }
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
    /// state that is present.
    pub async fn rebuild(&self, c: &Campaign) -> Result<(), AdmissionError> {
        let k = self.keys(c);
        let lock = k.rebuild_lock.clone();
        let got: Option<String> = self
            .redis
            .run(|mut conn| async move {
                redis::cmd("SET")
                    .arg(&lock)
                    .arg("1")
                    .arg("NX")
                    .arg("PX")
                    .arg(10_000)
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
                redis::cmd("DEL")
                    .arg(&lock)
                    .query_async::<i64>(&mut conn)
                    .await
            })
            .await;
        if result.is_ok() {
            metrics::counter!("firstcome_redis_rebuilds_total").increment(1);
        }
        result
    }

    /// What PostgreSQL says Redis should hold: every user's latest grant
    /// as an answer, the active slots per pool (sorted), the highest seq.
    pub async fn truth(&self, c: &Campaign) -> Result<Truth, AdmissionError> {
        let rows = sqlx::query(
            "SELECT DISTINCT ON (user_id) user_id, pool_id, slot, code, seq, state
             FROM grants WHERE campaign_id = $1
             ORDER BY user_id, (state = 'active') DESC, id DESC",
        )
        .bind(c.id.0)
        .fetch_all(&self.db)
        .await
        .map_err(PgError::from)?;
        let mut t = Truth {
            answers: Vec::with_capacity(rows.len()),
            active: vec![Vec::new(); c.pools.len()],
            max_seq: 0,
        };
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
            t.answers.push((r.get("user_id"), s));
        }
        for a in &mut t.active {
            a.sort_unstable();
        }
        Ok(t)
    }

    async fn rebuild_locked(&self, c: &Campaign, k: &CampaignKeys) -> Result<(), AdmissionError> {
        let Truth {
            answers,
            mut active,
            max_seq,
        } = self.truth(c).await?;
        let st = InitState {
            expire_at_ms: Self::expire_at_ms(c),
            opens_ms: c.opens_at.map(|t| t.timestamp_millis()),
            closes_ms: c.closes_at.map(|t| t.timestamp_millis()),
            mode: c.mode.as_str().to_string(),
            seq: max_seq,
            queued: 0,
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
        Ok(())
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
        ] {
            assert_eq!(Stored::parse(s).unwrap().encode(), s);
        }
        assert!(Stored::parse("X|1").is_err());
        assert!(Stored::parse("G|a|1|c|1").is_err());
    }
}
