//! What the two database-only modes share: the whole claim transaction
//! ([`DbMode`]) around the one step they differ in ([`TakeUnit`]: how a
//! unit of stock is taken under the pool row's lock), remembered refusals,
//! status and cancellation.

use chrono::{DateTime, Utc};

use std::{future::Future, marker::PhantomData};

use super::{
    admission::{Admission, Deps},
    error::{AdmissionError, CancelOutcome},
};
use crate::{
    domain::{generate_code, Campaign, ClaimOutcome, Pool, RejectReason, UserId},
    storage::{pg::db_modes::GrantInsert, Store, StoreError, StoreTx},
};

/// Serialises the claims of one user in one campaign (advisory lock until
/// the transaction ends), then returns the user's answer if a concurrent
/// claim stored one meanwhile. Without it, two claims of the same user at
/// the sold-out boundary could store a grant and a refusal, and answer both.
pub async fn lock_user(
    tx: &mut StoreTx<'_>,
    campaign: &Campaign,
    user: &UserId,
) -> Result<Option<ClaimOutcome>, StoreError> {
    tx.lock_user(campaign.id, user).await?;
    if let Some(a) = tx.grant_answer(campaign, user).await? {
        return Ok(Some(a));
    }
    tx.rejection_answer(campaign.id, user).await
}

/// Inserts the winner's grant; the caller updates the pool counter.
pub async fn insert_grant(
    tx: &mut StoreTx<'_>,
    campaign: &Campaign,
    pool: &Pool,
    user: &UserId,
    slot: i32,
    seq: i64,
) -> Result<ClaimOutcome, StoreError> {
    let code = generate_code();
    tx.insert_grant(&GrantInsert {
        campaign: campaign.id,
        pool_id: pool.id,
        user,
        slot,
        code: &code,
        seq,
        confirm_within_secs: campaign.confirm_within_secs,
    })
    .await?;
    Ok(ClaimOutcome::Granted {
        user_id: user.clone(),
        pool: pool.name.clone(),
        slot,
        code,
        seq,
    })
}

/// Remembers a sold_out refusal so the user gets it again; returns the
/// stored answer (the first one, if a concurrent claim stored it first).
pub async fn reject_sold_out(
    tx: &mut StoreTx<'_>,
    campaign: &Campaign,
    user: &UserId,
    seq: i64,
) -> Result<ClaimOutcome, StoreError> {
    // A concurrent claim of the same user may have won meanwhile: its grant
    // is the answer, never a contradicting refusal.
    if let Some(a) = tx.grant_answer(campaign, user).await? {
        return Ok(a);
    }
    tx.insert_sold_out(campaign.id, user, seq).await?;
    Ok(tx
        .rejection_answer(campaign.id, user)
        .await?
        .unwrap_or(ClaimOutcome::Rejected {
            user_id: user.clone(),
            reason: RejectReason::SoldOut,
            seq: Some(seq),
        }))
}

/// The user's stored answer: a grant (active or cancelled) or a refusal.
pub async fn stored_answer(
    db: &Store,
    campaign: &Campaign,
    user: &UserId,
) -> Result<Option<ClaimOutcome>, StoreError> {
    if let Some(a) = db.grant_answer(campaign, user).await? {
        return Ok(Some(a));
    }
    db.rejection_answer(campaign.id, user).await
}

/// Runs a claim transaction; when it trips a unique index (the same user
/// claiming two pools at once), answers with what the winner stored.
pub async fn claim_with_retry<F, Fut>(
    db: &Store,
    campaign: &Campaign,
    user: &UserId,
    attempt: F,
) -> Result<ClaimOutcome, AdmissionError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<ClaimOutcome, AdmissionError>>,
{
    // Fast path for repeats: no lock taken.
    if let Some(a) = stored_answer(db, campaign, user).await? {
        return Ok(a);
    }
    match attempt().await {
        Ok(a) => Ok(a),
        Err(AdmissionError::Database(e)) if e.is_unique_violation() => {
            Ok(stored_answer(db, campaign, user)
                .await?
                .ok_or(AdmissionError::Database(e))?)
        }
        Err(e) => Err(e),
    }
}

