//! Settling gate reservations: waiting for a pending answer, resolving an
//! orphan or an undurable refusal from PostgreSQL, promoting answers, and
//! the compensating release.

use std::time::Duration;

use super::{AdmissionError, RedisCommon, Release, Stored};
use crate::storage::redis::scripts::ReleaseArgs;
use crate::{
    domain::{
        shard::{home_shard, shard_range},
        Campaign, ClaimOutcome, UserId,
    },
    storage::{
        pg::{self, NewGrant, NewRejection},
        redis::RedisStoreError,
    },
};

impl RedisCommon {
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
        // PostgreSQL is asked about a pending code at most twice: first,
        // and once more when the wait is over.
        let mut db_looks = 0;
        loop {
            match &s {
                Stored::Refusing { seq } => {
                    let g = gen.ok_or(AdmissionError::Rebuilding)?;
                    return self.resolve_refusal(c, user, *seq, g).await;
                }
                Stored::Pending { at_ms, code, .. } => {
                    let (r0, t0) = match clock {
                        Some(x) => x,
                        None => *clock.insert((
                            self.redis_now_ms_for(c, user).await?,
                            tokio::time::Instant::now(),
                        )),
                    };
                    let now_ms = r0 + t0.elapsed().as_millis() as i64;
                    let due = tokio::time::Instant::now() >= deadline;
                    if now_ms - at_ms > self.orphan_after_ms {
                        self.resolve_orphan(c, user, &s).await?;
                    } else if (db_looks == 0 || due) && db_looks < 2 && {
                        db_looks += 1;
                        self.committed(code).await?
                    } {
                        // Its grant is in PostgreSQL: the committer told it
                        // and has not promoted it yet (or its promotion was
                        // lost). The row settles it; nothing is voided.
                        self.resolve_orphan(c, user, &s).await?;
                    } else if due {
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

    /// Whether PostgreSQL holds a grant (active or since released) under a
    /// reservation's code: its commit landed.
    async fn committed(&self, code: &str) -> Result<bool, AdmissionError> {
        Ok(self
            .db
            .code_state(code)
            .await?
            .is_some_and(|state| state != "void"))
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
        let f = self
            .db
            .insert_fenced(&[], &[], std::slice::from_ref(&row), &[gen])
            .await?;
        if f.refusals.is_empty() {
            if self.db.generation(c.id).await? != gen {
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
        match self.db.void_reservation(&row).await? {
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
        if c.shards <= 1 {
            return Ok(self
                .redis
                .promote(&self.keys(c), triples, decrement_queued)
                .await?);
        }
        // Each answer lives on its user's home shard.
        let ks = self.shards(c);
        let mut by_shard: Vec<Vec<(String, String, String)>> = vec![Vec::new(); ks.len()];
        for t in triples {
            let h = UserId::parse(t.0.clone())
                .map(|u| home_shard(&u, c.shards))
                .unwrap_or(0);
            by_shard[usize::from(h)].push(t.clone());
        }
        let mut n = 0;
        for (k, ts) in ks.iter().zip(by_shard) {
            if !ts.is_empty() {
                n += self.redis.promote(k, &ts, decrement_queued).await?;
            }
        }
        Ok(n)
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
        let replacement = r.replacement.map(Stored::encode).unwrap_or_default();
        let args = ReleaseArgs {
            user: user.as_str(),
            expected: &expected.encode(),
            replacement: &replacement,
            free_slot: r.free_slot,
            queued_delta: r.queued_delta,
            give_back: r.give_back,
            mark_taken: r.mark_taken,
            range: (c.shards > 1).then(|| {
                let pool = c.pool_at(pidx).map(|p| p.stock).unwrap_or(0);
                shard_range(pool, home_shard(user, c.shards), c.shards)
            }),
        };
        let k = self.keys_for(c, user);
        let done = self.redis.release(&k, pidx as usize, &args).await?;
        if done == 2 {
            // A slot PostgreSQL holds sits somewhere this shard cannot see:
            // the shards start again from PostgreSQL.
            let gen = self.redis.state_generation(&k).await?.unwrap_or(0);
            self.drop_all(c, gen).await?;
        } else if done == 1 && r.give_back && c.shards > 1 {
            self.publish_returned(c, pidx as usize, k.shard).await?;
        }
        Ok(done >= 1)
    }
}
