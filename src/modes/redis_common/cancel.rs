//! Cancellation in the Redis modes: the cancel script, mirroring a cancel or
//! hold expiry PostgreSQL made, and the durable cancel of gate and
//! redis-queue.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{pool_index, AdmissionError, CancelOutcome, RedisCommon, Stored};
use crate::domain::{Campaign, ClaimOutcome, UserId};

impl RedisCommon {
    /// Runs the cancel script for the user's grant in pool `pidx`.
    pub async fn cancel_script(
        &self,
        c: &Campaign,
        user: &UserId,
        pidx: i32,
        code: Option<&str>,
        outbox: bool,
    ) -> Result<Vec<String>, AdmissionError> {
        let k = self.keys_for(c, user);
        let r = self
            .redis
            .cancel(&k, pidx as usize, user.as_str(), code, outbox)
            .await?;
        if k.sharded() && r.first().map(String::as_str) == Some("cancelled") {
            // The slot waits in this shard's `retn`: make it claimable.
            self.publish_returned(c, pidx as usize, k.shard).await?;
        }
        Ok(r)
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
        // Twice at most: a grant whose commit lands between the two reads
        // below is cancelled by the second pass.
        let mut pass = 0;
        loop {
            pass += 1;
            let mut tx = self.db.begin().await?;
            tx.cancel_grant(c.id, user, now).await?;
            let answer = tx.grant_answer(c, user).await?;
            tx.commit().await?;
            return match answer {
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
                // Nothing durable: the answer Redis holds, settled first (a
                // refusal told but not yet promoted is `sold_out`, never
                // shown as the `queued` its pending form would read as).
                None => match self.status_settled(c, user).await? {
                    None => Ok(CancelOutcome::NotFound),
                    Some(ClaimOutcome::Granted { .. }) if pass == 1 => continue,
                    Some(o) => Ok(CancelOutcome::NotGranted(o)),
                },
            };
        }
    }
}