/// Cancels in one transaction: the grant, the pool counter, the free slot.
pub async fn cancel(
    db: &Store,
    campaign: &Campaign,
    user: &UserId,
    now: DateTime<Utc>,
) -> Result<CancelOutcome, AdmissionError> {
    let mut tx = db.begin().await?;
    if let Some((pool_id, slot)) = tx.cancel_grant(campaign.id, user, now).await? {
        tx.give_back(pool_id, slot).await?;
    }
    let answer = match tx.grant_answer(campaign, user).await? {
        Some(a) => Some(a),
        None => tx.rejection_answer(campaign.id, user).await?,
    };
    tx.commit().await?;
    Ok(match answer {
        None => CancelOutcome::NotFound,
        Some(a @ ClaimOutcome::Cancelled { .. }) => CancelOutcome::Cancelled(a),
        Some(a) => CancelOutcome::NotGranted(a),
    })
}

/// The step the database-only modes differ in: taking one unit of the
/// pool's stock inside the claim's transaction. `true` when there was one;
/// either way the pool row stays locked until the transaction ends, which
/// serialises slot allocation.
pub trait TakeUnit: Send + Sync + 'static {
    /// Takes a unit of `pool_id`'s stock, or finds none.
    fn take(
        tx: &mut StoreTx<'_>,
        pool_id: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

/// A database-only mode: one transaction per claim (the user's lock, the
/// unit, the arrival number, the slot and the grant or the refusal).
pub struct DbMode<T> {
    /// The source of truth, and here the only store.
    db: Store,
    /// How the unit is taken.
    take: PhantomData<fn() -> T>,
}

impl<T> Clone for DbMode<T> {
    fn clone(&self) -> Self {
        Self {
            db: self.db.clone(),
            take: PhantomData,
        }
    }
}

impl<T: TakeUnit> DbMode<T> {
    async fn attempt(
        &self,
        campaign: &Campaign,
        pool: &Pool,
        user: &UserId,
    ) -> Result<ClaimOutcome, AdmissionError> {
        let mut tx = self.db.begin().await?;
        // The user's lock first, then the pool's: one order for everyone.
        if let Some(a) = lock_user(&mut tx, campaign, user).await? {
            return Ok(a);
        }
        // An operator's pause or window, as PostgreSQL holds them now (the
        // process' copy of the campaign may be older), ordered with the
        // operator's change by the store's `claim_gate` lock: a paused campaign
        // admits no new user, and nothing is written for them (the
        // transaction rolls back).
        let gate = tx.claim_gate(campaign.id).await?;
        if gate.paused {
            return Err(AdmissionError::Paused);
        }
        if gate.not_open || gate.closed {
            let reason = if gate.closed {
                RejectReason::Closed
            } else {
                RejectReason::NotOpen
            };
            return Ok(ClaimOutcome::Rejected {
                user_id: user.clone(),
                reason,
                seq: None,
            });
        }
        let won = T::take(&mut tx, pool.id).await?;
        let seq = tx.next_seq().await?;
        let answer = if won {
            let slot = tx.take_slot(pool.id).await?;
            insert_grant(&mut tx, campaign, pool, user, slot, seq).await?
        } else {
            reject_sold_out(&mut tx, campaign, user, seq).await?
        };
        tx.commit().await?;
        Ok(answer)
    }
}

impl<T: TakeUnit> Admission for DbMode<T> {
    fn build(deps: &Deps) -> Self {
        Self {
            db: deps.db.clone(),
            take: PhantomData,
        }
    }

    async fn claim(&self, c: &Campaign, pool: &Pool, user: &UserId) -> super::Answer {
        claim_with_retry(&self.db, c, user, || self.attempt(c, pool, user)).await
    }

    async fn status(&self, c: &Campaign, user: &UserId) -> super::Status {
        Ok(stored_answer(&self.db, c, user).await?)
    }

    async fn cancel(&self, c: &Campaign, user: &UserId, now: DateTime<Utc>) -> super::Cancel {
        cancel(&self.db, c, user, now).await
    }
}
